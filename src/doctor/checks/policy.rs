//! `--to IP:PORT`: whether NetworkPolicy lets the pod's new TCP connection through, as the local
//! agent sees it (`GET /policy/verdict`, policy/explain.rs): this node holds the pod's egress
//! side, and the ingress side too when the destination is a pod here. The agent not answering
//! is no fault of the path (it may run without --network-policy, or another engine enforces
//! policy): the step is skipped and says why.

use serde_json::Value;

use super::{Dest, Walk};
use crate::doctor::report::Step;
use crate::policy::client;

const ID: &str = "policy";
const TITLE: &str = "NetworkPolicy";

impl Walk<'_> {
    pub(super) fn policy(&mut self, d: Dest) {
        let Some(port) = d.port else {
            return;
        };
        let step = if d.ip.is_ipv6() != self.t.ip.is_ipv6() {
            Step::skip(ID, TITLE, format!("{} is the other family", d.ip))
        } else {
            let addr = self.node.agent_addr;
            match client::verdict(addr, self.t.ip, d.ip, "tcp", port) {
                Ok(v) => step(&v),
                Err(e) => Step::skip(ID, TITLE, e.explain(addr)),
            }
        };
        self.steps.push(step);
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

/// The step for one verdict of the agent.
pub(super) fn step(v: &Value) -> Step {
    let node = s(&v["node"]);
    let what = format!(
        "{} {} -> {}:{}",
        s(&v["protocol"]),
        s(&v["src"]["ip"]),
        s(&v["dst"]["ip"]),
        v["port"]
    );
    let sides: Vec<(&str, &Value)> = ["egress", "ingress"].map(|d| (d, &v[d])).into();
    let here: Vec<&(&str, &Value)> = sides
        .iter()
        .filter(|(_, s)| s["onThisNode"] == true)
        .collect();
    // Each side in one clause: decided here (and how), or where it is decided instead.
    let clauses: Vec<String> = sides
        .iter()
        .map(|(d, side)| {
            if side["onThisNode"] != true {
                return format!("{d}: {}", s(&side["text"]));
            }
            match &side["allowedBy"] {
                Value::Object(by) => format!(
                    "{d} allowed by {} rule {} on node {node}",
                    s(&by["policy"]),
                    by["rule"]
                ),
                _ if side["isolated"] != true => format!("{d} not isolated on node {node}"),
                _ => format!("{d} denied on node {node}"),
            }
        })
        .collect();
    let saw = format!("{what}: {}", clauses.join("; "));
    let details = v.clone();
    let denied: Vec<&(&str, &Value)> = here
        .iter()
        .copied()
        .filter(|(_, s)| s["allowed"] == false)
        .collect();
    if let Some((d, side)) = denied.first() {
        let pod = s(&side["pod"]);
        let policies: Vec<&str> = side["isolatingPolicies"]
            .as_array()
            .map(|a| a.iter().map(s).collect())
            .unwrap_or_default();
        let (word, peer) = match *d {
            "egress" => ("to", format!("{}:{}", s(&v["dst"]["ip"]), v["port"])),
            _ => ("from", s(&v["src"]["ip"]).to_string()),
        };
        return Step::fail(ID, TITLE, saw)
            .why(format!("{}; the connection is dropped on node {node}", s(&side["text"])))
            .fix(format!(
                "# give one of {} (or a new policy selecting {pod}) an {d} rule allowing {} {} {word} {peer}; see the rules with:",
                policies.join(", "),
                s(&v["protocol"]),
                v["port"],
            ))
            .fix(format!("routed-cni policy --pod {pod}"))
            .details(details);
    }
    // A side here that the table decides differently, or a local pod the agent has not seen.
    if let Some((d, side)) = here.iter().find(|(_, s)| s["table"]["agrees"] == false) {
        return Step::warn(ID, TITLE, saw)
            .why(format!("{d}: {}", s(&side["table"]["text"])))
            .details(details);
    }
    if let Some((d, side)) = sides.iter().find(|(_, s)| {
        s["onThisNode"] != true && s["text"].as_str().is_some_and(|t| t.contains("held back"))
    }) {
        return Step::warn(ID, TITLE, saw)
            .why(format!("{d}: {}", s(&side["text"])))
            .details(details);
    }
    if here.iter().all(|(_, s)| s["isolated"] != true) {
        let saw = if here.is_empty() {
            format!("{what}: {}", s(&v["text"]))
        } else {
            format!(
                "{what}: no policy isolates either side on this node; {}",
                clauses.join("; ")
            )
        };
        return Step::ok(ID, TITLE, saw).details(details);
    }
    Step::ok(ID, TITLE, saw).details(details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::report::Status;
    use serde_json::json;

    fn verdict(egress: Value, ingress: Value) -> Value {
        json!({
            "node": "n1", "protocol": "TCP", "port": 80,
            "src": {"ip": "10.0.1.3", "pod": "x/c", "node": "n1", "local": true},
            "dst": {"ip": "10.0.1.1", "pod": "x/a", "node": "n1", "local": true},
            "egress": egress, "ingress": ingress,
        })
    }

    fn open(pod: &str) -> Value {
        json!({"onThisNode": true, "pod": pod, "isolated": false, "isolatingPolicies": [],
               "allowed": true, "allowedBy": null, "table": {"applied": true, "agrees": true}})
    }

    #[test]
    fn allowed_names_the_policy_rule_direction_and_node() {
        let mut ingress = open("x/a");
        ingress["isolated"] = json!(true);
        ingress["isolatingPolicies"] = json!(["x/allow-c"]);
        ingress["allowedBy"] = json!({"policy": "x/allow-c", "rule": 1, "text": "from ..."});
        let st = step(&verdict(open("x/c"), ingress));
        assert_eq!(st.status, Status::Ok, "{st:?}");
        assert_eq!(
            st.saw,
            "TCP 10.0.1.3 -> 10.0.1.1:80: egress not isolated on node n1; ingress allowed by x/allow-c rule 1 on node n1"
        );
        assert_eq!(st.details["egress"]["pod"], "x/c");
    }

    #[test]
    fn nothing_isolated_says_so() {
        let mut v = verdict(
            open("x/c"),
            json!({"onThisNode": false, "text": "not on this node (pod y/b on node n2)"}),
        );
        v["dst"] = json!({"ip": "10.0.2.2", "pod": "y/b", "node": "n2", "local": false});
        let st = step(&v);
        assert_eq!(st.status, Status::Ok, "{st:?}");
        assert!(
            st.saw
                .contains("no policy isolates either side on this node")
                && st
                    .saw
                    .contains("ingress: not on this node (pod y/b on node n2)"),
            "{}",
            st.saw
        );
    }

    #[test]
    fn denied_fails_with_the_isolating_policies_and_what_to_change() {
        let mut ingress = open("x/a");
        ingress["isolated"] = json!(true);
        ingress["allowed"] = json!(false);
        ingress["isolatingPolicies"] = json!(["x/allow-b", "x/deny"]);
        ingress["text"] = json!("no policy allows it: x/a is isolated for ingress by x/allow-b, x/deny, and none of their rules allows TCP 80 from 10.0.1.3 (pod x/c)");
        let st = step(&verdict(open("x/c"), ingress));
        assert_eq!(st.status, Status::Fail, "{st:?}");
        assert!(st.saw.contains("ingress denied on node n1"), "{}", st.saw);
        let why = st.why.as_deref().unwrap();
        assert!(
            why.starts_with("no policy allows it") && why.contains("x/deny"),
            "{why}"
        );
        assert!(
            st.fix[0].contains("x/allow-b, x/deny")
                && st.fix[0].contains("ingress rule allowing TCP 80 from 10.0.1.3"),
            "{:?}",
            st.fix
        );
        assert_eq!(st.fix[1], "routed-cni policy --pod x/a");
    }

    #[test]
    fn a_lagging_table_warns() {
        let mut egress = open("x/c");
        egress["table"] = json!({"applied": true, "agrees": false, "text": "the node's table drops it (isolated): it lags"});
        let st = step(&verdict(egress, open("x/a")));
        assert_eq!(st.status, Status::Warn, "{st:?}");
        assert!(st
            .why
            .as_deref()
            .unwrap()
            .starts_with("egress: the node's table drops it"));
    }
}
