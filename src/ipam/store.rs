//! The built-in IPAM store: one directory per pool, one file per allocated address.
//!
//! Layout under `<dataDir>/<network>-<prefix>/` (e.g. `/run/routed-cni/10.244.1.0-24/`):
//! - `lock`: flock held across scan and reserve, so parallel ADDs never pick the same address;
//! - `<ip>`: the allocation record (JSON), the source of truth for "this address is taken";
//! - `keys/<sha256(containerID/ifname)>`: the address held by an attachment, so DEL finds it
//!   without scanning;
//! - `last_reserved`: where the round-robin search resumes.
//!
//! Crash safety: every file is written to a temp file, fsynced and renamed, and the directory
//! fsynced after the rename. The key file is written before the address record and removed
//! after it, so every record has a key and a crash can only leave a key pointing at nothing
//! (harmless, replaced by the next write).
//!
//! Trust: the data dir and every pool directory are checked when opened (see `fs`); one that
//! is a symlink, owned by someone else or writable by group or others is refused (code 103).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::fs::{TrustedDir, TMP_PREFIX};
use super::lock;
pub use super::lock::LOCK_TIMEOUT;
use super::record::{attachment_hash, Record, Unreadable};
use crate::cni::error::{CniError, Code, Result};
use crate::config::{addr_from_u128, addr_to_u128, PoolConfig};

pub(super) const LOCK_FILE: &str = "lock";
const LAST_RESERVED_FILE: &str = "last_reserved";
const KEYS_DIR: &str = "keys";

/// A pool's directory, checked and open.
#[derive(Debug, Clone)]
pub struct Store {
    dir: TrustedDir,
    keys: TrustedDir,
    pool: PoolConfig,
}

/// The pool lock, held while it lives. All reads and writes go through it.
pub struct PoolLock<'a> {
    store: &'a Store,
    _file: std::fs::File,
}

impl Store {
    /// The pool's directory name: `10.244.1.0-24`.
    pub fn dir_name(pool: &PoolConfig) -> String {
        format!("{}-{}", pool.subnet.network(), pool.subnet.prefix())
    }

    /// Opens (creating if needed) the store of `pool`.
    pub fn open(pool: &PoolConfig) -> Result<Store> {
        let data = TrustedDir::open(&pool.data_dir, true)?.expect("created");
        let dir = data.child(&Self::dir_name(pool), true)?.expect("created");
        Self::with_dir(dir, pool.clone())
    }

    /// The store of `pool` if it exists: DEL must not create directories. Still refuses one
    /// it cannot trust.
    pub fn open_existing(pool: &PoolConfig) -> Result<Option<Store>> {
        let Some(data) = TrustedDir::open(&pool.data_dir, false)? else {
            return Ok(None);
        };
        match data.child(&Self::dir_name(pool), false)? {
            Some(dir) => Self::with_dir(dir, pool.clone()).map(Some),
            None => Ok(None),
        }
    }

    /// A pool directory found on disk by a scan, without its config: its name gives the
    /// subnet, whose bounds are used for listing only, never for allocation.
    pub(super) fn found(dir: TrustedDir, subnet: ipnetwork::IpNetwork) -> Result<Store> {
        let data_dir = dir
            .path()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let pool = PoolConfig {
            subnet,
            range_start: subnet.network(),
            range_end: subnet.broadcast(),
            data_dir,
        };
        Self::with_dir(dir, pool)
    }

    fn with_dir(dir: TrustedDir, pool: PoolConfig) -> Result<Store> {
        // A pool directory without its keys (created by hand, or by a very old version) gets
        // them: harmless, and every write below can count on it.
        let keys = dir.child(KEYS_DIR, true)?.expect("created");
        Ok(Store { dir, keys, pool })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pool(&self) -> &PoolConfig {
        &self.pool
    }

    /// Takes the pool lock, waiting at most `timeout`.
    pub fn lock(&self, timeout: Duration) -> Result<PoolLock<'_>> {
        let file = self.dir.open_lock(LOCK_FILE)?;
        lock::acquire(&file, &self.dir.path().join(LOCK_FILE), timeout)?;
        crate::crashpoint::here("store:locked");
        Ok(PoolLock {
            store: self,
            _file: file,
        })
    }
}

impl PoolLock<'_> {
    fn record_path(&self, ip: IpAddr) -> PathBuf {
        self.store.dir.path().join(ip.to_string())
    }

    /// The record of `ip`: `Ok(None)` if there is none, `Err` with why if it cannot be read.
    fn read_record(&self, ip: IpAddr) -> std::result::Result<Option<Record>, Unreadable> {
        let unreadable = |reason: String| Unreadable {
            ip,
            path: self.record_path(ip),
            reason,
            attachment: None,
        };
        match self.store.dir.read(&ip.to_string()) {
            Ok(None) => Ok(None),
            Ok(Some(s)) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| unreadable(e.to_string())),
            Err(e) => Err(unreadable(e.msg)),
        }
    }

    fn key_target(&self, container_id: &str, ifname: &str) -> Result<Option<IpAddr>> {
        let key = attachment_hash(container_id, ifname);
        Ok(self
            .store
            .keys
            .read(&key)?
            .and_then(|s| s.trim().parse().ok()))
    }

    /// The attachment hash of a key file that leads to `ip`, if any: who an unreadable record
    /// belongs to. Reads every key; for people, not for the CNI verbs.
    pub fn key_leading_to(&self, ip: IpAddr) -> Result<Option<String>> {
        for name in self.store.keys.names()? {
            if name.starts_with(TMP_PREFIX) {
                continue;
            }
            let target = self.store.keys.read(&name)?;
            if target.and_then(|s| s.trim().parse::<IpAddr>().ok()) == Some(ip) {
                return Ok(Some(name));
            }
        }
        Ok(None)
    }

    /// The allocation of (container, ifname), if any.
    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Option<Record>> {
        let Some(ip) = self.key_target(container_id, ifname)? else {
            return Ok(None);
        };
        Ok(self
            .read_record(ip)
            .map_err(|u| CniError::store(u.describe()))?
            .filter(|r| r.is_for(container_id, ifname)))
    }

    /// Reserves an address for `template`'s attachment and returns the stored record. The same
    /// attachment gets its existing address back (a retried ADD). An address with a record
    /// file of any kind, readable or not, is taken.
    pub fn allocate(&self, template: &Record) -> Result<(Record, bool)> {
        if let Some(existing) = self.find(&template.container_id, &template.ifname)? {
            return Ok((existing, true));
        }
        let pool = &self.store.pool;
        let (start, end) = (addr_to_u128(pool.range_start), addr_to_u128(pool.range_end));
        let resume = self
            .store
            .dir
            .read(LAST_RESERVED_FILE)?
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
            if self.store.dir.exists(&candidate.to_string())? {
                continue;
            }
            let record = Record {
                ip: candidate,
                ..template.clone()
            };
            let key = attachment_hash(&record.container_id, &record.ifname);
            let ip = candidate.to_string();
            self.store
                .keys
                .write_atomic(&key, ip.as_bytes(), true, "key")?;
            crate::crashpoint::here("store:key-written");
            let body = serde_json::to_vec_pretty(&record).expect("records serialize");
            if let Err(e) = self.store.dir.write_atomic(&ip, &body, true, "record") {
                let _ = self.store.keys.remove(&key);
                return Err(e);
            }
            // Only a hint for the next search: its content is not fsynced.
            let _ = self
                .store
                .dir
                .write_atomic(LAST_RESERVED_FILE, ip.as_bytes(), false, "last");
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
                self.store.dir().display()
            ),
        ))
    }

    /// Releases the allocation of (container, ifname). `Ok(None)` when there was none.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Option<Record>> {
        let key = attachment_hash(container_id, ifname);
        let Some(ip) = self.key_target(container_id, ifname)? else {
            self.store.keys.remove(&key)?;
            return Ok(None);
        };
        // An unreadable record is not ours to judge here: keep it and drop only our key.
        let record = self
            .read_record(ip)
            .unwrap_or(None)
            .filter(|r| r.is_for(container_id, ifname));
        if record.is_some() {
            self.store.dir.remove(&ip.to_string())?;
            // Durable before the key goes, so a crash never leaves a record without its key.
            self.store.dir.sync()?;
            crate::crashpoint::here("store:record-removed");
        }
        self.store.keys.remove(&key)?;
        Ok(record)
    }

    /// Every readable allocation, sorted by address. Leftover temp files of killed writers are
    /// removed on the way (nobody else writes while we hold the lock).
    pub fn records(&self) -> Result<Vec<Record>> {
        Ok(self.entries()?.0)
    }

    /// Every allocation, sorted by address: those that read back, and those that do not.
    pub fn entries(&self) -> Result<(Vec<Record>, Vec<Unreadable>)> {
        let (mut ok, mut bad) = (Vec::new(), Vec::new());
        for ip in self.addresses_in_use()? {
            match self.read_record(ip) {
                Ok(Some(r)) => ok.push(r),
                Ok(None) => {}
                Err(u) => bad.push(u),
            }
        }
        Ok((ok, bad))
    }

    /// Every address with a record file (readable or not), sorted.
    pub fn addresses_in_use(&self) -> Result<Vec<IpAddr>> {
        let mut ips = Vec::new();
        for name in self.store.dir.names()? {
            if name.starts_with(TMP_PREFIX) {
                let _ = self.store.dir.remove(&name);
            } else if let Ok(ip) = name.parse::<IpAddr>() {
                ips.push(ip);
            }
        }
        ips.sort();
        Ok(ips)
    }

    /// True when no address of the pool is allocated: before an allocation, the pod is the
    /// pool's first (ADD installs its rules); after a release, its last (they may go).
    pub fn is_empty(&self) -> Result<bool> {
        Ok(!self.store.dir.any_name(|n| n.parse::<IpAddr>().is_ok())?)
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
