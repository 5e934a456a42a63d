//! The little of the Kubernetes API the agent needs: list and watch Node objects, over HTTPS
//! with the pod's service account (bearer token + cluster CA), the Node fields that matter
//! for routing (podCIDRs, InternalIP addresses) and the one condition the agent reports on
//! (NetworkUnavailable, PATCHed on nodes/status: condition.rs).

use ipnetwork::IpNetwork;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::io::{BufRead, BufReader, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

pub use super::condition::{NetworkCondition, RawCondition};

/// Lists are decoded as they arrive, so this bounds time, not memory: the 150,000 pods of a
/// cluster at Kubernetes' limits are ~0.5-1.5 GB of JSON (with managedFields); a runaway body
/// is cut off here.
const MAX_LIST_BYTES: u64 = 8 << 30;
/// Read buffer for a list body (serde_json reads byte by byte from it).
const LIST_READ_BUFFER: usize = 64 << 10;
/// One watch event is one Node object; kubelet's status updates keep it far below this.
const MAX_EVENT_BYTES: u64 = 16 << 20;
/// Connecting plus TLS (ureq's connect phase covers both). Short on purpose: the API server is
/// on the node's own network, where a handshake takes milliseconds; an address that drops the
/// SYN (a wrong ROUTED_CNI_API_SERVER, a Service address kube-proxy has not programmed yet)
/// must show up in the log and in /readyz within seconds, not after a long wait per attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Looking up a host name in ROUTED_CNI_API_SERVER (kind's `<cluster>-control-plane`).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The list of a large cluster can take a while to arrive, but not forever.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(60);
/// One small PATCH (a node's status): the server answers in milliseconds, or it is in trouble
/// and the agent tries again at a later pass rather than holding its loop.
pub const PATCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Slack past the watch's own timeoutSeconds before we stop waiting for the server to end it.
pub const WATCH_GRACE: Duration = Duration::from_secs(15);

#[derive(Debug, Error)]
pub enum KubeError {
    #[error("read service account token {path}: {source} (is a token mounted? check automountServiceAccountToken and --token-file)")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("read cluster CA {path}: {detail} (check --ca-file)")]
    Ca { path: PathBuf, detail: String },
    #[error("cannot reach the API server at {url}: {detail} (check --api-server/ROUTED_CNI_API_SERVER, or KUBERNETES_SERVICE_HOST/PORT when it is unset, and the CA in --ca-file)")]
    Transport { url: String, detail: String },
    #[error("GET {url}: HTTP {code}: {message}{}", hint(*.code))]
    Status {
        url: String,
        code: u16,
        message: String,
    },
    /// A PATCH refused: its own hint, since a 403 here means the write permission is missing
    /// (the read ones were enough to get this far).
    #[error("PATCH {url}: HTTP {code}: {message}{}", patch_hint(*.code))]
    Patch {
        url: String,
        code: u16,
        message: String,
    },
    /// The resource version we watch from is older than the API server keeps: relist.
    #[error("watch resource version is too old (410 Gone): {0}")]
    Gone(String),
    #[error("decode {what}: {detail}")]
    Decode { what: String, detail: String },
}

/// What an operator should check for an HTTP status, after the server's own message.
fn hint(code: u16) -> &'static str {
    match code {
        401 => " (the API server rejected the service account token: it is missing, expired or from another cluster; check --token-file)",
        403 => " (RBAC: the ClusterRole bound to this ServiceAccount must allow get/list/watch on nodes and, with --network-policy, pods, namespaces and networkpolicies)",
        404 => " (check --api-server: this does not look like a Kubernetes API server)",
        429 | 500..=599 => " (the API server is overloaded or failing; retrying)",
        _ => "",
    }
}

fn patch_hint(code: u16) -> &'static str {
    match code {
        403 => {
            " (RBAC: the ClusterRole bound to this ServiceAccount must allow patch on nodes/status)"
        }
        404 => " (no such Node: check NODE_NAME/--node-name)",
        _ => hint(code),
    }
}

/// A Node as the API serves it, reduced to what routing needs. Every field is optional in
/// practice (a node registers before it has a podCIDR or addresses), so all default.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Node {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: NodeSpec,
    #[serde(default)]
    pub status: NodeStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub resource_version: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    #[serde(rename = "podCIDR", default)]
    pub pod_cidr: Option<String>,
    #[serde(rename = "podCIDRs", default)]
    pub pod_cidrs: Vec<String>,
}

/// Of a Node's status, only its InternalIPs and its NetworkUnavailable condition are kept,
/// dropped per node as it is decoded: a list of 5,000 nodes would otherwise hold ~35,000
/// address and condition entries at once, only to throw them away.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NodeStatus {
    #[serde(default, deserialize_with = "internal_ips_only")]
    pub addresses: Vec<NodeAddress>,
    /// Only type, status and reason are decoded: messages and times are skipped unread.
    #[serde(default, deserialize_with = "network_condition_only")]
    pub conditions: Vec<RawCondition>,
}

fn internal_ips_only<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<NodeAddress>, D::Error> {
    let mut all = Vec::<NodeAddress>::deserialize(d)?;
    all.retain(|a| a.kind == "InternalIP");
    Ok(all)
}

fn network_condition_only<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<RawCondition>, D::Error> {
    let mut all = Vec::<RawCondition>::deserialize(d)?;
    all.retain(|c| c.kind == super::condition::CONDITION_TYPE);
    Ok(all)
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NodeAddress {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub address: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NodeList {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub items: Vec<Node>,
}

/// A `metav1.Status`, as sent in error bodies and in watch ERROR events.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub code: u16,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
}

/// What routing needs to know about one node, parsed and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// Network addresses (host bits cleared), in the order the API lists them.
    pub pod_cidrs: Vec<IpNetwork>,
    /// InternalIP addresses, in the order the API lists them.
    pub internal_ips: Vec<IpAddr>,
    /// Values we could not use, for the log.
    pub problems: Vec<String>,
    /// The NetworkUnavailable condition, if the Node has one. Not a routing input:
    /// `same_routing` ignores it, so the agent's own status patch (which comes back as a
    /// MODIFIED event) does not make it reconcile.
    pub network_unavailable: Option<NetworkCondition>,
}

impl NodeInfo {
    pub fn from_node(node: &Node) -> NodeInfo {
        let mut problems = Vec::new();
        // podCIDRs is authoritative when set; podCIDR is what older API servers fill alone.
        let raw: Vec<&String> = if node.spec.pod_cidrs.is_empty() {
            node.spec
                .pod_cidr
                .iter()
                .filter(|s| !s.is_empty())
                .collect()
        } else {
            node.spec.pod_cidrs.iter().collect()
        };
        let mut pod_cidrs = Vec::new();
        for s in raw {
            match s.parse::<IpNetwork>() {
                Ok(n) => {
                    let net = IpNetwork::new(n.network(), n.prefix()).expect("same prefix");
                    if !pod_cidrs.contains(&net) {
                        pod_cidrs.push(net);
                    }
                }
                Err(_) => problems.push(format!("podCIDR {s:?} is not a CIDR")),
            }
        }
        let mut internal_ips = Vec::new();
        for a in node
            .status
            .addresses
            .iter()
            .filter(|a| a.kind == "InternalIP")
        {
            match a.address.parse::<IpAddr>() {
                Ok(ip) => internal_ips.push(ip),
                Err(_) => problems.push(format!("InternalIP {:?} is not an address", a.address)),
            }
        }
        let network_unavailable = super::condition::project(&node.status.conditions);
        NodeInfo {
            name: node.metadata.name.clone(),
            pod_cidrs,
            internal_ips,
            problems,
            network_unavailable,
        }
    }

    /// Whether routing and install would see the same node: everything but the condition.
    pub fn same_routing(&self, other: &NodeInfo) -> bool {
        self.name == other.name
            && self.pod_cidrs == other.pod_cidrs
            && self.internal_ips == other.internal_ips
            && self.problems == other.problems
    }

    /// What install configures: the first podCIDR of each family, IPv4 first (the API server
    /// allows at most one per family anyway).
    pub fn install_subnets(&self) -> Vec<IpNetwork> {
        let v4 = self.pod_cidrs.iter().find(|n| n.is_ipv4());
        let v6 = self.pod_cidrs.iter().find(|n| n.is_ipv6());
        v4.into_iter().chain(v6).copied().collect()
    }
}

#[derive(Debug, Clone)]
pub enum WatchEvent<T = Node> {
    Added(T),
    Modified(T),
    Deleted(T),
    /// Nothing changed, but watching may resume from this version.
    Bookmark(String),
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    object: serde_json::Value,
}

/// One line of a watch stream. An ERROR event becomes an error (410 → `Gone`, so the caller
/// relists).
pub fn parse_watch_line<T: DeserializeOwned>(line: &str) -> Result<WatchEvent<T>, KubeError> {
    let decode = |detail: String| KubeError::Decode {
        what: "watch event".into(),
        detail,
    };
    let raw: RawEvent = serde_json::from_str(line).map_err(|e| decode(e.to_string()))?;
    let object = |v: serde_json::Value| -> Result<T, KubeError> {
        serde_json::from_value(v).map_err(|e| decode(e.to_string()))
    };
    // A bookmark's object is the kind with nothing but metadata.resourceVersion set.
    let version = |v: &serde_json::Value| {
        v.pointer("/metadata/resourceVersion")
            .and_then(|r| r.as_str())
            .unwrap_or_default()
            .to_string()
    };
    match raw.kind.as_str() {
        "ADDED" => Ok(WatchEvent::Added(object(raw.object)?)),
        "MODIFIED" => Ok(WatchEvent::Modified(object(raw.object)?)),
        "DELETED" => Ok(WatchEvent::Deleted(object(raw.object)?)),
        "BOOKMARK" => Ok(WatchEvent::Bookmark(version(&raw.object))),
        "ERROR" => {
            let status: Status =
                serde_json::from_value(raw.object).map_err(|e| decode(e.to_string()))?;
            if status.code == 410 || status.reason == "Expired" || status.reason == "Gone" {
                Err(KubeError::Gone(status.message))
            } else {
                Err(KubeError::Status {
                    url: "watch".into(),
                    code: status.code,
                    message: format!("{} ({})", status.message, status.reason),
                })
            }
        }
        other => Err(decode(format!("unknown event type {other:?}"))),
    }
}

/// A client for one API server, with the pod's service account.
pub struct ApiClient {
    base: String,
    token_file: PathBuf,
    agent: ureq::Agent,
}

/// The message of an error answer: its Status's, else the start of the body.
fn refusal(body: &str) -> String {
    let status: Status = serde_json::from_str(body).unwrap_or_default();
    if status.message.is_empty() {
        body.trim().chars().take(200).collect()
    } else {
        status.message
    }
}

/// The cluster CA's certificates from a PEM file.
fn load_ca(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, KubeError> {
    let ca_err = |detail: String| KubeError::Ca {
        path: path.to_path_buf(),
        detail,
    };
    let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let ureq::tls::PemItem::Certificate(c) = item.map_err(|e| ca_err(e.to_string()))? {
            certs.push(c);
        }
    }
    if certs.is_empty() {
        return Err(ca_err("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

impl ApiClient {
    /// `base` is `https://host:port`; the CA is read once (it is the cluster's identity and does
    /// not rotate under a running pod), the token on every request (bound tokens do).
    pub fn new(base: &str, token_file: &Path, ca_file: &Path) -> Result<ApiClient, KubeError> {
        let certs = load_ca(ca_file)?;
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
            // Named explicitly so ureq needs no default provider feature (and no webpki roots:
            // the only CA we trust is the cluster's).
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .build();
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            // Errors carry a Status body with the reason; we want to read it.
            .http_status_as_error(false)
            // In-cluster traffic to the API server never goes through an HTTP(S)_PROXY meant
            // for image pulls or the internet.
            .proxy(None)
            // The token must never travel in clear, whatever URL we were given.
            .https_only(true)
            .timeout_resolve(Some(RESOLVE_TIMEOUT))
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .user_agent(concat!("routed-cni-agent/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(ApiClient {
            base: base.trim_end_matches('/').to_string(),
            token_file: token_file.to_path_buf(),
            agent: config.new_agent(),
        })
    }

    fn token(&self) -> Result<String, KubeError> {
        std::fs::read_to_string(&self.token_file)
            .map(|t| t.trim().to_string())
            .map_err(|source| KubeError::Token {
                path: self.token_file.clone(),
                source,
            })
    }

    fn get(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<ureq::http::Response<ureq::Body>, KubeError> {
        let url = format!("{}{path}", self.base);
        let token = self.token()?;
        let mut resp = self
            .agent
            .get(&url)
            .header("Authorization", format!("Bearer {token}"))
            .header("Accept", "application/json")
            .config()
            .timeout_per_call(Some(timeout))
            .build()
            .call()
            .map_err(|e| KubeError::Transport {
                url: url.clone(),
                detail: e.to_string(),
            })?;
        let code = resp.status().as_u16();
        if code == 200 {
            return Ok(resp);
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 << 10)
            .read_to_string()
            .unwrap_or_default();
        let message = refusal(&body);
        if code == 410 {
            return Err(KubeError::Gone(message));
        }
        Err(KubeError::Status { url, code, message })
    }

    /// PATCHes `path` with `body` of `content_type` (for Node status: a strategic merge patch,
    /// which merges status.conditions by type; a JSON merge patch would replace the whole
    /// list) and decodes the object the server answers.
    pub fn patch<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<T, KubeError> {
        let url = format!("{}{path}", self.base);
        let token = self.token()?;
        let transport = |detail: String| KubeError::Transport {
            url: url.clone(),
            detail,
        };
        let mut resp = self
            .agent
            .patch(&url)
            .header("Authorization", format!("Bearer {token}"))
            .header("Accept", "application/json")
            .content_type(content_type)
            .config()
            .timeout_per_call(Some(PATCH_TIMEOUT))
            .build()
            .send(body)
            .map_err(|e| transport(e.to_string()))?;
        let code = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_EVENT_BYTES)
            .read_to_string()
            .map_err(|e| transport(format!("reading the answer: {e}")))?;
        if code != 200 {
            let message = refusal(&text);
            return Err(KubeError::Patch { url, code, message });
        }
        serde_json::from_str(&text).map_err(|e| KubeError::Decode {
            what: format!("the answer to PATCH {path}"),
            detail: e.to_string(),
        })
    }

    pub fn list_nodes(&self) -> Result<NodeList, KubeError> {
        let (items, resource_version) = self.list("/api/v1/nodes", "node list")?;
        Ok(NodeList {
            metadata: ObjectMeta {
                resource_version,
                ..Default::default()
            },
            items,
        })
    }

    /// Every object of a collection (`path`, e.g. /api/v1/pods) and the list's resource
    /// version, to watch on from.
    pub fn list<T: DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
    ) -> Result<(Vec<T>, String), KubeError> {
        #[derive(Deserialize)]
        struct List<T> {
            #[serde(default)]
            metadata: ObjectMeta,
            #[serde(default = "Vec::new")]
            items: Vec<T>,
        }
        let mut resp = self.get(path, LIST_TIMEOUT)?;
        // Decoded as it arrives, each item straight into what the agent keeps of it: a list of
        // 150,000 pods is ~450 MB of JSON, which must never be in memory at once.
        let reader = std::io::BufReader::with_capacity(
            LIST_READ_BUFFER,
            resp.body_mut().with_config().limit(MAX_LIST_BYTES).reader(),
        );
        let list: List<T> = serde_json::from_reader(reader).map_err(|e| {
            if e.is_io() {
                KubeError::Transport {
                    url: format!("{}{path}", self.base),
                    detail: format!("reading the {what}: {e}"),
                }
            } else {
                KubeError::Decode {
                    what: what.into(),
                    detail: e.to_string(),
                }
            }
        })?;
        Ok((list.items, list.metadata.resource_version))
    }

    /// Watches nodes from `resource_version`; the server ends the stream after `timeout`
    /// (whole seconds, rounded up).
    pub fn watch_nodes(
        &self,
        resource_version: &str,
        timeout: Duration,
    ) -> Result<WatchStream<Node>, KubeError> {
        self.watch("/api/v1/nodes", resource_version, timeout)
    }

    /// Watches the collection at `path` from `resource_version`; the server ends the stream
    /// after `timeout` (whole seconds, rounded up).
    pub fn watch<T: DeserializeOwned>(
        &self,
        path: &str,
        resource_version: &str,
        timeout: Duration,
    ) -> Result<WatchStream<T>, KubeError> {
        // Rounded up: rounding down would leave a sliver of the resync period for a second,
        // pointless watch request.
        let secs = timeout.as_secs_f64().ceil().max(1.0) as u64;
        // `path` may carry a query of its own (a field selector).
        let sep = if path.contains('?') { '&' } else { '?' };
        let path = format!(
            "{path}{sep}watch=1&resourceVersion={resource_version}&allowWatchBookmarks=true&timeoutSeconds={secs}"
        );
        let resp = self.get(&path, Duration::from_secs(secs) + WATCH_GRACE)?;
        Ok(WatchStream {
            lines: BufReader::new(resp.into_body().into_reader()),
            url: format!("{}{path}", self.base),
            kind: std::marker::PhantomData,
        })
    }
}

/// The events of one watch request, one JSON document per line. Ends when the server closes
/// the stream (its timeout, or it went away).
pub struct WatchStream<T> {
    lines: BufReader<ureq::BodyReader<'static>>,
    url: String,
    kind: std::marker::PhantomData<T>,
}

impl<T: DeserializeOwned> Iterator for WatchStream<T> {
    type Item = Result<WatchEvent<T>, KubeError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let mut line = Vec::new();
            let read = (&mut self.lines)
                .take(MAX_EVENT_BYTES)
                .read_until(b'\n', &mut line);
            match read {
                Ok(0) => return None,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    if text.trim().is_empty() {
                        continue;
                    }
                    return Some(parse_watch_line(text.trim()));
                }
                Err(e) => {
                    return Some(Err(KubeError::Transport {
                        url: self.url.clone(),
                        detail: format!("watch stream broke: {e}"),
                    }))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from `kubectl get node -o json` of a kubeadm dual-stack worker.
    const NODE: &str = r#"{
      "apiVersion": "v1", "kind": "Node",
      "metadata": {"name": "worker-1", "resourceVersion": "81234",
                   "labels": {"kubernetes.io/hostname": "worker-1"}},
      "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"],
               "providerID": "kind://docker/kind/worker-1"},
      "status": {"addresses": [
          {"type": "InternalIP", "address": "172.18.0.3"},
          {"type": "InternalIP", "address": "fc00:f853:ccd:e793::3"},
          {"type": "Hostname", "address": "worker-1"}],
        "conditions": [{"type": "Ready", "status": "True"}]}
    }"#;

    fn node(json: &str) -> NodeInfo {
        NodeInfo::from_node(&serde_json::from_str(json).unwrap())
    }

    #[test]
    fn node_fields_routing_needs() {
        let n = node(NODE);
        assert_eq!(n.name, "worker-1");
        assert_eq!(
            n.pod_cidrs,
            vec![
                "10.244.1.0/24".parse::<IpNetwork>().unwrap(),
                "fd00:10:244:1::/64".parse().unwrap()
            ]
        );
        assert_eq!(
            n.internal_ips,
            vec![
                "172.18.0.3".parse::<IpAddr>().unwrap(),
                "fc00:f853:ccd:e793::3".parse().unwrap()
            ]
        );
        assert_eq!(n.install_subnets(), n.pod_cidrs);
        assert!(n.problems.is_empty());
    }

    #[test]
    fn old_pod_cidr_field_bad_values_and_a_bare_node() {
        let n = node(
            r#"{"metadata":{"name":"old"},"spec":{"podCIDR":"10.9.0.7/24"},
                "status":{"addresses":[{"type":"InternalIP","address":"not-an-ip"},
                                       {"type":"ExternalIP","address":"1.2.3.4"}]}}"#,
        );
        // Host bits are cleared: the route must name the network.
        assert_eq!(
            n.pod_cidrs,
            vec!["10.9.0.0/24".parse::<IpNetwork>().unwrap()]
        );
        assert!(n.internal_ips.is_empty());
        assert_eq!(n.problems.len(), 1, "{:?}", n.problems);
        let bare = node(r#"{"metadata":{"name":"new"}}"#);
        assert!(bare.pod_cidrs.is_empty() && bare.internal_ips.is_empty());
        assert!(bare.install_subnets().is_empty());
        // IPv4 first, whatever order the API lists them in.
        let v6first =
            node(r#"{"metadata":{"name":"v6"},"spec":{"podCIDRs":["fd00::/64","10.1.0.0/24"]}}"#);
        assert_eq!(
            v6first.install_subnets(),
            vec![
                "10.1.0.0/24".parse::<IpNetwork>().unwrap(),
                "fd00::/64".parse().unwrap()
            ]
        );
    }

    #[test]
    fn list_keeps_its_resource_version() {
        let list: NodeList = serde_json::from_str(&format!(
            r#"{{"kind":"NodeList","apiVersion":"v1","metadata":{{"resourceVersion":"99"}},"items":[{NODE}]}}"#
        ))
        .unwrap();
        assert_eq!(list.metadata.resource_version, "99");
        assert_eq!(list.items.len(), 1);
    }

    #[test]
    fn watch_events() {
        let line =
            |kind: &str| format!(r#"{{"type":"{kind}","object":{}}}"#, NODE.replace('\n', ""));
        assert!(
            matches!(parse_watch_line::<Node>(&line("ADDED")), Ok(WatchEvent::Added(n)) if n.metadata.name == "worker-1")
        );
        assert!(matches!(
            parse_watch_line::<Node>(&line("MODIFIED")),
            Ok(WatchEvent::Modified(_))
        ));
        assert!(matches!(
            parse_watch_line::<Node>(&line("DELETED")),
            Ok(WatchEvent::Deleted(_))
        ));
        let bookmark = r#"{"type":"BOOKMARK","object":{"kind":"Node","apiVersion":"v1","metadata":{"resourceVersion":"12746","annotations":{"k8s.io/initial-events-end":"true"}}}}"#;
        assert!(
            matches!(parse_watch_line::<Node>(bookmark), Ok(WatchEvent::Bookmark(rv)) if rv == "12746")
        );
        let gone = r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 1 (5000)","reason":"Expired","code":410}}"#;
        assert!(
            matches!(parse_watch_line::<Node>(gone), Err(KubeError::Gone(m)) if m.contains("too old"))
        );
        let other = r#"{"type":"ERROR","object":{"kind":"Status","status":"Failure","message":"internal error","reason":"InternalError","code":500}}"#;
        assert!(matches!(
            parse_watch_line::<Node>(other),
            Err(KubeError::Status { code: 500, .. })
        ));
        assert!(matches!(
            parse_watch_line::<Node>("{not json"),
            Err(KubeError::Decode { .. })
        ));
        assert!(matches!(
            parse_watch_line::<Node>(r#"{"type":"SURPRISE","object":{}}"#),
            Err(KubeError::Decode { .. })
        ));
    }

    #[test]
    fn errors_tell_what_to_check() {
        let e = |code| {
            KubeError::Status {
                url: "https://10.96.0.1:443/api/v1/nodes".into(),
                code,
                message: "nodes is forbidden".into(),
            }
            .to_string()
        };
        assert!(e(403).contains("ClusterRole"), "{}", e(403));
        assert!(e(403).contains("get/list/watch on nodes"));
        assert!(e(401).contains("token"));
    }
}
