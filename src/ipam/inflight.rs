//! "An ADD of this attachment ran while this GC did": each ADD holds an exclusive flock on
//! `<pool dir>/adding/<attachment hash>` from before it allocates until it exits, and on
//! success stamps the file's mtime with the moment it finished. GC is handed a list of valid
//! attachments the runtime made before it started GC, so it cannot name an ADD that was still
//! running then; GC asks here, under the pool lock, and leaves alone an attachment whose ADD is
//! running or finished after GC started. The kernel drops the flock when an ADD is killed, and
//! a killed ADD never stamps, so its leftovers are not protected. DEL and GC remove the mark
//! with the allocation. Delegated attachments keep their marks the same way, under
//! `<dataDir>/delegated/adding/` (the `*_in` functions take that directory).

use std::fs::{self, File, OpenOptions, TryLockError};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::record::attachment_hash;
use super::store::Store;
use crate::cni::error::{CniError, Result};

const DIR: &str = "adding";

/// Held by an ADD while it runs.
pub struct AddInFlight {
    file: File,
}

impl AddInFlight {
    /// The ADD succeeded: stamp the moment, still under the flock.
    pub fn finished(&self) {
        let _ = self.file.set_modified(SystemTime::now());
    }
}

fn path(dir: &Path, container_id: &str, ifname: &str) -> PathBuf {
    dir.join(attachment_hash(container_id, ifname))
}

/// Marks an ADD of (container, ifname) as running in `store`'s pool. Call before allocating.
pub fn begin_add(store: &Store, container_id: &str, ifname: &str) -> Result<AddInFlight> {
    begin_add_in(&store.dir().join(DIR), container_id, ifname)
}

/// `begin_add` with the marks in `dir`.
pub fn begin_add_in(dir: &Path, container_id: &str, ifname: &str) -> Result<AddInFlight> {
    let path = path(dir, container_id, ifname);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| CniError::store(format!("create {}: {e}", dir.display())))?;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| CniError::store(format!("open {}: {e}", path.display())))?;
    // Blocks only behind another ADD of the very same attachment (a retry).
    file.lock()
        .map_err(|e| CniError::store(format!("lock {}: {e}", path.display())))?;
    Ok(AddInFlight { file })
}

/// True when an ADD of (container, ifname) in `store`'s pool is running, or finished at or
/// after `since`.
pub fn add_since(store: &Store, container_id: &str, ifname: &str, since: SystemTime) -> bool {
    add_since_in(&store.dir().join(DIR), container_id, ifname, since)
}

/// `add_since` with the marks in `dir`.
pub fn add_since_in(dir: &Path, container_id: &str, ifname: &str, since: SystemTime) -> bool {
    let Ok(file) = File::open(path(dir, container_id, ifname)) else {
        return false;
    };
    match file.try_lock() {
        Ok(()) => file
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t >= since),
        Err(TryLockError::WouldBlock) => true,
        // Cannot tell: err on the side of the pod.
        Err(TryLockError::Error(_)) => true,
    }
}

/// Removes the mark of (container, ifname): its allocation is being released.
pub fn forget(store: &Store, container_id: &str, ifname: &str) {
    forget_in(&store.dir().join(DIR), container_id, ifname);
}

/// `forget` with the marks in `dir`.
pub fn forget_in(dir: &Path, container_id: &str, ifname: &str) {
    let _ = fs::remove_file(path(dir, container_id, ifname));
}
