//! The VXLAN device for nodes the kernel cannot reach without a gateway, and the three entries
//! per remote node it needs: a permanent neighbour (tunnel address → the node's VTEP MAC), an
//! FDB entry (that MAC → the node's address, the outer destination) and the route (in
//! routes.rs). No learning, no flooding, no miss daemon: every entry is written by the agent
//! from the Node objects, as Calico and flannel do.
//!
//! Nothing here is stored in the API: a node's VTEP MAC is derived from its name and its tunnel
//! addresses are the first address of each of its podCIDRs, so every node computes the same
//! entries for every other node on its own.

use futures_util::TryStreamExt;
use ipnetwork::IpNetwork;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::RouteProtocol;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkUnspec, LinkVxlan};
use sha2::{Digest, Sha256};
use std::net::IpAddr;

use super::netlink::{errno, nl_err, ENODEV};
use super::{format_mac, link_is_up, link_mac, link_mtu, Netlink};
use crate::cni::error::Result;

/// The one device, for both families of pod traffic (the underlay is one family: the node's
/// InternalIP). The `rcni` prefix keeps it under the udev and NetworkManager files `install`
/// writes for our links; the dot keeps it from ever looking like a host veth (owned.rs).
pub const VXLAN_DEVICE: &str = "rcni.vxlan";
/// IANA's VXLAN port. Linux's default (8472) predates the assignment; always set explicitly.
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// Not flannel's 1 nor Calico's 4096 (IPv4) / 6096 (IPv6): a cluster moving from either can run
/// both devices on the same port during the move. The same number as our route protocol.
pub const DEFAULT_VXLAN_VNI: u32 = 77;
/// Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) headers.
pub const OVERHEAD_V4: u32 = 50;
/// The same over an IPv6 underlay (outer header 40).
pub const OVERHEAD_V6: u32 = 70;

const EEXIST: i32 = 17;
const ENOENT: i32 = 2;

/// The bytes VXLAN adds to each packet over an underlay of `local`'s family.
pub fn overhead(local: IpAddr) -> u32 {
    if local.is_ipv4() {
        OVERHEAD_V4
    } else {
        OVERHEAD_V6
    }
}

/// A node's VTEP MAC: sha256 of its name, locally administered (bit 1 set) and unicast (bit 0
/// clear). Node names are unique in a cluster and never change, so the MAC survives an address
/// change, and no node has to publish it.
pub fn vtep_mac(node_name: &str) -> [u8; 6] {
    let digest = Sha256::digest(format!("routed-cni vxlan {node_name}").as_bytes());
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&digest[..6]);
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac
}

/// A node's tunnel address in one family: the first address of its podCIDR (flannel's choice).
/// The pool never hands it to a pod (allocation starts one above it), and as a pod-network
/// address the other nodes already route it back through the tunnel, so it is the source that
/// keeps node → remote pod traffic symmetric under strict rp_filter.
pub fn tunnel_address(pod_cidr: &IpNetwork) -> IpAddr {
    pod_cidr.network()
}

/// The device as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub vni: u32,
    pub port: u16,
    /// This node's underlay address (its InternalIP): the family of the outer packets.
    pub local: IpAddr,
    pub mac: [u8; 6],
    pub mtu: u32,
}

impl VxlanSpec {
    /// The address the device is bound to. Over IPv4, none: the device then receives on any
    /// of the node's addresses and each outer packet's source is the node's own route to the
    /// peer, so a node whose address moves keeps receiving before its agent has learned the
    /// new address from the API (which its old connection may take a while to tell it). Over
    /// IPv6 the kernel needs `local` to open an IPv6 socket at all.
    pub fn bound_local(&self) -> Option<IpAddr> {
        match self.local {
            IpAddr::V4(_) => None,
            v6 => Some(v6),
        }
    }
}

/// The device as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanDevice {
    pub index: u32,
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<IpAddr>,
    pub learning: Option<bool>,
    pub mac: Option<Vec<u8>>,
    pub mtu: Option<u32>,
    pub up: bool,
}

impl VxlanDevice {
    /// `None` when the link is not a VXLAN device.
    pub fn from_link(link: &LinkMessage) -> Option<VxlanDevice> {
        let mut kind_is_vxlan = false;
        let mut data: &[InfoVxlan] = &[];
        for a in &link.attributes {
            if let LinkAttribute::LinkInfo(infos) = a {
                for i in infos {
                    match i {
                        LinkInfo::Kind(InfoKind::Vxlan) => kind_is_vxlan = true,
                        LinkInfo::Data(InfoData::Vxlan(d)) => data = d,
                        _ => {}
                    }
                }
            }
        }
        if !kind_is_vxlan {
            return None;
        }
        let mut dev = VxlanDevice {
            index: link.header.index,
            vni: None,
            port: None,
            local: None,
            learning: None,
            mac: link_mac(link),
            mtu: link_mtu(link),
            up: link_is_up(link),
        };
        for d in data {
            match d {
                InfoVxlan::Id(v) => dev.vni = Some(*v),
                InfoVxlan::Port(p) => dev.port = Some(*p),
                // The kernel reports an unset local address as the unspecified one.
                InfoVxlan::Local(a) if !a.is_unspecified() => dev.local = Some(IpAddr::V4(*a)),
                InfoVxlan::Local6(a) if !a.is_unspecified() => dev.local = Some(IpAddr::V6(*a)),
                InfoVxlan::Learning(l) => dev.learning = Some(*l),
                _ => {}
            }
        }
        Some(dev)
    }

    /// What differs from `want` in a way only re-creating the device fixes (the kernel does
    /// not change a VXLAN device's VNI, port or local address in place); the MTU and the link
    /// state are changed in place and are not listed.
    pub fn mismatch(&self, want: &VxlanSpec) -> Vec<String> {
        let mut out = Vec::new();
        let show = |v: Option<String>| v.unwrap_or_else(|| "none".into());
        if self.vni != Some(want.vni) {
            out.push(format!(
                "VNI {} (want {})",
                show(self.vni.map(|v| v.to_string())),
                want.vni
            ));
        }
        if self.port != Some(want.port) {
            out.push(format!(
                "port {} (want {})",
                show(self.port.map(|v| v.to_string())),
                want.port
            ));
        }
        if self.local != want.bound_local() {
            out.push(format!(
                "local {} (want {})",
                show(self.local.map(|v| v.to_string())),
                show(want.bound_local().map(|v| v.to_string()))
            ));
        }
        if self.learning != Some(false) {
            out.push("learning on (want off)".into());
        }
        if self.mac.as_deref() != Some(&want.mac[..]) {
            out.push(format!(
                "MAC {} (want {})",
                show(self.mac.as_deref().map(format_mac)),
                format_mac(&want.mac)
            ));
        }
        out
    }
}

/// A permanent neighbour entry on the device: tunnel address → VTEP MAC.
#[derive(Debug, Clone)]
pub struct TunnelNeighbour {
    pub ip: IpAddr,
    pub mac: Vec<u8>,
    pub state: NeighbourState,
    pub msg: NeighbourMessage,
}

/// An FDB entry on the device: VTEP MAC → outer destination.
#[derive(Debug, Clone)]
pub struct FdbEntry {
    pub mac: Vec<u8>,
    pub dst: Option<IpAddr>,
    pub msg: NeighbourMessage,
}

fn neighbour_ip(n: &NeighbourMessage) -> Option<IpAddr> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => Some(IpAddr::V4(*d)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(d)) => Some(IpAddr::V6(*d)),
        // An FDB entry (AF_BRIDGE) carries its outer destination as raw bytes.
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => match b.len() {
            4 => <[u8; 4]>::try_from(&b[..]).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(&b[..]).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    })
}

fn neighbour_mac(n: &NeighbourMessage) -> Vec<u8> {
    n.attributes
        .iter()
        .find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(m) => Some(m.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

impl Netlink {
    /// The link named `name`, if any, and what it is when it is a VXLAN device.
    pub async fn vxlan_device(
        &self,
        name: &str,
    ) -> Result<Option<(LinkMessage, Option<VxlanDevice>)>> {
        Ok(self.link_by_name(name).await?.map(|l| {
            let dev = VxlanDevice::from_link(&l);
            (l, dev)
        }))
    }

    /// Creates the device, up, and returns its index. No `dev`: the outer packets follow the
    /// node's routes to each peer, so the device survives the uplink being re-created.
    pub async fn create_vxlan(&self, name: &str, spec: &VxlanSpec) -> Result<u32> {
        let mut b = LinkVxlan::new(name, spec.vni)
            .port(spec.port)
            .learning(false)
            .address(spec.mac.to_vec())
            .mtu(spec.mtu)
            .up();
        if let Some(IpAddr::V6(a)) = spec.bound_local() {
            b = b.local6(a);
        }
        self.handle
            .link()
            .add(b.build())
            .execute()
            .await
            .map_err(|e| {
                nl_err(
                    format_args!(
                        "create VXLAN device {name} (VNI {}, port {}, underlay {})",
                        spec.vni, spec.port, spec.local
                    ),
                    e,
                )
            })?;
        match self.link_by_name(name).await? {
            Some(l) => Ok(l.header.index),
            None => Err(crate::cni::error::CniError::dataplane(format!(
                "VXLAN device {name} vanished right after it was created"
            ))),
        }
    }

    pub async fn set_mtu(&self, index: u32, name: &str, mtu: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .map_err(|e| nl_err(format_args!("set MTU {mtu} on {name}"), e))
    }

    pub async fn delete_link_index(&self, index: u32, name: &str) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(()),
            Err(e) => Err(nl_err(format_args!("delete link {name}"), e)),
        }
    }

    /// The IPv4 and IPv6 neighbour entries on link `index`.
    pub async fn tunnel_neighbours(&self, index: u32) -> Result<Vec<TunnelNeighbour>> {
        let mut out = Vec::new();
        let mut neighs = self.handle.neighbours().get().execute();
        while let Some(n) = neighs
            .try_next()
            .await
            .map_err(|e| nl_err("list neighbours", e))?
        {
            if n.header.ifindex != index {
                continue;
            }
            if let Some(ip) = neighbour_ip(&n) {
                out.push(TunnelNeighbour {
                    ip,
                    mac: neighbour_mac(&n),
                    state: n.header.state,
                    msg: n,
                });
            }
        }
        Ok(out)
    }

    /// A permanent neighbour entry marked with `protocol` (`ip neigh show proto N`); returns
    /// the entry as `tunnel_neighbours` would list it (its message removes it again).
    pub async fn add_tunnel_neighbour(
        &self,
        index: u32,
        ip: IpAddr,
        mac: &[u8],
        protocol: u8,
    ) -> Result<TunnelNeighbour> {
        let mut req = self
            .handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(mac)
            .state(NeighbourState::Permanent)
            .replace();
        req.message_mut()
            .attributes
            .push(NeighbourAttribute::Protocol(RouteProtocol::from(protocol)));
        let msg = req.message_mut().clone();
        req.execute().await.map_err(|e| {
            nl_err(
                format_args!("add neighbour {ip} lladdr {}", format_mac(mac)),
                e,
            )
        })?;
        Ok(TunnelNeighbour {
            ip,
            mac: mac.to_vec(),
            state: NeighbourState::Permanent,
            msg,
        })
    }

    /// Removes a neighbour or FDB entry as dumped; `Ok` when it was already gone.
    pub async fn delete_neighbour(&self, msg: &NeighbourMessage, what: &str) -> Result<()> {
        match self.handle.neighbours().del(msg.clone()).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(ENOENT) | Some(ENODEV)) => Ok(()),
            Err(e) => Err(nl_err(format_args!("remove {what}"), e)),
        }
    }

    /// The FDB entries of link `index` (AF_BRIDGE neighbours; the kernel dumps every
    /// device's, so this filters).
    pub async fn fdb_entries(&self, index: u32) -> Result<Vec<FdbEntry>> {
        let mut out = Vec::new();
        let mut entries = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        while let Some(n) = entries
            .try_next()
            .await
            .map_err(|e| nl_err("list FDB entries", e))?
        {
            if n.header.ifindex != index {
                continue;
            }
            out.push(FdbEntry {
                mac: neighbour_mac(&n),
                dst: neighbour_ip(&n),
                msg: n,
            });
        }
        Ok(out)
    }

    /// A permanent FDB entry on the device itself (NTF_SELF): frames for `mac` go to `dst`.
    /// Replaces an entry for the same MAC with another destination.
    /// Returns the entry as `fdb_entries` would list it (its message removes it again).
    pub async fn add_fdb(&self, index: u32, mac: &[u8], dst: IpAddr) -> Result<FdbEntry> {
        let mut req = self
            .handle
            .neighbours()
            .add_bridge(index, mac)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .destination(dst)
            .replace();
        let entry = FdbEntry {
            mac: mac.to_vec(),
            dst: Some(dst),
            msg: req.message_mut().clone(),
        };
        match req.execute().await {
            Ok(()) => Ok(entry),
            // The same entry already there (some kernels answer EEXIST to a same-value replace).
            Err(e) if errno(&e) == Some(EEXIST) => Ok(entry),
            Err(e) => Err(nl_err(
                format_args!("add FDB entry {} dst {dst}", format_mac(mac)),
                e,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_macs_are_per_name_locally_administered_unicast() {
        let a = vtep_mac("node-a");
        assert_eq!(a, vtep_mac("node-a"));
        assert_ne!(a, vtep_mac("node-b"));
        for name in ["node-a", "node-b", "ip-10-0-1-17.ec2.internal", ""] {
            let m = vtep_mac(name);
            assert_eq!(m[0] & 0x03, 0x02, "{name}: {}", format_mac(&m));
        }
    }

    #[test]
    fn tunnel_addresses_are_the_first_address_of_the_pod_cidr() {
        let v4: IpNetwork = "10.244.3.0/24".parse().unwrap();
        assert_eq!(tunnel_address(&v4).to_string(), "10.244.3.0");
        let v6: IpNetwork = "fd00:10:244:3::/64".parse().unwrap();
        assert_eq!(tunnel_address(&v6).to_string(), "fd00:10:244:3::");
        assert_eq!(overhead("100.64.0.1".parse().unwrap()), 50);
        assert_eq!(overhead("fd00::1".parse().unwrap()), 70);
    }

    #[test]
    fn fdb_destinations_are_read_from_raw_bytes() {
        let mut m = NeighbourMessage::default();
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Other(
                vec![100, 64, 0, 2],
            )));
        assert_eq!(neighbour_ip(&m), Some("100.64.0.2".parse().unwrap()));
        m.attributes[0] = NeighbourAttribute::Destination(NeighbourAddress::Other(vec![1, 2, 3]));
        assert_eq!(neighbour_ip(&m), None);
    }

    #[test]
    fn mismatch_names_what_needs_a_new_device() {
        let want = VxlanSpec {
            vni: 77,
            port: 4789,
            local: "fd10::1".parse().unwrap(),
            mac: vtep_mac("a"),
            mtu: 1450,
        };
        let mut have = VxlanDevice {
            index: 9,
            vni: Some(77),
            port: Some(4789),
            local: Some("fd10::1".parse().unwrap()),
            learning: Some(false),
            mac: Some(vtep_mac("a").to_vec()),
            mtu: Some(1500),
            up: false,
        };
        assert!(
            have.mismatch(&want).is_empty(),
            "MTU and state change in place"
        );
        have.local = Some("fd10::9".parse().unwrap());
        have.learning = Some(true);
        let m = have.mismatch(&want);
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m[0].contains("local fd10::9 (want fd10::1)"), "{m:?}");
        // Over IPv4 the device is bound to no address.
        let v4 = VxlanSpec {
            local: "100.64.0.1".parse().unwrap(),
            ..want
        };
        have.learning = Some(false);
        have.local = None;
        assert!(have.mismatch(&v4).is_empty());
        have.local = Some("100.64.0.1".parse().unwrap());
        assert!(have.mismatch(&v4)[0].contains("local 100.64.0.1 (want none)"));
    }
}
