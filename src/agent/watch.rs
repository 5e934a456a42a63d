//! The agent's inputs, each on its own thread, all into one channel that the agent loop
//! (mod.rs) drains: the Node list + watch (like client-go's reflector: list at start and after
//! an expired (410) or failed watch, otherwise watch on from the last version seen), and
//! changes of this node's own routes (monitor.rs). A blocked API read therefore never keeps
//! the agent from reacting to its own node, and further watches (issue 17's Pods, Namespaces
//! and NetworkPolicies) are more senders on the same channel.

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backoff::Backoff;
use super::health::Health;
use super::kube::{ApiClient, KubeError, Node, NodeInfo, WatchEvent};
use super::metrics;
use crate::policy::model::{Namespace, NetworkPolicy, Pod};
use serde::de::DeserializeOwned;

/// A first retry after an API error; doubled up to the resync period or MAX_BACKOFF.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// However long the API server has been away, an agent tries again at least this often, so
/// nodes catch up soon after it is back (the jitter keeps them from arriving all at once).
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A watch that ends sooner than this without an error was refused in effect: back off before
/// the next one. (A normal watch lasts until its timeout, at least a second.)
const QUICK_WATCH_END: Duration = Duration::from_millis(200);

/// What the agent loop is told.
#[derive(Debug)]
pub enum Input {
    /// Every Node, from a fresh list (start, relist): the cache is replaced.
    Listed(Vec<NodeInfo>),
    /// A Node added or changed.
    Upserted(NodeInfo),
    /// A Node deleted.
    Deleted(String),
    /// The first list failed: the agent has nothing to work from yet, and says so.
    ListFailed,
    /// This node's own routes changed (an address added or removed, a link up or down): which
    /// nodes are reached directly may have changed.
    LocalRoutes(String),
    /// A pod's host route came or went: a pod was added to or deleted from this node.
    PodRoutes,
    /// NetworkPolicy's inputs (only with --network-policy), with the resourceVersion of the
    /// event (empty for a list), which the agent's "policy applied" line names.
    Policy(PolicyInput, String),
}

/// A change of what NetworkPolicy enforcement is computed from.
#[derive(Debug)]
pub enum PolicyInput {
    Pods(Vec<Pod>),
    Pod(Pod),
    PodGone(String, String),
    Namespaces(Vec<Namespace>),
    Namespace(Namespace),
    NamespaceGone(String),
    Policies(Vec<NetworkPolicy>),
    Policy(NetworkPolicy),
    PolicyGone(String, String),
}

/// A kind the agent lists and watches, and how its objects become inputs.
pub trait Watched: DeserializeOwned + Send + 'static {
    /// The collection, across all namespaces.
    const PATH: &'static str;
    /// For the log: "node", "pod", ...
    const WHAT: &'static str;
    fn version(&self) -> String;
    fn listed(all: Vec<Self>) -> Input;
    fn upserted(self) -> Input;
    fn deleted(self) -> Input;
}

/// A Node as the agent keeps it, reduced as it is decoded: a list of 5,000 Nodes never holds
/// the decoded objects and their projections at once (~2 MiB of a first sync's peak).
#[derive(Debug, serde::Deserialize)]
#[serde(from = "Node")]
pub struct NodeEvent {
    info: NodeInfo,
    version: String,
}

impl From<Node> for NodeEvent {
    fn from(node: Node) -> NodeEvent {
        NodeEvent {
            info: NodeInfo::from_node(&node),
            version: node.metadata.resource_version,
        }
    }
}

impl Watched for NodeEvent {
    const PATH: &'static str = "/api/v1/nodes";
    const WHAT: &'static str = "node";
    fn version(&self) -> String {
        self.version.clone()
    }
    fn listed(all: Vec<Self>) -> Input {
        Input::Listed(all.into_iter().map(|n| n.info).collect())
    }
    fn upserted(self) -> Input {
        Input::Upserted(self.info)
    }
    fn deleted(self) -> Input {
        Input::Deleted(self.info.name)
    }
}

impl Watched for Pod {
    /// Finished pods (Succeeded, Failed: a cluster's completed Jobs can be most of its pods)
    /// are neither targets nor peers; the server leaves them out, and a pod that finishes
    /// arrives as DELETED, as the watch cache does for an object that stops matching.
    const PATH: &'static str =
        "/api/v1/pods?fieldSelector=status.phase%21%3DSucceeded%2Cstatus.phase%21%3DFailed";
    const WHAT: &'static str = "pod";
    fn version(&self) -> String {
        self.resource_version.clone()
    }
    fn listed(all: Vec<Self>) -> Input {
        Input::Policy(PolicyInput::Pods(all), String::new())
    }
    fn upserted(self) -> Input {
        let version = self.resource_version.clone();
        Input::Policy(PolicyInput::Pod(self), version)
    }
    fn deleted(self) -> Input {
        Input::Policy(
            PolicyInput::PodGone(self.namespace, self.name),
            self.resource_version,
        )
    }
}

impl Watched for Namespace {
    const PATH: &'static str = "/api/v1/namespaces";
    const WHAT: &'static str = "namespace";
    fn version(&self) -> String {
        self.resource_version.clone()
    }
    fn listed(all: Vec<Self>) -> Input {
        Input::Policy(PolicyInput::Namespaces(all), String::new())
    }
    fn upserted(self) -> Input {
        let version = self.resource_version.clone();
        Input::Policy(PolicyInput::Namespace(self), version)
    }
    fn deleted(self) -> Input {
        Input::Policy(PolicyInput::NamespaceGone(self.name), self.resource_version)
    }
}

impl Watched for NetworkPolicy {
    const PATH: &'static str = "/apis/networking.k8s.io/v1/networkpolicies";
    const WHAT: &'static str = "networkpolicy";
    fn version(&self) -> String {
        self.resource_version.clone()
    }
    fn listed(all: Vec<Self>) -> Input {
        Input::Policy(PolicyInput::Policies(all), String::new())
    }
    fn upserted(self) -> Input {
        let version = self.resource_version.clone();
        Input::Policy(PolicyInput::Policy(self), version)
    }
    fn deleted(self) -> Input {
        Input::Policy(
            PolicyInput::PolicyGone(self.namespace, self.name),
            self.resource_version,
        )
    }
}

/// Lists and watches the kind `T` forever, sending what it learns on `tx`; returns when the
/// agent loop is gone. `watch_for`: how long one watch request lasts (the resync period, so an
/// idle cluster still shows the API server answering at least that often).
pub fn resource<T: Watched>(
    client: Arc<ApiClient>,
    health: Arc<Health>,
    tx: Sender<Input>,
    watch_for: Duration,
) {
    let mut backoff = Backoff::new(FIRST_BACKOFF, watch_for.min(MAX_BACKOFF));
    let pause = |backoff: &mut Backoff| std::thread::sleep(backoff.next_delay());
    loop {
        let (items, mut version) = match client.list::<T>(T::PATH, &format!("{} list", T::WHAT)) {
            Ok(l) => l,
            Err(e) => {
                metrics::api_error(T::WHAT, &e);
                let wait = backoff.next_delay();
                crate::error!("API: {e}; retrying in {:.1}s", wait.as_secs_f64());
                health.api_failed(e.to_string());
                if tx.send(Input::ListFailed).is_err() {
                    return;
                }
                std::thread::sleep(wait);
                continue;
            }
        };
        backoff.reset();
        health.api_answered();
        metrics::LISTS.inc(&[T::WHAT]);
        if tx.send(T::listed(items)).is_err() {
            return;
        }
        match watch::<T>(&client, &health, &tx, &mut version, watch_for, &mut backoff) {
            Some(()) => {
                metrics::WATCH_RESTARTS.inc(&[T::WHAT, "relist"]);
                pause(&mut backoff) // relist, jittered: after an API server restart every node relists
            }
            None => return,
        }
    }
}

/// Watches from `version` until the version expires or a stream fails (`Some`: relist) or the
/// agent loop is gone (`None`).
fn watch<T: Watched>(
    client: &ApiClient,
    health: &Health,
    tx: &Sender<Input>,
    version: &mut String,
    watch_for: Duration,
    backoff: &mut Backoff,
) -> Option<()> {
    loop {
        let stream = match client.watch::<T>(T::PATH, version, watch_for) {
            Ok(s) => {
                health.api_answered();
                s
            }
            Err(KubeError::Gone(why)) => {
                metrics::API_ERRORS.inc(&[T::WHAT, "expired"]);
                crate::info!("watch: resource version {version} expired ({why}); relisting");
                return Some(());
            }
            Err(e) => {
                metrics::api_error(T::WHAT, &e);
                metrics::WATCH_RESTARTS.inc(&[T::WHAT, "rewatch"]);
                let wait = backoff.next_delay();
                crate::error!("API: {e}; retrying in {:.1}s", wait.as_secs_f64());
                health.api_failed(e.to_string());
                std::thread::sleep(wait);
                continue;
            }
        };
        let started = Instant::now();
        for event in stream {
            let input = match event {
                Ok(WatchEvent::Added(o)) => {
                    metrics::WATCH_EVENTS.inc(&[T::WHAT, "added"]);
                    *version = o.version();
                    o.upserted()
                }
                Ok(WatchEvent::Modified(o)) => {
                    metrics::WATCH_EVENTS.inc(&[T::WHAT, "modified"]);
                    *version = o.version();
                    o.upserted()
                }
                Ok(WatchEvent::Deleted(o)) => {
                    metrics::WATCH_EVENTS.inc(&[T::WHAT, "deleted"]);
                    *version = o.version();
                    o.deleted()
                }
                Ok(WatchEvent::Bookmark(v)) => {
                    metrics::WATCH_EVENTS.inc(&[T::WHAT, "bookmark"]);
                    *version = v;
                    health.api_answered();
                    continue;
                }
                Err(KubeError::Gone(why)) => {
                    metrics::API_ERRORS.inc(&[T::WHAT, "expired"]);
                    crate::info!("watch: resource version {version} expired ({why}); relisting");
                    return Some(());
                }
                Err(e) => {
                    // A broken stream or an ERROR event: the cache may have missed events.
                    metrics::api_error(T::WHAT, &e);
                    crate::error!("API: {e}; relisting");
                    health.api_failed(e.to_string());
                    return Some(());
                }
            };
            health.api_answered();
            tx.send(input).ok()?;
        }
        // Ended without an error: the server was there until the end.
        health.api_answered();
        metrics::WATCH_RESTARTS.inc(&[T::WHAT, "rewatch"]);
        // A server that ends every watch at once must not turn this into a busy loop.
        if started.elapsed() < QUICK_WATCH_END {
            std::thread::sleep(backoff.next_delay());
        } else {
            backoff.reset();
        }
    }
}
