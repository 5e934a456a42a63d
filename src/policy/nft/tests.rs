//! Rendering and reading without nft: what the batch says. tests/policy_nft.rs proves with
//! packets what the kernel makes of it.

use super::read;
use super::render::{render, Names};
use super::*;
use crate::policy::ruleset::{
    AddressSet, Chain, Peers, PortSet, PortSpec, Ports, Protocol, Rule, Ruleset,
};
use serde_json::Value;
use std::collections::BTreeSet;

fn commands(rs: &Ruleset, names: &Names) -> Vec<Value> {
    let r = render(rs, names).expect("render");
    let v: Value = serde_json::from_str(&r.json).unwrap();
    v["nftables"].as_array().unwrap().clone()
}

/// Every command of `verb` on object kind `kind`.
fn find<'a>(cmds: &'a [Value], verb: &str, kind: &str) -> Vec<&'a Value> {
    cmds.iter().filter_map(|c| c.get(verb)?.get(kind)).collect()
}

fn one_chain(rule: Rule) -> Ruleset {
    let mut rs = Ruleset::default();
    rs.chains.insert(
        "ing-a".into(),
        Chain {
            rules: vec![rule],
            policies: vec!["x/allow".into()],
        },
    );
    rs.ingress.insert("rcni00000000001".into(), "ing-a".into());
    rs.pods
        .insert("rcni00000000001".into(), vec!["10.0.0.2".parse().unwrap()]);
    rs
}

fn rules_of<'a>(cmds: &'a [Value], chain: &str) -> Vec<&'a Value> {
    find(cmds, "add", "rule")
        .into_iter()
        .filter(|r| r["chain"] == chain)
        .collect()
}

#[test]
fn sctp_is_protocol_132_and_never_tcp() {
    let rs = one_chain(Rule {
        peers: Peers::All,
        ports: Ports::Listed(vec![PortSpec {
            protocol: Protocol::Sctp,
            range: Some((80, 80)),
        }]),
    });
    let cmds = commands(&rs, &Names::default());
    let rules = rules_of(&cmds, "ing-a");
    assert_eq!(
        rules.len(),
        2,
        "one allow rule and the final drop: {rules:?}"
    );
    let text = rules[0]["expr"].to_string();
    assert!(
        text.contains(r#""key":"l4proto"}},"op":"==","right":132"#),
        "{text}"
    );
    assert!(!text.contains(":6}") && !text.contains("tcp"), "{text}");
}

#[test]
fn ports_group_by_protocol_and_a_portless_spec_matches_the_whole_protocol() {
    let spec = |protocol, range| PortSpec { protocol, range };
    let rs = one_chain(Rule {
        peers: Peers::All,
        ports: Ports::Listed(vec![
            spec(Protocol::Tcp, Some((80, 80))),
            spec(Protocol::Tcp, Some((8000, 8080))),
            spec(Protocol::Tcp, Some((81, 81))),
            spec(Protocol::Udp, Some((53, 53))),
            spec(Protocol::Udp, None),
        ]),
    });
    let cmds = commands(&rs, &Names::default());
    let rules = rules_of(&cmds, "ing-a");
    assert_eq!(rules.len(), 3, "tcp, udp, drop: {rules:?}");
    let tcp = rules[0]["expr"].to_string();
    // 80 and 81 merge into one range; 8000-8080 stays.
    assert!(
        tcp.contains(r#"{"set":[{"range":[80,81]},{"range":[8000,8080]}]}"#),
        "{tcp}"
    );
    let udp = rules[1]["expr"].to_string();
    assert!(
        udp.contains("17") && !udp.contains("dport"),
        "UDP with no port is all of UDP: {udp}"
    );
}

#[test]
fn a_peer_set_matches_only_the_families_it_has_addresses_of() {
    let mut rs = one_chain(Rule {
        peers: Peers::Set("peers-a".into()),
        ports: Ports::All,
    });
    rs.address_sets.insert(
        "peers-a".into(),
        AddressSet {
            v4: vec![("10.0.0.5".parse().unwrap(), "10.0.0.5".parse().unwrap())],
            v6: vec![],
        },
    );
    let cmds = commands(&rs, &Names::default());
    let rules = rules_of(&cmds, "ing-a");
    assert_eq!(rules.len(), 2, "{rules:?}");
    let text = rules[0]["expr"].to_string();
    assert!(
        text.contains(r#"{"field":"saddr","protocol":"ip"}"#) && text.contains("@peers-a-4"),
        "{text}"
    );
    // Both family sets exist (so a later change is an element update), the v6 one empty.
    let sets: BTreeSet<&str> = find(&cmds, "add", "set")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(
        sets.contains("peers-a-4") && sets.contains("peers-a-6"),
        "{sets:?}"
    );
    let elems: Vec<&str> = find(&cmds, "add", "element")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(!elems.contains(&"peers-a-6"), "{elems:?}");
}

#[test]
fn egress_chains_match_the_destination_and_named_ports_the_destination_too() {
    let mut rs = Ruleset::default();
    rs.chains.insert(
        "egr-a".into(),
        Chain {
            rules: vec![Rule {
                peers: Peers::Set("to".into()),
                ports: Ports::Named("http".into()),
            }],
            policies: vec![],
        },
    );
    rs.egress.insert("rcni00000000001".into(), "egr-a".into());
    let v6: std::net::Ipv6Addr = "fd00::5".parse().unwrap();
    rs.address_sets.insert(
        "to".into(),
        AddressSet {
            v4: vec![("10.0.0.5".parse().unwrap(), "10.0.0.5".parse().unwrap())],
            v6: vec![(v6, v6)],
        },
    );
    let mut ports = PortSet::default();
    ports
        .v4
        .insert(("10.0.0.5".parse().unwrap(), Protocol::Tcp, 8080));
    rs.port_sets.insert("http".into(), ports);
    let cmds = commands(&rs, &Names::default());
    let rules = rules_of(&cmds, "egr-a");
    // v4 peers x v4 named ports; v6 peers have no v6 named port: no rule.
    assert_eq!(rules.len(), 2, "{rules:?}");
    let text = rules[0]["expr"].to_string();
    assert!(
        text.contains(
            r#"{"left":{"payload":{"field":"daddr","protocol":"ip"}},"op":"==","right":"@to-4"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains("@http-4") && !text.contains("saddr"),
        "{text}"
    );
    let el = find(&cmds, "add", "element");
    let http = el.iter().find(|e| e["name"] == "http-4").unwrap();
    assert_eq!(
        http["elem"],
        serde_json::json!([{"concat": ["10.0.0.5", 6, 8080]}])
    );
}

#[test]
fn pending_loses_exactly_the_programmed_pods_and_is_never_flushed() {
    let mut rs = one_chain(Rule {
        peers: Peers::All,
        ports: Ports::All,
    });
    rs.pods.insert("rcni00000000002".into(), vec![]);
    let cmds = commands(&rs, &Names::default());
    for kind in ["set", "map"] {
        for f in find(&cmds, "flush", kind) {
            assert_ne!(f["name"], PENDING, "pending flushed: {f}");
        }
    }
    let pods = serde_json::json!(["rcni00000000001", "rcni00000000002"]);
    let adds: Vec<_> = find(&cmds, "add", "element")
        .into_iter()
        .filter(|e| e["name"] == PENDING)
        .collect();
    let dels: Vec<_> = find(&cmds, "delete", "element")
        .into_iter()
        .filter(|e| e["name"] == PENDING)
        .collect();
    assert_eq!((adds.len(), dels.len()), (1, 1));
    assert_eq!((&adds[0]["elem"], &dels[0]["elem"]), (&pods, &pods));
    // The delete comes after the add, or it would fail for a pod ADD never listed.
    let pos = |verb: &str| {
        cmds.iter().position(|c| {
            c.pointer(&format!("/{verb}/element/name")) == Some(&Value::from(PENDING))
        })
    };
    assert!(pos("add") < pos("delete"));
}

#[test]
fn what_the_ruleset_no_longer_has_is_emptied_then_deleted_after_the_maps_are_refilled() {
    let rs = one_chain(Rule {
        peers: Peers::All,
        ports: Ports::All,
    });
    let names = Names {
        chains: ["forward", "ing-a", "ing-old"].map(String::from).into(),
        sets: ["pending", "pod-ifs", "spoof4", "spoof6", "old-4", "old-6"]
            .map(String::from)
            .into(),
        maps: ["ingress", "egress", "stray"].map(String::from).into(),
        contents: Default::default(),
    };
    let r = render(&rs, &names).unwrap();
    assert_eq!(r.removed_chains, vec!["ing-old".to_string()]);
    assert_eq!(
        r.removed_sets,
        ["old-4", "old-6", "stray"].map(String::from).to_vec()
    );
    let cmds = commands(&rs, &names);
    let at = |verb: &str, kind: &str, name: &str| {
        cmds.iter()
            .position(|c| {
                c.get(verb)
                    .and_then(|o| o.get(kind))
                    .is_some_and(|o| o["name"] == name)
            })
            .unwrap_or_else(|| panic!("no {verb} {kind} {name}"))
    };
    assert!(at("flush", "chain", "ing-old") < at("delete", "chain", "ing-old"));
    assert!(at("flush", "map", "ingress") < at("delete", "chain", "ing-old"));
    assert!(at("delete", "chain", "ing-old") < at("delete", "set", "old-4"));
    assert!(find(&cmds, "delete", "chain")
        .iter()
        .all(|c| c["name"] != FORWARD));
}

#[test]
fn a_ruleset_naming_what_it_does_not_have_is_refused_not_rendered() {
    let mut rs = one_chain(Rule {
        peers: Peers::Set("nowhere".into()),
        ports: Ports::All,
    });
    assert!(
        matches!(render(&rs, &Names::default()), Err(PolicyError::Invalid(m)) if m.contains("nowhere"))
    );
    rs.chains.get_mut("ing-a").unwrap().rules.clear();
    rs.ingress
        .insert("rcni00000000009".into(), "ing-gone".into());
    assert!(
        matches!(render(&rs, &Names::default()), Err(PolicyError::Invalid(m)) if m.contains("ing-gone"))
    );
    rs.ingress.clear();
    rs.pods.insert("a/b".into(), vec![]);
    assert!(matches!(
        render(&rs, &Names::default()),
        Err(PolicyError::Invalid(_))
    ));
    rs.pods.clear();
    rs.address_sets.insert("pod".into(), AddressSet::default());
    rs.port_sets.insert("pod".into(), PortSet::default());
    assert!(
        matches!(render(&rs, &Names::default()), Err(PolicyError::Invalid(m)) if m.contains("pod-4"))
    );
}

#[test]
fn overlapping_ranges_are_merged_into_what_nft_accepts() {
    let ip = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap();
    let mut rs = one_chain(Rule {
        peers: Peers::Set("p".into()),
        ports: Ports::All,
    });
    rs.address_sets.insert(
        "p".into(),
        AddressSet {
            v4: vec![
                (ip("10.0.0.0"), ip("10.0.0.255")),
                (ip("10.0.0.7"), ip("10.0.0.7")),
                (ip("10.0.1.0"), ip("10.0.1.3")),
                (ip("10.0.9.9"), ip("10.0.9.9")),
            ],
            v6: vec![],
        },
    );
    let cmds = commands(&rs, &Names::default());
    let p4 = find(&cmds, "add", "element")
        .into_iter()
        .find(|e| e["name"] == "p-4")
        .unwrap();
    assert_eq!(
        p4["elem"],
        serde_json::json!([{"range": ["10.0.0.0", "10.0.1.3"]}, "10.0.9.9"])
    );
}

#[test]
fn comments_stay_within_what_nft_accepts() {
    let mut rs = one_chain(Rule {
        peers: Peers::All,
        ports: Ports::All,
    });
    rs.chains.get_mut("ing-a").unwrap().policies =
        (0..40).map(|i| format!("namespace-{i}/policy-é")).collect();
    let cmds = commands(&rs, &Names::default());
    let last = rules_of(&cmds, "ing-a").pop().unwrap();
    let c = last["comment"].as_str().unwrap();
    assert!(c.len() <= 128 && c.ends_with("..."), "{c}");
}

/// A listing as nft 1.0.6 prints it (captured from a scratch namespace).
const LISTING: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
{"table": {"family": "inet", "name": "routed-cni", "handle": 1}},
{"set": {"family": "inet", "name": "pending", "table": "routed-cni", "type": "ifname", "handle": 1, "elem": ["rcni0000000000f"]}},
{"set": {"family": "inet", "name": "spoof4", "table": "routed-cni", "type": ["ifname", "ipv4_addr"], "handle": 2, "elem": [{"concat": ["rcni0123456789a", "10.0.0.1"]}]}},
{"set": {"family": "inet", "name": "a-4", "table": "routed-cni", "type": "ipv4_addr", "handle": 3, "flags": ["interval"], "elem": ["10.0.0.1", {"range": ["10.0.1.0", "10.0.1.200"]}, {"prefix": {"addr": "10.1.0.0", "len": 16}}]}},
{"set": {"family": "inet", "name": "p-4", "table": "routed-cni", "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 4, "elem": [{"concat": ["10.0.0.1", "sctp", 80]}]}},
{"map": {"family": "inet", "name": "ingress", "table": "routed-cni", "type": "ifname", "handle": 5, "map": "verdict", "elem": [["rcni0123456789a", {"jump": {"target": "ing-1"}}]]}},
{"chain": {"family": "inet", "table": "routed-cni", "name": "ing-1", "handle": 6}},
{"chain": {"family": "inet", "table": "routed-cni", "name": "forward", "handle": 7, "type": "filter", "hook": "forward", "prio": -10, "policy": "accept"}},
{"rule": {"family": "inet", "table": "routed-cni", "chain": "ing-1", "handle": 12, "expr": [{"return": null}]}},
{"rule": {"family": "inet", "table": "routed-cni", "chain": "ing-1", "handle": 14, "comment": "policies: a/b", "expr": [{"counter": {"packets": 3, "bytes": 180}}, {"drop": null}]}},
{"rule": {"family": "inet", "table": "routed-cni", "chain": "forward", "handle": 10, "expr": [{"vmap": {"key": {"meta": {"key": "oifname"}}, "data": "@ingress"}}]}}]}"#;

#[test]
fn a_listing_reads_back_as_names_and_contents() {
    let n = read::names(LISTING).unwrap();
    assert_eq!(n.chains, ["forward", "ing-1"].map(String::from).into());
    assert_eq!(n.maps, ["ingress"].map(String::from).into());
    assert_eq!(n.sets.len(), 4);
    let t = read::installed(LISTING).unwrap();
    assert_eq!(t.pending, ["rcni0000000000f".to_string()].into());
    assert_eq!(t.ingress["rcni0123456789a"], "ing-1");
    assert_eq!(
        t.pods["rcni0123456789a"],
        vec!["10.0.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(
        t.sets["a-4"],
        ["10.0.0.1", "10.0.1.0-10.0.1.200", "10.1.0.0/16"]
    );
    assert_eq!(t.sets["p-4"], ["10.0.0.1 . sctp . 80"]);
    let ing = &t.chains["ing-1"];
    assert_eq!(
        (ing.rules, ing.comment.as_deref(), ing.dropped, ing.base),
        (2, Some("policies: a/b"), Some((3, 180)), false)
    );
    assert!(t.chains["forward"].base);
    assert!(matches!(
        read::installed("{}"),
        Err(PolicyError::Listing(_))
    ));
}

#[test]
fn find_takes_the_first_executable_nft_and_skips_relative_path_entries() {
    use std::os::unix::fs::PermissionsExt;
    let base = std::env::temp_dir().join(format!("rcni-nft-find-{}", std::process::id()));
    let (plain, exe) = (base.join("plain"), base.join("exe"));
    for d in [&plain, &exe] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("nft"), "#!/bin/sh\n").unwrap();
    }
    std::fs::set_permissions(plain.join("nft"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(exe.join("nft"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::env::join_paths([std::path::Path::new("relative"), &plain]).unwrap();
    let found = Nft::find_in(&path, &[exe.to_str().unwrap()]);
    let none = Nft::find_in(&path, &[]);
    let _ = std::fs::remove_dir_all(&base);
    assert_eq!(found.unwrap().program(), exe.join("nft"));
    assert!(matches!(none, Err(PolicyError::NoNft { .. })));
}
