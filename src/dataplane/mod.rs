//! The data path on the node and in the pod. `spec` says what ADD builds for a pod and why;
//! the rest builds and reads it over rtnetlink, one file per kind of object:
//! `links` (the veth pair), `addresses` (the pod's /32 and /128, the host veth's IPv6 gateway),
//! `routes` (the pod's routes, the node's /32 host route to each pod), `neighbours` (the pod's
//! permanent gateway entry), `sysctl` (reading and setting /proc/sys), `lookup` (the kernel's
//! route lookup, for doctor), `family` (what differs between IPv4 and IPv6), `uplink` (the node's uplinks and what
//! forwarding needs of them), and `netlink` (the
//! current-thread runtime, the connection and its errors).

mod addresses;
pub mod conntrack;
mod family;
mod links;
mod lookup;
mod neighbours;
mod netlink;
pub mod owned;
mod routes;
pub mod spec;
pub mod sysctl;
mod uplink;
pub mod vxlan;

pub use family::*;
pub use links::*;
pub use lookup::{MatchedRoute, RouteLookup, RouteQuery};
pub use netlink::{errno, error_text, runtime, Netlink};
pub use routes::*;
pub use uplink::{Uplink, UplinkFault};

use std::net::{Ipv4Addr, Ipv6Addr};

/// The gateway every pod routes through. It exists nowhere: the host veth answers ARP for it.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Every host veth carries this MAC, so the pod's neighbour entry for the gateway never changes.
pub const HOST_MAC: [u8; 6] = [0xee; 6];
/// The IPv6 gateway: the host veth's own link-local address, the EUI-64 one the kernel derives
/// from HOST_MAC (ee:ee:ee:ee:ee:ee -> fe80::ecee:eeff:feee:eeee), so it is the same for every
/// pod and a real address on the other end of the pod's link. ADD also sets it explicitly, for
/// nodes whose addr_gen_mode would pick another one.
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);

pub const DEFAULT_MTU: u32 = 1500;

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::attachment_hash;

    #[test]
    fn host_veth_names_are_deterministic_and_fit() {
        let h = attachment_hash("abc", "eth0");
        let n = host_veth_name("rcni", &h);
        assert_eq!(n.len(), 15);
        assert_eq!(n, host_veth_name("rcni", &attachment_hash("abc", "eth0")));
        assert_ne!(n, host_veth_name("rcni", &attachment_hash("abc", "eth1")));
        assert_eq!(format_mac(&HOST_MAC), "ee:ee:ee:ee:ee:ee");
    }

    #[test]
    fn pod_macs_are_locally_administered_unicast_and_never_the_host_mac() {
        let h = attachment_hash("abc", "eth0");
        let m = pod_mac(&h);
        assert_eq!(m, pod_mac(&attachment_hash("abc", "eth0")));
        assert_ne!(m, pod_mac(&attachment_hash("abc", "eth1")));
        assert_eq!(m[0] & 0x03, 0x02, "{}", format_mac(&m));
        assert_eq!(format_mac(&m[1..]), format_mac(&hex_bytes(&h[2..12])));
        // A hash that would give the host MAC does not.
        assert_ne!(pod_mac("eeeeeeeeeeee0000"), HOST_MAC);
        assert_eq!(pod_mac("efeeeeeeeeef")[0], 0xee);
    }

    fn hex_bytes(s: &str) -> Vec<u8> {
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn ipv6_gateway_is_the_eui64_link_local_of_the_host_mac() {
        // EUI-64: flip the universal/local bit of the first byte, put ff:fe in the middle.
        let m = HOST_MAC;
        let iid = [m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]];
        let mut octets = [0u8; 16];
        octets[0] = 0xfe;
        octets[1] = 0x80;
        octets[8..].copy_from_slice(&iid);
        assert_eq!(Ipv6Addr::from(octets), GATEWAY6);
        assert_eq!(GATEWAY6.to_string(), "fe80::ecee:eeff:feee:eeee");
    }
}
