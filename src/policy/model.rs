//! Pods, Namespaces and NetworkPolicies as enforcement needs them, and the cache the agent's
//! watches keep. The API's JSON is read through private wire structs (wire.rs) and reduced on
//! arrival: a node of a large cluster holds every pod (150,000 in issue 18's target), so no raw
//! JSON and no field the compiler does not read is kept.
//!
//! Values the API server's validation would have rejected (an unknown protocol, a port out of
//! range, an ipBlock that does not parse, a selector operator we do not know) are kept as
//! `Invalid` entries that match nothing, never dropped: dropping the only entry of a `ports` or
//! `from` list would turn "these" into "all", failing open.

use super::ruleset::Protocol;
use super::selector::LabelSelector;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

pub mod intern;
mod wire;

pub type Labels = BTreeMap<String, String>;

/// A pod's identity: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl PodKey {
    pub fn new(namespace: &str, name: &str) -> PodKey {
        PodKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A container port that has a name (the only ones a policy can refer to other than by number).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(from = "wire::Pod")]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    /// Empty once cached: only the watch reads it, from the event's object.
    pub resource_version: String,
    /// Shared with every pod of the same labels (intern.rs).
    pub labels: Arc<Labels>,
    pub node_name: String,
    pub host_network: bool,
    /// Named ports of `spec.containers[].ports[]` (unnamed ones are never looked up); shared
    /// like the labels.
    pub named_ports: Arc<[NamedPort]>,
    /// Phase Succeeded or Failed: no container runs, the address may already be reused.
    pub terminated: bool,
    /// `status.podIPs` (or `status.podIP` from servers that only set that), parsed.
    pub ips: Vec<IpAddr>,
}

impl Pod {
    pub fn key(&self) -> PodKey {
        PodKey::new(&self.namespace, &self.name)
    }

    /// Whether selectors can pick this pod at all, as a target or as a peer. hostNetwork pods
    /// have the node's address (only ipBlock reaches them, as the node); finished pods run
    /// nothing and their address may belong to a new pod already.
    pub fn selectable(&self) -> bool {
        !self.host_network && !self.terminated
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(from = "wire::Namespace")]
pub struct Namespace {
    pub name: String,
    pub resource_version: String,
    pub labels: Labels,
}

/// A NetworkPolicy, reduced: which pods it selects, which directions it isolates, and its rules.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(from = "wire::NetworkPolicy")]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    pub resource_version: String,
    pub pod_selector: LabelSelector,
    /// From `policyTypes`, or inferred when it is absent or empty: Ingress always, Egress iff
    /// the policy has egress rules (the API server defaults it the same way on write).
    pub isolates_ingress: bool,
    pub isolates_egress: bool,
    /// Rules of each direction; an absent list is empty (nothing allowed by this policy).
    pub ingress: Vec<PolicyRule>,
    pub egress: Vec<PolicyRule>,
}

impl NetworkPolicy {
    /// `namespace/name`, the key used everywhere a policy is named.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One ingress or egress rule. An empty `peers` is everyone (absent or empty `from`/`to`);
/// an empty `ports` is every port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PolicyPort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    /// `podSelector` and/or `namespaceSelector` (both: AND). `None` is "not constrained":
    /// a missing namespaceSelector means the policy's own namespace, a missing podSelector
    /// means every pod of the selected namespaces.
    Pods {
        pod_selector: Option<LabelSelector>,
        namespace_selector: Option<LabelSelector>,
    },
    /// `ipBlock`: `cidr` less `except`, already parsed.
    IpBlock(IpBlock),
    /// A peer the API would have rejected (none or several of the forms, a bad CIDR).
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IpBlock {
    pub cidr: ipnetwork::IpNetwork,
    pub except: Vec<ipnetwork::IpNetwork>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyPort {
    /// A protocol alone (`range: None`), a port, or `port`..=`endPort`.
    Numeric {
        protocol: Protocol,
        range: Option<(u16, u16)>,
    },
    /// A container port name, resolved per destination pod.
    Named { protocol: Protocol, name: String },
    /// An entry the API would have rejected; matches nothing.
    Invalid(String),
}

/// What the agent's watches know: pods by namespace then name (so "the pods of namespace N" is
/// one lookup), namespaces, and policies by `namespace/name`.
#[derive(Debug, Clone, Default)]
pub struct PolicyCache {
    pods: BTreeMap<String, BTreeMap<String, Pod>>,
    namespaces: BTreeMap<String, Namespace>,
    policies: BTreeMap<String, NetworkPolicy>,
}

/// Whether two versions differ in anything enforcement reads (the resourceVersion changes on
/// every write, including the many status updates that touch nothing we use).
fn same_but_version<T: Clone + PartialEq>(old: &T, new: &T, version: impl Fn(&mut T)) -> bool {
    let mut old = old.clone();
    let mut new = new.clone();
    version(&mut old);
    version(&mut new);
    old == new
}

impl PolicyCache {
    pub fn new() -> PolicyCache {
        PolicyCache::default()
    }

    /// Stores a pod from a watch ADDED/MODIFIED event or a list; returns whether anything
    /// enforcement reads changed (so the agent can skip recompiling on status noise).
    pub fn upsert_pod(&mut self, mut pod: Pod) -> bool {
        pod.resource_version = String::new();
        let by_name = self.pods.entry(pod.namespace.clone()).or_default();
        let changed = match by_name.get(&pod.name) {
            Some(old) => !same_but_version(old, &pod, |p| p.resource_version.clear()),
            None => true,
        };
        by_name.insert(pod.name.clone(), pod);
        changed
    }

    /// Forgets a pod (watch DELETED); returns whether it was known.
    pub fn delete_pod(&mut self, namespace: &str, name: &str) -> bool {
        let Some(by_name) = self.pods.get_mut(namespace) else {
            return false;
        };
        let removed = by_name.remove(name).is_some();
        if by_name.is_empty() {
            self.pods.remove(namespace);
        }
        removed
    }

    pub fn upsert_namespace(&mut self, namespace: Namespace) -> bool {
        let changed = match self.namespaces.get(&namespace.name) {
            Some(old) => !same_but_version(old, &namespace, |n| n.resource_version.clear()),
            None => true,
        };
        self.namespaces.insert(namespace.name.clone(), namespace);
        changed
    }

    pub fn delete_namespace(&mut self, name: &str) -> bool {
        self.namespaces.remove(name).is_some()
    }

    pub fn upsert_policy(&mut self, policy: NetworkPolicy) -> bool {
        let key = policy.key();
        let changed = match self.policies.get(&key) {
            Some(old) => !same_but_version(old, &policy, |p| p.resource_version.clear()),
            None => true,
        };
        self.policies.insert(key, policy);
        changed
    }

    pub fn delete_policy(&mut self, namespace: &str, name: &str) -> bool {
        self.policies
            .remove(&format!("{namespace}/{name}"))
            .is_some()
    }

    /// Replaces every pod with the result of a fresh list (after a watch expired); returns
    /// whether anything enforcement reads changed.
    pub fn replace_pods(&mut self, pods: impl IntoIterator<Item = Pod>) -> bool {
        let mut fresh = PolicyCache::default();
        for pod in pods {
            fresh.upsert_pod(pod);
        }
        let changed = !maps_same(&self.pods, &fresh.pods, |a, b| {
            maps_same(a, b, |a, b| {
                same_but_version(a, b, |p| p.resource_version.clear())
            })
        });
        self.pods = fresh.pods;
        changed
    }

    pub fn replace_namespaces(&mut self, namespaces: impl IntoIterator<Item = Namespace>) -> bool {
        let fresh: BTreeMap<String, Namespace> = namespaces
            .into_iter()
            .map(|n| (n.name.clone(), n))
            .collect();
        let changed = !maps_same(&self.namespaces, &fresh, |a, b| {
            same_but_version(a, b, |n| n.resource_version.clear())
        });
        self.namespaces = fresh;
        changed
    }

    pub fn replace_policies(&mut self, policies: impl IntoIterator<Item = NetworkPolicy>) -> bool {
        let fresh: BTreeMap<String, NetworkPolicy> =
            policies.into_iter().map(|p| (p.key(), p)).collect();
        let changed = !maps_same(&self.policies, &fresh, |a, b| {
            same_but_version(a, b, |p| p.resource_version.clear())
        });
        self.policies = fresh;
        changed
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods.get(namespace)?.get(name)
    }

    /// The pods of one namespace, by name.
    pub fn pods_in(&self, namespace: &str) -> impl Iterator<Item = &Pod> {
        self.pods
            .get(namespace)
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// Every pod, by namespace then name.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values().flat_map(|m| m.values())
    }

    pub fn pod_count(&self) -> usize {
        self.pods.values().map(BTreeMap::len).sum()
    }

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }

    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.namespaces.values()
    }

    /// Every policy, by `namespace/name`.
    pub fn policies(&self) -> impl Iterator<Item = &NetworkPolicy> {
        self.policies.values()
    }

    /// Whether a namespace has any policy: CNI ADD holds a new pod's interface back until the
    /// agent has programmed it only in such namespaces.
    pub fn namespace_has_policy(&self, namespace: &str) -> bool {
        self.policies
            .range(format!("{namespace}/")..)
            .next()
            .is_some_and(|(_, p)| p.namespace == namespace)
    }
}

fn maps_same<K: Ord, V>(
    a: &BTreeMap<K, V>,
    b: &BTreeMap<K, V>,
    same: impl Fn(&V, &V) -> bool,
) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((ka, va), (kb, vb))| ka == kb && same(va, vb))
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
