//! Neighbour entries: the pod's permanent entry for its gateway, reading one back, and asking
//! the kernel to resolve one (ARP or neighbour solicitation) the way a packet would.

use futures_util::TryStreamExt;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState,
};
use std::net::IpAddr;

use super::netlink::nl_err;
use super::{format_mac, Netlink};
use crate::cni::error::Result;

impl Netlink {
    /// A permanent neighbour entry: the pod never has to ARP for the gateway.
    pub async fn add_permanent_neighbour(&self, index: u32, ip: IpAddr, mac: &[u8]) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                nl_err(
                    format_args!("add neighbour {ip} lladdr {}", format_mac(mac)),
                    e,
                )
            })
    }

    /// The neighbour entry for `ip` on link `index`: its MAC and state.
    pub async fn neighbour(
        &self,
        index: u32,
        ip: impl Into<IpAddr>,
    ) -> Result<Option<(Vec<u8>, NeighbourState)>> {
        let ip: IpAddr = ip.into();
        let mut neighs = self.handle.neighbours().get().execute();
        while let Some(n) = neighs
            .try_next()
            .await
            .map_err(|e| nl_err("list neighbours", e))?
        {
            if n.header.ifindex != index {
                continue;
            }
            let dst = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => Some(IpAddr::V4(*d)),
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(d)) => Some(IpAddr::V6(*d)),
                _ => None,
            });
            if dst == Some(ip) {
                let mac = n
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        NeighbourAttribute::LinkLayerAddress(m) => Some(m.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                return Ok(Some((mac, n.header.state)));
            }
        }
        Ok(None)
    }

    /// Asks the kernel to resolve `ip` on link `index` (NTF_USE: an ARP request or IPv6
    /// neighbour solicitation goes out as if a packet were waiting). An entry already valid,
    /// permanent included, is left as it is.
    pub async fn probe_neighbour(&self, index: u32, ip: impl Into<IpAddr>) -> Result<()> {
        let ip: IpAddr = ip.into();
        self.handle
            .neighbours()
            .add(index, ip)
            .state(NeighbourState::None)
            .flags(NeighbourFlags::Use)
            .replace()
            .execute()
            .await
            .map_err(|e| nl_err(format_args!("resolve neighbour {ip}"), e))
    }
}
