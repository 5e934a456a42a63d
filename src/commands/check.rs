//! CHECK: verify every piece ADD made, in packet-path order, and name the first one missing
//! with the command that shows it. Routes that later chained plugins added are tolerated.

use ipnetwork::IpNetwork;
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::RouteScope;
use serde_json::Value;
use std::net::{IpAddr, Ipv6Addr};

use super::add::{host_ipv6_sysctls, HOST_IPV6_SYSCTLS_REQUIRED};
use super::runtime;
use crate::cni::env::{Attachment, Command};
use crate::cni::error::{CniError, Result};
use crate::config::family_name;
use crate::config::{Ipam, NetConf};
use crate::dataplane::{self, sysctl, Netlink, GATEWAY, GATEWAY6, HOST_MAC};
use crate::firewall::Masquerade;
use crate::ipam::store::LOCK_TIMEOUT;
use crate::ipam::{attachment_hash, delegate, Store};
use crate::netns::Netns;

/// What ADD reported for this attachment.
struct Expected {
    /// One address per family, IPv4 first.
    ips: Vec<IpAddr>,
    /// The pools they came from (built-in IPAM only).
    subnets: Vec<IpNetwork>,
    pod_mac: Option<String>,
    mtu: Option<u32>,
}

fn from_prev_result(prev: &Value, att: &Attachment) -> Result<Expected> {
    let bad = |what: String| CniError::invalid_config("prevResult", what);
    let interfaces = prev
        .get("interfaces")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let pod_idx = interfaces
        .iter()
        .position(|i| {
            i.get("name").and_then(Value::as_str) == Some(att.ifname.as_str())
                && i.get("sandbox").and_then(Value::as_str) == Some(att.netns.as_str())
        })
        .ok_or_else(|| {
            bad(format!(
                "lists no interface {} with sandbox {}",
                att.ifname, att.netns
            ))
        })?;
    let ips: Vec<IpNetwork> = prev
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| {
            e.get("interface")
                .and_then(Value::as_u64)
                .is_none_or(|i| i as usize == pod_idx)
        })
        .filter_map(|e| e.get("address").and_then(Value::as_str))
        .filter_map(|a| a.parse::<IpNetwork>().ok())
        .collect();
    let ips: Vec<IpAddr> = delegate::first_per_family(&ips)
        .iter()
        .map(|n| n.ip())
        .collect();
    if ips.is_empty() {
        return Err(bad(format!("lists no address for {}", att.ifname)));
    }
    let pod = &interfaces[pod_idx];
    Ok(Expected {
        ips,
        subnets: Vec::new(),
        pod_mac: pod
            .get("mac")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase),
        mtu: pod.get("mtu").and_then(Value::as_u64).map(|m| m as u32),
    })
}

/// A command the operator can paste to look at the pod's side.
pub fn in_pod(netns: &str, args: &str) -> String {
    match netns
        .strip_prefix("/run/netns/")
        .or_else(|| netns.strip_prefix("/var/run/netns/"))
    {
        Some(name) if !name.contains('/') => format!("ip -n {name} {args}"),
        _ => format!("nsenter --net={netns} ip {args}"),
    }
}

fn missing(what: String) -> CniError {
    CniError::dataplane(what)
}

pub fn run(conf: &NetConf, att: &Attachment) -> Result<()> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::invalid_config(
            "prevResult",
            "is missing: CHECK needs the result of ADD (the runtime passes it)",
        )
    })?;
    let mut want = from_prev_result(prev, att)?;
    match &conf.ipam {
        Ipam::Builtin(pools) => {
            for pool in pools {
                check_allocation(pool, att, &want)?;
                want.subnets.push(pool.subnet);
            }
            if let Some(extra) = want
                .ips
                .iter()
                .find(|ip| !pools.iter().any(|p| p.subnet.contains(**ip)))
            {
                return Err(CniError::store(format!(
                    "ADD reported {extra}, which is in none of the configured pools"
                )));
            }
        }
        Ipam::Delegated { plugin } => {
            delegate::exec(plugin, Command::Check, &conf.raw)?;
        }
    }
    let netns = Netns::open(&att.netns)?;
    let host_veth = dataplane::host_veth_name(
        &conf.host_veth_prefix,
        &attachment_hash(&att.container_id, &att.ifname),
    );
    let rt = runtime()?;
    rt.block_on(check_data_path(conf, att, &netns, &host_veth, &want))?;
    if conf.masquerade {
        if !want.subnets.is_empty() {
            for subnet in &want.subnets {
                Masquerade::for_pool(conf, *subnet).check()?;
            }
        } else {
            // Delegated IPAM: ADD installed the rules for the network the IPAM plugin
            // returned; CHECK has only the pod's address, so it finds that pool by its jump.
            for ip in &want.ips {
                Masquerade::installed_for(conf, *ip)?.check()?;
            }
        }
    }
    Ok(())
}

/// The pool's record for this attachment holds the address ADD reported for its family.
fn check_allocation(
    pool: &crate::config::PoolConfig,
    att: &Attachment,
    want: &Expected,
) -> Result<()> {
    let family = family_name(pool.subnet.ip());
    let store = Store::open_existing(pool).ok_or_else(|| {
        CniError::store(format!(
            "the store of pool {} does not exist under {}",
            pool.subnet,
            pool.data_dir.display()
        ))
    })?;
    let reported = want.ips.iter().find(|ip| pool.subnet.contains(**ip));
    let record = store
        .lock(LOCK_TIMEOUT)?
        .find(&att.container_id, &att.ifname)?;
    match (record, reported) {
        (Some(r), Some(ip)) if r.ip == *ip => Ok(()),
        (Some(r), Some(ip)) => Err(CniError::store(format!(
            "the store allocates {} to {}/{}, but ADD reported {ip}",
            r.ip, att.container_id, att.ifname
        ))),
        (_, None) => Err(CniError::invalid_config(
            "prevResult",
            format!("lists no {family} address from pool {}", pool.subnet),
        )),
        (None, Some(_)) => Err(CniError::store(format!(
            "no allocation for {}/{} in the {family} pool {} (see `ls {}`)",
            att.container_id,
            att.ifname,
            pool.subnet,
            store.dir().display()
        ))),
    }
}

async fn check_data_path(
    conf: &NetConf,
    att: &Attachment,
    netns: &Netns,
    host_veth: &str,
    want: &Expected,
) -> Result<()> {
    let (ifname, ns) = (att.ifname.as_str(), att.netns.as_str());
    let host = Netlink::connect()?;
    let pod = Netlink::connect_in(netns)?;

    // The pod's side.
    let link = pod.link_by_name(ifname).await?.ok_or_else(|| {
        missing(format!(
            "pod interface {ifname} is missing in {ns} (see `{}`)",
            in_pod(ns, "link")
        ))
    })?;
    let pod_index = link.header.index;
    if !dataplane::link_is_veth(&link) {
        return Err(missing(format!(
            "pod interface {ifname} in {ns} is not a veth (see `{}`)",
            in_pod(ns, &format!("-d link show {ifname}"))
        )));
    }
    let mac = dataplane::link_mac(&link)
        .map(|m| dataplane::format_mac(&m))
        .unwrap_or_default();
    if let Some(expected) = &want.pod_mac {
        if &mac != expected {
            return Err(missing(format!(
                "pod interface {ifname} has MAC {mac}, ADD reported {expected}"
            )));
        }
    }
    if !dataplane::link_is_up(&link) {
        return Err(missing(format!(
            "pod interface {ifname} is down (fix: `{}`)",
            in_pod(ns, &format!("link set {ifname} up"))
        )));
    }
    if let (Some(expected), Some(actual)) = (conf.mtu.or(want.mtu), dataplane::link_mtu(&link)) {
        if expected != actual {
            return Err(missing(format!(
                "pod interface {ifname} has MTU {actual}, expected {expected}"
            )));
        }
    }
    for &ip in &want.ips {
        let plen = dataplane::host_prefix(ip);
        if !pod.has_address(pod_index, ip, plen).await? {
            return Err(missing(format!(
                "address {ip}/{plen} is missing on {ifname} (see `{}`)",
                in_pod(ns, &format!("addr show {ifname}"))
            )));
        }
    }
    let has_v4 = want.ips.iter().any(IpAddr::is_ipv4);
    let has_v6 = want.ips.iter().any(IpAddr::is_ipv6);
    if has_v4 {
        let routes = pod.main_routes().await?;
        if !routes.iter().any(|r| {
            r.dst == GATEWAY
                && r.prefix == 32
                && r.oif == Some(pod_index)
                && r.scope == RouteScope::Link
        }) {
            return Err(missing(format!(
                "the pod has no route `{GATEWAY} dev {ifname} scope link` (see `{}`)",
                in_pod(ns, "route")
            )));
        }
        if !routes
            .iter()
            .any(|r| r.prefix == 0 && r.gateway == Some(GATEWAY) && r.oif == Some(pod_index))
        {
            return Err(missing(format!(
                "the pod has no default route via {GATEWAY} dev {ifname} (see `{}`)",
                in_pod(ns, "route")
            )));
        }
    }
    if has_v6
        && !pod
            .main_routes_of::<Ipv6Addr>()
            .await?
            .iter()
            .any(|r| r.prefix == 0 && r.gateway == Some(GATEWAY6) && r.oif == Some(pod_index))
    {
        return Err(missing(format!(
            "the pod has no IPv6 default route via {GATEWAY6} dev {ifname} (see `{}`)",
            in_pod(ns, "-6 route")
        )));
    }
    for &ip in &want.ips {
        let gw = dataplane::gateway_for(ip);
        match pod.neighbour(pod_index, gw).await? {
            Some((m, state)) if m == HOST_MAC && state == NeighbourState::Permanent => {}
            other => {
                return Err(missing(format!(
                    "the pod's neighbour entry {gw} -> {} is {} (see `{}`)",
                    dataplane::format_mac(&HOST_MAC),
                    match other {
                        Some((m, s)) => format!("{} ({s:?})", dataplane::format_mac(&m)),
                        None => "missing".into(),
                    },
                    in_pod(ns, if ip.is_ipv4() { "neigh" } else { "-6 neigh" })
                )))
            }
        }
    }

    // The node's side.
    let hlink = host.link_by_name(host_veth).await?.ok_or_else(|| {
        missing(format!(
            "host veth {host_veth} is missing on the node (see `ip link show {host_veth}`)"
        ))
    })?;
    let host_index = hlink.header.index;
    if dataplane::link_peer_index(&link) != Some(host_index) {
        return Err(missing(format!("pod interface {ifname} is not the peer of host veth {host_veth} (see `ip -d link show {host_veth}`)")));
    }
    if !dataplane::link_is_up(&hlink) {
        return Err(missing(format!(
            "host veth {host_veth} is down (fix: `ip link set {host_veth} up`)"
        )));
    }
    if dataplane::link_mac(&hlink).as_deref() != Some(&HOST_MAC[..]) {
        return Err(missing(format!(
            "host veth {host_veth} does not have MAC {}",
            dataplane::format_mac(&HOST_MAC)
        )));
    }
    let mut sysctls = Vec::new();
    if has_v4 {
        sysctls.extend([
            (format!("net/ipv4/conf/{host_veth}/proxy_arp"), "1"),
            (format!("net/ipv4/neigh/{host_veth}/proxy_delay"), "0"),
            (format!("net/ipv4/conf/{host_veth}/forwarding"), "1"),
            ("net/ipv4/ip_forward".to_string(), "1"),
        ]);
    }
    if has_v6 {
        sysctls.extend(
            host_ipv6_sysctls(host_veth)
                .into_iter()
                .take(HOST_IPV6_SYSCTLS_REQUIRED),
        );
        if !host
            .has_address(host_index, IpAddr::V6(GATEWAY6), 64)
            .await?
        {
            return Err(missing(format!(
                "host veth {host_veth} lacks the IPv6 gateway address {GATEWAY6}/64 (fix: `ip addr add {GATEWAY6}/64 dev {host_veth} nodad`)"
            )));
        }
    }
    for (key, value) in sysctls {
        let got = sysctl::read(&key);
        if got.as_deref() != Some(value) {
            let name = key.replace('/', ".");
            return Err(missing(format!(
                "sysctl {name} is {}, expected {value} (fix: `sysctl -w {name}={value}`)",
                got.unwrap_or_else(|| "missing".into())
            )));
        }
    }
    for &ip in &want.ips {
        let plen = dataplane::host_prefix(ip);
        let host_routes = host.routes_to_ip(ip, plen).await?;
        if !host_routes
            .iter()
            .any(|r| dataplane::route_oif(r) == Some(host_index))
        {
            return Err(missing(format!(
                "the node has no route {ip}/{plen} dev {host_veth} (fix: `ip route replace {ip}/{plen} dev {host_veth}`)"
            )));
        }
    }
    Ok(())
}
