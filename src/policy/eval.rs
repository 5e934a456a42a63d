//! What the nftables table built from a `Ruleset` lets through, evaluated in memory: the
//! forward chain of the design (anti-spoof for listed pods, the egress vmap by input veth, then
//! the ingress vmap by output veth; a jumped chain passes on the first matching rule and drops
//! otherwise). Conntrack and the `pending` set are not modelled: this answers "would a new
//! connection be allowed", which is what policy decides.

use super::ruleset::{Chain, Peers, Ports, Protocol, Ruleset};
use std::net::IpAddr;

/// Whether a new connection from `src_ip` (arriving on host veth `src_if`, `None` when it comes
/// from outside the node) to `dst_ip` (leaving on `dst_if`, `None` when it leaves the node)
/// passes this node's forward chain.
pub fn allows(
    ruleset: &Ruleset,
    src_ip: IpAddr,
    src_if: Option<&str>,
    dst_ip: IpAddr,
    dst_if: Option<&str>,
    protocol: Protocol,
    port: u16,
) -> bool {
    if let Some(ips) = src_if.and_then(|i| ruleset.pods.get(i)) {
        if !ips.contains(&src_ip) {
            return false;
        }
    }
    // A name without its chain or set cannot be in an applied table (nft refuses it, and
    // nft.rs checks first); read here as the strictest thing it could mean: nothing passes.
    // Never a panic: this runs on the agent's listener thread too.
    let passes = |chain: &str, peer: IpAddr| match ruleset.chains.get(chain) {
        Some(chain) => chain_passes(ruleset, chain, peer, dst_ip, protocol, port),
        None => false,
    };
    if let Some(chain) = src_if.and_then(|i| ruleset.egress.get(i)) {
        if !passes(chain, dst_ip) {
            return false;
        }
    }
    if let Some(chain) = dst_if.and_then(|i| ruleset.ingress.get(i)) {
        if !passes(chain, src_ip) {
            return false;
        }
    }
    true
}

/// The rule that lets the packet through, by index, if any.
pub fn matching_rule(
    ruleset: &Ruleset,
    chain: &Chain,
    peer: IpAddr,
    dst_ip: IpAddr,
    protocol: Protocol,
    port: u16,
) -> Option<usize> {
    chain.rules.iter().position(|rule| {
        let peer_ok = match &rule.peers {
            Peers::All => true,
            Peers::Set(name) => match (ruleset.address_sets.get(name), peer) {
                (Some(set), IpAddr::V4(a)) => set.v4.iter().any(|&(s, e)| s <= a && a <= e),
                (Some(set), IpAddr::V6(a)) => set.v6.iter().any(|&(s, e)| s <= a && a <= e),
                (None, _) => false,
            },
        };
        let ports_ok = match &rule.ports {
            Ports::All => true,
            Ports::Listed(specs) => specs.iter().any(|s| {
                s.protocol == protocol && s.range.is_none_or(|(lo, hi)| lo <= port && port <= hi)
            }),
            Ports::Named(name) => match (ruleset.port_sets.get(name), dst_ip) {
                (Some(set), IpAddr::V4(a)) => set.v4.contains(&(a, protocol, port)),
                (Some(set), IpAddr::V6(a)) => set.v6.contains(&(a, protocol, port)),
                (None, _) => false,
            },
        };
        peer_ok && ports_ok
    })
}

fn chain_passes(
    ruleset: &Ruleset,
    chain: &Chain,
    peer: IpAddr,
    dst_ip: IpAddr,
    protocol: Protocol,
    port: u16,
) -> bool {
    matching_rule(ruleset, chain, peer, dst_ip, protocol, port).is_some()
}
