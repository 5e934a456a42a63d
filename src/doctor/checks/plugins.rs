//! A node-wide step, before any pod: can the runtime run every plugin our conflist chains?
//! A chained plugin missing from the CNI bin dir (`portmap` on a node without the reference
//! plugins) fails every pod's ADD, so no new pod starts while the node still reports its
//! network ready; there may be no pod in the store for the other steps to walk.

use serde_json::{json, Value};
use std::path::Path;

use crate::doctor::report::Step;
use crate::install::plugins;

const ID: &str = "cni-plugins";
const TITLE: &str = "chained plugins in the bin dir";

/// The step for the conflist at `conflist` and the runtime's bin dir `bin_dir`.
pub fn step(conflist: &Path, bin_dir: &Path) -> Step {
    let c = conflist.display();
    let text = match std::fs::read(conflist) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Step::skip(
                ID,
                TITLE,
                format!("no conflist at {c} (--conf-dir/--conf-name name another)"),
            );
        }
        Err(e) => return Step::warn(ID, TITLE, format!("cannot read {c}: {e}")),
    };
    let doc: Value = match serde_json::from_slice(&text) {
        Ok(v) => v,
        Err(e) => {
            return Step::fail(ID, TITLE, format!("{c} is not JSON: {e}"))
                .why("the runtime cannot load it: no pod on this node gets a network")
                .fix(
                    "routed-cni install --pod-subnet <this node's podCIDR> (or restart the agent)",
                );
        }
    };
    let chain = plugins::chained(&doc);
    let missing = plugins::missing(&doc, bin_dir);
    let details = json!({
        "conflist": conflist,
        "binDir": bin_dir,
        "chain": chain,
        "missing": missing.iter().map(|m| json!({"plugin": m.plugin, "path": m.path, "problem": m.why})).collect::<Vec<_>>(),
    });
    if missing.is_empty() {
        return Step::ok(
            ID,
            TITLE,
            format!(
                "{c} chains {}, all in {}",
                chain.join(", "),
                bin_dir.display()
            ),
        )
        .details(details);
    }
    let saw = missing
        .iter()
        .map(|m| format!("{} {}", m.path.display(), m.why))
        .collect::<Vec<_>>()
        .join("; ");
    let mut s = Step::fail(ID, TITLE, saw)
        .why(
            missing
                .iter()
                .map(|m| m.line())
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .details(details);
    if missing.iter().any(|m| m.plugin == plugins::PORTMAP) {
        s = s.fix(format!(
            "ln -s /usr/lib/cni/portmap {}   # Debian/Ubuntu: apt-get install containernetworking-plugins",
            bin_dir.join(plugins::PORTMAP).display()
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::report::Status;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn judges_the_conflist_against_the_bin_dir() {
        let dir = std::env::temp_dir().join(format!("rcni-doctor-plugins-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("10-routed-cni.conflist");
        assert_eq!(step(&conf, &dir).status, Status::Skip);
        fs::write(&conf, "{").unwrap();
        assert_eq!(step(&conf, &dir).status, Status::Fail);
        fs::write(
            &conf,
            r#"{"plugins":[{"type":"routed-cni"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        for p in ["routed-cni", "other"] {
            fs::write(dir.join(p), "#!/bin/sh\n").unwrap();
            fs::set_permissions(dir.join(p), fs::Permissions::from_mode(0o755)).unwrap();
        }
        let s = step(&conf, &dir);
        assert_eq!(s.status, Status::Fail, "{s:?}");
        assert!(s.saw.contains("portmap is missing"), "{s:?}");
        assert!(s.fix[0].starts_with("ln -s /usr/lib/cni/portmap "), "{s:?}");
        assert_eq!(s.details["missing"][0]["plugin"], "portmap");
        std::os::unix::fs::symlink(dir.join("other"), dir.join("portmap")).unwrap();
        let s = step(&conf, &dir);
        assert_eq!(s.status, Status::Ok, "{s:?}");
        assert!(s.saw.contains("routed-cni, portmap"), "{s:?}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
