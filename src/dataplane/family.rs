//! Address families: what differs between IPv4 and IPv6 in what ADD builds.

use rtnetlink::packet_route::route::RouteAddress;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{GATEWAY, GATEWAY6};

/// IPv4 or IPv6: what differs between the two in what ADD builds and how it is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv6() {
            Family::V6
        } else {
            Family::V4
        }
    }

    pub fn is_v6(self) -> bool {
        self == Family::V6
    }

    /// "IPv4" or "IPv6", as messages spell it.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The pod's gateway: 169.254.1.1 (answered by proxy ARP) or the host veth's own
    /// fe80::ecee:eeff:feee:eeee.
    pub fn gateway(self) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(GATEWAY),
            Family::V6 => IpAddr::V6(GATEWAY6),
        }
    }

    /// One host's prefix length: 32 or 128.
    pub fn host_prefix(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// The default route's destination as a result spells it.
    pub fn default_dst(self) -> &'static str {
        match self {
            Family::V4 => "0.0.0.0/0",
            Family::V6 => "::/0",
        }
    }

    /// How a link learns the gateway's MAC without the permanent entry ADD writes.
    pub fn neighbour_protocol(self) -> &'static str {
        match self {
            Family::V4 => "ARP",
            Family::V6 => "neighbour discovery",
        }
    }

    /// The `ip` option that selects the family in a command for people: IPv4 commands read
    /// as they always did, IPv6 ones say `-6`.
    pub fn ip_option(self) -> &'static str {
        match self {
            Family::V4 => "",
            Family::V6 => "-6 ",
        }
    }
}

/// The pod's gateway for an address's family.
pub fn gateway_for(ip: IpAddr) -> IpAddr {
    Family::of(ip).gateway()
}

/// The default route's destination as a result spells it.
pub fn default_dst(ip: IpAddr) -> &'static str {
    Family::of(ip).default_dst()
}

/// One host's prefix length: 32 or 128.
pub fn host_prefix(ip: IpAddr) -> u8 {
    Family::of(ip).host_prefix()
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
