//! Reading the whole store for people (`list`, `audit`, `doctor`): every pool under a data
//! dir, each read under its lock, with the records that read back and those that do not.

use ipnetwork::IpNetwork;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::fs::TrustedDir;
use super::record::{Record, Unreadable};
use super::store::{Store, LOCK_FILE, LOCK_TIMEOUT};
use crate::cni::error::Result;

/// One allocation and the address its attachment's key file leads to (doctor compares them).
#[derive(Debug, Clone)]
pub struct Found {
    pub record: Record,
    pub key_finds: Option<IpAddr>,
}

/// One pool directory as found on disk.
#[derive(Debug, Clone)]
pub struct PoolScan {
    /// "10.244.1.0/24".
    pub name: String,
    pub subnet: IpNetwork,
    pub dir: PathBuf,
    /// Sorted by address.
    pub records: Vec<Found>,
    pub unreadable: Vec<Unreadable>,
    /// Why the pool could not be read at all (untrusted directory, lock held too long);
    /// `records` and `unreadable` are empty then.
    pub error: Option<String>,
}

/// "10.244.1.0-24" -> 10.244.1.0/24; `None` for anything that is not a pool's directory name.
fn pool_subnet(dir_name: &str) -> Option<IpNetwork> {
    dir_name.replacen('-', "/", 1).parse().ok()
}

/// Every pool under `data_dir`, sorted by directory name. A missing data dir has none; one
/// that cannot be trusted or read is an error.
pub fn scan(data_dir: &Path) -> Result<Vec<PoolScan>> {
    let Some(data) = TrustedDir::open(data_dir, false)? else {
        return Ok(Vec::new());
    };
    let mut names: Vec<String> = data.names()?;
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let Some(subnet) = pool_subnet(&name) else {
            continue;
        };
        let mut pool = PoolScan {
            name: name.replacen('-', "/", 1),
            subnet,
            dir: data_dir.join(&name),
            records: Vec::new(),
            unreadable: Vec::new(),
            error: None,
        };
        match read_pool(&data, &name, subnet) {
            Ok(None) => continue,
            Ok(Some((records, unreadable))) => {
                pool.records = records;
                pool.unreadable = unreadable;
            }
            Err(e) => pool.error = Some(e.msg),
        }
        out.push(pool);
    }
    Ok(out)
}

/// Per pool directory under `data_dir`, how many addresses have a record (readable or not:
/// either keeps its address taken), counted without the pool lock. A record appears by rename
/// and goes by unlink, so the count is exact at the moment the directory is read; a reader
/// that never takes the lock (the agent's metrics) can never make an ADD or DEL wait.
pub fn allocated(data_dir: &Path) -> Result<Vec<(IpNetwork, usize)>> {
    let Some(data) = TrustedDir::open(data_dir, false)? else {
        return Ok(Vec::new());
    };
    let mut names: Vec<String> = data.names()?;
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let Some(subnet) = pool_subnet(&name) else {
            continue;
        };
        match std::fs::symlink_metadata(data.path().join(&name)) {
            Ok(m) if m.is_dir() || m.file_type().is_symlink() => {}
            _ => continue,
        }
        let Some(dir) = data.child(&name, false)? else {
            continue;
        };
        if !dir.exists(LOCK_FILE)? {
            continue;
        }
        let n = dir
            .names()?
            .iter()
            .filter(|n| n.parse::<IpAddr>().is_ok())
            .count();
        out.push((subnet, n));
    }
    Ok(out)
}

/// `None` when `name` is not a pool directory (not a directory, or never locked).
fn read_pool(
    data: &TrustedDir,
    name: &str,
    subnet: IpNetwork,
) -> Result<Option<(Vec<Found>, Vec<Unreadable>)>> {
    // Only directories (and links, which `child` refuses loudly) can be pools; a plain file
    // that happens to look like a pool name is not one.
    match std::fs::symlink_metadata(data.path().join(name)) {
        Ok(m) if m.is_dir() || m.file_type().is_symlink() => {}
        _ => return Ok(None),
    }
    let Some(dir) = data.child(name, false)? else {
        return Ok(None);
    };
    if !dir.exists(LOCK_FILE)? {
        return Ok(None);
    }
    let store = Store::found(dir, subnet)?;
    let lock = store.lock(LOCK_TIMEOUT)?;
    let (records, mut unreadable) = lock.entries()?;
    // Whose each unreadable record is, when a key file still says: the veth it may explain.
    for u in &mut unreadable {
        u.attachment = lock.key_leading_to(u.ip).ok().flatten();
    }
    let found = records
        .into_iter()
        .map(|record| Found {
            key_finds: lock
                .find(&record.container_id, &record.ifname)
                .ok()
                .flatten()
                .map(|r| r.ip),
            record,
        })
        .collect();
    Ok(Some((found, unreadable)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PoolConfig;

    #[test]
    fn shows_unreadable_records_and_unreadable_pools() {
        let base = std::env::temp_dir().join(format!("rcni-scan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        assert!(
            scan(&base).unwrap().is_empty(),
            "a missing data dir has no pools"
        );
        let pool = PoolConfig {
            subnet: "10.0.7.0/29".parse().unwrap(),
            range_start: "10.0.7.1".parse().unwrap(),
            range_end: "10.0.7.6".parse().unwrap(),
            data_dir: base.clone(),
        };
        let store = Store::open(&pool).unwrap();
        let template = Record {
            ip: "0.0.0.0".parse().unwrap(),
            container_id: "c".into(),
            ifname: "eth0".into(),
            host_veth: String::new(),
            pod_namespace: None,
            pod_name: None,
            network: "n".into(),
            netns: String::new(),
            created: 0,
        };
        store
            .lock(LOCK_TIMEOUT)
            .unwrap()
            .allocate(&template)
            .unwrap();
        std::fs::write(store.dir().join("10.0.7.5"), b"{\"ip\":").unwrap();
        let key = crate::ipam::attachment_hash("d", "eth0");
        std::fs::write(store.dir().join("keys").join(&key), b"10.0.7.5").unwrap();
        std::fs::write(base.join("10.9.9.0-24"), b"a file, not a pool").unwrap();
        std::fs::write(base.join("notes"), b"ignored").unwrap();
        // The lock-free count sees the readable record and the unreadable one; leftover temp
        // files and key files are not addresses.
        std::fs::write(store.dir().join(".tmp.10.0.7.6.1"), b"{").unwrap();
        let counted = allocated(&base).unwrap();
        assert_eq!(counted, vec![("10.0.7.0/29".parse().unwrap(), 2)]);
        let pools = scan(&base).unwrap();
        assert_eq!(pools.len(), 1, "{pools:?}");
        let p = &pools[0];
        assert_eq!(p.name, "10.0.7.0/29");
        assert_eq!(p.records.len(), 1);
        assert_eq!(p.records[0].key_finds, Some("10.0.7.1".parse().unwrap()));
        assert_eq!(p.unreadable.len(), 1);
        assert_eq!(p.unreadable[0].ip.to_string(), "10.0.7.5");
        assert!(p.unreadable[0].describe().contains("unreadable"));
        assert_eq!(p.unreadable[0].attachment.as_deref(), Some(key.as_str()));
        // A pool that cannot be trusted is reported, not skipped; the rest still scan.
        use std::os::unix::fs::PermissionsExt;
        let other = base.join("10.0.8.0-24");
        std::fs::create_dir(&other).unwrap();
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o777)).unwrap();
        let pools = scan(&base).unwrap();
        assert_eq!(pools.len(), 2);
        assert!(
            pools[1].error.as_deref().unwrap().contains("chmod"),
            "{pools:?}"
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
