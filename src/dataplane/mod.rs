//! The data path on the node and in the pod, over rtnetlink: the veth pair, the pod's /32 and
//! routes, the gateway neighbour, the host /32 route, and the sysctls that make proxy ARP and
//! forwarding work.

pub mod owned;
pub mod sysctl;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::address::{AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteScope, RouteType,
};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use crate::cni::error::{CniError, Result};
use crate::netns::Netns;

/// The gateway every pod routes through. It exists nowhere: the host veth answers ARP for it.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Every host veth carries this MAC, so the pod's neighbour entry for the gateway never changes.
pub const HOST_MAC: [u8; 6] = [0xee; 6];
/// The IPv6 gateway: the host veth's own link-local address, the EUI-64 one the kernel derives
/// from HOST_MAC (ee:ee:ee:ee:ee:ee -> fe80::ecee:eeff:feee:eeee), so it is the same for every
/// pod and a real address on the other end of the pod's link. ADD also sets it explicitly, for
/// nodes whose addr_gen_mode would pick another one.
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);

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
pub trait Family: Copy + Eq + std::fmt::Debug + Send + 'static {
    const IPV6: bool;
    const UNSPECIFIED: Self;
    fn from_ip(ip: IpAddr) -> Option<Self>;
    fn from_route(a: &RouteAddress) -> Option<Self>;
}

impl Family for Ipv4Addr {
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

impl Family for Ipv6Addr {
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
pub const DEFAULT_MTU: u32 = 1500;

const ENODEV: i32 = 19;
const EEXIST: i32 = 17;

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The kernel's errno behind a netlink failure, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

fn nl_err(what: impl std::fmt::Display, e: rtnetlink::Error) -> CniError {
    let detail = match e {
        rtnetlink::Error::NetlinkError(ref m) => m.to_io().to_string(),
        ref other => other.to_string(),
    };
    CniError::dataplane(format!("{what}: {detail}"))
}

/// A netlink connection bound to one namespace, driven by the current tokio runtime.
#[derive(Clone)]
pub struct Netlink {
    pub handle: Handle,
}

impl Netlink {
    /// A connection in the calling thread's namespace.
    pub fn connect() -> Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| CniError::dataplane(format!("open netlink socket: {e}")))?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// A connection in `ns`: the socket is created inside it and stays bound to it.
    pub fn connect_in(ns: &Netns) -> Result<Netlink> {
        let guard = ns.enter()?;
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| CniError::dataplane(format!("open netlink socket in {}: {e}", ns.path)))?;
        drop(guard);
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

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

    /// Creates the veth pair in one request: the host end `host_name` here (up, fixed MAC),
    /// the peer `pod_ifname` born directly in `pod`, so it is never visible on the node. The
    /// peer cannot be brought up in the same request (the kernel answers ENOTCONN when the peer
    /// lives in another namespace): see `set_up`.
    pub async fn create_veth(
        &self,
        host_name: &str,
        pod_ifname: &str,
        pod: &Netns,
        mtu: u32,
    ) -> Result<()> {
        let peer = LinkUnspec::new_with_name(pod_ifname)
            .setns_by_fd(pod.file.as_raw_fd())
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

    /// `<dst>/<prefix> dev <index> scope link`.
    pub async fn add_link_route(&self, dst: Ipv4Addr, prefix: u8, index: u32) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        self.add_route(msg, format_args!("add route {dst}/{prefix} scope link"))
            .await
    }

    /// `default via <gw> dev <index>`, in the gateway's family.
    pub async fn add_default_route(&self, gw: IpAddr, index: u32) -> Result<()> {
        let msg = match gw {
            IpAddr::V4(gw) => RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gw)
                .output_interface(index)
                .build(),
            IpAddr::V6(gw) => RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(gw)
                .output_interface(index)
                .build(),
        };
        self.add_route(msg, format_args!("add default route via {gw}"))
            .await
    }

    async fn add_route(&self, msg: RouteMessage, what: std::fmt::Arguments<'_>) -> Result<()> {
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(nl_err(what, e)),
        }
    }

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

    /// Every route of the main table in family `A`.
    async fn dump_main_routes<A: Family>(&self) -> Result<Vec<RouteMessage>> {
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
    pub async fn routes_to<A: Family>(&self, dst: A, prefix: u8) -> Result<Vec<RouteMessage>> {
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
        let plen = self::host_prefix(ip);
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
                .is_none_or(|l| !link_is_up(l) || owned::is_our_veth(l, host_prefix));
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

    /// The MTU of the interface that holds the default route, if there is one.
    pub async fn default_route_mtu(&self) -> Result<Option<u32>> {
        for r in self.routes_to(Ipv4Addr::UNSPECIFIED, 0).await? {
            if let Some(i) = route_oif(&r) {
                if let Some(link) = self.link_by_index(i).await? {
                    return Ok(link_mtu(&link));
                }
            }
        }
        Ok(None)
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
    /// IPv4 routes of the main table.
    pub async fn main_routes(&self) -> Result<Vec<RouteInfo>> {
        self.main_routes_of::<Ipv4Addr>().await
    }

    /// Routes of the main table in family `A`.
    pub async fn main_routes_of<A: Family>(&self) -> Result<Vec<RouteInfo<A>>> {
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

    /// IPv4 addresses (with prefix length) on link `index`.
    pub async fn ipv4_addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        self.addresses_of::<Ipv4Addr>(index).await
    }

    /// Addresses of family `A` (with prefix length) on link `index`.
    pub async fn addresses_of<A: Family>(&self, index: u32) -> Result<Vec<(A, u8)>> {
        Ok(self
            .addresses_with_flags::<A>(index)
            .await?
            .into_iter()
            .map(|(a, p, _)| (a, p))
            .collect())
    }

    /// Addresses of family `A` on link `index` with their `IFA_F_*` flags, which say whether
    /// an IPv6 address is usable yet (tentative: DAD still running; dadfailed: never).
    pub async fn addresses_with_flags<A: Family>(
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

    /// Whether `ip/prefix` is on link `index`, for either family.
    pub async fn has_address(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<bool> {
        Ok(match ip {
            IpAddr::V4(a) => self.addresses_of(index).await?.contains(&(a, prefix)),
            IpAddr::V6(a) => self.addresses_of(index).await?.contains(&(a, prefix)),
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
}

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

pub fn route_oif(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

pub fn route_dst(r: &RouteMessage) -> Option<Ipv4Addr> {
    route_dst_of::<Ipv4Addr>(r)
}

/// A route's destination in family `A` (the unspecified address for a default route).
pub fn route_dst_of<A: Family>(r: &RouteMessage) -> Option<A> {
    if r.header.destination_prefix_length == 0 {
        return Some(A::UNSPECIFIED);
    }
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => A::from_route(d),
        _ => None,
    })
}

fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

/// The host veth's name: prefix + 11 hex characters of sha256("<containerID>/<ifname>"), so
/// DEL and a retried ADD find it without any state.
pub fn host_veth_name(prefix: &str, attachment_hash: &str) -> String {
    format!("{prefix}{}", &attachment_hash[..11])
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
