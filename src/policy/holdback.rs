//! No window between a pod's creation and its policy: CNI ADD holds a new pod's traffic back
//! (its host veth in the `pending` set of table inet routed-cni, which drops everything
//! forwarded to or from it) when its namespace has any NetworkPolicy, and the agent lifts the
//! hold in the same transaction that installs the pod's rules (nft.rs). ADD learns which
//! namespaces have policies from a small file the agent keeps next to the plugin's store, so the
//! verbs still never call the API server, and pods in namespaces without policy pay nothing.
//!
//! The hold is placed before ADD allocates the pod's address: the agent finds new pods through
//! the store's records, so it can never program a pod (and lift its hold) before the hold
//! exists. When the agent is down, held pods stay unreachable until it is back: for a pod a
//! policy may isolate, no traffic is the only answer that never lets a denied packet through.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// In the plugin's data directory (ipam.dataDir): one namespace per line.
pub const NAMESPACES_FILE: &str = "policy-namespaces";

fn file(data_dir: &Path) -> PathBuf {
    data_dir.join(NAMESPACES_FILE)
}

/// The namespaces with at least one NetworkPolicy, as the agent last wrote them; none when the
/// file is missing (no agent with policy on this node).
pub fn namespaces(data_dir: &Path) -> std::io::Result<BTreeSet<String>> {
    match std::fs::read_to_string(file(data_dir)) {
        Ok(text) => Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(e) => Err(e),
    }
}

/// The agent's side: writes the set when it differs from the file (atomically: a temporary
/// file renamed over it, so ADD never reads half a list). Returns whether it wrote.
pub fn write_namespaces(data_dir: &Path, names: &BTreeSet<String>) -> std::io::Result<bool> {
    if namespaces(data_dir).ok().as_ref() == Some(names) && file(data_dir).exists() {
        return Ok(false);
    }
    std::fs::create_dir_all(data_dir)?;
    let tmp = data_dir.join(format!(".{NAMESPACES_FILE}.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    for n in names {
        writeln!(f, "{n}")?;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, file(data_dir))?;
    Ok(true)
}

/// ADD's side: holds `host_veth` back when `namespace` has a policy. `Ok(true)`: held;
/// `Ok(false)`: nothing to hold (no policy there, or no table: enforcement is off).
pub fn hold_back(data_dir: &Path, namespace: &str, host_veth: &str) -> Result<bool, String> {
    let listed = namespaces(data_dir).map_err(|e| {
        format!(
            "read {}: {e} (the agent writes it; fix its permissions or remove it)",
            file(data_dir).display()
        )
    })?;
    if !listed.contains(namespace) {
        return Ok(false);
    }
    super::nft::mark_pending(host_veth).map_err(|e| {
        format!("namespace {namespace} has NetworkPolicies, and the pod's traffic could not be held back until its rules exist: {e}")
    })
}

/// DEL's side: lifts a hold an ADD placed (a pod deleted before the agent programmed it, or an
/// ADD that failed after the hold). Only for namespaces with policies, the ones ADD holds:
/// other DELs never run nft.
pub fn release(data_dir: &Path, namespace: &str, host_veth: &str) -> Result<bool, String> {
    let listed =
        namespaces(data_dir).map_err(|e| format!("read {}: {e}", file(data_dir).display()))?;
    if !listed.contains(namespace) {
        return Ok(false);
    }
    super::nft::unmark_pending(host_veth).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_namespace_list_round_trips_and_is_rewritten_only_on_change() {
        let dir = std::env::temp_dir().join(format!("rcni-holdback-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(namespaces(&dir).unwrap().is_empty());
        // No file, no policy: nothing held, and nft is never asked.
        assert_eq!(hold_back(&dir, "x", "rcni0123456789a"), Ok(false));
        let names: BTreeSet<String> = ["x".to_string(), "y".to_string()].into();
        assert!(write_namespaces(&dir, &names).unwrap());
        assert!(!write_namespaces(&dir, &names).unwrap());
        assert_eq!(namespaces(&dir).unwrap(), names);
        assert_eq!(hold_back(&dir, "z", "rcni0123456789a"), Ok(false));
        assert!(write_namespaces(&dir, &BTreeSet::new()).unwrap());
        assert!(namespaces(&dir).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
