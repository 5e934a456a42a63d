//! Routes between nodes: `<other node's podCIDR> via <its InternalIP>` in the main table, for
//! both families. Each route carries our own rtm_protocol, so the sync can tell its routes from
//! everyone else's: it adds, replaces and removes only those, and leaves the rest alone.

use futures_util::TryStreamExt;
use ipnetwork::IpNetwork;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, RouteMessageBuilder};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use thiserror::Error;

use super::kube::NodeInfo;
use crate::dataplane::{errno, error_text, route_table};

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

/// One route the cluster wants on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRoute {
    pub dst: IpNetwork,
    pub via: IpAddr,
    pub node: String,
}

/// The routes this node should have, and why some nodes got none.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub routes: BTreeMap<IpNetwork, PodRoute>,
    pub skipped: Vec<String>,
}

fn same_family(a: &IpNetwork, b: &IpAddr) -> bool {
    matches!(
        (a, b),
        (IpNetwork::V4(_), IpAddr::V4(_)) | (IpNetwork::V6(_), IpAddr::V6(_))
    )
}

fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    same_family(a, &b.network()) && (a.contains(b.network()) || b.contains(a.network()))
}

/// The routes to every other node's podCIDRs, each via that node's first InternalIP of the
/// same family. Nodes are visited by name, so when two claim the same CIDR the choice is
/// stable. Never a route into our own podCIDRs, or via one of our own addresses.
pub fn plan(nodes: &BTreeMap<String, NodeInfo>, own_name: &str) -> Plan {
    let mut out = Plan::default();
    let own = nodes.get(own_name);
    let own_cidrs: &[IpNetwork] = own.map(|n| n.pod_cidrs.as_slice()).unwrap_or(&[]);
    let own_ips: &[IpAddr] = own.map(|n| n.internal_ips.as_slice()).unwrap_or(&[]);
    for node in nodes.values().filter(|n| n.name != own_name) {
        if node.pod_cidrs.is_empty() {
            out.skipped
                .push(format!("node {} has no podCIDR yet", node.name));
            continue;
        }
        for dst in &node.pod_cidrs {
            let Some(via) = node.internal_ips.iter().find(|ip| same_family(dst, ip)) else {
                out.skipped.push(format!(
                    "node {} has no IPv{} InternalIP to route its podCIDR {dst} to",
                    node.name,
                    if dst.is_ipv4() { 4 } else { 6 }
                ));
                continue;
            };
            if let Some(mine) = own_cidrs.iter().find(|c| overlaps(c, dst)) {
                out.skipped.push(format!(
                    "node {}'s podCIDR {dst} overlaps this node's own {mine}; not routing it",
                    node.name
                ));
                continue;
            }
            if own_ips.contains(via) {
                out.skipped.push(format!(
                    "node {} claims this node's own address {via}; not routing {dst}",
                    node.name
                ));
                continue;
            }
            if let Some(taken) = out.routes.values().find(|r| overlaps(&r.dst, dst)) {
                out.skipped.push(format!(
                    "node {}'s podCIDR {dst} overlaps node {}'s {}; routing only the latter",
                    node.name, taken.node, taken.dst
                ));
                continue;
            }
            out.routes.insert(
                *dst,
                PodRoute {
                    dst: *dst,
                    via: *via,
                    node: node.name.clone(),
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

fn route_message(dst: IpNetwork, via: IpAddr) -> RouteMessage {
    let proto = RouteProtocol::from(ROUTE_PROTOCOL);
    match (dst, via) {
        (IpNetwork::V4(d), IpAddr::V4(g)) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(d.network(), d.prefix())
            .gateway(g)
            .protocol(proto)
            .build(),
        (IpNetwork::V6(d), IpAddr::V6(g)) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(d.network(), d.prefix())
            .gateway(g)
            .protocol(proto)
            .build(),
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
    Some(Installed { dst, via, msg })
}

/// The routes of the namespace the handle's socket lives in.
pub struct RouteSync {
    handle: Handle,
}

impl RouteSync {
    pub fn new(handle: Handle) -> RouteSync {
        RouteSync { handle }
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
    pub async fn sync(
        &self,
        plan: &Plan,
        names: &BTreeMap<IpNetwork, String>,
    ) -> Result<SyncReport, RouteError> {
        let mut report = SyncReport::default();
        let mut current: BTreeMap<IpNetwork, Vec<Installed>> = BTreeMap::new();
        for r in self.ours().await? {
            current.entry(r.dst).or_default().push(r);
        }
        // Removals first: a node that left may have handed its CIDR to one that joins.
        for (dst, routes) in &current {
            if plan.routes.contains_key(dst) {
                continue;
            }
            let node = names.get(dst).map(String::as_str).unwrap_or("unknown");
            for r in routes {
                let via = r.via.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
                match self.handle.route().del(r.msg.clone()).execute().await {
                    Ok(()) => {
                        crate::info!("route removed: {dst} via {via} (node {node} left or no longer has this podCIDR)");
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
            if let [only] = have {
                if only.via == Some(want.via) {
                    continue;
                }
            }
            let msg = route_message(*dst, want.via);
            let what = format!("{dst} via {} (node {})", want.via, want.node);
            let result = if have.is_empty() {
                // EXCL: a route to the same place that is not ours must not be overwritten.
                self.handle.route().add(msg).execute().await
            } else {
                // Ours with another gateway (the node's address changed): swap in place, so
                // there is no moment without a route.
                self.handle.route().add(msg).replace().execute().await
            };
            match result {
                Ok(()) if have.is_empty() => {
                    crate::info!("route added: {what}");
                    report.added += 1;
                }
                Ok(()) => {
                    let old: Vec<String> = have
                        .iter()
                        .map(|r| r.via.map(|v| v.to_string()).unwrap_or_else(|| "-".into()))
                        .collect();
                    crate::info!("route replaced: {what} (was via {})", old.join(", "));
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
                            "; {} is not on a network this node is attached to: routed-cni routes pod CIDRs straight to node addresses, so nodes must share a link (no overlay)",
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
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidrs: &[&str], ips: &[&str]) -> (String, NodeInfo) {
        (
            name.to_string(),
            NodeInfo {
                name: name.into(),
                pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
                internal_ips: ips.iter().map(|c| c.parse().unwrap()).collect(),
                problems: vec![],
            },
        )
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
        let p = plan(&nodes, "a");
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
        let p = plan(&nodes, "a");
        assert_eq!(routes(&p), vec!["10.244.4.0/24 via 100.64.0.4 (d)"]);
        assert_eq!(p.skipped.len(), 3, "{:?}", p.skipped);
        // Our own node unknown (not registered yet): the others are still routed.
        let p = plan(&nodes, "z");
        assert_eq!(p.routes.len(), 3, "{:?}", routes(&p));
    }

    #[test]
    fn route_messages_carry_our_protocol_and_gateway() {
        let m = route_message(
            "10.244.2.0/24".parse().unwrap(),
            "100.64.0.2".parse().unwrap(),
        );
        assert_eq!(u8::from(m.header.protocol), ROUTE_PROTOCOL);
        assert_eq!(m.header.destination_prefix_length, 24);
        let back = installed(m).unwrap();
        assert_eq!(back.dst, "10.244.2.0/24".parse::<IpNetwork>().unwrap());
        assert_eq!(back.via, Some("100.64.0.2".parse().unwrap()));
        let m6 = route_message("fd00:2::/64".parse().unwrap(), "fd10::2".parse().unwrap());
        assert_eq!(installed(m6).unwrap().via, Some("fd10::2".parse().unwrap()));
    }
}
