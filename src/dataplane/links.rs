//! Links: the veth pair (created with its pod end born in the pod), looking links up, bringing
//! them up, deleting them, and reading a link message's attributes.

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::{LinkUnspec, LinkVeth};
use std::os::fd::AsRawFd;

use super::netlink::{errno, nl_err, EEXIST, ENODEV};
use super::{Netlink, HOST_MAC};
use crate::cni::error::{CniError, Result};
use crate::netns::Netns;

impl Netlink {
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(nl_err(format_args!("look up link {name}"), e)),
        }
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkMessage>> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(nl_err(format_args!("look up link #{index}"), e)),
        }
    }

    /// Deletes a link by name; `Ok(false)` when it was already gone.
    pub async fn delete_link(&self, name: &str) -> Result<bool> {
        let Some(link) = self.link_by_name(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(false),
            Err(e) => Err(nl_err(format_args!("delete link {name}"), e)),
        }
    }

    /// Creates the veth pair in one request: the host end `host_name` here (up, HOST_MAC),
    /// the peer `pod_ifname` born directly in `pod` with `pod_mac`, so it is never visible on
    /// the node. Both MACs travel in this request (IFLA_ADDRESS, and IFLA_ADDRESS inside
    /// VETH_INFO_PEER): the kernel then records addr_assign_type NET_ADDR_SET for both ends,
    /// and systemd-udev's `MACAddressPolicy=persistent` only rewrites links whose MAC the
    /// kernel made up (NET_ADDR_RANDOM). A MAC set after creation would race udev instead.
    /// The peer cannot be brought up in the same request (the kernel answers ENOTCONN when the
    /// peer lives in another namespace): see `set_up`.
    pub async fn create_veth(
        &self,
        host_name: &str,
        pod_ifname: &str,
        pod_mac: [u8; 6],
        pod: &Netns,
        mtu: u32,
    ) -> Result<()> {
        let peer = LinkUnspec::new_with_name(pod_ifname)
            .setns_by_fd(pod.file.as_raw_fd())
            .address(pod_mac.to_vec())
            .mtu(mtu)
            .build();
        let msg = LinkVeth::new(host_name, pod_ifname)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .address(HOST_MAC.to_vec())
            .mtu(mtu)
            .up()
            .build();
        self.handle.link().add(msg).execute().await.map_err(|e| {
            if errno(&e) == Some(EEXIST) {
                CniError::dataplane(format!(
                    "create veth {host_name} <-> {pod_ifname}: an interface named {host_name} exists on the node, or {pod_ifname} in {}",
                    pod.path
                ))
            } else {
                nl_err(format_args!("create veth {host_name} <-> {pod_ifname} in {}", pod.path), e)
            }
        })
    }

    pub async fn set_up(&self, index: u32, name: &str) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| nl_err(format_args!("set {name} up"), e))
    }

    /// Every link's name by index.
    pub async fn link_names(&self) -> Result<std::collections::HashMap<u32, String>> {
        let mut out = std::collections::HashMap::new();
        let mut links = self.handle.link().get().execute();
        while let Some(l) = links
            .try_next()
            .await
            .map_err(|e| nl_err("list links", e))?
        {
            if let Some(name) = link_name(&l) {
                out.insert(l.header.index, name);
            }
        }
        Ok(out)
    }
}

/// The ifindex of a veth's peer (IFLA_LINK), as seen from the link's own namespace.
pub fn link_peer_index(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(i) => Some(*i),
        _ => None,
    })
}

/// True when the link is a veth.
pub fn link_is_veth(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    })
}

pub fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

pub fn link_mac(link: &LinkMessage) -> Option<Vec<u8>> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => Some(m.clone()),
        _ => None,
    })
}

pub fn link_mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

pub fn link_is_up(link: &LinkMessage) -> bool {
    link.header.flags.contains(LinkFlags::Up)
}

/// The pod end's MAC: the first 48 bits of the attachment hash, made locally administered
/// (bit 1 set) and unicast (bit 0 clear). Derived rather than random so that a retried ADD of
/// the same attachment reports the same MAC, and so that the pod end of a host veth can be
/// told from its name (they share the hash); it only has to differ from HOST_MAC, its one
/// neighbour on the point-to-point link.
pub fn pod_mac(attachment_hash: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (i, b) in mac.iter_mut().enumerate() {
        *b = u8::from_str_radix(&attachment_hash[2 * i..2 * i + 2], 16).unwrap_or(0);
    }
    mac[0] = (mac[0] & 0xfc) | 0x02;
    if mac == HOST_MAC {
        mac[5] ^= 1;
    }
    mac
}

/// The host veth's name: prefix + 11 hex characters of sha256("<containerID>/<ifname>"), so
/// DEL and a retried ADD find it without any state.
pub fn host_veth_name(prefix: &str, attachment_hash: &str) -> String {
    format!("{prefix}{}", &attachment_hash[..11])
}
