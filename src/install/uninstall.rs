//! `routed-cni uninstall`: removes what `install` wrote (the binary, the conflist, the .link
//! file and the NetworkManager drop-in), each only if it is ours, so a file of the same name
//! that someone else put there stays. Running it again finds nothing and succeeds.

use serde_json::Value;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::node_files;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UninstallOptions {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    pub conf_name: String,
    pub systemd_network_dir: PathBuf,
    pub networkmanager_conf_dir: PathBuf,
}

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    Removed,
    Absent,
    /// A file of our name that is not ours: left in place, with why.
    NotOurs(String),
    Failed(String),
}

/// A string every routed-cni binary holds (it is the needle of the search below, so it is in
/// the binary's read-only data): how a copy installed by another version is recognized.
const BINARY_MARK: &[u8] = b"routed-cni: the CNI plugin binary uninstall may remove";

fn binary_is_ours(data: &[u8]) -> Result<(), String> {
    if fs::read("/proc/self/exe").is_ok_and(|me| me == data) {
        return Ok(());
    }
    if data.windows(BINARY_MARK.len()).any(|w| w == BINARY_MARK) {
        return Ok(());
    }
    Err("not a routed-cni binary".into())
}

fn conflist_is_ours(data: &[u8]) -> Result<(), String> {
    let v: Value =
        serde_json::from_slice(data).map_err(|e| format!("not a JSON conflist ({e})"))?;
    match v["plugins"][0]["type"].as_str() {
        Some("routed-cni") => Ok(()),
        Some(other) => Err(format!("its first plugin is {other:?}, not routed-cni")),
        None => Err("it has no plugins[0].type".into()),
    }
}

fn node_file_is_ours(data: &[u8]) -> Result<(), String> {
    if node_files::is_ours(&String::from_utf8_lossy(data)) {
        Ok(())
    } else {
        Err(format!("it does not start with {:?}", node_files::HEADER))
    }
}

/// Removes `path` if `ours` accepts its content, and temp files an interrupted install left
/// next to it.
fn remove_if_ours(path: &Path, ours: fn(&[u8]) -> Result<(), String>) -> Removal {
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
        let tmp_prefix = format!(".{}.tmp.", name.to_string_lossy());
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&tmp_prefix) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == ErrorKind::NotFound => return Removal::Absent,
        Err(e) => return Removal::Failed(format!("read: {e}")),
    };
    if let Err(why) = ours(&data) {
        return Removal::NotOurs(why);
    }
    match fs::remove_file(path) {
        Ok(()) => {
            // The removal must survive a crash, like install's rename.
            if let Some(dir) = path.parent() {
                let _ = fs::File::open(dir).and_then(|d| d.sync_all());
            }
            Removal::Removed
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Removal::Absent,
        Err(e) => Removal::Failed(format!("remove: {e}")),
    }
}

/// Every file install may have written, with what became of it.
pub fn uninstall(o: &UninstallOptions) -> Vec<(PathBuf, Removal)> {
    let mut out = Vec::new();
    let bin = o.bin_dir.join("routed-cni");
    out.push((bin.clone(), remove_if_ours(&bin, binary_is_ours)));
    let conf = o.conf_dir.join(&o.conf_name);
    out.push((conf.clone(), remove_if_ours(&conf, conflist_is_ours)));
    for f in node_files::node_files(&o.systemd_network_dir, &o.networkmanager_conf_dir) {
        let p = f.path();
        out.push((p.clone(), remove_if_ours(&p, node_file_is_ours)));
    }
    out
}

/// Runs `routed-cni uninstall`: 0 when nothing of ours is left (removed, or already gone),
/// 1 when a file could not be removed or a file of our name is not ours.
pub fn run(o: &UninstallOptions) -> i32 {
    let mut code = 0;
    for (path, r) in uninstall(o) {
        let p = path.display();
        match r {
            Removal::Removed => println!("{p} removed"),
            Removal::Absent => println!("{p} absent"),
            Removal::NotOurs(why) => {
                println!("{p} kept: {why}");
                eprintln!(
                    "routed-cni uninstall: kept {p}: {why}; remove it yourself if it should go"
                );
                code = 1;
            }
            Removal::Failed(why) => {
                eprintln!("routed-cni uninstall: {p}: {why}");
                code = 1;
            }
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_checks() {
        let me = fs::read("/proc/self/exe").unwrap();
        assert!(binary_is_ours(&me).is_ok());
        let mut other_version = me.clone();
        other_version.push(0);
        assert!(binary_is_ours(&other_version).is_ok());
        assert!(binary_is_ours(b"\x7fELF some other plugin").is_err());
        assert!(conflist_is_ours(br#"{"plugins":[{"type":"routed-cni"}]}"#).is_ok());
        let e = conflist_is_ours(br#"{"plugins":[{"type":"bridge"}]}"#).unwrap_err();
        assert!(e.contains("bridge"), "{e}");
        assert!(conflist_is_ours(b"{").is_err());
        assert!(node_file_is_ours(node_files::link_file().as_bytes()).is_ok());
        assert!(node_file_is_ours(b"[Match]\nOriginalName=cali*\n").is_err());
    }
}
