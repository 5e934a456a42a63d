//! `routed-cni audit`: everything of ours on this node that no live allocation explains — host
//! veths, /32 and /128 routes into them, NAT jumps and chains (iptables and ip6tables) — and
//! allocations whose host veth is gone. Allocations are the built-in store's pools and our
//! records of delegated attachments (`<dataDir>/delegated`). What only an unreadable record may
//! explain is reported as such, with no command to delete it.
//! Exit 0 when the node is clean, 1 when something leaked or cannot be vouched for.

use serde_json::json;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::dataplane::Netlink;
use crate::firewall::{Family, Installed};
use crate::ipam::{attachments, Record};
use crate::leaks::{self, Doubt, NodeState};

/// Each pool's readable records, with the pool's name.
pub type PoolRecords = Vec<(String, Record)>;

/// A record that exists but cannot be read: a line for people, and what it may explain.
pub type Unreadables = Vec<(String, Doubt)>;

/// Every record of every pool, read under each pool's lock, and every delegated attachment's
/// (one per address, its subnet as pool); and the records that exist but cannot be read.
pub fn all_records(data_dir: &Path) -> Result<(PoolRecords, Unreadables), String> {
    let (mut out, mut unreadable) = (Vec::new(), Vec::new());
    for pool in crate::ipam::scan(data_dir).map_err(|e| e.msg)? {
        if let Some(e) = pool.error {
            return Err(format!("pool {}: {e}", pool.name));
        }
        out.extend(
            pool.records
                .into_iter()
                .map(|f| (pool.name.clone(), f.record)),
        );
        unreadable.extend(pool.unreadable.into_iter().map(|u| {
            let doubt = Doubt {
                record: u.path.clone(),
                ip: Some(u.ip),
                attachment: u.attachment.clone(),
            };
            (u.describe(), doubt)
        }));
    }
    let (delegated, bad) = attachments::scan(data_dir).map_err(|e| e.msg)?;
    out.extend(
        delegated
            .iter()
            .flat_map(attachments::Attachment::allocations),
    );
    unreadable.extend(bad.into_iter().map(|u| {
        let doubt = Doubt {
            record: u.path.clone(),
            ip: None,
            attachment: Some(u.hash.clone()),
        };
        (u.describe(), doubt)
    }));
    Ok((out, unreadable))
}

/// Finds what leaked: what `leaks::find` reports on the node, then NAT leftovers; and apart,
/// what only a record in `doubts` may explain. `nat_tables` holds our masquerade as each
/// family's nat table has it.
pub fn findings(
    records: &[(String, Record)],
    doubts: &[Doubt],
    node: &NodeState,
    nat_tables: &[Installed],
) -> (Vec<String>, Vec<String>) {
    let (leaked, doubted): (Vec<_>, Vec<_>) = leaks::find(node, records, doubts)
        .into_iter()
        .partition(leaks::Leak::is_leak);
    let mut out: Vec<String> = leaked.iter().map(ToString::to_string).collect();
    let live_pools = leaks::live_pools(records);
    for nat in nat_tables {
        nat_findings(nat, &live_pools, &mut out);
    }
    (out, doubted.iter().map(ToString::to_string).collect())
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
    let (records, unreadable) = match all_records(&data_dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("routed-cni audit: {e}");
            return 2;
        }
    };
    let seen = crate::dataplane::runtime().and_then(|rt| {
        rt.block_on(async { NodeState::observe(&Netlink::connect()?, &prefix).await })
    });
    let node = match seen {
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
    let (lines, doubts): (Vec<String>, Vec<Doubt>) = unreadable.into_iter().unzip();
    let (found, unexplained) = findings(&records, &doubts, &node, &nat);
    // Unreadable records are not leaks, but nobody can vouch for them either: say so, and
    // do not call the node clean.
    if as_json {
        println!(
            "{}",
            json!({"allocations": records.len(), "leaks": found, "unexplained": unexplained,
                   "unreadable": lines})
        );
    } else {
        for f in &found {
            println!("LEAK {f}");
        }
        for u in &unexplained {
            println!("UNEXPLAINED {u}");
        }
        for u in &lines {
            println!("UNREADABLE {u}");
        }
        println!("{} allocation(s), {} leak(s)", records.len(), found.len());
    }
    i32::from(!found.is_empty() || !lines.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leaks::HostLink;
    use std::net::IpAddr;

    fn rec(ip: &str, veth: &str) -> (String, Record) {
        crate::leaks::test_record(ip, veth)
    }

    /// Links named rcni<11 hex> are ours here, as `is_our_veth` says of veths named so.
    fn node(links: &[(u32, &str)], routes: &[(IpAddr, u32)]) -> NodeState {
        NodeState {
            links: links
                .iter()
                .map(|&(i, n)| {
                    let ours = crate::dataplane::owned::is_our_veth_name(n, "rcni");
                    (
                        i,
                        HostLink {
                            name: n.into(),
                            ours,
                        },
                    )
                })
                .collect(),
            routes: routes.to_vec(),
        }
    }

    #[test]
    fn clean_node_has_no_findings_and_each_leak_is_named() {
        let records = vec![rec("10.244.1.2", "rcniaaaaaaaaaaa")];
        let links = [(1, "lo"), (7, "rcniaaaaaaaaaaa")];
        let routes = vec![("10.244.1.2".parse().unwrap(), 7)];
        let nat = "-P POSTROUTING ACCEPT\n-N RCNI-AB\n-A POSTROUTING -s 10.244.1.0/24 -m comment --comment \"routed-cni pool 10.244.1.0/24\" -j RCNI-AB\n";
        let t = |rules: &str| vec![Installed::parse(Family::V4, rules)];
        assert!(findings(&records, &[], &node(&links, &routes), &t(nat))
            .0
            .is_empty());

        let links2 = [(7, "rcniaaaaaaaaaaa"), (8, "rcnibbbbbbbbbbb")];
        let routes2 = vec![
            ("10.244.1.2".parse().unwrap(), 7),
            ("10.244.1.9".parse().unwrap(), 8),
        ];
        let nat2 = format!("{nat}-N RCNI-OLD\n");
        let f = findings(&records, &[], &node(&links2, &routes2), &t(&nat2)).0;
        assert_eq!(f.len(), 3, "{f:?}");
        assert!(f[0].contains("rcnibbbbbbbbbbb"));
        assert!(f[1].contains("10.244.1.9/32"));
        assert!(f[2].contains("RCNI-OLD"));
        let f = findings(&records, &[], &node(&[], &[]), &t(nat)).0;
        assert!(
            f.iter()
                .any(|l| l.contains("host veth rcniaaaaaaaaaaa is gone")),
            "{f:?}"
        );
        let f = findings(&[], &[], &node(&[], &[]), &t(nat)).0;
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
        let f = findings(&v6, &[], &node(&links, &routes6), &tables).0;
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[0].contains("fd00:10:244:1::9/128") && f[0].contains("no allocation"));
        assert!(f[1].contains("ip6tables -t nat -X RCNI-V6"));
    }
}
