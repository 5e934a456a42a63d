//! The walk for one pod address: every piece ADD built (dataplane::spec), in the order a
//! packet meets it, each judged by what the kernel actually does with it (route lookups,
//! neighbour resolution), not only by whether an object exists. One walk serves both families;
//! the steps live by what they walk: `pod` (the pod's side), `host` (the node's side of the
//! veth), `forwarding` (forwarding, rp_filter, masquerade), `destination` (`--to`), `path`
//! (`--to` off the node: direct or VXLAN, and the MTU that path carries), `policy` (`--to
//! IP:PORT`: NetworkPolicy's verdict from the local agent).

mod destination;
mod filter;
mod forwarding;
mod host;
mod path;
pub mod plugins;
mod pod;
mod policy;

use ipnetwork::IpNetwork;
use rtnetlink::packet_route::address::AddressFlags;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::RouteType;
use serde_json::json;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use tokio::runtime::Runtime;

use super::iptables::PoolRules;
use super::report::{PodReport, Step};
use crate::dataplane::{self, Family, Netlink, RouteLookup, RouteQuery, HOST_MAC};
use crate::ipam::{attachment_hash, Record};
use crate::netns::{exec_in, in_pod, Netns};

/// One allocation (one address, IPv4 or IPv6) found in the store.
pub struct Target {
    pub pool: IpNetwork,
    /// The record's address.
    pub ip: IpAddr,
    pub store_dir: PathBuf,
    pub record: Record,
    /// The address the attachment's key file leads to (`PoolLock::find`), as DEL would see it.
    pub key_finds: Option<IpAddr>,
}

/// `--to IP[:PORT]`.
#[derive(Debug, Clone, Copy)]
pub struct Dest {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

/// The node's view, shared by every pod checked in one run.
pub struct Node<'a> {
    pub rt: &'a Runtime,
    pub net: &'a Netlink,
    pub links: &'a HashMap<u32, String>,
    /// The local agent's health listener, asked for NetworkPolicy verdicts.
    pub agent_addr: std::net::SocketAddr,
}

const ENETUNREACH: i32 = 101;
const EHOSTUNREACH: i32 = 113;
const EINVAL: i32 = 22;
const EXDEV: i32 = 18;

/// What a route lookup refusal means for a packet.
fn refusal(code: i32) -> String {
    match code {
        0 => "the lookup itself failed".into(),
        ENETUNREACH => "no route (ENETUNREACH)".into(),
        EHOSTUNREACH => "forwarding is off on the input interface (EHOSTUNREACH)".into(),
        EINVAL | EXDEV => {
            "the source address fails the reverse-path filter, rp_filter (EINVAL)".into()
        }
        other => std::io::Error::from_raw_os_error(other).to_string(),
    }
}

/// `refusal` for an IPv6 lookup, where the kernel checks neither forwarding nor the source.
fn refusal6(code: i32) -> String {
    match code {
        0 => "the lookup itself failed".into(),
        ENETUNREACH => "no route (ENETUNREACH)".into(),
        other => std::io::Error::from_raw_os_error(other).to_string(),
    }
}

fn refusal_for(ip: IpAddr, code: i32) -> String {
    if ip.is_ipv6() {
        refusal6(code)
    } else {
        refusal(code)
    }
}

fn table_name(t: u32) -> String {
    match t {
        254 => "main".into(),
        255 => "local".into(),
        253 => "default".into(),
        t => t.to_string(),
    }
}

/// A lookup's answer the way `ip route get` prints it.
fn describe(l: &RouteLookup, names: &HashMap<u32, String>) -> String {
    let mut s = match l.kind {
        RouteType::Local => "local".to_string(),
        RouteType::Unicast => String::new(),
        other => format!("{other:?}").to_lowercase(),
    };
    if let Some(g) = l.gateway {
        s.push_str(&format!(" via {g}"));
    }
    if let Some(i) = l.oif {
        let name = names.get(&i).cloned().unwrap_or_else(|| format!("#{i}"));
        s.push_str(&format!(" dev {name}"));
    }
    if l.table != 254 {
        s.push_str(&format!(" table {}", table_name(l.table)));
    }
    if let Some(p) = l.prefsrc {
        s.push_str(&format!(" src {p}"));
    }
    s.trim().to_string()
}

fn lookup_json(r: &std::result::Result<RouteLookup, i32>, ip: IpAddr) -> serde_json::Value {
    match r {
        Ok(l) => json!({
            "type": format!("{:?}", l.kind).to_lowercase(),
            "table": l.table,
            "oif": l.oif,
            "gateway": l.gateway,
            "prefsrc": l.prefsrc,
        }),
        Err(code) => json!({"errno": code, "error": refusal_for(ip, *code)}),
    }
}

fn neighbour_valid(state: NeighbourState) -> bool {
    matches!(
        state,
        NeighbourState::Permanent
            | NeighbourState::Noarp
            | NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
    )
}

fn state_name(s: NeighbourState) -> String {
    format!("{s:?}").to_lowercase()
}

/// An IPv6 address's state flags as `ip addr` prints them (" tentative dadfailed").
fn flag_words(f: AddressFlags) -> String {
    [
        (AddressFlags::Tentative, " tentative"),
        (AddressFlags::Dadfailed, " dadfailed"),
        (AddressFlags::Deprecated, " deprecated"),
        (AddressFlags::Nodad, " nodad"),
    ]
    .iter()
    .filter(|(flag, _)| f.contains(*flag))
    .map(|(_, word)| *word)
    .collect()
}

struct Walk<'a> {
    node: &'a Node<'a>,
    t: &'a Target,
    /// The family of the address walked.
    fam: Family,
    r: &'a Record,
    to: Option<Dest>,
    pod: Option<Netlink>,
    /// The pod's namespace, to read its sysctls (IPv6: `disable_ipv6`, `accept_dad`).
    pod_ns: Option<Netns>,
    pod_links: HashMap<u32, String>,
    pod_link: Option<LinkMessage>,
    host_link: Option<LinkMessage>,
    /// `route get <podIP>` on the node: where replies to the pod go.
    to_pod: Option<std::result::Result<RouteLookup, i32>>,
    /// `route get 169.254.1.1 from <podIP> iif <host veth>`: the lookup the node makes for the
    /// pod's ARP request (proxy ARP) and, with any destination, for every forwarded packet.
    /// IPv4 only: IPv6 has no proxy ARP and no rp_filter.
    from_pod: Option<std::result::Result<RouteLookup, i32>>,
    steps: Vec<Step>,
}

impl Walk<'_> {
    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.node.rt.block_on(f)
    }

    fn ns(&self) -> &str {
        &self.r.netns
    }

    fn ifname(&self) -> &str {
        &self.r.ifname
    }

    fn veth(&self) -> &str {
        &self.r.host_veth
    }

    fn pod_index(&self) -> Option<u32> {
        self.pod_link.as_ref().map(|l| l.header.index)
    }

    fn host_index(&self) -> Option<u32> {
        self.host_link.as_ref().map(|l| l.header.index)
    }

    fn host_mac(&self) -> Vec<u8> {
        self.host_link
            .as_ref()
            .and_then(dataplane::link_mac)
            .unwrap_or_else(|| HOST_MAC.to_vec())
    }

    /// The pod's gateway in this address's family.
    fn gw(&self) -> IpAddr {
        self.fam.gateway()
    }

    fn refused(&self, code: i32) -> String {
        refusal_for(self.t.ip, code)
    }

    fn pod_cmd(&self, args: &str) -> String {
        in_pod(self.ns(), &format!("{}{args}", self.fam.ip_option()))
    }

    /// A command run inside the pod's namespace that is not `ip` (sysctl).
    fn pod_exec(&self, cmd: &str) -> String {
        exec_in(self.ns(), cmd)
    }

    /// The node's host route to the pod, as ADD adds it (IPv4's says scope link).
    fn route_fix(&self) -> String {
        format!(
            "ip {}route replace {}/{} dev {}{}",
            self.fam.ip_option(),
            self.t.ip,
            self.fam.host_prefix(),
            self.veth(),
            if self.fam.is_v6() { "" } else { " scope link" }
        )
    }

    fn default_route_fix(&self) -> String {
        self.pod_cmd(&format!(
            "route replace default via {} dev {}",
            self.gw(),
            self.ifname()
        ))
    }

    fn neigh_fix(&self) -> String {
        self.pod_cmd(&format!(
            "neigh replace {} lladdr {} dev {} nud permanent",
            self.gw(),
            dataplane::format_mac(&self.host_mac()),
            self.ifname()
        ))
    }

    fn host_name(&self, index: Option<u32>) -> String {
        match index {
            Some(i) => self
                .node
                .links
                .get(&i)
                .cloned()
                .unwrap_or_else(|| format!("#{i}")),
            None => "-".into(),
        }
    }

    // ---------------------------------------------------------------- the store

    fn allocation(&mut self) {
        const ID: &str = "allocation";
        const TITLE: &str = "allocation record";
        let r = self.r;
        let hash = attachment_hash(&r.container_id, &r.ifname);
        let record = self.t.store_dir.join(r.ip.to_string());
        let key = self.t.store_dir.join("keys").join(&hash);
        let saw = format!(
            "{} for {}/{}{}",
            record.display(),
            r.container_id,
            r.ifname,
            match (&r.pod_namespace, &r.pod_name) {
                (Some(ns), Some(n)) => format!(" (pod {ns}/{n})"),
                _ => String::new(),
            }
        );
        let details = json!({"record": record, "key": key, "keyFinds": self.t.key_finds});
        let step = if self.t.key_finds != Some(self.t.ip) {
            Step::fail(
                ID,
                TITLE,
                format!(
                    "{saw}; its key {} leads to {}",
                    key.display(),
                    self.t
                        .key_finds
                        .map(|i| i.to_string())
                        .unwrap_or_else(|| "nothing".into())
                ),
            )
            .why(format!(
                "DEL finds the allocation through the key: without it DEL cannot release {} and the address leaks",
                r.ip
            ))
            .fix(format!("printf %s {} > {}", r.ip, key.display()))
        } else if !r.host_veth.ends_with(&hash[..11]) {
            Step::warn(
                ID,
                TITLE,
                format!(
                    "{saw}; host veth {} is not named after the attachment",
                    r.host_veth
                ),
            )
        } else {
            Step::ok(
                ID,
                TITLE,
                format!("{saw}; key keys/{}… leads to it", &hash[..12]),
            )
        };
        self.steps.push(step.details(details));
    }
}

/// Walks the path of one allocation.
pub fn check(
    node: &Node<'_>,
    t: &Target,
    to: Option<Dest>,
    rules: &Result<PoolRules, String>,
) -> PodReport {
    let r = &t.record;
    let host_link = node
        .rt
        .block_on(node.net.link_by_name(&r.host_veth))
        .ok()
        .flatten();
    let mut w = Walk {
        node,
        t,
        fam: Family::of(t.ip),
        r,
        to,
        pod: None,
        pod_ns: None,
        pod_links: HashMap::new(),
        pod_link: None,
        host_link,
        to_pod: None,
        from_pod: None,
        steps: Vec::new(),
    };
    w.to_pod = Some(
        node.rt
            .block_on(node.net.route_get(RouteQuery {
                dst: Some(t.ip),
                ..Default::default()
            }))
            .unwrap_or(Err(0)),
    );
    if let (Some(index), false) = (w.host_index(), t.ip.is_ipv6()) {
        w.from_pod = node
            .rt
            .block_on(node.net.route_get(RouteQuery {
                dst: Some(Family::V4.gateway()),
                src: Some(t.ip),
                iif: Some(index),
                ..Default::default()
            }))
            .ok();
    }

    w.netns();
    w.pod_interface();
    w.pod_address();
    w.pod_routes();
    w.pod_neighbour();
    w.host_veth();
    w.host_veth_sysctls();
    w.host_veth_address();
    w.forwarding();
    w.host_route();
    w.rp_filter();
    w.forward_filter();
    w.firewalld();
    w.nat(rules);
    if let Some(d) = w.to {
        w.destination(d, rules);
        w.policy(d);
    }
    w.allocation();

    let w_fam_v6 = w.fam.is_v6();
    let mut report = PodReport {
        pod: match (&r.pod_namespace, &r.pod_name) {
            (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
            (None, Some(n)) => Some(n.clone()),
            _ => None,
        },
        container_id: r.container_id.clone(),
        ifname: r.ifname.clone(),
        ip: r.ip.to_string(),
        family: if w_fam_v6 { "ipv6" } else { "ipv4" },
        pool: t.pool.to_string(),
        netns: r.netns.clone(),
        host_veth: r.host_veth.clone(),
        record: t.store_dir.join(r.ip.to_string()).display().to_string(),
        ok: true,
        failed: Vec::new(),
        warnings: Vec::new(),
        steps: w.steps,
    };
    report.finish();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_read_like_ip_route_get() {
        let names = HashMap::from([(2, "uplink".to_string())]);
        let l = RouteLookup {
            kind: RouteType::Unicast,
            table: 254,
            oif: Some(2),
            gateway: Some("198.51.100.2".parse().unwrap()),
            prefsrc: None,
        };
        assert_eq!(describe(&l, &names), "via 198.51.100.2 dev uplink");
        let l = RouteLookup {
            table: 100,
            prefsrc: Some("198.51.100.1".parse().unwrap()),
            ..l
        };
        assert_eq!(
            describe(&l, &names),
            "via 198.51.100.2 dev uplink table 100 src 198.51.100.1"
        );
        assert!(refusal(EHOSTUNREACH).contains("forwarding is off"));
        assert!(refusal(EINVAL).contains("rp_filter"));
    }
}
