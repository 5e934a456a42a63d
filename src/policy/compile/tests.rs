//! The upstream e2e cases (test/e2e/network/netpol, numbered as in the reference's list) about
//! isolation and peers, as 9x9 reachability over the compiled Rulesets of two nodes.

use super::harness::*;
use serde_json::json;

fn ns_is(name: &str) -> serde_json::Value {
    json!({"matchLabels": {"kubernetes.io/metadata.name": name}})
}

#[test]
fn no_policy_allows_everything() {
    let c = Cluster::model();
    Expect::all(true).check(&c, Tcp, 80);
    assert!(c.rulesets().values().all(|r| r.chains.is_empty()));
}

#[test]
fn case01_default_deny_ingress() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    );
    let e = Expect::all(true).set_where("", "x/", false);
    e.check(&c, Tcp, 80);
    e.check(&c, Udp, 81);
    e.check(&c, Sctp, 80);
}

#[test]
fn case02_default_deny_all() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    );
    Expect::all(true)
        .set_where("", "x/", false)
        .set_where("x/", "", false)
        .check(&c, Tcp, 80);
}

#[test]
fn case03_pod_selector_in_server_namespace() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
        }),
    );
    Expect::all(true)
        .set_where("", "x/a", false)
        .set("x/b", "x/a", true)
        .check(&c, Tcp, 80);
}

#[test]
fn case04_allow_all_to_one_target_over_deny_all() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    );
    c.policy(
        "x",
        "allow-a",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"podSelector": {}, "namespaceSelector": {}}]}],
        }),
    );
    Expect::all(true)
        .set_where("", "x/b", false)
        .set_where("", "x/c", false)
        .check(&c, Tcp, 80);
}

#[test]
fn case05_all_namespaces() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {}}]}],
        }),
    );
    Expect::all(true).check(&c, Tcp, 80);
    // Everyone is a pod here; an address that is no pod (the other node) is not let in.
    let n1 = c.ruleset("n1");
    let outside = "192.168.0.2".parse().unwrap();
    let a = ip4("x", "a");
    let tcp80 = |rs| crate::policy::eval::allows(rs, outside, None, a, Some("rcni-x-a"), Tcp, 80);
    assert!(!tcp80(&n1));
}

#[test]
fn case06_and_41_namespace_selector_by_default_label() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": ns_is("y")}]}],
        }),
    );
    Expect::all(true)
        .set_where("", "x/a", false)
        .set_where("y/", "x/a", true)
        .check(&c, Tcp, 80);
}

#[test]
fn case07_pod_selector_match_expressions() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"podSelector": {"matchExpressions": [
                {"key": "pod", "operator": "In", "values": ["b"]}]}}]}],
        }),
    );
    Expect::all(true)
        .set_where("", "x/a", false)
        .set("x/b", "x/a", true)
        .check(&c, Tcp, 80);
}

#[test]
fn case08_namespace_selector_match_expressions() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["y"]}]}}]}],
        }),
    );
    Expect::all(true)
        .set_where("", "x/a", false)
        .set_where("y/", "x/a", true)
        .check(&c, Tcp, 80);
}

#[test]
fn case09_pod_or_namespace_selector() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [
                {"namespaceSelector": {"matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["x"]}]}},
                {"podSelector": {"matchLabels": {"pod": "b"}}},
            ]}],
        }),
    );
    Expect::all(true)
        .set("x/c", "x/a", false)
        .check(&c, Tcp, 80);
}

#[test]
fn case10_pod_and_namespace_selector() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{
                "namespaceSelector": {"matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["x"]}]},
                "podSelector": {"matchLabels": {"pod": "b"}},
            }]}],
        }),
    );
    Expect::all(true)
        .set_where("", "x/a", false)
        .set("y/b", "x/a", true)
        .set("z/b", "x/a", true)
        .check(&c, Tcp, 80);
}

#[test]
fn case11_multiple_pod_and_namespace_selectors() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{
                "namespaceSelector": {"matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["x"]}]},
                "podSelector": {"matchExpressions": [
                    {"key": "pod", "operator": "In", "values": ["b", "c"]}]},
            }]}],
        }),
    );
    Expect::all(true)
        .set_where("", "x/a", false)
        .set_where("y/b", "x/a", true)
        .set_where("y/c", "x/a", true)
        .set_where("z/b", "x/a", true)
        .set_where("z/c", "x/a", true)
        .check(&c, Tcp, 80);
}

#[test]
fn case12_any_of_two_pod_selectors() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [
                {"podSelector": {"matchLabels": {"pod": "b"}}},
                {"podSelector": {"matchLabels": {"pod": "c"}}},
            ]}],
        }),
    );
    Expect::all(true)
        .set_where("", "x/a", false)
        .set("x/b", "x/a", true)
        .set("x/c", "x/a", true)
        .check(&c, Tcp, 80);
}

#[test]
fn case13_only_one_pod_of_another_namespace() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{
                "namespaceSelector": ns_is("y"),
                "podSelector": {"matchLabels": {"pod": "a"}},
            }]}],
        }),
    );
    Expect::all(true)
        .set_where("", "x/a", false)
        .set("y/a", "x/a", true)
        .check(&c, Tcp, 80);
}

#[test]
fn case16_allow_all_ingress() {
    let mut c = Cluster::model();
    c.policy("x", "allow", json!({"podSelector": {}, "ingress": [{}]}));
    Expect::all(true).check(&c, Tcp, 80);
    Expect::all(true).check(&c, Tcp, 81);
    Expect::all(true).check(&c, Udp, 81);
}

#[test]
fn case20_updated_policy_allow_all_to_deny_all() {
    let mut c = Cluster::model();
    c.policy("x", "p", json!({"podSelector": {}, "ingress": [{}]}));
    Expect::all(true).check(&c, Tcp, 81);
    c.policy("x", "p", json!({"podSelector": {}, "ingress": []}));
    Expect::all(true)
        .set_where("", "x/", false)
        .check(&c, Tcp, 81);
}

#[test]
fn case21_updated_namespace_labels() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns2": "updated"}}}]}],
        }),
    );
    let before = Expect::all(true).set_where("", "x/a", false);
    before.check(&c, Tcp, 80);
    c.relabel_namespace(
        "y",
        json!({"kubernetes.io/metadata.name": "y", "ns2": "updated"}),
    );
    let after = Expect::all(true)
        .set_where("", "x/a", false)
        .set_where("y/", "x/a", true);
    after.check(&c, Tcp, 80);
}

#[test]
fn case22_updated_pod_labels() {
    let mut c = Cluster::model();
    c.policy("x", "p", json!({
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b", "pod2": "updated"}}}]}],
    }));
    Expect::all(true)
        .set_where("", "x/a", false)
        .check(&c, Tcp, 80);
    c.relabel_pod("x", "b", json!({"pod": "b", "pod2": "updated"}));
    Expect::all(true)
        .set_where("", "x/a", false)
        .set("x/b", "x/a", true)
        .check(&c, Tcp, 80);
}

#[test]
fn case23_only_same_namespace() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {},
            "ingress": [{"from": [{"podSelector": {}}]}],
        }),
    );
    Expect::all(true)
        .set_where("y/", "x/", false)
        .set_where("z/", "x/", false)
        .check(&c, Tcp, 80);
}

#[test]
fn case24_target_selected_after_relabel() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"target": "isolated"}},
            "policyTypes": ["Ingress"],
        }),
    );
    Expect::all(true).check(&c, Tcp, 80);
    c.relabel_pod("x", "a", json!({"pod": "a", "target": "isolated"}));
    Expect::all(true)
        .set_where("", "x/a", false)
        .check(&c, Tcp, 80);
}

#[test]
fn case25_deny_egress_of_one_pod() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "policyTypes": ["Egress"],
        }),
    );
    Expect::all(true)
        .set_where("x/a", "", false)
        .check(&c, Tcp, 80);
}

#[test]
fn case26_deny_egress_of_a_namespace() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "p",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    );
    Expect::all(true)
        .set_where("x/", "", false)
        .check(&c, Tcp, 80);
}

#[test]
fn case27_ingress_and_egress_together() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
            "egress": [{"ports": [{"port": 80}]}],
        }),
    );
    let into_a = Expect::all(true)
        .set_where("", "x/a", false)
        .set("x/b", "x/a", true);
    into_a.check(&c, Tcp, 80);
    into_a.set_where("x/a", "", false).check(&c, Tcp, 81);
}

#[test]
fn case28_egress_denied_at_client_even_if_server_allows() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "deny-egress",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "policyTypes": ["Egress"],
        }),
    );
    c.policy(
        "y",
        "allow-from-x",
        json!({
            "podSelector": {},
            "ingress": [{"from": [{"namespaceSelector": ns_is("x")}]}],
        }),
    );
    Expect::all(true)
        .set_where("x/a", "", false)
        .set_where("y/", "y/", false)
        .set_where("z/", "y/", false)
        .check(&c, Tcp, 80);
}

#[test]
fn case29_egress_to_pod_in_other_namespace() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{
                "namespaceSelector": ns_is("y"),
                "podSelector": {"matchLabels": {"pod": "b"}},
            }]}],
        }),
    );
    Expect::all(true)
        .set_where("x/a", "", false)
        .set("x/a", "y/b", true)
        .check(&c, Tcp, 80);
}

#[test]
fn case33_deleted_policy_stops_enforcing() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    );
    Expect::all(true)
        .set_where("x/", "", false)
        .set_where("", "x/", false)
        .check(&c, Tcp, 80);
    assert!(c.cache.delete_policy("x", "deny"));
    Expect::all(true).check(&c, Tcp, 80);
    assert!(c
        .rulesets()
        .values()
        .all(|r| r.chains.is_empty() && r.ingress.is_empty()));
}

#[test]
fn case37_ingress_and_egress_controlled_independently() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "in",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"namespaceSelector": ns_is("y")}]}],
        }),
    );
    c.policy(
        "x",
        "out",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"namespaceSelector": ns_is("z")}]}],
        }),
    );
    Expect::all(true)
        .set_where("", "x/a", false)
        .set_where("y/", "x/a", true)
        .set_where("x/a", "", false)
        .set_where("x/a", "z/", true)
        .check(&c, Tcp, 80);
}

#[test]
fn case42_egress_namespace_not_in_by_default_label() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["y"]}]}}]}],
        }),
    );
    Expect::all(true)
        .set_where("x/a", "y/", false)
        .check(&c, Tcp, 80);
}

#[test]
fn egress_rules_without_policy_types_isolate_egress_too() {
    // policyTypes absent: Ingress always, Egress because egress rules exist.
    let mut c = Cluster::model();
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
        }),
    );
    Expect::all(true)
        .set_where("", "x/a", false)
        .set_where("x/a", "", false)
        .set("x/a", "x/b", true)
        .check(&c, Tcp, 80);
    // ...whereas an explicit policyTypes: [Egress] leaves ingress open.
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
        }),
    );
    Expect::all(true)
        .set_where("x/a", "", false)
        .set("x/a", "x/b", true)
        .check(&c, Tcp, 80);
}

#[test]
fn egress_rules_listed_but_not_in_policy_types_do_not_isolate() {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "p",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "policyTypes": ["Ingress"],
            "ingress": [{}],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
        }),
    );
    Expect::all(true).check(&c, Tcp, 80);
    assert!(c.rulesets().values().all(|r| r.egress.is_empty()));
}

#[test]
fn same_peers_in_two_namespaces_mean_each_policys_own_namespace() {
    let mut c = Cluster::model();
    for ns in ["x", "y"] {
        c.policy(
            ns,
            "same-ns",
            json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
        );
    }
    Expect::all(true)
        .set_where("", "x/", false)
        .set_where("x/", "x/", true)
        .set_where("", "y/", false)
        .set_where("y/", "y/", true)
        .check(&c, Tcp, 80);
}
