//! A batch that leaves alone what is already right. The table's biggest parts are set contents
//! (thousands of pod addresses at a large cluster) and every apply used to flush and refill
//! them all, though a pod event changes one or two sets: nft's work, not the compile, was most
//! of an apply. Each set's, map's and chain's content in a batch is hashed; where the hash is
//! the one the last successful apply wrote, its flush and refill are dropped from the batch.
//!
//! Sound only while the table is what our last apply made it: `Nft` keeps the hashes only
//! after a successful apply, drops them when one fails, and the agent's resync forgets them
//! (a full rewrite then repairs hand edits).

use serde_json::Value;
use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use super::PENDING;

/// What a command does, to which object's content.
#[derive(Debug, PartialEq, Eq)]
enum Role {
    /// `add table/set/map/chain`: creates it, a no-op when it exists.
    Declare(String),
    /// Empties a set, map or chain.
    Flush(String),
    /// Elements of a set or map, rules of a chain.
    Content(String),
}

/// `None`: anything else (deletions, `pending`, which CNI ADD writes concurrently and is
/// never skipped).
fn role(cmd: &Value) -> Option<Role> {
    let (verb, body) = cmd.as_object()?.iter().next()?;
    let (kind, obj) = body.as_object()?.iter().next()?;
    let key = match kind.as_str() {
        "table" => "table".to_string(),
        "set" | "map" | "element" => obj.get("name")?.as_str().map(|n| format!("set:{n}"))?,
        "chain" => obj.get("name")?.as_str().map(|n| format!("chain:{n}"))?,
        "rule" => obj.get("chain")?.as_str().map(|n| format!("chain:{n}"))?,
        _ => return None,
    };
    if key == format!("set:{PENDING}") {
        return None;
    }
    match (verb.as_str(), kind.as_str()) {
        ("add", "table" | "set" | "map" | "chain") => Some(Role::Declare(key)),
        ("flush", "set" | "map" | "chain") => Some(Role::Flush(key)),
        ("add", "element" | "rule") => Some(Role::Content(key)),
        _ => None,
    }
}

/// `cmds` less the flushes and refills of objects whose content hashes as in `previous`, and
/// the hashes of this batch's contents (for the next one). With `previous` known, objects it
/// has are not declared again either: if the table is not what `previous` says (someone
/// deleted it), the batch then fails on the first missing object instead of re-creating it
/// empty, and `Nft::apply` lists the table and writes all of it.
pub fn prune(
    cmds: Vec<Value>,
    previous: &BTreeMap<String, u64>,
) -> (Vec<Value>, BTreeMap<String, u64>) {
    let mut hashers: BTreeMap<String, DefaultHasher> = BTreeMap::new();
    for c in &cmds {
        match role(c) {
            Some(Role::Flush(key)) => {
                hashers.entry(key).or_default();
            }
            Some(Role::Content(key)) => c.to_string().hash(hashers.entry(key).or_default()),
            _ => {}
        }
    }
    let now: BTreeMap<String, u64> = hashers.into_iter().map(|(k, h)| (k, h.finish())).collect();
    let kept = cmds
        .into_iter()
        .filter(|c| match role(c) {
            Some(Role::Flush(key) | Role::Content(key)) => previous.get(&key) != now.get(&key),
            Some(Role::Declare(key)) if key == "table" => previous.is_empty(),
            Some(Role::Declare(key)) => !previous.contains_key(&key),
            None => true,
        })
        .collect();
    (kept, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn batch(s1: &[&str], rules: &[&str]) -> Vec<Value> {
        vec![
            json!({"add": {"table": {"family": "inet", "name": "t"}}}),
            json!({"add": {"set": {"name": "s1"}}}),
            json!({"flush": {"set": {"name": "s1"}}}),
            json!({"add": {"set": {"name": "empty"}}}),
            json!({"flush": {"set": {"name": "empty"}}}),
            json!({"flush": {"chain": {"name": "c"}}}),
            json!({"add": {"element": {"name": "s1", "elem": s1}}}),
            json!({"add": {"rule": {"chain": "c", "expr": rules}}}),
            json!({"add": {"element": {"name": PENDING, "elem": ["veth1"]}}}),
            json!({"delete": {"element": {"name": PENDING, "elem": ["veth1"]}}}),
        ]
    }

    fn has(cmds: &[Value], verb: &str, kind: &str, name: &str) -> bool {
        cmds.iter().any(|c| {
            c.get(verb)
                .and_then(|b| b.get(kind))
                .is_some_and(|o| o.get("name").or_else(|| o.get("chain")) == Some(&json!(name)))
        })
    }

    #[test]
    fn unchanged_contents_are_left_alone_changed_ones_rewritten() {
        let (first, hashes) = prune(batch(&["10.0.0.1"], &["r1"]), &BTreeMap::new());
        assert_eq!(first.len(), 10, "nothing known: everything is written");
        // The same again: only declarations and pending's add/delete remain.
        let (same, again) = prune(batch(&["10.0.0.1"], &["r1"]), &hashes);
        assert_eq!(again, hashes);
        assert!(!has(&same, "flush", "set", "s1") && !has(&same, "add", "element", "s1"));
        assert!(!has(&same, "flush", "set", "empty") && !has(&same, "flush", "chain", "c"));
        assert!(!has(&same, "add", "rule", "c"));
        assert!(has(&same, "add", "element", PENDING) && has(&same, "delete", "element", PENDING));
        assert!(
            !has(&same, "add", "set", "s1") && !has(&same, "add", "table", "t"),
            "what exists is not declared again: a missing table must fail the batch"
        );
        // One set changed: it alone is flushed and refilled.
        let (changed, _) = prune(batch(&["10.0.0.1", "10.0.0.2"], &["r1"]), &hashes);
        assert!(has(&changed, "flush", "set", "s1") && has(&changed, "add", "element", "s1"));
        assert!(!has(&changed, "flush", "chain", "c") && !has(&changed, "add", "rule", "c"));
        // A chain's rules changed: the chain is flushed and refilled.
        let (rules, _) = prune(batch(&["10.0.0.1"], &["r2"]), &hashes);
        assert!(has(&rules, "flush", "chain", "c") && has(&rules, "add", "rule", "c"));
        assert!(!has(&rules, "flush", "set", "s1"));
    }

    #[test]
    fn a_new_object_is_declared() {
        let (_, hashes) = prune(batch(&["10.0.0.1"], &["r1"]), &BTreeMap::new());
        let mut b = batch(&["10.0.0.1"], &["r1"]);
        b.push(json!({"add": {"set": {"name": "s2"}}}));
        b.push(json!({"flush": {"set": {"name": "s2"}}}));
        b.push(json!({"add": {"element": {"name": "s2", "elem": ["10.0.0.9"]}}}));
        let (out, _) = prune(b, &hashes);
        assert!(has(&out, "add", "set", "s2") && has(&out, "add", "element", "s2"));
        assert!(!has(&out, "add", "set", "s1"));
    }

    #[test]
    fn a_set_emptied_is_flushed() {
        let (_, hashes) = prune(batch(&["10.0.0.1"], &["r1"]), &BTreeMap::new());
        let mut b = batch(&["10.0.0.1"], &["r1"]);
        b.retain(|c| {
            !(c.get("add")
                .and_then(|a| a.get("element"))
                .is_some_and(|e| e["name"] == "s1"))
        });
        let (out, _) = prune(b, &hashes);
        assert!(
            has(&out, "flush", "set", "s1"),
            "the set must lose its old elements"
        );
    }
}
