//! `routed-cni audit`: everything of ours on this node that no live allocation explains — host
//! veths, /32 and /128 routes into them, NAT jumps and chains (iptables and ip6tables) — and
//! allocations whose host veth is gone.
//! Exit 0 when the node is clean, 1 when something leaked.

use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use crate::dataplane::Netlink;
use crate::ipam::store::{Store, LOCK_TIMEOUT};
use crate::ipam::Record;

/// The pool directories under `data_dir` (each holds a `lock`).
pub fn pool_dirs(data_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs: Vec<_> = match std::fs::read_dir(data_dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("lock").exists())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    dirs.sort();
    Ok(dirs)
}

/// "10.244.1.0-24" -> "10.244.1.0/24".
pub fn pool_name(dir: &Path) -> String {
    dir.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("?")
        .replacen('-', "/", 1)
}

/// Every record of every pool, read under each pool's lock.
pub fn all_records(data_dir: &Path) -> Result<Vec<(String, Record)>, String> {
    let mut out = Vec::new();
    for dir in
        pool_dirs(data_dir).map_err(|e| format!("cannot read {}: {e}", data_dir.display()))?
    {
        let pool = pool_name(&dir);
        let records = Store::at(dir)
            .lock(LOCK_TIMEOUT)
            .and_then(|l| l.records())
            .map_err(|e| format!("pool {pool}: {e}"))?;
        out.extend(records.into_iter().map(|r| (pool.clone(), r)));
    }
    Ok(out)
}

/// Finds what leaked. `routes` are the host routes (/32 and /128) with their output link;
/// `nat_tables` pairs a command (`iptables`, `ip6tables`) with its `-t nat -S` output.
pub fn findings(
    records: &[(String, Record)],
    links: &HashMap<u32, String>,
    routes: &[(IpAddr, u32)],
    nat_tables: &[(&str, String)],
    prefix: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    let veths: HashSet<&str> = records.iter().map(|(_, r)| r.host_veth.as_str()).collect();
    let by_ip: HashMap<IpAddr, &Record> = records.iter().map(|(_, r)| (r.ip, r)).collect();
    let present: HashSet<&str> = links.values().map(String::as_str).collect();
    let mut ours: Vec<&String> = links.values().filter(|n| n.starts_with(prefix)).collect();
    ours.sort();
    for name in ours {
        if !veths.contains(name.as_str()) {
            out.push(format!(
                "host veth {name}: no allocation explains it (remove: ip link del {name})"
            ));
        }
    }
    for (ip, oif) in routes {
        let Some(dev) = links.get(oif).filter(|n| n.starts_with(prefix)) else {
            continue;
        };
        let plen = crate::dataplane::host_prefix(*ip);
        match by_ip.get(ip) {
            Some(r) if r.host_veth == *dev => {}
            Some(r) => out.push(format!("route {ip}/{plen} dev {dev}: the allocation of {ip} names {}", r.host_veth)),
            None => out.push(format!("route {ip}/{plen} dev {dev}: no allocation for {ip} (remove: ip route del {ip}/{plen} dev {dev})")),
        }
    }
    for (pool, r) in records {
        if !present.contains(r.host_veth.as_str()) {
            out.push(format!(
                "allocation {} in pool {pool} ({}/{}): its host veth {} is gone, the pod is dead (release: routed-cni GC or DEL)",
                r.ip, r.container_id, r.ifname, r.host_veth
            ));
        }
    }
    let live_pools: HashSet<&str> = records.iter().map(|(p, _)| p.as_str()).collect();
    for (cmd, nat_rules) in nat_tables {
        nat_findings(cmd, nat_rules, &live_pools, &mut out);
    }
    out
}

fn nat_findings(cmd: &str, nat_rules: &str, live_pools: &HashSet<&str>, out: &mut Vec<String>) {
    let mut jumped = HashSet::new();
    for line in nat_rules
        .lines()
        .filter(|l| l.starts_with("-A POSTROUTING") && l.contains("routed-cni pool "))
    {
        let pool = line
            .split("routed-cni pool ")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or("");
        let chain = line.rsplit_once("-j ").map(|(_, c)| c.trim()).unwrap_or("");
        jumped.insert(chain.to_string());
        if !live_pools.contains(pool) {
            out.push(format!("NAT jump to {chain} for pool {pool}: the pool has no allocation (remove: {cmd} -t nat -D {})", &line[3..]));
        }
    }
    for line in nat_rules.lines().filter(|l| l.starts_with("-N RCNI-")) {
        let chain = &line[3..];
        if !jumped.contains(chain) {
            out.push(format!("NAT chain {chain}: nothing jumps to it (remove: {cmd} -t nat -F {chain}; {cmd} -t nat -X {chain})"));
        }
    }
}

/// What `routed-cni audit` was asked (the cli layer builds it from flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub data_dir: PathBuf,
    /// Host veths are named this plus a hash of the container ID.
    pub host_veth_prefix: String,
    pub json: bool,
}

/// Runs `routed-cni audit`: exit 0 clean, 1 leaks found, 2 could not look.
pub fn run(o: Options) -> i32 {
    let Options {
        data_dir,
        host_veth_prefix: prefix,
        json: as_json,
    } = o;
    let records = match all_records(&data_dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("routed-cni audit: {e}");
            return 2;
        }
    };
    let seen = crate::commands::runtime().and_then(|rt| {
        rt.block_on(async {
            let host = Netlink::connect()?;
            let links = host.link_names().await?;
            let mut routes: Vec<(IpAddr, u32)> = Vec::new();
            for r in host.main_routes_of::<Ipv4Addr>().await? {
                routes.extend(
                    r.oif
                        .filter(|_| r.prefix == 32)
                        .map(|o| (IpAddr::V4(r.dst), o)),
                );
            }
            for r in host.main_routes_of::<Ipv6Addr>().await? {
                routes.extend(
                    r.oif
                        .filter(|_| r.prefix == 128)
                        .map(|o| (IpAddr::V6(r.dst), o)),
                );
            }
            Ok((links, routes))
        })
    });
    let (links, routes) = match seen {
        Ok(s) => s,
        Err(e) => {
            eprintln!("routed-cni audit: {e}");
            return 2;
        }
    };
    let mut nat = Vec::new();
    for cmd in ["iptables", "ip6tables"] {
        match std::process::Command::new(cmd)
            .args(["-t", "nat", "-S", "--wait"])
            .output()
        {
            Ok(o) if o.status.success() => {
                nat.push((cmd, String::from_utf8_lossy(&o.stdout).into_owned()))
            }
            Ok(o) => {
                eprintln!(
                    "routed-cni audit: {cmd} -t nat -S: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                return 2;
            }
            Err(e) => {
                eprintln!("routed-cni audit: run {cmd}: {e}");
                return 2;
            }
        }
    }
    let found = findings(&records, &links, &routes, &nat, &prefix);
    if as_json {
        println!("{}", json!({"allocations": records.len(), "leaks": found}));
    } else {
        for f in &found {
            println!("LEAK {f}");
        }
        println!("{} allocation(s), {} leak(s)", records.len(), found.len());
    }
    i32::from(!found.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ip: &str, veth: &str) -> (String, Record) {
        (
            "10.244.1.0/24".into(),
            Record {
                ip: ip.parse().unwrap(),
                container_id: "c".into(),
                ifname: "eth0".into(),
                host_veth: veth.into(),
                pod_namespace: None,
                pod_name: None,
                network: "n".into(),
                netns: String::new(),
                created: 0,
            },
        )
    }

    #[test]
    fn clean_node_has_no_findings_and_each_leak_is_named() {
        let records = vec![rec("10.244.1.2", "rcniaaaaaaaaaaa")];
        let links = HashMap::from([(1, "lo".to_string()), (7, "rcniaaaaaaaaaaa".to_string())]);
        let routes = vec![("10.244.1.2".parse().unwrap(), 7)];
        let nat = "-P POSTROUTING ACCEPT\n-N RCNI-AB\n-A POSTROUTING -s 10.244.1.0/24 -m comment --comment \"routed-cni pool 10.244.1.0/24\" -j RCNI-AB\n";
        let t = |rules: &str| vec![("iptables", rules.to_string())];
        assert!(findings(&records, &links, &routes, &t(nat), "rcni").is_empty());

        let links2 = HashMap::from([
            (7, "rcniaaaaaaaaaaa".to_string()),
            (8, "rcnibbbbbbbbbbb".to_string()),
        ]);
        let routes2 = vec![
            ("10.244.1.2".parse().unwrap(), 7),
            ("10.244.1.9".parse().unwrap(), 8),
        ];
        let nat2 = format!("{nat}-N RCNI-OLD\n");
        let f = findings(&records, &links2, &routes2, &t(&nat2), "rcni");
        assert_eq!(f.len(), 3, "{f:?}");
        assert!(f[0].contains("rcnibbbbbbbbbbb"));
        assert!(f[1].contains("10.244.1.9/32"));
        assert!(f[2].contains("RCNI-OLD"));
        let f = findings(&records, &HashMap::new(), &[], &t(nat), "rcni");
        assert!(
            f.iter()
                .any(|l| l.contains("host veth rcniaaaaaaaaaaa is gone")),
            "{f:?}"
        );
        let f = findings(&[], &HashMap::new(), &[], &t(nat), "rcni");
        assert!(f.iter().any(|l| l.contains("NAT jump to RCNI-AB")), "{f:?}");

        // IPv6: a /128 into one of our veths without an allocation, an ip6tables chain alone.
        let mut v6 = records.clone();
        v6.push((
            "fd00:10:244:1::/64".into(),
            rec("fd00:10:244:1::2", "rcniaaaaaaaaaaa").1,
        ));
        let routes6 = vec![
            ("fd00:10:244:1::2".parse().unwrap(), 7),
            ("fd00:10:244:1::9".parse().unwrap(), 7),
        ];
        let tables = vec![
            ("iptables", nat.to_string()),
            ("ip6tables", "-N RCNI-V6\n".to_string()),
        ];
        let f = findings(&v6, &links, &routes6, &tables, "rcni");
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[0].contains("fd00:10:244:1::9/128") && f[0].contains("no allocation"));
        assert!(f[1].contains("ip6tables -t nat -X RCNI-V6"));
    }
}
