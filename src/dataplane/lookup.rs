//! The kernel's route lookup for one packet (RTM_GETROUTE, `ip route get`): doctor's way of
//! asking what the kernel actually does with a pod's traffic.

use futures_util::TryStreamExt;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
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

/// The route the kernel's lookup matched (RTM_F_FIB_MATCH, `ip route get fibmatch`): the
/// table entry itself, with the protocol that says who made it, rather than the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchedRoute {
    pub dst: IpAddr,
    pub prefix: u8,
    /// rtm_protocol: who added the route (77: routed-cni's agent, 2: the kernel, 3: boot).
    pub protocol: u8,
    pub table: u32,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    /// `onlink`: the gateway is taken to be on the link whatever the link's addresses say.
    pub onlink: bool,
}

fn route_address(
    r: &RouteMessage,
    want: fn(&RouteAttribute) -> Option<&RouteAddress>,
) -> Option<IpAddr> {
    r.attributes.iter().find_map(|a| match want(a) {
        Some(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        Some(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        _ => None,
    })
}

fn gateway_of(a: &RouteAttribute) -> Option<&RouteAddress> {
    match a {
        RouteAttribute::Gateway(g) => Some(g),
        _ => None,
    }
}

impl Netlink {
    /// One RTM_GETROUTE for `q` with `flags`: the kernel's first answer, or its refusal.
    async fn ask_route(
        &self,
        q: RouteQuery,
        flags: RouteFlags,
    ) -> Result<std::result::Result<RouteMessage, i32>> {
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
        msg.header.flags |= flags;
        let mut answers = self.handle.route().get(msg).execute();
        match answers.try_next().await {
            Ok(Some(r)) => Ok(Ok(r)),
            Ok(None) => Err(CniError::dataplane(format!("route get {dst}: no answer"))),
            Err(e) => match errno(&e) {
                Some(code) => Ok(Err(code)),
                None => Err(nl_err(format_args!("route get {dst}"), e)),
            },
        }
    }

    /// Asks the kernel which route a packet takes. `Ok(Err(errno))` is the kernel's refusal
    /// (ENETUNREACH: no route; for IPv4 also EHOSTUNREACH: forwarding is off on `iif`, and
    /// EINVAL/EXDEV: the source fails the reverse-path check); `Err` is a failure to ask.
    /// IPv6 lookups never look at forwarding: the kernel drops later, in ip6_forward, when
    /// `net.ipv6.conf.all.forwarding` is 0.
    pub async fn route_get(&self, q: RouteQuery) -> Result<std::result::Result<RouteLookup, i32>> {
        // Without LookupTable the kernel answers "main" whichever table the route came from.
        let r = match self.ask_route(q, RouteFlags::LookupTable).await? {
            Ok(r) => r,
            Err(code) => return Ok(Err(code)),
        };
        Ok(Ok(RouteLookup {
            kind: r.header.kind,
            table: route_table(&r),
            oif: route_oif(&r),
            gateway: route_address(&r, gateway_of),
            prefsrc: route_address(&r, |a| match a {
                RouteAttribute::PrefSource(p) => Some(p),
                _ => None,
            }),
        }))
    }

    /// The route the same lookup as `route_get` matched, as the table holds it: its prefix,
    /// its protocol, its onlink flag. Refusals as for `route_get`.
    pub async fn route_match(
        &self,
        q: RouteQuery,
    ) -> Result<std::result::Result<MatchedRoute, i32>> {
        let r = match self.ask_route(q, RouteFlags::FibMatch).await? {
            Ok(r) => r,
            Err(code) => return Ok(Err(code)),
        };
        let prefix = r.header.destination_prefix_length;
        let unspecified = match r.header.address_family {
            AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        Ok(Ok(MatchedRoute {
            dst: route_address(&r, |a| match a {
                RouteAttribute::Destination(d) => Some(d),
                _ => None,
            })
            .filter(|_| prefix > 0)
            .unwrap_or(unspecified),
            prefix,
            protocol: u8::from(r.header.protocol),
            table: route_table(&r),
            gateway: route_address(&r, gateway_of),
            oif: route_oif(&r),
            onlink: r.header.flags.contains(RouteFlags::Onlink),
        }))
    }
}
