//! The node's side of the walk: the host veth, its sysctls and (IPv6) its gateway address,
//! and the node's route back to the pod, for either family.

use rtnetlink::packet_route::address::AddressFlags;
use rtnetlink::packet_route::route::RouteType;
use serde_json::json;

use super::{describe, flag_words, lookup_json, Walk};
use crate::dataplane::spec::{Need, Place, PodSpec};
use crate::dataplane::{self, sysctl};
use crate::doctor::report::Step;

impl Walk<'_> {
    pub(super) fn host_veth(&mut self) {
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
        let ips = [self.t.ip];
        let want_mac = PodSpec {
            host_veth: &veth,
            ifname: self.ifname(),
            ips: &ips,
        }
        .host_link()
        .mac;
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
        } else if let Some(want) = want_mac.filter(|m| mac != m) {
            Step::fail(ID, TITLE, saw)
                .why(format!(
                    "the pod's permanent neighbour entry sends its frames to {}: the veth drops frames for another MAC",
                    dataplane::format_mac(&want)
                ))
                .fix(format!(
                    "ip link set {veth} address {}",
                    dataplane::format_mac(&want)
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

    /// The host veth's sysctls of the spec for this family (the node-wide forwarding switch
    /// has a step of its own). One that traffic needs is a failure; one ADD sets only for the
    /// build or by convention (IPv6: accept_dad, proxy_ndp, the veth's own forwarding) is a
    /// warning.
    pub(super) fn host_veth_sysctls(&mut self) {
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
        for s in self.fam.sysctls_at(Place::HostVeth) {
            let got = sysctl::read(&s.key(&veth)).unwrap_or_else(|| "missing".into());
            saw.push(format!("{}={got}", s.name));
            details.insert(s.name.to_string(), json!(got));
            if got == s.value {
                continue;
            }
            fixes.push(s.fix(&veth));
            let why = format!("{}={got}: {}", s.name, s.if_wrong);
            match s.need {
                Need::Required => fail_why.push(why),
                Need::Setup => warn_why.push(why),
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

    /// The host veth's own address of the spec, when the family has one: IPv6's gateway,
    /// fe80::ecee:eeff:feee:eeee/64, usable. It answers the pod's neighbour solicitations for
    /// the gateway, and it is the source of the node's own solicitations for the pod's address:
    /// without a link-local address on the veth the node sends none, and replies to the pod
    /// are dropped.
    pub(super) fn host_veth_address(&mut self) {
        const ID: &str = "host-veth-address";
        const TITLE: &str = "host veth gateway";
        let Some(want) = self.fam.host_veth_address() else {
            return;
        };
        let (gw, plen) = (want.ip, want.prefix);
        let veth = self.veth().to_string();
        let Some(index) = self.host_index() else {
            self.steps
                .push(Step::skip(ID, TITLE, format!("no {veth} on the node")));
            return;
        };
        let addrs = match self.block(self.node.net.addresses_in(index, self.fam)) {
            Ok(a) => a,
            Err(e) => return self.steps.push(Step::fail(ID, TITLE, e.msg)),
        };
        let shown: Vec<String> = addrs
            .iter()
            .map(|(a, p, f)| format!("{a}/{p}{}", flag_words(*f)))
            .collect();
        let ip = self.fam.ip_option();
        // replace: re-enabling IPv6 on the veth may have brought the EUI-64 one back already.
        let add = format!("ip {ip}addr replace {gw}/{plen} dev {veth} nodad");
        let step = match addrs.iter().find(|(a, p, _)| *a == gw && *p == plen) {
            Some((_, _, f)) if f.intersects(AddressFlags::Tentative | AddressFlags::Dadfailed) => {
                Step::fail(ID, TITLE, format!("{gw}/{plen}{} on {veth}", flag_words(*f)))
                    .why("the kernel neither answers for the address nor sends from it until DAD has passed")
                    .fix(format!("ip {ip}addr del {gw}/{plen} dev {veth}"))
                    .fix(add)
            }
            Some(_) => Step::ok(ID, TITLE, format!("{gw}/{plen} on {veth}")),
            None => Step::fail(
                ID,
                TITLE,
                format!(
                    "no {gw}/{plen} on {veth} (it has: {})",
                    if shown.is_empty() {
                        format!("no {} address", self.fam.name())
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

    pub(super) fn host_route(&mut self) {
        const ID: &str = "host-route";
        const TITLE: &str = "host route";
        let (ip, veth) = (self.t.ip, self.veth().to_string());
        let Some(index) = self.host_index() else {
            self.steps
                .push(Step::skip(ID, TITLE, format!("no {veth} on the node")));
            return;
        };
        let plen = dataplane::host_prefix(ip);
        let fam = self.fam.ip_option();
        // What ADD adds: IPv4's host route says scope link, IPv6's does not.
        let scope = if self.fam.is_v6() { "" } else { " scope link" };
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
}
