//! The walk for one pod: every piece ADD built, in the order a packet meets it, each judged by
//! what the kernel actually does with it (route lookups, neighbour resolution), not only by
//! whether an object exists.

use ipnetwork::IpNetwork;
use rtnetlink::packet_route::address::AddressFlags;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::{RouteScope, RouteType};
use serde_json::json;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

use super::iptables::{self, PoolRules, Verdict};
use super::report::{PodReport, Step};
use crate::dataplane::spec::Place;
use crate::dataplane::Family;
use crate::dataplane::{
    self, sysctl, Netlink, RouteLookup, RouteQuery, GATEWAY, GATEWAY6, HOST_MAC,
};
use crate::ipam::{attachment_hash, Record};
use crate::netns::{in_pod, Netns};

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

fn family_name(ip: IpAddr) -> &'static str {
    if ip.is_ipv6() {
        "IPv6"
    } else {
        "IPv4"
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

fn sysctl_fix(key: &str, value: &str) -> String {
    format!("sysctl -w {}={value}", key.replace('/', "."))
}

struct Walk<'a> {
    node: &'a Node<'a>,
    t: &'a Target,
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

    fn v6(&self) -> bool {
        self.t.ip.is_ipv6()
    }

    /// The pod's gateway in this address's family.
    fn gw(&self) -> IpAddr {
        dataplane::gateway_for(self.t.ip)
    }

    /// `ip` options for this family: IPv4 fixes read as they always did, IPv6 ones say `-6`.
    fn fam(&self) -> &'static str {
        if self.v6() {
            "-6 "
        } else {
            ""
        }
    }

    fn refused(&self, code: i32) -> String {
        refusal_for(self.t.ip, code)
    }

    fn pod_cmd(&self, args: &str) -> String {
        in_pod(self.ns(), &format!("{}{args}", self.fam()))
    }

    /// A command run inside the pod's namespace that is not `ip` (sysctl).
    fn pod_exec(&self, cmd: &str) -> String {
        match self
            .ns()
            .strip_prefix("/run/netns/")
            .or_else(|| self.ns().strip_prefix("/var/run/netns/"))
        {
            Some(name) if !name.contains('/') => format!("ip netns exec {name} {cmd}"),
            _ => format!("nsenter --net={} {cmd}", self.ns()),
        }
    }

    fn route_fix(&self) -> String {
        if self.v6() {
            format!("ip -6 route replace {}/128 dev {}", self.t.ip, self.veth())
        } else {
            format!(
                "ip route replace {}/32 dev {} scope link",
                self.t.ip,
                self.veth()
            )
        }
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

    // ---------------------------------------------------------------- the pod's side

    fn netns(&mut self) {
        const ID: &str = "pod-netns";
        const TITLE: &str = "pod netns";
        let opened = if self.r.netns.is_empty() {
            Err("the allocation record names no network namespace".to_string())
        } else {
            Netns::open(&self.r.netns).map_err(|e| {
                e.msg
                    .trim_start_matches("CNI_NETNS ")
                    .replace("; is the pod sandbox still running?", "")
            })
        };
        let ns = match opened {
            Ok(ns) => ns,
            Err(msg) => {
                let mut step = Step::fail(ID, TITLE, msg).why(
                    "the pod's sandbox is gone but its address is still allocated: the runtime \
                     never ran DEL for it (or DEL failed); the runtime's CNI GC releases it, or \
                     remove it by hand",
                );
                if self.host_link.is_some() {
                    step = step.fix(format!("ip link del {}", self.veth()));
                }
                let key = self
                    .t
                    .store_dir
                    .join("keys")
                    .join(attachment_hash(&self.r.container_id, &self.r.ifname));
                step = step.fix(format!(
                    "rm -f {} {}",
                    self.t.store_dir.join(self.t.ip.to_string()).display(),
                    key.display()
                ));
                self.steps.push(step);
                return;
            }
        };
        let pod = self.block(async { Netlink::connect_in(&ns) });
        match pod {
            Ok(p) => {
                self.pod_links = self.block(p.link_names()).unwrap_or_default();
                self.pod_link = self.block(p.link_by_name(&self.r.ifname)).ok().flatten();
                self.pod = Some(p);
                self.pod_ns = Some(ns);
                self.steps.push(Step::ok(
                    ID,
                    TITLE,
                    format!("{} is a network namespace", self.r.netns),
                ));
            }
            Err(e) => self.steps.push(Step::fail(ID, TITLE, e.msg)),
        }
    }

    fn pod_interface(&mut self) {
        const ID: &str = "pod-interface";
        const TITLE: &str = "pod interface";
        if self.pod.is_none() {
            self.steps.push(Step::skip(
                ID,
                TITLE,
                "the pod's namespace cannot be opened",
            ));
            return;
        }
        let ifname = self.ifname().to_string();
        let Some(link) = &self.pod_link else {
            let mut have: Vec<_> = self.pod_links.values().cloned().collect();
            have.sort();
            self.steps.push(
                Step::fail(
                    ID,
                    TITLE,
                    format!("no {ifname} in the pod (it has: {})", have.join(", ")),
                )
                .why("the pod has no network; restart the pod so its runtime runs ADD again"),
            );
            return;
        };
        let mac = dataplane::link_mac(link)
            .map(|m| dataplane::format_mac(&m))
            .unwrap_or_default();
        let mtu = dataplane::link_mtu(link).unwrap_or(0);
        let up = dataplane::link_is_up(link);
        let saw = format!(
            "{ifname}: {}, {}, MTU {mtu}, MAC {mac}",
            if dataplane::link_is_veth(link) {
                "veth"
            } else {
                "NOT a veth"
            },
            if up { "up" } else { "DOWN" }
        );
        let details =
            json!({"name": ifname, "index": link.header.index, "mac": mac, "mtu": mtu, "up": up});
        let step = if !dataplane::link_is_veth(link) {
            Step::fail(ID, TITLE, saw)
                .why("routed-cni's pod interface is always a veth: something else took its name")
        } else if !up {
            Step::fail(ID, TITLE, saw)
                .why("a down interface sends nothing")
                .fix(self.pod_cmd(&format!("link set {ifname} up")))
        } else {
            Step::ok(ID, TITLE, saw)
        };
        self.steps.push(step.details(details));
    }

    fn pod_needs_interface(&mut self, id: &'static str, title: &'static str) -> bool {
        if self.pod_link.is_none() {
            self.steps.push(Step::skip(
                id,
                title,
                format!("no {} in the pod", self.ifname()),
            ));
            return false;
        }
        true
    }

    fn pod_address(&mut self) {
        const ID: &str = "pod-address";
        const TITLE: &str = "pod address";
        if !self.pod_needs_interface(ID, TITLE) {
            return;
        }
        let (pod, index) = (
            self.pod.clone().expect("pod"),
            self.pod_index().expect("link"),
        );
        let addrs = match self.block(pod.ipv4_addresses(index)) {
            Ok(a) => a,
            Err(e) => return self.steps.push(Step::fail(ID, TITLE, e.msg)),
        };
        let shown: Vec<String> = addrs.iter().map(|(a, p)| format!("{a}/{p}")).collect();
        let saw = format!(
            "{} on {}",
            if shown.is_empty() {
                "no IPv4 address".to_string()
            } else {
                shown.join(", ")
            },
            self.ifname()
        );
        let want = (self.t.ip, 32);
        let step = if addrs.iter().any(|&(a, p)| (IpAddr::V4(a), p) == want) {
            Step::ok(ID, TITLE, saw)
        } else {
            let mut s = Step::fail(ID, TITLE, saw).why(format!(
                "the pod has no source address {}: what it sends cannot be answered",
                self.t.ip
            ));
            for (a, p) in addrs.iter().filter(|(a, _)| IpAddr::V4(*a) == self.t.ip) {
                s = s.fix(self.pod_cmd(&format!("addr del {a}/{p} dev {}", self.ifname())));
            }
            s.fix(self.pod_cmd(&format!("addr add {}/32 dev {}", self.t.ip, self.ifname())))
        };
        self.steps.push(step.details(json!({"addresses": shown})));
    }

    /// A sysctl of the pod's namespace (`/proc/sys/net` is the namespace of the thread that
    /// opens it).
    fn pod_sysctl(&self, key: &str) -> Option<String> {
        let ns = self.pod_ns.as_ref()?;
        let _in_pod = ns.enter().ok()?;
        sysctl::read(key)
    }

    /// IPv6: `<ip>/128` on the pod's interface, usable (not tentative, not dadfailed: ADD adds
    /// it with nodad and turns DAD off, so neither should ever be seen).
    fn pod_address6(&mut self) {
        const ID: &str = "pod-address";
        const TITLE: &str = "pod address";
        if !self.pod_needs_interface(ID, TITLE) {
            return;
        }
        let (pod, index) = (
            self.pod.clone().expect("pod"),
            self.pod_index().expect("link"),
        );
        let addrs = match self.block(pod.addresses_with_flags::<Ipv6Addr>(index)) {
            Ok(a) => a,
            Err(e) => return self.steps.push(Step::fail(ID, TITLE, e.msg)),
        };
        let ifname = self.ifname().to_string();
        let ip = self.t.ip;
        let shown: Vec<String> = addrs
            .iter()
            .map(|(a, p, f)| format!("{a}/{p}{}", flag_words(*f)))
            .collect();
        let disable_key = format!("net/ipv6/conf/{ifname}/disable_ipv6");
        let disabled = self.pod_sysctl(&disable_key);
        let accept_dad = self.pod_sysctl(&format!("net/ipv6/conf/{ifname}/accept_dad"));
        let saw = format!(
            "{} on {ifname}",
            if shown.is_empty() {
                "no IPv6 address".to_string()
            } else {
                shown.join(", ")
            }
        );
        let add = self.pod_cmd(&format!("addr replace {ip}/128 dev {ifname} nodad"));
        let mine: Vec<_> = addrs
            .iter()
            .filter(|(a, _, _)| IpAddr::V6(*a) == ip)
            .collect();
        let del_mine = |w: &Self, mut s: Step| {
            for (a, p, _) in &mine {
                s = s.fix(w.pod_cmd(&format!("addr del {a}/{p} dev {ifname}")));
            }
            s
        };
        let step = match mine.iter().find(|(_, p, _)| *p == 128) {
            Some((_, _, f)) if f.contains(AddressFlags::Dadfailed) => del_mine(
                self,
                Step::fail(ID, TITLE, format!("{saw}: duplicate address detection failed"))
                    .why(format!(
                        "the kernel never sends from {ip}: something else on the link claimed it; ADD adds it with nodad"
                    )),
            )
            .fix(add),
            Some((_, _, f)) if f.contains(AddressFlags::Tentative) => del_mine(
                self,
                Step::fail(ID, TITLE, format!("{saw}: still tentative"))
                    .why(format!(
                        "duplicate address detection is running: until it ends the kernel does not send from {ip} (connect() fails with EADDRNOTAVAIL); ADD adds it with nodad"
                    )),
            )
            .fix(add),
            Some(_) => Step::ok(ID, TITLE, saw),
            None => {
                let mut s = Step::fail(ID, TITLE, saw.clone());
                if disabled.as_deref() == Some("1") {
                    s = s
                        .why(format!(
                            "IPv6 is off on the pod's {ifname} ({}=1): it holds no IPv6 address at all",
                            disable_key.replace('/', ".")
                        ))
                        .fix(self.pod_exec(&sysctl_fix(&disable_key, "0")));
                } else {
                    s = s.why(format!(
                        "the pod has no source address {ip}: what it sends cannot be answered"
                    ));
                }
                del_mine(self, s).fix(add)
            }
        };
        self.steps.push(step.details(json!({
            "addresses": shown,
            "disable_ipv6": disabled,
            "accept_dad": accept_dad,
        })));
    }

    /// IPv6: `default via fe80::ecee:eeff:feee:eeee dev eth0`. A link-local gateway needs no
    /// route of its own: the kernel takes it as on the link the route names.
    fn pod_routes6(&mut self) {
        const ID: &str = "pod-default-route";
        const TITLE: &str = "pod default route";
        if !self.pod_needs_interface(ID, TITLE) {
            return;
        }
        let (pod, index) = (
            self.pod.clone().expect("pod"),
            self.pod_index().expect("link"),
        );
        let routes = match self.block(pod.main_routes_of::<Ipv6Addr>()) {
            Ok(r) => r,
            Err(e) => return self.steps.push(Step::fail(ID, TITLE, e.msg)),
        };
        let shown: Vec<String> = routes
            .iter()
            .map(|r| {
                let mut s = match r.prefix {
                    0 => "default".to_string(),
                    128 => r.dst.to_string(),
                    p => format!("{}/{p}", r.dst),
                };
                if let Some(g) = r.gateway {
                    s.push_str(&format!(" via {g}"));
                }
                if let Some(i) = r.oif {
                    let n = self.pod_links.get(&i).cloned().unwrap_or(format!("#{i}"));
                    s.push_str(&format!(" dev {n}"));
                }
                s
            })
            .collect();
        let ifname = self.ifname().to_string();
        let def = routes
            .iter()
            .any(|r| r.prefix == 0 && r.gateway == Some(GATEWAY6) && r.oif == Some(index));
        let step = if def {
            Step::ok(ID, TITLE, format!("default via {GATEWAY6} dev {ifname}"))
        } else {
            let table = if shown.is_empty() {
                "the pod has no IPv6 routes".to_string()
            } else {
                format!("pod IPv6 routes: {}", shown.join("; "))
            };
            Step::fail(ID, TITLE, format!("no default via {GATEWAY6}; {table}"))
                .why("the pod's IPv6 sockets get \"Network is unreachable\" for anything off the pod")
                .fix(self.default_route_fix())
        };
        self.steps.push(step.details(json!({"routes": shown})));
    }

    fn pod_routes(&mut self) {
        const GW_ID: &str = "pod-gateway-route";
        const GW_TITLE: &str = "pod gateway route";
        const DEF_ID: &str = "pod-default-route";
        const DEF_TITLE: &str = "pod default route";
        if !self.pod_needs_interface(GW_ID, GW_TITLE)
            || !self.pod_needs_interface(DEF_ID, DEF_TITLE)
        {
            return;
        }
        let (pod, index) = (
            self.pod.clone().expect("pod"),
            self.pod_index().expect("link"),
        );
        let routes = match self.block(pod.main_routes()) {
            Ok(r) => r,
            Err(e) => {
                self.steps.push(Step::fail(GW_ID, GW_TITLE, e.msg.clone()));
                self.steps.push(Step::fail(DEF_ID, DEF_TITLE, e.msg));
                return;
            }
        };
        let shown: Vec<String> = routes
            .iter()
            .map(|r| {
                let mut s = if r.prefix == 0 {
                    "default".to_string()
                } else if r.prefix == 32 {
                    r.dst.to_string()
                } else {
                    format!("{}/{}", r.dst, r.prefix)
                };
                if let Some(g) = r.gateway {
                    s.push_str(&format!(" via {g}"));
                }
                if let Some(i) = r.oif {
                    let n = self.pod_links.get(&i).cloned().unwrap_or(format!("#{i}"));
                    s.push_str(&format!(" dev {n}"));
                }
                if r.scope == RouteScope::Link {
                    s.push_str(" scope link");
                }
                s
            })
            .collect();
        let table = if shown.is_empty() {
            "the pod has no routes".to_string()
        } else {
            format!("pod routes: {}", shown.join("; "))
        };
        let ifname = self.ifname().to_string();
        let gw = routes.iter().any(|r| {
            r.dst == GATEWAY
                && r.prefix == 32
                && r.oif == Some(index)
                && r.scope == RouteScope::Link
        });
        let def = routes
            .iter()
            .any(|r| r.prefix == 0 && r.gateway == Some(GATEWAY) && r.oif == Some(index));
        let gw_fix = self.pod_cmd(&format!("route replace {GATEWAY} dev {ifname} scope link"));
        let gw_saw = format!("no {GATEWAY} dev {ifname} scope link; {table}");
        self.steps.push(if gw {
            Step::ok(GW_ID, GW_TITLE, format!("{GATEWAY} dev {ifname} scope link"))
        } else if def {
            // The kernel checks that a gateway is on-link only when a route via it is added:
            // the default route in place keeps working.
            Step::warn(GW_ID, GW_TITLE, gw_saw)
                .why(format!(
                    "traffic still flows, but the default route cannot be added again without it: the pod's /32 puts {GATEWAY} on no link"
                ))
                .fix(gw_fix)
        } else {
            Step::fail(GW_ID, GW_TITLE, gw_saw)
                .why(format!(
                    "the pod's /32 puts {GATEWAY} on no link: the default route via it cannot be added (\"Nexthop has invalid gateway\")"
                ))
                .fix(gw_fix)
        });
        self.steps.push(
            if def {
                Step::ok(
                    DEF_ID,
                    DEF_TITLE,
                    format!("default via {GATEWAY} dev {ifname}"),
                )
            } else {
                Step::fail(
                    DEF_ID,
                    DEF_TITLE,
                    format!("no default via {GATEWAY}; {table}"),
                )
                .why("the pod's sockets get \"Network is unreachable\" for anything off the pod")
                .fix(self.default_route_fix())
            }
            .details(json!({"routes": shown})),
        );
    }

    fn pod_neighbour(&mut self) {
        const ID: &str = "pod-neighbour";
        const TITLE: &str = "gateway neighbour";
        if !self.pod_needs_interface(ID, TITLE) {
            return;
        }
        let (pod, index) = (
            self.pod.clone().expect("pod"),
            self.pod_index().expect("link"),
        );
        let want = self.host_mac();
        let want_s = dataplane::format_mac(&want);
        let gw = self.gw();
        // How the gateway's MAC is learned without the permanent entry ADD writes.
        let (learned, answered, works_while) = if self.v6() {
            (
                "neighbour discovery",
                "the host veth answered",
                format!("it works while the host veth answers neighbour solicitations for its own {GATEWAY6}"),
            )
        } else {
            (
                "ARP",
                "proxy ARP answered",
                "it works while the host veth answers ARP (proxy_arp)".to_string(),
            )
        };
        let read = |w: &Self| w.block(pod.neighbour(index, gw)).ok().flatten();
        let show = |e: &Option<(Vec<u8>, NeighbourState)>| match e {
            Some((m, s)) if m.is_empty() => {
                format!("{gw} without a MAC ({})", state_name(*s))
            }
            Some((m, s)) => format!("{gw} -> {} ({})", dataplane::format_mac(m), state_name(*s)),
            None => format!("no entry for {gw}"),
        };
        let entry = read(self);
        let step = match &entry {
            Some((m, NeighbourState::Permanent)) if *m == want => {
                Step::ok(ID, TITLE, format!("{gw} -> {want_s} (permanent), the host veth's MAC"))
            }
            Some((m, s)) if *m == want && neighbour_valid(*s) => Step::warn(
                ID,
                TITLE,
                format!("{} learned by {learned}; ADD writes it permanent", show(&entry)),
            )
            .why(format!("{works_while}; a permanent entry does not depend on it"))
            .fix(self.neigh_fix()),
            Some((m, s)) if !m.is_empty() && neighbour_valid(*s) => Step::fail(
                ID,
                TITLE,
                format!("{}, but the host veth's MAC is {want_s}", show(&entry)),
            )
            .why("the pod addresses every frame to a MAC the host veth does not have, and the veth drops them")
            .fix(self.neigh_fix()),
            _ => {
                // Ask the kernel to resolve it, the way the pod's first packet would.
                let started = Instant::now();
                let probed = self.block(pod.probe_neighbour(index, gw));
                let mut now = read(self);
                while probed.is_ok()
                    && started.elapsed() < Duration::from_millis(1500)
                    && !now.as_ref().is_some_and(|(m, s)| {
                        *s == NeighbourState::Failed || (!m.is_empty() && neighbour_valid(*s))
                    })
                {
                    std::thread::sleep(Duration::from_millis(50));
                    now = read(self);
                }
                match &now {
                    Some((m, s)) if *m == want && neighbour_valid(*s) => Step::warn(
                        ID,
                        TITLE,
                        format!(
                            "{}; resolving it gave {} ({answered})",
                            show(&entry),
                            show(&now)
                        ),
                    )
                    .why(format!("{works_while}; ADD writes a permanent entry that does not depend on it"))
                    .fix(self.neigh_fix()),
                    _ => Step::fail(
                        ID,
                        TITLE,
                        format!(
                            "{}; asking the kernel to resolve it gave {} within {} ms",
                            show(&entry),
                            show(&now),
                            started.elapsed().as_millis()
                        ),
                    )
                    .why(format!(
                        "the pod cannot send anything: every packet waits for the gateway's MAC. {}",
                        if self.v6() {
                            self.ndp_verdict()
                        } else {
                            self.proxy_arp_verdict()
                        }
                    ))
                    .fix(self.neigh_fix()),
                }
            }
        };
        let details = json!({
            "mac": entry.as_ref().map(|(m, _)| dataplane::format_mac(m)),
            "state": entry.as_ref().map(|(_, s)| state_name(*s)),
            "hostVethMac": want_s,
        });
        self.steps.push(step.details(details));
    }

    /// Why the host veth would or would not answer the pod's neighbour solicitation for
    /// fe80::ecee:eeff:feee:eeee: it answers for its own address, so it must hold it.
    fn ndp_verdict(&self) -> String {
        let veth = self.veth();
        let Some(index) = self.host_index() else {
            return format!("The host veth {veth} is missing.");
        };
        let key = format!("net/ipv6/conf/{veth}/disable_ipv6");
        if sysctl::read(&key).as_deref() == Some("1") {
            return format!(
                "IPv6 is off on the host veth ({}=1): it holds no address to answer for.",
                key.replace('/', ".")
            );
        }
        let held = self
            .block(self.node.net.addresses_with_flags::<Ipv6Addr>(index))
            .unwrap_or_default()
            .into_iter()
            .find(|(a, p, _)| *a == GATEWAY6 && *p == 64);
        match held {
            None => format!("The host veth does not hold {GATEWAY6}/64, so nothing answers for it."),
            Some((_, _, f)) if f.intersects(AddressFlags::Tentative | AddressFlags::Dadfailed) => format!(
                "The host veth's {GATEWAY6} is{}: the kernel answers for it only once DAD has passed.",
                flag_words(f)
            ),
            Some(_) => format!(
                "The host veth holds {GATEWAY6} and should answer; look for ICMPv6 filtering (ip6tables, nft) on the node."
            ),
        }
    }

    /// Why the host veth would or would not answer the pod's ARP request for the gateway.
    fn proxy_arp_verdict(&self) -> String {
        let veth = self.veth();
        if self.host_link.is_none() {
            return format!("The host veth {veth} is missing.");
        }
        let key = format!("net/ipv4/conf/{veth}/proxy_arp");
        if sysctl::read(&key).as_deref() != Some("1") {
            return format!(
                "The host veth does not answer ARP for {GATEWAY}: {} is not 1.",
                key.replace('/', ".")
            );
        }
        match &self.from_pod {
            Some(Err(code)) => format!(
                "proxy_arp is on, but the node answers ARP only for addresses it would forward to, and its lookup for {GATEWAY} from {} on {veth} fails: {}.",
                self.t.ip,
                self.refused(*code)
            ),
            Some(Ok(l)) if l.oif == self.host_index() => format!(
                "proxy_arp is on, but the node routes {GATEWAY} back out {veth}; proxy ARP answers only for addresses routed out another interface."
            ),
            _ => "proxy_arp is on and the node routes the gateway elsewhere; look for ARP filtering (arptables, nft arp) on the node.".into(),
        }
    }

    // ---------------------------------------------------------------- the node's side

    fn host_veth(&mut self) {
        const ID: &str = "host-veth";
        const TITLE: &str = "host veth";
        let veth = self.veth().to_string();
        let Some(link) = &self.host_link else {
            self.steps.push(
                Step::fail(ID, TITLE, format!("no link {veth} on the node"))
                    .why("the pod's end of the pair leads nowhere; restart the pod so its runtime runs ADD again"),
            );
            return;
        };
        let mac = dataplane::link_mac(link).unwrap_or_default();
        let mtu = dataplane::link_mtu(link);
        let up = dataplane::link_is_up(link);
        let peer_ok = self
            .pod_link
            .as_ref()
            .is_none_or(|p| dataplane::link_peer_index(p) == Some(link.header.index));
        let pod_mtu = self.pod_link.as_ref().and_then(dataplane::link_mtu);
        let saw = format!(
            "{veth}: {}, MAC {}, MTU {}{}",
            if up { "up" } else { "DOWN" },
            dataplane::format_mac(&mac),
            mtu.unwrap_or(0),
            if self.pod_link.is_some() {
                if peer_ok {
                    format!(", peer of the pod's {}", self.ifname())
                } else {
                    format!(", NOT the peer of the pod's {}", self.ifname())
                }
            } else {
                String::new()
            }
        );
        let details = json!({"name": veth, "index": link.header.index, "mac": dataplane::format_mac(&mac), "mtu": mtu, "up": up});
        let step = if !dataplane::link_is_veth(link) || !peer_ok {
            Step::fail(ID, TITLE, saw).why(
                "the pod's interface and this link are not one veth pair: the node cannot reach the pod through it; restart the pod",
            )
        } else if !up {
            Step::fail(ID, TITLE, saw)
                .why("a down veth drops everything the pod sends")
                .fix(format!("ip link set {veth} up"))
        } else if mac != HOST_MAC {
            Step::fail(ID, TITLE, saw)
                .why(format!(
                    "the pod's permanent neighbour entry sends its frames to {}: the veth drops frames for another MAC",
                    dataplane::format_mac(&HOST_MAC)
                ))
                .fix(format!(
                    "ip link set {veth} address {}",
                    dataplane::format_mac(&HOST_MAC)
                ))
        } else if pod_mtu.is_some() && pod_mtu != mtu {
            Step::warn(
                ID,
                TITLE,
                format!("{saw}, but the pod's MTU is {}", pod_mtu.unwrap_or(0)),
            )
            .why("big packets in one direction are dropped or fragmented")
        } else {
            Step::ok(ID, TITLE, saw)
        };
        self.steps.push(step.details(details));
    }

    fn host_veth_sysctls(&mut self) {
        const ID: &str = "host-veth-sysctls";
        const TITLE: &str = "host veth sysctls";
        let veth = self.veth().to_string();
        if self.host_link.is_none() {
            self.steps
                .push(Step::skip(ID, TITLE, format!("no {veth} on the node")));
            return;
        }
        let wanted = [
            (format!("net/ipv4/conf/{veth}/proxy_arp"), "1", "proxy_arp"),
            (
                format!("net/ipv4/neigh/{veth}/proxy_delay"),
                "0",
                "proxy_delay",
            ),
            (
                format!("net/ipv4/conf/{veth}/forwarding"),
                "1",
                "forwarding",
            ),
        ];
        let mut saw = Vec::new();
        let mut why = Vec::new();
        let mut fixes = Vec::new();
        let mut details = serde_json::Map::new();
        for (key, value, short) in &wanted {
            let got = sysctl::read(key).unwrap_or_else(|| "missing".into());
            saw.push(format!("{short}={got}"));
            details.insert(short.to_string(), json!(got));
            if got != *value {
                why.push(match *short {
                    "proxy_arp" => {
                        format!("proxy_arp=0: the veth does not answer the pod's ARP for {GATEWAY}")
                    }
                    "proxy_delay" => {
                        "proxy_delay>0: the kernel delays proxy ARP replies up to that many jiffies"
                            .into()
                    }
                    _ => "forwarding=0: the node does not route what arrives on the veth".into(),
                });
                fixes.push(sysctl_fix(key, value));
            }
        }
        let saw = format!("{veth}: {}", saw.join(", "));
        let mut step = if fixes.is_empty() {
            Step::ok(ID, TITLE, saw)
        } else {
            Step::fail(ID, TITLE, saw).why(why.join("; "))
        };
        step.fix = fixes;
        self.steps
            .push(step.details(serde_json::Value::Object(details)));
    }

    fn ip_forward(&mut self) {
        const ID: &str = "ip-forward";
        const TITLE: &str = "ip_forward";
        let got = sysctl::read("net/ipv4/ip_forward").unwrap_or_else(|| "missing".into());
        let saw = format!("net.ipv4.ip_forward={got}");
        self.steps.push(if got == "1" {
            Step::ok(ID, TITLE, saw)
        } else {
            Step::fail(ID, TITLE, saw)
                .why("the node forwards nothing; writing ip_forward sets the forwarding flag of every interface, and the flag of the interface a packet arrives on decides")
                .fix(sysctl_fix("net/ipv4/ip_forward", "1"))
        });
    }

    /// IPv6 sysctls of the host veth. Only `disable_ipv6` stops packets by itself (it takes the
    /// gateway address and the /128 route with it); the others are how ADD leaves the veth,
    /// and a difference is a warning: for IPv6, forwarding is decided by `all.forwarding`
    /// (a step of its own), and the gateway is the veth's own address, answered without
    /// proxy_ndp.
    fn host_veth_sysctls6(&mut self) {
        const ID: &str = "host-veth-sysctls";
        const TITLE: &str = "host veth sysctls";
        let veth = self.veth().to_string();
        if self.host_link.is_none() {
            self.steps
                .push(Step::skip(ID, TITLE, format!("no {veth} on the node")));
            return;
        }
        let mut saw = Vec::new();
        let (mut fail_why, mut warn_why, mut fixes) = (Vec::new(), Vec::new(), Vec::new());
        let mut details = serde_json::Map::new();
        for (key, value) in Family::V6
            .sysctls_at(Place::HostVeth)
            .chain(std::iter::once(Family::V6.forwarding()))
            .map(|s| (s.key(&veth), s.value))
        {
            // all.forwarding has a step of its own.
            let Some(short) = key
                .strip_prefix(&format!("net/ipv6/conf/{veth}/"))
                .map(str::to_string)
            else {
                continue;
            };
            let got = sysctl::read(&key).unwrap_or_else(|| "missing".into());
            saw.push(format!("{short}={got}"));
            details.insert(short.clone(), json!(got));
            if got == value {
                continue;
            }
            fixes.push(sysctl_fix(&key, value));
            match short.as_str() {
                "disable_ipv6" => fail_why.push(format!(
                    "disable_ipv6={got}: the veth has no IPv6 at all: the kernel drops its {GATEWAY6} and the pod's /128 route with it"
                )),
                "accept_dad" => warn_why.push(format!(
                    "accept_dad={got}: if {GATEWAY6} is added again it is unusable while DAD runs (ADD adds it nodad)"
                )),
                "proxy_ndp" => warn_why.push(format!(
                    "proxy_ndp={got}: ADD sets it as calico does; nothing depends on it while the veth holds {GATEWAY6} itself"
                )),
                _ => warn_why.push(format!(
                    "forwarding={got}: the veth acts as a host, not a router (its neighbour advertisements lose the router flag); packets are still forwarded while net.ipv6.conf.all.forwarding=1"
                )),
            }
        }
        let saw = format!("{veth}: {}", saw.join(", "));
        let mut step = if !fail_why.is_empty() {
            fail_why.extend(warn_why);
            Step::fail(ID, TITLE, saw).why(fail_why.join("; "))
        } else if !warn_why.is_empty() {
            Step::warn(ID, TITLE, saw).why(warn_why.join("; "))
        } else {
            Step::ok(ID, TITLE, saw)
        };
        step.fix = fixes;
        self.steps
            .push(step.details(serde_json::Value::Object(details)));
    }

    /// IPv6: the host veth holds the pod's gateway, fe80::ecee:eeff:feee:eeee/64, usable. It
    /// answers the pod's neighbour solicitations for the gateway, and it is the source of the
    /// node's own solicitations for the pod's address: without a link-local address on the
    /// veth the node sends none, and replies to the pod are dropped.
    fn host_veth_address6(&mut self) {
        const ID: &str = "host-veth-address";
        const TITLE: &str = "host veth gateway";
        let veth = self.veth().to_string();
        let Some(index) = self.host_index() else {
            self.steps
                .push(Step::skip(ID, TITLE, format!("no {veth} on the node")));
            return;
        };
        let addrs = match self.block(self.node.net.addresses_with_flags::<Ipv6Addr>(index)) {
            Ok(a) => a,
            Err(e) => return self.steps.push(Step::fail(ID, TITLE, e.msg)),
        };
        let shown: Vec<String> = addrs
            .iter()
            .map(|(a, p, f)| format!("{a}/{p}{}", flag_words(*f)))
            .collect();
        // replace: re-enabling IPv6 on the veth may have brought the EUI-64 one back already.
        let add = format!("ip -6 addr replace {GATEWAY6}/64 dev {veth} nodad");
        let step = match addrs.iter().find(|(a, p, _)| *a == GATEWAY6 && *p == 64) {
            Some((_, _, f)) if f.intersects(AddressFlags::Tentative | AddressFlags::Dadfailed) => {
                Step::fail(
                    ID,
                    TITLE,
                    format!("{GATEWAY6}/64{} on {veth}", flag_words(*f)),
                )
                .why("the kernel neither answers for the address nor sends from it until DAD has passed")
                .fix(format!("ip -6 addr del {GATEWAY6}/64 dev {veth}"))
                .fix(add)
            }
            Some(_) => Step::ok(ID, TITLE, format!("{GATEWAY6}/64 on {veth}")),
            None => Step::fail(
                ID,
                TITLE,
                format!(
                    "no {GATEWAY6}/64 on {veth} (it has: {})",
                    if shown.is_empty() {
                        "no IPv6 address".to_string()
                    } else {
                        shown.join(", ")
                    }
                ),
            )
            .why(format!(
                "the node sends no neighbour solicitation for the pod on {veth} (it needs a link-local source), so replies to the pod are dropped; and nothing answers the pod for its gateway once its permanent entry is gone"
            ))
            .fix(add),
        };
        self.steps.push(step.details(json!({"addresses": shown})));
    }

    fn ipv6_forwarding(&mut self) {
        const ID: &str = "ipv6-forwarding";
        const TITLE: &str = "ipv6 forwarding";
        let key = "net/ipv6/conf/all/forwarding";
        let got = sysctl::read(key).unwrap_or_else(|| "missing".into());
        let saw = format!("net.ipv6.conf.all.forwarding={got}");
        self.steps.push(if got == "1" {
            Step::ok(ID, TITLE, saw)
        } else {
            Step::fail(ID, TITLE, saw)
                .why("the node forwards no IPv6 packet: for IPv6 this switch decides, not the interfaces' own; writing it sets every interface's forwarding too, and an uplink that learns its default route from router advertisements then needs accept_ra=2")
                .fix(sysctl_fix(key, "1"))
        });
    }

    fn host_route(&mut self) {
        const ID: &str = "host-route";
        const TITLE: &str = "host route";
        let (ip, veth) = (self.t.ip, self.veth().to_string());
        let Some(index) = self.host_index() else {
            self.steps
                .push(Step::skip(ID, TITLE, format!("no {veth} on the node")));
            return;
        };
        let plen = dataplane::host_prefix(ip);
        let (fam, scope) = if self.v6() {
            ("-6 ", "")
        } else {
            ("", " scope link")
        };
        let routes = match self.block(self.node.net.routes_to_ip(ip, plen)) {
            Ok(r) => r,
            Err(e) => return self.steps.push(Step::fail(ID, TITLE, e.msg)),
        };
        let oifs: Vec<String> = routes
            .iter()
            .map(|r| format!("{ip} dev {}", self.host_name(dataplane::route_oif(r))))
            .collect();
        let ours = routes
            .iter()
            .any(|r| dataplane::route_oif(r) == Some(index));
        let lookup = self.to_pod.clone().expect("looked up");
        let resolved = match &lookup {
            Ok(l) => format!("`route get {ip}`: {}", describe(l, self.node.links)),
            Err(code) => format!("`route get {ip}`: {}", self.refused(*code)),
        };
        let reaches =
            matches!(&lookup, Ok(l) if l.oif == Some(index) && l.kind == RouteType::Unicast);
        let step = if !ours {
            Step::fail(
                ID,
                TITLE,
                format!(
                    "no {ip}/{plen} dev {veth} in the main table{}; {resolved}",
                    if oifs.is_empty() {
                        String::new()
                    } else {
                        format!(" (it has {})", oifs.join(", "))
                    }
                ),
            )
            .why("replies to the pod follow another route and never reach it")
            .fix(self.route_fix())
        } else if !reaches {
            Step::fail(
                ID,
                TITLE,
                format!("{ip}/{plen} dev {veth} is in the main table, but it is shadowed: {resolved}"),
            )
            .why(format!(
                "something the node consults first wins: a policy rule (`ip {fam}rule show`) to another table, or {ip} is the node's own address (`ip {fam}route show table all {ip}`)"
            ))
        } else {
            Step::ok(
                ID,
                TITLE,
                format!("{ip}/{plen} dev {veth}{scope}; {resolved}"),
            )
        };
        self.steps
            .push(step.details(json!({"routes": oifs, "lookup": lookup_json(&lookup, ip)})));
    }

    fn rp_filter(&mut self) {
        const ID: &str = "rp-filter";
        const TITLE: &str = "rp_filter";
        let veth = self.veth().to_string();
        let Some(index) = self.host_index() else {
            self.steps
                .push(Step::skip(ID, TITLE, format!("no {veth} on the node")));
            return;
        };
        let read = |k: &str| {
            sysctl::read(k)
                .and_then(|v| v.parse::<u8>().ok())
                .unwrap_or(0)
        };
        let all = read("net/ipv4/conf/all/rp_filter");
        let dev = read(&format!("net/ipv4/conf/{veth}/rp_filter"));
        // The kernel uses the larger of the two.
        let mode = all.max(dev);
        let name = match mode {
            0 => "off",
            1 => "strict",
            _ => "loose",
        };
        let saw = format!("{name} (all={all}, {veth}={dev})");
        let back = self.to_pod.clone().expect("looked up");
        let back_ok =
            matches!(&back, Ok(l) if l.oif == Some(index) && l.kind == RouteType::Unicast);
        let kernel_refuses = matches!(self.from_pod, Some(Err(EINVAL | EXDEV)));
        let details = json!({"all": all, "dev": dev, "mode": name, "reverseLookup": lookup_json(&back, self.t.ip)});
        let step = if mode == 0 {
            Step::ok(
                ID,
                TITLE,
                format!("{saw}: the node does not check the pod's source address"),
            )
        } else if back_ok && !kernel_refuses {
            Step::ok(
                ID,
                TITLE,
                format!(
                    "{saw}: passes, the route back to {} leaves through {veth}",
                    self.t.ip
                ),
            )
        } else {
            let back_s = match &back {
                Ok(l) => describe(l, self.node.links),
                Err(c) => self.refused(*c),
            };
            let mut s = Step::fail(
                ID,
                TITLE,
                format!("{saw}: the route back to {} is `{back_s}`, not {veth}", self.t.ip),
            )
            .why(format!(
                "the node drops every packet from the pod: rp_filter accepts a source only when the route back to it leaves through the interface it came in on, and {veth} has no address, so even loose mode does not fall back"
            ));
            if !back_ok {
                s = s.fix(self.route_fix());
            }
            s
        };
        self.steps.push(step.details(details));
    }

    fn nat(&mut self, rules: &Result<PoolRules, String>) {
        const ID: &str = "nat";
        const TITLE: &str = "masquerade rules";
        let p = match rules {
            Ok(p) => p,
            Err(e) => {
                self.steps.push(
                    Step::fail(ID, TITLE, format!("cannot read the nat table: {e}"))
                        .why("doctor cannot tell whether pod traffic is masqueraded"),
                );
                return;
            }
        };
        let nat = p.expected();
        let details = p.to_json();
        let counters = |r: &iptables::Rule| format!("[{} pkts]", r.pkts);
        let chain_saw = match &p.chain {
            Some(c) => format!(
                "{c}: {}",
                if p.chain_rules.is_empty() {
                    "empty".to_string()
                } else {
                    p.chain_rules
                        .iter()
                        .map(|r| {
                            let rule = r.spec.split(" -m comment").next().unwrap_or(&r.spec);
                            let t = r.target.as_deref().unwrap_or("");
                            format!("{} {} {}", t, rule.trim(), counters(r))
                                .replace(&format!(" -j {t}"), "")
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            None => String::new(),
        };
        let step = if p.chain.is_none() && p.jumps.is_empty() {
            Step::warn(
                ID,
                TITLE,
                format!("no masquerade rules for pool {} (no jump in POSTROUTING, no RCNI- chain)", p.subnet),
            )
            .why("fine when the network config says \"masquerade\": false; otherwise pods reach only nonMasqueradeCIDRs, and the next ADD in this pool installs the rules again")
        } else if !p.jump_ok() {
            Step::fail(
                ID,
                TITLE,
                format!("POSTROUTING has no jump for pool {}; {chain_saw}", p.subnet),
            )
            .why("pod traffic leaves the node with the pod's address, which nothing outside can answer")
            .fix(format!("{} -t nat -A POSTROUTING {}", p.command(), p.jump_spec()))
        } else if !p.chain_ok() {
            let chain = p.chain.clone().unwrap_or_default();
            if chain == nat.chain() {
                let mut s = Step::fail(
                    ID,
                    TITLE,
                    format!("{chain_saw}: not the rules ADD writes, in its order"),
                )
                .why("pod traffic is masqueraded wrongly or not at all")
                .fix(format!("{} -t nat -F {chain}", p.command()));
                for r in nat.chain_rules() {
                    s = s.fix(format!("{} -t nat -A {chain} {r}", p.command()));
                }
                s
            } else {
                Step::fail(
                    ID,
                    TITLE,
                    format!("{chain_saw}: the RETURN rules were changed after ADD wrote the chain"),
                )
                .why("the pool's nonMasqueradeCIDRs cannot be read back; remove the jump and the chain, and the next ADD in this pool writes them from the config")
                .fix(format!("{} -t nat -D POSTROUTING {}", p.command(), p.jumps[0].spec))
                .fix(format!("{} -t nat -F {chain}", p.command()))
                .fix(format!("{} -t nat -X {chain}", p.command()))
            }
        } else {
            let jump = p
                .jumps
                .iter()
                .find(|j| j.spec == p.jump_spec())
                .expect("jump_ok");
            let (pos, len) = p.jump_position.unwrap_or((0, 0));
            let saw = format!(
                "POSTROUTING rule {pos}/{len}: -s {} -> {} {}; {chain_saw}",
                p.subnet,
                p.chain.as_deref().unwrap_or(""),
                counters(jump)
            );
            if p.jumps.len() > 1 {
                Step::warn(
                    ID,
                    TITLE,
                    format!("{saw}; {} jumps for the pool", p.jumps.len()),
                )
                .why("an older config's jump is left over; the first match wins")
            } else {
                Step::ok(ID, TITLE, saw)
            }
        };
        self.steps.push(step.details(details));
    }

    // ---------------------------------------------------------------- --to

    fn destination(&mut self, d: Dest, rules: &Result<PoolRules, String>) {
        let ip = self.t.ip;
        let dst = d.ip;
        let gw = self.gw();
        // The pod's lookup.
        const POD_ID: &str = "pod-route-to";
        const POD_TITLE: &str = "pod route to";
        if dst.is_ipv6() != ip.is_ipv6() {
            // A dual-stack pod's other address answers for it.
            let why = format!(
                "{dst} is {}, this address is {}",
                family_name(dst),
                family_name(ip)
            );
            for (id, title) in [
                (POD_ID, POD_TITLE),
                ("node-route-to", "node route to"),
                ("masquerade-to", "masquerade to"),
            ] {
                self.steps.push(Step::skip(id, title, why.clone()));
            }
            return;
        }
        match (&self.pod, self.pod_index()) {
            (Some(pod), Some(index)) => {
                let q = RouteQuery {
                    dst: Some(dst),
                    tcp_dport: d.port,
                    ..Default::default()
                };
                let res = self.block(pod.route_get(q));
                let step = match &res {
                    Err(e) => Step::fail(POD_ID, POD_TITLE, e.msg.clone()),
                    Ok(Ok(l)) => {
                        let saw = format!("{dst}: {}", describe(l, &self.pod_links));
                        if l.kind == RouteType::Local
                            || (l.oif == Some(index) && (l.gateway == Some(gw) || dst == gw))
                        {
                            Step::ok(POD_ID, POD_TITLE, saw)
                        } else {
                            Step::warn(POD_ID, POD_TITLE, saw).why(format!(
                                "the pod sends it another way than through {gw} on {}",
                                self.ifname()
                            ))
                        }
                    }
                    Ok(Err(code)) => {
                        Step::fail(POD_ID, POD_TITLE, format!("{dst}: {}", self.refused(*code)))
                            .why("the pod's connect() fails at once")
                            .fix(self.default_route_fix())
                    }
                };
                let details = match &res {
                    Ok(r) => lookup_json(r, ip),
                    Err(_) => serde_json::Value::Null,
                };
                self.steps.push(step.details(details));
            }
            _ => self.steps.push(Step::skip(
                POD_ID,
                POD_TITLE,
                "no pod interface to look from",
            )),
        }

        // The node's lookup for the packet as it arrives from the pod.
        const NODE_ID: &str = "node-route-to";
        const NODE_TITLE: &str = "node route to";
        let service = iptables::kube_service(dst, d.port);
        let svc_note = service.as_ref().map(|s| {
            format!("{dst} is a Service IP ({s}): kube-proxy rewrites it to an endpoint before this lookup, so the endpoint's route is the one that counts; ")
        });
        let mut local = false;
        match self.host_index() {
            None => self.steps.push(Step::skip(
                NODE_ID,
                NODE_TITLE,
                format!("no {} on the node", self.veth()),
            )),
            Some(index) => {
                let q = RouteQuery {
                    dst: Some(dst),
                    src: Some(ip),
                    iif: Some(index),
                    tcp_dport: d.port,
                };
                let res = self.block(self.node.net.route_get(q));
                let note = svc_note.clone().unwrap_or_default();
                let step = match &res {
                    Err(e) => Step::fail(NODE_ID, NODE_TITLE, e.msg.clone()),
                    Ok(Ok(l)) => {
                        local = l.kind == RouteType::Local;
                        let what = if local {
                            "delivered to the node itself".to_string()
                        } else {
                            format!("forwarded {}", describe(l, self.node.links))
                        };
                        let saw = format!("{note}{dst} from {ip} on {}: {what}", self.veth());
                        // An IPv6 lookup does not look at forwarding; ip6_forward drops later.
                        let key6 = "net/ipv6/conf/all/forwarding";
                        let unforwarded6 = self.v6() && sysctl::read(key6).as_deref() != Some("1");
                        match l.oif.filter(|_| !local) {
                            Some(_) if unforwarded6 => Step::fail(
                                NODE_ID,
                                NODE_TITLE,
                                format!("{saw}, but net.ipv6.conf.all.forwarding is not 1"),
                            )
                            .why("the node drops the pod's packets instead of forwarding them")
                            .fix(sysctl_fix(key6, "1")),
                            Some(out) => self.reply_path(saw, dst, out, index),
                            None => Step::ok(NODE_ID, NODE_TITLE, saw),
                        }
                    }
                    Ok(Err(code)) => {
                        let s = Step::fail(
                            NODE_ID,
                            NODE_TITLE,
                            format!(
                                "{note}{dst} from {ip} on {}: {}",
                                self.veth(),
                                self.refused(*code)
                            ),
                        );
                        match *code {
                            _ if self.v6() => s.why(format!("the node has no route to {dst}")),
                            EHOSTUNREACH => s
                                .why("the node drops the pod's packets instead of forwarding them")
                                .fix(sysctl_fix("net/ipv4/ip_forward", "1")),
                            EINVAL | EXDEV => s
                                .why("the node drops the pod's packets: the route back to the pod does not leave through its veth")
                                .fix(self.route_fix()),
                            _ => s.why(format!("the node has no route to {dst}")),
                        }
                    }
                };
                let mut details = match &res {
                    Ok(r) => lookup_json(r, ip),
                    Err(_) => json!({}),
                };
                if let Some(s) = &service {
                    details["service"] = json!(s);
                }
                self.steps.push(step.details(details));
            }
        }

        // What the pool's NAT does to it.
        const NAT_ID: &str = "masquerade-to";
        const NAT_TITLE: &str = "masquerade to";
        let step = match rules {
            Err(e) => Step::fail(NAT_ID, NAT_TITLE, format!("cannot read the nat table: {e}")),
            Ok(_) if local => Step::ok(
                NAT_ID,
                NAT_TITLE,
                format!("no: {dst} is the node's own, POSTROUTING is not on the way; it sees {ip}"),
            ),
            Ok(p) => match p.verdict(dst) {
                Verdict::Return(c) => Step::ok(
                    NAT_ID,
                    NAT_TITLE,
                    format!("no: {dst} is inside {c} (nonMasqueradeCIDRs), it sees the pod's {ip}"),
                ),
                Verdict::Multicast => {
                    Step::ok(NAT_ID, NAT_TITLE, "no: multicast is never masqueraded")
                }
                Verdict::Masquerade => {
                    let out = self.block(self.node.net.route_get(RouteQuery {
                        dst: Some(dst),
                        ..Default::default()
                    }));
                    let as_what = match out {
                        Ok(Ok(l)) => format!(
                            "the node's address on {}{}",
                            self.host_name(l.oif),
                            l.prefsrc.map(|s| format!(" ({s})")).unwrap_or_default()
                        ),
                        _ => "the node's address".into(),
                    };
                    Step::ok(
                        NAT_ID,
                        NAT_TITLE,
                        format!(
                            "yes: {dst} is outside nonMasqueradeCIDRs ({}); it sees {as_what}",
                            p.non_masquerade
                                .iter()
                                .map(|c| c.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                }
                Verdict::NoRules if p.chain.is_some() => Step::fail(
                    NAT_ID,
                    NAT_TITLE,
                    format!("no: the pool's jump is missing, so {dst} sees the pod's {ip}"),
                )
                .why("an address only this node knows cannot be answered from outside the cluster")
                .fix(format!(
                    "{} -t nat -A POSTROUTING {}",
                    p.command(),
                    p.jump_spec()
                )),
                Verdict::NoRules => Step::warn(
                    NAT_ID,
                    NAT_TITLE,
                    format!("no: the pool has no masquerade rules, so {dst} sees the pod's {ip}"),
                ),
            },
        };
        self.steps.push(step);
    }

    /// The replies' way back: they arrive on `out` (the interface the request left by) with
    /// the pod as destination (the masquerade is undone before routing), so the node must
    /// forward from `out` too, and route them to the pod's veth.
    fn reply_path(&self, saw: String, dst: IpAddr, out: u32, veth: u32) -> Step {
        const NODE_ID: &str = "node-route-to";
        const NODE_TITLE: &str = "node route to";
        let out_name = self.host_name(Some(out));
        let back = self.block(self.node.net.route_get(RouteQuery {
            dst: Some(self.t.ip),
            src: Some(dst),
            iif: Some(out),
            ..Default::default()
        }));
        match back {
            Ok(Ok(l)) if l.oif == Some(veth) => Step::ok(
                NODE_ID,
                NODE_TITLE,
                format!("{saw}; replies on {out_name} go back to {}", self.veth()),
            ),
            Ok(Ok(l)) => Step::fail(
                NODE_ID,
                NODE_TITLE,
                format!(
                    "{saw}; but replies on {out_name} go {}",
                    describe(&l, self.node.links)
                ),
            )
            .why("the answers never reach the pod")
            .fix(self.route_fix()),
            Ok(Err(EHOSTUNREACH)) if !self.v6() => {
                let key = format!("net/ipv4/conf/{out_name}/forwarding");
                Step::fail(
                    NODE_ID,
                    NODE_TITLE,
                    format!(
                        "{saw}; but replies arriving on {out_name} are not forwarded: {}={}",
                        key.replace('/', "."),
                        sysctl::read(&key).unwrap_or_else(|| "?".into())
                    ),
                )
                .why(format!(
                    "the request leaves, the answer is dropped on {out_name}: what decides is the forwarding flag of the interface a packet comes in on"
                ))
                .fix(sysctl_fix(&key, "1"))
            }
            Ok(Err(code)) => Step::fail(
                NODE_ID,
                NODE_TITLE,
                format!("{saw}; but replies on {out_name} are refused: {}", self.refused(code)),
            )
            .why(format!(
                "the answers never reach the pod: the node's route back to {dst} does not leave through {out_name} (asymmetric routing under rp_filter)"
            )),
            Err(e) => Step::fail(NODE_ID, NODE_TITLE, format!("{saw}; {}", e.msg)),
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
                dst: Some(IpAddr::V4(GATEWAY)),
                src: Some(t.ip),
                iif: Some(index),
                ..Default::default()
            }))
            .ok();
    }

    w.netns();
    w.pod_interface();
    if t.ip.is_ipv6() {
        w.pod_address6();
        w.pod_routes6();
        w.pod_neighbour();
        w.host_veth();
        w.host_veth_sysctls6();
        w.host_veth_address6();
        w.ipv6_forwarding();
        w.host_route();
    } else {
        w.pod_address();
        w.pod_routes();
        w.pod_neighbour();
        w.host_veth();
        w.host_veth_sysctls();
        w.ip_forward();
        w.host_route();
        w.rp_filter();
    }
    w.nat(rules);
    if let Some(d) = w.to {
        w.destination(d, rules);
    }
    w.allocation();

    let mut report = PodReport {
        pod: match (&r.pod_namespace, &r.pod_name) {
            (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
            (None, Some(n)) => Some(n.clone()),
            _ => None,
        },
        container_id: r.container_id.clone(),
        ifname: r.ifname.clone(),
        ip: r.ip.to_string(),
        family: if t.ip.is_ipv6() { "ipv6" } else { "ipv4" },
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
