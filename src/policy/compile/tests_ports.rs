//! Ports and protocols: numeric ports, endPort, protocol-only entries, SCTP never as TCP, named
//! ports (ingress: the target's own; egress: each destination's, one name meaning different
//! numbers on different pods), and the UDP/SCTP variants of the upstream cases.

use super::harness::*;
use crate::policy::ruleset::{Ports, Protocol};
use serde_json::{json, Value};

fn ns_is(name: &str) -> Value {
    json!({"matchLabels": {"kubernetes.io/metadata.name": name}})
}

/// Policy on x/a letting ns y in on these ports.
fn from_y_on(c: &mut Cluster, name: &str, ports: Value) {
    c.policy(
        "x",
        name,
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": ns_is("y")}], "ports": ports}],
        }),
    );
}

fn only_y_into_x_a() -> Expect {
    Expect::all(true)
        .set_where("", "x/a", false)
        .set_where("y/", "x/a", true)
}

fn nothing_into_x_a() -> Expect {
    Expect::all(true).set_where("", "x/a", false)
}

#[test]
fn case14_and_44_47_port_from_other_namespace() {
    for proto in [Tcp, Udp, Sctp] {
        let mut c = Cluster::model();
        let name = match proto {
            Tcp => "TCP",
            Udp => "UDP",
            Sctp => "SCTP",
        };
        from_y_on(&mut c, "p", json!([{"port": 81, "protocol": name}]));
        only_y_into_x_a().check(&c, proto, 81);
        nothing_into_x_a().check(&c, proto, 80);
        // The other protocols on the same port number are not the allowed one.
        for other in [Tcp, Udp, Sctp].into_iter().filter(|&p| p != proto) {
            nothing_into_x_a().check(&c, other, 81);
        }
    }
}

#[test]
fn case15_stacked_policies_union() {
    let mut c = Cluster::model();
    from_y_on(&mut c, "allow-81", json!([{"port": 81}]));
    only_y_into_x_a().check(&c, Tcp, 81);
    nothing_into_x_a().check(&c, Tcp, 80);
    from_y_on(&mut c, "allow-80", json!([{"port": 80}]));
    only_y_into_x_a().check(&c, Tcp, 80);
    only_y_into_x_a().check(&c, Tcp, 81);
}

#[test]
fn case17_named_ingress_port_into_namespace() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {},
            "ingress": [{"ports": [{"port": "serve-81-tcp"}]}],
        }),
    );
    Expect::all(true).check(&c, Tcp, 81);
    Expect::all(true)
        .set_where("", "x/", false)
        .check(&c, Tcp, 80);
    // The name is serve-81-tcp: UDP 81 is another container port.
    Expect::all(true)
        .set_where("", "x/", false)
        .check(&c, Udp, 81);
}

#[test]
fn case18_named_port_from_namespace() {
    let mut c = Cluster::model();
    from_y_on(&mut c, "p", json!([{"port": "serve-80-tcp"}]));
    only_y_into_x_a().check(&c, Tcp, 80);
    nothing_into_x_a().check(&c, Tcp, 81);
}

#[test]
fn case19_named_egress_port() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [{"ports": [{"port": "serve-80-tcp"}]}],
        }),
    );
    Expect::all(true).check(&c, Tcp, 80);
    Expect::all(true)
        .set_where("x/", "", false)
        .check(&c, Tcp, 81);
}

/// Replaces a pod's container ports.
fn set_ports(c: &mut Cluster, ns: &str, pod: &str, ports: Value) {
    let mut j = pod_json(ns, pod, json!({"pod": pod}), node_of(pod), &ips_of(ns, pod));
    j["spec"]["containers"][0]["ports"] = ports;
    c.cache.upsert_pod(parse(j));
}

#[test]
fn named_port_means_each_targets_own_number_and_pods_still_share_a_chain() {
    let mut c = Cluster::model();
    // x/a and x/c are both on n1; "http" is 80 on x/a and 81 on x/c.
    set_ports(
        &mut c,
        "x",
        "a",
        json!([{"name": "http", "containerPort": 80}]),
    );
    set_ports(
        &mut c,
        "x",
        "c",
        json!([{"name": "http", "containerPort": 81}]),
    );
    c.policy(
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]}),
    );
    let rs = c.rulesets();
    assert!(reach(&rs, "y/b", "x/a", Tcp, 80));
    assert!(!reach(&rs, "y/b", "x/a", Tcp, 81));
    assert!(reach(&rs, "y/b", "x/c", Tcp, 81));
    assert!(!reach(&rs, "y/b", "x/c", Tcp, 80));
    // x/b has no port called http: nothing gets in.
    assert!(!reach(&rs, "y/a", "x/b", Tcp, 80));
    assert!(!reach(&rs, "y/a", "x/b", Tcp, 81));
    let n1 = &rs["n1"];
    assert_eq!(
        n1.ingress["rcni-x-a"], n1.ingress["rcni-x-c"],
        "one chain for both"
    );
    assert_eq!(n1.chains.len(), 1);
    let chain = &n1.chains[&n1.ingress["rcni-x-a"]];
    let Ports::Named(set) = &chain.rules[0].ports else {
        panic!("expected a named-port rule: {chain:?}");
    };
    let set = &n1.port_sets[set];
    let a = match ip4("x", "a") {
        std::net::IpAddr::V4(a) => a,
        _ => unreachable!(),
    };
    assert!(set.v4.contains(&(a, Protocol::Tcp, 80)));
    assert_eq!(
        set.v4.len(),
        2,
        "x/a's and x/c's http, not n2's x/b: {set:?}"
    );
    assert_eq!(set.v6.len(), 2);
}

#[test]
fn named_egress_port_resolved_per_destination() {
    let mut c = Cluster::model();
    set_ports(
        &mut c,
        "z",
        "c",
        json!([{"name": "serve-80-tcp", "containerPort": 81}]),
    );
    c.policy("x", "p", json!({
        "podSelector": {"matchLabels": {"pod": "a"}},
        "policyTypes": ["Egress"],
        "egress": [{"to": [{"namespaceSelector": ns_is("z")}], "ports": [{"port": "serve-80-tcp"}]}],
    }));
    let rs = c.rulesets();
    assert!(reach(&rs, "x/a", "z/a", Tcp, 80));
    assert!(!reach(&rs, "x/a", "z/a", Tcp, 81));
    assert!(reach(&rs, "x/a", "z/c", Tcp, 81));
    assert!(!reach(&rs, "x/a", "z/c", Tcp, 80));
    // y/a serves serve-80-tcp too, but is not a peer of the rule.
    assert!(!reach(&rs, "x/a", "y/a", Tcp, 80));
    // The port set names only the rule's peers (z's three pods, both families), not every pod
    // that has such a port: the set stays as small as the peers.
    let n1 = &rs["n1"];
    let set = n1.port_sets.values().next().unwrap();
    assert_eq!(
        (n1.port_sets.len(), set.v4.len(), set.v6.len()),
        (1, 3, 3),
        "{set:?}"
    );
}

#[test]
fn named_port_needs_the_protocol_too() {
    let mut c = Cluster::model();
    // serve-80-tcp is a TCP port; the entry asks for it as UDP: matches no container port.
    from_y_on(
        &mut c,
        "p",
        json!([{"port": "serve-80-tcp", "protocol": "UDP"}]),
    );
    for proto in [Tcp, Udp, Sctp] {
        nothing_into_x_a().check(&c, proto, 80);
    }
    // Unknown names likewise leave the pod isolated with nothing allowed.
    from_y_on(&mut c, "p", json!([{"port": "no-such-port"}]));
    nothing_into_x_a().check(&c, Tcp, 80);
}

#[test]
fn end_port_is_an_inclusive_range() {
    let mut c = Cluster::model();
    from_y_on(&mut c, "p", json!([{"port": 80, "endPort": 81}]));
    only_y_into_x_a().check(&c, Tcp, 80);
    only_y_into_x_a().check(&c, Tcp, 81);
    from_y_on(
        &mut c,
        "p",
        json!([{"port": 81, "endPort": 90, "protocol": "UDP"}]),
    );
    only_y_into_x_a().check(&c, Udp, 81);
    nothing_into_x_a().check(&c, Udp, 80);
    nothing_into_x_a().check(&c, Tcp, 81);
    let rs = c.rulesets();
    assert!(reach(&rs, "y/c", "x/a", Udp, 90));
    assert!(!reach(&rs, "y/c", "x/a", Udp, 91));
}

#[test]
fn case30_protocol_only_entry_allows_every_port_of_that_protocol() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"ports": [{"protocol": "TCP"}]}],
        }),
    );
    Expect::all(true).check(&c, Tcp, 80);
    Expect::all(true).check(&c, Tcp, 81);
    nothing_into_x_a().check(&c, Udp, 80);
    nothing_into_x_a().check(&c, Sctp, 80);
}

#[test]
fn case31_ingress_allow_all_takes_precedence() {
    let mut c = Cluster::model();
    from_y_on(&mut c, "port-80", json!([{"port": 80}]));
    nothing_into_x_a().check(&c, Tcp, 81);
    c.policy(
        "x",
        "allow-all",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{}]}),
    );
    Expect::all(true).check(&c, Tcp, 80);
    Expect::all(true).check(&c, Tcp, 81);
}

#[test]
fn case32_egress_allow_all_takes_precedence() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "port-80",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "policyTypes": ["Egress"],
            "egress": [{"ports": [{"port": 80}]}],
        }),
    );
    Expect::all(true).check(&c, Tcp, 80);
    Expect::all(true)
        .set_where("x/a", "", false)
        .check(&c, Tcp, 81);
    c.policy(
        "x",
        "allow-all",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "policyTypes": ["Egress"],
            "egress": [{}],
        }),
    );
    Expect::all(true).check(&c, Tcp, 81);
}

#[test]
fn case38_39_sctp_is_never_tcp() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"ports": [{"port": 80, "protocol": "SCTP"}]}],
        }),
    );
    // The pod is isolated (case 39) and only SCTP 80 gets in (case 38).
    Expect::all(true).check(&c, Sctp, 80);
    nothing_into_x_a().check(&c, Tcp, 80);
    nothing_into_x_a().check(&c, Udp, 80);
    nothing_into_x_a().check(&c, Sctp, 81);
    let n1 = c.ruleset("n1");
    let chain = &n1.chains[&n1.ingress["rcni-x-a"]];
    let Ports::Listed(specs) = &chain.rules[0].ports else {
        panic!("{chain:?}");
    };
    assert_eq!(specs[0].protocol.number(), 132);
}

#[test]
fn case40_udp_only_denies_tcp() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"ports": [{"port": 81, "protocol": "UDP"}]}],
        }),
    );
    Expect::all(true).check(&c, Udp, 81);
    nothing_into_x_a().check(&c, Tcp, 81);
}

#[test]
fn case43_46_default_deny_ingress_over_udp_and_sctp() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    );
    for proto in [Udp, Sctp] {
        Expect::all(true)
            .set_where("", "x/", false)
            .check(&c, proto, 80);
    }
}

#[test]
fn case45_48_pod_in_other_namespace_over_udp_and_sctp() {
    for (proto, name) in [(Udp, "UDP"), (Sctp, "SCTP")] {
        let mut c = Cluster::model();
        c.policy("x", "p", json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{
                "from": [{"namespaceSelector": ns_is("y"), "podSelector": {"matchLabels": {"pod": "a"}}}],
                "ports": [{"port": 80, "protocol": name}],
            }],
        }));
        nothing_into_x_a()
            .set("y/a", "x/a", true)
            .check(&c, proto, 80);
        nothing_into_x_a().check(&c, Tcp, 80);
    }
}

#[test]
fn invalid_port_entries_never_widen_a_rule() {
    let mut c = Cluster::model();
    // Each of these the API rejects; kept, they must match nothing rather than vanish (an
    // empty ports list would allow every port).
    for ports in [
        json!([{"port": 80, "protocol": "ICMP"}]),
        json!([{"port": 0}]),
        json!([{"port": 70000}]),
        json!([{"port": 81, "endPort": 80}]),
        json!([{"endPort": 80}]),
        json!([{"port": "serve-80-tcp", "endPort": 81}]),
    ] {
        from_y_on(&mut c, "p", ports.clone());
        for proto in [Tcp, Udp, Sctp] {
            for port in [80, 81] {
                let rs = c.rulesets();
                assert!(
                    !reach(&rs, "y/a", "x/a", proto, port),
                    "{ports} let {proto:?}/{port} in"
                );
            }
        }
    }
    // A valid entry next to an invalid one still works.
    from_y_on(
        &mut c,
        "p",
        json!([{"port": 80, "protocol": "ICMP"}, {"port": 81}]),
    );
    only_y_into_x_a().check(&c, Tcp, 81);
    nothing_into_x_a().check(&c, Tcp, 80);
}

#[test]
fn numeric_and_named_ports_in_one_rule() {
    let mut c = Cluster::model();
    from_y_on(
        &mut c,
        "p",
        json!([{"port": 80, "protocol": "UDP"}, {"port": "serve-81-sctp", "protocol": "SCTP"}]),
    );
    only_y_into_x_a().check(&c, Udp, 80);
    only_y_into_x_a().check(&c, Sctp, 81);
    nothing_into_x_a().check(&c, Sctp, 80);
    nothing_into_x_a().check(&c, Udp, 81);
}
