//! `routed-cni list`: the allocations of every pool in the store, and the attachments a
//! delegated IPAM plugin gave addresses to (marked "delegated"), with pod, container, host
//! veth and whether the host veth exists on this node.

use serde_json::json;
use std::path::PathBuf;

use crate::dataplane::Netlink;

/// Follows the pool of a delegated attachment's row: the IPAM plugin, not our store, holds it.
const DELEGATED: &str = "(delegated)";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The store: one directory per pool.
    pub data_dir: PathBuf,
    pub json: bool,
}

/// Prints every allocation under `o.data_dir`; returns the exit code (1 when a pool could not be
/// read).
pub fn run(o: &Options) -> i32 {
    let (data_dir, as_json) = (&o.data_dir, o.json);
    let pools = match crate::ipam::scan(data_dir) {
        Ok(pools) => pools,
        Err(e) => {
            eprintln!("routed-cni list: {e}");
            return 1;
        }
    };
    let rt = match crate::dataplane::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("routed-cni list: {e}");
            return 1;
        }
    };
    let host = rt.block_on(async { Netlink::connect() }).ok();
    let mut rows = Vec::new();
    let mut status = 0;
    let mut unreadable = Vec::new();
    for pool in pools {
        if let Some(e) = &pool.error {
            eprintln!("routed-cni list: pool {}: {e}", pool.name);
            status = 1;
            continue;
        }
        for u in pool.unreadable {
            // Shown, never skipped: its address stays taken until a person looks.
            eprintln!("routed-cni list: {}", u.describe());
            status = 1;
            unreadable.push((pool.name.clone(), u));
        }
        for r in pool.records.into_iter().map(|f| f.record) {
            let alive = match (&host, r.host_veth.is_empty()) {
                (Some(h), false) => rt
                    .block_on(h.link_by_name(&r.host_veth))
                    .ok()
                    .flatten()
                    .is_some(),
                _ => false,
            };
            rows.push((pool.name.clone(), r, alive));
        }
    }
    // Delegated attachments: one row per address, the network it came in as the pool.
    match crate::ipam::attachments::scan(data_dir) {
        Ok((found, bad)) => {
            for a in &found {
                let alive = host
                    .as_ref()
                    .and_then(|h| rt.block_on(h.link_by_name(&a.host_veth)).ok().flatten())
                    .is_some();
                for (pool, r) in a.allocations() {
                    rows.push((format!("{pool} {DELEGATED}"), r, alive));
                }
            }
            for u in bad {
                eprintln!("routed-cni list: {}", u.describe());
                status = 1;
            }
        }
        Err(e) => {
            eprintln!("routed-cni list: delegated attachments: {e}");
            status = 1;
        }
    }
    if as_json {
        let doc: Vec<_> = rows
            .iter()
            .map(|(pool, r, alive)| match pool.strip_suffix(DELEGATED) {
                Some(p) => json!({"pool": p.trim_end(), "delegated": true, "record": r, "hostVethPresent": alive}),
                None => json!({"pool": pool, "record": r, "hostVethPresent": alive}),
            })
            .chain(unreadable.iter().map(|(pool, u)| {
                json!({"pool": pool, "ip": u.ip, "unreadable": u.reason, "path": u.path})
            }))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("serializes")
        );
    } else {
        // Columns as wide as their longest entry: IPv6 pools and addresses run long.
        let pool_w = rows
            .iter()
            .map(|(p, _, _)| p.len())
            .max()
            .unwrap_or(0)
            .max(18);
        let ip_w = rows
            .iter()
            .map(|(_, r, _)| r.ip.to_string().len())
            .max()
            .unwrap_or(0)
            .max(15);
        println!(
            "{:<pool_w$} {:<ip_w$} {:<32} {:<15} {:<6} CONTAINER",
            "POOL", "IP", "POD", "HOST VETH", "ALIVE"
        );
        for (pool, r, alive) in &rows {
            let pod = format!(
                "{}/{}",
                r.pod_namespace.as_deref().unwrap_or("-"),
                r.pod_name.as_deref().unwrap_or("-")
            );
            println!(
                "{pool:<pool_w$} {:<ip_w$} {pod:<32} {:<15} {:<6} {}/{}",
                r.ip.to_string(),
                r.host_veth,
                if *alive { "yes" } else { "NO" },
                r.container_id,
                r.ifname
            );
        }
        for (pool, u) in &unreadable {
            println!(
                "{pool:<pool_w$} {:<ip_w$} {:<32} {:<15} {:<6} unreadable record {}",
                u.ip.to_string(),
                "?",
                "?",
                "?",
                u.path.display()
            );
        }
        eprintln!("{} allocation(s) in {}", rows.len(), data_dir.display());
    }
    status
}
