//! Things of ours on this node that no live allocation explains: host veths (by the one
//! ownership predicate, `dataplane::owned`), /32 and /128 routes into them, and allocations
//! whose host veth is gone. `routed-cni audit` reports all of it; GC deletes the veths among it
//! that route an address of its own pools. NAT leftovers are the firewall's to list; audit adds
//! them using `live_pools`. Delegated attachments come in as records of the same shape (one
//! per address, the subnet as pool). A record that exists but cannot be read may explain a
//! veth (named by its attachment) or a route (by its address): those are reported as
//! unexplained, never as leaks with a command that would delete a live pod's interface.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use crate::cni::error::Result;
use crate::dataplane::{self, owned, Netlink};
use crate::ipam::Record;

/// A link on the node: its name and whether it is one of our host veths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLink {
    pub name: String,
    pub ours: bool,
}

/// What the node has: links by index and its host routes (/32, /128) with their output link.
#[derive(Debug, Clone, Default)]
pub struct NodeState {
    pub links: HashMap<u32, HostLink>,
    pub routes: Vec<(IpAddr, u32)>,
}

impl NodeState {
    /// Reads links and host routes of the main table.
    pub async fn observe(host: &Netlink, prefix: &str) -> Result<NodeState> {
        let mut links = HashMap::new();
        for link in host.links().await? {
            if let Some(name) = dataplane::link_name(&link) {
                let ours = owned::is_our_veth(&link, prefix);
                links.insert(link.header.index, HostLink { name, ours });
            }
        }
        let mut routes = Vec::new();
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
        Ok(NodeState { links, routes })
    }

    fn our_link(&self, index: u32) -> Option<&str> {
        self.links
            .get(&index)
            .filter(|l| l.ours)
            .map(|l| l.name.as_str())
    }
}

/// A record that exists but cannot be read, and what it may explain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doubt {
    pub record: PathBuf,
    /// Its address, when its file name says it (built-in store).
    pub ip: Option<IpAddr>,
    /// Its attachment hash, when a key file or its own name says it: the host veth's name
    /// ends with the first 11 characters.
    pub attachment: Option<String>,
}

impl Doubt {
    fn may_explain_veth(&self, name: &str) -> bool {
        self.attachment
            .as_deref()
            .and_then(|h| h.get(..11))
            .is_some_and(|h| name.ends_with(h))
    }
}

/// One thing that no allocation explains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leak {
    /// A host veth of ours no allocation names, with the host routes into it.
    Veth { name: String, routes: Vec<IpAddr> },
    /// A host route into one of our veths: no allocation has the address (`owner` None), or
    /// the allocation names another veth.
    Route {
        ip: IpAddr,
        dev: String,
        owner: Option<String>,
    },
    /// An allocation whose host veth is gone: the pod is dead.
    Allocation { pool: String, record: Record },
    /// A veth of ours (`route` None) or a route into one that no readable record explains but
    /// an unreadable one may: not a leak until a person has looked at the record.
    Unexplained {
        dev: String,
        route: Option<IpAddr>,
        record: PathBuf,
    },
}

impl Leak {
    /// True for what is certainly a leak; false for what an unreadable record may explain.
    pub fn is_leak(&self) -> bool {
        !matches!(self, Leak::Unexplained { .. })
    }
}

impl std::fmt::Display for Leak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Leak::Veth { name, .. } => write!(
                f,
                "host veth {name}: no allocation explains it (remove: ip link del {name})"
            ),
            Leak::Route { ip, dev, owner } => {
                let plen = dataplane::host_prefix(*ip);
                match owner {
                    Some(v) => write!(f, "route {ip}/{plen} dev {dev}: the allocation of {ip} names {v}"),
                    None => write!(f, "route {ip}/{plen} dev {dev}: no allocation for {ip} (remove: ip route del {ip}/{plen} dev {dev})"),
                }
            }
            Leak::Unexplained { dev, route, record } => {
                let what = match route {
                    Some(ip) => format!("route {ip}/{} dev {dev}", dataplane::host_prefix(*ip)),
                    None => format!("host veth {dev}"),
                };
                write!(
                    f,
                    "{what}: unexplained because record {} is unreadable; it may belong to a live pod: \
                     fix or remove that record before removing anything",
                    record.display()
                )
            }
            Leak::Allocation { pool, record: r } => write!(
                f,
                "allocation {} in pool {pool} ({}/{}): its host veth {} is gone, the pod is dead (release: routed-cni GC or DEL)",
                r.ip, r.container_id, r.ifname, r.host_veth
            ),
        }
    }
}

/// Everything in `node` that `records` (pool name, record) do not explain: veths first (by
/// name), then routes, then dead allocations. What only a record in `doubts` may explain is
/// `Leak::Unexplained`.
pub fn find(node: &NodeState, records: &[(String, Record)], doubts: &[Doubt]) -> Vec<Leak> {
    let explained: HashSet<&str> = records.iter().map(|(_, r)| r.host_veth.as_str()).collect();
    let by_ip: HashMap<IpAddr, &Record> = records.iter().map(|(_, r)| (r.ip, r)).collect();
    let present: HashSet<&str> = node.links.values().map(|l| l.name.as_str()).collect();
    let mut out = Vec::new();
    let mut veths: BTreeMap<&str, Vec<IpAddr>> = node
        .links
        .values()
        .filter(|l| l.ours && !explained.contains(l.name.as_str()))
        .map(|l| (l.name.as_str(), Vec::new()))
        .collect();
    for (ip, oif) in &node.routes {
        if let Some(routes) = node.our_link(*oif).and_then(|n| veths.get_mut(n)) {
            routes.push(*ip);
        }
    }
    let doubt_of = |dev: &str, ip: Option<IpAddr>| {
        doubts
            .iter()
            .find(|d| d.may_explain_veth(dev) || (ip.is_some() && d.ip == ip))
    };
    out.extend(veths.into_iter().map(|(name, routes)| {
        // A veth whose routes lead to an unreadable record's address is in doubt too.
        let doubt =
            doubt_of(name, None).or_else(|| routes.iter().find_map(|ip| doubt_of(name, Some(*ip))));
        match doubt {
            Some(d) => Leak::Unexplained {
                dev: name.to_string(),
                route: None,
                record: d.record.clone(),
            },
            None => Leak::Veth {
                name: name.to_string(),
                routes,
            },
        }
    }));
    for (ip, oif) in &node.routes {
        let Some(dev) = node.our_link(*oif) else {
            continue;
        };
        match (by_ip.get(ip), doubt_of(dev, Some(*ip))) {
            (Some(r), _) if r.host_veth == dev => {}
            (None, Some(d)) => out.push(Leak::Unexplained {
                dev: dev.to_string(),
                route: Some(*ip),
                record: d.record.clone(),
            }),
            (owner, _) => out.push(Leak::Route {
                ip: *ip,
                dev: dev.to_string(),
                owner: owner.map(|r| r.host_veth.clone()),
            }),
        }
    }
    for (pool, r) in records {
        if !present.contains(r.host_veth.as_str()) {
            out.push(Leak::Allocation {
                pool: pool.clone(),
                record: r.clone(),
            });
        }
    }
    out
}

/// The pools that hold at least one allocation: their NAT rules are live.
pub fn live_pools(records: &[(String, Record)]) -> HashSet<&str> {
    records.iter().map(|(p, _)| p.as_str()).collect()
}

/// A record in pool 10.244.1.0/24 for `ip` and its host veth, for the tests of this module
/// and of audit.
#[cfg(test)]
pub(crate) fn test_record(ip: &str, veth: &str) -> (String, Record) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ip: &str, veth: &str) -> (String, Record) {
        test_record(ip, veth)
    }

    fn node(links: &[(u32, &str, bool)], routes: &[(&str, u32)]) -> NodeState {
        NodeState {
            links: links
                .iter()
                .map(|&(i, n, ours)| {
                    (
                        i,
                        HostLink {
                            name: n.into(),
                            ours,
                        },
                    )
                })
                .collect(),
            routes: routes
                .iter()
                .map(|&(ip, i)| (ip.parse().unwrap(), i))
                .collect(),
        }
    }

    #[test]
    fn only_links_that_are_ours_can_leak() {
        let records = vec![rec("10.244.1.2", "rcniaaaaaaaaaaa")];
        // `rcnimine` starts with the prefix but is not ours: neither it nor its route leaks.
        let n = node(
            &[
                (1, "lo", false),
                (7, "rcniaaaaaaaaaaa", true),
                (8, "rcnimine", false),
                (9, "rcnibbbbbbbbbbb", true),
            ],
            &[("10.244.1.2", 7), ("10.244.1.8", 8), ("10.244.1.9", 9)],
        );
        let leaks = find(&n, &records, &[]);
        assert_eq!(
            leaks,
            vec![
                Leak::Veth {
                    name: "rcnibbbbbbbbbbb".into(),
                    routes: vec!["10.244.1.9".parse().unwrap()]
                },
                Leak::Route {
                    ip: "10.244.1.9".parse().unwrap(),
                    dev: "rcnibbbbbbbbbbb".into(),
                    owner: None
                },
            ]
        );
        assert!(leaks[1].to_string().contains("10.244.1.9/32"));
        let gone = find(&node(&[], &[]), &records, &[]);
        assert!(matches!(&gone[..], [Leak::Allocation { .. }]), "{gone:?}");
        assert!(gone[0]
            .to_string()
            .contains("host veth rcniaaaaaaaaaaa is gone"));
    }

    #[test]
    fn what_an_unreadable_record_may_explain_is_not_a_leak() {
        let hash = crate::ipam::attachment_hash("c", "eth0");
        let veth = format!("rcni{}", &hash[..11]);
        let n = node(
            &[(7, &veth, true), (9, "rcnibbbbbbbbbbb", true)],
            &[("10.244.1.2", 7), ("10.244.1.9", 9)],
        );
        // By the key's attachment: the veth and its route.
        let by_key = Doubt {
            record: "/s/10.244.1.2".into(),
            ip: None,
            attachment: Some(hash.clone()),
        };
        let leaks = find(&n, &[], &[by_key]);
        assert_eq!(leaks.len(), 4, "{leaks:?}");
        assert!(!leaks[0].is_leak() && leaks[0].to_string().contains(&veth));
        assert!(leaks[0]
            .to_string()
            .contains("record /s/10.244.1.2 is unreadable"));
        assert!(
            !leaks[0].to_string().contains("ip link del"),
            "{}",
            leaks[0]
        );
        // The unrelated veth is still a leak, with its remedy.
        assert!(leaks[1].is_leak() && leaks[1].to_string().contains("ip link del rcnibbbbbbbbbbb"));
        assert!(!leaks[2].is_leak() && !leaks[2].to_string().contains("ip route del"));
        assert!(leaks[3].is_leak());
        // By the record's address alone (no key leads to it): the route, and the veth it goes into.
        let by_ip = Doubt {
            record: "/s/10.244.1.2".into(),
            ip: Some("10.244.1.2".parse().unwrap()),
            attachment: None,
        };
        let leaks = find(&n, &[], &[by_ip]);
        assert_eq!(leaks.iter().filter(|l| l.is_leak()).count(), 2, "{leaks:?}");
        assert!(leaks
            .iter()
            .all(|l| l.is_leak() || l.to_string().contains(&veth)));
    }
}
