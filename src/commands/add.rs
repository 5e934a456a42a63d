//! ADD: allocate, wire the pod, install masquerade; on any failure undo all of it.

use ipnetwork::Ipv4Network;
use serde_json::Value;
use std::net::Ipv4Addr;
use std::time::{SystemTime, UNIX_EPOCH};

use super::runtime;
use crate::cni::env::{Attachment, Command};
use crate::cni::error::{CniError, Code, Result};
use crate::cni::types::{AddResult, Interface, IpConfig, Route};
use crate::config::{Ipam, NetConf};
use crate::dataplane::{self, sysctl, Netlink, DEFAULT_MTU, GATEWAY, HOST_MAC};
use crate::ipam::store::LOCK_TIMEOUT;
use crate::ipam::{attachment_hash, delegate, PoolLock, Record, Store};
use crate::nat::{InstalledProbe, PoolNat};
use crate::netns::Netns;

/// What the data path looks like once wired.
struct Wired {
    host_veth: String,
    pod_mac: String,
    mtu: u32,
}

/// Where the pod's address came from, so a failed ADD can give it back.
enum Lease {
    Store(Store),
    Delegated(String),
}

pub fn run(conf: &NetConf, att: &Attachment) -> Result<Value> {
    // Validate the namespace before touching anything on the node.
    let netns = Netns::open(&att.netns)?;
    let host_veth = dataplane::host_veth_name(
        &conf.host_veth_prefix,
        &attachment_hash(&att.container_id, &att.ifname),
    );
    let (ip, subnet, lease) = match &conf.ipam {
        Ipam::Builtin(pool) => {
            let store = Store::open(pool)?;
            let template = Record {
                ip: Ipv4Addr::UNSPECIFIED,
                container_id: att.container_id.clone(),
                ifname: att.ifname.clone(),
                host_veth: host_veth.clone(),
                pod_namespace: att.pod.namespace.clone(),
                pod_name: att.pod.name.clone(),
                network: conf.name.clone(),
                netns: att.netns.clone(),
                created: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            };
            let (record, reused) = store.lock(LOCK_TIMEOUT)?.allocate(&template)?;
            crate::debug!(
                "allocated {} for {}/{} from pool {}{}",
                record.ip,
                att.container_id,
                att.ifname,
                pool.subnet,
                if reused {
                    " (kept from an earlier ADD)"
                } else {
                    ""
                }
            );
            (record.ip, pool.subnet, Lease::Store(store))
        }
        Ipam::Delegated { plugin } => {
            let result = delegate::exec(plugin, Command::Add, &conf.raw)?;
            let net = match result.as_ref().map(delegate::first_ipv4) {
                Some(Ok(net)) => net,
                failed => {
                    release_delegated(conf, plugin);
                    return Err(failed.and_then(|r| r.err()).unwrap_or_else(|| {
                        CniError::new(
                            Code::DelegatedIpam,
                            format!("IPAM plugin {plugin} printed no result"),
                        )
                    }));
                }
            };
            let subnet =
                Ipv4Network::new(net.network(), net.prefix()).expect("prefix came from a network");
            (net.ip(), subnet, Lease::Delegated(plugin.clone()))
        }
    };
    crate::crashpoint::here("add:allocated");
    let rt = runtime()?;
    let nat = pool_nat(conf, subnet);
    let probe = if conf.masquerade {
        Some(nat.probe())
    } else {
        None
    };
    let wired = rt
        .block_on(wire(conf, att, &netns, &host_veth, ip))
        .and_then(|w| ensure_nat(&nat, probe, &lease).map(|()| w));
    let wired = match wired {
        Ok(w) => w,
        Err(e) => {
            rollback(&rt, conf, &nat, &lease, att, &host_veth);
            return Err(e);
        }
    };
    let result = AddResult {
        interfaces: vec![
            Interface {
                name: wired.host_veth,
                mac: dataplane::format_mac(&HOST_MAC),
                mtu: Some(wired.mtu),
                sandbox: None,
            },
            Interface {
                name: att.ifname.clone(),
                mac: wired.pod_mac,
                mtu: Some(wired.mtu),
                sandbox: Some(att.netns.clone()),
            },
        ],
        ips: vec![IpConfig {
            address: ip,
            prefix: 32,
            gateway: Some(GATEWAY),
            interface: Some(1),
        }],
        routes: vec![Route {
            dst: "0.0.0.0/0".into(),
            gw: Some(GATEWAY),
        }],
        dns: conf.dns.clone(),
    };
    Ok(result.to_json(&conf.cni_version))
}

/// Gives a delegated address back; the spec asks for an IPAM DEL when ADD fails after it.
fn release_delegated(conf: &NetConf, plugin: &str) {
    if let Err(e) = delegate::exec(plugin, Command::Del, &conf.raw) {
        crate::error!("rollback: {e}");
    }
}

async fn wire(
    conf: &NetConf,
    att: &Attachment,
    netns: &Netns,
    host_veth: &str,
    ip: std::net::Ipv4Addr,
) -> Result<Wired> {
    let host = Netlink::connect()?;
    let pod = Netlink::connect_in(netns)?;
    let mtu = match conf.mtu {
        Some(m) => m,
        None => host.default_route_mtu().await?.unwrap_or(DEFAULT_MTU),
    };
    // A host veth of our name is a leftover of a crashed or retried ADD of this very
    // attachment: remove it (and with it its pod end) and start clean.
    if host.delete_link(host_veth).await? {
        crate::warn!("removed stale host veth {host_veth} left by an earlier ADD");
    }
    if pod.link_by_name(&att.ifname).await?.is_some() {
        return Err(CniError::dataplane(format!(
            "the pod namespace {} already has an interface named {} that routed-cni did not create; \
             another CNI plugin configured this pod, or CNI_IFNAME is wrong (see `ip -n <ns> link`)",
            att.netns, att.ifname
        )));
    }
    host.create_veth(host_veth, &att.ifname, netns, mtu).await?;
    crate::crashpoint::here("add:veth-created");

    // Host end: answer ARP for the gateway at once, and forward the pod's packets.
    // proxy_delay=0: the kernel otherwise delays proxy ARP replies by up to 0.8 s.
    sysctl::ensure(&format!("net/ipv4/conf/{host_veth}/proxy_arp"), "1")?;
    sysctl::ensure(&format!("net/ipv4/neigh/{host_veth}/proxy_delay"), "0")?;
    sysctl::ensure(&format!("net/ipv4/conf/{host_veth}/forwarding"), "1")?;
    sysctl::ensure("net/ipv4/ip_forward", "1")?;

    let pod_link = pod.link_by_name(&att.ifname).await?.ok_or_else(|| {
        CniError::dataplane(format!(
            "{} vanished from {} right after it was created",
            att.ifname, att.netns
        ))
    })?;
    let pod_index = pod_link.header.index;
    pod.add_address(pod_index, ip, 32).await?;
    pod.set_up(pod_index, &att.ifname).await?;
    pod.add_link_route(GATEWAY, 32, pod_index).await?;
    pod.add_default_route(GATEWAY, pod_index).await?;
    pod.add_permanent_neighbour(pod_index, GATEWAY, &HOST_MAC)
        .await?;
    crate::crashpoint::here("add:pod-configured");

    let host_link = host.link_by_name(host_veth).await?.ok_or_else(|| {
        CniError::dataplane(format!(
            "host veth {host_veth} vanished right after it was created"
        ))
    })?;
    host.add_host_route(ip, host_link.header.index, &conf.host_veth_prefix)
        .await?;
    Ok(Wired {
        host_veth: host_veth.to_string(),
        pod_mac: dataplane::link_mac(&pod_link)
            .map(|m| dataplane::format_mac(&m))
            .unwrap_or_default(),
        mtu,
    })
}

/// The masquerade rules for a pool; `nonMasqueradeCIDRs` defaults to the pool itself.
pub fn pool_nat(conf: &NetConf, subnet: Ipv4Network) -> PoolNat {
    let non_masquerade = if conf.non_masquerade_cidrs.is_empty() {
        vec![subnet]
    } else {
        conf.non_masquerade_cidrs.clone()
    };
    PoolNat {
        subnet,
        non_masquerade,
    }
}

/// `probe` is the `iptables -C` started before the netlink work (`None`: no masquerade).
/// Removes the pool's NAT rules once its last address is gone. Call with the pool lock held,
/// so no ADD can allocate in between.
pub fn drop_nat_if_empty(lock: &PoolLock, nat: &PoolNat) -> Result<()> {
    if lock.is_empty()? {
        nat.uninstall()?;
    }
    Ok(())
}

fn ensure_nat(nat: &PoolNat, probe: Option<Result<InstalledProbe>>, lease: &Lease) -> Result<()> {
    crate::crashpoint::here("add:before-nat");
    let Some(probe) = probe else {
        return Ok(());
    };
    if probe?.wait()? {
        return Ok(());
    }
    // First pod of the pool (or rules were lost): install under a lock, so a parallel ADD does
    // not race us and (built-in store) a DEL emptying the pool does not remove them under us.
    match lease {
        Lease::Store(store) => {
            let _lock = store.lock(LOCK_TIMEOUT)?;
            nat.install()
        }
        Lease::Delegated(_) => {
            let _lock = crate::nat::lock()?;
            nat.install()
        }
    }
}

/// Undoes a failed ADD: host veth (which takes the pod end and the /32 route with it), the
/// address, and the pool's NAT rules if the pool is now empty. Problems are logged: the
/// runtime gets the error that made the ADD fail.
fn rollback(
    rt: &tokio::runtime::Runtime,
    conf: &NetConf,
    nat: &PoolNat,
    lease: &Lease,
    att: &Attachment,
    host_veth: &str,
) {
    let undo_link = rt.block_on(async { Netlink::connect()?.delete_link(host_veth).await });
    if let Err(e) = undo_link {
        crate::error!("rollback: {e}");
    }
    match lease {
        Lease::Store(store) => {
            let undo_ip = store.lock(LOCK_TIMEOUT).and_then(|lock| {
                lock.release(&att.container_id, &att.ifname)?;
                drop_nat_if_empty(&lock, nat)
            });
            if let Err(e) = undo_ip {
                crate::error!("rollback: {e}");
            }
        }
        Lease::Delegated(plugin) => release_delegated(conf, plugin),
    }
}
