//! `routed-cni audit`: everything of ours on this node that no live allocation explains — host
//! veths, /32 and /128 routes into them, NAT jumps and chains (iptables and ip6tables) — and
//! allocations whose host veth is gone.
//! Exit 0 when the node is clean, 1 when something leaked.

use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use crate::config::{DEFAULT_DATA_DIR, DEFAULT_HOST_VETH_PREFIX};
use crate::dataplane::Netlink;
use crate::firewall::{Family, Installed};
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
/// `nat_tables` holds our masquerade as each family's nat table has it.
pub fn findings(
    records: &[(String, Record)],
    links: &HashMap<u32, String>,
    routes: &[(IpAddr, u32)],
    nat_tables: &[Installed],
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
    for nat in nat_tables {
        nat_findings(nat, &live_pools, &mut out);
    }
    out
}

fn nat_findings(nat: &Installed, live_pools: &HashSet<&str>, out: &mut Vec<String>) {
    let cmd = nat.program;
    for j in &nat.jumps {
        if !live_pools.contains(j.pool.as_str()) {
            out.push(format!("NAT jump to {} for pool {}: the pool has no allocation (remove: {cmd} -t nat -D POSTROUTING {})", j.chain, j.pool, j.rule.spec));
        }
    }
    for chain in &nat.chains {
        if !nat.jumps.iter().any(|j| j.chain == *chain) {
            out.push(format!("NAT chain {chain}: nothing jumps to it (remove: {cmd} -t nat -F {chain}; {cmd} -t nat -X {chain})"));
        }
    }
}

pub fn run(args: &[String]) -> i32 {
    let mut data_dir = PathBuf::from(DEFAULT_DATA_DIR);
    let mut prefix = DEFAULT_HOST_VETH_PREFIX.to_string();
    let mut as_json = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.clone().next()) {
            ("--json", _) => as_json = true,
            ("--data-dir", Some(d)) => {
                data_dir = PathBuf::from(d);
                it.next();
            }
            ("--host-veth-prefix", Some(p)) => {
                prefix = p.clone();
                it.next();
            }
            (other, _) => {
                eprintln!("routed-cni audit: unknown or incomplete argument {other:?}");
                return 2;
            }
        }
    }
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
    for family in Family::ALL {
        match Installed::read(family) {
            Ok(n) => nat.push(n),
            Err(e) => {
                eprintln!("routed-cni audit: {}", e.msg);
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
        let t = |rules: &str| vec![Installed::parse(Family::V4, rules)];
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
            Installed::parse(Family::V4, nat),
            Installed::parse(Family::V6, "-N RCNI-V6\n"),
        ];
        let f = findings(&v6, &links, &routes6, &tables, "rcni");
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[0].contains("fd00:10:244:1::9/128") && f[0].contains("no allocation"));
        assert!(f[1].contains("ip6tables -t nat -X RCNI-V6"));
    }
}
