//! `routed-cni doctor`: finds a pod through the store and walks its packet path on this node,
//! piece by piece, saying for each what it saw and, when a piece is broken, the command that
//! repairs it. Read-only, except that it asks the pod's kernel to resolve the gateway's MAC
//! when the pod has no entry for it (one ARP request, or neighbour solicitation, on the pod's
//! veth). A dual-stack pod is walked once per address, each walk in its family's terms.

mod checks;
pub mod filter;
pub mod iptables;
mod nft;
pub mod report;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::json;

pub use self::checks::Dest;
use self::checks::{Node, Target};
use self::iptables::PoolRules;
use self::report::PodReport;
use crate::dataplane::Netlink;
use crate::ipam::Unreadable;

/// Every step passed (warnings allowed).
pub const EXIT_HEALTHY: i32 = 0;
/// At least one step failed.
pub const EXIT_BROKEN: i32 = 1;
/// Bad arguments, or doctor could not look (store unreadable, no netlink).
pub const EXIT_USAGE: i32 = 2;
/// No allocation matches the pod asked for.
pub const EXIT_NOT_FOUND: i32 = 3;

/// Which allocations to walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select {
    All,
    Pod {
        namespace: Option<String>,
        name: String,
    },
    /// A container ID or a unique-enough prefix of one.
    Container(String),
    Netns(String),
}

/// What `routed-cni doctor` was asked (the cli layer builds it from flags).
#[derive(Debug, Clone)]
pub struct Options {
    pub select: Select,
    /// Also trace the route each side takes to this destination.
    pub to: Option<Dest>,
    pub data_dir: PathBuf,
    pub json: bool,
    /// The conflist the runtime loads and its CNI bin dir: whether every chained plugin is
    /// there is checked once for the node, before the pods.
    pub conflist: PathBuf,
    pub bin_dir: PathBuf,
    /// The local agent's health listener: `--to IP:PORT` asks it for NetworkPolicy's verdict.
    pub agent_addr: std::net::SocketAddr,
}

/// (device, inode) of a namespace file, to match `--netns /proc/<pid>/ns/net` against the
/// `/var/run/netns/cni-…` path the runtime gave.
fn ns_id(path: &str) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Every allocation of every pool under `data_dir`, with what its key file leads to, and the
/// records that cannot be read.
fn scan(data_dir: &Path) -> Result<(Vec<Target>, Vec<Unreadable>), String> {
    let mut out = Vec::new();
    let mut unreadable = Vec::new();
    for pool in crate::ipam::scan(data_dir).map_err(|e| e.msg)? {
        if let Some(e) = pool.error {
            return Err(format!("pool {}: {e}", pool.subnet));
        }
        unreadable.extend(pool.unreadable);
        for found in pool.records {
            out.push(Target {
                pool: pool.subnet,
                ip: found.record.ip,
                store_dir: pool.dir.clone(),
                record: found.record,
                key_finds: found.key_finds,
            });
        }
    }
    Ok((group_by_attachment(out), unreadable))
}

/// A dual-stack pod's addresses live in one pool per family: put each attachment's addresses
/// together, IPv4 first, in the order its first one was found.
fn group_by_attachment(targets: Vec<Target>) -> Vec<Target> {
    let key = |t: &Target| (t.record.container_id.clone(), t.record.ifname.clone());
    let mut order: Vec<(String, String)> = Vec::new();
    let mut groups: HashMap<(String, String), Vec<Target>> = HashMap::new();
    for t in targets {
        let k = key(&t);
        if !groups.contains_key(&k) {
            order.push(k.clone());
        }
        groups.entry(k).or_default().push(t);
    }
    order
        .into_iter()
        .flat_map(|k| {
            let mut g = groups.remove(&k).unwrap_or_default();
            g.sort_by_key(|t| t.ip.is_ipv6());
            g
        })
        .collect()
}

fn select(targets: Vec<Target>, s: &Select) -> Vec<Target> {
    match s {
        Select::All => targets,
        Select::Pod { namespace, name } => targets
            .into_iter()
            .filter(|t| {
                t.record.pod_name.as_deref() == Some(name.as_str())
                    && namespace
                        .as_ref()
                        .is_none_or(|ns| t.record.pod_namespace.as_deref() == Some(ns.as_str()))
            })
            .collect(),
        Select::Container(id) => {
            // An exact ID wins; otherwise a prefix, as `docker ps` and `crictl ps` shorten them.
            let exact = targets.iter().any(|t| t.record.container_id == *id);
            targets
                .into_iter()
                .filter(|t| {
                    if exact {
                        t.record.container_id == *id
                    } else {
                        t.record.container_id.starts_with(id.as_str())
                    }
                })
                .collect()
        }
        Select::Netns(path) => {
            let want = ns_id(path);
            targets
                .into_iter()
                .filter(|t| {
                    t.record.netns == *path
                        || (want.is_some()
                            && !t.record.netns.is_empty()
                            && ns_id(&t.record.netns) == want)
                })
                .collect()
        }
    }
}

fn describe(s: &Select) -> String {
    match s {
        Select::All => "--all".into(),
        Select::Pod {
            namespace: Some(ns),
            name,
        } => format!("--pod {ns}/{name}"),
        Select::Pod {
            namespace: None,
            name,
        } => format!("--pod {name}"),
        Select::Container(c) => format!("--container {c}"),
        Select::Netns(p) => format!("--netns {p}"),
    }
}

/// Runs `routed-cni doctor` and returns the exit code (`EXIT_*`).
pub fn run(o: Options) -> i32 {
    let fail = |msg: String| {
        if o.json {
            println!("{}", json!({"ok": false, "error": msg, "pods": []}));
        }
        eprintln!("routed-cni doctor: {msg}");
        EXIT_USAGE
    };
    let (all, unreadable) = match scan(&o.data_dir) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    // A record nobody can read may be the pod asked for: always shown; it makes `--all`
    // broken, since no walk can vouch for its address.
    let unreadable: Vec<String> = unreadable.iter().map(Unreadable::describe).collect();
    for u in &unreadable {
        eprintln!("✗ {u}");
    }
    let unreadable_broken = o.select == Select::All && !unreadable.is_empty();
    let pools: Vec<String> = {
        // A dual-stack pod's addresses come together, so one pool's entries are not adjacent.
        let mut p: Vec<String> = Vec::new();
        for t in &all {
            let pool = t.pool.to_string();
            if !p.contains(&pool) {
                p.push(pool);
            }
        }
        p
    };
    let targets = select(all, &o.select);
    if targets.is_empty() && o.select != Select::All {
        let msg = format!(
            "no allocation matches {} in {} ({}); `routed-cni list --data-dir {}` shows what there is",
            describe(&o.select),
            o.data_dir.display(),
            if pools.is_empty() {
                "no pools".to_string()
            } else {
                format!("pools: {}", pools.join(", "))
            },
            o.data_dir.display()
        );
        if o.json {
            println!(
                "{}",
                json!({"ok": false, "notFound": true, "error": msg, "pods": []})
            );
        }
        eprintln!("routed-cni doctor: {msg}");
        return EXIT_NOT_FOUND;
    }
    let node_steps = [checks::plugins::step(&o.conflist, &o.bin_dir)];
    let node_ok = node_steps.iter().all(|s| s.status != report::Status::Fail);
    let rt = match crate::dataplane::runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(e.msg),
    };
    let (net, links) = match rt.block_on(async {
        let net = Netlink::connect()?;
        let links = net.link_names().await?;
        Ok::<_, crate::cni::error::CniError>((net, links))
    }) {
        Ok(n) => n,
        Err(e) => return fail(e.msg),
    };
    let node = Node {
        rt: &rt,
        net: &net,
        links: &links,
        agent_addr: o.agent_addr,
    };
    // One read of the nat table per pool, however many pods it has.
    let mut nat: HashMap<String, Result<PoolRules, String>> = HashMap::new();
    let reports: Vec<PodReport> = targets
        .iter()
        .map(|t| {
            let rules = nat
                .entry(t.pool.to_string())
                .or_insert_with(|| PoolRules::read(t.pool));
            checks::check(&node, t, o.to, rules)
        })
        .collect();
    let ok = reports.iter().all(|r| r.ok) && !unreadable_broken && node_ok;
    if o.json {
        let doc = json!({"ok": ok, "dataDir": o.data_dir, "node": node_steps, "pods": reports, "unreadable": unreadable});
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("serializes")
        );
    } else {
        print!("{}", report::node_text(&node_steps));
        for r in &reports {
            println!();
            print!("{}", r.text());
        }
        if reports.is_empty() && unreadable.is_empty() {
            eprintln!("no allocations in {}", o.data_dir.display());
        } else if reports.len() > 1 {
            let broken = reports.iter().filter(|r| !r.ok).count();
            let mut pods: Vec<(&str, &str)> = reports
                .iter()
                .map(|r| (r.container_id.as_str(), r.ifname.as_str()))
                .collect();
            pods.dedup();
            if pods.len() == reports.len() {
                println!("\n{} pod(s) checked, {broken} broken", reports.len());
            } else {
                println!(
                    "\n{} pod(s) checked ({} addresses), {broken} address(es) broken",
                    pods.len(),
                    reports.len()
                );
            }
        }
    }
    if ok {
        EXIT_HEALTHY
    } else {
        EXIT_BROKEN
    }
}
