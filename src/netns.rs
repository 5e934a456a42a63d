//! Network namespaces: open and validate a netns path, and enter one for a scope that always
//! returns to where the thread was (setns is per thread).

use nix::sched::{setns, CloneFlags};
use nix::sys::stat::fstat;
use nix::sys::statfs::fstatfs;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};

use crate::cni::error::{CniError, Code, Result};

/// statfs magic of nsfs, the filesystem behind /proc/*/ns/* and bind-mounted namespaces.
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// ioctl NS_GET_NSTYPE: which kind of namespace an nsfs file is.
const NS_GET_NSTYPE: u64 = 0xb703;

/// An open network namespace and the path the runtime gave for it.
#[derive(Debug)]
pub struct Netns {
    pub file: File,
    pub path: String,
}

fn same_file(a: &File, b: &File) -> Result<bool> {
    let (sa, sb) = (
        fstat(a.as_fd()).map_err(|e| CniError::new(Code::Io, format!("fstat netns: {e}")))?,
        fstat(b.as_fd()).map_err(|e| CniError::new(Code::Io, format!("fstat netns: {e}")))?,
    );
    Ok(sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino)
}

/// A command for the operator to paste that runs `cmd` in the namespace at `netns`: `ip netns
/// exec <name>` for a named one, `nsenter` otherwise.
pub fn exec_in(netns: &str, cmd: &str) -> String {
    match netns_name(netns) {
        Some(name) => format!("ip netns exec {name} {cmd}"),
        None => format!("nsenter --net={netns} {cmd}"),
    }
}

/// `ip <args>` in the namespace at `netns`, as the operator would type it: `ip -n <name>` for a
/// named one.
pub fn in_pod(netns: &str, args: &str) -> String {
    match netns_name(netns) {
        Some(name) => format!("ip -n {name} {args}"),
        None => format!("nsenter --net={netns} ip {args}"),
    }
}

/// The name `ip netns` knows a namespace by, when its path is under /run/netns.
fn netns_name(netns: &str) -> Option<&str> {
    netns
        .strip_prefix("/run/netns/")
        .or_else(|| netns.strip_prefix("/var/run/netns/"))
        .filter(|name| !name.contains('/'))
}

/// The calling thread's own network namespace.
pub fn current() -> Result<File> {
    File::open("/proc/thread-self/ns/net")
        .map_err(|e| CniError::new(Code::Io, format!("open /proc/thread-self/ns/net: {e}")))
}

impl Netns {
    /// Opens `path` and checks that it is a network namespace other than our own: a
    /// `/proc/<pid>/ns/net` path whose process died can be reused by another process, and
    /// configuring our own namespace as a pod would break the node.
    pub fn open(path: &str) -> Result<Netns> {
        const VAR: &str = "CNI_NETNS";
        let file = File::open(path).map_err(|e| {
            CniError::invalid_env(
                VAR,
                format!("{path:?} cannot be opened ({e}); is the pod sandbox still running?"),
            )
        })?;
        let fs =
            fstatfs(&file).map_err(|e| CniError::new(Code::Io, format!("statfs {path}: {e}")))?;
        if fs.filesystem_type().0 as i64 != NSFS_MAGIC {
            return Err(CniError::invalid_env(VAR, format!("{path:?} is not a namespace file (expected /run/netns/<name> or /proc/<pid>/ns/net)")));
        }
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd.
        let kind = unsafe { nix::libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if kind != CloneFlags::CLONE_NEWNET.bits() {
            return Err(CniError::invalid_env(
                VAR,
                format!("{path:?} is a namespace, but not a network namespace"),
            ));
        }
        if same_file(&file, &current()?)? {
            return Err(CniError::invalid_env(
                VAR,
                format!("{path:?} is the plugin's own network namespace (the node's); refusing to configure it as a pod"),
            ));
        }
        Ok(Netns {
            file,
            path: path.to_string(),
        })
    }

    /// Switches this thread into the namespace until the guard drops.
    pub fn enter(&self) -> Result<NetnsGuard> {
        NetnsGuard::enter(&self.file)
    }
}

/// Returns the thread to its original namespace when dropped, on every path out of a scope.
pub struct NetnsGuard {
    orig: File,
}

impl NetnsGuard {
    pub fn enter(target: &File) -> Result<NetnsGuard> {
        let orig = current()?;
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| CniError::new(Code::Io, format!("enter network namespace: {e}")))?;
        Ok(NetnsGuard { orig })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(self.orig.as_fd(), CloneFlags::CLONE_NEWNET) {
            // Continuing would configure the wrong namespace: stop the process.
            crate::error!("cannot return to the original network namespace: {e}");
            std::process::abort();
        }
    }
}
