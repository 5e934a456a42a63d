//! Routes: the pod's gateway and default routes, the node's /32 (/128) host route to each pod
//! (with the takeover of a stale one), and reading the main table back.

use futures_util::TryStreamExt;
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage, RouteScope};
use rtnetlink::RouteMessageBuilder;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::netlink::{errno, nl_err, EEXIST};
use super::{link_is_up, link_name, spec, Family, FamilyAddr, Netlink};
use crate::cni::error::{CniError, Result};

impl Netlink {
    /// A route of the spec through link `index`: `<dst>/<prefix> [via <gw>] dev <index> [scope
    /// link]`.
    pub async fn add_spec_route(&self, r: &spec::Route, index: u32) -> Result<()> {
        let what = format!(
            "add route {}/{}{}{}",
            r.dst,
            r.prefix,
            r.gateway.map(|g| format!(" via {g}")).unwrap_or_default(),
            if r.scope_link { " scope link" } else { "" }
        );
        let bad = |e| CniError::dataplane(format!("{what}: {e}"));
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(r.dst, r.prefix)
            .map_err(bad)?
            .output_interface(index);
        if let Some(gw) = r.gateway {
            b = b.gateway(gw).map_err(bad)?;
        }
        if r.scope_link {
            b = b.scope(RouteScope::Link);
        }
        self.add_route(b.build(), format_args!("{what}")).await
    }

    async fn add_route(&self, msg: RouteMessage, what: std::fmt::Arguments<'_>) -> Result<()> {
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(nl_err(what, e)),
        }
    }

    /// Every route of the main table in family `A`.
    async fn dump_main_routes<A: FamilyAddr>(&self) -> Result<Vec<RouteMessage>> {
        let mut out = Vec::new();
        let filter = if A::IPV6 {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        };
        let mut routes = self.handle.route().get(filter).execute();
        while let Some(r) = routes
            .try_next()
            .await
            .map_err(|e| nl_err("list routes", e))?
        {
            if route_table(&r) == 254 {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Routes of the main table whose destination is exactly `dst/prefix`.
    pub async fn routes_to<A: FamilyAddr>(&self, dst: A, prefix: u8) -> Result<Vec<RouteMessage>> {
        let mut out = self.dump_main_routes::<A>().await?;
        out.retain(|r| {
            r.header.destination_prefix_length == prefix && route_dst_of::<A>(r) == Some(dst)
        });
        Ok(out)
    }

    /// `routes_to` for an address of either family.
    pub async fn routes_to_ip(&self, dst: IpAddr, prefix: u8) -> Result<Vec<RouteMessage>> {
        match dst {
            IpAddr::V4(a) => self.routes_to(a, prefix).await,
            IpAddr::V6(a) => self.routes_to(a, prefix).await,
        }
    }

    /// `<ip>/32 dev <host veth> scope link` on the node (`/128` for IPv6). A route to the same address through
    /// another of our veths, or through a link that is down, is a leftover of a pod that is gone
    /// (the store never hands out an address twice), so it is replaced; one through a live
    /// interface of someone else's is reported rather than stolen.
    pub async fn add_host_route(&self, ip: IpAddr, index: u32, host_prefix: &str) -> Result<()> {
        let plen = super::host_prefix(ip);
        let msg = match ip {
            IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(a, 32)
                .output_interface(index)
                .scope(RouteScope::Link)
                .build(),
            IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(a, 128)
                .output_interface(index)
                .build(),
        };
        match self.handle.route().add(msg.clone()).execute().await {
            Ok(()) => return Ok(()),
            Err(e) if errno(&e) != Some(EEXIST) => {
                return Err(nl_err(format_args!("add host route {ip}/{plen}"), e))
            }
            Err(_) => {}
        }
        for existing in self.routes_to_ip(ip, plen).await? {
            let oif = route_oif(&existing);
            if oif == Some(index) {
                return Ok(());
            }
            let link = match oif {
                Some(i) => self.link_by_index(i).await?,
                None => None,
            };
            // Ours (a veth of a pod that is gone) or a dead link: safe to take over.
            let stale = link
                .as_ref()
                .is_none_or(|l| !link_is_up(l) || super::owned::is_our_veth(l, host_prefix));
            if !stale {
                let name = link
                    .as_ref()
                    .and_then(link_name)
                    .unwrap_or_else(|| "another path".into());
                return Err(CniError::dataplane(format!(
                    "the node already routes {ip}/{plen} via {name}, which is up and not routed-cni's; \
                     this address belongs to the pool, so remove that route (`ip route del {ip}/{plen} dev {name}`) or fix the overlapping configuration"
                )));
            }
        }
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|e| nl_err(format_args!("replace host route {ip}/{plen}"), e))
    }
}

/// A route as CHECK and doctor look at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo<A = Ipv4Addr> {
    pub dst: A,
    pub prefix: u8,
    pub gateway: Option<A>,
    pub oif: Option<u32>,
    pub scope: RouteScope,
}

impl Netlink {
    /// Routes of the main table in family `A`.
    pub async fn main_routes_of<A: FamilyAddr>(&self) -> Result<Vec<RouteInfo<A>>> {
        Ok(self
            .dump_main_routes::<A>()
            .await?
            .iter()
            .filter_map(|r| {
                let gateway = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(g) => A::from_route(g),
                    _ => None,
                });
                Some(RouteInfo {
                    dst: route_dst_of::<A>(r)?,
                    prefix: r.header.destination_prefix_length,
                    gateway,
                    oif: route_oif(r),
                    scope: r.header.scope,
                })
            })
            .collect())
    }
}

pub fn route_oif(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

/// A route's destination in family `A` (the unspecified address for a default route).
pub fn route_dst_of<A: FamilyAddr>(r: &RouteMessage) -> Option<A> {
    if r.header.destination_prefix_length == 0 {
        return Some(A::UNSPECIFIED);
    }
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => A::from_route(d),
        _ => None,
    })
}

/// The table a route is in: RTA_TABLE when present (it holds ids above 255), else the header.
pub fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

impl Netlink {
    /// Routes of the main table in `family`, with addresses of either family.
    pub async fn main_routes_in(&self, family: Family) -> Result<Vec<RouteInfo<IpAddr>>> {
        fn widen<A: Into<IpAddr>>(r: RouteInfo<A>) -> RouteInfo<IpAddr> {
            RouteInfo {
                dst: r.dst.into(),
                prefix: r.prefix,
                gateway: r.gateway.map(Into::into),
                oif: r.oif,
                scope: r.scope,
            }
        }
        Ok(match family {
            Family::V4 => self
                .main_routes_of::<Ipv4Addr>()
                .await?
                .into_iter()
                .map(widen)
                .collect(),
            Family::V6 => self
                .main_routes_of::<Ipv6Addr>()
                .await?
                .into_iter()
                .map(widen)
                .collect(),
        })
    }
}
