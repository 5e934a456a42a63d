//! This node's `NetworkUnavailable` condition. Cloud node controllers (GCE's route controller,
//! for one) register a Node with NetworkUnavailable=True, and the node lifecycle controller
//! keeps the `node.kubernetes.io/network-unavailable:NoSchedule` taint on it until the network
//! plugin says otherwise, as Calico and flannel do. The agent says `False` (reason
//! RoutedCniReady) once this node's conflist is installed and a route sync left every route in
//! place, and `True` (reason RoutedCniNoPodCIDR) when the Node loses its podCIDR after having
//! been marked available: no pod there can get an address then.
//!
//! It patches only when what it would say differs from the condition on its own Node object
//! (status and reason; the message carries counts that change with the cluster and is not a
//! reason to write), so a restart that finds the condition already ours writes nothing, and the
//! MODIFIED event its own patch causes changes nothing the loop acts on (kube.rs
//! `same_routing`). The patch is a strategic merge patch: status.conditions merge by type, so
//! kubelet's conditions stay; a JSON merge patch would replace the whole list.
//!
//! What it does not do: say `True` for route failures (those are transient, /readyz reports
//! them, and tainting the node would move pods away for a repair the next sync makes), or add
//! a `True` condition to a Node that never had one (kubelet's NotReady already covers a node
//! without a CNI config). A condition someone else changed back is corrected at the next
//! reconcile or resync, never at once: two writers that disagree cost one patch per pass, not a
//! loop. A failed patch is logged and named in /readyz's text, and tried again at a later
//! pass after a backoff; it does not make the agent unready, since the node's pods are
//! networked all the same (and the condition left True already keeps new pods off it).

use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::backoff::Backoff;
use super::health::Health;
use super::kube::{ApiClient, Node, NodeInfo, CONNECT_TIMEOUT, PATCH_TIMEOUT};

pub const CONDITION_TYPE: &str = "NetworkUnavailable";
/// Ours, so an operator sees who set it (Calico's is CalicoIsUp, flannel's FlannelIsUp).
pub const REASON_READY: &str = "RoutedCniReady";
pub const REASON_NO_POD_CIDR: &str = "RoutedCniNoPodCIDR";
/// A first retry after a failed patch; doubled up to the resync period.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// One of a Node's status.conditions as decoded (kube.rs NodeStatus): type, status and reason;
/// messages and times are skipped unread.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawCondition {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub reason: String,
}

/// The Node's NetworkUnavailable condition as the API last showed it: only what decides
/// whether the agent has something new to say; the message is ours to vary (node counts)
/// without that counting as a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkCondition {
    /// "True", "False" or "Unknown", as the API spells it.
    pub status: String,
    pub reason: String,
}

/// The NetworkUnavailable condition among a Node's conditions, if it has one.
pub fn project(conditions: &[RawCondition]) -> Option<NetworkCondition> {
    conditions
        .iter()
        .find(|c| c.kind == CONDITION_TYPE)
        .map(|c| NetworkCondition {
            status: c.status.clone(),
            reason: c.reason.clone(),
        })
}

/// What the last reconcile found about this node's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// The conflist is installed for `pod_cidrs` and the last route sync left every route in
    /// place (`nodes` other nodes, `via_vxlan` of them through the tunnel).
    Up {
        pod_cidrs: String,
        nodes: usize,
        via_vxlan: usize,
    },
    /// The Node has no podCIDR.
    NoPodCidr,
    /// Anything in between (not in the list, install or routes failed): nothing new to say;
    /// /readyz says what is wrong.
    Unsettled,
}

/// The condition the agent would set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

/// What to say, if anything, given the node's network and the condition on its Node object.
pub fn decide(network: &Network, seen: Option<&NetworkCondition>) -> Option<Want> {
    let (status, reason, message) = match network {
        Network::Up {
            pod_cidrs,
            nodes,
            via_vxlan,
        } => (
            "False",
            REASON_READY,
            format!("routed-cni: conflist installed for podCIDR {pod_cidrs}; routes to {nodes} other node(s) in place, {via_vxlan} of them through VXLAN"),
        ),
        // Only to take back a claim that the network is there (ours or anyone's): a Node that
        // never had the condition, or has it True already, is left as it is.
        Network::NoPodCidr if seen.is_some_and(|s| s.status != "True") => (
            "True",
            REASON_NO_POD_CIDR,
            "routed-cni: the Node has no podCIDR, so no pod on it can get an address (kube-controller-manager assigns one with --allocate-node-cidrs, or set spec.podCIDRs)".to_string(),
        ),
        Network::NoPodCidr | Network::Unsettled => return None,
    };
    let same = seen.is_some_and(|s| s.status == status && s.reason == reason);
    (!same).then_some(Want {
        status,
        reason,
        message,
    })
}

/// The strategic merge patch that sets `want`. lastTransitionTime only when the status
/// changes (a new reason with the same status is no transition; the merge keeps the old
/// time).
pub fn patch_body(want: &Want, seen: Option<&NetworkCondition>, now: &str) -> serde_json::Value {
    let mut condition = json!({
        "type": CONDITION_TYPE,
        "status": want.status,
        "reason": want.reason,
        "message": want.message,
        "lastHeartbeatTime": now,
    });
    if seen.map(|s| s.status.as_str()) != Some(want.status) {
        condition["lastTransitionTime"] = now.into();
    }
    json!({ "status": { "conditions": [condition] } })
}

/// RFC 3339 in UTC to the second, as metav1.Time serializes.
pub fn rfc3339(t: SystemTime) -> String {
    crate::log::rfc3339(t, false)
}

/// Keeps the condition in line across passes: the client, and when a failed patch may be
/// tried again.
pub struct ConditionSync {
    client: Arc<ApiClient>,
    path: String,
    retry: Backoff,
    retry_at: Option<Instant>,
}

impl ConditionSync {
    pub fn new(client: Arc<ApiClient>, node_name: &str, resync: Duration) -> ConditionSync {
        ConditionSync {
            client,
            path: format!("/api/v1/nodes/{node_name}/status"),
            retry: Backoff::new(FIRST_RETRY, resync),
            retry_at: None,
        }
    }

    /// After a reconcile: patches the condition when there is something new to say. Returns
    /// the condition the Node has after a successful patch, for the agent's cache (so a pass
    /// before the watch brings the MODIFIED event does not patch again).
    pub fn report(
        &mut self,
        network: &Network,
        seen: Option<&NetworkCondition>,
        health: &Health,
    ) -> Option<NetworkCondition> {
        let Some(want) = decide(network, seen) else {
            self.retry_at = None;
            health.condition_problem(None);
            return None;
        };
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return None;
        }
        let body = patch_body(&want, seen, &rfc3339(SystemTime::now())).to_string();
        health.step(
            "patching this node's NetworkUnavailable condition",
            PATCH_TIMEOUT + CONNECT_TIMEOUT * 2,
        );
        let done = self.client.patch::<Node>(
            &self.path,
            "application/strategic-merge-patch+json",
            body.as_bytes(),
        );
        match done {
            Ok(node) => {
                self.retry.reset();
                self.retry_at = None;
                health.condition_problem(None);
                crate::info!(
                    "node condition {CONDITION_TYPE}={} ({}) set: {}",
                    want.status,
                    want.reason,
                    want.message
                );
                // What the server now has; what we sent if its answer lacks it somehow.
                Some(
                    NodeInfo::from_node(&node)
                        .network_unavailable
                        .unwrap_or(NetworkCondition {
                            status: want.status.into(),
                            reason: want.reason.into(),
                        }),
                )
            }
            Err(e) => {
                super::metrics::api_error("nodes/status", &e);
                let wait = self.retry.next_delay();
                self.retry_at = Some(Instant::now() + wait);
                let why = format!(
                    "could not set node condition {CONDITION_TYPE}={} ({}): {e}",
                    want.status, want.reason
                );
                crate::error!(
                    "{why}; trying again at a pass after {:.1}s",
                    wait.as_secs_f64()
                );
                health.condition_problem(Some(why));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(status: &str, reason: &str) -> NetworkCondition {
        NetworkCondition {
            status: status.into(),
            reason: reason.into(),
        }
    }

    fn up() -> Network {
        Network::Up {
            pod_cidrs: "10.244.1.0/24, fd00:10:244:1::/64".into(),
            nodes: 2,
            via_vxlan: 0,
        }
    }

    #[test]
    fn clears_the_cloud_condition_once_the_node_is_up() {
        // GCE registers nodes with this; the route controller would clear it, we do.
        let gce = seen("True", "NoRouteCreated");
        let w = decide(&up(), Some(&gce)).expect("a patch");
        assert_eq!((w.status, w.reason), ("False", REASON_READY));
        assert!(w.message.contains("10.244.1.0/24") && w.message.contains("2 other node(s)"));
        // No condition at all (kubeadm, kind): we add ours.
        assert!(decide(&up(), None).is_some());
        // Someone else's False (a cloud route controller's RouteCreated): ours replaces it.
        assert_eq!(
            decide(&up(), Some(&seen("False", "RouteCreated"))).map(|w| w.reason),
            Some(REASON_READY)
        );
    }

    #[test]
    fn says_nothing_it_has_said_already() {
        // A restart that finds our own condition, or the MODIFIED event of our own patch.
        assert_eq!(decide(&up(), Some(&seen("False", REASON_READY))), None);
        // Counts in the message changing (a node joined) is not a change.
        let bigger = Network::Up {
            pod_cidrs: "10.244.1.0/24".into(),
            nodes: 5000,
            via_vxlan: 12,
        };
        assert_eq!(decide(&bigger, Some(&seen("False", REASON_READY))), None);
        // Not settled (install or routes failed): no claim either way, whatever is there.
        for s in [
            None,
            Some(seen("True", "NoRouteCreated")),
            Some(seen("False", REASON_READY)),
        ] {
            assert_eq!(decide(&Network::Unsettled, s.as_ref()), None, "{s:?}");
        }
    }

    #[test]
    fn takes_it_back_when_the_pod_cidr_goes() {
        let w = decide(&Network::NoPodCidr, Some(&seen("False", REASON_READY))).unwrap();
        assert_eq!((w.status, w.reason), ("True", REASON_NO_POD_CIDR));
        assert!(w.message.contains("no podCIDR"));
        // Already unavailable (the cloud's reason, or ours): left alone; no condition: not added.
        assert_eq!(
            decide(&Network::NoPodCidr, Some(&seen("True", "NoRouteCreated"))),
            None
        );
        assert_eq!(
            decide(&Network::NoPodCidr, Some(&seen("True", REASON_NO_POD_CIDR))),
            None
        );
        assert_eq!(decide(&Network::NoPodCidr, None), None);
        // Unknown is not a claim of availability, but not True either: say it plainly.
        assert!(decide(&Network::NoPodCidr, Some(&seen("Unknown", ""))).is_some());
        // Back with a podCIDR: False again.
        assert!(decide(&up(), Some(&seen("True", REASON_NO_POD_CIDR))).is_some());
    }

    #[test]
    fn the_patch_merges_one_condition_and_moves_the_transition_time_only_on_a_transition() {
        let now = "2026-11-25T15:02:11Z";
        let gce = seen("True", "NoRouteCreated");
        let w = decide(&up(), Some(&gce)).unwrap();
        let body = patch_body(&w, Some(&gce), now);
        let conditions = body["status"]["conditions"].as_array().unwrap();
        assert_eq!(conditions.len(), 1, "only ours: the merge keeps the others");
        let c = &conditions[0];
        assert_eq!(c["type"], CONDITION_TYPE);
        assert_eq!(c["status"], "False");
        assert_eq!(c["reason"], REASON_READY);
        assert_eq!(c["lastTransitionTime"], now);
        assert_eq!(c["lastHeartbeatTime"], now);
        assert_eq!(body.as_object().unwrap().len(), 1, "status only: {body}");
        // False by someone else -> False by us: no transition, so the old time stays.
        let theirs = seen("False", "RouteCreated");
        let w = decide(&up(), Some(&theirs)).unwrap();
        let c = &patch_body(&w, Some(&theirs), now)["status"]["conditions"][0];
        assert!(c.get("lastTransitionTime").is_none(), "{c}");
        assert_eq!(c["lastHeartbeatTime"], now);
    }

    #[test]
    fn the_node_projection_keeps_the_condition_out_of_routing() {
        let json = |extra: &str| {
            format!(
                r#"{{"metadata":{{"name":"n1","resourceVersion":"7"}},
                    "spec":{{"podCIDRs":["10.244.1.0/24"]}},
                    "status":{{"addresses":[{{"type":"InternalIP","address":"100.64.0.1"}}],
                      "conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady",
                                      "message":"kubelet is posting ready status",
                                      "lastHeartbeatTime":"2026-11-25T15:02:11Z"}}{extra}]}}}}"#
            )
        };
        let node = |extra: &str| NodeInfo::from_node(&serde_json::from_str(&json(extra)).unwrap());
        let bare = node("");
        assert_eq!(bare.network_unavailable, None);
        let gce = node(
            r#",{"type":"NetworkUnavailable","status":"True","reason":"NoRouteCreated",
                 "message":"Node created without a route","lastTransitionTime":"2026-11-20T09:14:02Z"}"#,
        );
        assert_eq!(
            gce.network_unavailable,
            Some(seen("True", "NoRouteCreated"))
        );
        let ours = node(&format!(
            r#",{{"type":"NetworkUnavailable","status":"False","reason":"{REASON_READY}"}}"#
        ));
        assert_eq!(ours.network_unavailable, Some(seen("False", REASON_READY)));
        // Our own patch coming back as MODIFIED: the same node for routing, no reconcile.
        assert!(ours.same_routing(&gce) && gce.same_routing(&bare));
        assert_ne!(ours, gce);
        // A routing change is still one.
        let mut moved = ours.clone();
        moved.internal_ips = vec!["100.64.0.9".parse().unwrap()];
        assert!(!moved.same_routing(&ours));
    }

    #[test]
    fn a_refused_patch_says_what_to_grant() {
        let e = |code| {
            crate::agent::kube::KubeError::Patch {
                url: "https://10.96.0.1:443/api/v1/nodes/n1/status".into(),
                code,
                message: "nodes \"n1\" is forbidden".into(),
            }
            .to_string()
        };
        assert!(e(403).starts_with("PATCH https://"), "{}", e(403));
        assert!(e(403).contains("patch on nodes/status"), "{}", e(403));
        assert!(e(404).contains("NODE_NAME"), "{}", e(404));
        assert!(e(401).contains("token"), "{}", e(401));
    }

    #[test]
    fn times_as_the_api_writes_them() {
        let t = |s: u64| rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(t(0), "1970-01-01T00:00:00Z");
        // date -u -d @1795618931
        assert_eq!(t(1_795_618_931), "2026-11-25T15:02:11Z");
        // A leap day.
        assert_eq!(t(951_782_400), "2000-02-29T00:00:00Z");
    }
}
