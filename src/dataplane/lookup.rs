//! The kernel's route lookup for one packet (RTM_GETROUTE, `ip route get`): doctor's way of
//! asking what the kernel actually does with a pod's traffic.

use futures_util::TryStreamExt;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteFlags, RouteType};
use rtnetlink::RouteMessageBuilder;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::netlink::{errno, nl_err};
use super::{host_prefix, route_oif, route_table, Netlink};
use crate::cni::error::{CniError, Result};

/// What the kernel's route lookup for one packet (RTM_GETROUTE, `ip route get`) answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteLookup {
    pub kind: RouteType,
    pub table: u32,
    pub oif: Option<u32>,
    pub gateway: Option<IpAddr>,
    pub prefsrc: Option<IpAddr>,
}

/// The packet a route lookup is made for, IPv4 or IPv6 (`dst` and `src` of one family): with
/// `iif` set the kernel treats it as arriving on that link (the forwarding path, with its
/// `forwarding` and `rp_filter` checks for IPv4), otherwise as sent by this namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteQuery {
    /// `None`: the unspecified address of `src`'s family (IPv4 without `src`).
    pub dst: Option<IpAddr>,
    pub src: Option<IpAddr>,
    pub iif: Option<u32>,
    /// A TCP destination port, for policy rules that match on it.
    pub tcp_dport: Option<u16>,
}

impl Netlink {
    /// Asks the kernel which route a packet takes. `Ok(Err(errno))` is the kernel's refusal
    /// (ENETUNREACH: no route; for IPv4 also EHOSTUNREACH: forwarding is off on `iif`, and
    /// EINVAL/EXDEV: the source fails the reverse-path check); `Err` is a failure to ask.
    /// IPv6 lookups never look at forwarding: the kernel drops later, in ip6_forward, when
    /// `net.ipv6.conf.all.forwarding` is 0.
    pub async fn route_get(&self, q: RouteQuery) -> Result<std::result::Result<RouteLookup, i32>> {
        let dst = q.dst.unwrap_or(match q.src {
            Some(IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        });
        let bad = |e| CniError::dataplane(format!("route get {dst}: {e}"));
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst, host_prefix(dst))
            .map_err(bad)?;
        if let Some(src) = q.src {
            b = b.source_prefix(src, host_prefix(src)).map_err(bad)?;
        }
        if let Some(iif) = q.iif {
            b = b.input_interface(iif);
        }
        if let Some(port) = q.tcp_dport {
            b = b.ip_protocol(6).dport(port);
        }
        let mut msg = b.build();
        // Without it the kernel answers "main" whichever table the route came from.
        msg.header.flags |= RouteFlags::LookupTable;
        let mut answers = self.handle.route().get(msg).execute();
        let r = match answers.try_next().await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(CniError::dataplane(format!("route get {dst}: no answer"))),
            Err(e) => {
                return match errno(&e) {
                    Some(code) => Ok(Err(code)),
                    None => Err(nl_err(format_args!("route get {dst}"), e)),
                }
            }
        };
        let addr = |want: fn(&RouteAttribute) -> Option<&RouteAddress>| {
            r.attributes.iter().find_map(|a| match want(a) {
                Some(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
                Some(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
                _ => None,
            })
        };
        Ok(Ok(RouteLookup {
            kind: r.header.kind,
            table: route_table(&r),
            oif: route_oif(&r),
            gateway: addr(|a| match a {
                RouteAttribute::Gateway(g) => Some(g),
                _ => None,
            }),
            prefsrc: addr(|a| match a {
                RouteAttribute::PrefSource(p) => Some(p),
                _ => None,
            }),
        }))
    }
}
