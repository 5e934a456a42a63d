//! Reading our table back from `nft -j list table inet routed-cni`: the names a new batch must
//! clean up, and what is installed (for diffs, tests and doctor). Parsed as plain JSON rather
//! than with the crate's model, which cannot read a verdict map (nftables-rs issue #237).

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::render::Names;
use super::{PolicyError, EGRESS, INGRESS, PENDING, SPOOF4, SPOOF6};

/// One chain as installed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstalledChain {
    /// A base chain (ours: `forward`), hooked into the kernel.
    pub base: bool,
    pub rules: usize,
    /// The last rule's comment (a policy chain's final drop names its policies).
    pub comment: Option<String>,
    /// The packets and bytes counted by the chain's counter (its final drop), if any.
    pub dropped: Option<(u64, u64)>,
}

/// Table `inet routed-cni` as installed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Installed {
    pub chains: BTreeMap<String, InstalledChain>,
    /// Every set, with its elements as nft prints them (`10.0.0.1-10.0.0.9`, `a . b`).
    pub sets: BTreeMap<String, Vec<String>>,
    /// The verdict maps: veth -> chain jumped to.
    pub ingress: BTreeMap<String, String>,
    pub egress: BTreeMap<String, String>,
    pub pending: BTreeSet<String>,
    /// The anti-spoof sets read back as veth -> addresses.
    pub pods: BTreeMap<String, Vec<IpAddr>>,
}

fn objects(json: &str) -> Result<Vec<Value>, PolicyError> {
    let v: Value = serde_json::from_str(json).map_err(|e| PolicyError::Listing(e.to_string()))?;
    match v.get("nftables") {
        Some(Value::Array(a)) => Ok(a.clone()),
        _ => Err(PolicyError::Listing("no \"nftables\" array".into())),
    }
}

fn name(o: &Value) -> Option<String> {
    o.get("name").and_then(Value::as_str).map(str::to_string)
}

/// Chain, set and map names, from a terse (`-t`) listing.
pub fn names(json: &str) -> Result<Names, PolicyError> {
    let mut n = Names::default();
    for o in objects(json)? {
        if let Some(c) = o.get("chain").and_then(name) {
            n.chains.insert(c);
        } else if let Some(s) = o.get("set").and_then(name) {
            n.sets.insert(s);
        } else if let Some(m) = o.get("map").and_then(name) {
            n.maps.insert(m);
        }
    }
    Ok(n)
}

/// An element or expression as nft's text syntax would print it.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(" : "),
        Value::Object(o) => {
            if let Some(Value::Array(r)) = o.get("range") {
                r.iter().map(text).collect::<Vec<_>>().join("-")
            } else if let Some(p) = o.get("prefix") {
                format!("{}/{}", text(&p["addr"]), text(&p["len"]))
            } else if let Some(Value::Array(c)) = o.get("concat") {
                c.iter().map(text).collect::<Vec<_>>().join(" . ")
            } else if let Some(e) = o.get("elem") {
                text(&e["val"])
            } else if let Some(j) = o.get("jump") {
                format!("jump {}", text(&j["target"]))
            } else {
                v.to_string()
            }
        }
        other => other.to_string(),
    }
}

/// Everything, from a full listing.
pub fn installed(json: &str) -> Result<Installed, PolicyError> {
    let mut t = Installed::default();
    let mut rules: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for o in objects(json)? {
        if let Some(c) = o.get("chain") {
            let n = name(c).unwrap_or_default();
            t.chains.insert(
                n,
                InstalledChain {
                    base: c.get("hook").is_some(),
                    ..InstalledChain::default()
                },
            );
        } else if let Some(r) = o.get("rule") {
            let chain = r.get("chain").and_then(Value::as_str).unwrap_or_default();
            rules.entry(chain.to_string()).or_default().push(r.clone());
        } else if let Some(m) = o.get("map") {
            let target = match name(m).as_deref() {
                Some(INGRESS) => &mut t.ingress,
                Some(EGRESS) => &mut t.egress,
                _ => continue,
            };
            for e in m
                .get("elem")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let (Some(k), Some(j)) = (e.get(0), e.get(1)) {
                    if let Some(c) = j.pointer("/jump/target").and_then(Value::as_str) {
                        target.insert(text(k), c.to_string());
                    }
                }
            }
        } else if let Some(s) = o.get("set") {
            let n = name(s).unwrap_or_default();
            let elems: Vec<String> = s
                .get("elem")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            if n == PENDING {
                t.pending = elems.iter().cloned().collect();
            }
            if n == SPOOF4 || n == SPOOF6 {
                for e in &elems {
                    if let Some((i, ip)) = e.split_once(" . ") {
                        if let Ok(ip) = ip.parse() {
                            t.pods.entry(i.to_string()).or_default().push(ip);
                        }
                    }
                }
            }
            t.sets.insert(n, elems);
        }
    }
    for (chain, rs) in rules {
        let entry = t.chains.entry(chain).or_default();
        entry.rules = rs.len();
        if let Some(last) = rs.last() {
            entry.comment = last
                .get("comment")
                .and_then(Value::as_str)
                .map(str::to_string);
            let counter = last
                .get("expr")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find_map(|s| s.get("counter"));
            entry.dropped = counter
                .and_then(|c| Some((c.get("packets")?.as_u64()?, c.get("bytes")?.as_u64()?)));
        }
    }
    Ok(t)
}
