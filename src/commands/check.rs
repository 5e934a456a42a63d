//! CHECK: verify every piece ADD made, in packet-path order, and name the first one missing
//! with the command that shows it. Routes that later chained plugins added are tolerated.

use ipnetwork::IpNetwork;
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::RouteScope;
use serde_json::Value;
use std::net::IpAddr;

use super::runtime;
use crate::cni::env::{Attachment, Command};
use crate::cni::error::{CniError, Result};
use crate::config::family_name;
use crate::config::{Ipam, NetConf};
use crate::dataplane::spec::{Need, Place, PodSpec, Sysctl};
use crate::dataplane::{self, sysctl, Family, Netlink, HOST_MAC};
use crate::firewall::PoolRules;
use crate::ipam::store::LOCK_TIMEOUT;
use crate::ipam::{attachment_hash, delegate, Store};
use crate::netns::{in_pod, Netns};

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
    // The forward accepts always, the masquerade when configured.
    if !want.subnets.is_empty() {
        for subnet in &want.subnets {
            PoolRules::for_pool(conf, *subnet).check()?;
        }
    } else {
        // Delegated IPAM: ADD installed the rules for the network the IPAM plugin
        // returned; CHECK has only the pod's address, so it finds that pool by its jump.
        for ip in &want.ips {
            PoolRules::installed_for(conf, *ip)?.check()?;
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
    let store = Store::open_existing(pool)?.ok_or_else(|| {
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
    let spec = PodSpec {
        host_veth,
        ifname,
        ips: &want.ips,
    };
    for a in spec.pod_addresses() {
        if !pod.has_address(pod_index, a.ip, a.prefix).await? {
            return Err(missing(format!(
                "address {}/{} is missing on {ifname} (see `{}`)",
                a.ip,
                a.prefix,
                in_pod(ns, &format!("addr show {ifname}"))
            )));
        }
    }
    for r in spec.pod_routes() {
        let family = Family::of(r.dst);
        let found = pod.main_routes_in(family).await?.iter().any(|have| {
            have.dst == r.dst
                && have.prefix == r.prefix
                && (r.gateway.is_none() || have.gateway == r.gateway)
                && have.oif == Some(pod_index)
                && (!r.scope_link || have.scope == RouteScope::Link)
        });
        if found {
            continue;
        }
        let see = in_pod(ns, &format!("{}route", family.ip_option()));
        return Err(missing(match r.gateway {
            // IPv4 kept its wording from before dual-stack; IPv6 says so.
            Some(gw) => format!(
                "the pod has no {}default route via {gw} dev {ifname} (see `{see}`)",
                if family.is_v6() { "IPv6 " } else { "" }
            ),
            None => format!(
                "the pod has no route `{} dev {ifname} scope link` (see `{see}`)",
                r.dst
            ),
        }));
    }
    for n in spec.pod_neighbours() {
        match pod.neighbour(pod_index, n.ip).await? {
            Some((m, state)) if m == n.mac && state == NeighbourState::Permanent => {}
            other => {
                return Err(missing(format!(
                    "the pod's neighbour entry {} -> {} is {} (see `{}`)",
                    n.ip,
                    dataplane::format_mac(&n.mac),
                    match other {
                        Some((m, s)) => format!("{} ({s:?})", dataplane::format_mac(&m)),
                        None => "missing".into(),
                    },
                    in_pod(ns, &format!("{}neigh", Family::of(n.ip).ip_option()))
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
    for a in spec.host_addresses() {
        if !host.has_address(host_index, a.ip, a.prefix).await? {
            return Err(missing(format!(
                "host veth {host_veth} lacks the IPv6 gateway address {ip}/{p} (fix: `ip addr add {ip}/{p} dev {host_veth} nodad`)",
                ip = a.ip,
                p = a.prefix
            )));
        }
    }
    // Only what the pod's traffic needs once ADD is done: an IPv6 pod is not held to
    // proxy_ndp or its veth's own forwarding (see the spec's Need).
    let required = |(s, _): &(&Sysctl, String)| s.need == Need::Required;
    let mut sysctls: Vec<_> = spec.sysctls(Place::HostVeth);
    sysctls.extend(spec.sysctls(Place::Node));
    sysctls.retain(required);
    let mut pod_sysctls = spec.sysctls(Place::Pod);
    pod_sysctls.retain(required);
    let in_ns = |s: &Sysctl, key: &str, got: Option<String>| {
        let name = key.replace('/', ".");
        let value = s.value;
        missing(format!(
            "sysctl {name} is {}, expected {value} (fix: `sysctl -w {name}={value}`)",
            got.unwrap_or_else(|| "missing".into())
        ))
    };
    for (s, key) in &sysctls {
        let got = sysctl::read(key);
        if got.as_deref() != Some(s.value) {
            return Err(in_ns(s, key, got));
        }
    }
    if !pod_sysctls.is_empty() {
        // /proc/sys/net belongs to the namespace of the thread that opens it.
        let _in_pod = netns.enter()?;
        for (s, key) in &pod_sysctls {
            let got = sysctl::read(key);
            if got.as_deref() != Some(s.value) {
                return Err(in_ns(s, key, got));
            }
        }
    }
    for r in spec.host_routes() {
        let (ip, plen) = (r.dst, r.prefix);
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
