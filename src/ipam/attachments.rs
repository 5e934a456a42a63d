//! Our record of each attachment whose addresses another IPAM plugin handed out (delegated
//! IPAM). The plugin keeps its own store, which we cannot read; without these records nothing
//! on the node says which host veths, routes and masquerade rules belong to live pods, so
//! audit would call every delegated pod a leak, GC could not find the veths of dead ones and
//! DEL could not tell when a subnet's masquerade may go.
//!
//! Layout under `<dataDir>/delegated/` (`dataDir` is the top-level config key, because
//! `ipam.dataDir` belongs to the IPAM plugin then):
//! - `lock`: flock held while records are written or removed, and while the masquerade of a
//!   delegated subnet is installed or removed, so a DEL emptying a subnet never removes rules
//!   an ADD just counted on;
//! - `<attachment hash>`: one record per attachment (JSON), written by ADD once the plugin
//!   answered, removed by DEL, ADD's rollback and GC after the host veth is gone;
//! - `adding/<attachment hash>`: the in-flight mark of a running ADD (see `inflight`).
//!
//! Every file is reached through the trusted-directory code of the built-in store (`fs`): a
//! directory that is a link, foreign-owned or group/world-writable is refused (code 103).

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::fs::{TrustedDir, TMP_PREFIX};
use super::lock::{self, LOCK_TIMEOUT};
use super::record::{attachment_hash, Record};
use crate::cni::error::Result;

/// The directory under the plugin's `dataDir`.
pub const DIR: &str = "delegated";
const LOCK_FILE: &str = "lock";
const ADDING_DIR: &str = "adding";

/// One delegated attachment, as stored in `<attachment hash>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    pub host_veth: String,
    pub network: String,
    #[serde(default)]
    pub netns: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// Seconds since the epoch.
    #[serde(default)]
    pub created: u64,
    /// Each address with the network the IPAM plugin returned it in: "10.244.1.5/24". The
    /// network names the masquerade pool.
    #[serde(with = "cidrs")]
    pub ips: Vec<IpNetwork>,
}

mod cidrs {
    use ipnetwork::IpNetwork;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[IpNetwork], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(ToString::to_string))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNetwork>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .collect()
    }
}

/// The network an address came in, as a pool: "10.244.1.0/24".
pub fn subnet_of(net: IpNetwork) -> IpNetwork {
    IpNetwork::new(net.network(), net.prefix()).expect("prefix came from a network")
}

impl Attachment {
    /// One record of the built-in store's shape per address, with its subnet as the pool
    /// name: what `leaks` reads.
    pub fn allocations(&self) -> Vec<(String, Record)> {
        self.ips
            .iter()
            .map(|net| {
                let record = Record {
                    ip: net.ip(),
                    container_id: self.container_id.clone(),
                    ifname: self.ifname.clone(),
                    host_veth: self.host_veth.clone(),
                    pod_namespace: self.pod_namespace.clone(),
                    pod_name: self.pod_name.clone(),
                    network: self.network.clone(),
                    netns: self.netns.clone(),
                    created: self.created,
                };
                (subnet_of(*net).to_string(), record)
            })
            .collect()
    }

    fn subnets(&self) -> impl Iterator<Item = IpNetwork> + '_ {
        self.ips.iter().map(|n| subnet_of(*n))
    }
}

/// A record file that exists but cannot be read. Its name is the attachment hash, so the host
/// veth it may explain is known even so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableAttachment {
    pub path: PathBuf,
    pub hash: String,
    pub reason: String,
}

impl UnreadableAttachment {
    /// One line for people: what, why, and what to do.
    pub fn describe(&self) -> String {
        format!(
            "delegated attachment record {} is unreadable ({}); it may belong to a live pod: \
             inspect it, and remove it only once no pod uses its host veth",
            self.path.display(),
            self.reason
        )
    }
}

/// `<dataDir>/delegated`, checked and open.
#[derive(Debug, Clone)]
pub struct Attachments {
    dir: TrustedDir,
}

/// The lock of the delegated records, held while it lives.
pub struct AttachmentsLock<'a> {
    records: &'a Attachments,
    _file: std::fs::File,
}

impl Attachments {
    /// Opens (creating if needed) the records under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Attachments> {
        let data = TrustedDir::open(data_dir, true)?.expect("created");
        let dir = data.child(DIR, true)?.expect("created");
        Ok(Attachments { dir })
    }

    /// The records under `data_dir` if there are any: DEL and the commands for people create
    /// nothing. Still refuses a directory it cannot trust.
    pub fn open_existing(data_dir: &Path) -> Result<Option<Attachments>> {
        let Some(data) = TrustedDir::open(data_dir, false)? else {
            return Ok(None);
        };
        Ok(data.child(DIR, false)?.map(|dir| Attachments { dir }))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where ADDs leave their in-flight marks.
    pub fn adding_dir(&self) -> PathBuf {
        self.dir.path().join(ADDING_DIR)
    }

    /// Takes the lock, waiting at most `LOCK_TIMEOUT` (then code 11).
    pub fn lock(&self) -> Result<AttachmentsLock<'_>> {
        let file = self.dir.open_lock(LOCK_FILE)?;
        lock::acquire(&file, &self.dir.path().join(LOCK_FILE), LOCK_TIMEOUT)?;
        Ok(AttachmentsLock {
            records: self,
            _file: file,
        })
    }
}

fn is_record_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl AttachmentsLock<'_> {
    fn dir(&self) -> &TrustedDir {
        &self.records.dir
    }

    /// Writes (or replaces: a retried ADD) the record of `a`'s attachment, durably.
    pub fn write(&self, a: &Attachment) -> Result<()> {
        let body = serde_json::to_vec_pretty(a).expect("records serialize");
        self.dir().write_atomic(
            &attachment_hash(&a.container_id, &a.ifname),
            &body,
            true,
            "delegated",
        )
    }

    /// Removes the record of (container, ifname) and returns it (`None` when there was none or
    /// it could not be read), with the subnets it named that no remaining record names: their
    /// masquerade may go. An unreadable record elsewhere keeps every subnet: it may be using it.
    pub fn release(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<(Option<Attachment>, Vec<IpNetwork>)> {
        let hash = attachment_hash(container_id, ifname);
        let record = self
            .dir()
            .read(&hash)
            .ok()
            .flatten()
            .and_then(|s| serde_json::from_str::<Attachment>(&s).ok());
        if !self.dir().exists(&hash)? {
            return Ok((None, Vec::new()));
        }
        self.dir().remove(&hash)?;
        self.dir().sync()?;
        let Some(record) = record else {
            return Ok((None, Vec::new()));
        };
        let (rest, unreadable) = self.entries()?;
        if !unreadable.is_empty() {
            return Ok((Some(record), Vec::new()));
        }
        let used: BTreeSet<IpNetwork> = rest.iter().flat_map(Attachment::subnets).collect();
        let freed: BTreeSet<IpNetwork> = record.subnets().filter(|s| !used.contains(s)).collect();
        Ok((Some(record), freed.into_iter().collect()))
    }

    /// Every record: those that read back (sorted by container and ifname), and those that do
    /// not. Temp files of killed writers are removed on the way.
    pub fn entries(&self) -> Result<(Vec<Attachment>, Vec<UnreadableAttachment>)> {
        let (mut ok, mut bad) = (Vec::new(), Vec::new());
        for name in self.dir().names()? {
            if name.starts_with(TMP_PREFIX) {
                let _ = self.dir().remove(&name);
                continue;
            }
            if !is_record_name(&name) {
                continue;
            }
            let unreadable = |reason: String| UnreadableAttachment {
                path: self.dir().path().join(&name),
                hash: name.clone(),
                reason,
            };
            match self.dir().read(&name) {
                Ok(None) => {}
                Ok(Some(s)) => match serde_json::from_str::<Attachment>(&s) {
                    Ok(a) if attachment_hash(&a.container_id, &a.ifname) == name => ok.push(a),
                    Ok(_) => bad.push(unreadable(
                        "its attachment does not hash to its file name".into(),
                    )),
                    Err(e) => bad.push(unreadable(e.to_string())),
                },
                Err(e) => bad.push(unreadable(e.msg)),
            }
        }
        ok.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
        Ok((ok, bad))
    }
}

/// Every delegated record under `data_dir`, read under the lock, for people (`list`, `audit`).
pub fn scan(data_dir: &Path) -> Result<(Vec<Attachment>, Vec<UnreadableAttachment>)> {
    match Attachments::open_existing(data_dir)? {
        Some(records) => records.lock()?.entries(),
        None => Ok((Vec::new(), Vec::new())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(cid: &str, ips: &[&str]) -> Attachment {
        Attachment {
            container_id: cid.into(),
            ifname: "eth0".into(),
            host_veth: "rcniaaaaaaaaaaa".into(),
            network: "n".into(),
            netns: String::new(),
            pod_namespace: None,
            pod_name: None,
            created: 0,
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn release_frees_a_subnet_only_with_its_last_record() {
        let base = std::env::temp_dir().join(format!("rcni-deleg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        assert!(Attachments::open_existing(&base).unwrap().is_none());
        let records = Attachments::open(&base).unwrap();
        let lock = records.lock().unwrap();
        lock.write(&attachment("a", &["10.1.0.2/24", "fd00::2/64"]))
            .unwrap();
        lock.write(&attachment("b", &["10.1.0.3/24"])).unwrap();
        let (all, bad) = lock.entries().unwrap();
        assert_eq!((all.len(), bad.len()), (2, 0));
        assert_eq!(all[0].allocations()[0].0, "10.1.0.0/24");
        assert_eq!(all[0].allocations()[1].0, "fd00::/64");
        // a goes: its IPv6 subnet is free, its IPv4 one is still b's.
        let (gone, freed) = lock.release("a", "eth0").unwrap();
        assert_eq!(gone.unwrap().container_id, "a");
        assert_eq!(freed, vec!["fd00::/64".parse::<IpNetwork>().unwrap()]);
        assert_eq!(lock.release("a", "eth0").unwrap(), (None, vec![]));
        // An unreadable record keeps every subnet: it may hold one.
        let junk = base.join(DIR).join(attachment_hash("c", "eth0"));
        std::fs::write(&junk, b"{").unwrap();
        let (_, bad) = lock.entries().unwrap();
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].hash, attachment_hash("c", "eth0"));
        let (gone, freed) = lock.release("b", "eth0").unwrap();
        assert!(gone.is_some() && freed.is_empty(), "{freed:?}");
        std::fs::remove_file(&junk).unwrap();
        lock.write(&attachment("b", &["10.1.0.3/24"])).unwrap();
        let (_, freed) = lock.release("b", "eth0").unwrap();
        assert_eq!(freed, vec!["10.1.0.0/24".parse::<IpNetwork>().unwrap()]);
        drop(lock);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
