//! The pool lock: an flock on `<pool>/lock`, waited for with a bound so a stuck holder turns
//! into "try again later" (code 11) instead of a hung runtime.

use std::fs::{File, TryLockError};
use std::path::Path;
use std::time::Duration;

use crate::cni::error::{CniError, Code, ErrorContext, Result};

/// How long an ADD or DEL waits for another holder of the pool lock before answering
/// "try again later" (code 11) instead of hanging the runtime.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(15);

/// Takes the flock on `file` (opened from `path`), waiting at most `timeout`.
pub fn acquire(file: &File, path: &Path, timeout: Duration) -> Result<()> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => wait_for_lock(file, path, timeout),
        Err(TryLockError::Error(e)) => {
            Err(CniError::store(format!("lock {}: {e}", path.display())))
        }
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
