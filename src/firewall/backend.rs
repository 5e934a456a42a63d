//! Which iptables backend(s) get our rules. The kernel runs the legacy xtables hooks and every
//! nftables base chain for each packet, so a DROP in either world is final: rules written to the
//! world the node does not use are simply never the deciding ones (kubernetes#71305).
//!
//! Detection follows kube-proxy's iptables-wrappers and Calico Felix: the backend whose save
//! output holds kubelet's `KUBE-IPTABLES-HINT` / `KUBE-KUBELET-CANARY` chains is the node's;
//! otherwise the one that carries rules (Docker's chains, a DROP policy). Unlike them we do not
//! pick one when both carry rules: we install in both, because a DROP in the one we skipped
//! would still drop our pods' traffic. Legacy is probed only when the kernel has legacy tables
//! in this network namespace (`/proc/net/ip_tables_names` lists one): probing it otherwise
//! would load modules and create tables for nothing. (The file exists in every namespace once
//! the module is loaded anywhere; it lists only this namespace's tables.)
//!
//! Detection costs an `iptables-save` per backend, so it runs only on the install path (first
//! pod of a pool, or a repair). Where it put the rules is written down (the hint) so the
//! steady-state ADD checks the right backend with one exec and no detection.

use ipnetwork::IpNetwork;
use std::path::{Path, PathBuf};

use super::iptables::{Backend, Iptables, Listing, Tables};
use super::Family;
use crate::config::IptablesBackend;

/// The backends chosen for a family, the primary first (the one the steady-state probe asks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub backends: Vec<Backend>,
    /// Why, for the log and CHECK messages.
    pub why: String,
}

/// What one backend's save output shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    /// kubelet's hint chains are there.
    pub kubelet: bool,
    /// Rules that are not ours, plus built-in chains whose policy is not ACCEPT.
    pub rules: usize,
    /// Chains of kube-proxy or Docker (`KUBE-*`, `DOCKER*`).
    pub known_chains: bool,
}

impl Seen {
    pub fn of(tables: &[(String, Listing)]) -> Seen {
        let mut seen = Seen::default();
        for (_, l) in tables {
            for c in &l.chains {
                seen.kubelet |= c == "KUBE-IPTABLES-HINT" || c == "KUBE-KUBELET-CANARY";
                seen.known_chains |= c.starts_with("KUBE-") || c.starts_with("DOCKER");
            }
            // Our own rules say nothing about which world the node uses.
            seen.rules += l
                .rules
                .iter()
                .filter(|r| {
                    !r.chain.starts_with("RCNI-")
                        && !r.target.as_deref().is_some_and(|t| t.starts_with("RCNI-"))
                })
                .count();
            seen.rules += l.policies.iter().filter(|(_, p)| p != "ACCEPT").count();
        }
        seen
    }

    fn in_use(&self) -> bool {
        self.rules > 0 || self.known_chains
    }
}

/// The pure decision. `legacy` is `None` when the kernel has no legacy table here.
pub fn decide(nft: Seen, legacy: Option<Seen>) -> Choice {
    use Backend::*;
    let legacy = legacy.unwrap_or_default();
    let choice = |backends: Vec<Backend>, why: String| Choice { backends, why };
    match (nft.in_use(), legacy.in_use()) {
        (true, true) => {
            // Install in both; the primary is the one kubelet uses, else the busier one
            // (ties: legacy, as Felix decides).
            let primary = if nft.kubelet {
                Nft
            } else if legacy.kubelet || legacy.rules >= nft.rules {
                Legacy
            } else {
                Nft
            };
            let other = if primary == Nft { Legacy } else { Nft };
            choice(
                vec![primary, other],
                format!(
                    "both iptables backends carry rules (nft {}, legacy {}); a DROP in either is final",
                    nft.rules, legacy.rules
                ),
            )
        }
        (true, false) => choice(
            vec![Nft],
            format!("iptables-nft carries {} rules", nft.rules),
        ),
        (false, true) => choice(
            vec![Legacy],
            format!("iptables-legacy carries {} rules", legacy.rules),
        ),
        (false, false) => choice(vec![Nft], "no rules in either backend: nft".into()),
    }
}

/// True when the kernel has legacy tables in this network namespace. `thread-self`, not
/// `/proc/net` (the process's first thread): a thread may have entered another namespace.
pub fn legacy_tables(family: Family) -> bool {
    let file = match family {
        Family::V4 => "/proc/thread-self/net/ip_tables_names",
        Family::V6 => "/proc/thread-self/net/ip6_tables_names",
    };
    std::fs::read_to_string(file).is_ok_and(|s| !s.trim().is_empty())
}

/// The backends that can hold rules here: nft always, legacy only when it has tables in this
/// network namespace.
pub fn present(family: Family) -> Vec<Backend> {
    Backend::ALL
        .into_iter()
        .filter(|&b| b == Backend::Nft || legacy_tables(family))
        .collect()
}

/// What each backend holds, read with one `iptables-save` per backend present. A backend
/// whose save fails (no nf_tables in the kernel) is left out.
pub fn read(family: Family) -> Vec<(Backend, Tables)> {
    let mut out = Vec::new();
    for backend in present(family) {
        match Iptables::of(family, backend).save() {
            Ok(tables) => out.push((backend, tables)),
            Err(e) => crate::debug!("{} not readable: {e}", backend.name()),
        }
    }
    out
}

/// The backends to install into for `setting`, from what `read` returned.
pub fn choose(setting: IptablesBackend, saved: &[(Backend, Tables)]) -> Choice {
    let forced = |b: Backend| Choice {
        backends: vec![b],
        why: format!("iptablesBackend is \"{}\"", b.name()),
    };
    match setting {
        IptablesBackend::Nft => forced(Backend::Nft),
        IptablesBackend::Legacy => forced(Backend::Legacy),
        IptablesBackend::Auto => {
            let seen = |b: Backend| {
                saved
                    .iter()
                    .find(|(s, _)| *s == b)
                    .map(|(_, t)| Seen::of(t))
            };
            let nft = seen(Backend::Nft);
            let legacy = seen(Backend::Legacy);
            if nft.is_none() && legacy.is_some() {
                return Choice {
                    backends: vec![Backend::Legacy],
                    why: "iptables-nft is not usable here".into(),
                };
            }
            decide(nft.unwrap_or_default(), legacy)
        }
    }
}

/// The hints' directory under the config's `dataDir`.
pub const HINT_DIR: &str = "iptables-backend";

/// Where the last install of a pool put its rules: one file per network namespace (the node's,
/// or a test's) and pool, under the config's `dataDir` (/run by default: gone on reboot, like
/// the rules themselves), written by the pool's install and removed with the pool's rules. A
/// stale or missing hint costs one failed probe and a detection, or at a pool's removal a
/// failed blind restore and a listing, never a wrong answer or a rule left behind
/// (`PoolRules::start_uninstall` lists every present backend the hint omits).
fn hint_path(dir: &Path, pool: &IpNetwork) -> Option<PathBuf> {
    let ns = std::fs::read_link("/proc/thread-self/ns/net").ok()?;
    let ns = ns.to_string_lossy();
    let ino = ns.trim_start_matches("net:[").trim_end_matches(']');
    let pool = pool.to_string().replace('/', "-");
    Some(dir.join(format!("{ino}.{pool}")))
}

/// The backends the last install chose for this family, primary first.
pub fn hint(dir: &Path, pool: &IpNetwork) -> Option<Vec<Backend>> {
    let text = std::fs::read_to_string(hint_path(dir, pool)?).ok()?;
    let backends: Vec<Backend> = text.split_whitespace().filter_map(Backend::parse).collect();
    (!backends.is_empty()).then_some(backends)
}

/// Removes the hint of `pool`; one already gone is fine.
pub fn forget(dir: &Path, pool: &IpNetwork) {
    let Some(path) = hint_path(dir, pool) else {
        return;
    };
    match std::fs::remove_file(&path) {
        Ok(()) => {
            // The directory goes with its last hint; another pool's hint keeps it.
            let _ = std::fs::remove_dir(dir);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => crate::warn!("remove the iptables backend hint {}: {e}", path.display()),
    }
}

/// Writes the hint; failing to is logged, not fatal (the next ADD detects again).
pub fn remember(dir: &Path, pool: &IpNetwork, backends: &[Backend]) {
    let Some(path) = hint_path(dir, pool) else {
        return;
    };
    let text: Vec<&str> = backends.iter().map(|b| b.name()).collect();
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&tmp, text.join(" ")))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        crate::warn!("remember the iptables backend in {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Backend::*;

    fn seen(save: &str) -> Seen {
        Seen::of(&Listing::parse_save(save))
    }

    const EMPTY: &str =
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
    const DOCKER: &str = "# Generated by iptables-save v1.8.9\n*filter\n:INPUT ACCEPT [0:0]\n\
        :FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:DOCKER - [0:0]\n:DOCKER-ISOLATION-STAGE-1 - [0:0]\n\
        :DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\n-A FORWARD -j DOCKER-ISOLATION-STAGE-1\n\
        -A DOCKER-USER -j RETURN\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
        -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\nCOMMIT\n";
    const KUBE_HINT: &str = "*mangle\n:PREROUTING ACCEPT [0:0]\n:KUBE-IPTABLES-HINT - [0:0]\n\
        :KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n";
    const OURS_ONLY: &str = "*filter\n:FORWARD ACCEPT [0:0]\n:RCNI-FWD-0123456789ABCDEF - [0:0]\n\
        -A FORWARD -m comment --comment \"routed-cni pool 10.244.1.0/24\" -j RCNI-FWD-0123456789ABCDEF\n\
        -A RCNI-FWD-0123456789ABCDEF -s 10.244.1.0/24 -j ACCEPT\nCOMMIT\n";

    #[test]
    fn reads_save_output() {
        let d = seen(DOCKER);
        assert!(d.known_chains && !d.kubelet);
        // Four rules and the DROP policy.
        assert_eq!(d.rules, 5);
        assert_eq!(seen(EMPTY), Seen::default());
        assert!(seen(KUBE_HINT).kubelet);
        assert_eq!(
            seen(OURS_ONLY),
            Seen::default(),
            "our own rules do not count"
        );
    }

    #[test]
    fn picks_the_backend_that_carries_rules_and_both_when_both_do() {
        // A clean node (and a node where only our rules are): nft, Debian's default.
        assert_eq!(decide(seen(EMPTY), None).backends, [Nft]);
        assert_eq!(decide(seen(OURS_ONLY), Some(seen(EMPTY))).backends, [Nft]);
        // Docker on iptables-legacy, nothing in nft: legacy only.
        assert_eq!(decide(seen(EMPTY), Some(seen(DOCKER))).backends, [Legacy]);
        // Docker on nft, legacy tables empty (something listed them once): nft only.
        assert_eq!(decide(seen(DOCKER), Some(seen(EMPTY))).backends, [Nft]);
        // A policy DROP alone is enough to carry rules.
        let drop = "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n";
        assert_eq!(decide(seen(EMPTY), Some(seen(drop))).backends, [Legacy]);
        // kubelet on nft, Docker on legacy: both, nft first (kubelet's choice).
        let kube_nft = format!(
            "{KUBE_HINT}*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -j KUBE-FORWARD\nCOMMIT\n"
        );
        let c = decide(seen(&kube_nft), Some(seen(DOCKER)));
        assert_eq!(c.backends, [Nft, Legacy]);
        assert!(c.why.contains("both"), "{}", c.why);
        // Both carry rules, no kubelet: the busier one first, ties to legacy.
        assert_eq!(
            decide(seen(drop), Some(seen(DOCKER))).backends,
            [Legacy, Nft]
        );
        assert_eq!(decide(seen(drop), Some(seen(drop))).backends, [Legacy, Nft]);
        assert_eq!(
            decide(seen(DOCKER), Some(seen(drop))).backends,
            [Nft, Legacy]
        );
        // kubelet's chains alone (no rules yet) in legacy.
        assert_eq!(
            decide(seen(EMPTY), Some(seen(KUBE_HINT))).backends,
            [Legacy]
        );
    }

    #[test]
    fn the_setting_forces_a_backend() {
        let saved = vec![
            (Nft, Listing::parse_save(EMPTY)),
            (Legacy, Listing::parse_save(DOCKER)),
        ];
        assert_eq!(choose(IptablesBackend::Auto, &saved).backends, [Legacy]);
        assert_eq!(choose(IptablesBackend::Nft, &saved).backends, [Nft]);
        let forced = choose(IptablesBackend::Legacy, &saved[..1]);
        assert_eq!(forced.backends, [Legacy]);
        assert!(forced.why.contains("iptablesBackend"));
        // nft unusable, legacy readable: legacy.
        assert_eq!(
            choose(IptablesBackend::Auto, &saved[1..]).backends,
            [Legacy]
        );
    }
}
