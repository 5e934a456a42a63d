//! `GET /policy/verdict`: what this node does with a new connection from `src` to `dst`.
//! Egress is decided on the source's node, ingress on the destination's; this node answers for
//! the side(s) it holds and names where the other side is decided.

use super::{named_port, protocol_name, rule_json, Answer, View};
use crate::policy::compile::Direction;
use crate::policy::eval;
use crate::policy::model::{NetworkPolicy, Peer, Pod, PolicyPort, PolicyRule};
use crate::policy::ruleset::Protocol;
use serde_json::{json, Value};
use std::net::IpAddr;

/// One connection as asked.
struct Conn<'a> {
    src: IpAddr,
    dst: IpAddr,
    src_pod: Option<&'a Pod>,
    dst_pod: Option<&'a Pod>,
    protocol: Protocol,
    port: u16,
}

impl Conn<'_> {
    /// The packet's other end for this direction: ingress looks at the source, egress at the
    /// destination.
    fn peer(&self, direction: Direction) -> (IpAddr, Option<&Pod>) {
        match direction {
            Direction::Ingress => (self.src, self.src_pod),
            Direction::Egress => (self.dst, self.dst_pod),
        }
    }

    fn what(&self) -> String {
        format!("{} {}", protocol_name(self.protocol), self.port)
    }
}

/// `GET /policy/verdict?src=IP&dst=IP&proto=tcp|udp|sctp&port=N`.
pub fn verdict(view: &View, src: IpAddr, dst: IpAddr, protocol: Protocol, port: u16) -> Answer {
    if let Some(a) = view.not_ready() {
        return a;
    }
    let c = Conn {
        src,
        dst,
        src_pod: view.pod_by_ip(src),
        dst_pod: view.pod_by_ip(dst),
        protocol,
        port,
    };
    let egress = side(view, &c, Direction::Egress);
    let ingress = side(view, &c, Direction::Ingress);
    let decided: Vec<bool> = [&egress, &ingress]
        .iter()
        .filter_map(|s| s["allowed"].as_bool())
        .collect();
    let allowed = (!decided.is_empty()).then(|| decided.iter().all(|&a| a));
    let text = match allowed {
        None => format!(
            "neither {src} nor {dst} is a pod on node {}: this node decides nothing for this connection",
            view.node
        ),
        Some(true) => format!("allowed on node {}", view.node),
        Some(false) => format!("denied on node {}", view.node),
    };
    (
        200,
        json!({
            "node": view.node,
            "src": endpoint(view, src, c.src_pod),
            "dst": endpoint(view, dst, c.dst_pod),
            "protocol": protocol_name(protocol),
            "port": port,
            "allowed": allowed,
            "egress": egress,
            "ingress": ingress,
            "tableApplied": view.applied.is_some(),
            "text": text,
        }),
    )
}

fn endpoint(view: &View, ip: IpAddr, pod: Option<&Pod>) -> Value {
    json!({
        "ip": ip,
        "pod": pod.map(|p| p.key().to_string()),
        "node": pod.map(|p| &p.node_name),
        "local": pod.is_some_and(|p| view.is_local(p)),
    })
}

fn describe(ip: IpAddr, pod: Option<&Pod>) -> String {
    match pod {
        Some(p) => format!("{ip} (pod {})", p.key()),
        None => ip.to_string(),
    }
}

/// This node's answer for one direction; `allowed` is absent when the side is not here.
fn side(view: &View, c: &Conn, direction: Direction) -> Value {
    let (ip, pod) = match direction {
        Direction::Egress => (c.src, c.src_pod),
        Direction::Ingress => (c.dst, c.dst_pod),
    };
    let role = match direction {
        Direction::Egress => "source",
        Direction::Ingress => "destination",
    };
    let Some(pod) = pod.filter(|p| view.is_local(p)) else {
        let text = match (pod, view.local_by_ip(ip)) {
            (Some(p), _) => format!(
                "not on this node (pod {} on node {})",
                p.key(),
                if p.node_name.is_empty() { "?" } else { &p.node_name }
            ),
            (None, Some((key, _))) => format!(
                "{role} {ip} is pod {key} on this node, not yet seen from the API server: its traffic is held back until the agent has its labels"
            ),
            (None, None) => format!(
                "{role} {ip} is not a pod the agent knows: no {} policy applies to it (other ends match it only by ipBlock)",
                direction.as_str()
            ),
        };
        return json!({"onThisNode": false, "text": text});
    };
    let isolating = view.isolating(pod, direction);
    let (peer_ip, peer_pod) = c.peer(direction);
    let peer = describe(peer_ip, peer_pod);
    let word = match direction {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    };
    let allowed_by = isolating.iter().find_map(|p| {
        let rules = match direction {
            Direction::Ingress => &p.ingress,
            Direction::Egress => &p.egress,
        };
        rules
            .iter()
            .position(|r| rule_matches(view, p, direction, r, c, pod))
            .map(|i| (p, i, &rules[i]))
    });
    let allowed = isolating.is_empty() || allowed_by.is_some();
    let text = match (&allowed_by, isolating.is_empty()) {
        (_, true) => format!(
            "{} is not isolated for {}: no policy selecting it has {} in its policyTypes",
            pod.key(),
            direction.as_str(),
            cap(direction.as_str())
        ),
        (Some((p, i, _)), _) => format!(
            "{} allows {} {word} {peer}: {} rule {i}",
            p.key(),
            c.what(),
            direction.as_str()
        ),
        (None, false) => format!(
            "no policy allows it: {} is isolated for {} by {}, and none of their rules allows {} {word} {peer}",
            pod.key(),
            direction.as_str(),
            keys(&isolating),
            c.what()
        ),
    };
    let table = table_check(view, c, pod, direction, !isolating.is_empty(), allowed);
    json!({
        "onThisNode": true,
        "pod": pod.key().to_string(),
        "isolated": !isolating.is_empty(),
        "isolatingPolicies": isolating.iter().map(|p| p.key()).collect::<Vec<_>>(),
        "allowed": allowed,
        "allowedBy": allowed_by.map(|(p, i, r)| json!({
            "policy": p.key(),
            "rule": i,
            "text": rule_json(p, direction, i, r, Some(pod))["text"],
        })),
        "table": table,
        "text": text,
    })
}

fn cap(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn keys(policies: &[&NetworkPolicy]) -> String {
    policies
        .iter()
        .map(|p| p.key())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the applied table does with the same packet (policy/eval.rs), and whether that is what
/// the policies say: it lags the cache until the agent's next apply, and is unknown when no
/// apply has succeeded.
fn table_check(
    view: &View,
    c: &Conn,
    pod: &Pod,
    direction: Direction,
    isolated: bool,
    allowed: bool,
) -> Value {
    let (Some(rs), Some(lp)) = (view.applied.as_ref(), view.local.get(&pod.key())) else {
        return json!({"applied": false, "text": "no table applied yet (or the last apply failed): the node may not enforce this"});
    };
    let map = match direction {
        Direction::Ingress => &rs.ingress,
        Direction::Egress => &rs.egress,
    };
    let (peer_ip, _) = c.peer(direction);
    let (t_isolated, t_allowed) = match map.get(&lp.ifname).map(|n| (n, rs.chains.get(n))) {
        None => (false, true),
        Some((_, Some(chain))) => (
            true,
            eval::matching_rule(rs, chain, peer_ip, c.dst, c.protocol, c.port).is_some(),
        ),
        // The compiler never names a chain it did not build; say so rather than guess.
        Some((name, None)) => {
            return json!({"applied": true, "agrees": false, "text": format!("the table maps {} to chain {name}, which it does not have", lp.ifname)})
        }
    };
    let agrees = t_isolated == isolated && t_allowed == allowed;
    let text = if agrees {
        "the node's table agrees".to_string()
    } else {
        format!(
            "the node's table {} it ({}isolated): it lags the policies until the agent's next apply",
            if t_allowed { "allows" } else { "drops" },
            if t_isolated { "" } else { "not " }
        )
    };
    json!({
        "applied": true,
        "chain": map.get(&lp.ifname),
        "isolated": t_isolated,
        "allowed": t_allowed,
        "agrees": agrees,
        "text": text,
    })
}

/// Whether one rule of `policy` (which selects `target`) matches the connection, as the API
/// defines it: the compiler's semantics (compile.rs) over the cache, not over the table.
fn rule_matches(
    view: &View,
    policy: &NetworkPolicy,
    direction: Direction,
    rule: &PolicyRule,
    c: &Conn,
    target: &Pod,
) -> bool {
    let (peer_ip, peer_pod) = c.peer(direction);
    let peer_ok = rule.peers.is_empty()
        || rule.peers.iter().any(|peer| match peer {
            Peer::Pods {
                pod_selector,
                namespace_selector,
            } => peer_pod.is_some_and(|pp| {
                let namespace_ok = match namespace_selector {
                    None => pp.namespace == policy.namespace,
                    // A namespace not in the cache has no labels we know: nothing selects it.
                    Some(s) => {
                        (view.cache.namespace(&pp.namespace)).is_some_and(|n| s.matches(&n.labels))
                    }
                };
                namespace_ok && pod_selector.as_ref().is_none_or(|s| s.matches(&pp.labels))
            }),
            Peer::IpBlock(b) => {
                b.cidr.contains(peer_ip) && !b.except.iter().any(|e| e.contains(peer_ip))
            }
            Peer::Invalid(_) => false,
        });
    // A named port is the destination pod's: the target for ingress, the peer for egress.
    let port_pod = match direction {
        Direction::Ingress => Some(target),
        Direction::Egress => c.dst_pod,
    };
    let ports_ok = rule.ports.is_empty()
        || rule.ports.iter().any(|p| match p {
            PolicyPort::Numeric { protocol, range } => {
                *protocol == c.protocol && range.is_none_or(|(lo, hi)| lo <= c.port && c.port <= hi)
            }
            PolicyPort::Named { protocol, name } => {
                *protocol == c.protocol
                    && port_pod.and_then(|d| named_port(d, *protocol, name)) == Some(c.port)
            }
            PolicyPort::Invalid(_) => false,
        });
    peer_ok && ports_ok
}
