use super::*;
use serde_json::json;

fn pod(v: serde_json::Value) -> Pod {
    serde_json::from_value(v).unwrap()
}

fn policy(spec: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(json!({"metadata": {"namespace": "x", "name": "p"}, "spec": spec}))
        .unwrap()
}

#[test]
fn pod_keeps_what_enforcement_reads() {
    let p = pod(json!({
        "metadata": {"namespace": "x", "name": "a", "resourceVersion": "7",
                     "labels": {"pod": "a"}, "annotations": {"big": "ignored"}, "uid": "u"},
        "spec": {"nodeName": "n1", "containers": [
            {"name": "c1", "ports": [
                {"name": "http", "containerPort": 8080},
                {"containerPort": 9090},
                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                {"name": "bad", "containerPort": 70000},
                {"name": "odd", "containerPort": 1, "protocol": "ICMP"}]},
            {"name": "c2", "ports": null},
            {"name": "c3", "ports": [{"name": "assoc", "containerPort": 7, "protocol": "SCTP"}]}]},
        "status": {"phase": "Running", "podIP": "10.0.0.1",
                   "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}, {"ip": "garbage"}]},
    }));
    assert_eq!(p.key().to_string(), "x/a");
    assert_eq!(p.labels.get("pod").map(String::as_str), Some("a"));
    assert_eq!(p.node_name, "n1");
    assert_eq!(
        p.named_ports.to_vec(),
        vec![
            NamedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080
            },
            NamedPort {
                name: "dns".into(),
                protocol: Protocol::Udp,
                port: 53
            },
            NamedPort {
                name: "assoc".into(),
                protocol: Protocol::Sctp,
                port: 7
            },
        ]
    );
    assert_eq!(
        p.ips,
        vec![
            "10.0.0.1".parse::<IpAddr>().unwrap(),
            "fd00::1".parse().unwrap()
        ]
    );
    assert!(p.selectable());
}

#[test]
fn pod_states() {
    let old = pod(json!({"metadata": {"namespace": "x", "name": "a"},
                         "status": {"podIP": "10.0.0.2"}}));
    assert_eq!(
        old.ips,
        vec!["10.0.0.2".parse::<IpAddr>().unwrap()],
        "podIP alone"
    );
    let fresh = pod(json!({"metadata": {"namespace": "x", "name": "a"}, "spec": {}}));
    assert!(fresh.ips.is_empty() && fresh.labels.is_empty() && fresh.selectable());
    for phase in ["Succeeded", "Failed"] {
        let done = pod(json!({"metadata": {"name": "a"}, "status": {"phase": phase}}));
        assert!(done.terminated && !done.selectable());
    }
    let host = pod(json!({"metadata": {"name": "a"}, "spec": {"hostNetwork": true}}));
    assert!(!host.selectable());
}

#[test]
fn policy_types_inferred_when_absent_or_empty() {
    let p = policy(json!({"podSelector": {}}));
    assert!((p.isolates_ingress, p.isolates_egress) == (true, false));
    let p = policy(json!({"podSelector": {}, "egress": [{}]}));
    assert!((p.isolates_ingress, p.isolates_egress) == (true, true));
    let p = policy(json!({"podSelector": {}, "egress": []}));
    assert!((p.isolates_ingress, p.isolates_egress) == (true, false));
    let p = policy(json!({"podSelector": {}, "policyTypes": [], "egress": [{}]}));
    assert!((p.isolates_ingress, p.isolates_egress) == (true, true));
    let p = policy(json!({"policyTypes": ["Egress"], "ingress": [{}]}));
    assert!((p.isolates_ingress, p.isolates_egress) == (false, true));
    assert_eq!(
        p.pod_selector,
        LabelSelector::default(),
        "absent podSelector selects all"
    );
    let p = policy(json!({"policyTypes": ["Ingress", "Egress"]}));
    assert!(p.isolates_ingress && p.isolates_egress && p.ingress.is_empty());
}

#[test]
fn policy_rules_peers_and_ports() {
    let p = policy(json!({
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}},
                      {"namespaceSelector": {}, "podSelector": {}},
                      {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
             "ports": [{"port": 80}, {"protocol": "UDP"}, {"port": 1000, "endPort": 2000, "protocol": "SCTP"},
                       {"port": "http"}]},
            {},
            {"from": null, "ports": null},
        ],
    }));
    assert_eq!(p.ingress.len(), 3);
    let r = &p.ingress[0];
    assert_eq!(
        r.peers[0],
        Peer::Pods {
            pod_selector: Some(LabelSelector::labels([("pod", "b")])),
            namespace_selector: None
        }
    );
    assert_eq!(
        r.peers[1],
        Peer::Pods {
            pod_selector: Some(LabelSelector::default()),
            namespace_selector: Some(LabelSelector::default())
        }
    );
    let Peer::IpBlock(b) = &r.peers[2] else {
        panic!("{:?}", r.peers[2])
    };
    assert_eq!(
        (b.cidr.to_string(), b.except.len()),
        ("10.0.0.0/8".into(), 1)
    );
    assert_eq!(
        r.ports,
        vec![
            PolicyPort::Numeric {
                protocol: Protocol::Tcp,
                range: Some((80, 80))
            },
            PolicyPort::Numeric {
                protocol: Protocol::Udp,
                range: None
            },
            PolicyPort::Numeric {
                protocol: Protocol::Sctp,
                range: Some((1000, 2000))
            },
            PolicyPort::Named {
                protocol: Protocol::Tcp,
                name: "http".into()
            },
        ]
    );
    assert_eq!(p.ingress[1], PolicyRule::default());
    assert_eq!(p.ingress[2], PolicyRule::default());
}

#[test]
fn cache_upserts_report_only_enforcement_changes() {
    let mut cache = PolicyCache::new();
    let a = |rv: &str, label: &str| {
        pod(
            json!({"metadata": {"namespace": "x", "name": "a", "resourceVersion": rv,
                                "labels": {"pod": label}}}),
        )
    };
    assert!(cache.upsert_pod(a("1", "a")));
    assert!(
        !cache.upsert_pod(a("2", "a")),
        "a new resourceVersion alone changes nothing"
    );
    assert_eq!(
        cache.pod("x", "a").unwrap().resource_version,
        "",
        "and is not kept (150,000 of them would cost ~5 MB; only the watch reads it)"
    );
    assert!(cache.upsert_pod(a("3", "b")));
    assert_eq!(cache.pod_count(), 1);
    assert_eq!(cache.pods_in("x").count(), 1);
    assert_eq!(cache.pods_in("y").count(), 0);
    assert!(cache.delete_pod("x", "a"));
    assert!(!cache.delete_pod("x", "a"));
    assert_eq!(cache.pods().count(), 0);

    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "x", "labels": {"k": "v"}}})).unwrap();
    assert!(cache.upsert_namespace(ns.clone()));
    assert!(!cache.upsert_namespace(ns));
    assert_eq!(cache.namespace("x").unwrap().labels["k"], "v");
    assert!(cache.delete_namespace("x") && cache.namespace("x").is_none());

    assert!(cache.upsert_policy(policy(json!({}))));
    assert!(!cache.upsert_policy(policy(json!({}))));
    assert!(cache.upsert_policy(policy(json!({"ingress": [{}]}))));
    assert_eq!(cache.policies().next().unwrap().key(), "x/p");
    assert!(cache.delete_policy("x", "p"));
    assert!(!cache.delete_policy("x", "p"));
}

#[test]
fn namespace_has_policy_looks_at_that_namespace_only() {
    let mut cache = PolicyCache::new();
    let in_ns = |ns: &str| -> NetworkPolicy {
        serde_json::from_value(json!({"metadata": {"namespace": ns, "name": "p"}})).unwrap()
    };
    cache.upsert_policy(in_ns("x-1"));
    cache.upsert_policy(in_ns("xa"));
    assert!(
        !cache.namespace_has_policy("x"),
        "x-1/p and xa/p are not x's"
    );
    cache.upsert_policy(in_ns("x"));
    assert!(cache.namespace_has_policy("x"));
    assert!(cache.namespace_has_policy("xa"));
    assert!(!cache.namespace_has_policy("y"));
}

#[test]
fn replace_after_relist() {
    let mut cache = PolicyCache::new();
    let p = |name: &str, rv: &str| {
        pod(json!({"metadata": {"namespace": "x", "name": name, "resourceVersion": rv}}))
    };
    assert!(cache.replace_pods([p("a", "1"), p("b", "1")]));
    assert!(
        !cache.replace_pods([p("b", "2"), p("a", "5")]),
        "same pods, new versions"
    );
    assert!(cache.replace_pods([p("a", "6")]), "b is gone");
    assert!(cache.pod("x", "b").is_none());
    let ns = |name: &str| -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
    };
    assert!(cache.replace_namespaces([ns("x")]));
    assert!(!cache.replace_namespaces([ns("x")]));
    assert!(cache.replace_policies([policy(json!({}))]));
    assert!(!cache.replace_policies([policy(json!({}))]));
    assert!(cache.replace_policies([]));
}
