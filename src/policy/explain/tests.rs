use super::*;
use crate::policy::compile::harness::{
    all_pods, ip4, ips_of, reach, Cluster, Sctp, Tcp, Udp, NODES,
};
use std::sync::RwLock;

/// Node `node`'s view of the model, with the table compiled and applied from the same cache.
fn view_of(c: &Cluster, node: &str) -> View {
    View {
        node: node.into(),
        cache: c.cache.clone(),
        listed: [true; 3],
        local: c.local(node),
        applied: Some(c.ruleset(node)),
    }
}

fn ask(v: &View, from: &str, to: &str, p: Protocol, port: u16) -> Value {
    let (fns, fpod) = from.split_once('/').unwrap();
    let (tns, tpod) = to.split_once('/').unwrap();
    let (code, body) = verdict(v, ip4(fns, fpod), ip4(tns, tpod), p, port);
    assert_eq!(code, 200, "{body}");
    body
}

/// x/a admits x/b (only) on its container port named serve-80-tcp; y's pods may not send
/// anywhere but to namespace x on TCP 81-82 and to namespaces x and y by ipBlock (z excepted)
/// on the UDP port named serve-80-udp.
fn cluster() -> Cluster {
    let mut c = Cluster::model();
    c.policy(
        "x",
        "allow-b",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                         "ports": [{"port": "serve-80-tcp"}]}],
        }),
    );
    c.policy(
        "y",
        "egress",
        json!({
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [
                {"to": [{"namespaceSelector": {"matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["x"]}]}}],
                 "ports": [{"protocol": "TCP", "port": 81, "endPort": 82}]},
                {"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.3.0/24"]}},
                        {"ipBlock": {"cidr": "fd00::/96", "except": ["fd00::3:0/112"]}}],
                 "ports": [{"protocol": "UDP", "port": "serve-80-udp"}]},
            ],
        }),
    );
    c
}

#[test]
fn a_pod_its_isolation_and_its_policies_as_written() {
    let c = cluster();
    let v = view_of(&c, "n1");
    let (code, body) = pod_view(&v, "x", "a");
    assert_eq!(code, 200, "{body}");
    let pod = &body["pod"];
    assert_eq!(pod["node"], "n1");
    assert_eq!(pod["local"], true);
    assert_eq!(pod["hostVeth"], "rcni-x-a");
    assert_eq!(pod["labels"], json!({"pod": "a"}));
    assert_eq!(pod["ips"], json!(ips_of("x", "a")));
    assert_eq!(body["ingress"]["isolated"], true);
    assert_eq!(body["ingress"]["policies"], json!(["x/allow-b"]));
    assert!(body["ingress"]["table"]["chain"].is_string(), "{body}");
    assert_eq!(body["egress"]["isolated"], false);
    assert_eq!(body["egress"]["table"]["chain"], Value::Null);
    let policies = body["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 1, "{body}");
    let p = &policies[0];
    assert_eq!(p["policy"], "x/allow-b");
    assert_eq!(p["podSelector"], "pod=a");
    assert_eq!(p["policyTypes"], json!(["Ingress"]));
    let rule = &p["ingress"][0];
    assert_eq!(rule["peers"][0]["podSelector"], "pod=b");
    // The named port, resolved against this pod's container ports.
    assert_eq!(rule["ports"][0]["port"], "serve-80-tcp");
    assert_eq!(rule["ports"][0]["resolved"], 80);
    assert_eq!(
        rule["text"],
        "from pods pod=b in namespace x, on TCP serve-80-tcp (= 80 on this pod)"
    );

    // A pod of another node: its policies still read, no table of ours to show.
    let (code, body) = pod_view(&v, "y", "b");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (&body["pod"]["local"], &body["pod"]["node"]),
        (&json!(false), &json!("n2"))
    );
    assert_eq!(body["egress"]["policies"], json!(["y/egress"]));
    assert_eq!(body["egress"]["table"], Value::Null);
    let rules = &body["policies"][0]["egress"];
    assert_eq!(
        rules[0]["text"],
        "to every pod in namespaces kubernetes.io/metadata.name in (x), on TCP 81-82"
    );
    assert_eq!(rules[0]["ports"][0]["endPort"], 82);
    assert_eq!(
        rules[1]["peers"][0]["ipBlock"]["except"],
        json!(["10.0.3.0/24"])
    );
    assert_eq!(
        rules[1]["text"],
        "to 10.0.0.0/16 except 10.0.3.0/24 or fd00::/96 except fd00::3:0/112, on UDP serve-80-udp (the destination pod's port of that name)"
    );

    let (code, body) = pod_view(&v, "x", "nope");
    assert_eq!((code, &body["found"]), (404, &json!(false)), "{body}");
}

#[test]
fn nothing_is_answered_before_every_kind_is_listed() {
    let c = cluster();
    let mut v = view_of(&c, "n1");
    v.listed[2] = false;
    let (code, body) = pod_view(&v, "x", "a");
    assert_eq!(code, 503);
    assert!(
        body["error"].as_str().unwrap().contains("networkpolicies"),
        "{body}"
    );
    assert_eq!(verdict(&v, ip4("x", "b"), ip4("x", "a"), Tcp, 80).0, 503);
}

#[test]
fn verdicts_name_the_rule_that_allows_or_the_policies_that_isolate() {
    let c = cluster();
    let n1 = view_of(&c, "n1");
    // x/b (n2) -> x/a (n1): n1 holds the ingress side only.
    let body = ask(&n1, "x/b", "x/a", Tcp, 80);
    assert_eq!(body["allowed"], true, "{body}");
    assert_eq!(
        body["egress"]["text"],
        "not on this node (pod x/b on node n2)"
    );
    let ing = &body["ingress"];
    assert_eq!(ing["allowedBy"]["policy"], "x/allow-b");
    assert_eq!(ing["allowedBy"]["rule"], 0);
    assert_eq!(ing["table"]["agrees"], true, "{body}");
    // Another port, another protocol, SCTP on the named TCP port's number: denied, and why.
    for (p, port) in [(Tcp, 81), (Udp, 80), (Sctp, 80)] {
        let body = ask(&n1, "x/b", "x/a", p, port);
        assert_eq!(body["allowed"], false, "{p:?} {port}: {body}");
        let ing = &body["ingress"];
        assert_eq!(ing["isolatingPolicies"], json!(["x/allow-b"]));
        assert!(
            ing["text"]
                .as_str()
                .unwrap()
                .starts_with("no policy allows it"),
            "{ing}"
        );
        assert_eq!(ing["table"]["agrees"], true, "{body}");
    }
    // x/c is on n1 too: both sides here; egress not isolated, ingress denies a non-b pod.
    let body = ask(&n1, "x/c", "x/a", Tcp, 80);
    assert_eq!(body["egress"]["isolated"], false);
    assert_eq!(body["egress"]["allowed"], true);
    assert_eq!(body["ingress"]["allowed"], false);
    assert_eq!(body["allowed"], false);
    // y/a's egress: TCP 81 to namespace x allowed by rule 0, UDP 80 to z (excepted) denied.
    let body = ask(&n1, "y/a", "x/c", Tcp, 81);
    assert_eq!(
        body["egress"]["allowedBy"],
        json!({"policy": "y/egress", "rule": 0,
        "text": "to every pod in namespaces kubernetes.io/metadata.name in (x), on TCP 81-82"})
    );
    let body = ask(&n1, "y/a", "x/c", Udp, 80);
    assert_eq!(body["egress"]["allowedBy"]["rule"], 1, "{body}");
    let body = ask(&n1, "y/a", "z/c", Udp, 80);
    assert_eq!(body["egress"]["allowed"], false, "{body}");
    // Neither end here: n1 decides nothing.
    let body = ask(&n1, "y/b", "z/b", Tcp, 80);
    assert_eq!(body["allowed"], Value::Null, "{body}");
    // An address that is no pod: only ipBlock rules could match it.
    let (_, body) = verdict(&n1, "192.0.2.7".parse().unwrap(), ip4("x", "a"), Tcp, 80);
    assert!(
        body["egress"]["text"]
            .as_str()
            .unwrap()
            .contains("not a pod"),
        "{body}"
    );
    assert_eq!(body["ingress"]["allowed"], false);
}

#[test]
fn a_table_that_lags_the_policies_is_called_out() {
    let mut c = cluster();
    let mut v = view_of(&c, "n1");
    // The policy goes; the table still has its chain until the next apply.
    c.cache.delete_policy("x", "allow-b");
    v.cache = c.cache.clone();
    let body = ask(&v, "x/c", "x/a", Tcp, 80);
    let ing = &body["ingress"];
    assert_eq!(
        (&ing["isolated"], &ing["allowed"]),
        (&json!(false), &json!(true))
    );
    assert_eq!(ing["table"]["agrees"], false, "{body}");
    assert!(
        ing["table"]["text"].as_str().unwrap().contains("drops"),
        "{ing}"
    );
    v.applied = None;
    let body = ask(&v, "x/c", "x/a", Tcp, 80);
    assert_eq!(body["ingress"]["table"]["applied"], false, "{body}");
}

/// The policies' answer (which names the rule) and the compiled table's (eval) agree on every
/// pair of the model, both families, every protocol, on both nodes; and the nodes' answers put
/// together are the harness's reachability.
#[test]
fn verdicts_agree_with_the_table_on_the_whole_model() {
    let c = cluster();
    let views: Vec<View> = NODES.iter().map(|n| view_of(&c, n)).collect();
    let rulesets = c.rulesets();
    for from in all_pods() {
        for to in all_pods() {
            let (fns, fpod) = from.split_once('/').unwrap();
            let (tns, tpod) = to.split_once('/').unwrap();
            for (p, port) in [(Tcp, 80), (Tcp, 81), (Udp, 80), (Sctp, 81)] {
                for family in 0..2 {
                    let (src, dst) = (ips_of(fns, fpod)[family], ips_of(tns, tpod)[family]);
                    let mut all = true;
                    let mut decided = [0, 0];
                    for v in &views {
                        let (_, body) = verdict(v, src, dst, p, port);
                        for (i, side) in ["egress", "ingress"].into_iter().enumerate() {
                            let s = &body[side];
                            if s["onThisNode"] == true {
                                decided[i] += 1;
                                assert_eq!(s["table"]["agrees"], true, "{from}->{to}: {body}");
                            }
                        }
                        all &= body["allowed"].as_bool().unwrap_or(true);
                    }
                    // Each pod runs on one node: each side is decided there and only there.
                    assert_eq!(decided, [1, 1], "{from} -> {to}");
                    assert_eq!(
                        all,
                        reach(&rulesets, &from, &to, p, port),
                        "{from} -> {to} {p:?}/{port}"
                    );
                }
            }
        }
    }
}

#[test]
fn http_entry_reads_its_query() {
    let c = cluster();
    let v = RwLock::new(view_of(&c, "n1"));
    assert!(http(Some(&v), "/healthz", "").is_none());
    let (code, body) = http(None, "/policy", "pod=x/a").unwrap();
    assert_eq!(code, 503);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("--network-policy=false"));
    assert_eq!(http(Some(&v), "/policy", "pod=x%2Fa").unwrap().0, 200);
    assert_eq!(http(Some(&v), "/policy", "pod=xa").unwrap().0, 400);
    let (code, body) = http(
        Some(&v),
        "/policy/verdict",
        "src=fd00%3A%3A1%3A2&dst=fd00::1:1&proto=TCP&port=80",
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["ingress"]["allowedBy"]["policy"], "x/allow-b",
        "{body}"
    );
    for bad in [
        "src=x&dst=10.0.1.1&port=80",
        "src=10.0.2.2&dst=10.0.1.1&proto=icmp&port=80",
        "src=10.0.2.2&dst=10.0.1.1&port=0",
        "src=10.0.2.2&dst=10.0.1.1",
    ] {
        assert_eq!(
            http(Some(&v), "/policy/verdict", bad).unwrap().0,
            400,
            "{bad}"
        );
    }
    // proto defaults to tcp.
    assert_eq!(
        http(
            Some(&v),
            "/policy/verdict",
            "src=10.0.2.2&dst=10.0.1.1&port=80"
        )
        .unwrap()
        .0,
        200
    );
}

#[test]
fn selectors_read_like_kubectl() {
    let s: LabelSelector = serde_json::from_value(json!({
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "tier", "operator": "NotIn", "values": ["db", "cache"]},
            {"key": "canary", "operator": "DoesNotExist"},
            {"key": "team", "operator": "Exists"},
        ],
    }))
    .unwrap();
    assert_eq!(
        selector_text(&s),
        "app=web,tier notin (db,cache),!canary,team"
    );
    assert_eq!(selector_text(&LabelSelector::default()), "");
    assert_eq!(percent_decode("a%2Fb+c%zz%"), "a/b c%zz%");
}
