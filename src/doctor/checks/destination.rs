//! `--to IP[:PORT]`: the way one packet from the pod to a destination takes, and its replies.

use rtnetlink::packet_route::route::RouteType;
use serde_json::json;
use std::net::IpAddr;

use super::{describe, lookup_json, Dest, Walk, EHOSTUNREACH, EINVAL, EXDEV};
use crate::dataplane::spec::Place;
use crate::dataplane::{sysctl, Family, RouteQuery};
use crate::doctor::iptables::{self, PoolRules, Verdict};
use crate::doctor::report::Step;

impl Walk<'_> {
    pub(super) fn destination(&mut self, d: Dest, rules: &Result<PoolRules, String>) {
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
                Family::of(dst).name(),
                Family::of(ip).name()
            );
            for (id, title) in [
                (POD_ID, POD_TITLE),
                ("node-route-to", "node route to"),
                ("path-to", "path to"),
                ("path-mtu", "path MTU"),
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
        let mut node_lookup = None;
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
                node_lookup = res.as_ref().ok().and_then(|r| r.as_ref().ok()).cloned();
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
                        let fwd6 = Family::V6.forwarding();
                        let unforwarded6 = self.fam.is_v6()
                            && sysctl::read(&fwd6.key("")).as_deref() != Some(fwd6.value);
                        match l.oif.filter(|_| !local) {
                            Some(_) if unforwarded6 => Step::fail(
                                NODE_ID,
                                NODE_TITLE,
                                format!("{saw}, but {} is not {}", fwd6.dotted(""), fwd6.value),
                            )
                            .why("the node drops the pod's packets instead of forwarding them")
                            .fix(fwd6.fix("")),
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
                            _ if self.fam.is_v6() => s.why(format!("the node has no route to {dst}")),
                            EHOSTUNREACH => s
                                .why("the node drops the pod's packets instead of forwarding them")
                                .fix(Family::V4.forwarding().fix("")),
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
        // Which way the node sends it: direct, or VXLAN and what that relies on.
        self.path_to(d, node_lookup.as_ref());

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
            Ok(Err(EHOSTUNREACH)) if !self.fam.is_v6() => {
                let s = self.fam.sysctl(Place::Uplink, "forwarding");
                Step::fail(
                    NODE_ID,
                    NODE_TITLE,
                    format!(
                        "{saw}; but replies arriving on {out_name} are not forwarded: {}={}",
                        s.dotted(&out_name),
                        sysctl::read(&s.key(&out_name)).unwrap_or_else(|| "?".into())
                    ),
                )
                .why(format!(
                    "the request leaves, the answer is dropped on {out_name}: what decides is the forwarding flag of the interface a packet comes in on"
                ))
                .fix(s.fix(&out_name))
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
}
