//! The store's file system access. A directory is checked once, when it is opened: not a
//! symlink, owned by the user we run as, not writable by group or others. Every file in it is
//! then reached relative to that open descriptor (openat, renameat, unlinkat), never by path,
//! so a directory swapped or linked after the check is never written through, and nobody but
//! us can plant or replace a record.

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, mkdirat, Mode};
use nix::unistd::{fsync, geteuid, unlinkat, UnlinkatFlags};
use std::fs::{DirBuilder, File};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cni::error::{CniError, Result};

/// Temp files of writers in flight (or killed); nothing else in the store starts with it.
pub const TMP_PREFIX: &str = ".tmp.";

/// Directories are opened as themselves, never through a link.
fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// A checked, open directory of the store.
#[derive(Debug, Clone)]
pub struct TrustedDir {
    path: PathBuf,
    fd: Arc<OwnedFd>,
}

/// Why a directory is not trusted, with the command that fixes it; `None` when it is fine.
fn distrust(path: &Path, uid: u32, mode: u32) -> Option<String> {
    let me = geteuid().as_raw();
    let p = path.display();
    if uid != me {
        let who = if me == 0 {
            "root".to_string()
        } else {
            format!("uid {me}")
        };
        return Some(format!(
            "IPAM store directory {p} is owned by uid {uid}, not by {who} that routed-cni runs as; \
             anyone owning it could forge or remove allocations: chown {me} {p} (or point ipam.dataDir elsewhere)"
        ));
    }
    if mode & 0o022 != 0 {
        return Some(format!(
            "IPAM store directory {p} is writable by group or others (mode {:04o}); they could forge \
             or remove allocations: chmod go-w {p} (the store creates its directories 0700)",
            mode & 0o7777
        ));
    }
    None
}

fn io_err(what: &str, path: &Path, e: Errno) -> CniError {
    CniError::store(format!("{what} {}: {e}", path.display()))
}

impl TrustedDir {
    /// Opens `path` and checks it. Missing: created (with missing parents) 0700 when `create`,
    /// else `None`.
    pub fn open(path: &Path, create: bool) -> Result<Option<TrustedDir>> {
        match nix::fcntl::open(path, dir_flags(), Mode::empty()) {
            Ok(fd) => Self::checked(path.to_path_buf(), fd).map(Some),
            Err(Errno::ENOENT) if create => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(path)
                    .map_err(|e| {
                        CniError::store(format!("create store directory {}: {e}", path.display()))
                    })?;
                Self::open(path, false)
            }
            Err(Errno::ENOENT) => Ok(None),
            Err(e @ (Errno::ENOTDIR | Errno::ELOOP)) => Err(Self::not_a_dir(path, e)),
            Err(e) => Err(io_err("open store directory", path, e)),
        }
    }

    /// The subdirectory `name`, checked like the store's own. Missing: created 0700 when
    /// `create`, else `None`.
    pub fn child(&self, name: &str, create: bool) -> Result<Option<TrustedDir>> {
        let path = self.path.join(name);
        if create {
            match mkdirat(&*self.fd, name, Mode::S_IRWXU) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(io_err("create store directory", &path, e)),
            }
        }
        match openat(&*self.fd, name, dir_flags(), Mode::empty()) {
            Ok(fd) => Self::checked(path, fd).map(Some),
            Err(Errno::ENOENT) => Ok(None),
            Err(e @ (Errno::ENOTDIR | Errno::ELOOP)) => Err(Self::not_a_dir(&path, e)),
            Err(e) => Err(io_err("open store directory", &path, e)),
        }
    }

    fn checked(path: PathBuf, fd: OwnedFd) -> Result<TrustedDir> {
        let st = fstat(&fd).map_err(|e| io_err("stat", &path, e))?;
        if let Some(why) = distrust(&path, st.st_uid, st.st_mode) {
            return Err(CniError::store(why));
        }
        Ok(TrustedDir {
            path,
            fd: Arc::new(fd),
        })
    }

    /// O_DIRECTORY|O_NOFOLLOW refused it: say whether it is a link or not a directory at all.
    fn not_a_dir(path: &Path, e: Errno) -> CniError {
        let p = path.display();
        match std::fs::read_link(path) {
            Ok(target) => CniError::store(format!(
                "IPAM store directory {p} is a symbolic link (to {}); the store follows no links, \
                 so nobody can redirect its writes: set ipam.dataDir to the real directory, or \
                 replace the link by a directory",
                target.display()
            )),
            Err(_) => io_err("open store directory", path, e),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether an entry `name` exists (of any kind; links are not followed).
    pub fn exists(&self, name: &str) -> Result<bool> {
        match fstatat(&*self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(_) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(io_err("stat", &self.path.join(name), e)),
        }
    }

    /// The content of file `name`, `None` if there is none. A link is an error, not followed.
    pub fn read(&self, name: &str) -> Result<Option<String>> {
        let path = self.path.join(name);
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match openat(&*self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(io_err("read", &path, e)),
        };
        let mut s = String::new();
        File::from(fd)
            .read_to_string(&mut s)
            .map_err(|e| CniError::store(format!("read {}: {e}", path.display())))?;
        Ok(Some(s))
    }

    /// Opens (creating 0600) the lock file `name`.
    pub fn open_lock(&self, name: &str) -> Result<File> {
        let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        openat(&*self.fd, name, flags, Mode::S_IRUSR | Mode::S_IWUSR)
            .map(File::from)
            .map_err(|e| io_err("open lock file", &self.path.join(name), e))
    }

    /// Writes `data` to `name` atomically: a new temp file (O_EXCL|O_NOFOLLOW, so nothing
    /// planted there is written through), fsynced when `sync_file`, renamed over `name`, then
    /// the directory fsynced so the rename itself survives a crash. `what` names the crash
    /// point `store:<what>-before-rename`.
    pub fn write_atomic(&self, name: &str, data: &[u8], sync_file: bool, what: &str) -> Result<()> {
        let tmp = format!("{TMP_PREFIX}{name}.{}", std::process::id());
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mode = Mode::S_IRUSR | Mode::S_IWUSR;
        let write = || -> std::result::Result<(), Errno> {
            let fd = match openat(&*self.fd, tmp.as_str(), flags, mode) {
                // A temp file of a killed writer that had our pid: we hold the pool lock, so
                // nobody is writing it now.
                Err(Errno::EEXIST) => {
                    unlinkat(&*self.fd, tmp.as_str(), UnlinkatFlags::NoRemoveDir)?;
                    openat(&*self.fd, tmp.as_str(), flags, mode)?
                }
                other => other?,
            };
            let mut f = File::from(fd);
            f.write_all(data).map_err(errno_of)?;
            if sync_file {
                f.sync_all().map_err(errno_of)?;
            }
            crate::crashpoint::here(&format!("store:{what}-before-rename"));
            renameat(&*self.fd, tmp.as_str(), &*self.fd, name)?;
            fsync(&*self.fd)
        };
        write().map_err(|e| {
            let _ = unlinkat(&*self.fd, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            io_err("write", &self.path.join(name), e)
        })
    }

    /// Removes file `name`; already gone counts as done.
    pub fn remove(&self, name: &str) -> Result<()> {
        match unlinkat(&*self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(io_err("remove", &self.path.join(name), e)),
        }
    }

    /// Makes the removals and renames so far durable, in order.
    pub fn sync(&self) -> Result<()> {
        fsync(&*self.fd).map_err(|e| io_err("fsync", &self.path, e))
    }

    /// The names in the directory (without `.` and `..`), read through the checked descriptor.
    /// True when some entry's name satisfies `f`; stops reading the directory at the first,
    /// so asking a full pool costs one `getdents` rather than a list of every record.
    pub fn any_name(&self, f: impl Fn(&str) -> bool) -> Result<bool> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let mut dir = Dir::openat(&*self.fd, ".", flags, Mode::empty())
            .map_err(|e| io_err("read store directory", &self.path, e))?;
        for entry in dir.iter() {
            let entry = entry.map_err(|e| io_err("read store directory", &self.path, e))?;
            if f(&entry.file_name().to_string_lossy()) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub fn names(&self) -> Result<Vec<String>> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let mut dir = Dir::openat(&*self.fd, ".", flags, Mode::empty())
            .map_err(|e| io_err("read store directory", &self.path, e))?;
        let mut out = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| io_err("read store directory", &self.path, e))?;
            let name = entry.file_name().to_string_lossy();
            if name != "." && name != ".." {
                out.push(name.into_owned());
            }
        }
        Ok(out)
    }
}

fn errno_of(e: std::io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rcni-fs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn refuses_links_and_writable_directories_and_names_the_fix() {
        let base = tempdir("trust");
        let real = base.join("real");
        std::fs::create_dir_all(&real).unwrap();
        chmod(&real, 0o755);
        assert!(TrustedDir::open(&real, false).unwrap().is_some());
        let link = base.join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = TrustedDir::open(&link, true).unwrap_err();
        assert!(
            e.msg.contains("symbolic link") && e.msg.contains(&link.display().to_string()),
            "{}",
            e.msg
        );
        for mode in [0o777, 0o775, 0o757, 0o1777] {
            chmod(&real, mode);
            let e = TrustedDir::open(&real, false).unwrap_err();
            assert_eq!(e.code, crate::cni::error::Code::Store);
            assert!(e.msg.contains("chmod go-w"), "{mode:o}: {}", e.msg);
        }
        chmod(&real, 0o700);
        let top = TrustedDir::open(&real, false).unwrap().unwrap();
        // A child is checked the same way; one that is a link is refused, not followed.
        std::os::unix::fs::symlink(&base, real.join("sub")).unwrap();
        assert!(top
            .child("sub", true)
            .unwrap_err()
            .msg
            .contains("symbolic link"));
        std::fs::create_dir(real.join("wide")).unwrap();
        chmod(&real.join("wide"), 0o777);
        assert!(top.child("wide", false).is_err());
        assert!(top.child("absent", false).unwrap().is_none());
        // Created ones are private, parents included.
        let made = TrustedDir::open(&base.join("a/b"), true).unwrap().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(made.path()), 0o700);
        assert_eq!(mode(&base.join("a")), 0o700);
        made.child("c", true).unwrap().unwrap();
        assert_eq!(mode(&base.join("a/b/c")), 0o700);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn writes_never_follow_a_planted_link() {
        let base = tempdir("plant");
        let d = TrustedDir::open(&base.join("d"), true).unwrap().unwrap();
        let victim = base.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        // A link where the temp file goes, and one where the record goes.
        let tmp = format!("{TMP_PREFIX}rec.{}", std::process::id());
        std::os::unix::fs::symlink(&victim, d.path().join(&tmp)).unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join("linked")).unwrap();
        d.write_atomic("rec", b"new", true, "test").unwrap();
        assert_eq!(d.read("rec").unwrap().as_deref(), Some("new"));
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(d.read("linked").is_err(), "a link is read through");
        d.write_atomic("linked", b"x", false, "test").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(!d.names().unwrap().iter().any(|n| n.starts_with(TMP_PREFIX)));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
