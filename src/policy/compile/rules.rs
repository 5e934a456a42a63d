//! One policy rule to `Rule`s: its peers as an address set, its ports as a numeric list and/or a
//! named-port set.

use super::ranges::Ranges;
use super::{Direction, LocalPod, PortKey, Sets, World};
use crate::policy::model::{NetworkPolicy, Peer, Pod, PolicyPort, PolicyRule};
use crate::policy::ruleset::{Peers, PortSpec, Ports, Protocol, Rule};
use crate::policy::selector::LabelSelector;
use std::net::IpAddr;

/// Where a rule sits: its policy, direction and index (which name its sets), and the local
/// pods the policy selects (whose container ports an ingress named port means).
pub(super) struct Scope<'a> {
    pub policy: &'a NetworkPolicy,
    pub direction: Direction,
    pub index: usize,
    pub targets: &'a [(&'a Pod, &'a LocalPod)],
}

impl Scope<'_> {
    fn seed(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.policy.key(),
            self.direction.as_str(),
            self.index
        )
    }
}

/// The rule's `Rule`s; none when it can match nothing (its peers name no address, or every
/// port entry is invalid or names a port no relevant pod has).
pub(super) fn compile_rule(
    world: &World,
    sets: &mut Sets,
    scope: &Scope,
    rule: &PolicyRule,
) -> Vec<Rule> {
    let seed = scope.seed();
    let ranges = if rule.peers.is_empty() {
        None
    } else {
        let ranges = world.peer_ranges(&scope.policy.namespace, &rule.peers, || {
            peer_ranges(world, &scope.policy.namespace, &rule.peers)
        });
        if ranges.is_empty() {
            return Vec::new();
        }
        Some(ranges)
    };
    let peers = match &ranges {
        None => Peers::All,
        Some(r) => Peers::Set(sets.address(&seed, r.clone())),
    };
    if rule.ports.is_empty() {
        return vec![Rule {
            peers,
            ports: Ports::All,
        }];
    }
    let mut listed = Vec::new();
    let mut named = Vec::new();
    for port in &rule.ports {
        match port {
            PolicyPort::Numeric { protocol, range } => listed.push(PortSpec {
                protocol: *protocol,
                range: *range,
            }),
            PolicyPort::Named { protocol, name } => named.push((*protocol, name.as_str())),
            PolicyPort::Invalid(_) => {}
        }
    }
    let mut out = Vec::new();
    if !listed.is_empty() {
        listed.sort();
        listed.dedup();
        out.push(Rule {
            peers: peers.clone(),
            ports: Ports::Listed(listed),
        });
    }
    if !named.is_empty() {
        let triples = match scope.direction {
            Direction::Ingress => ingress_named(scope.targets, &named),
            Direction::Egress => egress_named(world, ranges.as_ref(), &named),
        };
        if !triples.0.is_empty() || !triples.1.is_empty() {
            out.push(Rule {
                peers,
                ports: Ports::Named(sets.port(&seed, triples)),
            });
        }
    }
    out
}

/// The union of a rule's peers (separate peers are OR; within one peer the selectors are AND).
fn peer_ranges(world: &World, policy_namespace: &str, peers: &[Peer]) -> Ranges {
    let mut ranges = Ranges::default();
    for peer in peers {
        match peer {
            Peer::Pods {
                pod_selector,
                namespace_selector,
            } => select_pods(
                world,
                policy_namespace,
                pod_selector.as_ref(),
                namespace_selector.as_ref(),
                &mut ranges,
            ),
            Peer::IpBlock(block) => ranges.extend(&Ranges::from_block(block)),
            Peer::Invalid(_) => {}
        }
    }
    ranges.normalize();
    ranges
}

/// Addresses of the pods a selector peer names: without a namespaceSelector, the policy's own
/// namespace; with one, every namespace it selects (a namespace not in the cache yet has no
/// labels we know, so no namespaceSelector selects it until it arrives).
fn select_pods(
    world: &World,
    policy_namespace: &str,
    pod_selector: Option<&LabelSelector>,
    namespace_selector: Option<&LabelSelector>,
    into: &mut Ranges,
) {
    let mut add = |namespace: &str| {
        for (pod, ips) in world.peers.get(namespace).into_iter().flatten() {
            if pod_selector.is_none_or(|s| s.matches(&pod.labels)) {
                for &ip in ips.iter() {
                    into.add_ip(ip);
                }
            }
        }
    };
    match namespace_selector {
        None => add(policy_namespace),
        Some(selector) => {
            for ns in world.cache.namespaces() {
                if selector.matches(&ns.labels) {
                    add(&ns.name);
                }
            }
        }
    }
}

fn insert(triples: &mut PortKey, ip: IpAddr, protocol: Protocol, port: u16) {
    match ip {
        IpAddr::V4(a) => triples.0.insert((a, protocol, port)),
        IpAddr::V6(a) => triples.1.insert((a, protocol, port)),
    };
}

/// Ingress: each selected local pod's own container ports of that name and protocol, at that
/// pod's addresses.
fn ingress_named(targets: &[(&Pod, &LocalPod)], named: &[(Protocol, &str)]) -> PortKey {
    let mut triples = PortKey::default();
    for (pod, lp) in targets {
        for np in pod.named_ports.iter() {
            if named.contains(&(np.protocol, np.name.as_str())) {
                for &ip in &lp.ips {
                    insert(&mut triples, ip, np.protocol, np.port);
                }
            }
        }
    }
    triples
}

/// Egress: the ports of that name and protocol of every pod the rule's peers reach (every pod
/// when the rule has no peers), at that pod's addresses. Pods inside an ipBlock count too: the
/// peer set already limits destinations, the port set only resolves names.
fn egress_named(world: &World, peers: Option<&Ranges>, named: &[(Protocol, &str)]) -> PortKey {
    let mut triples = PortKey::default();
    let index = world.named_ports();
    for &(protocol, name) in named {
        for &(ip, port) in index.get(&(name, protocol)).into_iter().flatten() {
            if peers.is_none_or(|r| r.contains(ip)) {
                insert(&mut triples, ip, protocol, port);
            }
        }
    }
    triples
}
