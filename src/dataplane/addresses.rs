//! Addresses: the pod's /32 and /128, the host veth's IPv6 gateway, and reading them back with
//! their flags (tentative, dadfailed).

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use std::net::{IpAddr, Ipv4Addr};

use super::netlink::{errno, nl_err, EEXIST};
use super::{Family, FamilyAddr, Netlink};
use crate::cni::error::Result;

impl Netlink {
    /// Adds `ip/prefix`; IPv6 addresses skip duplicate address detection (the pool is the
    /// only source of them), so they are usable at once instead of tentative for a second.
    pub async fn add_address(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<()> {
        let mut req = self.handle.address().add(index, ip, prefix);
        if ip.is_ipv6() {
            req.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        }
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(nl_err(format_args!("add address {ip}/{prefix}"), e)),
        }
    }

    /// Addresses of family `A` (with prefix length) on link `index`.
    pub async fn addresses_of<A: FamilyAddr>(&self, index: u32) -> Result<Vec<(A, u8)>> {
        Ok(self
            .addresses_with_flags::<A>(index)
            .await?
            .into_iter()
            .map(|(a, p, _)| (a, p))
            .collect())
    }

    /// Addresses of family `A` on link `index` with their `IFA_F_*` flags, which say whether
    /// an IPv6 address is usable yet (tentative: DAD still running; dadfailed: never).
    pub async fn addresses_with_flags<A: FamilyAddr>(
        &self,
        index: u32,
    ) -> Result<Vec<(A, u8, AddressFlags)>> {
        let mut out = Vec::new();
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(a) = addrs
            .try_next()
            .await
            .map_err(|e| nl_err("list addresses", e))?
        {
            if a.header.index != index {
                continue;
            }
            // IFA_FLAGS carries all 32 bits; the header only the first 8.
            let flags = a
                .attributes
                .iter()
                .find_map(|attr| match attr {
                    AddressAttribute::Flags(f) => Some(*f),
                    _ => None,
                })
                .unwrap_or_else(|| {
                    AddressFlags::from_bits_retain(u32::from(a.header.flags.bits()))
                });
            for attr in &a.attributes {
                if let AddressAttribute::Address(ip) = attr {
                    if let Some(ip) = A::from_ip(*ip) {
                        out.push((ip, a.header.prefix_len, flags));
                    }
                }
            }
        }
        Ok(out)
    }

    /// The link that holds address `ip`, if any (the node's uplink for its InternalIP).
    pub async fn link_with_address(
        &self,
        ip: IpAddr,
    ) -> Result<Option<rtnetlink::packet_route::link::LinkMessage>> {
        let mut addrs = self.handle.address().get().execute();
        let mut index = None;
        while let Some(a) = addrs
            .try_next()
            .await
            .map_err(|e| nl_err("list addresses", e))?
        {
            let holds = a
                .attributes
                .iter()
                .any(|attr| matches!(attr, AddressAttribute::Address(x) if *x == ip));
            if holds && index.is_none() {
                index = Some(a.header.index);
            }
        }
        match index {
            Some(i) => self.link_by_index(i).await,
            None => Ok(None),
        }
    }

    /// Removes `ip` from link `index`; `Ok` when it was not there.
    pub async fn delete_address(&self, index: u32, ip: IpAddr) -> Result<()> {
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(a) = addrs
            .try_next()
            .await
            .map_err(|e| nl_err("list addresses", e))?
        {
            let this = a.header.index == index
                && a.attributes
                    .iter()
                    .any(|attr| matches!(attr, AddressAttribute::Address(x) if *x == ip));
            if this {
                return self
                    .handle
                    .address()
                    .del(a)
                    .execute()
                    .await
                    .map_err(|e| nl_err(format_args!("remove address {ip}"), e));
            }
        }
        Ok(())
    }

    /// Whether `ip/prefix` is on link `index`, for either family.
    pub async fn has_address(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<bool> {
        Ok(match ip {
            IpAddr::V4(a) => self.addresses_of(index).await?.contains(&(a, prefix)),
            IpAddr::V6(a) => self.addresses_of(index).await?.contains(&(a, prefix)),
        })
    }
}

impl Netlink {
    /// `addresses_with_flags` in `family`, with addresses of either family.
    pub async fn addresses_in(
        &self,
        index: u32,
        family: Family,
    ) -> Result<Vec<(IpAddr, u8, AddressFlags)>> {
        Ok(match family {
            Family::V4 => self
                .addresses_with_flags::<Ipv4Addr>(index)
                .await?
                .into_iter()
                .map(|(a, p, f)| (a.into(), p, f))
                .collect(),
            Family::V6 => self
                .addresses_with_flags::<std::net::Ipv6Addr>(index)
                .await?
                .into_iter()
                .map(|(a, p, f)| (a.into(), p, f))
                .collect(),
        })
    }
}
