//! The API's JSON for Pod, Namespace and NetworkPolicy (networking.k8s.io/v1), only the fields
//! enforcement reads, every one optional (unknown fields are ignored by serde), and the
//! reduction into the model's types.

use super::{IpBlock, NamedPort, PolicyPort, PolicyRule};
use crate::policy::ruleset::Protocol;
use crate::policy::selector::LabelSelector;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// `null` where the API usually omits the field: the same as absent.
fn null_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct ObjectMeta {
    namespace: String,
    name: String,
    resource_version: String,
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Pod {
    metadata: ObjectMeta,
    spec: PodSpec,
    status: PodStatus,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct PodSpec {
    #[serde(deserialize_with = "null_default")]
    node_name: String,
    host_network: bool,
    #[serde(deserialize_with = "null_default")]
    containers: Vec<Container>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Container {
    #[serde(deserialize_with = "null_default")]
    ports: Vec<ContainerPort>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ContainerPort {
    #[serde(deserialize_with = "null_default")]
    name: String,
    container_port: i64,
    protocol: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct PodStatus {
    #[serde(deserialize_with = "null_default")]
    phase: String,
    #[serde(rename = "podIP")]
    pod_ip: String,
    #[serde(rename = "podIPs")]
    #[serde(deserialize_with = "null_default")]
    pod_ips: Vec<PodIp>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PodIp {
    ip: String,
}

impl From<Pod> for super::Pod {
    fn from(pod: Pod) -> super::Pod {
        let named_ports = pod
            .spec
            .containers
            .into_iter()
            .flat_map(|c| c.ports)
            .filter(|p| !p.name.is_empty())
            .filter_map(|p| {
                // A container port the API would reject cannot be a named port's target.
                Some(NamedPort {
                    protocol: protocol(p.protocol.as_deref())?,
                    port: u16::try_from(p.container_port).ok().filter(|&n| n != 0)?,
                    name: p.name,
                })
            })
            .collect();
        let mut ips: Vec<IpAddr> = pod
            .status
            .pod_ips
            .iter()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        if ips.is_empty() {
            ips.extend(pod.status.pod_ip.parse::<IpAddr>().ok());
        }
        super::Pod {
            namespace: pod.metadata.namespace,
            name: pod.metadata.name,
            resource_version: pod.metadata.resource_version,
            labels: super::intern::labels(pod.metadata.labels.unwrap_or_default()),
            node_name: pod.spec.node_name,
            host_network: pod.spec.host_network,
            named_ports: super::intern::named_ports(named_ports),
            terminated: matches!(pod.status.phase.as_str(), "Succeeded" | "Failed"),
            ips,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Namespace {
    metadata: ObjectMeta,
}

impl From<Namespace> for super::Namespace {
    fn from(ns: Namespace) -> super::Namespace {
        super::Namespace {
            name: ns.metadata.name,
            resource_version: ns.metadata.resource_version,
            labels: ns.metadata.labels.unwrap_or_default(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct NetworkPolicy {
    metadata: ObjectMeta,
    spec: PolicySpec,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct PolicySpec {
    pod_selector: LabelSelector,
    policy_types: Option<Vec<String>>,
    ingress: Option<Vec<IngressRule>>,
    egress: Option<Vec<EgressRule>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct IngressRule {
    from: Option<Vec<Peer>>,
    ports: Option<Vec<Port>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct EgressRule {
    to: Option<Vec<Peer>>,
    ports: Option<Vec<Port>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Peer {
    pod_selector: Option<LabelSelector>,
    namespace_selector: Option<LabelSelector>,
    ip_block: Option<WireIpBlock>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireIpBlock {
    cidr: String,
    except: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Port {
    protocol: Option<String>,
    port: Option<IntOrString>,
    end_port: Option<i64>,
}

/// `intstr.IntOrString`: a number, or (for ports) a container port name.
#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(i64),
    String(String),
}

/// The protocol of a port entry; absent is TCP. `None` for a name the API would reject.
fn protocol(name: Option<&str>) -> Option<Protocol> {
    match name.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        _ => None,
    }
}

fn port_number(n: i64) -> Option<u16> {
    u16::try_from(n).ok().filter(|&p| p != 0)
}

impl From<Port> for PolicyPort {
    fn from(port: Port) -> PolicyPort {
        let Some(protocol) = protocol(port.protocol.as_deref()) else {
            return PolicyPort::Invalid(format!("unknown protocol {:?}", port.protocol));
        };
        match (port.port, port.end_port) {
            (None, None) => PolicyPort::Numeric {
                protocol,
                range: None,
            },
            (None, Some(_)) => PolicyPort::Invalid("endPort without port".into()),
            (Some(IntOrString::String(name)), None) => PolicyPort::Named { protocol, name },
            (Some(IntOrString::String(name)), Some(_)) => {
                PolicyPort::Invalid(format!("endPort with named port {name:?}"))
            }
            (Some(IntOrString::Int(n)), end) => {
                let Some(start) = port_number(n) else {
                    return PolicyPort::Invalid(format!("port {n} out of range"));
                };
                let end = match end.map(port_number) {
                    None => start,
                    Some(Some(end)) if end >= start => end,
                    Some(_) => return PolicyPort::Invalid(format!("bad endPort {end:?}")),
                };
                PolicyPort::Numeric {
                    protocol,
                    range: Some((start, end)),
                }
            }
        }
    }
}

impl From<Peer> for super::Peer {
    fn from(peer: Peer) -> super::Peer {
        match (peer.pod_selector, peer.namespace_selector, peer.ip_block) {
            (None, None, None) => super::Peer::Invalid("peer names no pods and no ipBlock".into()),
            (pod_selector, namespace_selector, None) => super::Peer::Pods {
                pod_selector,
                namespace_selector,
            },
            (None, None, Some(block)) => ip_block(block),
            (_, _, Some(_)) => super::Peer::Invalid("ipBlock together with a selector".into()),
        }
    }
}

fn ip_block(block: WireIpBlock) -> super::Peer {
    let parse = |s: &str| {
        s.parse::<ipnetwork::IpNetwork>()
            .map_err(|e| format!("{s:?}: {e}"))
    };
    let cidr = match parse(&block.cidr) {
        Ok(cidr) => cidr,
        Err(e) => return super::Peer::Invalid(format!("ipBlock cidr {e}")),
    };
    let mut except = Vec::new();
    for s in block.except.unwrap_or_default() {
        match parse(&s) {
            Ok(net) => except.push(net),
            // Allowing the whole cidr when an exception is unreadable would fail open.
            Err(e) => return super::Peer::Invalid(format!("ipBlock except {e}")),
        }
    }
    super::Peer::IpBlock(IpBlock { cidr, except })
}

fn rule(peers: Option<Vec<Peer>>, ports: Option<Vec<Port>>) -> PolicyRule {
    PolicyRule {
        peers: peers.into_iter().flatten().map(Into::into).collect(),
        ports: ports.into_iter().flatten().map(Into::into).collect(),
    }
}

impl From<NetworkPolicy> for super::NetworkPolicy {
    fn from(policy: NetworkPolicy) -> super::NetworkPolicy {
        let spec = policy.spec;
        let has_egress_rules = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        let (isolates_ingress, isolates_egress) = match spec.policy_types {
            Some(types) if !types.is_empty() => (
                types.iter().any(|t| t == "Ingress"),
                types.iter().any(|t| t == "Egress"),
            ),
            _ => (true, has_egress_rules),
        };
        super::NetworkPolicy {
            namespace: policy.metadata.namespace,
            name: policy.metadata.name,
            resource_version: policy.metadata.resource_version,
            pod_selector: spec.pod_selector,
            isolates_ingress,
            isolates_egress,
            ingress: (spec.ingress.into_iter().flatten())
                .map(|r| rule(r.from, r.ports))
                .collect(),
            egress: (spec.egress.into_iter().flatten())
                .map(|r| rule(r.to, r.ports))
                .collect(),
        }
    }
}
