//! The built-in IPAM store: one directory per pool, one file per allocated address.
//!
//! Layout under `<dataDir>/<network>-<prefix>/` (e.g. `/run/routed-cni/10.244.1.0-24/`):
//! - `lock`: flock held across scan and reserve, so parallel ADDs never pick the same address;
//! - `<ip>`: the allocation record (JSON), the source of truth for "this address is taken";
//! - `keys/<sha256(containerID/ifname)>`: the address held by an attachment, so DEL finds it
//!   without scanning;
//! - `last_reserved`: where the round-robin search resumes.
//!
//! Crash safety: every file is written to a temp file, fsynced and renamed. The key file is
//! written before the address record and removed after it, so every record has a key and a crash
//! can only leave a key pointing at nothing (harmless, replaced by the next write).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cni::error::{CniError, Code, ErrorContext, Result};
use crate::config::{addr_from_u128, addr_to_u128, PoolConfig};

/// How long an ADD or DEL waits for another holder of the pool lock before answering
/// "try again later" (code 11) instead of hanging the runtime.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(15);

const LOCK_FILE: &str = "lock";
const LAST_RESERVED_FILE: &str = "last_reserved";
const KEYS_DIR: &str = "keys";
const TMP_PREFIX: &str = ".tmp.";

/// sha256("<containerID>/<ifname>") in hex: names the key file; its first 11 characters name
/// the host veth.
pub fn attachment_hash(container_id: &str, ifname: &str) -> String {
    let digest = Sha256::digest(format!("{container_id}/{ifname}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// One allocation, as stored in `<ip>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub ip: IpAddr,
    pub container_id: String,
    pub ifname: String,
    #[serde(default)]
    pub host_veth: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default)]
    pub network: String,
    #[serde(default)]
    pub netns: String,
    /// Seconds since the epoch.
    #[serde(default)]
    pub created: u64,
}

impl Record {
    fn is_for(&self, container_id: &str, ifname: &str) -> bool {
        self.container_id == container_id && self.ifname == ifname
    }
}

/// A pool's directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    pool: PoolConfig,
}

/// The pool lock, held while it lives. All reads and writes go through it.
pub struct PoolLock<'a> {
    store: &'a Store,
    _file: File,
}

fn mkdir_private(path: &Path) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .or_code(
            Code::Store,
            format_args!("create store directory {}", path.display()),
        )
}

/// Writes `data` to `path` atomically: temp file in the same directory, fsync, rename.
/// `what` names the file for crash tests: `store:<what>-before-rename`.
fn write_atomic(path: &Path, data: &[u8], sync: bool, what: &str) -> Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!("{TMP_PREFIX}{name}.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        if sync {
            f.sync_all()?;
        }
        crate::crashpoint::here(&format!("store:{what}-before-rename"));
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        CniError::store(format!("write {}: {e}", path.display()))
    })
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CniError::store(format!("remove {}: {e}", path.display()))),
    }
}

fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CniError::store(format!("read {}: {e}", path.display()))),
    }
}

/// Blocks in flock on a helper thread (a second handle on the same open file, so the lock it
/// takes is ours), for at most `timeout`. Waiting in the kernel hands the lock over the moment
/// it is free, where polling would sleep past it or spin. If we give up, the helper keeps
/// waiting; when it gets the lock it finds nobody listening and closes its handle, which
/// releases the lock again.
fn wait_for_lock(file: &File, path: &Path, timeout: Duration) -> Result<()> {
    let waiter = file
        .try_clone()
        .or_code(Code::Store, format_args!("lock {}", path.display()))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(waiter.lock());
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(CniError::store(format!("lock {}: {e}", path.display()))),
        Err(_) => Err(CniError::new(
            Code::TryAgainLater,
            format!(
                "store lock {} is still held by another process after {} s; retry, and if it persists find the holder with `fuser -v {}`",
                path.display(),
                timeout.as_secs_f32(),
                path.display()
            ),
        )),
    }
}

impl Store {
    /// The pool's directory name: `10.244.1.0-24`.
    pub fn dir_name(pool: &PoolConfig) -> String {
        format!("{}-{}", pool.subnet.network(), pool.subnet.prefix())
    }

    /// Opens (creating if needed) the store of `pool`.
    pub fn open(pool: &PoolConfig) -> Result<Store> {
        let dir = pool.data_dir.join(Self::dir_name(pool));
        mkdir_private(&dir.join(KEYS_DIR))?;
        Ok(Store {
            dir,
            pool: pool.clone(),
        })
    }

    /// An existing pool directory found on disk (`routed-cni list`), without its config.
    pub fn at(dir: PathBuf) -> Store {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .replacen('-', "/", 1);
        let subnet = name
            .parse()
            .unwrap_or_else(|_| "0.0.0.0/0".parse().expect("valid"));
        // Only `network()` and `broadcast()` of it are used: bounds for listing, never allocation.
        Store {
            pool: PoolConfig {
                subnet,
                range_start: subnet.network(),
                range_end: subnet.broadcast(),
                data_dir: dir.parent().map(Path::to_path_buf).unwrap_or_default(),
            },
            dir,
        }
    }

    /// The store of `pool` if it exists: DEL must not create directories.
    pub fn open_existing(pool: &PoolConfig) -> Option<Store> {
        let dir = pool.data_dir.join(Self::dir_name(pool));
        dir.is_dir().then(|| Store {
            dir,
            pool: pool.clone(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pool(&self) -> &PoolConfig {
        &self.pool
    }

    /// Takes the pool lock, waiting at most `timeout`.
    pub fn lock(&self, timeout: Duration) -> Result<PoolLock<'_>> {
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .or_code(
                Code::Store,
                format_args!("open lock file {}", path.display()),
            )?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => wait_for_lock(&file, &path, timeout)?,
            Err(TryLockError::Error(e)) => {
                return Err(CniError::store(format!("lock {}: {e}", path.display())));
            }
        }
        crate::crashpoint::here("store:locked");
        Ok(PoolLock {
            store: self,
            _file: file,
        })
    }
}

impl PoolLock<'_> {
    fn record_path(&self, ip: IpAddr) -> PathBuf {
        self.store.dir.join(ip.to_string())
    }

    fn key_path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.store
            .dir
            .join(KEYS_DIR)
            .join(attachment_hash(container_id, ifname))
    }

    fn read_record(&self, ip: IpAddr) -> Result<Option<Record>> {
        let path = self.record_path(ip);
        match read_optional(&path)? {
            None => Ok(None),
            Some(s) => serde_json::from_str(&s).map(Some).map_err(|e| {
                CniError::store(format!(
                    "allocation record {} is unreadable ({e}); inspect it and remove it if no pod uses {ip}",
                    path.display()
                ))
            }),
        }
    }

    fn key_target(&self, container_id: &str, ifname: &str) -> Result<Option<IpAddr>> {
        let path = self.key_path(container_id, ifname);
        Ok(read_optional(&path)?.and_then(|s| s.trim().parse().ok()))
    }

    /// The allocation of (container, ifname), if any.
    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Option<Record>> {
        let Some(ip) = self.key_target(container_id, ifname)? else {
            return Ok(None);
        };
        Ok(self
            .read_record(ip)?
            .filter(|r| r.is_for(container_id, ifname)))
    }

    fn in_use(&self, ip: IpAddr) -> Result<bool> {
        match fs::symlink_metadata(self.record_path(ip)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(CniError::store(format!(
                "stat {}: {e}",
                self.record_path(ip).display()
            ))),
        }
    }

    /// Reserves an address for `template`'s attachment and returns the stored record. The same
    /// attachment gets its existing address back (a retried ADD).
    pub fn allocate(&self, template: &Record) -> Result<(Record, bool)> {
        if let Some(existing) = self.find(&template.container_id, &template.ifname)? {
            return Ok((existing, true));
        }
        let pool = &self.store.pool;
        let (start, end) = (addr_to_u128(pool.range_start), addr_to_u128(pool.range_end));
        let last_path = self.store.dir.join(LAST_RESERVED_FILE);
        let resume = read_optional(&last_path)?
            .and_then(|s| s.trim().parse::<IpAddr>().ok())
            .filter(|l| l.is_ipv4() == pool.range_start.is_ipv4())
            .map(addr_to_u128)
            .filter(|l| (start..=end).contains(l))
            .map_or(start, |l| if l == end { start } else { l + 1 });
        let size = pool.size();
        // An IPv6 /64 is never scanned to the end: the search stops at the first free address.
        let mut i: u128 = 0;
        while i < size {
            let candidate = addr_from_u128(pool.range_start, start + (resume - start + i) % size);
            i += 1;
            if self.in_use(candidate)? {
                continue;
            }
            let record = Record {
                ip: candidate,
                ..template.clone()
            };
            let key = self.key_path(&record.container_id, &record.ifname);
            write_atomic(&key, candidate.to_string().as_bytes(), true, "key")?;
            crate::crashpoint::here("store:key-written");
            let body = serde_json::to_vec_pretty(&record).expect("records serialize");
            if let Err(e) = write_atomic(&self.record_path(candidate), &body, true, "record") {
                let _ = remove_if_present(&key);
                return Err(e);
            }
            // Only a hint for the next search: no fsync needed.
            let _ = write_atomic(&last_path, candidate.to_string().as_bytes(), false, "last");
            return Ok((record, false));
        }
        Err(CniError::new(
            Code::PoolExhausted,
            format!(
                "pool {} (range {}-{}) has no free address: all {size} are allocated; \
                 run `routed-cni list` or look in {} for stale allocations, or give the node a larger pod subnet",
                pool.subnet,
                pool.range_start,
                pool.range_end,
                self.store.dir.display()
            ),
        ))
    }

    /// Releases the allocation of (container, ifname). `Ok(None)` when there was none.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Option<Record>> {
        let key = self.key_path(container_id, ifname);
        let Some(ip) = self.key_target(container_id, ifname)? else {
            remove_if_present(&key)?;
            return Ok(None);
        };
        // An unreadable record is not ours to judge here: keep it and drop only our key.
        let record = self
            .read_record(ip)
            .unwrap_or(None)
            .filter(|r| r.is_for(container_id, ifname));
        if record.is_some() {
            remove_if_present(&self.record_path(ip))?;
            crate::crashpoint::here("store:record-removed");
        }
        remove_if_present(&key)?;
        Ok(record)
    }

    /// Every readable allocation, sorted by address. Leftover temp files of killed writers are
    /// removed on the way (nobody else writes while we hold the lock).
    pub fn records(&self) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        for ip in self.addresses_in_use()? {
            if let Ok(Some(r)) = self.read_record(ip) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Every address with a record file (readable or not), sorted.
    pub fn addresses_in_use(&self) -> Result<Vec<IpAddr>> {
        let dir = &self.store.dir;
        let entries = fs::read_dir(dir).or_code(
            Code::Store,
            format_args!("read store directory {}", dir.display()),
        )?;
        let mut ips = Vec::new();
        for entry in entries {
            let entry = entry.or_code(
                Code::Store,
                format_args!("read store directory {}", dir.display()),
            )?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TMP_PREFIX) {
                let _ = fs::remove_file(entry.path());
            } else if let Ok(ip) = name.parse::<IpAddr>() {
                ips.push(ip);
            }
        }
        ips.sort();
        Ok(ips)
    }

    /// True when no address of the pool is allocated (its NAT rules may go).
    pub fn is_empty(&self) -> Result<bool> {
        let dir = &self.store.dir;
        let entries = fs::read_dir(dir).or_code(
            Code::Store,
            format_args!("read store directory {}", dir.display()),
        )?;
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .parse::<IpAddr>()
                .is_ok()
            {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::time::Instant;

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "rcni-store-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn pool(dir: &Path, subnet: &str, start: &str, end: &str) -> PoolConfig {
        PoolConfig {
            subnet: subnet.parse().unwrap(),
            range_start: start.parse().unwrap(),
            range_end: end.parse().unwrap(),
            data_dir: dir.to_path_buf(),
        }
    }

    fn rec(cid: &str) -> Record {
        Record {
            ip: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            container_id: cid.into(),
            ifname: "eth0".into(),
            host_veth: format!("rcni{}", &attachment_hash(cid, "eth0")[..11]),
            pod_namespace: Some("default".into()),
            pod_name: Some(format!("pod-{cid}")),
            network: "k8s".into(),
            netns: "/run/netns/x".into(),
            created: 0,
        }
    }

    #[test]
    fn allocates_round_robin_and_never_network_or_broadcast() {
        let dir = tempdir("rr");
        let store = Store::open(&pool(&dir, "10.0.0.0/29", "10.0.0.1", "10.0.0.6")).unwrap();
        let lock = store.lock(LOCK_TIMEOUT).unwrap();
        let ips: Vec<_> = (0..6)
            .map(|i| {
                lock.allocate(&rec(&format!("c{i}")))
                    .unwrap()
                    .0
                    .ip
                    .to_string()
            })
            .collect();
        assert_eq!(
            ips,
            ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        let e = lock.allocate(&rec("c6")).unwrap_err();
        assert_eq!(e.code, Code::PoolExhausted);
        assert!(e.msg.contains("10.0.0.0/29"), "{}", e.msg);
        // Release .2: the next allocation takes .2 only because it is the only free one;
        // release .2 and .4 and the search resumes after the last reserved, not at the lowest.
        assert_eq!(
            lock.release("c1", "eth0").unwrap().unwrap().ip.to_string(),
            "10.0.0.2"
        );
        assert_eq!(
            lock.allocate(&rec("c7")).unwrap().0.ip.to_string(),
            "10.0.0.2"
        );
        lock.release("c3", "eth0").unwrap();
        lock.release("c0", "eth0").unwrap();
        assert_eq!(
            lock.allocate(&rec("c8")).unwrap().0.ip.to_string(),
            "10.0.0.4"
        );
        assert_eq!(
            lock.allocate(&rec("c9")).unwrap().0.ip.to_string(),
            "10.0.0.1"
        );
        drop(lock);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ipv6_pool_allocates_distinct_addresses_and_reads_back() {
        let dir = tempdir("v6");
        let p = pool(
            &dir,
            "fd00:10:244:1::/64",
            "fd00:10:244:1:ffff:ffff:ffff:fffc",
            "fd00:10:244:1:ffff:ffff:ffff:fffe",
        );
        let store = Store::open(&p).unwrap();
        assert!(store.dir().ends_with("fd00:10:244:1::-64"));
        let lock = store.lock(LOCK_TIMEOUT).unwrap();
        let ips: Vec<String> = (0..3)
            .map(|i| {
                lock.allocate(&rec(&format!("v{i}")))
                    .unwrap()
                    .0
                    .ip
                    .to_string()
            })
            .collect();
        assert_eq!(
            ips,
            [
                "fd00:10:244:1:ffff:ffff:ffff:fffc",
                "fd00:10:244:1:ffff:ffff:ffff:fffd",
                "fd00:10:244:1:ffff:ffff:ffff:fffe"
            ]
        );
        assert_eq!(
            lock.allocate(&rec("v3")).unwrap_err().code,
            Code::PoolExhausted
        );
        assert_eq!(lock.records().unwrap().len(), 3);
        assert_eq!(
            lock.find("v1", "eth0").unwrap().unwrap().ip.to_string(),
            ips[1]
        );
        assert_eq!(
            lock.release("v1", "eth0").unwrap().unwrap().ip.to_string(),
            ips[1]
        );
        // Round robin wraps to the freed one.
        assert_eq!(lock.allocate(&rec("v4")).unwrap().0.ip.to_string(), ips[1]);
        drop(lock);
        // `routed-cni list` and audit find the pool by its directory name.
        let found = Store::at(store.dir().to_path_buf());
        assert_eq!(found.pool().subnet.to_string(), "fd00:10:244:1::/64");
        assert_eq!(
            found.lock(LOCK_TIMEOUT).unwrap().records().unwrap().len(),
            3
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn same_attachment_gets_same_address_and_release_is_idempotent() {
        let dir = tempdir("idem");
        let store = Store::open(&pool(&dir, "10.0.1.0/24", "10.0.1.1", "10.0.1.254")).unwrap();
        let lock = store.lock(LOCK_TIMEOUT).unwrap();
        let (a, reused_a) = lock.allocate(&rec("x")).unwrap();
        let (b, reused_b) = lock.allocate(&rec("x")).unwrap();
        assert!(!reused_a && reused_b);
        assert_eq!(a, b);
        assert_eq!(lock.find("x", "eth0").unwrap(), Some(a.clone()));
        assert_eq!(lock.find("x", "eth1").unwrap(), None);
        assert_eq!(lock.records().unwrap(), vec![a.clone()]);
        assert!(!lock.is_empty().unwrap());
        assert_eq!(lock.release("x", "eth0").unwrap(), Some(a));
        assert_eq!(lock.release("x", "eth0").unwrap(), None);
        assert_eq!(lock.release("never", "eth0").unwrap(), None);
        assert!(lock.is_empty().unwrap());
        assert!(fs::read_dir(store.dir().join(KEYS_DIR))
            .unwrap()
            .next()
            .is_none());
        drop(lock);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn many_threads_never_share_an_address() {
        let dir = tempdir("threads");
        let p = pool(&dir, "10.0.2.0/24", "10.0.2.1", "10.0.2.254");
        let handles: Vec<_> = (0..16)
            .map(|t| {
                let p = p.clone();
                std::thread::spawn(move || {
                    // Each thread opens the store itself, as separate processes would.
                    let store = Store::open(&p).unwrap();
                    (0..15)
                        .map(|i| {
                            let lock = store.lock(LOCK_TIMEOUT).unwrap();
                            lock.allocate(&rec(&format!("t{t}-{i}"))).unwrap().0.ip
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<IpAddr> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let distinct: HashSet<_> = all.iter().collect();
        assert_eq!(all.len(), 240);
        assert_eq!(distinct.len(), 240, "an address was handed out twice");
        let store = Store::open(&p).unwrap();
        assert_eq!(
            store.lock(LOCK_TIMEOUT).unwrap().records().unwrap().len(),
            240
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lock_wait_is_bounded() {
        let dir = tempdir("lock");
        let store =
            Arc::new(Store::open(&pool(&dir, "10.0.3.0/24", "10.0.3.1", "10.0.3.254")).unwrap());
        let held = store.lock(LOCK_TIMEOUT).unwrap();
        let other = Store::open(store.pool()).unwrap();
        let t0 = Instant::now();
        let e = other
            .lock(Duration::from_millis(100))
            .err()
            .expect("lock must time out");
        assert_eq!(e.code, Code::TryAgainLater);
        assert!(t0.elapsed() >= Duration::from_millis(100));
        drop(held);
        assert!(other.lock(Duration::from_millis(100)).is_ok());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reopened_after_interrupted_writes() {
        let dir = tempdir("crash");
        let p = pool(&dir, "10.0.4.0/29", "10.0.4.1", "10.0.4.6");
        let store = Store::open(&p).unwrap();
        {
            let lock = store.lock(LOCK_TIMEOUT).unwrap();
            lock.allocate(&rec("alive")).unwrap();
        }
        // A writer killed between writing and renaming leaves a temp file; one killed between
        // the key and the record leaves a key that points at a free address.
        fs::write(
            store.dir().join(format!("{TMP_PREFIX}10.0.4.2.999")),
            b"{\"ip\":\"10.0.",
        )
        .unwrap();
        fs::write(
            store
                .dir()
                .join(KEYS_DIR)
                .join(attachment_hash("dead", "eth0")),
            b"10.0.4.2",
        )
        .unwrap();
        let store = Store::open(&p).unwrap();
        let lock = store.lock(LOCK_TIMEOUT).unwrap();
        assert_eq!(lock.find("dead", "eth0").unwrap(), None);
        let (r, reused) = lock.allocate(&rec("dead")).unwrap();
        assert!(!reused);
        assert_eq!(r.ip.to_string(), "10.0.4.2");
        let (r2, _) = lock.allocate(&rec("new")).unwrap();
        assert_eq!(r2.ip.to_string(), "10.0.4.3");
        assert_eq!(lock.records().unwrap().len(), 3);
        assert!(!fs::read_dir(store.dir()).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(TMP_PREFIX)));
        // A key whose record belongs to someone else is dropped on release, the record kept.
        fs::write(
            store
                .dir()
                .join(KEYS_DIR)
                .join(attachment_hash("liar", "eth0")),
            b"10.0.4.1",
        )
        .unwrap();
        assert_eq!(lock.release("liar", "eth0").unwrap(), None);
        assert_eq!(
            lock.find("alive", "eth0").unwrap().unwrap().ip.to_string(),
            "10.0.4.1"
        );
        drop(lock);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempdir("perm");
        let store = Store::open(&pool(&dir, "10.0.5.0/24", "10.0.5.1", "10.0.5.254")).unwrap();
        let lock = store.lock(LOCK_TIMEOUT).unwrap();
        let (r, _) = lock.allocate(&rec("p")).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(store.dir()), 0o700);
        assert_eq!(mode(&store.dir().join(r.ip.to_string())), 0o600);
        assert_eq!(mode(&store.dir().join(LOCK_FILE)), 0o600);
        drop(lock);
        fs::remove_dir_all(&dir).unwrap();
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;
        use std::collections::HashMap;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

            /// Any byte string in a record file is an error or a record, never a panic.
            #[test]
            fn record_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                let _ = serde_json::from_slice::<Record>(&bytes);
            }

            /// Random allocate/release sequences against a model: never two attachments on one
            /// address, a retried ADD keeps its address, exhaustion only when the pool is full.
            #[test]
            fn store_matches_model(ops in prop::collection::vec((any::<bool>(), 0u8..12), 1..80)) {
                let dir = tempdir(&format!("model-{}", rand_tag(&ops)));
                let store = Store::open(&pool(&dir, "10.9.0.0/29", "10.9.0.1", "10.9.0.6")).unwrap();
                let lock = store.lock(LOCK_TIMEOUT).unwrap();
                let mut model: HashMap<String, IpAddr> = HashMap::new();
                for (add, who) in ops {
                    let cid = format!("c{who}");
                    if add {
                        match lock.allocate(&rec(&cid)) {
                            Ok((r, reused)) => {
                                prop_assert_eq!(reused, model.contains_key(&cid));
                                if let Some(ip) = model.get(&cid) {
                                    prop_assert_eq!(*ip, r.ip);
                                }
                                prop_assert!(!model.iter().any(|(c, ip)| *ip == r.ip && *c != cid), "address {} given twice", r.ip);
                                model.insert(cid, r.ip);
                            }
                            Err(e) => {
                                prop_assert_eq!(e.code, Code::PoolExhausted);
                                prop_assert_eq!(model.len(), 6);
                            }
                        }
                    } else {
                        let released = lock.release(&cid, "eth0").unwrap().map(|r| r.ip);
                        prop_assert_eq!(released, model.remove(&cid));
                    }
                }
                let mut stored: Vec<_> = lock.records().unwrap().into_iter().map(|r| (r.container_id, r.ip)).collect();
                let mut want: Vec<_> = model.into_iter().collect();
                stored.sort();
                want.sort();
                prop_assert_eq!(stored, want);
                drop(lock);
                fs::remove_dir_all(&dir).unwrap();
            }
        }

        fn rand_tag(ops: &[(bool, u8)]) -> u64 {
            ops.iter().fold(1469598103934665603u64, |h, (a, w)| {
                (h ^ (*a as u64 * 256 + *w as u64)).wrapping_mul(1099511628211)
            })
        }
    }
}
