//! ADD: allocate, wire the pod, install masquerade; on any failure undo all of it.

use ipnetwork::IpNetwork;
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::cni::env::{Attachment, Command};
use crate::cni::error::{CniError, Code, Result};
use crate::cni::types::{AddResult, Interface, IpConfig, Route};
use crate::config::{Ipam, NetConf, PoolConfig};
use crate::dataplane::spec::{self, Place, PodSpec};
use crate::dataplane::{self, runtime, sysctl, Family, Netlink};
use crate::firewall::{PoolRules, Probe};
use crate::ipam::attachments::{self, Attachments};
use crate::ipam::inflight::{self, AddInFlight};
use crate::ipam::store::LOCK_TIMEOUT;
use crate::ipam::{attachment_hash, delegate, Record, Store};
use crate::netns::Netns;

/// What the data path looks like once wired.
struct Wired {
    host_veth: String,
    /// The spec's MAC of the node's end (the pod's is whatever the kernel gave it).
    host_mac: Option<String>,
    pod_mac: String,
    mtu: u32,
}

/// One address of the pod and the network it came from. `store` is set for the built-in IPAM,
/// so a failed ADD can give the address back and NAT installs can hold the pool lock.
struct Leased {
    ip: IpAddr,
    subnet: IpNetwork,
    store: Option<Store>,
    /// Held until the ADD returns, so a GC with an older list of attachments leaves it alone.
    in_flight: Option<AddInFlight>,
    /// The store found the pool empty under the lock that allocated this address: the pool's
    /// rules are to be installed, not probed.
    first: bool,
}

/// Where the pod's addresses came from.
struct Lease {
    addrs: Vec<Leased>,
    /// The delegated IPAM plugin, if one handed them out.
    delegated: Option<Delegated>,
}

/// Addresses from a delegated IPAM plugin, and our record of the attachment.
struct Delegated {
    plugin: String,
    records: Attachments,
    /// Held until the ADD returns, so a GC with an older list of attachments leaves the
    /// record alone.
    in_flight: AddInFlight,
}

fn allocation_template(conf: &NetConf, att: &Attachment, host_veth: &str) -> Record {
    Record {
        ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        container_id: att.container_id.clone(),
        ifname: att.ifname.clone(),
        host_veth: host_veth.to_string(),
        pod_namespace: att.pod.namespace.clone(),
        pod_name: att.pod.name.clone(),
        network: conf.name.clone(),
        netns: att.netns.clone(),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    }
}

/// One address from each pool, IPv4 first (the order every ADD and DEL takes the locks in).
/// If a later pool fails, the addresses already taken are given back.
fn allocate_builtin(
    conf: &NetConf,
    pools: &[PoolConfig],
    att: &Attachment,
    template: &Record,
) -> Result<Lease> {
    let mut lease = Lease {
        addrs: Vec::new(),
        delegated: None,
    };
    for pool in pools {
        let taken = Store::open(pool).and_then(|store| {
            let mark = inflight::begin_add(&store, &att.container_id, &att.ifname)?;
            let lock = store.lock(LOCK_TIMEOUT)?;
            let first = lock.is_empty()?;
            let (record, reused) = lock.allocate(template)?;
            drop(lock);
            Ok((store, mark, record, reused, first))
        });
        match taken {
            Ok((store, mark, record, reused, first)) => {
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
                lease.addrs.push(Leased {
                    ip: record.ip,
                    subnet: pool.subnet,
                    store: Some(store),
                    in_flight: Some(mark),
                    first,
                });
                // Dual-stack: the IPv4 address is held, the IPv6 one not yet.
                if pools.len() > 1 && lease.addrs.len() == 1 {
                    crate::crashpoint::here("add:first-family-allocated");
                }
            }
            Err(e) => {
                release(conf, &lease, att);
                return Err(e);
            }
        }
    }
    Ok(lease)
}

/// Runs the IPAM plugin's ADD, then records the attachment (addresses with their networks,
/// host veth) under the plugin's own `dataDir`, so audit, GC, list and DEL know it. The record
/// is written under the records' lock before any NAT is probed: a DEL that empties a subnet
/// decides under that lock, and so sees this pod.
fn allocate_delegated(
    conf: &NetConf,
    plugin: &str,
    att: &Attachment,
    template: &Record,
) -> Result<Lease> {
    let records = Attachments::open(&conf.data_dir)?;
    let in_flight = inflight::begin_add_in(&records.adding_dir(), &att.container_id, &att.ifname)?;
    let forget = || inflight::forget_in(&records.adding_dir(), &att.container_id, &att.ifname);
    let result = delegate::exec(plugin, Command::Add, &conf.raw).inspect_err(|_| forget())?;
    let nets = match result.as_ref().map(delegate::pod_addresses) {
        Some(Ok(nets)) => nets,
        failed => {
            release_delegated(conf, plugin);
            forget();
            return Err(failed.and_then(|r| r.err()).unwrap_or_else(|| {
                CniError::new(
                    Code::DelegatedIpam,
                    format!("IPAM plugin {plugin} printed no result"),
                )
            }));
        }
    };
    let record = attachments::Attachment {
        container_id: template.container_id.clone(),
        ifname: template.ifname.clone(),
        host_veth: template.host_veth.clone(),
        network: template.network.clone(),
        netns: template.netns.clone(),
        pod_namespace: template.pod_namespace.clone(),
        pod_name: template.pod_name.clone(),
        created: template.created,
        ips: nets.clone(),
    };
    if let Err(e) = records.lock().and_then(|l| l.write(&record)) {
        release_delegated(conf, plugin);
        forget();
        return Err(e);
    }
    Ok(Lease {
        addrs: nets
            .into_iter()
            .map(|net| Leased {
                ip: net.ip(),
                subnet: attachments::subnet_of(net),
                store: None,
                in_flight: None,
                first: false,
            })
            .collect(),
        delegated: Some(Delegated {
            plugin: plugin.to_string(),
            records,
            in_flight,
        }),
    })
}

/// Before anything exists: a pod whose namespace has NetworkPolicies gets no traffic until the
/// agent has installed its rules (policy/holdback.rs). Nothing to undo on a later failure: the
/// hold names a veth that then never carries a packet.
fn hold_back_for_policy(conf: &NetConf, att: &Attachment, host_veth: &str) -> Result<()> {
    let Some(ns) = att.pod.namespace.as_deref() else {
        return Ok(());
    };
    match crate::policy::holdback::hold_back(&conf.data_dir, ns, host_veth) {
        Ok(true) => {
            crate::debug!("namespace {ns} has NetworkPolicies: {host_veth} held back until the agent programs it");
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(e) => Err(crate::cni::error::CniError::new(
            crate::cni::error::Code::TryAgainLater,
            e,
        )),
    }
}

pub fn run(conf: &NetConf, att: &Attachment) -> Result<Value> {
    // Validate the namespace before touching anything on the node.
    let netns = Netns::open(&att.netns)?;
    let host_veth = dataplane::host_veth_name(
        &conf.host_veth_prefix,
        &attachment_hash(&att.container_id, &att.ifname),
    );
    hold_back_for_policy(conf, att, &host_veth)?;
    // Started before any address is taken: nothing that can fail may sit between allocation
    // and the rollback below (a runtime that cannot start used to leak the address).
    let rt = runtime()?;
    let template = allocation_template(conf, att, &host_veth);
    let lease = match &conf.ipam {
        Ipam::Builtin(pools) => allocate_builtin(conf, pools, att, &template)?,
        Ipam::Delegated { plugin } => allocate_delegated(conf, plugin, att, &template)?,
    };
    crate::crashpoint::here("add:allocated");
    let nats: Vec<PoolRules> = lease
        .addrs
        .iter()
        .map(|a| PoolRules::for_pool(conf, a.subnet))
        .collect();
    let ips: Vec<IpAddr> = lease.addrs.iter().map(|a| a.ip).collect();
    // A previous pod's connections of this address were forgotten by its DEL (del.rs). Not
    // again here: a ctnetlink dump walks the kernel's whole conntrack hash, about 8.5 ms on
    // this machine, which doubled a steady-state ADD (6.3 -> 16.2 ms, bench.sh --quick).
    // The pool's rules are seen to while the netlink work runs: the first pod's installed on
    // a thread of their own, anyone else's probed by one iptables run.
    let wired = std::thread::scope(|s| {
        let pending: Vec<Pending> = nats
            .iter()
            .zip(&lease.addrs)
            .map(|(nat, leased)| match &leased.store {
                Some(store) if leased.first => {
                    Pending::Installing(s.spawn(move || install_first(nat, store)))
                }
                _ => Pending::Probing(nat.probe()),
            })
            .collect();
        let wired = rt.block_on(wire(conf, att, &netns, &host_veth, &ips));
        // Every install is waited for, even when the wiring failed: the rollback must not
        // race one.
        let mut nat_result = Ok(());
        for ((nat, p), leased) in nats.iter().zip(pending).zip(&lease.addrs) {
            let done = match p {
                Pending::Installing(h) => h.join().expect("the install thread does not panic"),
                Pending::Probing(probe) if wired.is_ok() && nat_result.is_ok() => {
                    ensure_nat(nat, probe, leased, lease.delegated.as_ref())
                }
                Pending::Probing(_) => Ok(()),
            };
            nat_result = nat_result.and(done);
        }
        wired.and_then(|w| nat_result.map(|()| w))
    });
    let wired = match wired {
        Ok(w) => w,
        Err(e) => {
            rollback(rt, conf, &lease, att, &host_veth);
            return Err(e);
        }
    };
    for mark in lease.addrs.iter().filter_map(|a| a.in_flight.as_ref()) {
        mark.finished();
    }
    if let Some(d) = &lease.delegated {
        d.in_flight.finished();
    }
    let result = AddResult {
        interfaces: vec![
            Interface {
                name: wired.host_veth,
                mac: wired.host_mac.unwrap_or_default(),
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
        ips: ips
            .iter()
            .map(|&ip| IpConfig {
                address: ip,
                prefix: dataplane::host_prefix(ip),
                gateway: Some(dataplane::gateway_for(ip)),
                interface: Some(1),
            })
            .collect(),
        routes: ips
            .iter()
            .map(|&ip| Route {
                dst: dataplane::default_dst(ip).into(),
                gw: Some(dataplane::gateway_for(ip)),
            })
            .collect(),
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
    ips: &[IpAddr],
) -> Result<Wired> {
    let spec = PodSpec {
        host_veth,
        ifname: &att.ifname,
        ips,
    };
    let host = Netlink::connect()?;
    let pod = Netlink::connect_in(netns)?;
    // What the pod's traffic needs of the node's uplinks, asked before anything is written.
    // ADD fails naming the fix rather than changing an uplink itself: those flags are the
    // node's network configuration, cleared on purpose or owned by NetworkManager/networkd,
    // and a change made here would silently undo theirs (or be undone by them at the next
    // reconnect). For IPv4 a pod whose answers are dropped on the uplink is broken, and the
    // runtime retries a failed ADD until the node is fixed. For IPv6 this is also what keeps
    // ADD from cutting the node off: switching all.forwarding on where the uplink learns its
    // default route from router advertisements at accept_ra=1 removes that route at once.
    let mut v4_uplinks = None;
    for f in spec.families() {
        let uplinks = host.uplinks(f).await?;
        let faults = f.uplink_faults(&uplinks, sysctl::read);
        if !faults.is_empty() {
            let said: Vec<String> = faults.iter().map(ToString::to_string).collect();
            return Err(CniError::dataplane(said.join("; ")));
        }
        if f == Family::V4 {
            v4_uplinks = Some(uplinks);
        }
    }
    let v4_uplinks = match v4_uplinks {
        Some(u) => u,
        None if conf.mtu.is_none() => host.uplinks(Family::V4).await?,
        None => Vec::new(),
    };
    let mtu = spec::mtu(conf.mtu, &v4_uplinks);
    let (host_end, pod_end) = (spec.host_link(), spec.pod_link());
    // A host veth of our name is a leftover of a crashed or retried ADD of this very
    // attachment: remove it (and with it its pod end) and start clean.
    if host.delete_link(host_end.name).await? {
        crate::warn!("removed stale host veth {host_veth} left by an earlier ADD");
    }
    if pod.link_by_name(pod_end.name).await?.is_some() {
        return Err(CniError::dataplane(format!(
            "the pod namespace {} already has an interface named {} that routed-cni did not create; \
             another CNI plugin configured this pod, or CNI_IFNAME is wrong (see `ip -n <ns> link`)",
            att.netns, att.ifname
        )));
    }
    let pod_mac = dataplane::pod_mac(&attachment_hash(&att.container_id, &att.ifname));
    host.create_veth(host_end.name, pod_end.name, pod_mac, netns, mtu)
        .await?;
    crate::crashpoint::here("add:veth-created");

    // The node's sysctls before the pod end comes up (and with it the carrier), so the gateway
    // answers, and its IPv6 address is usable, the moment the pod is.
    for place in [Place::HostVeth, Place::Node] {
        for (s, key) in spec.sysctls(place) {
            sysctl::ensure(&key, s.value)?;
        }
    }
    let host_link = host.link_by_name(host_veth).await?.ok_or_else(|| {
        CniError::dataplane(format!(
            "host veth {host_veth} vanished right after it was created"
        ))
    })?;
    let host_index = host_link.header.index;
    for a in spec.host_addresses() {
        host.add_address(host_index, a.ip, a.prefix).await?;
    }

    let pod_link = pod.link_by_name(&att.ifname).await?.ok_or_else(|| {
        CniError::dataplane(format!(
            "{} vanished from {} right after it was created",
            att.ifname, att.netns
        ))
    })?;
    let pod_index = pod_link.header.index;
    let pod_sysctls = spec.sysctls(Place::Pod);
    if !pod_sysctls.is_empty() {
        // /proc/sys/net belongs to the namespace of the thread that opens it.
        let _in_pod = netns.enter()?;
        for (s, key) in pod_sysctls {
            sysctl::ensure(&key, s.value)?;
        }
    }
    for a in spec.pod_addresses() {
        pod.add_address(pod_index, a.ip, a.prefix).await?;
    }
    if pod_end.up {
        pod.set_up(pod_index, pod_end.name).await?;
    }
    for r in spec.pod_routes() {
        pod.add_spec_route(&r, pod_index).await?;
    }
    for n in spec.pod_neighbours() {
        pod.add_permanent_neighbour(pod_index, n.ip, &n.mac).await?;
    }
    crate::crashpoint::here("add:pod-configured");

    for r in spec.host_routes() {
        host.add_host_route(r.dst, host_index, &conf.host_veth_prefix)
            .await?;
    }
    Ok(Wired {
        host_veth: host_veth.to_string(),
        host_mac: host_end.mac.map(|m| dataplane::format_mac(&m)),
        pod_mac: dataplane::link_mac(&pod_link)
            .map(|m| dataplane::format_mac(&m))
            .unwrap_or_default(),
        mtu,
    })
}

/// What ADD does about a pool's rules while it wires the pod.
enum Pending<'s> {
    Installing(std::thread::ScopedJoinHandle<'s, Result<()>>),
    Probing(Result<Probe>),
}

/// The first pod of a pool: its rules are installed under the pool lock (so a second ADD that
/// probes meanwhile and finds nothing waits here, then finds them in the listing; and no DEL
/// can empty the pool under us), with no probe first.
fn install_first(nat: &PoolRules, store: &Store) -> Result<()> {
    crate::crashpoint::here("add:before-nat");
    let _lock = store.lock(LOCK_TIMEOUT)?;
    nat.install()
}

/// `probe` is the check of the pool's forward (and nat) jumps started before the netlink work.
fn ensure_nat(
    nat: &PoolRules,
    probe: Result<Probe>,
    leased: &Leased,
    delegated: Option<&Delegated>,
) -> Result<()> {
    crate::crashpoint::here("add:before-nat");
    if probe?.wait()? {
        return Ok(());
    }
    // First pod of the pool (or rules were lost): install under a lock, so a parallel ADD does
    // not race us and a DEL emptying the pool does not remove them under us.
    match (&leased.store, delegated) {
        (Some(store), _) => {
            let _lock = store.lock(LOCK_TIMEOUT)?;
            nat.install()
        }
        (None, Some(d)) => {
            let _lock = d.records.lock()?;
            nat.install()
        }
        (None, None) => unreachable!("an address comes from the store or a delegated plugin"),
    }
}

/// Gives back the built-in store's addresses of `lease`, dropping a pool's NAT rules when its
/// last address goes. Problems are logged: the caller is already failing.
fn release(conf: &NetConf, lease: &Lease, att: &Attachment) {
    for leased in &lease.addrs {
        let Some(store) = &leased.store else { continue };
        let nat = PoolRules::for_pool(conf, leased.subnet);
        let undo_ip = store.lock(LOCK_TIMEOUT).and_then(|lock| {
            inflight::forget(store, &att.container_id, &att.ifname);
            lock.release(&att.container_id, &att.ifname)?;
            nat.remove_if_pool_empty(&lock)
        });
        if let Err(e) = undo_ip {
            crate::error!("rollback: {e}");
        }
    }
}

/// Undoes a failed ADD: the addresses, a pool's NAT rules if the pool is now empty, and the
/// host veth (which takes the pod end and the host routes with it). Addresses first, as DEL
/// does, and after `rt` is gone: the failed steps' netlink sockets live on in its tasks, and
/// giving the addresses back must not lack a descriptor for them (an address lost is what no
/// later DEL finds). A delegated attachment's record goes last, after its veth, as in DEL: it
/// is what finds a leftover. Problems are logged: the runtime gets the error that made the ADD
/// fail.
fn rollback(
    rt: tokio::runtime::Runtime,
    conf: &NetConf,
    lease: &Lease,
    att: &Attachment,
    host_veth: &str,
) {
    drop(rt);
    match &lease.delegated {
        Some(d) => release_delegated(conf, &d.plugin),
        None => release(conf, lease, att),
    }
    let undo_link = runtime()
        .and_then(|rt| rt.block_on(async { Netlink::connect()?.delete_link(host_veth).await }));
    if let Err(e) = undo_link {
        crate::error!("rollback: {e}");
        return;
    }
    if let Some(d) = &lease.delegated {
        let forgotten = d.records.lock().and_then(|lock| {
            let (_, freed) = lock.release(&att.container_id, &att.ifname)?;
            inflight::forget_in(&d.records.adding_dir(), &att.container_id, &att.ifname);
            freed
                .into_iter()
                .try_for_each(|subnet| PoolRules::for_pool(conf, subnet).uninstall())
        });
        if let Err(e) = forgotten {
            crate::error!("rollback: {e}");
        }
    }
}
