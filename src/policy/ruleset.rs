//! What NetworkPolicy enforcement on this node should be, as data: the compiler (compile.rs)
//! turns the agent's view of Pods, Namespaces and NetworkPolicies into a `Ruleset`, and nft.rs
//! makes the node's nftables table exactly that, in one transaction. Nothing here knows about
//! the API or about nft syntax, so both sides are tested on their own.
//!
//! The model: a local pod isolated for a direction gets that direction's chain (chosen by its
//! host veth: `oifname` for ingress, `iifname` for egress). A chain holds the union of the
//! rules of every policy selecting the pod in that direction; pods selected by the same
//! policies share one chain, so the rule count grows with policies, not pods. A packet that
//! matches a rule passes that direction; one that matches none is dropped. Replies of allowed
//! connections pass before any chain (conntrack), and pods selected by no policy have no chain.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

/// A host veth name (the pod's node-side interface).
pub type IfName = String;

/// The protocols NetworkPolicy names. SCTP is its own protocol number (132) and never matches
/// a TCP rule, whether or not the node has SCTP loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The IP protocol number (`meta l4proto`).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

/// One entry of a rule's `ports`: a protocol, and a port or an inclusive range of ports
/// (`port`..=`endPort`); `None` is every port of that protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub protocol: Protocol,
    pub range: Option<(u16, u16)>,
}

/// What a rule matches besides its peers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ports {
    /// The rule has no `ports`: every protocol and port.
    All,
    /// Numeric ports and ranges; the rule matches any of them.
    Listed(Vec<PortSpec>),
    /// Named ports, resolved per pod into a `PortSet` of (destination address, protocol,
    /// port): for ingress the selected pod's own container ports, for egress every peer pod's.
    Named(String),
}

/// Who a rule lets in (ingress: the source) or out to (egress: the destination).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peers {
    /// No `from`/`to` list, or an empty one: everyone.
    All,
    /// The addresses of an `AddressSet`: selected pods' IPs and ipBlock ranges (less except).
    Set(String),
}

/// One way through a chain: the packet's peer address is in `peers` and its protocol and
/// destination port are in `ports`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub peers: Peers,
    pub ports: Ports,
}

/// Addresses as inclusive ranges per family (a /32 is a range of one); the compiler has
/// already subtracted ipBlock `except` ranges and merged overlaps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressSet {
    pub v4: Vec<(Ipv4Addr, Ipv4Addr)>,
    pub v6: Vec<(Ipv6Addr, Ipv6Addr)>,
}

/// (destination address, protocol, port) triples for named ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSet {
    pub v4: BTreeSet<(Ipv4Addr, Protocol, u16)>,
    pub v6: BTreeSet<(Ipv6Addr, Protocol, u16)>,
}

/// A direction's chain: the packet passes if any rule matches, and is dropped otherwise.
/// An empty chain (`ingress: []`, or isolation without rules) drops everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    pub rules: Vec<Rule>,
    /// The policies (namespace/name) whose rules these are, for people reading the table and
    /// for `routed-cni policy` / doctor.
    pub policies: Vec<String>,
}

/// The node's whole enforcement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Chain name → chain. Names are short, stable and valid nft identifiers (e.g.
    /// `ing-<12 hex>`, `egr-<12 hex>` of a hash of the policies they hold).
    pub chains: BTreeMap<String, Chain>,
    pub address_sets: BTreeMap<String, AddressSet>,
    pub port_sets: BTreeMap<String, PortSet>,
    /// Host veth of an ingress-isolated local pod → its ingress chain.
    pub ingress: BTreeMap<IfName, String>,
    /// Host veth of an egress-isolated local pod → its egress chain.
    pub egress: BTreeMap<IfName, String>,
    /// Every local pod the agent has computed (isolated or not), with its addresses: packets
    /// from its veth must carry one of them as source (no spoofing past ipBlock or selector
    /// peers elsewhere), and a pod listed here is no longer held back as not yet programmed.
    pub pods: BTreeMap<IfName, Vec<std::net::IpAddr>>,
}
