//! `routed-cni policy --pod NS/NAME`: the policies selecting a pod and what they allow, from
//! the local agent's view (`GET /policy`, policy/explain.rs). Exit 0 found, 1 the agent does not
//! know the pod, 2 usage, 3 no answer from the agent (or it has no NetworkPolicy view).

use super::client::{self, AgentError};
use serde_json::Value;
use std::fmt::Write;
use std::net::SocketAddr;

pub const EXIT_FOUND: i32 = 0;
pub const EXIT_UNKNOWN_POD: i32 = 1;
pub const EXIT_AGENT: i32 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub namespace: String,
    pub name: String,
    pub agent_addr: SocketAddr,
    pub json: bool,
}

pub fn run(o: &Options) -> i32 {
    match client::pod(o.agent_addr, &o.namespace, &o.name) {
        Ok((found, body)) => {
            if o.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&body).expect("serializes")
                );
            } else if found {
                print!("{}", text(&body));
            }
            if found {
                EXIT_FOUND
            } else {
                eprintln!(
                    "routed-cni policy: {}",
                    body["error"].as_str().unwrap_or("pod not known")
                );
                EXIT_UNKNOWN_POD
            }
        }
        Err(e) => {
            if o.json {
                let unreachable = matches!(e, AgentError::Unreachable(_));
                println!(
                    "{}",
                    serde_json::json!({"found": null, "agentUnreachable": unreachable, "error": e.explain(o.agent_addr)})
                );
            }
            eprintln!("routed-cni policy: {}", e.explain(o.agent_addr));
            EXIT_AGENT
        }
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

fn list(v: &Value, sep: &str) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect::<Vec<_>>()
                .join(sep)
        })
        .unwrap_or_default()
}

/// The view for people: the pod, its isolation per direction, then each selecting policy's
/// rules one per line.
pub fn text(body: &Value) -> String {
    let pod = &body["pod"];
    let mut out = String::new();
    let place = if pod["local"] == true {
        format!("this node, host veth {}", s(&pod["hostVeth"]))
    } else {
        "another node: its rules are enforced there".to_string()
    };
    let _ = writeln!(
        out,
        "pod {}/{} on node {} ({place})",
        s(&pod["namespace"]),
        s(&pod["name"]),
        s(&pod["node"])
    );
    let ips = list(&pod["ips"], ", ");
    let _ = writeln!(
        out,
        "  addresses: {}",
        if ips.is_empty() { "none yet" } else { &ips }
    );
    let labels: Vec<String> = pod["labels"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", s(v))).collect())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "  labels: {}",
        if labels.is_empty() {
            "none".into()
        } else {
            labels.join(",")
        }
    );
    if pod["hostNetwork"] == true || pod["terminated"] == true {
        let _ = writeln!(
            out,
            "  {}: no policy selects it",
            if pod["hostNetwork"] == true {
                "hostNetwork pod"
            } else {
                "finished pod"
            }
        );
    }
    for d in ["ingress", "egress"] {
        let dir = &body[d];
        let line = if dir["isolated"] == true {
            format!("isolated by {}", list(&dir["policies"], ", "))
        } else {
            "not isolated: everything allowed".to_string()
        };
        let table = match dir["table"]["chain"].as_str() {
            Some(c) => format!(" (table chain {c})"),
            None => String::new(),
        };
        let _ = writeln!(out, "  {d:<8} {line}{table}");
    }
    if pod["local"] == true && body["tableApplied"] != true {
        let _ = writeln!(
            out,
            "  note: the agent has not applied a table yet (or the last apply failed)"
        );
    }
    for p in body["policies"].as_array().into_iter().flatten() {
        let sel = s(&p["podSelector"]);
        let _ = writeln!(
            out,
            "policy {}  (podSelector {}; policyTypes {})",
            s(&p["policy"]),
            if sel.is_empty() {
                "{} (every pod)"
            } else {
                sel
            },
            list(&p["policyTypes"], ", ")
        );
        for d in ["ingress", "egress"] {
            let isolates = p["policyTypes"].as_array().is_some_and(|t| {
                t.iter()
                    .any(|x| x.as_str().is_some_and(|x| x.eq_ignore_ascii_case(d)))
            });
            let rules = p[d].as_array().map(Vec::as_slice).unwrap_or_default();
            if isolates && rules.is_empty() {
                let _ = writeln!(out, "  {d}: no rules: allows nothing");
            }
            for r in rules {
                let _ = writeln!(out, "  {d} rule {}: {}", r["index"], s(&r["text"]));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_agents_view() {
        let body = json!({
            "found": true, "node": "n1", "tableApplied": true,
            "pod": {"namespace": "x", "name": "a", "node": "n1", "local": true,
                    "hostVeth": "rcni-x-a", "ips": ["10.0.1.1"], "labels": {"pod": "a"},
                    "hostNetwork": false, "terminated": false, "namedPorts": []},
            "ingress": {"isolated": true, "policies": ["x/allow-b", "x/deny"], "table": {"chain": "ing-1"}},
            "egress": {"isolated": false, "policies": [], "table": {"chain": null}},
            "policies": [
                {"policy": "x/allow-b", "podSelector": "pod=a", "policyTypes": ["Ingress"],
                 "ingress": [{"index": 0, "text": "from pods pod=b in namespace x, on TCP 80"}], "egress": []},
                {"policy": "x/deny", "podSelector": "", "policyTypes": ["Ingress"],
                 "ingress": [], "egress": []},
            ],
        });
        let t = text(&body);
        for want in [
            "pod x/a on node n1 (this node, host veth rcni-x-a)",
            "addresses: 10.0.1.1",
            "labels: pod=a",
            "ingress  isolated by x/allow-b, x/deny (table chain ing-1)",
            "egress   not isolated: everything allowed",
            "policy x/allow-b  (podSelector pod=a; policyTypes Ingress)",
            "  ingress rule 0: from pods pod=b in namespace x, on TCP 80",
            "policy x/deny  (podSelector {} (every pod); policyTypes Ingress)",
            "  ingress: no rules: allows nothing",
        ] {
            assert!(t.contains(want), "missing {want:?} in:\n{t}");
        }
        assert!(!t.contains("egress: no rules"), "{t}");
    }
}
