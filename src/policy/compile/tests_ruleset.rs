//! ipBlock cases, which pods count as targets and peers, and the shape of the Ruleset itself:
//! chain sharing and names, set dedupe, the pod list.

use super::harness::*;
use super::{compile, LocalPod};
use crate::policy::eval::allows;
use crate::policy::model::PodKey;
use crate::policy::ruleset::Peers;
use serde_json::{json, Value};
use std::net::IpAddr;

fn egress_to(c: &mut Cluster, peers: Value) {
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": peers}],
        }),
    );
}

fn cidr(ip: IpAddr, prefix4: u8, prefix6: u8) -> String {
    let prefix = if ip.is_ipv4() { prefix4 } else { prefix6 };
    let net = ipnetwork::IpNetwork::new(ip, prefix).unwrap();
    format!("{}/{prefix}", net.network())
}

/// One ipBlock peer per family of `pod`, `prefix` wide, less the pod itself when `except`.
fn blocks(ns: &str, pod: &str, prefix4: u8, prefix6: u8, except: bool) -> Vec<Value> {
    ips_of(ns, pod)
        .into_iter()
        .map(|ip| {
            let me = cidr(ip, 32, 128);
            if except {
                json!({"ipBlock": {"cidr": cidr(ip, prefix4, prefix6), "except": [me]}})
            } else {
                json!({"ipBlock": {"cidr": cidr(ip, prefix4, prefix6)}})
            }
        })
        .collect()
}

#[test]
fn case34_egress_to_pod_ip_block() {
    let mut c = Cluster::model();
    egress_to(&mut c, json!(blocks("y", "b", 32, 128, false)));
    Expect::all(true)
        .set_where("x/a", "", false)
        .set("x/a", "y/b", true)
        .check(&c, Tcp, 80);
    // An ipBlock of one family says nothing about the other.
    egress_to(
        &mut c,
        json!([{"ipBlock": {"cidr": format!("{}/32", ip4("y", "b"))}}]),
    );
    let n1 = c.ruleset("n1");
    let (a, b) = (ips_of("x", "a"), ips_of("y", "b"));
    assert!(allows(&n1, a[0], Some("rcni-x-a"), b[0], None, Tcp, 80));
    assert!(!allows(&n1, a[1], Some("rcni-x-a"), b[1], None, Tcp, 80));
}

#[test]
fn case35_ip_block_with_except() {
    let mut c = Cluster::model();
    // /16 (v4) and /96 (v6) hold every pod of the model; x/b is excepted.
    egress_to(&mut c, json!(blocks("x", "b", 16, 96, true)));
    Expect::all(true)
        .set("x/a", "x/b", false)
        .check(&c, Tcp, 80);
}

#[test]
fn case36_ip_in_both_cidr_and_except_allowed_by_another_peer() {
    let mut c = Cluster::model();
    let mut peers = blocks("x", "b", 16, 96, true);
    egress_to(&mut c, json!(peers.clone()));
    Expect::all(true)
        .set("x/a", "x/b", false)
        .check(&c, Tcp, 80);
    // Except is per peer: another peer naming x/b's /32 lets it through.
    peers.extend(blocks("x", "b", 32, 128, false));
    egress_to(&mut c, json!(peers));
    Expect::all(true).check(&c, Tcp, 80);
    // Peers and pods merge into one set per rule, each address once.
    let n1 = c.ruleset("n1");
    assert_eq!(n1.address_sets.len(), 1);
    let set = n1.address_sets.values().next().unwrap();
    assert_eq!(
        set.v4,
        vec![("10.0.0.0".parse().unwrap(), "10.0.255.255".parse().unwrap())]
    );
}

#[test]
fn ip_block_reaches_addresses_selectors_never_do() {
    // The other node, a hostNetwork pod (the node's address), an outside client.
    let mut c = Cluster::model();
    let mut host = pod_json(
        "y",
        "host",
        json!({"pod": "a"}),
        "n2",
        &["192.168.0.2".parse().unwrap()],
    );
    host["spec"]["hostNetwork"] = json!(true);
    c.cache.upsert_pod(parse(host));
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {}}]}],
        }),
    );
    let n1 = c.ruleset("n1");
    let node2: IpAddr = "192.168.0.2".parse().unwrap();
    let a = ip4("x", "a");
    assert!(
        !allows(&n1, node2, None, a, Some("rcni-x-a"), Tcp, 80),
        "hostNetwork pod is no selector peer"
    );
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"ipBlock": {"cidr": "192.168.0.0/24"}}]}],
        }),
    );
    let n1 = c.ruleset("n1");
    assert!(allows(&n1, node2, None, a, Some("rcni-x-a"), Tcp, 80));
    assert!(!allows(
        &n1,
        ip4("y", "a"),
        None,
        a,
        Some("rcni-x-a"),
        Tcp,
        80
    ));
}

#[test]
fn chains_are_shared_per_group_of_policies_and_named_stably() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "all",
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
    );
    c.policy(
        "x",
        "only-a",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"ports": [{"port": 81}]}],
        }),
    );
    let n1 = c.ruleset("n1");
    // x/a: {all, only-a}; x/c: {all}: two groups, two chains.
    let (ca, cc) = (&n1.ingress["rcni-x-a"], &n1.ingress["rcni-x-c"]);
    assert_ne!(ca, cc);
    assert_eq!(n1.chains[ca].policies, vec!["x/all", "x/only-a"]);
    assert_eq!(n1.chains[cc].policies, vec!["x/all"]);
    for name in [ca, cc] {
        assert!(name.starts_with("ing-") && name.len() == 16, "{name}");
        assert!(name[4..].chars().all(|ch| ch.is_ascii_hexdigit()));
    }
    // Names depend on the policies only: the other node's chain for {all} is the same chain.
    let n2 = c.ruleset("n2");
    assert_eq!(&n2.ingress["rcni-x-b"], cc);
    // x/b is on n2: never a target on n1.
    assert!(!n1.ingress.contains_key("rcni-x-b"));
    // Same policy rules on both chains use one address set (x's pods).
    assert_eq!(n1.address_sets.len(), 1);
    // Stable across compiles, whatever else changes (here: a pod label elsewhere).
    c.relabel_pod("z", "c", json!({"pod": "c", "new": "1"}));
    assert_eq!(c.ruleset("n1"), n1);
}

#[test]
fn identical_rules_of_two_policies_become_one_rule_and_one_set() {
    let mut c = Cluster::model();
    for name in ["p1", "p2"] {
        c.policy("x", name, json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}]}],
        }));
    }
    let n1 = c.ruleset("n1");
    let chain = &n1.chains[&n1.ingress["rcni-x-a"]];
    assert_eq!(chain.rules.len(), 1, "{chain:?}");
    assert_eq!(n1.address_sets.len(), 1);
    let Peers::Set(set) = &chain.rules[0].peers else {
        panic!()
    };
    assert!(set.starts_with("peer-"));
    assert_eq!(
        n1.address_sets[set].v4.len(),
        1,
        "y/a..y/c are adjacent: one range"
    );
}

#[test]
fn pods_lists_every_known_local_pod_and_only_those() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    );
    let mut local = c.local("n1");
    // A veth the agent found whose pod the cache does not know yet: not computed.
    local.insert(
        PodKey::new("x", "new"),
        LocalPod {
            ifname: "rcni-x-new".into(),
            ips: vec![],
        },
    );
    // A hostNetwork pod has no veth of ours; were it handed over, it is still no pod of ours.
    let mut host = pod_json(
        "x",
        "host",
        json!({"pod": "a"}),
        "n1",
        &["192.168.0.1".parse().unwrap()],
    );
    host["spec"]["hostNetwork"] = json!(true);
    c.cache.upsert_pod(parse(host));
    local.insert(
        PodKey::new("x", "host"),
        LocalPod {
            ifname: "eth0".into(),
            ips: vec![],
        },
    );
    let rs = compile(&c.cache, &local);
    let ifs: Vec<&str> = rs.pods.keys().map(String::as_str).collect();
    assert_eq!(
        ifs,
        ["rcni-x-a", "rcni-x-c", "rcni-y-a", "rcni-y-c", "rcni-z-a", "rcni-z-c"]
    );
    assert_eq!(rs.pods["rcni-y-a"], ips_of("y", "a"));
    assert_eq!(
        rs.ingress.keys().collect::<Vec<_>>(),
        ["rcni-x-a", "rcni-x-c"]
    );
    // Spoofing: a pod sending with another pod's source address is dropped.
    assert!(!allows(
        &rs,
        ip4("y", "c"),
        Some("rcni-y-a"),
        ip4("z", "a"),
        Some("rcni-z-a"),
        Tcp,
        80
    ));
    assert!(allows(
        &rs,
        ip4("y", "a"),
        Some("rcni-y-a"),
        ip4("z", "a"),
        Some("rcni-z-a"),
        Tcp,
        80
    ));
}

#[test]
fn finished_host_network_and_addressless_pods_are_neither_targets_nor_peers() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {},
            "ingress": [{"from": [{"namespaceSelector": {}}]}],
        }),
    );
    let mut done = pod_json(
        "y",
        "done",
        json!({"pod": "a"}),
        "n1",
        &["10.0.9.1".parse().unwrap()],
    );
    done["status"]["phase"] = json!("Succeeded");
    c.cache.upsert_pod(parse(done));
    let mut pending = pod_json(
        "x",
        "pending",
        json!({"pod": "a"}),
        "n2",
        &["10.0.9.2".parse().unwrap()],
    );
    pending["status"] = json!({"phase": "Pending"});
    c.cache.upsert_pod(parse(pending));
    let mut failed = pod_json(
        "x",
        "failed",
        json!({"pod": "a"}),
        "n1",
        &["10.0.9.3".parse().unwrap()],
    );
    failed["status"]["phase"] = json!("Failed");
    c.cache.upsert_pod(parse(failed));
    let mut local = c.local("n1");
    local.insert(
        PodKey::new("x", "failed"),
        LocalPod {
            ifname: "rcni-x-failed".into(),
            ips: vec!["10.0.9.3".parse().unwrap()],
        },
    );
    let rs = compile(&c.cache, &local);
    assert!(
        !rs.ingress.contains_key("rcni-x-failed"),
        "finished pods are not targets"
    );
    let set = rs.address_sets.values().next().unwrap();
    let holds = |ip: &str| {
        let ip: std::net::Ipv4Addr = ip.parse().unwrap();
        set.v4.iter().any(|&(s, e)| s <= ip && ip <= e)
    };
    assert!(holds("10.0.2.1"));
    assert!(
        !holds("10.0.9.1") && !holds("10.0.9.2") && !holds("10.0.9.3"),
        "{set:?}"
    );
}

#[test]
fn a_local_pod_is_a_peer_at_its_local_addresses_before_the_api_has_them() {
    let mut c = Cluster::model();
    let mut fresh = pod_json(
        "x",
        "fresh",
        json!({"pod": "b"}),
        "n1",
        &["10.0.9.9".parse().unwrap()],
    );
    fresh["status"] = json!({"phase": "Pending"});
    c.cache.upsert_pod(parse(fresh));
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
        }),
    );
    let mut local = c.local("n1");
    let ip: IpAddr = "10.0.9.9".parse().unwrap();
    local.insert(
        PodKey::new("x", "fresh"),
        LocalPod {
            ifname: "rcni-x-fresh".into(),
            ips: vec![ip],
        },
    );
    let rs = compile(&c.cache, &local);
    assert!(allows(
        &rs,
        ip,
        Some("rcni-x-fresh"),
        ip4("x", "a"),
        Some("rcni-x-a"),
        Tcp,
        80
    ));
    assert_eq!(rs.pods["rcni-x-fresh"], vec![ip]);
}

#[test]
fn absent_and_empty_lists() {
    let mut c = Cluster::model();
    // Isolated for ingress with no ingress list: nothing in. The chain exists and is empty.
    c.policy(
        "x",
        "p",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"]}),
    );
    let n1 = c.ruleset("n1");
    assert!(n1.chains[&n1.ingress["rcni-x-a"]].rules.is_empty());
    Expect::all(true)
        .set_where("", "x/a", false)
        .check(&c, Tcp, 80);
    // from: [] is everyone.
    c.policy("x", "p", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [], "ports": []}]}));
    Expect::all(true).check(&c, Tcp, 80);
    // A selector peer that matches no pod allows nothing (and needs no set).
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "nobody"}}}]}],
        }),
    );
    Expect::all(true)
        .set_where("", "x/a", false)
        .check(&c, Tcp, 80);
    assert!(c.ruleset("n1").address_sets.is_empty());
}

#[test]
fn invalid_peers_and_unknown_namespaces_match_nothing() {
    let mut c = Cluster::model();
    for peer in [
        json!({}),
        json!({"ipBlock": {"cidr": "not-a-cidr"}}),
        json!({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["bad"]}}),
        json!({"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}),
        json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "Bogus"}]}}),
    ] {
        c.policy(
            "x",
            "p",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [peer.clone()]}],
            }),
        );
        let rs = c.rulesets();
        for from in all_pods() {
            assert!(
                from == "x/a" || !reach(&rs, &from, "x/a", Tcp, 80),
                "{peer} let {from} in"
            );
        }
    }
    // Namespace y not (yet) in the cache: no namespaceSelector can select it.
    let mut c2 = Cluster::model();
    assert!(c2.cache.delete_namespace("y"));
    c2.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {}}]}],
        }),
    );
    Expect::all(true)
        .set_where("y/", "x/a", false)
        .check(&c2, Tcp, 80);
}

#[test]
fn single_stack_pods_in_a_dual_stack_policy() {
    let mut c = Cluster::model();
    let v4only: IpAddr = "10.0.9.4".parse().unwrap();
    c.cache.upsert_pod(parse(pod_json(
        "y",
        "v4",
        json!({"pod": "b"}),
        "n2",
        &[v4only],
    )));
    c.policy("x", "p", json!({
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "b"}}}]}],
    }));
    let n1 = c.ruleset("n1");
    let set = n1.address_sets.values().next().unwrap();
    assert_eq!(set.v6.len(), 3, "x/b, y/b, z/b: {set:?}");
    assert!(allows(
        &n1,
        v4only,
        None,
        ip4("x", "a"),
        Some("rcni-x-a"),
        Tcp,
        80
    ));
}

#[test]
fn cost_grows_with_policies_not_pods() {
    // 2,000 pods in namespace "big" (1,000 of them on this node), 200 policies selecting
    // overlapping halves: the chains are one per distinct group, not per pod, and the peers
    // of consecutive addresses are a few ranges, not 2,000 elements.
    let mut c = Cluster::model();
    c.cache.upsert_namespace(parse(json!({
        "metadata": {"name": "big", "labels": {"kubernetes.io/metadata.name": "big"}}
    })));
    let mut local = std::collections::BTreeMap::new();
    for i in 0..2000u32 {
        let ip: IpAddr = std::net::Ipv4Addr::from(0x0a64_0000 + i).into();
        let name = format!("p{i}");
        let node = if i % 2 == 0 { "n1" } else { "n2" };
        let labels = json!({"half": (i % 4 < 2).to_string(), "all": "yes"});
        c.cache
            .upsert_pod(parse(pod_json("big", &name, labels, node, &[ip])));
        if node == "n1" {
            let lp = LocalPod {
                ifname: format!("rcni{i}"),
                ips: vec![ip],
            };
            local.insert(PodKey::new("big", &name), lp);
        }
    }
    for i in 0..200 {
        let half = (i % 2 == 0).to_string();
        c.policy(
            "big",
            &format!("pol{i}"),
            json!({
                "podSelector": {"matchLabels": {"half": half}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"all": "yes"}}}],
                             "ports": [{"port": 80 + i}]}],
            }),
        );
    }
    let started = std::time::Instant::now();
    let rs = compile(&c.cache, &local);
    eprintln!("compile: 2,009 pods, 200 policies: {:?}", started.elapsed());
    assert_eq!(rs.ingress.len(), 1000);
    // Pods p0, p4, p8... are half=true; p2, p6... half=false: two groups of 100 policies each.
    assert_eq!(rs.chains.len(), 2, "{:?}", rs.chains.keys());
    assert!(rs.chains.values().all(|ch| ch.rules.len() == 100));
    assert_eq!(rs.address_sets.len(), 1);
    assert_eq!(
        rs.address_sets.values().next().unwrap().v4.len(),
        1,
        "10.100.0.0-10.100.7.207"
    );
    let src: IpAddr = "10.100.0.1".parse().unwrap();
    let dst: IpAddr = "10.100.0.4".parse().unwrap();
    assert!(allows(&rs, src, None, dst, Some("rcni4"), Tcp, 80));
    assert!(!allows(&rs, src, None, dst, Some("rcni4"), Tcp, 81));
    assert!(allows(
        &rs,
        src,
        None,
        "10.100.0.2".parse().unwrap(),
        Some("rcni2"),
        Tcp,
        81
    ));
}

#[test]
fn many_policies_allowing_the_same_ports_make_one_rule_with_one_set() {
    let mut c = Cluster::model();
    // Three policies selecting x/a, each letting another pod in on TCP 80, and one on TCP 81.
    for (name, from) in [("p1", "b"), ("p2", "c"), ("p3", "a")] {
        c.policy(
            "y",
            name,
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "x"}},
                                       "podSelector": {"matchLabels": {"pod": from}}}],
                             "ports": [{"port": 80}]}],
            }),
        );
    }
    c.policy(
        "y",
        "p4",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"port": 81}]}],
        }),
    );
    let n1 = c.ruleset("n1");
    let chain = &n1.chains[&n1.ingress["rcni-y-a"]];
    assert_eq!(chain.rules.len(), 2, "{:?}", chain.rules);
    // Only the merged and the port-81 sets are in the table, not the three that fed the union.
    let used: Vec<&String> = chain
        .rules
        .iter()
        .filter_map(|r| match &r.peers {
            Peers::Set(s) => Some(s),
            Peers::All => None,
        })
        .collect();
    assert_eq!(
        n1.address_sets.len(),
        used.len(),
        "{:?}",
        n1.address_sets.keys()
    );
    Expect::all(true)
        .set_where("", "y/a", false)
        .set("x/a", "y/a", true)
        .set("x/b", "y/a", true)
        .set("x/c", "y/a", true)
        .check(&c, Tcp, 80);
}
