//! Routes between nodes: `<other node's podCIDR> via <its InternalIP>` in the main table, for
//! both families. Each route carries our own rtm_protocol, so the sync can tell its routes from
//! everyone else's: it adds, replaces and removes only those, and leaves the rest alone.

use futures_util::TryStreamExt;
use ipnetwork::IpNetwork;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, RouteMessageBuilder};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use thiserror::Error;

use super::kube::NodeInfo;
use super::tunnel::Encapsulation;
use crate::dataplane::vxlan::{tunnel_address, vtep_mac, VXLAN_DEVICE};
use crate::dataplane::{errno, error_text, route_oif, route_table};

/// rtm_protocol of every route the agent makes (`ip route show proto 77`). Not in iproute2's
/// rt_protos nor the kernel's RTPROT_* list (0-18, 42, 99, 186-192), and not one the
/// well-known CNIs use (Calico's felix: 80, BIRD: 12).
pub const ROUTE_PROTOCOL: u8 = 77;
const MAIN_TABLE: u32 = 254;
const EEXIST: i32 = 17;
const ESRCH: i32 = 3;
/// What the kernel answers for a gateway on no attached network: IPv4 and IPv6 respectively.
const ENETUNREACH: i32 = 101;
const EHOSTUNREACH: i32 = 113;

#[derive(Debug, Error)]
pub enum RouteError {
    #[error("list routes: {0}")]
    List(String),
}

/// How a route reaches the other node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// `via` is the node's InternalIP, on a link this node shares with it.
    Direct,
    /// `via` is the node's tunnel address, on our VXLAN device (onlink); the outer packets go
    /// to `underlay`, the node's InternalIP.
    Vxlan { underlay: IpAddr },
}

/// One route the cluster wants on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRoute {
    pub dst: IpNetwork,
    pub via: IpAddr,
    pub node: String,
    pub path: Path,
}

/// What a remote node reached through VXLAN needs besides its routes: a neighbour entry per
/// tunnel address and one FDB entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanPeer {
    pub node: String,
    pub mac: [u8; 6],
    pub underlay: IpAddr,
    pub tunnels: Vec<IpAddr>,
}

/// The routes (and VXLAN peers) this node should have, and why some nodes got none.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub routes: BTreeMap<IpNetwork, PodRoute>,
    pub vxlan_peers: BTreeMap<String, VxlanPeer>,
    pub skipped: Vec<String>,
}

/// What decides the path to each node.
#[derive(Debug, Clone, Default)]
pub struct Reach {
    pub mode: Encapsulation,
    /// This node's address for the outer packets (its first IPv4 InternalIP, else IPv6);
    /// `None`: VXLAN is not possible (never mode, or no InternalIP of our own yet).
    pub local: Option<IpAddr>,
    /// The node addresses the kernel reaches without a gateway (crosssubnet's test).
    pub on_link: BTreeSet<IpAddr>,
}

fn same_family(a: &IpNetwork, b: &IpAddr) -> bool {
    matches!(
        (a, b),
        (IpNetwork::V4(_), IpAddr::V4(_)) | (IpNetwork::V6(_), IpAddr::V6(_))
    )
}

fn same_ip_family(a: &IpAddr, b: &IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    same_family(a, &b.network()) && (a.contains(b.network()) || b.contains(a.network()))
}

/// The podCIDRs already planned, as address ranges, so that finding one a new CIDR overlaps
/// is a lookup rather than a scan (a scan per node made planning 5,000 nodes quadratic: 70 ms
/// of every sync). Planned CIDRs never overlap each other, so the only one that can contain a
/// new CIDR is the last to start at or before it, and the others it may overlap start inside it.
#[derive(Default)]
struct Claimed {
    /// (IPv6?, first address) → (last address, the CIDR).
    ranges: BTreeMap<(bool, u128), (u128, IpNetwork)>,
}

impl Claimed {
    fn span(n: &IpNetwork) -> (bool, u128, u128) {
        match n {
            IpNetwork::V4(v) => (
                false,
                u32::from(v.network()).into(),
                u32::from(v.broadcast()).into(),
            ),
            IpNetwork::V6(v) => {
                let first = u128::from(v.network());
                // The host bits all set (none for a /128).
                let host = u128::MAX.checked_shr(u32::from(v.prefix())).unwrap_or(0);
                (true, first, first | host)
            }
        }
    }

    fn overlapping(&self, n: &IpNetwork) -> Option<IpNetwork> {
        let (v6, first, last) = Self::span(n);
        let before = self
            .ranges
            .range(..=(v6, first))
            .next_back()
            .filter(|((f6, _), (end, _))| *f6 == v6 && *end >= first);
        let inside = self.ranges.range((v6, first)..=(v6, last)).next();
        before.or(inside).map(|(_, (_, dst))| *dst)
    }

    fn insert(&mut self, n: &IpNetwork) {
        let (v6, first, last) = Self::span(n);
        self.ranges.insert((v6, first), (last, *n));
    }
}

/// The routes to every other node's podCIDRs. Direct, via the node's first InternalIP of the
/// same family, when the mode is `never`, or `crosssubnet` and the kernel reaches that address
/// without a gateway; otherwise through VXLAN to the node's InternalIP of the underlay's
/// family. Nodes are visited by name, so when two claim the same CIDR the choice is stable.
/// Never a route into our own podCIDRs, or via one of our own addresses.
pub fn plan(nodes: &BTreeMap<String, NodeInfo>, own_name: &str, reach: &Reach) -> Plan {
    let mut out = Plan::default();
    let mut claimed = Claimed::default();
    let own = nodes.get(own_name);
    let own_cidrs: &[IpNetwork] = own.map(|n| n.pod_cidrs.as_slice()).unwrap_or(&[]);
    let own_ips: &[IpAddr] = own.map(|n| n.internal_ips.as_slice()).unwrap_or(&[]);
    for node in nodes.values().filter(|n| n.name != own_name) {
        if node.pod_cidrs.is_empty() {
            out.skipped
                .push(format!("node {} has no podCIDR yet", node.name));
            continue;
        }
        let underlay = reach.local.and_then(|l| {
            node.internal_ips
                .iter()
                .find(|ip| same_ip_family(ip, &l))
                .copied()
        });
        for dst in &node.pod_cidrs {
            let direct = node.internal_ips.iter().find(|ip| same_family(dst, ip));
            let path = match (reach.mode, direct, underlay) {
                (Encapsulation::Never, Some(via), _) => Some((*via, Path::Direct)),
                (Encapsulation::CrossSubnet, Some(via), _) if reach.on_link.contains(via) => {
                    Some((*via, Path::Direct))
                }
                (Encapsulation::Vxlan | Encapsulation::CrossSubnet, _, Some(u)) => {
                    Some((tunnel_address(dst), Path::Vxlan { underlay: u }))
                }
                // No VXLAN possible: a direct route, which fails (and says why) if not on link.
                (Encapsulation::CrossSubnet, Some(via), None) => Some((*via, Path::Direct)),
                _ => None,
            };
            let Some((via, path)) = path else {
                let why = match reach.mode {
                    Encapsulation::Never => format!(
                        "node {} has no IPv{} InternalIP to route its podCIDR {dst} to",
                        node.name,
                        if dst.is_ipv4() { 4 } else { 6 }
                    ),
                    _ => match reach.local {
                        None => format!("this node has no InternalIP yet to send VXLAN from; not routing node {}'s podCIDR {dst}", node.name),
                        Some(l) => format!(
                            "node {} has no IPv{} InternalIP to send VXLAN to (this node's underlay is {l}); not routing its podCIDR {dst}",
                            node.name,
                            if l.is_ipv4() { 4 } else { 6 }
                        ),
                    },
                };
                out.skipped.push(why);
                continue;
            };
            if let Some(mine) = own_cidrs.iter().find(|c| overlaps(c, dst)) {
                out.skipped.push(format!(
                    "node {}'s podCIDR {dst} overlaps this node's own {mine}; not routing it",
                    node.name
                ));
                continue;
            }
            let outer = match path {
                Path::Direct => via,
                Path::Vxlan { underlay } => underlay,
            };
            if own_ips.contains(&outer) {
                out.skipped.push(format!(
                    "node {} claims this node's own address {outer}; not routing {dst}",
                    node.name
                ));
                continue;
            }
            if let Some(taken) = claimed.overlapping(dst).and_then(|d| out.routes.get(&d)) {
                out.skipped.push(format!(
                    "node {}'s podCIDR {dst} overlaps node {}'s {}; routing only the latter",
                    node.name, taken.node, taken.dst
                ));
                continue;
            }
            if let Path::Vxlan { underlay } = path {
                let peer = out
                    .vxlan_peers
                    .entry(node.name.clone())
                    .or_insert_with(|| VxlanPeer {
                        node: node.name.clone(),
                        mac: vtep_mac(&node.name),
                        underlay,
                        tunnels: Vec::new(),
                    });
                peer.tunnels.push(via);
            }
            claimed.insert(dst);
            out.routes.insert(
                *dst,
                PodRoute {
                    dst: *dst,
                    via,
                    node: node.name.clone(),
                    path,
                },
            );
        }
    }
    out
}

/// One of our routes as the kernel has it.
#[derive(Debug, Clone)]
struct Installed {
    dst: IpNetwork,
    via: Option<IpAddr>,
    oif: Option<u32>,
    msg: RouteMessage,
}

/// What a sync did, one line per action (already logged), and what it could not do.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub added: usize,
    pub replaced: usize,
    pub removed: usize,
    pub failures: Vec<String>,
}

impl SyncReport {
    /// Whether the next change gets a log line of its own (the sync's summary counts all).
    fn listed(&self) -> bool {
        self.added + self.replaced + self.removed < super::LISTED_CHANGES
    }
}

/// `dev`: the VXLAN device's index for a route through the tunnel (onlink: the tunnel
/// address is on no subnet of the device, and needs none: its neighbour entry is permanent).
fn route_message(dst: IpNetwork, via: IpAddr, dev: Option<u32>) -> RouteMessage {
    let proto = RouteProtocol::from(ROUTE_PROTOCOL);
    match (dst, via) {
        (IpNetwork::V4(d), IpAddr::V4(g)) => {
            let b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(d.network(), d.prefix())
                .gateway(g)
                .protocol(proto);
            match dev {
                Some(i) => b.output_interface(i).onlink().build(),
                None => b.build(),
            }
        }
        (IpNetwork::V6(d), IpAddr::V6(g)) => {
            let b = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(d.network(), d.prefix())
                .gateway(g)
                .protocol(proto);
            match dev {
                Some(i) => b.output_interface(i).onlink().build(),
                None => b.build(),
            }
        }
        // plan() never pairs families; a mixed pair here is a bug, not an input problem.
        _ => unreachable!("route {dst} via {via}: address families differ"),
    }
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

fn installed(msg: RouteMessage) -> Option<Installed> {
    let dst_ip = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => route_addr(d),
        _ => None,
    })?;
    let dst = IpNetwork::new(dst_ip, msg.header.destination_prefix_length).ok()?;
    let via = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(g) => route_addr(g),
        _ => None,
    });
    Some(Installed {
        dst,
        via,
        oif: route_oif(&msg),
        msg,
    })
}

/// The routes of the namespace the handle's socket lives in.
pub struct RouteSync {
    handle: Handle,
    /// Our routes as the last sync left them, when nothing failed: a sync for a node event
    /// starts from these instead of dumping every route of the node (5,000 at 5,000 nodes);
    /// a fresh sync (full passes, this node's own routes changed, the VXLAN device changed)
    /// dumps them.
    known: Option<BTreeMap<IpNetwork, Vec<Installed>>>,
}

impl RouteSync {
    pub fn new(handle: Handle) -> RouteSync {
        RouteSync {
            handle,
            known: None,
        }
    }

    /// Our routes in the main table, both families.
    async fn ours(&self) -> Result<Vec<Installed>, RouteError> {
        let mut out = Vec::new();
        for query in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let mut routes = self.handle.route().get(query).execute();
            while let Some(r) = routes
                .try_next()
                .await
                .map_err(|e| RouteError::List(error_text(&e)))?
            {
                if u8::from(r.header.protocol) == ROUTE_PROTOCOL && route_table(&r) == MAIN_TABLE {
                    out.extend(installed(r));
                }
            }
        }
        Ok(out)
    }

    /// Makes our routes exactly `plan.routes`. `names` maps a destination to the node it was
    /// last routed for, so a removal can name a node that is no longer in the API.
    /// `vxlan`: the VXLAN device's index, for the plan's routes through it (a plan with such
    /// routes and no device leaves them out, as failures).
    pub async fn sync(
        &mut self,
        plan: &Plan,
        names: &BTreeMap<IpNetwork, String>,
        vxlan: Option<u32>,
        fresh: bool,
    ) -> Result<SyncReport, RouteError> {
        let mut report = SyncReport::default();
        let current = match self.known.take() {
            Some(known) if !fresh => known,
            _ => {
                let mut dumped: BTreeMap<IpNetwork, Vec<Installed>> = BTreeMap::new();
                for r in self.ours().await? {
                    dumped.entry(r.dst).or_default().push(r);
                }
                dumped
            }
        };
        // What this sync changed, to make `current` what the next sync starts from.
        let mut gone: Vec<IpNetwork> = Vec::new();
        let mut made: Vec<Installed> = Vec::new();
        // Removals first: a node that left may have handed its CIDR to one that joins.
        for (dst, routes) in &current {
            if plan.routes.contains_key(dst) {
                continue;
            }
            let node = names.get(dst).map(String::as_str).unwrap_or("unknown");
            gone.push(*dst);
            for r in routes {
                let via = r.via.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
                match self.handle.route().del(r.msg.clone()).execute().await {
                    Ok(()) => {
                        if report.listed() {
                            crate::info!("route removed: {dst} via {via} (node {node} left or no longer has this podCIDR)");
                        }
                        report.removed += 1;
                    }
                    Err(e) if errno(&e) == Some(ESRCH) => {}
                    Err(e) => {
                        let msg = format!(
                            "remove route {dst} via {via} (node {node}): {}",
                            error_text(&e)
                        );
                        crate::error!("{msg}");
                        report.failures.push(msg);
                    }
                }
            }
        }
        for (dst, want) in &plan.routes {
            let have = current.get(dst).map(Vec::as_slice).unwrap_or(&[]);
            let dev = match want.path {
                Path::Direct => None,
                Path::Vxlan { .. } => match vxlan {
                    Some(i) => Some(i),
                    None => {
                        report.failures.push(format!(
                            "route {dst} via {} (node {}): no VXLAN device",
                            want.via, want.node
                        ));
                        continue;
                    }
                },
            };
            if let [only] = have {
                // A direct route must not be left on the tunnel device, and the other way round.
                let same_dev = match dev {
                    Some(i) => only.oif == Some(i),
                    None => vxlan.is_none() || only.oif != vxlan,
                };
                if only.via == Some(want.via) && same_dev {
                    continue;
                }
            }
            let msg = route_message(*dst, want.via, dev);
            let installed = Installed {
                dst: *dst,
                via: Some(want.via),
                oif: dev,
                msg: msg.clone(),
            };
            let what = match want.path {
                Path::Direct => format!("{dst} via {} (node {})", want.via, want.node),
                Path::Vxlan { underlay } => format!(
                    "{dst} via {} dev {VXLAN_DEVICE} onlink (node {}, VXLAN to {underlay})",
                    want.via, want.node
                ),
            };
            // IPv6 refuses to replace a route by one whose onlink gateway lies inside the route
            // being replaced on another device (EINVAL, "Nexthop has invalid gateway or device
            // mismatch"): the gateway check finds the old route. Moving an IPv6 destination
            // onto or off the tunnel therefore removes the old route first.
            let moves_device = have.iter().any(|r| match dev {
                Some(i) => r.oif != Some(i),
                None => vxlan.is_some() && r.oif == vxlan,
            });
            if dst.is_ipv6() && moves_device {
                for r in have {
                    let _ = self.handle.route().del(r.msg.clone()).execute().await;
                }
            }
            let result = if have.is_empty() {
                // EXCL: a route to the same place that is not ours must not be overwritten.
                self.handle.route().add(msg).execute().await
            } else {
                // Ours with another gateway (the node's address changed): swap in place, so
                // there is no moment without a route.
                self.handle.route().add(msg).replace().execute().await
            };
            if result.is_ok() {
                made.push(installed);
            }
            match result {
                Ok(()) if have.is_empty() => {
                    if report.listed() {
                        crate::info!("route added: {what}");
                    }
                    report.added += 1;
                }
                Ok(()) => {
                    let old: Vec<String> = have
                        .iter()
                        .map(|r| r.via.map(|v| v.to_string()).unwrap_or_else(|| "-".into()))
                        .collect();
                    if report.listed() {
                        crate::info!("route replaced: {what} (was via {})", old.join(", "));
                    }
                    report.replaced += 1;
                    // Extra routes of ours to this destination (another metric) are stale.
                    for r in have.iter().skip(1) {
                        let _ = self.handle.route().del(r.msg.clone()).execute().await;
                    }
                }
                Err(e) => {
                    let hint = match errno(&e) {
                        Some(EEXIST) => format!(
                            "; the node already has a route to {dst} that routed-cni did not make (see `ip route show {dst}`): leaving it alone"
                        ),
                        Some(ENETUNREACH | EHOSTUNREACH) => format!(
                            "; {} is not on a network this node is attached to: with --encapsulation never, routed-cni routes pod CIDRs straight to node addresses, so nodes must share a link (crosssubnet, the default, reaches such nodes through VXLAN)",
                            want.via
                        ),
                        _ => String::new(),
                    };
                    let msg = format!("add route {what}: {}{hint}", error_text(&e));
                    crate::error!("{msg}");
                    report.failures.push(msg);
                }
            }
        }
        // After a failure the kernel may hold anything: the next sync looks again.
        if report.failures.is_empty() {
            let mut current = current;
            for dst in gone {
                current.remove(&dst);
            }
            for r in made {
                current.insert(r.dst, vec![r]);
            }
            self.known = Some(current);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claimed_finds_what_a_cidr_overlaps_either_way() {
        let n = |s: &str| s.parse::<IpNetwork>().unwrap();
        let mut c = Claimed::default();
        for cidr in [
            "10.244.1.0/24",
            "10.244.4.0/22",
            "fd00:10:244:1::/64",
            "10.0.0.7/32",
        ] {
            assert_eq!(c.overlapping(&n(cidr)), None, "{cidr}");
            c.insert(&n(cidr));
        }
        // Inside a claimed one, containing one, the same, and neighbours that touch nothing.
        assert_eq!(
            c.overlapping(&n("10.244.1.128/25")),
            Some(n("10.244.1.0/24"))
        );
        assert_eq!(c.overlapping(&n("10.244.0.0/16")), Some(n("10.244.1.0/24")));
        assert_eq!(c.overlapping(&n("10.244.6.0/24")), Some(n("10.244.4.0/22")));
        assert_eq!(c.overlapping(&n("10.0.0.0/29")), Some(n("10.0.0.7/32")));
        assert_eq!(c.overlapping(&n("10.244.2.0/24")), None);
        assert_eq!(c.overlapping(&n("10.244.8.0/24")), None);
        assert_eq!(c.overlapping(&n("10.0.0.8/32")), None);
        // Families never overlap, even where the numbers would.
        assert_eq!(c.overlapping(&n("::a00:7/128")), None);
        assert_eq!(
            c.overlapping(&n("fd00:10:244:1:8000::/65")),
            Some(n("fd00:10:244:1::/64"))
        );
        assert_eq!(
            c.overlapping(&n("fd00:10:244::/48")),
            Some(n("fd00:10:244:1::/64"))
        );
        assert_eq!(c.overlapping(&n("fd00:10:244:2::/64")), None);
    }

    fn node(name: &str, cidrs: &[&str], ips: &[&str]) -> (String, NodeInfo) {
        (
            name.to_string(),
            NodeInfo {
                name: name.into(),
                pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
                internal_ips: ips.iter().map(|c| c.parse().unwrap()).collect(),
                problems: vec![],
                network_unavailable: None,
            },
        )
    }

    fn never() -> Reach {
        Reach {
            mode: Encapsulation::Never,
            ..Default::default()
        }
    }

    fn routes(p: &Plan) -> Vec<String> {
        p.routes
            .values()
            .map(|r| format!("{} via {} ({})", r.dst, r.via, r.node))
            .collect()
    }

    #[test]
    fn routes_other_nodes_by_family_never_our_own() {
        let nodes: BTreeMap<_, _> = [
            node(
                "a",
                &["10.244.1.0/24", "fd00:1::/64"],
                &["100.64.0.1", "fd10::1"],
            ),
            node(
                "b",
                &["10.244.2.0/24", "fd00:2::/64"],
                &["fd10::2", "100.64.0.2"],
            ),
            node("c", &["10.244.3.0/24", "fd00:3::/64"], &["100.64.0.3"]),
            node("d", &[], &["100.64.0.4"]),
            node("e", &["10.244.5.0/24"], &[]),
        ]
        .into();
        let p = plan(&nodes, "a", &never());
        assert_eq!(
            routes(&p),
            vec![
                "10.244.2.0/24 via 100.64.0.2 (b)",
                "10.244.3.0/24 via 100.64.0.3 (c)",
                "fd00:2::/64 via fd10::2 (b)",
            ]
        );
        assert_eq!(p.skipped.len(), 3, "{:?}", p.skipped);
        assert!(p
            .skipped
            .iter()
            .any(|s| s.contains("node c has no IPv6 InternalIP")));
        assert!(p
            .skipped
            .iter()
            .any(|s| s.contains("node d has no podCIDR")));
        assert!(p
            .skipped
            .iter()
            .any(|s| s.contains("node e has no IPv4 InternalIP")));
    }

    #[test]
    fn conflicts_are_skipped_and_said() {
        let nodes: BTreeMap<_, _> = [
            node("a", &["10.244.1.0/24"], &["100.64.0.1"]),
            // Overlaps our own podCIDR: routing it would steal our pods' traffic.
            node("b", &["10.244.0.0/16"], &["100.64.0.2"]),
            // Claims our address.
            node("c", &["10.244.3.0/24"], &["100.64.0.1"]),
            // Two nodes with one CIDR: the first by name wins, every time.
            node("d", &["10.244.4.0/24"], &["100.64.0.4"]),
            node("e", &["10.244.4.0/24"], &["100.64.0.5"]),
        ]
        .into();
        let p = plan(&nodes, "a", &never());
        assert_eq!(routes(&p), vec!["10.244.4.0/24 via 100.64.0.4 (d)"]);
        assert_eq!(p.skipped.len(), 3, "{:?}", p.skipped);
        // Our own node unknown (not registered yet): the others are still routed.
        let p = plan(&nodes, "z", &never());
        assert_eq!(p.routes.len(), 3, "{:?}", routes(&p));
    }

    #[test]
    fn crosssubnet_tunnels_only_nodes_off_link_and_vxlan_tunnels_all() {
        let nodes: BTreeMap<_, _> = [
            node(
                "a",
                &["10.244.1.0/24", "fd00:1::/64"],
                &["100.64.0.1", "fd10::1"],
            ),
            // On A's link.
            node(
                "b",
                &["10.244.2.0/24", "fd00:2::/64"],
                &["100.64.0.2", "fd10::2"],
            ),
            // Behind a router, IPv4 only: its IPv6 pods ride the IPv4 tunnel too.
            node("c", &["10.244.3.0/24", "fd00:3::/64"], &["100.65.0.3"]),
            // No address of the underlay's family: nothing to send VXLAN to.
            node("d", &["10.244.4.0/24"], &["fd20::4"]),
        ]
        .into();
        let mut reach = Reach {
            mode: Encapsulation::CrossSubnet,
            local: Some("100.64.0.1".parse().unwrap()),
            on_link: ["100.64.0.2", "fd10::2"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
        };
        let p = plan(&nodes, "a", &reach);
        assert_eq!(
            routes(&p),
            vec![
                "10.244.2.0/24 via 100.64.0.2 (b)",
                "10.244.3.0/24 via 10.244.3.0 (c)",
                "fd00:2::/64 via fd10::2 (b)",
                "fd00:3::/64 via fd00:3:: (c)",
            ]
        );
        assert_eq!(p.vxlan_peers.len(), 1);
        let c = &p.vxlan_peers["c"];
        assert_eq!(c.underlay, "100.65.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(c.mac, vtep_mac("c"));
        assert_eq!(c.tunnels.len(), 2);
        assert!(
            p.skipped
                .iter()
                .any(|s| s.contains("node d has no IPv4 InternalIP to send VXLAN to")),
            "{:?}",
            p.skipped
        );
        assert_eq!(
            p.routes[&"10.244.2.0/24".parse().unwrap()].path,
            Path::Direct
        );

        reach.mode = Encapsulation::Vxlan;
        let p = plan(&nodes, "a", &reach);
        assert_eq!(p.vxlan_peers.keys().collect::<Vec<_>>(), ["b", "c"]);
        assert!(p
            .routes
            .values()
            .all(|r| matches!(r.path, Path::Vxlan { .. })));
        assert_eq!(
            p.vxlan_peers["b"].underlay,
            "100.64.0.2".parse::<IpAddr>().unwrap()
        );

        // Without an address of our own, crosssubnet falls back to direct routes.
        reach.mode = Encapsulation::CrossSubnet;
        reach.local = None;
        let p = plan(&nodes, "a", &reach);
        assert!(p.vxlan_peers.is_empty());
        assert!(routes(&p).contains(&"10.244.3.0/24 via 100.65.0.3 (c)".to_string()));
    }

    #[test]
    fn a_node_claiming_our_address_is_not_tunnelled_to() {
        let nodes: BTreeMap<_, _> = [
            node("a", &["10.244.1.0/24"], &["100.64.0.1"]),
            node("x", &["10.244.9.0/24"], &["100.64.0.1"]),
        ]
        .into();
        let reach = Reach {
            mode: Encapsulation::Vxlan,
            local: Some("100.64.0.1".parse().unwrap()),
            on_link: BTreeSet::new(),
        };
        let p = plan(&nodes, "a", &reach);
        assert!(p.routes.is_empty() && p.vxlan_peers.is_empty());
        assert!(p.skipped[0].contains("claims this node's own address 100.64.0.1"));
    }

    #[test]
    fn route_messages_carry_our_protocol_and_gateway() {
        let m = route_message(
            "10.244.2.0/24".parse().unwrap(),
            "100.64.0.2".parse().unwrap(),
            None,
        );
        assert_eq!(u8::from(m.header.protocol), ROUTE_PROTOCOL);
        assert_eq!(m.header.destination_prefix_length, 24);
        let back = installed(m).unwrap();
        assert_eq!(back.dst, "10.244.2.0/24".parse::<IpNetwork>().unwrap());
        assert_eq!(back.via, Some("100.64.0.2".parse().unwrap()));
        let m6 = route_message(
            "fd00:2::/64".parse().unwrap(),
            "fd10::2".parse().unwrap(),
            None,
        );
        assert_eq!(installed(m6).unwrap().via, Some("fd10::2".parse().unwrap()));
        let t = route_message(
            "10.244.3.0/24".parse().unwrap(),
            "10.244.3.0".parse().unwrap(),
            Some(42),
        );
        assert!(t
            .header
            .flags
            .contains(rtnetlink::packet_route::route::RouteFlags::Onlink));
        assert_eq!(installed(t).unwrap().oif, Some(42));
    }
}
