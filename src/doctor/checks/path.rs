//! `--to` a destination off this node: which way the node sends it. Either a direct route
//! (the agent's `<podCIDR> via <node address>`, or anyone's gateway), or the VXLAN device with
//! the three things the agent keeps per remote node — the permanent neighbour entry for the
//! node's tunnel address, the FDB entry for its VTEP MAC (the outer destination), and the
//! node's route to that address (the underlay) — and whether the pod's MTU fits that path.
//! Kernel state only: doctor never talks to the API server, so it reports what each entry
//! says and where the chain breaks, not what the Node objects would want.

use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::route::RouteType;
use serde_json::{json, Value};
use std::net::IpAddr;

use super::{describe, lookup_json, neighbour_valid, state_name, Dest, Walk};
use crate::agent::routes::ROUTE_PROTOCOL;
use crate::dataplane::owned::{self, HASH_CHARS};
use crate::dataplane::vxlan::{overhead, VxlanDevice, VXLAN_DEVICE};
use crate::dataplane::{self, format_mac, MatchedRoute, RouteLookup, RouteQuery};
use crate::doctor::report::Step;

const ID: &str = "path-to";
const TITLE: &str = "path to";
const MTU_ID: &str = "path-mtu";
const MTU_TITLE: &str = "path MTU";

/// What the encapsulated packets leave by, and the most a pod packet can be to fit in them.
struct Carrier {
    /// The link the packets to the destination leave by (the uplink, or the VXLAN device).
    name: String,
    mtu: Option<u32>,
    /// VXLAN only: the underlay link, its MTU and the bytes the encapsulation adds.
    underlay: Option<(String, Option<u32>, u32)>,
}

/// `ip route`'s name for a route protocol.
fn protocol_name(p: u8) -> String {
    match p {
        2 => "kernel".into(),
        3 => "boot".into(),
        4 => "static".into(),
        9 => "ra".into(),
        12 => "bird".into(),
        16 => "dhcp".into(),
        186 => "bgp".into(),
        p => p.to_string(),
    }
}

fn route_text(m: &MatchedRoute) -> String {
    let dst = if m.prefix == 0 {
        "default".to_string()
    } else {
        format!("{}/{}", m.dst, m.prefix)
    };
    let whose = if m.protocol == ROUTE_PROTOCOL {
        "routed-cni agent's"
    } else {
        "not routed-cni's"
    };
    format!("{dst} proto {} ({whose})", protocol_name(m.protocol))
}

fn route_json(m: &Option<MatchedRoute>) -> Value {
    match m {
        Some(m) => json!({
            "dst": format!("{}/{}", m.dst, m.prefix),
            "protocol": m.protocol,
            "ours": m.protocol == ROUTE_PROTOCOL,
            "table": m.table,
            "gateway": m.gateway,
            "oif": m.oif,
            "onlink": m.onlink,
        }),
        None => Value::Null,
    }
}

impl Walk<'_> {
    fn link_at(&self, index: u32) -> Option<LinkMessage> {
        self.block(self.node.net.link_by_index(index))
            .ok()
            .flatten()
    }

    /// The path step and the MTU step for `d`, from the node's lookup for the pod's packet
    /// (`node-route-to`'s answer; `None` when it failed, which that step reports).
    pub(super) fn path_to(&mut self, d: Dest, node: Option<&RouteLookup>) {
        let dst = d.ip;
        let skip = |w: &mut Self, why: String| {
            w.steps.push(Step::skip(ID, TITLE, why.clone()));
            w.steps.push(Step::skip(MTU_ID, MTU_TITLE, why));
        };
        let (Some(l), Some(veth)) = (node, self.host_index()) else {
            return skip(
                self,
                "no route from the node to follow (node route to)".into(),
            );
        };
        if l.kind == RouteType::Local {
            return skip(self, format!("{dst} is the node's own address"));
        }
        let Some(oif) = l.oif else {
            return skip(
                self,
                format!(
                    "the node sends {dst} nowhere: {}",
                    describe(l, self.node.links)
                ),
            );
        };
        let out = self.link_at(oif);
        // Another pod of this node sits behind a host veth with the same prefix as this one's.
        let veth_prefix = self
            .veth()
            .len()
            .checked_sub(HASH_CHARS)
            .map(|n| &self.veth()[..n]);
        let to_pod = out
            .as_ref()
            .zip(veth_prefix)
            .is_some_and(|(link, prefix)| owned::is_our_veth(link, prefix));
        if self.t.pool.contains(dst) || to_pod {
            return skip(
                self,
                format!("{dst} is a pod on this node: the steps above cover it"),
            );
        }
        // The same lookup again, asking for the route it matched (who made it).
        let q = RouteQuery {
            dst: Some(dst),
            src: Some(self.t.ip),
            iif: Some(veth),
            tcp_dport: d.port,
        };
        let matched = self
            .block(self.node.net.route_match(q))
            .ok()
            .and_then(Result::ok);
        let name = self.host_name(Some(oif));
        let dev = out.as_ref().and_then(VxlanDevice::from_link);
        let (step, carrier) = match dev {
            Some(dev) => self.vxlan_path(dst, l, &matched, &name, &dev),
            None => {
                let carrier = Carrier {
                    name: name.clone(),
                    mtu: out.as_ref().and_then(dataplane::link_mtu),
                    underlay: None,
                };
                (self.direct_path(dst, l, &matched, &name), carrier)
            }
        };
        self.steps.push(step);
        let mtu = self.path_mtu(&carrier);
        self.steps.push(mtu);
    }

    fn direct_path(
        &self,
        dst: IpAddr,
        l: &RouteLookup,
        matched: &Option<MatchedRoute>,
        name: &str,
    ) -> Step {
        let ours = matched
            .as_ref()
            .is_some_and(|m| m.protocol == ROUTE_PROTOCOL);
        let route = matched
            .as_ref()
            .map(|m| format!(", route {}", route_text(m)))
            .unwrap_or_default();
        let saw = match l.gateway {
            // The agent's direct routes go to the other node's InternalIP.
            Some(g) if ours => format!("direct to node address {g} via {name}{route}"),
            Some(g) => format!("direct to {g} via {name}{route}"),
            None => format!("direct on {name}: {dst} is on the link{route}"),
        };
        let details = json!({
            "path": "direct",
            "dev": name,
            "gateway": l.gateway,
            "route": route_json(matched),
        });
        // The kernel removes the IPv4 routes through a device that goes down, so a remote
        // pod the agent routed through the tunnel falls through to whatever route is left.
        let tunnel = self
            .block(self.node.net.vxlan_device(VXLAN_DEVICE))
            .ok()
            .flatten();
        if let (false, Some((_, Some(dev)))) = (ours, tunnel) {
            if !dev.up {
                return Step::warn(ID, TITLE, format!("{saw}; {VXLAN_DEVICE} is DOWN"))
                    .why(format!(
                        "the kernel drops the routes through a device that goes down: if {dst} is a pod on a node reached through VXLAN, its route is gone with it (the agent restores the routes at its next resync once the device is up)"
                    ))
                    .fix(format!("ip link set {VXLAN_DEVICE} up"))
                    .details(details);
            }
        }
        Step::ok(ID, TITLE, saw).details(details)
    }

    /// The VXLAN chain: device, neighbour entry for the route's gateway, FDB entry for its
    /// MAC, the node's route to the FDB entry's destination. Every missing link is a failure.
    fn vxlan_path(
        &self,
        dst: IpAddr,
        l: &RouteLookup,
        matched: &Option<MatchedRoute>,
        name: &str,
        dev: &VxlanDevice,
    ) -> (Step, Carrier) {
        let net = self.node.net;
        let mut saw = vec![format!(
            "VXLAN via {} dev {name} (VNI {}, port {}, local {}{}{}){}",
            l.gateway
                .map(|g| g.to_string())
                .unwrap_or_else(|| "-".into()),
            dev.vni.map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
            dev.port
                .map(|v| v.to_string())
                .unwrap_or_else(|| "?".into()),
            dev.local
                .map(|v| v.to_string())
                .unwrap_or_else(|| "any".into()),
            if dev.learning == Some(true) {
                ", learning"
            } else {
                ""
            },
            if name == VXLAN_DEVICE {
                ""
            } else {
                ", not routed-cni's device"
            },
            matched
                .as_ref()
                .map(|m| format!(", route {}", route_text(m)))
                .unwrap_or_default()
        )];
        let mut whys: Vec<String> = Vec::new();
        let mut fixes: Vec<String> = Vec::new();
        let resync = "the agent writes it at every resync: is routed-cni agent running?";
        if !dev.up {
            saw.push(format!("{name} is DOWN"));
            whys.push(format!(
                "a down device sends nothing: every packet to {dst} is dropped"
            ));
            fixes.push(format!("ip link set {name} up"));
        }
        // The route's gateway is the remote node's tunnel address; without one the kernel
        // resolves the destination itself on the device.
        let next = l.gateway.unwrap_or(dst);
        let neighbour = self
            .block(net.tunnel_neighbours(dev.index))
            .ok()
            .and_then(|ns| ns.into_iter().find(|n| n.ip == next));
        let mac = match &neighbour {
            None => {
                saw.push(format!("no neighbour entry for {next} on {name}"));
                whys.push(format!(
                    "the kernel has no MAC for {next}: with learning off its neighbour requests reach no one and every packet to {dst} is dropped; {resync} (`ip neigh show dev {name}`)"
                ));
                None
            }
            Some(n) if n.mac.is_empty() || !neighbour_valid(n.state) => {
                saw.push(format!(
                    "neighbour {next} on {name} is {} without a usable MAC",
                    state_name(n.state)
                ));
                whys.push(format!(
                    "the kernel cannot address frames to {next}: every packet to {dst} is dropped; {resync} (`ip neigh show dev {name}`)"
                ));
                None
            }
            Some(n) => {
                saw.push(format!(
                    "neighbour {next} -> {} ({})",
                    format_mac(&n.mac),
                    state_name(n.state)
                ));
                Some(n.mac.clone())
            }
        };
        let fdb = mac.as_ref().and_then(|mac| {
            self.block(net.fdb_entries(dev.index))
                .ok()
                .and_then(|es| es.into_iter().find(|e| e.mac == *mac))
        });
        let outer = match (&mac, &fdb) {
            (None, _) => None,
            (Some(mac), None) => {
                let mac = format_mac(mac);
                saw.push(format!("no FDB entry for {mac} on {name}"));
                whys.push(format!(
                    "the device does not know which node address to send frames for {mac} to (no learning, no flooding): every packet to {dst} is dropped; {resync} (`bridge fdb show dev {name}`)"
                ));
                None
            }
            (Some(mac), Some(e)) => match e.dst {
                None => {
                    let mac = format_mac(mac);
                    saw.push(format!("FDB entry {mac} on {name} has no destination"));
                    whys.push(format!(
                        "frames for {mac} are sent nowhere; {resync} (`bridge fdb show dev {name}`)"
                    ));
                    None
                }
                Some(u) => {
                    saw.push(format!("FDB {} -> node address {u}", format_mac(mac)));
                    Some(u)
                }
            },
        };
        // The outer packet is this node's own: a plain lookup from here.
        let underlay = outer.map(|u| {
            let q = RouteQuery {
                dst: Some(u),
                ..Default::default()
            };
            (u, self.block(net.route_get(q)).unwrap_or(Err(0)))
        });
        let mut carrier = Carrier {
            name: name.to_string(),
            mtu: dev.mtu,
            underlay: None,
        };
        let ovh = overhead(outer.or(dev.local).unwrap_or(IpAddr::from([0u8; 4])));
        match &underlay {
            None => {}
            Some((u, Err(code))) => {
                saw.push(format!(
                    "underlay: no route to {u}: {}",
                    self.refused(*code)
                ));
                whys.push(format!(
                    "the encapsulated packets to node address {u} cannot leave this node: look at `ip route get {u}`"
                ));
            }
            Some((u, Ok(ul))) if ul.kind == RouteType::Local => {
                saw.push(format!("underlay: {u} is this node's own address"));
                whys.push(format!("the FDB entry sends the frames back to this node, not to the node that has {dst}"));
            }
            Some((u, Ok(ul))) if ul.oif == Some(dev.index) => {
                saw.push(format!("underlay: {u} is routed through {name} itself"));
                whys.push(format!(
                    "the kernel drops encapsulated packets that would be encapsulated again: the route to node address {u} must leave by the uplink"
                ));
            }
            Some((u, Ok(ul))) => {
                let uplink = self.host_name(ul.oif);
                saw.push(match ul.gateway {
                    Some(g) => format!("underlay: {u} via router {g} dev {uplink}"),
                    None => format!("underlay: {u} on-link on {uplink}"),
                });
                let mtu = ul
                    .oif
                    .and_then(|i| self.link_at(i))
                    .as_ref()
                    .and_then(dataplane::link_mtu);
                carrier.underlay = Some((uplink, mtu, ovh));
            }
        }
        let details = json!({
            "path": "vxlan",
            "route": route_json(matched),
            "device": {
                "name": name, "index": dev.index, "vni": dev.vni, "port": dev.port,
                "local": dev.local, "learning": dev.learning, "up": dev.up, "mtu": dev.mtu,
                "mac": dev.mac.as_deref().map(format_mac),
            },
            "neighbour": neighbour.as_ref().map(|n| json!({
                "ip": n.ip, "mac": format_mac(&n.mac), "state": state_name(n.state),
            })),
            "fdb": fdb.as_ref().map(|e| json!({"mac": format_mac(&e.mac), "dst": e.dst})),
            "underlay": underlay.as_ref().map(|(u, r)| {
                let mut v = lookup_json(r, *u);
                v["address"] = json!(u);
                if let Ok(ul) = r {
                    v["dev"] = json!(self.host_name(ul.oif));
                }
                v
            }),
        });
        let saw = saw.join("; ");
        let mut step = if whys.is_empty() {
            Step::ok(ID, TITLE, saw)
        } else {
            Step::fail(ID, TITLE, saw).why(whys.join(". "))
        };
        for f in fixes {
            step = step.fix(f);
        }
        (step.details(details), carrier)
    }

    /// The pod's MTU against what the path carries: the outgoing link's MTU, and through VXLAN
    /// also the underlay's less the headers the encapsulation adds.
    fn path_mtu(&self, c: &Carrier) -> Step {
        let Some(pod_mtu) = self.pod_link.as_ref().and_then(dataplane::link_mtu) else {
            return Step::skip(
                MTU_ID,
                MTU_TITLE,
                format!("no {} in the pod", self.ifname()),
            );
        };
        let ifname = self.ifname();
        let mut parts = vec![format!("pod {ifname} MTU {pod_mtu}")];
        let mut limits: Vec<(u32, String)> = Vec::new();
        if let Some(m) = c.mtu {
            parts.push(format!("{} MTU {m}", c.name));
            limits.push((m, c.name.clone()));
        }
        let mut inner_room = None;
        if let Some((uplink, Some(m), ovh)) = &c.underlay {
            let room = m.saturating_sub(*ovh);
            parts.push(format!("{uplink} MTU {m} - {ovh} VXLAN headers = {room}"));
            limits.push((room, format!("{uplink} once encapsulated")));
            inner_room = Some(room);
        }
        let details = json!({
            "podMtu": pod_mtu,
            "dev": c.name,
            "devMtu": c.mtu,
            "underlay": c.underlay.as_ref().map(|(n, m, o)| json!({"dev": n, "mtu": m, "overhead": o})),
        });
        let Some((fits, by)) = limits.iter().min_by_key(|(m, _)| *m).cloned() else {
            return Step::warn(
                MTU_ID,
                MTU_TITLE,
                format!("{}; the path's MTU is unknown", parts.join("; ")),
            )
            .details(details);
        };
        let saw = parts.join("; ");
        let details = {
            let mut d = details;
            d["fits"] = json!(fits);
            d
        };
        if pod_mtu > fits {
            return Step::warn(
                MTU_ID,
                MTU_TITLE,
                format!("{saw}: the pod's full-size packets ({pod_mtu}) are larger than the {fits} that fit {by}"),
            )
            .why(format!(
                "small packets pass, large ones do not: the node drops a packet over {fits} bytes and answers ICMP \"fragmentation needed\" (DF set, TCP) or fragments it; where that ICMP is filtered, connections hang after the handshake. Lasting fix: the conflist's \"mtu\" (the agent's --mtu) at most {fits}, then recreate the pods on this node (ADD sets the MTU)"
            ))
            .fix(crate::netns::in_pod(self.ns(), &format!("link set {ifname} mtu {fits}")))
            .fix(format!("ip link set {} mtu {fits}", self.veth()))
            .details(details);
        }
        if let (Some(room), Some(dev_mtu)) = (inner_room, c.mtu) {
            if dev_mtu > room {
                // The pod fits the device, but the device does not fit the underlay.
                return Step::warn(
                    MTU_ID,
                    MTU_TITLE,
                    format!("{saw}: {} accepts {dev_mtu}-byte packets, but only {room} fit the underlay once encapsulated", c.name),
                )
                .why("the encapsulated packets of large pod packets are fragmented or dropped between the nodes")
                .fix(format!("ip link set {} mtu {room}", c.name))
                .details(details);
            }
        }
        Step::ok(MTU_ID, MTU_TITLE, format!("{saw}: the pod's packets fit")).details(details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_say_whose_they_are() {
        let m = MatchedRoute {
            dst: "10.244.3.0".parse().unwrap(),
            prefix: 24,
            protocol: ROUTE_PROTOCOL,
            table: 254,
            gateway: Some("10.244.3.0".parse().unwrap()),
            oif: Some(7),
            onlink: true,
        };
        assert_eq!(
            route_text(&m),
            "10.244.3.0/24 proto 77 (routed-cni agent's)"
        );
        assert_eq!(route_json(&Some(m.clone()))["ours"], true);
        let default = MatchedRoute {
            dst: "0.0.0.0".parse().unwrap(),
            prefix: 0,
            protocol: 3,
            ..m
        };
        assert_eq!(
            route_text(&default),
            "default proto boot (not routed-cni's)"
        );
        assert_eq!(protocol_name(80), "80");
    }
}
