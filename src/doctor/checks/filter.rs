//! The filter on the forward hook: what the iptables filter FORWARD chain of each backend,
//! and firewalld's nftables table, do with the pod's packets (to `--to`, or to any address
//! outside the pool) and with their replies. A DROP in any of them is final: an ACCEPT in
//! another table or backend cannot undo it.

use ipnetwork::IpNetwork;
use serde_json::json;
use std::net::IpAddr;

use super::{Dest, Walk};
use crate::dataplane::owned::HASH_CHARS;
use crate::dataplane::Family;
use crate::dataplane::{route_oif, RouteQuery};
use crate::doctor::filter::{self, Addr, End, Hit, Outcome, Packet};
use crate::doctor::nft;
use crate::doctor::report::{Status, Step};
use crate::firewall::forward::Forward;
use crate::firewall::inspect;
use crate::firewall::iptables::Listing;

/// One filter's say on both directions.
struct Judged {
    status: Status,
    saw: String,
    why: Option<String>,
    fix: Vec<String>,
}

fn hit_text(h: &Hit) -> String {
    let counted = if h.pkts > 0 {
        format!(" [{} pkts]", h.pkts)
    } else {
        String::new()
    };
    format!("{} rule {} `{}`{counted}", h.chain, h.position, h.rule)
}

fn counted(pkts: u64) -> String {
    if pkts > 0 {
        format!(" [{pkts} pkts]")
    } else {
        String::new()
    }
}

impl Walk<'_> {
    /// `--to` when it is of this walk's family; a dual-stack pod's other address answers for
    /// it, and this walk looks at its family's forward path in general.
    fn to_same_family(&self) -> Option<Dest> {
        self.to.filter(|d| d.ip.is_ipv6() == self.t.ip.is_ipv6())
    }

    /// The request and its reply, as the forward hook sees them.
    fn packets(&self, to: Option<Dest>, oif: Option<String>) -> (Packet, Packet, String) {
        let pool: IpNetwork = self.t.pool;
        let dst = match to {
            Some(d) => Addr::Ip(d.ip),
            None => Addr::Outside(pool),
        };
        let dst_s = match to {
            Some(d) => d.ip.to_string(),
            None => format!("any address outside {pool}"),
        };
        let proto = to.and_then(|d| d.port).map(|_| "tcp");
        let req = Packet {
            src: Addr::Ip(self.t.ip),
            dst,
            iif: Some(self.veth().to_string()),
            oif: oif.clone(),
            proto,
            dport: to.and_then(|d| d.port),
            new: true,
        };
        let rep = Packet {
            src: dst,
            dst: Addr::Ip(self.t.ip),
            iif: oif,
            oif: Some(self.veth().to_string()),
            proto,
            dport: None,
            new: false,
        };
        (req, rep, dst_s)
    }

    /// Where the node sends the packet: the route for `--to`, else the default route's device.
    /// `Err(())`: the destination is the node itself, so the forward hook is not on the way.
    fn out_interface(&self, to: Option<Dest>) -> Result<Option<String>, ()> {
        let name = |i: u32| self.node.links.get(&i).cloned();
        match (to, self.host_index()) {
            (Some(d), Some(index)) => {
                let q = RouteQuery {
                    dst: Some(d.ip),
                    src: Some(self.t.ip),
                    iif: Some(index),
                    tcp_dport: d.port,
                };
                match self.block(self.node.net.route_get(q)) {
                    Ok(Ok(l)) if l.kind == rtnetlink::packet_route::route::RouteType::Local => {
                        Err(())
                    }
                    Ok(Ok(l)) => Ok(l.oif.and_then(name)),
                    _ => Ok(None),
                }
            }
            (Some(_), None) => Ok(None),
            (None, _) => {
                let any: IpAddr = if self.fam.is_v6() {
                    std::net::Ipv6Addr::UNSPECIFIED.into()
                } else {
                    std::net::Ipv4Addr::UNSPECIFIED.into()
                };
                let routes = self
                    .block(self.node.net.routes_to_ip(any, 0))
                    .unwrap_or_default();
                Ok(routes.iter().find_map(route_oif).and_then(name))
            }
        }
    }

    /// Judges one filter's outcomes for the request and the reply. `label` names the filter
    /// (`iptables-nft FORWARD`); `fixes` gives the commands for a drop.
    fn judge(
        &self,
        label: &str,
        dst: &str,
        req: &Outcome,
        rep: &Outcome,
        fixes: &dyn Fn(&Outcome) -> Vec<String>,
        policy_drop: bool,
    ) -> Judged {
        let ip = self.t.ip;
        let flow = |o: &Outcome| {
            if std::ptr::eq(o, req) {
                format!("{ip} -> {dst}")
            } else {
                format!("the replies {dst} -> {ip}")
            }
        };
        let dropped_by = |o: &Outcome| match &o.end {
            End::Dropped { by } => hit_text(by),
            End::Policy { pkts, .. } => format!("policy DROP{}", counted(*pkts)),
            End::Accepted { .. } => String::new(),
        };
        let ours = |o: &Outcome| {
            o.ours
                .as_ref()
                .map(|h| format!(" (routed-cni's jump is {} rule {})", h.chain, h.position))
                .unwrap_or_default()
        };
        for o in [req, rep] {
            if o.blocked() {
                return Judged {
                    status: Status::Fail,
                    saw: format!("{label}: {} drops {}{}", dropped_by(o), flow(o), ours(o)),
                    why: Some(
                        "the pod's traffic never leaves the node: a drop in the forward filter is final, and an accept in another table or iptables backend cannot undo it"
                            .into(),
                    ),
                    fix: fixes(o),
                };
            }
        }
        for o in [req, rep] {
            if o.maybe_blocked() {
                let mut why: Vec<String> = o
                    .may_drop
                    .iter()
                    .map(|h| {
                        format!(
                            "{} ({})",
                            hit_text(h),
                            h.unsure.as_deref().unwrap_or("unsure")
                        )
                    })
                    .collect();
                if matches!(o.end, End::Dropped { .. } | End::Policy { drop: true, .. }) {
                    let unless: Vec<String> = o.may_accept.iter().map(hit_text).collect();
                    why.push(format!(
                        "{} unless {}",
                        dropped_by(o),
                        if unless.is_empty() {
                            "nothing".to_string()
                        } else {
                            unless.join(" or ")
                        }
                    ));
                }
                return Judged {
                    status: Status::Warn,
                    saw: format!("{label}: may drop {}: {}", flow(o), why.join("; ")),
                    why: Some(
                        "doctor cannot evaluate every match of these rules (sets, marks, protocols or ports not given with --to)"
                            .into(),
                    ),
                    fix: Vec::new(),
                };
            }
        }
        let saw = match &req.end {
            End::Accepted { by }
                if req.ours.is_some()
                    && (by.chain.starts_with("RCNI-") || by.rule.contains("routed-cni")) =>
            {
                let ahead = if policy_drop {
                    " ahead of the DROP policy"
                } else {
                    ""
                };
                format!(
                    "{label}: accepted by routed-cni's forward chain{ahead} ({})",
                    hit_text(by)
                )
            }
            End::Accepted { by } => format!("{label}: accepted by {}", hit_text(by)),
            End::Policy { .. } => format!("{label}: policy ACCEPT, no DROP/REJECT on the way"),
            End::Dropped { .. } => unreachable!("judged above"),
        };
        Judged {
            status: Status::Ok,
            saw,
            why: None,
            fix: Vec::new(),
        }
    }

    /// The iptables filter FORWARD chain of both backends.
    pub(super) fn forward_filter(&mut self) {
        const ID: &str = "forward-filter";
        const TITLE: &str = "FORWARD filter";
        let oif = match self.out_interface(self.to_same_family()) {
            Ok(o) => o,
            Err(()) => {
                self.steps.push(Step::ok(
                    ID,
                    TITLE,
                    "the destination is the node itself: the forward hook is not on the way",
                ));
                return;
            }
        };
        let (req, rep, dst) = self.packets(self.to_same_family(), oif.clone());
        let fam = if self.fam.is_v6() {
            Family::V6
        } else {
            Family::V4
        };
        let pool = self.t.pool;
        let mut judged = Vec::new();
        let mut details = Vec::new();
        for b in inspect::filter_tables(fam) {
            let listing = match &b.listing {
                Ok(Some(l)) => l,
                Ok(None) => {
                    details.push(json!({"program": b.program, "filterTable": false}));
                    continue;
                }
                Err(e) => {
                    judged.push(Judged {
                        status: Status::Warn,
                        saw: format!("{}: cannot read the filter table: {e}", b.program),
                        why: Some(
                            "doctor cannot tell whether this backend drops forwarded packets"
                                .into(),
                        ),
                        fix: Vec::new(),
                    });
                    continue;
                }
            };
            let set = filter::from_listing(listing);
            let (r1, r2) = (
                filter::evaluate(&set, "FORWARD", &req),
                filter::evaluate(&set, "FORWARD", &rep),
            );
            let policy_drop = set.policies.get("FORWARD").is_some_and(|p| p.0);
            let program = b.program;
            let fixes = |o: &Outcome| match &o.end {
                // Someone's rule drops the pool ahead of routed-cni's jump.
                End::Dropped { by } => vec![format!("{program} -D {} {}", by.chain, by.rule)],
                // The policy drops and routed-cni's accepts are missing: put them back as
                // ADD writes them (DEL of the pool's last pod removes them again).
                _ => forward_fix(program, pool, listing),
            };
            let label = format!("{program} FORWARD");
            judged.push(self.judge(&label, &dst, &r1, &r2, &fixes, policy_drop));
            details.push(json!({"program": program, "request": r1, "reply": r2}));
        }
        self.push_judged(
            ID,
            TITLE,
            judged,
            json!({"outInterface": oif, "backends": details}),
            "no iptables filter table: nothing filters forwarded packets",
        );
    }

    /// firewalld's own nftables table, which no iptables rule can override.
    pub(super) fn firewalld(&mut self) {
        const ID: &str = "firewalld";
        const TITLE: &str = "firewalld";
        let tables = match inspect::nft_tables() {
            Ok(t) => t,
            Err(e) => {
                self.steps.push(
                    Step::warn(ID, TITLE, format!("cannot list nftables tables: {e}"))
                        .why("doctor cannot tell whether firewalld filters forwarded packets"),
                );
                return;
            }
        };
        if !tables.iter().any(|(f, n)| f == "inet" && n == "firewalld") {
            self.steps.push(Step::ok(
                ID,
                TITLE,
                "not running with its nftables backend (no table inet firewalld)",
            ));
            return;
        }
        let text = match inspect::nft_table("inet", "firewalld") {
            Ok(t) => t,
            Err(e) => {
                self.steps
                    .push(Step::warn(ID, TITLE, format!("table inet firewalld: {e}")));
                return;
            }
        };
        let oif = match self.out_interface(self.to_same_family()) {
            Ok(o) => o,
            Err(()) => {
                self.steps.push(Step::ok(
                    ID,
                    TITLE,
                    "the destination is the node itself: the forward hook is not on the way",
                ));
                return;
            }
        };
        let (req, rep, dst) = self.packets(self.to_same_family(), oif);
        let set = nft::table(&text);
        let (mut r1, mut r2) = (
            filter::evaluate(&set, "filter_FORWARD", &req),
            filter::evaluate(&set, "filter_FORWARD", &rep),
        );
        // routed-cni writes nothing into firewalld's table: a rule there that mentions
        // "routed-cni" (a zone or policy an operator named so) is not its jump.
        (r1.ours, r2.ours) = (None, None);
        let veths = veth_wildcard(self.veth());
        let fixes = |_: &Outcome| firewalld_fix(&veths);
        let policy_drop = set.policies.get("filter_FORWARD").is_some_and(|p| p.0);
        let mut j = self.judge(
            "firewalld (table inet firewalld)",
            &dst,
            &r1,
            &r2,
            &fixes,
            policy_drop,
        );
        if j.status == Status::Fail {
            j.why = Some(format!(
                "firewalld rejects forwarded packets that no zone or policy allows, and its nftables table runs after iptables: no iptables rule can accept them for it; the host veths {veths} in the trusted zone let the pods' traffic and its replies through (connections opened from outside to a pod need a firewalld policy too: see README, \"Nodes with a firewall\")"
            ));
        }
        let details = json!({"request": r1, "reply": r2});
        self.push_judged(ID, TITLE, vec![j], details, "");
    }

    fn push_judged(
        &mut self,
        id: &'static str,
        title: &'static str,
        judged: Vec<Judged>,
        details: serde_json::Value,
        empty: &str,
    ) {
        let worst = judged
            .iter()
            .map(|j| j.status)
            .max_by_key(|s| match s {
                Status::Fail => 3,
                Status::Warn => 2,
                Status::Ok => 1,
                Status::Skip => 0,
            })
            .unwrap_or(Status::Ok);
        let saw = if judged.is_empty() {
            empty.to_string()
        } else {
            judged
                .iter()
                .map(|j| j.saw.clone())
                .collect::<Vec<_>>()
                .join("; ")
        };
        let mut step = Step::new(id, title, worst, saw);
        for j in judged.into_iter().filter(|j| j.status == worst) {
            if let (Some(w), None) = (j.why, &step.why) {
                step = step.why(w);
            }
            for f in j.fix {
                step = step.fix(f);
            }
        }
        self.steps.push(step.details(details));
    }
}

/// The commands that (re)install the pool's forward chain and its jump at the top of FORWARD
/// in one backend, as ADD writes them.
fn forward_fix(program: &str, pool: IpNetwork, listing: &Listing) -> Vec<String> {
    let fwd = Forward { subnet: pool };
    let chain = fwd.chain();
    let mut out = vec![if listing.chains.contains(&chain) {
        format!("{program} -F {chain}")
    } else {
        format!("{program} -N {chain}")
    }];
    for r in fwd.rules() {
        out.push(format!("{program} -A {chain} {}", r.spec));
    }
    let jump = fwd.jump();
    if !listing.rules_of("FORWARD").any(|r| r.same_as(&jump)) {
        out.push(format!("{program} -I FORWARD 1 {}", jump.spec));
    }
    out
}

/// firewalld's wildcard for every host veth with this one's prefix: `rcni+`. The prefix is
/// the name without its hash (a hand-made name is taken whole).
fn veth_wildcard(veth: &str) -> String {
    let prefix = veth
        .len()
        .checked_sub(HASH_CHARS)
        .filter(|&n| n > 0 && veth.is_char_boundary(n))
        .map_or(veth, |n| &veth[..n]);
    format!("{prefix}+")
}

/// The firewall-cmd commands that let the pods' traffic through firewalld: the host veths
/// in the trusted zone (target ACCEPT), at once and across restarts, without a `--reload`
/// (a reload flushes the iptables tables, routed-cni's chains with them).
///
/// By interface, not by the pool as a source: firewalld dispatches sources before
/// interfaces, so a source binding would also trust a packet that arrives on the uplink
/// with a pod's address, to the node's own ports as well (tried against firewalld 1.3.3).
fn firewalld_fix(veths: &str) -> Vec<String> {
    vec![
        format!("firewall-cmd --zone=trusted --add-interface={veths}"),
        format!("firewall-cmd --permanent --zone=trusted --add-interface={veths}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firewalld_wildcard_is_the_veth_prefix() {
        assert_eq!(veth_wildcard("rcni377dabda6bd"), "rcni+");
        assert_eq!(veth_wildcard("ab1c0123456789a"), "ab1c+");
        // Not one of ours by shape: the name itself, not an empty or cut prefix.
        assert_eq!(veth_wildcard("veth0"), "veth0+");
        assert_eq!(veth_wildcard("0123456789a"), "0123456789a+");
    }
}
