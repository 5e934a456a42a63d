//! The VXLAN side of the agent: which mode the node runs in, the device it owns
//! (`rcni.vxlan`, dataplane/vxlan.rs) and, per remote node reached through it, the permanent
//! neighbour and FDB entries. Like the routes, everything is made exactly what the plan says
//! at each sync: missing entries come back, entries of nodes that left or moved to a direct
//! route go. The device is ours by name, so every entry on it is ours too.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::str::FromStr;

use super::routes::{VxlanPeer, ROUTE_PROTOCOL};
use crate::dataplane::vxlan::{
    overhead, tunnel_address, vtep_mac, FdbEntry, TunnelNeighbour, VxlanSpec, DEFAULT_VXLAN_PORT,
    DEFAULT_VXLAN_VNI, VXLAN_DEVICE,
};
use crate::dataplane::{format_mac, Netlink, RouteQuery, DEFAULT_MTU};
use ipnetwork::IpNetwork;
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::RouteType;

/// How pod traffic reaches other nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encapsulation {
    /// Direct routes only: every node must share a link (the behaviour before VXLAN).
    Never,
    /// Every other node through VXLAN.
    Vxlan,
    /// Direct where the kernel reaches the node without a gateway, VXLAN elsewhere.
    #[default]
    CrossSubnet,
}

impl FromStr for Encapsulation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "never" => Ok(Encapsulation::Never),
            "vxlan" | "always" => Ok(Encapsulation::Vxlan),
            "crosssubnet" => Ok(Encapsulation::CrossSubnet),
            _ => Err(format!(
                "{s:?} is not an encapsulation: say never, vxlan or crosssubnet"
            )),
        }
    }
}

impl std::fmt::Display for Encapsulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encapsulation::Never => "never",
            Encapsulation::Vxlan => "vxlan",
            Encapsulation::CrossSubnet => "crosssubnet",
        })
    }
}

/// The agent's VXLAN settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelOptions {
    pub mode: Encapsulation,
    pub vni: u32,
    pub port: u16,
}

impl Default for TunnelOptions {
    fn default() -> Self {
        TunnelOptions {
            mode: Encapsulation::default(),
            vni: DEFAULT_VXLAN_VNI,
            port: DEFAULT_VXLAN_PORT,
        }
    }
}

/// This node's side of the tunnel, from its Node object and its links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// The outer source: the first IPv4 InternalIP, else the first IPv6 one.
    pub address: IpAddr,
    pub spec: VxlanSpec,
    /// Our tunnel addresses (one per podCIDR), put on the device.
    pub tunnels: Vec<IpAddr>,
    /// The MTU of the link holding `address`, or why it is unknown.
    pub uplink_mtu: Result<u32, String>,
}

/// The outer source address among a node's InternalIPs.
pub fn underlay_address(internal_ips: &[IpAddr]) -> Option<IpAddr> {
    internal_ips
        .iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| internal_ips.first())
        .copied()
}

/// The pods' MTU when encapsulation may be used: the uplink's less the VXLAN headers, so a
/// full-size pod packet still fits the uplink once encapsulated.
pub fn pod_mtu(uplink_mtu: u32, local: IpAddr) -> u32 {
    uplink_mtu.saturating_sub(overhead(local))
}

/// What a tunnel sync did and could not do.
#[derive(Debug, Default)]
pub struct TunnelReport {
    pub changes: Vec<String>,
    pub failures: Vec<String>,
}

impl TunnelReport {
    fn changed(&mut self, line: String) {
        if self.changes.len() < super::LISTED_CHANGES {
            crate::info!("{line}");
        }
        self.changes.push(line);
    }
    fn failed(&mut self, line: String) {
        crate::error!("{line}");
        self.failures.push(line);
    }
}

pub struct TunnelSync {
    nl: Netlink,
    pub opts: TunnelOptions,
    /// The device's neighbour and FDB entries as the last sync left them, when nothing failed:
    /// a sync for a node event starts from these instead of dumping every entry again (two
    /// per node: 10,000 at 5,000 nodes); a fresh sync (full passes, this node's own routes
    /// changed) dumps them.
    known: Option<Entries>,
}

/// A device's entries, as dumped or as our own changes made them.
struct Entries {
    index: u32,
    neighbours: Vec<TunnelNeighbour>,
    fdb: Vec<FdbEntry>,
}

impl TunnelSync {
    pub fn new(nl: Netlink, opts: TunnelOptions) -> TunnelSync {
        TunnelSync {
            nl,
            opts,
            known: None,
        }
    }

    /// The entries to compare with: what the last sync left, or (`fresh`, or unknown, or
    /// another device) a dump.
    async fn entries(&mut self, index: u32, fresh: bool) -> Result<Entries, String> {
        match self.known.take() {
            Some(k) if !fresh && k.index == index => Ok(k),
            _ => Ok(Entries {
                index,
                neighbours: self.nl.tunnel_neighbours(index).await.map_err(|e| e.msg)?,
                fdb: self.nl.fdb_entries(index).await.map_err(|e| e.msg)?,
            }),
        }
    }

    /// This node's side, or `None` in `never` mode or without an InternalIP of its own.
    pub async fn local(
        &self,
        node_name: &str,
        internal_ips: &[IpAddr],
        pod_cidrs: &[IpNetwork],
    ) -> Option<Local> {
        if self.opts.mode == Encapsulation::Never {
            return None;
        }
        let address = underlay_address(internal_ips)?;
        let uplink_mtu = match self.nl.link_with_address(address).await {
            Ok(Some(link)) => crate::dataplane::link_mtu(&link)
                .ok_or_else(|| format!("the link holding {address} reports no MTU")),
            Ok(None) => Err(format!(
                "no link on this node holds its InternalIP {address}"
            )),
            Err(e) => Err(e.msg),
        };
        let mtu = pod_mtu(*uplink_mtu.as_ref().unwrap_or(&DEFAULT_MTU), address);
        Some(Local {
            address,
            spec: VxlanSpec {
                vni: self.opts.vni,
                port: self.opts.port,
                local: address,
                mac: vtep_mac(node_name),
                mtu,
            },
            tunnels: pod_cidrs.iter().map(tunnel_address).collect(),
            uplink_mtu,
        })
    }

    /// Crosssubnet's test: the addresses among `ips` that the kernel reaches without a
    /// gateway, on a link other than our device (kindnet's and flannel's DirectRouting test).
    pub async fn on_link(&self, ips: impl IntoIterator<Item = IpAddr>) -> BTreeSet<IpAddr> {
        let device = match self.nl.link_by_name(VXLAN_DEVICE).await {
            Ok(l) => l.map(|l| l.header.index),
            Err(_) => None,
        };
        let mut out = BTreeSet::new();
        for ip in ips {
            let q = RouteQuery {
                dst: Some(ip),
                ..Default::default()
            };
            if let Ok(Ok(l)) = self.nl.route_get(q).await {
                if l.kind == RouteType::Unicast && l.gateway.is_none() && l.oif != device {
                    out.insert(ip);
                }
            }
        }
        out
    }

    /// Makes the device what `local` says (re-creating it when its VNI, port, local address
    /// or MAC differ; fixing MTU and state in place) with exactly our tunnel addresses, and
    /// returns its index; in `never` mode removes it.
    pub async fn device(&self, local: Option<&Local>, report: &mut TunnelReport) -> Option<u32> {
        let found = match self.nl.vxlan_device(VXLAN_DEVICE).await {
            Ok(f) => f,
            Err(e) => {
                report.failed(format!("look up {VXLAN_DEVICE}: {}", e.msg));
                return None;
            }
        };
        let Some(local) = local else {
            // Only `never` removes the device. Without an address of our own (a Node object
            // not yet complete, or briefly missing) the device stays as it is, so nodes that
            // tunnel to this one keep reaching its pods.
            if let (Encapsulation::Never, Some((link, _))) = (self.opts.mode, found) {
                match self
                    .nl
                    .delete_link_index(link.header.index, VXLAN_DEVICE)
                    .await
                {
                    Ok(()) => {
                        report.changed(format!("{VXLAN_DEVICE} removed (encapsulation never)"))
                    }
                    Err(e) => report.failed(e.msg),
                }
            }
            return None;
        };
        let spec = &local.spec;
        let index = match found {
            Some((link, Some(dev))) if dev.mismatch(spec).is_empty() => {
                if dev.mtu != Some(spec.mtu) {
                    match self.nl.set_mtu(dev.index, VXLAN_DEVICE, spec.mtu).await {
                        Ok(()) => report.changed(format!(
                            "{VXLAN_DEVICE}: MTU {} -> {}",
                            dev.mtu.unwrap_or(0),
                            spec.mtu
                        )),
                        Err(e) => report.failed(e.msg),
                    }
                }
                if !dev.up {
                    match self.nl.set_up(dev.index, VXLAN_DEVICE).await {
                        Ok(()) => report.changed(format!("{VXLAN_DEVICE} was down: set up")),
                        Err(e) => report.failed(e.msg),
                    }
                }
                link.header.index
            }
            other => {
                if let Some((link, dev)) = other {
                    let why = match dev {
                        Some(d) => d.mismatch(spec).join(", "),
                        None => "not a VXLAN device".into(),
                    };
                    if let Err(e) = self
                        .nl
                        .delete_link_index(link.header.index, VXLAN_DEVICE)
                        .await
                    {
                        report.failed(format!("{VXLAN_DEVICE} is wrong ({why}): {}", e.msg));
                        return None;
                    }
                    report.changed(format!("{VXLAN_DEVICE} re-created: it had {why}"));
                }
                match self.nl.create_vxlan(VXLAN_DEVICE, spec).await {
                    Ok(i) => {
                        report.changed(format!(
                            "{VXLAN_DEVICE} created: VNI {}, port {}, {}, MAC {}, MTU {}, no learning",
                            spec.vni,
                            spec.port,
                            match spec.bound_local() {
                                Some(l) => format!("local {l}"),
                                None => format!("IPv4 underlay ({} and any other address of the node)", spec.local),
                            },
                            format_mac(&spec.mac),
                            spec.mtu
                        ));
                        i
                    }
                    Err(e) => {
                        report.failed(e.msg);
                        return None;
                    }
                }
            }
        };
        self.addresses(index, &local.tunnels, report).await;
        Some(index)
    }

    /// Exactly our tunnel addresses on the device (/32, /128); IPv6 link-local ones stay.
    async fn addresses(&self, index: u32, want: &[IpAddr], report: &mut TunnelReport) {
        let mut have = Vec::new();
        for family in [crate::dataplane::Family::V4, crate::dataplane::Family::V6] {
            match self.nl.addresses_in(index, family).await {
                Ok(a) => have.extend(a.into_iter().map(|(ip, prefix, _)| (ip, prefix))),
                Err(e) => report.failed(e.msg),
            }
        }
        for (ip, prefix) in &have {
            let link_local = matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
            let wanted = want.contains(ip) && *prefix == crate::dataplane::host_prefix(*ip);
            if link_local || wanted {
                continue;
            }
            match self.nl.delete_address(index, *ip).await {
                Ok(()) => report.changed(format!(
                    "{VXLAN_DEVICE}: address {ip}/{prefix} removed (no longer one of this node's tunnel addresses)"
                )),
                Err(e) => report.failed(e.msg),
            }
        }
        for ip in want {
            let prefix = crate::dataplane::host_prefix(*ip);
            if have.contains(&(*ip, prefix)) {
                continue;
            }
            match self.nl.add_address(index, *ip, prefix).await {
                Ok(()) => report.changed(format!(
                    "{VXLAN_DEVICE}: tunnel address {ip}/{prefix} added"
                )),
                Err(e) => report.failed(e.msg),
            }
        }
    }

    /// Adds the FDB and neighbour entries `peers` need that the device lacks (changed ones
    /// are replaced in place). Done before the routes that use them. `fresh`: compare with a
    /// dump of the device rather than with what the last sync left.
    pub async fn add_entries(
        &mut self,
        index: u32,
        peers: &BTreeMap<String, VxlanPeer>,
        fresh: bool,
        report: &mut TunnelReport,
    ) {
        let mut have = match self.entries(index, fresh).await {
            Ok(e) => e,
            Err(e) => return report.failed(e),
        };
        // Looked up, not scanned: with thousands of peers a scan per peer was most of a sync.
        let fdb: HashSet<(Vec<u8>, IpAddr)> = have
            .fdb
            .iter()
            .filter_map(|f| Some((f.mac.clone(), f.dst?)))
            .collect();
        let neighbours: HashSet<(IpAddr, Vec<u8>)> = have
            .neighbours
            .iter()
            .filter(|n| n.state == NeighbourState::Permanent)
            .map(|n| (n.ip, n.mac.clone()))
            .collect();
        let failed_before = report.failures.len();
        for peer in peers.values() {
            if !fdb.contains(&(peer.mac.to_vec(), peer.underlay)) {
                match self.nl.add_fdb(index, &peer.mac, peer.underlay).await {
                    Ok(entry) => {
                        report.changed(format!(
                            "FDB {} dst {} added (node {})",
                            format_mac(&peer.mac),
                            peer.underlay,
                            peer.node
                        ));
                        // A replace: the MAC's entry with another destination is gone.
                        have.fdb.retain(|f| f.mac[..] != peer.mac[..]);
                        have.fdb.push(entry);
                    }
                    Err(e) => report.failed(format!("node {}: {}", peer.node, e.msg)),
                }
            }
            for ip in &peer.tunnels {
                if neighbours.contains(&(*ip, peer.mac.to_vec())) {
                    continue;
                }
                match self
                    .nl
                    .add_tunnel_neighbour(index, *ip, &peer.mac, ROUTE_PROTOCOL)
                    .await
                {
                    Ok(entry) => {
                        report.changed(format!(
                            "neighbour {ip} lladdr {} added (node {})",
                            format_mac(&peer.mac),
                            peer.node
                        ));
                        have.neighbours.retain(|n| n.ip != *ip);
                        have.neighbours.push(entry);
                    }
                    Err(e) => report.failed(format!("node {}: {}", peer.node, e.msg)),
                }
            }
        }
        // After a failure the device may hold anything: the next sync looks again.
        if report.failures.len() == failed_before {
            self.known = Some(have);
        }
    }

    /// Removes the neighbour and FDB entries on the device that no peer in `peers` needs
    /// (nodes that left, moved to a direct route, or changed address). Done after the routes
    /// that used them are gone or replaced; compares with what `add_entries` left (a dump when
    /// that failed).
    pub async fn remove_stale(
        &mut self,
        index: u32,
        peers: &BTreeMap<String, VxlanPeer>,
        report: &mut TunnelReport,
    ) {
        let mut have = match self.entries(index, false).await {
            Ok(e) => e,
            Err(e) => return report.failed(e),
        };
        let wanted_neigh: BTreeMap<IpAddr, &VxlanPeer> = peers
            .values()
            .flat_map(|p| p.tunnels.iter().map(move |ip| (*ip, p)))
            .collect();
        let wanted_fdb: HashSet<(&[u8], IpAddr)> =
            peers.values().map(|p| (&p.mac[..], p.underlay)).collect();
        let failed_before = report.failures.len();
        let mut kept = Vec::with_capacity(have.neighbours.len());
        for n in std::mem::take(&mut have.neighbours) {
            // Only what we write: permanent entries. The kernel's own (multicast, NOARP)
            // entries on the device are left alone.
            let wanted = wanted_neigh
                .get(&n.ip)
                .is_some_and(|p| p.mac[..] == n.mac[..]);
            if n.state != NeighbourState::Permanent || wanted {
                kept.push(n);
                continue;
            }
            let what = format!("neighbour {} lladdr {}", n.ip, format_mac(&n.mac));
            match self.nl.delete_neighbour(&n.msg, &what).await {
                Ok(()) => report.changed(format!("{what} removed (no node uses it)")),
                Err(e) => {
                    report.failed(e.msg);
                    kept.push(n);
                }
            }
        }
        have.neighbours = kept;
        let mut kept = Vec::with_capacity(have.fdb.len());
        for f in std::mem::take(&mut have.fdb) {
            if f.dst.is_some_and(|d| wanted_fdb.contains(&(&f.mac[..], d))) {
                kept.push(f);
                continue;
            }
            let dst = f.dst.map(|d| d.to_string()).unwrap_or_else(|| "-".into());
            let what = format!("FDB {} dst {dst}", format_mac(&f.mac));
            match self.nl.delete_neighbour(&f.msg, &what).await {
                Ok(()) => report.changed(format!("{what} removed (no node uses it)")),
                Err(e) => {
                    report.failed(e.msg);
                    kept.push(f);
                }
            }
        }
        have.fdb = kept;
        if report.failures.len() == failed_before {
            self.known = Some(have);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for m in ["never", "vxlan", "crosssubnet"] {
            assert_eq!(m.parse::<Encapsulation>().unwrap().to_string(), m);
        }
        assert_eq!(
            "CrossSubnet".parse::<Encapsulation>().unwrap(),
            Encapsulation::CrossSubnet
        );
        assert!("ipip"
            .parse::<Encapsulation>()
            .unwrap_err()
            .contains("never, vxlan or crosssubnet"));
        assert_eq!(Encapsulation::default(), Encapsulation::CrossSubnet);
    }

    #[test]
    fn the_underlay_is_ipv4_when_the_node_has_it() {
        let ips = |v: &[&str]| {
            v.iter()
                .map(|s| s.parse().unwrap())
                .collect::<Vec<IpAddr>>()
        };
        assert_eq!(
            underlay_address(&ips(&["fd10::1", "100.64.0.1"])),
            Some("100.64.0.1".parse().unwrap())
        );
        assert_eq!(
            underlay_address(&ips(&["fd10::1"])),
            Some("fd10::1".parse().unwrap())
        );
        assert_eq!(underlay_address(&[]), None);
        assert_eq!(pod_mtu(1500, "100.64.0.1".parse().unwrap()), 1450);
        assert_eq!(pod_mtu(9001, "fd10::1".parse().unwrap()), 8931);
    }
}
