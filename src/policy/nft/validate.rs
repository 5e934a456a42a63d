//! Checks on a `Ruleset` before it is rendered: names nft and the kernel accept, and nothing
//! referred to that the Ruleset does not define. A failure is a compiler bug, reported as
//! `PolicyError::Invalid` instead of a half-understood nft error.

use std::collections::BTreeSet;

use super::render::FIXED_SETS;
use super::{PolicyError, FORWARD};
use crate::policy::ruleset::{Peers, Ports, Ruleset};

/// A valid name for our chains and sets: what nft's parser takes as an identifier, so the
/// table can be listed and edited by hand too.
pub fn check_name(name: &str) -> Result<(), PolicyError> {
    let ok = name.len() <= 200
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(PolicyError::Invalid(format!(
            "{name:?} is not a valid nftables name (a letter, then letters, digits, '-', '_' or '.', at most 200)"
        )))
    }
}

/// A Linux interface name: what the kernel accepts (IFNAMSIZ-1 bytes, no '/', no spaces).
pub fn check_ifname(name: &str) -> Result<(), PolicyError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    if ok {
        Ok(())
    } else {
        Err(PolicyError::Invalid(format!(
            "{name:?} is not an interface name (1-15 printable bytes, no '/')"
        )))
    }
}

/// Every set the Ruleset needs besides the fixed ones, by name, checked for collisions.
fn derived_sets(rs: &Ruleset) -> Result<BTreeSet<String>, PolicyError> {
    let mut out = BTreeSet::new();
    let names = rs.address_sets.keys().chain(rs.port_sets.keys());
    for base in names {
        check_name(base)?;
        for suffix in ["-4", "-6"] {
            let name = format!("{base}{suffix}");
            if FIXED_SETS.contains(&name.as_str()) || !out.insert(name.clone()) {
                return Err(PolicyError::Invalid(format!(
                    "set name {name:?} is used twice (address and port sets share one namespace, with the fixed sets {FIXED_SETS:?})"
                )));
            }
        }
    }
    Ok(out)
}

/// The Ruleset's own set names (family sets included) when it is consistent.
pub fn validate(rs: &Ruleset) -> Result<BTreeSet<String>, PolicyError> {
    for name in rs.chains.keys() {
        check_name(name)?;
        if name == FORWARD {
            return Err(PolicyError::Invalid(format!(
                "chain name {FORWARD:?} is our base chain's"
            )));
        }
    }
    for (dir, map) in [("ingress", &rs.ingress), ("egress", &rs.egress)] {
        for (ifname, chain) in map {
            check_ifname(ifname)?;
            if !rs.chains.contains_key(chain) {
                return Err(PolicyError::Invalid(format!(
                    "{dir} of {ifname} names chain {chain:?}, which the Ruleset does not have"
                )));
            }
        }
    }
    if let Some(c) = rs
        .ingress
        .values()
        .find(|c| rs.egress.values().any(|e| e == *c))
    {
        return Err(PolicyError::Invalid(format!(
            "chain {c:?} is used for both ingress and egress; a chain matches peers by source (ingress) or by destination (egress), not both"
        )));
    }
    for ifname in rs.pods.keys() {
        check_ifname(ifname)?;
    }
    for (name, chain) in &rs.chains {
        for r in &chain.rules {
            if let Peers::Set(set) = &r.peers {
                if !rs.address_sets.contains_key(set) {
                    return Err(PolicyError::Invalid(format!(
                        "chain {name} uses address set {set:?}, which the Ruleset does not have"
                    )));
                }
            }
            if let Ports::Named(set) = &r.ports {
                if !rs.port_sets.contains_key(set) {
                    return Err(PolicyError::Invalid(format!(
                        "chain {name} uses port set {set:?}, which the Ruleset does not have"
                    )));
                }
            }
        }
    }
    derived_sets(rs)
}
