//! The pod's side of the walk: its namespace, its interface, its address, its routes and its
//! entry for the gateway, for either family.

use rtnetlink::packet_route::address::AddressFlags;
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::RouteScope;
use serde_json::json;
use std::time::{Duration, Instant};

use super::{flag_words, neighbour_valid, state_name, Walk};
use crate::dataplane::spec::{self, Need, Place, PodSpec};
use crate::dataplane::{self, sysctl, Family, Netlink};
use crate::doctor::report::Step;
use crate::ipam::attachment_hash;
use crate::netns::Netns;

impl Walk<'_> {
    pub(super) fn netns(&mut self) {
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

    pub(super) fn pod_interface(&mut self) {
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

    /// A sysctl of the pod's namespace (`/proc/sys/net` is the namespace of the thread that
    /// opens it).
    fn pod_sysctl(&self, key: &str) -> Option<String> {
        let ns = self.pod_ns.as_ref()?;
        let _in_pod = ns.enter().ok()?;
        sysctl::read(key)
    }

    /// `<ip>/32` (IPv4) or `<ip>/128` (IPv6) on the pod's interface, usable (not tentative,
    /// not dadfailed: ADD adds an IPv6 one with nodad and turns DAD off, so neither should
    /// ever be seen). The pod's own sysctls for the family (IPv6: disable_ipv6, accept_dad)
    /// explain a missing one.
    pub(super) fn pod_address(&mut self) {
        const ID: &str = "pod-address";
        const TITLE: &str = "pod address";
        if !self.pod_needs_interface(ID, TITLE) {
            return;
        }
        let (pod, index) = (
            self.pod.clone().expect("pod"),
            self.pod_index().expect("link"),
        );
        let fam = self.fam;
        let addrs = match self.block(pod.addresses_in(index, fam)) {
            Ok(a) => a,
            Err(e) => return self.steps.push(Step::fail(ID, TITLE, e.msg)),
        };
        let ifname = self.ifname().to_string();
        let (ip, plen) = (self.t.ip, fam.host_prefix());
        let shown: Vec<String> = addrs
            .iter()
            .map(|(a, p, f)| format!("{a}/{p}{}", flag_words(*f)))
            .collect();
        let sysctls: Vec<_> = fam
            .sysctls_at(Place::Pod)
            .map(|s| (s, self.pod_sysctl(&s.key(&ifname))))
            .collect();
        let saw = format!(
            "{} on {ifname}",
            if shown.is_empty() {
                format!("no {} address", fam.name())
            } else {
                shown.join(", ")
            }
        );
        let add = match fam {
            Family::V4 => self.pod_cmd(&format!("addr add {ip}/{plen} dev {ifname}")),
            Family::V6 => self.pod_cmd(&format!("addr replace {ip}/{plen} dev {ifname} nodad")),
        };
        let mine: Vec<_> = addrs.iter().filter(|(a, _, _)| *a == ip).collect();
        let del_mine = |w: &Self, mut s: Step| {
            for (a, p, _) in &mine {
                s = s.fix(w.pod_cmd(&format!("addr del {a}/{p} dev {ifname}")));
            }
            s
        };
        let step = match mine.iter().find(|(_, p, _)| *p == plen) {
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
                // A required sysctl of the pod's interface that is off takes the address away.
                let off = sysctls.iter().find_map(|(s, got)| {
                    let got = got.as_deref()?;
                    (s.need == Need::Required && got != s.value).then_some((*s, got))
                });
                if let Some((off, got)) = off {
                    s = s
                        .why(format!("{}={got}: {}", off.dotted(&ifname), off.if_wrong))
                        .fix(self.pod_exec(&off.fix(&ifname)));
                } else {
                    s = s.why(format!(
                        "the pod has no source address {ip}: what it sends cannot be answered"
                    ));
                }
                del_mine(self, s).fix(add)
            }
        };
        let mut details = json!({ "addresses": shown });
        for (s, got) in &sysctls {
            details[s.name] = json!(got);
        }
        self.steps.push(step.details(details));
    }

    /// The pod's routes of the spec, one step each: IPv4's `169.254.1.1 dev eth0 scope link`
    /// (the gateway route) and every family's `default via <gateway> dev eth0`. IPv6 needs no
    /// gateway route: its link-local gateway is on the link the default route names.
    pub(super) fn pod_routes(&mut self) {
        let ips = [self.t.ip];
        let wanted = PodSpec {
            host_veth: self.veth(),
            ifname: self.ifname(),
            ips: &ips,
        }
        .pod_routes();
        let step_of = |r: &spec::Route| {
            if r.gateway.is_none() {
                ("pod-gateway-route", "pod gateway route")
            } else {
                ("pod-default-route", "pod default route")
            }
        };
        if self.pod_link.is_none() {
            for r in &wanted {
                let (id, title) = step_of(r);
                self.pod_needs_interface(id, title);
            }
            return;
        }
        let (pod, index) = (
            self.pod.clone().expect("pod"),
            self.pod_index().expect("link"),
        );
        let fam = self.fam;
        let routes = match self.block(pod.main_routes_in(fam)) {
            Ok(r) => r,
            Err(e) => {
                for r in &wanted {
                    let (id, title) = step_of(r);
                    self.steps.push(Step::fail(id, title, e.msg.clone()));
                }
                return;
            }
        };
        let shown: Vec<String> = routes
            .iter()
            .map(|r| {
                let mut s = if r.prefix == 0 {
                    "default".to_string()
                } else if r.prefix == fam.host_prefix() {
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
        // IPv4 reads as it did before dual-stack; IPv6 says so.
        let v6 = if fam.is_v6() { "IPv6 " } else { "" };
        let table = if shown.is_empty() {
            format!("the pod has no {v6}routes")
        } else {
            format!("pod {v6}routes: {}", shown.join("; "))
        };
        let ifname = self.ifname().to_string();
        let present = |want: &spec::Route| {
            routes.iter().any(|r| {
                r.dst == want.dst
                    && r.prefix == want.prefix
                    && r.oif == Some(index)
                    && (want.gateway.is_none() || r.gateway == want.gateway)
                    && (!want.scope_link || r.scope == RouteScope::Link)
            })
        };
        let default_there = wanted.iter().filter(|r| r.gateway.is_some()).all(present);
        for want in &wanted {
            let (id, title) = step_of(want);
            let step = match want.gateway {
                None => {
                    let gw = want.dst;
                    let fix = self.pod_cmd(&format!("route replace {gw} dev {ifname} scope link"));
                    let saw = format!("no {gw} dev {ifname} scope link; {table}");
                    if present(want) {
                        Step::ok(id, title, format!("{gw} dev {ifname} scope link"))
                    } else if default_there {
                        // The kernel checks that a gateway is on-link only when a route via
                        // it is added: the default route in place keeps working.
                        Step::warn(id, title, saw)
                            .why(format!(
                                "traffic still flows, but the default route cannot be added again without it: the pod's /32 puts {gw} on no link"
                            ))
                            .fix(fix)
                    } else {
                        Step::fail(id, title, saw)
                            .why(format!(
                                "the pod's /32 puts {gw} on no link: the default route via it cannot be added (\"Nexthop has invalid gateway\")"
                            ))
                            .fix(fix)
                    }
                }
                Some(gw) => if present(want) {
                    Step::ok(id, title, format!("default via {gw} dev {ifname}"))
                } else {
                    Step::fail(id, title, format!("no default via {gw}; {table}"))
                        .why(format!(
                            "the pod's {v6}sockets get \"Network is unreachable\" for anything off the pod"
                        ))
                        .fix(self.default_route_fix())
                }
                .details(json!({"routes": shown})),
            };
            self.steps.push(step);
        }
    }

    pub(super) fn pod_neighbour(&mut self) {
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
        let learned = self.fam.neighbour_protocol();
        let (answered, works_while) = match self.fam {
            Family::V6 => (
                "the host veth answered",
                format!(
                    "it works while the host veth answers neighbour solicitations for its own {gw}"
                ),
            ),
            Family::V4 => (
                "proxy ARP answered",
                "it works while the host veth answers ARP (proxy_arp)".to_string(),
            ),
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
                        match self.fam {
                            Family::V6 => self.ndp_verdict(),
                            Family::V4 => self.proxy_arp_verdict(),
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
        let off = Family::V6.sysctl(Place::HostVeth, "disable_ipv6");
        if sysctl::read(&off.key(veth)).as_deref() == Some("1") {
            return format!(
                "IPv6 is off on the host veth ({}=1): it holds no address to answer for.",
                off.dotted(veth)
            );
        }
        let want = Family::V6
            .host_veth_address()
            .expect("IPv6 has a host veth address");
        let (gw, plen) = (want.ip, want.prefix);
        let held = self
            .block(self.node.net.addresses_in(index, Family::V6))
            .unwrap_or_default()
            .into_iter()
            .find(|(a, p, _)| *a == gw && *p == plen);
        match held {
            None => format!("The host veth does not hold {gw}/{plen}, so nothing answers for it."),
            Some((_, _, f)) if f.intersects(AddressFlags::Tentative | AddressFlags::Dadfailed) => format!(
                "The host veth's {gw} is{}: the kernel answers for it only once DAD has passed.",
                flag_words(f)
            ),
            Some(_) => format!(
                "The host veth holds {gw} and should answer; look for ICMPv6 filtering (ip6tables, nft) on the node."
            ),
        }
    }

    /// Why the host veth would or would not answer the pod's ARP request for the gateway.
    fn proxy_arp_verdict(&self) -> String {
        let veth = self.veth();
        if self.host_link.is_none() {
            return format!("The host veth {veth} is missing.");
        }
        let gw = Family::V4.gateway();
        let proxy_arp = Family::V4.sysctl(Place::HostVeth, "proxy_arp");
        if sysctl::read(&proxy_arp.key(veth)).as_deref() != Some(proxy_arp.value) {
            return format!(
                "The host veth does not answer ARP for {gw}: {} is not {}.",
                proxy_arp.dotted(veth),
                proxy_arp.value
            );
        }
        match &self.from_pod {
            Some(Err(code)) => format!(
                "proxy_arp is on, but the node answers ARP only for addresses it would forward to, and its lookup for {gw} from {} on {veth} fails: {}.",
                self.t.ip,
                self.refused(*code)
            ),
            Some(Ok(l)) if l.oif == self.host_index() => format!(
                "proxy_arp is on, but the node routes {gw} back out {veth}; proxy ARP answers only for addresses routed out another interface."
            ),
            _ => "proxy_arp is on and the node routes the gateway elsewhere; look for ARP filtering (arptables, nft arp) on the node.".into(),
        }
    }
}
