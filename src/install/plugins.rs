//! The plugins a conflist chains, and whether the runtime will find them. A runtime looks each
//! `type` up in its CNI bin dir when it runs the chain (libcni's `FindInPath`); one that is
//! missing fails every ADD of every pod with "failed to find plugin ... in path", while the
//! node still reports its network ready (the runtime only checks that a conflist loads). So
//! install, the agent and doctor all say so as soon as they see it, with the way out.

use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The reference plugin that maps hostPorts, chained after routed-cni unless `--no-portmap`.
pub const PORTMAP: &str = "portmap";

/// A plugin of the chain that the runtime would not be able to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingPlugin {
    pub plugin: String,
    pub path: PathBuf,
    /// "is missing", "is not a regular file", "is not executable".
    pub why: &'static str,
}

impl MissingPlugin {
    /// One line for people: what is wrong, what it breaks, and how to fix it.
    pub fn line(&self) -> String {
        let fix = if self.plugin == PORTMAP {
            format!(
                "; put the reference CNI plugins there (Debian/Ubuntu's containernetworking-plugins installs them in /usr/lib/cni: `ln -s /usr/lib/cni/portmap {}`; elsewhere https://github.com/containernetworking/plugins/releases), or install with --no-portmap (ROUTED_CNI_NO_PORTMAP=true) to give up hostPort",
                self.path.display()
            )
        } else {
            String::new()
        };
        format!(
            "the conflist chains plugin {:?}, but {} {}: the runtime fails every pod's ADD on this node until it is there{fix}",
            self.plugin,
            self.path.display(),
            self.why
        )
    }
}

/// The `type` of every plugin of a conflist, in chain order.
pub fn chained(conflist: &Value) -> Vec<String> {
    conflist["plugins"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p["type"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The plugins of `conflist` that `bin_dir` cannot run: missing, not a regular file (after
/// symlinks, as the runtime follows them) or without an execute bit.
pub fn missing(conflist: &Value, bin_dir: &Path) -> Vec<MissingPlugin> {
    chained(conflist)
        .into_iter()
        .filter_map(|plugin| {
            let path = bin_dir.join(&plugin);
            let why = match std::fs::metadata(&path) {
                Err(_) => "is missing",
                Ok(m) if !m.is_file() => "is not a regular file",
                Ok(m) if m.permissions().mode() & 0o111 == 0 => "is not executable",
                Ok(_) => return None,
            };
            Some(MissingPlugin { plugin, path, why })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::fs;

    #[test]
    fn finds_what_the_runtime_could_not_run() {
        let dir = std::env::temp_dir().join(format!("rcni-plugins-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("tuning")).unwrap();
        let write = |name: &str, mode: u32| {
            fs::write(dir.join(name), b"#!/bin/sh\n").unwrap();
            fs::set_permissions(dir.join(name), fs::Permissions::from_mode(mode)).unwrap();
        };
        write("routed-cni", 0o755);
        write("bandwidth", 0o644);
        write("real-portmap", 0o755);
        let conf = json!({"plugins": [
            {"type": "routed-cni"}, {"type": "portmap"}, {"type": "bandwidth"}, {"type": "tuning"}
        ]});
        let whys = |c: &Value| -> Vec<(String, &str)> {
            missing(c, &dir)
                .into_iter()
                .map(|m| (m.plugin, m.why))
                .collect()
        };
        assert_eq!(
            whys(&conf),
            vec![
                ("portmap".into(), "is missing"),
                ("bandwidth".into(), "is not executable"),
                ("tuning".into(), "is not a regular file"),
            ]
        );
        // A symlink counts as what it points to, as for the runtime's exec.
        std::os::unix::fs::symlink(dir.join("real-portmap"), dir.join("portmap")).unwrap();
        assert_eq!(whys(&conf).len(), 2);
        let line = missing(&conf, &dir)[0].line();
        assert!(
            line.contains("\"bandwidth\"") && line.contains("every pod's ADD"),
            "{line}"
        );
        fs::remove_file(dir.join("real-portmap")).unwrap();
        let line = missing(&conf, &dir)[0].line();
        assert!(line.contains("--no-portmap"), "{line}");
        assert!(whys(&json!({})).is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
