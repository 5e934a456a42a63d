//! Address families: what differs between IPv4 and IPv6 in what ADD builds.

use rtnetlink::packet_route::route::RouteAddress;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{GATEWAY, GATEWAY6};

/// The pod's gateway for an address family.
pub fn gateway_for(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(GATEWAY),
        IpAddr::V6(_) => IpAddr::V6(GATEWAY6),
    }
}

/// The default route's destination as a result spells it.
pub fn default_dst(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "0.0.0.0/0"
    } else {
        "::/0"
    }
}

/// One host's prefix length: 32 or 128.
pub fn host_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

/// An address family the route and address dumps can be read in.
pub trait FamilyAddr: Copy + Eq + std::fmt::Debug + Send + 'static {
    const IPV6: bool;
    const UNSPECIFIED: Self;
    fn from_ip(ip: IpAddr) -> Option<Self>;
    fn from_route(a: &RouteAddress) -> Option<Self>;
}

impl FamilyAddr for Ipv4Addr {
    const IPV6: bool = false;
    const UNSPECIFIED: Self = Ipv4Addr::UNSPECIFIED;
    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }
    }
    fn from_route(a: &RouteAddress) -> Option<Self> {
        match a {
            RouteAddress::Inet(ip) => Some(*ip),
            _ => None,
        }
    }
}

impl FamilyAddr for Ipv6Addr {
    const IPV6: bool = true;
    const UNSPECIFIED: Self = Ipv6Addr::UNSPECIFIED;
    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        }
    }
    fn from_route(a: &RouteAddress) -> Option<Self> {
        match a {
            RouteAddress::Inet6(ip) => Some(*ip),
            _ => None,
        }
    }
}
