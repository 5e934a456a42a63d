//! The upstream e2e model in memory: namespaces x, y, z; pods a, b, c in each (labels
//! `pod=<name>`), serving TCP, UDP and SCTP on 80 and 81 behind container ports named
//! `serve-<port>-<proto>`; a and c on node n1, b on node n2; every pod dual-stack. Reachability
//! is what the two nodes' compiled Rulesets let through (`eval::allows`): egress on the client's
//! node, ingress on the server's, both on one node for same-node pairs. Every probe is made over
//! IPv4 and IPv6 and the two must agree.

use super::{compile, LocalPod};
use crate::policy::eval::allows;
use crate::policy::model::{Namespace, NetworkPolicy, Pod, PodKey, PolicyCache};
use crate::policy::ruleset::{Protocol, Ruleset};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;

pub use Protocol::{Sctp, Tcp, Udp};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
pub const NODES: [&str; 2] = ["n1", "n2"];

pub struct Cluster {
    pub cache: PolicyCache,
}

pub fn node_of(pod: &str) -> &'static str {
    if pod == "b" {
        "n2"
    } else {
        "n1"
    }
}

/// x/a -> "10.0.1.1"-style IPv4 (third octet: namespace, fourth: pod) and fd00::1:1 IPv6.
pub fn ips_of(ns: &str, pod: &str) -> Vec<IpAddr> {
    let n = NAMESPACES.iter().position(|&x| x == ns).unwrap() + 1;
    let p = PODS.iter().position(|&x| x == pod).unwrap() + 1;
    vec![
        format!("10.0.{n}.{p}").parse().unwrap(),
        format!("fd00::{n}:{p}").parse().unwrap(),
    ]
}

pub fn veth(ns: &str, pod: &str) -> String {
    format!("rcni-{ns}-{pod}")
}

pub fn ip4(ns: &str, pod: &str) -> IpAddr {
    ips_of(ns, pod)[0]
}

pub fn pod_json(ns: &str, name: &str, labels: Value, node: &str, ips: &[IpAddr]) -> Value {
    let mut ports = Vec::new();
    for port in [80, 81] {
        for proto in ["TCP", "UDP", "SCTP"] {
            ports.push(json!({
                "name": format!("serve-{port}-{}", proto.to_lowercase()),
                "containerPort": port, "protocol": proto,
            }));
        }
    }
    let pod_ips: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": ns, "name": name, "labels": labels, "resourceVersion": "1"},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "agnhost", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ips[0].to_string(), "podIPs": pod_ips},
    })
}

pub fn parse<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("test object parses")
}

impl Cluster {
    pub fn model() -> Cluster {
        let mut cache = PolicyCache::new();
        for ns in NAMESPACES {
            cache.upsert_namespace(parse(json!({
                "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}
            })));
            for pod in PODS {
                let json = pod_json(ns, pod, json!({"pod": pod}), node_of(pod), &ips_of(ns, pod));
                cache.upsert_pod(parse(json));
            }
        }
        Cluster { cache }
    }

    /// Adds or replaces a policy given as the API's JSON (metadata.namespace/name + spec).
    pub fn policy(&mut self, ns: &str, name: &str, spec: Value) {
        let p: NetworkPolicy = parse(json!({
            "metadata": {"namespace": ns, "name": name}, "spec": spec,
        }));
        self.cache.upsert_policy(p);
    }

    pub fn relabel_pod(&mut self, ns: &str, name: &str, labels: Value) {
        let mut pod: Pod = self.cache.pod(ns, name).unwrap().clone();
        pod.labels = std::sync::Arc::new(parse(labels));
        self.cache.upsert_pod(pod);
    }

    pub fn relabel_namespace(&mut self, ns: &str, labels: Value) {
        let mut n: Namespace = self.cache.namespace(ns).unwrap().clone();
        n.labels = parse(labels);
        self.cache.upsert_namespace(n);
    }

    /// The local pods of a node: every cached pod whose nodeName is that node.
    pub fn local(&self, node: &str) -> BTreeMap<PodKey, LocalPod> {
        self.cache
            .pods()
            .filter(|p| p.node_name == node && !p.host_network)
            .map(|p| {
                let lp = LocalPod {
                    ifname: veth(&p.namespace, &p.name),
                    ips: p.ips.clone(),
                };
                (p.key(), lp)
            })
            .collect()
    }

    pub fn ruleset(&self, node: &str) -> Ruleset {
        compile(&self.cache, &self.local(node))
    }

    pub fn rulesets(&self) -> BTreeMap<&'static str, Ruleset> {
        NODES.iter().map(|&n| (n, self.ruleset(n))).collect()
    }
}

/// Whether a new connection from pod `from` ("x/a") to pod `to` on (protocol, port) passes,
/// asked over IPv4 and over IPv6; panics if the families disagree.
pub fn reach(
    rulesets: &BTreeMap<&str, Ruleset>,
    from: &str,
    to: &str,
    protocol: Protocol,
    port: u16,
) -> bool {
    let (fns, fpod) = from.split_once('/').unwrap();
    let (tns, tpod) = to.split_once('/').unwrap();
    let (fnode, tnode) = (node_of(fpod), node_of(tpod));
    let (fif, tif) = (veth(fns, fpod), veth(tns, tpod));
    let answers: Vec<bool> = (0..2)
        .map(|family| {
            let (src, dst) = (ips_of(fns, fpod)[family], ips_of(tns, tpod)[family]);
            if fnode == tnode {
                allows(
                    &rulesets[fnode],
                    src,
                    Some(&fif),
                    dst,
                    Some(&tif),
                    protocol,
                    port,
                )
            } else {
                allows(&rulesets[fnode], src, Some(&fif), dst, None, protocol, port)
                    && allows(&rulesets[tnode], src, None, dst, Some(&tif), protocol, port)
            }
        })
        .collect();
    assert_eq!(
        answers[0], answers[1],
        "{from} -> {to} {protocol:?}/{port}: IPv4 and IPv6 disagree"
    );
    answers[0]
}

/// The expected 9x9 matrix, edited like upstream's `Reachability`: all allowed to start with.
pub struct Expect {
    allowed: BTreeMap<(String, String), bool>,
}

pub fn all_pods() -> Vec<String> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect()
}

impl Expect {
    pub fn all(value: bool) -> Expect {
        let mut allowed = BTreeMap::new();
        for f in all_pods() {
            for t in all_pods() {
                allowed.insert((f.clone(), t), value);
            }
        }
        Expect { allowed }
    }

    pub fn set(mut self, from: &str, to: &str, value: bool) -> Expect {
        self.allowed.insert((from.into(), to.into()), value);
        self
    }

    /// Every pair with `from` matching the prefix ("x/" or "x/a") and `to` matching its prefix.
    pub fn set_where(mut self, from: &str, to: &str, value: bool) -> Expect {
        for ((f, t), v) in self.allowed.iter_mut() {
            if f.starts_with(from) && t.starts_with(to) {
                *v = value;
            }
        }
        self
    }

    /// Probes the whole matrix (loopback excluded, as upstream) and panics with both truth
    /// tables when it differs.
    pub fn check(&self, cluster: &Cluster, protocol: Protocol, port: u16) {
        let rulesets = cluster.rulesets();
        let mut wrong = Vec::new();
        let mut observed = BTreeMap::new();
        for ((from, to), &want) in &self.allowed {
            if from == to {
                continue;
            }
            let got = reach(&rulesets, from, to, protocol, port);
            observed.insert((from.clone(), to.clone()), got);
            if got != want {
                wrong.push(format!("{from} -> {to}: expected {want}, got {got}"));
            }
        }
        if !wrong.is_empty() {
            panic!(
                "{protocol:?}/{port}: {} wrong\nexpected:\n{}observed:\n{}{}\nrulesets: {rulesets:#?}",
                wrong.len(),
                table(&self.allowed),
                table(&observed),
                wrong.join("\n"),
            );
        }
    }
}

/// Upstream's truth table: rows are clients, columns servers, `.` allowed, `X` denied.
fn table(m: &BTreeMap<(String, String), bool>) -> String {
    let pods = all_pods();
    let mut s = format!("{:5}", "");
    for t in &pods {
        s.push_str(&format!("{t:^4}"));
    }
    s.push('\n');
    for f in &pods {
        s.push_str(&format!("{f:5}"));
        for t in &pods {
            let c = match m.get(&(f.clone(), t.clone())) {
                _ if f == t => '-',
                Some(true) => '.',
                Some(false) => 'X',
                None => '?',
            };
            s.push_str(&format!("{c:^4}"));
        }
        s.push('\n');
    }
    s
}
