//! Whether the node forwards and masquerades the pod's traffic: the family's forwarding
//! switch and what it needs of the uplinks, the reverse-path filter (IPv4), and the pool's
//! masquerade rules.

use rtnetlink::packet_route::route::RouteType;
use serde_json::json;

use super::{describe, lookup_json, Walk, EINVAL, EXDEV};
use crate::dataplane::spec::Place;
use crate::dataplane::{sysctl, Family};
use crate::doctor::iptables::{self, PoolRules};
use crate::doctor::report::Step;

impl Walk<'_> {
    /// The node-wide switch of the spec that lets the node forward this family
    /// (net.ipv4.ip_forward, net.ipv6.conf.all.forwarding), and what forwarding needs of the
    /// node's uplinks (the spec's Place::Uplink and RaUplink, judged as ADD and CHECK do).
    pub(super) fn forwarding(&mut self) {
        let (id, title) = match self.fam {
            Family::V4 => ("ip-forward", "ip_forward"),
            Family::V6 => ("ipv6-forwarding", "ipv6 forwarding"),
        };
        let s = self.fam.forwarding();
        let got = sysctl::read(&s.key("")).unwrap_or_else(|| "missing".into());
        let mut saw = format!("{}={got}", s.dotted(""));
        let uplinks = match self.block(self.node.net.uplinks(self.fam)) {
            Ok(u) => u,
            Err(e) => {
                saw.push_str(&format!("; cannot read the uplinks: {}", e.msg));
                Vec::new()
            }
        };
        for up in &uplinks {
            let mut places = vec![Place::Uplink];
            if up.ra_default {
                places.push(Place::RaUplink);
            }
            let mut flags: Vec<String> = places
                .into_iter()
                .flat_map(|p| self.fam.sysctls_at(p))
                .map(|u| {
                    let got = sysctl::read(&u.key(&up.name));
                    format!("{}={}", u.name, got.as_deref().unwrap_or("missing"))
                })
                .collect();
            if up.ra_default {
                flags.push("default route from router advertisements".into());
            }
            saw.push_str(&format!("; uplink {}", up.name));
            if !flags.is_empty() {
                saw.push_str(&format!(": {}", flags.join(", ")));
            }
        }
        let faults = self.fam.uplink_faults(&uplinks, sysctl::read);
        let mut step = if got != s.value {
            Step::fail(id, title, saw).why(s.if_wrong).fix(s.fix(""))
        } else if faults.is_empty() {
            Step::ok(id, title, saw)
        } else {
            let why: Vec<String> = faults
                .iter()
                .map(|f| {
                    format!(
                        "uplink {}: {}={}: {}",
                        f.uplink, f.sysctl.name, f.got, f.sysctl.if_wrong
                    )
                })
                .collect();
            Step::fail(id, title, saw).why(why.join("; "))
        };
        for f in &faults {
            step = step.fix(f.fix());
        }
        self.steps.push(step);
    }

    /// IPv4's reverse-path filter. IPv6 has none in the forwarding path, so its walk has no
    /// such step.
    pub(super) fn rp_filter(&mut self) {
        const ID: &str = "rp-filter";
        const TITLE: &str = "rp_filter";
        if self.fam.is_v6() {
            return;
        }
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

    pub(super) fn nat(&mut self, rules: &Result<PoolRules, String>) {
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
}
