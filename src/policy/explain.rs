//! The agent's NetworkPolicy view for people, served on its health listener (agent/health.rs):
//! `GET /policy?pod=NS/NAME` (which policies select a pod and what they allow, as written) and
//! `GET /policy/verdict?src=IP&dst=IP&proto=P&port=N` (what this node does with a new
//! connection, and which policy and rule decides it).
//!
//! `View` is what the agent loop keeps (agent/policy.rs) behind one `RwLock`: the watches'
//! cache, this node's pods as the store records them and the Ruleset last applied. The
//! listener takes the read lock for the length of one answer and copies nothing.
//!
//! A verdict is worked out twice: from the policies themselves (which names the policy and the
//! rule, as `kubectl get networkpolicy` shows them) and from the applied Ruleset through
//! `eval` (what the node's table does). The two should agree; when the table lags the cache (the
//! agent applies a burst of changes once) or an apply failed, the answer says so.

mod verdict;

pub use verdict::verdict;

use super::compile::{Direction, LocalPod};
use super::model::{NetworkPolicy, Peer, Pod, PodKey, PolicyCache, PolicyPort, PolicyRule};
use super::ruleset::{Protocol, Ruleset};
use super::selector::{LabelSelector, Operator};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::RwLock;

/// The agent's NetworkPolicy state, shared with the health listener.
#[derive(Debug, Default)]
pub struct View {
    /// This node's name (`NODE_NAME`): where a pod runs is its `spec.nodeName`.
    pub node: String,
    pub cache: PolicyCache,
    /// Pods, Namespaces and NetworkPolicies have each been listed once; before that the cache
    /// is partial and any answer would be wrong.
    pub listed: [bool; 3],
    /// This node's pods as of the last compile (from the plugin's store).
    pub local: BTreeMap<PodKey, LocalPod>,
    /// The Ruleset the node's table was last made; `None` before the first apply and after a
    /// failed one (the table may then be anything).
    pub applied: Option<Ruleset>,
}

/// An answer: an HTTP status code and a JSON body.
pub type Answer = (u16, Value);

impl View {
    pub fn new(node: &str) -> View {
        View {
            node: node.to_string(),
            ..View::default()
        }
    }

    /// 503 until every kind has been listed.
    fn not_ready(&self) -> Option<Answer> {
        let kinds = ["pods", "namespaces", "networkpolicies"];
        let missing: Vec<&str> = (self.listed.iter().zip(kinds))
            .filter(|(l, _)| !**l)
            .map(|(_, k)| k)
            .collect();
        (!missing.is_empty()).then(|| {
            (
                503,
                json!({"error": format!(
                    "the agent has not listed {} from the API server yet",
                    missing.join(", ")
                )}),
            )
        })
    }

    /// The local pod with this address (from the store), with its cache entry if any.
    fn local_by_ip(&self, ip: IpAddr) -> Option<(&PodKey, &LocalPod)> {
        self.local.iter().find(|(_, lp)| lp.ips.contains(&ip))
    }

    /// A pod's addresses as enforcement uses them: a local pod's from the store (known before
    /// the API has them), else the API's.
    fn ips_of<'a>(&'a self, pod: &'a Pod) -> &'a [IpAddr] {
        match self.local.get(&pod.key()) {
            Some(lp) if !lp.ips.is_empty() => &lp.ips,
            _ => &pod.ips,
        }
    }

    /// The selectable pod that has this address (hostNetwork pods share their node's and are
    /// not pods to policy; finished ones may have handed theirs on). One pass over the cache:
    /// this serves a person's question, not a packet.
    fn pod_by_ip(&self, ip: IpAddr) -> Option<&Pod> {
        if let Some((key, _)) = self.local_by_ip(ip) {
            if let Some(pod) = self.cache.pod(&key.namespace, &key.name) {
                return pod.selectable().then_some(pod);
            }
        }
        // The API's address, unless the store gives that pod others (the store wins, as in
        // compile); the cheap test first, the key (two allocations) only for a match.
        self.cache
            .pods()
            .filter(|p| p.selectable() && p.ips.contains(&ip))
            .find(|p| self.ips_of(p).contains(&ip))
    }

    /// Whether a pod runs here: the store has it (that is what enforcement targets).
    fn is_local(&self, pod: &Pod) -> bool {
        self.local.contains_key(&pod.key())
    }

    /// The policies that isolate `pod` for `direction`, in key order.
    fn isolating(&self, pod: &Pod, direction: Direction) -> Vec<&NetworkPolicy> {
        if !pod.selectable() {
            return Vec::new();
        }
        self.cache
            .policies()
            .filter(|p| p.namespace == pod.namespace && p.pod_selector.matches(&pod.labels))
            .filter(|p| match direction {
                Direction::Ingress => p.isolates_ingress,
                Direction::Egress => p.isolates_egress,
            })
            .collect()
    }
}

/// The listener's entry: the answer for `path` (`/policy` or `/policy/verdict`) and its query,
/// `None` for any other path. `view` is `None` when the agent does not enforce NetworkPolicy.
pub fn http(view: Option<&RwLock<View>>, path: &str, query: &str) -> Option<Answer> {
    if path != "/policy" && path != "/policy/verdict" {
        return None;
    }
    let Some(view) = view else {
        return Some((
            503,
            json!({"error": "this agent does not enforce NetworkPolicy (it runs with --network-policy=false)"}),
        ));
    };
    let params = parse_query(query);
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let bad = |msg: String| Some((400, json!({ "error": msg })));
    // Read-locked for one answer: the loop's writes are short, and it never waits on us long.
    let view = view.read().unwrap_or_else(|p| p.into_inner());
    if path == "/policy" {
        return match get("pod").and_then(|p| p.split_once('/')) {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() => {
                Some(pod_view(&view, ns, name))
            }
            _ => bad("want ?pod=NAMESPACE/NAME".into()),
        };
    }
    let ip = |k: &str| get(k).and_then(|v| v.parse::<IpAddr>().ok());
    let (Some(src), Some(dst)) = (ip("src"), ip("dst")) else {
        return bad("want ?src=IP&dst=IP&proto=tcp|udp|sctp&port=N".into());
    };
    let Some(protocol) = parse_protocol(get("proto").unwrap_or("tcp")) else {
        return bad(format!("proto {:?} is not tcp, udp or sctp", get("proto")));
    };
    let Some(port) = get("port")
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|&p| p != 0)
    else {
        return bad(format!("port {:?} is not 1-65535", get("port")));
    };
    Some(verdict(&view, src, dst, protocol, port))
}

/// `a=1&b=%5Bx%5D` into pairs, percent-decoded (`+` is a space, as forms send it).
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET /policy?pod=NS/NAME`.
pub fn pod_view(view: &View, namespace: &str, name: &str) -> Answer {
    if let Some(a) = view.not_ready() {
        return a;
    }
    let Some(pod) = view.cache.pod(namespace, name) else {
        let local = view.local.contains_key(&PodKey::new(namespace, name));
        let error = if local {
            format!("pod {namespace}/{name} runs on this node (the store has it) but the agent has not seen it from the API server yet: until it does, its traffic is held back if its namespace has a policy")
        } else {
            format!("no pod {namespace}/{name} in the agent's cache")
        };
        return (404, json!({"found": false, "error": error}));
    };
    let mut directions = serde_json::Map::new();
    let mut selecting: Vec<&NetworkPolicy> = Vec::new();
    for direction in [Direction::Ingress, Direction::Egress] {
        let isolating = view.isolating(pod, direction);
        for p in &isolating {
            if !selecting.iter().any(|s| s.key() == p.key()) {
                selecting.push(p);
            }
        }
        // Local pods only, once a table is applied: the chain the table sends this pod's
        // traffic through for this direction (null: none, the pod is not isolated there).
        let table = view
            .local
            .get(&pod.key())
            .zip(view.applied.as_ref())
            .map(|(lp, rs)| {
                let map = match direction {
                    Direction::Ingress => &rs.ingress,
                    Direction::Egress => &rs.egress,
                };
                json!({"chain": map.get(&lp.ifname)})
            });
        directions.insert(
            direction.as_str().into(),
            json!({
                "isolated": !isolating.is_empty(),
                "policies": isolating.iter().map(|p| p.key()).collect::<Vec<_>>(),
                "table": table,
            }),
        );
    }
    selecting.sort_by_key(|p| p.key());
    let policies: Vec<Value> = selecting.iter().map(|p| policy_json(p, pod)).collect();
    let mut body = json!({
        "found": true,
        "node": view.node,
        "pod": pod_json(view, pod),
        "policies": policies,
        "tableApplied": view.applied.is_some(),
    });
    body.as_object_mut().expect("object").extend(directions);
    (200, body)
}

fn pod_json(view: &View, pod: &Pod) -> Value {
    let local = view.local.get(&pod.key());
    json!({
        "namespace": pod.namespace,
        "name": pod.name,
        "node": pod.node_name,
        "local": local.is_some(),
        "hostVeth": local.map(|l| &l.ifname),
        "ips": view.ips_of(pod),
        "labels": &*pod.labels,
        "hostNetwork": pod.host_network,
        "terminated": pod.terminated,
        "namedPorts": pod.named_ports.iter().map(|n| json!({
            "name": n.name, "protocol": protocol_name(n.protocol), "port": n.port,
        })).collect::<Vec<_>>(),
    })
}

/// A policy as people read it; `target` is the pod asked about (its container ports resolve
/// the ingress rules' named ports).
fn policy_json(policy: &NetworkPolicy, target: &Pod) -> Value {
    let mut types = Vec::new();
    if policy.isolates_ingress {
        types.push("Ingress");
    }
    if policy.isolates_egress {
        types.push("Egress");
    }
    let rules = |direction: Direction, list: &[PolicyRule]| -> Vec<Value> {
        list.iter()
            .enumerate()
            .map(|(i, r)| rule_json(policy, direction, i, r, Some(target)))
            .collect()
    };
    json!({
        "policy": policy.key(),
        "podSelector": selector_text(&policy.pod_selector),
        "policyTypes": types,
        "ingress": rules(Direction::Ingress, &policy.ingress),
        "egress": rules(Direction::Egress, &policy.egress),
    })
}

/// One rule: its peers and ports as data and as one line. `target` (the pod the policy
/// selects) resolves ingress named ports; egress ones resolve per destination pod.
pub(crate) fn rule_json(
    policy: &NetworkPolicy,
    direction: Direction,
    index: usize,
    rule: &PolicyRule,
    target: Option<&Pod>,
) -> Value {
    let peers: Vec<Value> = rule
        .peers
        .iter()
        .map(|p| peer_json(&policy.namespace, p))
        .collect();
    let resolve = match direction {
        Direction::Ingress => target,
        Direction::Egress => None,
    };
    let ports: Vec<Value> = rule.ports.iter().map(|p| port_json(p, resolve)).collect();
    let word = match direction {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    };
    let who = if peers.is_empty() {
        "anyone".to_string()
    } else {
        join_text(&peers, " or ")
    };
    let what = if ports.is_empty() {
        "any port".to_string()
    } else {
        join_text(&ports, ", ")
    };
    json!({
        "index": index,
        "anyPeer": peers.is_empty(),
        "peers": peers,
        "anyPort": ports.is_empty(),
        "ports": ports,
        "text": format!("{word} {who}, on {what}"),
    })
}

fn join_text(items: &[Value], sep: &str) -> String {
    items
        .iter()
        .map(|v| v["text"].as_str().unwrap_or("?"))
        .collect::<Vec<_>>()
        .join(sep)
}

fn peer_json(policy_namespace: &str, peer: &Peer) -> Value {
    match peer {
        Peer::Pods {
            pod_selector,
            namespace_selector,
        } => {
            let pods = match pod_selector.as_ref().map(selector_text) {
                None => "every pod".to_string(),
                Some(s) if s.is_empty() => "every pod".to_string(),
                Some(s) => format!("pods {s}"),
            };
            let namespaces = match namespace_selector.as_ref().map(selector_text) {
                None => format!("namespace {policy_namespace}"),
                Some(s) if s.is_empty() => "every namespace".to_string(),
                Some(s) => format!("namespaces {s}"),
            };
            json!({
                "podSelector": pod_selector.as_ref().map(selector_text),
                "namespaceSelector": namespace_selector.as_ref().map(selector_text),
                "text": format!("{pods} in {namespaces}"),
            })
        }
        Peer::IpBlock(b) => {
            let except: Vec<String> = b.except.iter().map(|e| e.to_string()).collect();
            let text = if except.is_empty() {
                b.cidr.to_string()
            } else {
                format!("{} except {}", b.cidr, except.join(", "))
            };
            json!({"ipBlock": {"cidr": b.cidr.to_string(), "except": except}, "text": text})
        }
        Peer::Invalid(why) => json!({
            "invalid": why,
            "text": format!("(invalid peer, matches nothing: {why})"),
        }),
    }
}

fn port_json(port: &PolicyPort, resolve: Option<&Pod>) -> Value {
    match port {
        PolicyPort::Numeric {
            protocol,
            range: None,
        } => json!({
            "protocol": protocol_name(*protocol),
            "text": format!("every {} port", protocol_name(*protocol)),
        }),
        PolicyPort::Numeric {
            protocol,
            range: Some((lo, hi)),
        } => {
            let text = if lo == hi {
                format!("{} {lo}", protocol_name(*protocol))
            } else {
                format!("{} {lo}-{hi}", protocol_name(*protocol))
            };
            json!({
                "protocol": protocol_name(*protocol),
                "port": lo,
                "endPort": (lo != hi).then_some(hi),
                "text": text,
            })
        }
        PolicyPort::Named { protocol, name } => {
            let p = protocol_name(*protocol);
            let resolved = resolve.map(|pod| named_port(pod, *protocol, name));
            let text = match resolved {
                Some(Some(n)) => format!("{p} {name} (= {n} on this pod)"),
                Some(None) => format!("{p} {name} (this pod has no such port: matches nothing)"),
                None => format!("{p} {name} (the destination pod's port of that name)"),
            };
            json!({"protocol": p, "port": name, "resolved": resolved.flatten(), "text": text})
        }
        PolicyPort::Invalid(why) => json!({
            "invalid": why,
            "text": format!("(invalid port, matches nothing: {why})"),
        }),
    }
}

/// The number a pod's container port of this name and protocol has.
pub(crate) fn named_port(pod: &Pod, protocol: Protocol, name: &str) -> Option<u16> {
    pod.named_ports
        .iter()
        .find(|n| n.protocol == protocol && n.name == name)
        .map(|n| n.port)
}

pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

/// `tcp`, `udp`, `sctp` in any case.
pub fn parse_protocol(s: &str) -> Option<Protocol> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        "sctp" => Some(Protocol::Sctp),
        _ => None,
    }
}

/// A label selector the way kubectl's `-l` writes one: `app=web,tier in (a,b),!canary`; an
/// empty selector (everything) is "".
pub fn selector_text(s: &LabelSelector) -> String {
    let mut parts: Vec<String> = s
        .match_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for r in &s.match_expressions {
        let values = r.values.join(",");
        parts.push(match r.operator {
            Operator::In => format!("{} in ({values})", r.key),
            Operator::NotIn => format!("{} notin ({values})", r.key),
            Operator::Exists => r.key.clone(),
            Operator::DoesNotExist => format!("!{}", r.key),
            Operator::Unknown => format!("{} <unknown operator> ({values})", r.key),
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests;
