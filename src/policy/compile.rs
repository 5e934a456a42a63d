//! From the agent's cache to the node's `Ruleset`: which local pods are isolated in which
//! direction, one chain per distinct group of selecting policies, and the address and port sets
//! the chains' rules name. Pure: the same cache and local pods give the same Ruleset, with the
//! same names, every time (names are hashes of what they stand for, so an update changes set
//! elements rather than renaming chains).
//!
//! Semantics (networking.k8s.io/v1):
//! - A local pod is isolated for a direction iff a policy selecting it isolates that direction;
//!   what passes is the union of the rules of every such policy (an isolating policy without
//!   rules for that direction adds isolation only).
//! - Targets are only the pods in `local` (this node's); every other pod is a possible peer.
//!   hostNetwork pods and finished pods (Succeeded/Failed) are neither targets nor selector
//!   peers; pods without addresses are not peers.
//! - A rule's peers become one address set (selector pods' addresses and ipBlock ranges, each
//!   ipBlock less its own `except`); no peers is everyone; peers that match no address make a
//!   rule that matches nothing, so it is left out.
//! - Numeric ports and ranges stay in the rule; named ports become a port set of (destination
//!   address, protocol, port) per rule: for ingress the policy's local targets' own container
//!   ports, for egress those of every pod the rule's peers reach. One set per rule (not per
//!   pod) keeps pods that share policies on one chain even where a name means different
//!   numbers on different pods.
//! - Address and port sets with the same content are one set.

mod ranges;
mod rules;

use super::model::{NetworkPolicy, Peer, Pod, PodKey, PolicyCache};
use super::ruleset::{Chain, IfName, Peers, Ports, Protocol, Rule, Ruleset};
use ranges::Ranges;
use sha2::{Digest, Sha256};
use std::cell::{OnceCell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A pod running on this node, as the agent found it: its host-side veth and its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPod {
    pub ifname: IfName,
    pub ips: Vec<IpAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    fn chain_prefix(self) -> &'static str {
        match self {
            Direction::Ingress => "ing",
            Direction::Egress => "egr",
        }
    }
}

/// The whole enforcement of this node. A local pod that is not (yet) in the cache is left out
/// of `Ruleset::pods`: without its labels we cannot know its policies, so it must stay held
/// back as not yet programmed.
pub fn compile(cache: &PolicyCache, local: &BTreeMap<PodKey, LocalPod>) -> Ruleset {
    let world = World::new(cache, local);
    let mut out = Ruleset::default();
    // Local targets: (pod, veth, addresses), and per policy which of them it selects.
    let targets: Vec<(&Pod, &LocalPod)> = local
        .iter()
        .filter_map(|(key, lp)| Some((cache.pod(&key.namespace, &key.name)?, lp)))
        .inspect(|(pod, lp)| {
            if !pod.host_network {
                out.pods.insert(lp.ifname.clone(), lp.ips.clone());
            }
        })
        .filter(|(pod, _)| pod.selectable())
        .collect();
    // Policies by index (in key order), and per target the indices selecting it per direction.
    let policies: Vec<&NetworkPolicy> = cache.policies().collect();
    let mut selecting: Vec<[Vec<usize>; 2]> = vec![Default::default(); targets.len()];
    let mut selected_by: Vec<Vec<(&Pod, &LocalPod)>> = vec![Vec::new(); policies.len()];
    for (p, policy) in policies.iter().enumerate() {
        if !policy.isolates_ingress && !policy.isolates_egress {
            continue;
        }
        for (i, &(pod, lp)) in targets.iter().enumerate() {
            if pod.namespace == policy.namespace && policy.pod_selector.matches(&pod.labels) {
                if policy.isolates_ingress {
                    selecting[i][0].push(p);
                }
                if policy.isolates_egress {
                    selecting[i][1].push(p);
                }
                selected_by[p].push((pod, lp));
            }
        }
    }
    let mut builder = ChainBuilder {
        world: &world,
        policies: &policies,
        selected_by: &selected_by,
        sets: Sets::default(),
        rules: HashMap::new(),
        names: HashMap::new(),
    };
    for (i, (_, lp)) in targets.iter().enumerate() {
        for (d, direction) in [Direction::Ingress, Direction::Egress]
            .into_iter()
            .enumerate()
        {
            if selecting[i][d].is_empty() {
                continue;
            }
            let name = builder.chain(&mut out.chains, direction, &selecting[i][d]);
            let map = match direction {
                Direction::Ingress => &mut out.ingress,
                Direction::Egress => &mut out.egress,
            };
            map.insert(lp.ifname.clone(), name);
        }
    }
    let sets = builder.sets;
    sets.finish(&mut out);
    // Sets that only fed a merged rule's union (merge_by_ports) are not needed in the table.
    let used: HashSet<&str> = out
        .chains
        .values()
        .flat_map(|c| c.rules.iter())
        .flat_map(|r| {
            let peer = match &r.peers {
                Peers::Set(n) => Some(n.as_str()),
                Peers::All => None,
            };
            let port = match &r.ports {
                Ports::Named(n) => Some(n.as_str()),
                _ => None,
            };
            peer.into_iter().chain(port)
        })
        .collect();
    let keep_addr: BTreeSet<String> = out
        .address_sets
        .keys()
        .filter(|k| used.contains(k.as_str()))
        .cloned()
        .collect();
    let keep_port: BTreeSet<String> = out
        .port_sets
        .keys()
        .filter(|k| used.contains(k.as_str()))
        .cloned()
        .collect();
    out.address_sets.retain(|k, _| keep_addr.contains(k));
    out.port_sets.retain(|k, _| keep_port.contains(k));
    out
}

/// Builds each group's chain once (pods of one group share it) and each rule once (groups that
/// share a policy share its compiled rules and sets).
struct ChainBuilder<'w, 'a> {
    world: &'w World<'a>,
    policies: &'w [&'a NetworkPolicy],
    /// Per policy index, the local targets it selects.
    selected_by: &'w [Vec<(&'a Pod, &'a LocalPod)>],
    sets: Sets,
    /// (policy index, direction, rule index) -> compiled rules.
    rules: HashMap<(usize, Direction, usize), Vec<Rule>>,
    /// (direction, policy indices) -> chain name.
    names: HashMap<(Direction, Vec<usize>), String>,
}

impl ChainBuilder<'_, '_> {
    /// The name of the chain for this group, building the chain on first use.
    fn chain(
        &mut self,
        chains: &mut BTreeMap<String, Chain>,
        direction: Direction,
        group: &[usize],
    ) -> String {
        if let Some(name) = self.names.get(&(direction, group.to_vec())) {
            return name.clone();
        }
        // Indices follow cache.policies(), which is sorted by key, so `keys` is sorted too.
        let keys: Vec<String> = group.iter().map(|&p| self.policies[p].key()).collect();
        let name = chain_name(chains, direction, &keys);
        let mut chain = Chain {
            rules: Vec::new(),
            policies: keys,
        };
        let mut seen = HashSet::new();
        for &p in group {
            let policy = self.policies[p];
            let list = match direction {
                Direction::Ingress => &policy.ingress,
                Direction::Egress => &policy.egress,
            };
            for (index, rule) in list.iter().enumerate() {
                let compiled = self.rules.entry((p, direction, index)).or_insert_with(|| {
                    let scope = rules::Scope {
                        policy,
                        direction,
                        index,
                        targets: &self.selected_by[p],
                    };
                    rules::compile_rule(self.world, &mut self.sets, &scope, rule)
                });
                for r in compiled.iter() {
                    // Two policies allowing the same thing need one nft rule.
                    if seen.insert(r.clone()) {
                        chain.rules.push(r.clone());
                    }
                }
            }
        }
        chain.rules = self.merge_by_ports(chain.rules);
        chains.insert(name.clone(), chain);
        self.names.insert((direction, group.to_vec()), name.clone());
        name
    }

    /// One rule per distinct `ports`: the peers of rules that allow the same ports become one
    /// set (their union), so a packet costs one set lookup per kind of port, however many
    /// policies select the pod (1,000 policies each allowing other peers on port 80 were 345
    /// rules walked in order, and new connections paid for each). A rule for every peer makes
    /// the others with its ports redundant. Rules keep the order of the first of their ports.
    fn merge_by_ports(&mut self, rules: Vec<Rule>) -> Vec<Rule> {
        let mut order: Vec<Ports> = Vec::new();
        let mut peers: HashMap<Ports, Option<Vec<String>>> = HashMap::new();
        for r in rules {
            let entry = peers.entry(r.ports.clone()).or_insert_with(|| {
                order.push(r.ports.clone());
                Some(Vec::new())
            });
            match (r.peers, entry.as_mut()) {
                (Peers::All, _) => *entry = None,
                (Peers::Set(set), Some(sets)) => sets.push(set),
                (Peers::Set(_), None) => {}
            }
        }
        order
            .into_iter()
            .map(|ports| {
                let peers = match peers.remove(&ports).flatten() {
                    None => Peers::All,
                    Some(sets) if sets.len() == 1 => Peers::Set(sets[0].clone()),
                    Some(sets) => {
                        let mut union = Ranges::default();
                        for s in &sets {
                            if let Some(r) = self.sets.ranges(s) {
                                union.extend(r);
                            }
                        }
                        union.normalize();
                        Peers::Set(self.sets.address(&sets.join("+"), union))
                    }
                };
                Rule { peers, ports }
            })
            .collect()
    }
}

/// 12 hex characters of sha256: short enough for any nft identifier limit with a prefix and a
/// `-4`/`-6` suffix, wide enough that a node's few thousand names do not collide by chance
/// (and a collision is resolved below, not trusted away).
fn short_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// `ing-`/`egr-` and a hash of the sorted policy keys: the same group gets the same chain on
/// every compile and on every node.
fn chain_name(chains: &BTreeMap<String, Chain>, direction: Direction, keys: &[String]) -> String {
    let mut salt = 0u32;
    loop {
        let text = format!("{}\n{}\n{salt}", direction.as_str(), keys.join("\n"));
        let name = format!("{}-{}", direction.chain_prefix(), short_hash(&text));
        match chains.get(&name) {
            Some(chain) if chain.policies != keys => salt += 1,
            _ => return name,
        }
    }
}

type PortKey = (
    BTreeSet<(Ipv4Addr, Protocol, u16)>,
    BTreeSet<(Ipv6Addr, Protocol, u16)>,
);

/// Address and port sets by content, so identical ones are emitted once. A set is named after
/// the first rule (in policy-key order) that needs it.
#[derive(Default)]
struct Sets {
    addresses: HashMap<Ranges, String>,
    ports: HashMap<PortKey, String>,
    names: HashSet<String>,
}

impl Sets {
    fn fresh_name(&mut self, prefix: &str, seed: &str) -> String {
        let mut salt = 0u32;
        loop {
            let name = format!("{prefix}-{}", short_hash(&format!("{seed}\n{salt}")));
            if self.names.insert(name.clone()) {
                return name;
            }
            salt += 1;
        }
    }

    /// The ranges of the address set named `name`.
    fn ranges(&self, name: &str) -> Option<&Ranges> {
        self.addresses
            .iter()
            .find_map(|(r, n)| (n == name).then_some(r))
    }

    fn address(&mut self, seed: &str, ranges: Ranges) -> String {
        if let Some(name) = self.addresses.get(&ranges) {
            return name.clone();
        }
        let name = self.fresh_name("peer", seed);
        self.addresses.insert(ranges, name.clone());
        name
    }

    fn port(&mut self, seed: &str, triples: PortKey) -> String {
        if let Some(name) = self.ports.get(&triples) {
            return name.clone();
        }
        let name = self.fresh_name("nport", seed);
        self.ports.insert(triples, name.clone());
        name
    }

    fn finish(self, out: &mut Ruleset) {
        for (ranges, name) in self.addresses {
            out.address_sets.insert(name, ranges.to_address_set());
        }
        for ((v4, v6), name) in self.ports {
            out.port_sets
                .insert(name, super::ruleset::PortSet { v4, v6 });
        }
    }
}

/// (container port name, protocol) -> (pod address, port number).
type NamedIndex<'a> = HashMap<(&'a str, Protocol), Vec<(IpAddr, u16)>>;

/// What selectors and named ports look at, gathered once per compile.
struct World<'a> {
    cache: &'a PolicyCache,
    /// Selectable pods with at least one address, per namespace, with the addresses to use:
    /// a local pod's own (the agent's, known before the API's status has them), else the API's.
    peers: HashMap<&'a str, Vec<(&'a Pod, &'a [IpAddr])>>,
    /// (port name, protocol) -> (address, port) of every peer pod declaring it; built on the
    /// first egress rule with a named port.
    named: OnceCell<NamedIndex<'a>>,
    /// (policy namespace, peers) -> addresses: policies written from one template (the same
    /// `from` in many policies of a namespace) select their peers once.
    peer_memo: RefCell<HashMap<(String, Vec<Peer>), Ranges>>,
}

impl<'a> World<'a> {
    fn new(cache: &'a PolicyCache, local: &'a BTreeMap<PodKey, LocalPod>) -> World<'a> {
        let local_ips: HashMap<(&str, &str), &[IpAddr]> = local
            .iter()
            .map(|(k, lp)| ((k.namespace.as_str(), k.name.as_str()), lp.ips.as_slice()))
            .collect();
        let mut peers: HashMap<&str, Vec<(&Pod, &[IpAddr])>> = HashMap::new();
        for pod in cache.pods().filter(|p| p.selectable()) {
            let ips = local_ips
                .get(&(pod.namespace.as_str(), pod.name.as_str()))
                .copied()
                .filter(|ips| !ips.is_empty())
                .unwrap_or(pod.ips.as_slice());
            if !ips.is_empty() {
                peers
                    .entry(pod.namespace.as_str())
                    .or_default()
                    .push((pod, ips));
            }
        }
        World {
            cache,
            peers,
            named: OnceCell::new(),
            peer_memo: RefCell::default(),
        }
    }

    fn peer_ranges(&self, namespace: &str, peers: &[Peer], f: impl FnOnce() -> Ranges) -> Ranges {
        let key = (namespace.to_string(), peers.to_vec());
        if let Some(r) = self.peer_memo.borrow().get(&key) {
            return r.clone();
        }
        let r = f();
        self.peer_memo.borrow_mut().insert(key, r.clone());
        r
    }

    fn named_ports(&self) -> &NamedIndex<'a> {
        self.named.get_or_init(|| {
            let mut index: HashMap<(&str, Protocol), Vec<(IpAddr, u16)>> = HashMap::new();
            for (pod, ips) in self.peers.values().flatten() {
                for np in pod.named_ports.iter() {
                    let entry = index.entry((np.name.as_str(), np.protocol)).or_default();
                    entry.extend(ips.iter().map(|&ip| (ip, np.port)));
                }
            }
            index
        })
    }
}

#[cfg(test)]
pub(crate) mod harness;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_ports;
#[cfg(test)]
mod tests_ruleset;
