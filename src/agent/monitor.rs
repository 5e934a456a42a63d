//! Watches this node's own routing table (the kernel's route notifications, as `ip monitor
//! route` does) and tells the agent loop when a route that can change how other nodes are
//! reached appears or goes: a subnet added to or removed from a link, a default route
//! changed. crosssubnet's choice between a direct route and VXLAN is the kernel's own route
//! lookup, so it is re-made on such a change rather than at the next resync.
//!
//! Not every route counts: the agent's own (proto 77), the /32 and /128 host routes the CNI
//! plugin adds per pod, IPv6 link-local routes of new veths, and the local and broadcast
//! routes of the kernel's local table change all the time and never change a node's path.

use futures_util::StreamExt;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::MulticastGroup;
use std::sync::mpsc::Sender;

use super::routes::ROUTE_PROTOCOL;
use super::watch::Input;
use crate::dataplane::route_table;

const MAIN_TABLE: u32 = 254;

/// A route whose coming or going may change which nodes are on a link of ours; `None` for the
/// routes that never do (see the module comment), else a description for the log.
fn relevant(msg: &RouteMessage) -> Option<String> {
    let h = &msg.header;
    if u8::from(h.protocol) == ROUTE_PROTOCOL || route_table(msg) != MAIN_TABLE {
        return None;
    }
    let dst = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(d.to_string()),
        RouteAttribute::Destination(RouteAddress::Inet6(d)) => {
            // fe80::/10: every new veth's link-local route.
            if d.segments()[0] & 0xffc0 == 0xfe80 {
                None
            } else {
                Some(d.to_string())
            }
        }
        _ => None,
    });
    let host = match h.address_family {
        rtnetlink::packet_route::AddressFamily::Inet => 32,
        _ => 128,
    };
    match dst {
        _ if h.destination_prefix_length == 0 => Some("default".into()),
        None => None,
        Some(_) if h.destination_prefix_length == host => None,
        Some(d) => Some(format!("{d}/{}", h.destination_prefix_length)),
    }
}

/// A pod's host route (the /32 or /128 the plugin adds per pod): a pod came or went.
fn pod_route(msg: &RouteMessage) -> bool {
    let h = &msg.header;
    let host = match h.address_family {
        rtnetlink::packet_route::AddressFamily::Inet => 32,
        _ => 128,
    };
    u8::from(h.protocol) != ROUTE_PROTOCOL
        && route_table(msg) == MAIN_TABLE
        && h.destination_prefix_length == host
}

/// Runs on its own thread until the agent loop is gone. A failure to subscribe is logged and
/// the agent goes on with resync-time decisions only.
pub fn local_routes(tx: Sender<Input>) {
    let rt = match crate::dataplane::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            crate::error!(
                "route monitor: {}; paths are re-decided at each resync only",
                e.msg
            );
            return;
        }
    };
    rt.block_on(async move {
        let (conn, _handle, mut messages) = match rtnetlink::new_multicast_connection(&[
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
        ]) {
            Ok(c) => c,
            Err(e) => {
                crate::error!(
                    "route monitor: subscribe to route changes: {e}; paths are re-decided at each resync only"
                );
                return;
            }
        };
        tokio::spawn(conn);
        while let Some((msg, _)) = messages.next().await {
            let (verb, route) = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) => ("added", r),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(r)) => ("removed", r),
                _ => continue,
            };
            let input = match relevant(&route) {
                Some(what) => Input::LocalRoutes(format!("route {what} {verb}")),
                None if pod_route(&route) => Input::PodRoutes,
                None => continue,
            };
            if tx.send(input).is_err() {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::route::RouteProtocol;
    use rtnetlink::RouteMessageBuilder;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn only_routes_that_can_move_a_node_count() {
        let v4 = |dst: &str, len: u8| {
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dst.parse().unwrap(), len)
                .build()
        };
        assert_eq!(
            relevant(&v4("100.64.0.0", 24)).as_deref(),
            Some("100.64.0.0/24")
        );
        assert_eq!(relevant(&v4("0.0.0.0", 0)).as_deref(), Some("default"));
        // A pod's host route: not a path change, but a pod came or went.
        assert_eq!(relevant(&v4("10.244.1.7", 32)), None);
        assert!(pod_route(&v4("10.244.1.7", 32)));
        assert!(!pod_route(&v4("100.64.0.0", 24)));
        // Ours.
        let mut ours = v4("10.244.2.0", 24);
        ours.header.protocol = RouteProtocol::from(ROUTE_PROTOCOL);
        assert_eq!(relevant(&ours), None);
        let ll = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix("fe80::".parse().unwrap(), 64)
            .build();
        assert_eq!(relevant(&ll), None);
        let v6 = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix("fd00:64::".parse().unwrap(), 64)
            .build();
        assert_eq!(relevant(&v6).as_deref(), Some("fd00:64::/64"));
    }
}
