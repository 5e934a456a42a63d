//! `routed-cni install`: put this binary into the CNI bin dir and our conflist into the CNI
//! config dir, each by temp file + fsync + rename, so a runtime never reads a half-written
//! config and never execs a half-copied binary ("text file busy" cannot happen either: the old
//! inode stays intact for processes still running it). Re-running it is harmless. Where the
//! node has them, it also writes a systemd `.link` file and a NetworkManager drop-in that keep
//! udev and NetworkManager off our interfaces (`node_files`); `uninstall` removes all four.
//! The conflist chains the reference `portmap` plugin after routed-cni (hostPort) unless told
//! not to, and install says when a chained plugin is not in the bin dir (`plugins`).

mod node_files;
pub mod plugins;
mod uninstall;

pub use node_files::{
    link_file, nm_drop_in, DEFAULT_NETWORKMANAGER_CONF_DIR, DEFAULT_SYSTEMD_NETWORK_DIR,
    LINK_FILE_NAME, NM_DROP_IN_NAME,
};
pub use plugins::MissingPlugin;
pub use uninstall::{run as run_uninstall, uninstall, Removal, UninstallOptions};

use ipnetwork::IpNetwork;
use serde_json::{json, Value};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
/// Sorted before other configs: runtimes use the first file of the directory.
pub const DEFAULT_CONF_NAME: &str = "10-routed-cni.conflist";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallOptions {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    pub conf_name: String,
    /// Where udev reads `.link` files; the file is written only if it exists.
    pub systemd_network_dir: PathBuf,
    /// NetworkManager's drop-in directory; the file is written only if it exists.
    pub networkmanager_conf_dir: PathBuf,
    pub network_name: String,
    /// This node's pod CIDRs: one, or one per family for dual-stack (IPv4 first).
    pub pod_subnets: Vec<IpNetwork>,
    /// The cluster's pod CIDRs (per family), reached without masquerade.
    pub cluster_cidrs: Vec<IpNetwork>,
    pub mtu: Option<u32>,
    pub log_file: Option<String>,
    /// Chain `portmap` after routed-cni, so that runtimes pass pods' hostPorts.
    pub portmap: bool,
    /// The plugin's store (`ipam.dataDir`); `None`: the plugin's default, /run/routed-cni.
    pub data_dir: Option<PathBuf>,
}

/// What install did, for the caller's log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Installed {
    pub binary_changed: bool,
    pub config_changed: bool,
    /// The .link file and the NetworkManager drop-in, in that order.
    pub node_files: Vec<NodeFileDone>,
    /// Plugins the conflist chains that the bin dir cannot run: every pod's ADD fails.
    pub missing_plugins: Vec<MissingPlugin>,
}

/// What install did with one of the optional node files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFileDone {
    pub path: PathBuf,
    pub what: &'static str,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Written,
    Unchanged,
    /// Its directory does not exist on this node: nothing there reads such a file.
    NoDirectory,
}

impl NodeFileDone {
    /// One line for people, as `install` prints it.
    pub fn line(&self) -> String {
        let p = self.path.display();
        match self.outcome {
            Outcome::Written => format!("{p} installed"),
            Outcome::Unchanged => format!("{p} unchanged"),
            Outcome::NoDirectory => format!(
                "{p} skipped: {} does not exist on this node (no {} to configure)",
                self.path.parent().unwrap_or(Path::new("/")).display(),
                self.what
            ),
        }
    }
}

/// The conflist for this node.
pub fn conflist(o: &InstallOptions) -> Value {
    let mut ipam = match o.pod_subnets.as_slice() {
        [one] => json!({ "subnet": one.to_string() }),
        many => json!({
            "ranges": many.iter().map(|s| json!([{ "subnet": s.to_string() }])).collect::<Vec<_>>()
        }),
    };
    if let Some(d) = &o.data_dir {
        ipam["dataDir"] = json!(d);
    }
    // Per family: the cluster CIDR if one was given, else the node's own pod subnet.
    let non_masquerade: Vec<String> = o
        .pod_subnets
        .iter()
        .map(|p| {
            o.cluster_cidrs
                .iter()
                .find(|c| c.is_ipv6() == p.is_ipv6())
                .unwrap_or(p)
                .to_string()
        })
        .collect();
    let mut plugin = json!({
        "type": "routed-cni",
        "ipam": ipam,
        "masquerade": true,
        "nonMasqueradeCIDRs": non_masquerade,
    });
    if let Some(m) = o.mtu {
        plugin["mtu"] = json!(m);
    }
    if let Some(l) = &o.log_file {
        plugin["logFile"] = json!(l);
    }
    let mut plugins = vec![plugin];
    if o.portmap {
        // As kindnet and Calico chain it: the capability makes the runtime pass the pod's
        // hostPorts as runtimeConfig.portMappings (it passes them to no plugin without it);
        // snat masquerades a pod reaching its own hostPort (hairpin) and connections to it
        // from the node's 127.0.0.1. The reference portmap 1.1.x speaks cniVersion up to 1.0.0.
        plugins.push(json!({
            "type": plugins::PORTMAP,
            "capabilities": { "portMappings": true },
            "snat": true,
        }));
    }
    json!({ "cniVersion": "1.0.0", "name": o.network_name, "plugins": plugins })
}

/// Replaces `dest` with `data` unless it already holds exactly that. Returns whether it changed.
fn replace_file(dest: &Path, data: &[u8], mode: u32) -> Result<bool, String> {
    if fs::read(dest).is_ok_and(|old| old == data) {
        return Ok(false);
    }
    let dir = dest
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", dest.display()))?;
    fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // A dot name: runtimes skip hidden files and only load *.conf/*.conflist/*.json.
    let tmp_prefix = format!(".{name}.tmp.");
    // Leftovers of an install that was killed before its rename.
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&tmp_prefix) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    let tmp = dir.join(format!("{tmp_prefix}{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        // Closed before the rename: while any process holds a file open for writing, exec of
        // it fails with ETXTBSY ("text file busy"), so a runtime exec'ing the plugin right
        // after the rename would fail until we closed it (tests/install.rs caught this).
        drop(f);
        crate::crashpoint::here("install:before-rename");
        fs::rename(&tmp, dest)?;
        // The rename itself must survive a crash too.
        fs::File::open(dir)?.sync_all()
    })();
    result.map(|()| true).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("install {}: {e}", dest.display())
    })
}

pub fn install(o: &InstallOptions) -> Result<Installed, String> {
    let exe = fs::read("/proc/self/exe").map_err(|e| format!("read own binary: {e}"))?;
    let binary_changed = replace_file(&o.bin_dir.join("routed-cni"), &exe, 0o755)?;
    let doc = conflist(o);
    // Refuse to write a config the plugin itself would reject.
    let mut plugin = doc["plugins"][0].clone();
    plugin["cniVersion"] = doc["cniVersion"].clone();
    plugin["name"] = doc["name"].clone();
    crate::config::parse(plugin).map_err(|e| format!("generated config is invalid: {e}"))?;
    let mut text = serde_json::to_vec_pretty(&doc).expect("serializes");
    text.push(b'\n');
    let config_changed = replace_file(&o.conf_dir.join(&o.conf_name), &text, 0o644)?;
    let mut done = Vec::new();
    for f in node_files::node_files(&o.systemd_network_dir, &o.networkmanager_conf_dir) {
        // Checked here and never created: replace_file would create it.
        let outcome = if !f.dir_exists() {
            Outcome::NoDirectory
        } else if replace_file(&f.path(), f.text.as_bytes(), 0o644)? {
            Outcome::Written
        } else {
            Outcome::Unchanged
        };
        done.push(NodeFileDone {
            path: f.path(),
            what: f.what,
            outcome,
        });
    }
    Ok(Installed {
        binary_changed,
        config_changed,
        node_files: done,
        missing_plugins: plugins::missing(&doc, &o.bin_dir),
    })
}

/// A comma-separated list of CIDRs, at most one per family, IPv4 first in the result.
pub fn parse_cidrs(flag: &str, s: &str) -> Result<Vec<IpNetwork>, String> {
    let mut out: Vec<IpNetwork> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let n: IpNetwork = part
            .parse()
            .map_err(|_| format!("--{flag} {part:?} is not a CIDR"))?;
        if n.ip() != n.network() {
            return Err(format!("--{flag} {part:?} has host bits set"));
        }
        if out.iter().any(|o| o.is_ipv6() == n.is_ipv6()) {
            return Err(format!(
                "--{flag} {s:?} has two CIDRs of one family; give at most one IPv4 and one IPv6"
            ));
        }
        out.push(n);
    }
    if out.is_empty() {
        return Err(format!("--{flag} {s:?} holds no CIDR"));
    }
    out.sort_by_key(IpNetwork::is_ipv6);
    Ok(out)
}

/// Everything `install` needs except the pod subnets: what `agent` takes from its flags and
/// environment, the subnets coming from the Node object instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallSettings {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    pub conf_name: String,
    pub systemd_network_dir: PathBuf,
    pub networkmanager_conf_dir: PathBuf,
    pub network_name: String,
    pub cluster_cidrs: Vec<IpNetwork>,
    pub mtu: Option<u32>,
    pub log_file: Option<String>,
    pub portmap: bool,
    pub data_dir: Option<PathBuf>,
}

impl InstallSettings {
    /// `pod_subnets`: at most one per family, IPv4 first (as `parse_cidrs` gives them).
    pub fn for_subnets(&self, pod_subnets: Vec<IpNetwork>) -> InstallOptions {
        InstallOptions {
            bin_dir: self.bin_dir.clone(),
            conf_dir: self.conf_dir.clone(),
            conf_name: self.conf_name.clone(),
            systemd_network_dir: self.systemd_network_dir.clone(),
            networkmanager_conf_dir: self.networkmanager_conf_dir.clone(),
            network_name: self.network_name.clone(),
            pod_subnets,
            cluster_cidrs: self.cluster_cidrs.clone(),
            mtu: self.mtu,
            log_file: self.log_file.clone(),
            portmap: self.portmap,
            data_dir: self.data_dir.clone(),
        }
    }
}

/// Runs `routed-cni install` and returns the exit code: 0 installed (or already so), 1 failed.
pub fn run(o: &InstallOptions) -> i32 {
    match install(o) {
        Ok(done) => {
            let say = |changed: bool| if changed { "installed" } else { "unchanged" };
            println!(
                "{} {}\n{} {}",
                o.bin_dir.join("routed-cni").display(),
                say(done.binary_changed),
                o.conf_dir.join(&o.conf_name).display(),
                say(done.config_changed)
            );
            for f in &done.node_files {
                println!("{}", f.line());
            }
            // Installed all the same: the plugin may be on its way (another DaemonSet, a
            // package), and the conflist is right for a node that has it.
            for m in &done.missing_plugins {
                eprintln!("routed-cni install: warning: {}", m.line());
            }
            0
        }
        Err(e) => {
            eprintln!("routed-cni install: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path) -> InstallOptions {
        InstallOptions {
            bin_dir: dir.join("bin"),
            conf_dir: dir.join("net.d"),
            conf_name: DEFAULT_CONF_NAME.into(),
            systemd_network_dir: dir.join("systemd/network"),
            networkmanager_conf_dir: dir.join("NetworkManager/conf.d"),
            network_name: "k8s-pod-network".into(),
            pod_subnets: vec!["10.244.3.0/24".parse().unwrap()],
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            mtu: Some(1450),
            log_file: Some("/var/log/routed-cni.log".into()),
            portmap: true,
            data_dir: None,
        }
    }

    #[test]
    fn installs_once_and_reinstall_is_a_no_op() {
        let dir = std::env::temp_dir().join(format!("rcni-install-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let o = opts(&dir);
        let changes = |i: Installed| {
            let outcomes: Vec<Outcome> = i.node_files.iter().map(|f| f.outcome).collect();
            (i.binary_changed, i.config_changed, outcomes)
        };
        // The systemd dir exists on this "node", NetworkManager's does not.
        fs::create_dir_all(&o.systemd_network_dir).unwrap();
        use Outcome::*;
        assert_eq!(
            changes(install(&o).unwrap()),
            (true, true, vec![Written, NoDirectory])
        );
        assert!(!o.networkmanager_conf_dir.exists(), "created NM's dir");
        assert_eq!(
            fs::read_to_string(o.systemd_network_dir.join(LINK_FILE_NAME)).unwrap(),
            link_file()
        );
        let bin = dir.join("bin/routed-cni");
        assert_eq!(
            fs::metadata(&bin).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(fs::read(&bin).unwrap(), fs::read("/proc/self/exe").unwrap());
        let conf: Value =
            serde_json::from_slice(&fs::read(dir.join("net.d").join(DEFAULT_CONF_NAME)).unwrap())
                .unwrap();
        assert_eq!(conf["plugins"][0]["ipam"]["subnet"], "10.244.3.0/24");
        assert_eq!(conf["plugins"][0]["nonMasqueradeCIDRs"][0], "10.244.0.0/16");
        assert_eq!(conf["plugins"][0]["mtu"], 1450);
        assert_eq!(
            changes(install(&o).unwrap()),
            (false, false, vec![Unchanged, NoDirectory])
        );
        fs::create_dir_all(&o.networkmanager_conf_dir).unwrap();
        assert_eq!(
            changes(install(&o).unwrap()),
            (false, false, vec![Unchanged, Written])
        );
        assert_eq!(
            fs::read_to_string(o.networkmanager_conf_dir.join(NM_DROP_IN_NAME)).unwrap(),
            nm_drop_in()
        );
        let leftovers: Vec<_> = fs::read_dir(dir.join("net.d"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
        let mut changed = o.clone();
        changed.pod_subnets = vec!["10.244.4.0/24".parse().unwrap()];
        assert_eq!(
            changes(install(&changed).unwrap()),
            (false, true, vec![Unchanged, Unchanged])
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn portmap_is_chained_after_routed_cni_unless_turned_off() {
        let mut o = opts(Path::new("/nonexistent"));
        let c = conflist(&o);
        assert_eq!(c["plugins"][0]["type"], "routed-cni");
        assert_eq!(
            c["plugins"][1],
            json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true})
        );
        assert_eq!(c["plugins"].as_array().unwrap().len(), 2);
        // portmap 1.1.1 (Debian 12) answers only up to 1.0.0: a newer cniVersion fails its ADD.
        assert_eq!(c["cniVersion"], "1.0.0");
        o.portmap = false;
        let c = conflist(&o);
        assert_eq!(plugins::chained(&c), vec!["routed-cni".to_string()]);
    }

    #[test]
    fn install_names_chained_plugins_missing_from_the_bin_dir() {
        let dir = std::env::temp_dir().join(format!("rcni-install-pm-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut o = opts(&dir);
        let missing = |o: &InstallOptions| -> Vec<String> {
            install(o)
                .unwrap()
                .missing_plugins
                .into_iter()
                .map(|m| m.plugin)
                .collect()
        };
        // routed-cni itself is there: install just put it there.
        assert_eq!(missing(&o), vec!["portmap".to_string()]);
        o.portmap = false;
        assert!(missing(&o).is_empty());
        o.portmap = true;
        fs::write(o.bin_dir.join("portmap"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(o.bin_dir.join("portmap"), fs::Permissions::from_mode(0o755)).unwrap();
        assert!(missing(&o).is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dual_stack_conflist_has_one_range_set_per_family() {
        let mut o = opts(Path::new("/nonexistent"));
        o.pod_subnets = vec![
            "10.244.3.0/24".parse().unwrap(),
            "fd00:10:244:3::/64".parse().unwrap(),
        ];
        o.cluster_cidrs = vec!["10.244.0.0/16".parse().unwrap()];
        let c = conflist(&o);
        assert_eq!(
            c["plugins"][0]["ipam"],
            json!({"ranges": [[{"subnet": "10.244.3.0/24"}], [{"subnet": "fd00:10:244:3::/64"}]]})
        );
        // No IPv6 cluster CIDR given: the node's IPv6 pod subnet is the exception.
        assert_eq!(
            c["plugins"][0]["nonMasqueradeCIDRs"],
            json!(["10.244.0.0/16", "fd00:10:244:3::/64"])
        );
        let mut plugin = c["plugins"][0].clone();
        plugin["cniVersion"] = c["cniVersion"].clone();
        plugin["name"] = c["name"].clone();
        let parsed = crate::config::parse(plugin).unwrap();
        let crate::config::Ipam::Builtin(pools) = parsed.ipam else {
            panic!()
        };
        assert_eq!(pools.len(), 2);
    }
}
