//! `routed-cni list`: the allocations of every pool in the store, with pod, container, host
//! veth and whether the host veth exists on this node.

use serde_json::json;
use std::path::PathBuf;

use crate::dataplane::Netlink;
use crate::ipam::store::{Store, LOCK_TIMEOUT};

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
    let pools = match std::fs::read_dir(data_dir) {
        Ok(entries) => {
            let mut dirs: Vec<_> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.join("lock").exists())
                .collect();
            dirs.sort();
            dirs
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            eprintln!("routed-cni list: cannot read {}: {e}", data_dir.display());
            return 1;
        }
    };
    let rt = match crate::commands::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("routed-cni list: {e}");
            return 1;
        }
    };
    let host = rt.block_on(async { Netlink::connect() }).ok();
    let mut rows = Vec::new();
    let mut status = 0;
    for dir in pools {
        let pool = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .replacen('-', "/", 1);
        let store = Store::at(dir.clone());
        let records = match store.lock(LOCK_TIMEOUT).and_then(|l| l.records()) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("routed-cni list: pool {pool}: {e}");
                status = 1;
                continue;
            }
        };
        for r in records {
            let alive = match (&host, r.host_veth.is_empty()) {
                (Some(h), false) => rt
                    .block_on(h.link_by_name(&r.host_veth))
                    .ok()
                    .flatten()
                    .is_some(),
                _ => false,
            };
            rows.push((pool.clone(), r, alive));
        }
    }
    if as_json {
        let doc: Vec<_> = rows
            .iter()
            .map(|(pool, r, alive)| json!({"pool": pool, "record": r, "hostVethPresent": alive}))
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
        eprintln!("{} allocation(s) in {}", rows.len(), data_dir.display());
    }
    status
}
