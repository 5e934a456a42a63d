//! Follows one packet through a forward-hook filter: the iptables filter FORWARD chain of one
//! backend, or an nftables base chain (firewalld's). Pure logic: rules in, verdict out.
//!
//! A rule's matches are judged against the packet three ways: it matches, it does not, or only
//! part of the pod's traffic matches (some protocols, ports or destinations: `Partial`), or
//! doctor cannot tell (`-m set`, `-m mark`, …: `Unknown`). A DROP that surely matches blocks
//! the pod; a partial or unknown one is a warning ("may drop"). An ACCEPT doctor cannot
//! evaluate makes a later DROP uncertain too; a partial ACCEPT does not (the rest of the
//! traffic goes on to the DROP). Jumps into user chains are followed up to `MAX_DEPTH`.

use ipnetwork::IpNetwork;
use serde::Serialize;
use std::collections::HashMap;
use std::net::IpAddr;

use crate::firewall::iptables::Listing;

/// Chains deeper than this are not followed (a loop, or a rule set doctor should not chase).
pub const MAX_DEPTH: usize = 8;

/// One end of the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addr {
    Ip(IpAddr),
    /// Any address outside the pool: `doctor` without `--to`.
    Outside(IpNetwork),
}

/// The packet followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub src: Addr,
    pub dst: Addr,
    pub iif: Option<String>,
    /// `None`: not known (the node has no route for it).
    pub oif: Option<String>,
    /// `tcp` when a port was given; `None`: any protocol.
    pub proto: Option<&'static str>,
    pub dport: Option<u16>,
    /// The first packet of a flow (conntrack NEW); otherwise a reply (ESTABLISHED).
    pub new: bool,
}

/// How a rule's matches fit the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fit {
    Yes,
    No,
    /// Only some of the pod's traffic matches (why).
    Partial(String),
    /// doctor cannot evaluate the match (which).
    Unknown(String),
}

impl Fit {
    /// Both conditions: the weakest wins (No, then Unknown, then Partial).
    fn and(self, other: Fit) -> Fit {
        match (self, other) {
            (Fit::No, _) | (_, Fit::No) => Fit::No,
            (Fit::Unknown(a), _) | (_, Fit::Unknown(a)) => Fit::Unknown(a),
            (Fit::Partial(a), _) | (_, Fit::Partial(a)) => Fit::Partial(a),
            _ => Fit::Yes,
        }
    }

    fn not(self, what: &str) -> Fit {
        match self {
            Fit::Yes => Fit::No,
            Fit::No => Fit::Yes,
            Fit::Partial(_) => Fit::Partial(format!("not {what}")),
            u => u,
        }
    }
}

/// One match of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    Src(Vec<IpNetwork>),
    Dst(Vec<IpNetwork>),
    /// Interface name; a trailing `+` (iptables) or `*` (nft) matches any suffix.
    Iif(String),
    Oif(String),
    Proto(String),
    Dport(Vec<(u16, u16)>),
    CtState(Vec<String>),
    /// Only IPv4 or only IPv6 packets (nft `meta nfproto`, or `ip saddr` in an inet table).
    V6(bool),
    /// Never true for a plain forwarded packet (nft `ct status dnat`, `-m addrtype …LOCAL`).
    Never,
    /// Matches part of the pod's traffic only (`--icmp-type 3`).
    Partial(String),
    Unknown(String),
    Not(Box<Cond>),
}

/// What a rule does when it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Accept,
    Drop,
    Reject,
    Return,
    Jump(String),
    Goto(String),
    /// LOG, MARK, counter only: the packet goes on.
    Continue,
    /// A terminating target doctor does not know (NFQUEUE…).
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FRule {
    pub chain: String,
    pub conds: Vec<Cond>,
    pub action: Action,
    /// The rule as the operator reads it (`-s 10.244.1.0/24 -j DROP`).
    pub text: String,
    pub pkts: u64,
}

/// A filter's chains, and the policy of the base chain.
#[derive(Debug, Clone, Default)]
pub struct Ruleset {
    pub chains: HashMap<String, Vec<FRule>>,
    /// Base chain -> (policy drops, packets counted by the policy).
    pub policies: HashMap<String, (bool, u64)>,
}

/// A rule the packet met, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hit {
    pub chain: String,
    /// 1-based position in its chain.
    pub position: usize,
    pub rule: String,
    pub pkts: u64,
    /// Why the verdict is not sure (partial or unknown match), when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsure: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "end")]
pub enum End {
    /// An ACCEPT that surely matches.
    Accepted {
        by: Hit,
    },
    Dropped {
        by: Hit,
    },
    /// The base chain's policy decided.
    Policy {
        drop: bool,
        pkts: u64,
    },
}

/// What the packet met in a filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub end: End,
    /// DROP/REJECT rules passed that match part of the traffic, or may match.
    pub may_drop: Vec<Hit>,
    /// ACCEPT rules passed that doctor could not evaluate: a later drop is then uncertain.
    pub may_accept: Vec<Hit>,
    /// routed-cni's jump, when the packet passed it (`RCNI-` target or `routed-cni` comment).
    pub ours: Option<Hit>,
}

impl Outcome {
    /// The drop that surely blocks the packet: a DROP/REJECT rule, or a DROP policy, with no
    /// unevaluable ACCEPT before it.
    pub fn blocked(&self) -> bool {
        match &self.end {
            End::Dropped { by } => by.unsure.is_none() && self.may_accept.is_empty(),
            End::Policy { drop, .. } => *drop && self.may_accept.is_empty(),
            End::Accepted { .. } => false,
        }
    }

    /// Blocked only perhaps: a drop with an unsure match, or after an unsure accept.
    pub fn maybe_blocked(&self) -> bool {
        !self.blocked()
            && (!self.may_drop.is_empty()
                || matches!(
                    &self.end,
                    End::Dropped { .. } | End::Policy { drop: true, .. }
                ))
    }
}

/// Whether an interface name matches a pattern with a `+`/`*` wildcard suffix.
fn iface_fits(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix(['+', '*']) {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

fn addr_fits(nets: &[IpNetwork], a: Addr) -> Fit {
    match a {
        Addr::Ip(ip) => {
            if nets.iter().any(|n| n.contains(ip)) {
                Fit::Yes
            } else {
                Fit::No
            }
        }
        Addr::Outside(pool) => {
            let same = nets.iter().filter(|n| n.is_ipv4() == pool.is_ipv4());
            let mut partial = None;
            for n in same {
                if n.prefix() == 0 {
                    return Fit::Yes;
                }
                let inside_pool = pool.contains(n.network()) && n.prefix() >= pool.prefix();
                if !inside_pool {
                    partial = Some(n);
                }
            }
            match partial {
                Some(n) => Fit::Partial(format!("only destinations in {n}")),
                None => Fit::No,
            }
        }
    }
}

fn is_v6(a: Addr) -> bool {
    match a {
        Addr::Ip(ip) => ip.is_ipv6(),
        Addr::Outside(n) => n.is_ipv6(),
    }
}

impl Cond {
    pub fn fit(&self, p: &Packet) -> Fit {
        match self {
            Cond::Src(nets) => addr_fits(nets, p.src),
            Cond::Dst(nets) => addr_fits(nets, p.dst),
            Cond::Iif(pat) | Cond::Oif(pat) => {
                let name = if matches!(self, Cond::Iif(_)) {
                    &p.iif
                } else {
                    &p.oif
                };
                match name {
                    Some(n) if iface_fits(pat, n) => Fit::Yes,
                    Some(_) => Fit::No,
                    None => Fit::Unknown(format!("the interface is not known to match {pat}")),
                }
            }
            Cond::Proto(pr) => match (pr.as_str(), p.proto) {
                ("all" | "0", _) => Fit::Yes,
                (pr, Some(q)) if pr == q => Fit::Yes,
                (_, Some(_)) => Fit::No,
                (pr, None) => Fit::Partial(format!("only {pr}")),
            },
            Cond::Dport(ranges) => match p.dport {
                Some(d) if ranges.iter().any(|(a, b)| (*a..=*b).contains(&d)) => Fit::Yes,
                Some(_) => Fit::No,
                None => Fit::Partial("only some ports".into()),
            },
            Cond::CtState(states) => {
                let want = if p.new { "NEW" } else { "ESTABLISHED" };
                if states.iter().any(|s| s.eq_ignore_ascii_case(want)) {
                    Fit::Yes
                } else {
                    Fit::No
                }
            }
            Cond::V6(v6) => {
                if is_v6(p.src) == *v6 {
                    Fit::Yes
                } else {
                    Fit::No
                }
            }
            Cond::Never => Fit::No,
            Cond::Partial(what) => Fit::Partial(what.clone()),
            Cond::Unknown(what) => Fit::Unknown(what.clone()),
            Cond::Not(c) => c.fit(p).not(&format!("{c:?}")),
        }
    }
}

/// Is this rule routed-cni's jump (or in routed-cni's chain)?
fn is_ours(r: &FRule) -> bool {
    let target_ours = match &r.action {
        Action::Jump(c) | Action::Goto(c) => c.starts_with("RCNI-"),
        _ => false,
    };
    target_ours || r.text.contains("routed-cni")
}

enum Flow {
    /// The chain ended (fell through or RETURN): the caller goes on.
    Next,
    Accept(Hit),
    Drop(Hit),
}

struct Walker<'a> {
    set: &'a Ruleset,
    p: &'a Packet,
    out_may_drop: Vec<Hit>,
    out_may_accept: Vec<Hit>,
    ours: Option<Hit>,
}

impl Walker<'_> {
    /// Walks `chain`. `unsure`: the way here matched only partly or unknowably; a verdict
    /// inside is then only a "may".
    fn walk(&mut self, chain: &str, depth: usize, unsure: Option<&Fit>) -> Flow {
        let Some(rules) = self.set.chains.get(chain) else {
            return Flow::Next;
        };
        for (i, r) in rules.iter().enumerate() {
            let fit = r
                .conds
                .iter()
                .fold(Fit::Yes, |acc, c| acc.and(c.fit(self.p)));
            let fit = match (fit, unsure) {
                (Fit::No, _) => continue,
                (f, None) => f,
                (f, Some(u)) => f.and(u.clone()),
            };
            let hit = |f: &Fit| Hit {
                chain: chain.to_string(),
                position: i + 1,
                rule: r.text.clone(),
                pkts: r.pkts,
                unsure: match f {
                    Fit::Partial(w) | Fit::Unknown(w) => Some(w.clone()),
                    _ => None,
                },
            };
            if self.ours.is_none() && is_ours(r) {
                self.ours = Some(hit(&fit));
            }
            match (&r.action, &fit) {
                (Action::Continue, _) => {}
                (Action::Accept, Fit::Yes) => return Flow::Accept(hit(&fit)),
                (Action::Accept, Fit::Unknown(_)) => self.out_may_accept.push(hit(&fit)),
                (Action::Accept, _) => {}
                (Action::Drop | Action::Reject | Action::Other(_), Fit::Yes) => {
                    return Flow::Drop(hit(&fit))
                }
                (Action::Drop | Action::Reject | Action::Other(_), _) => {
                    self.out_may_drop.push(hit(&fit))
                }
                (Action::Return, Fit::Yes) => return Flow::Next,
                (Action::Return, _) => {}
                (Action::Jump(c) | Action::Goto(c), _) => {
                    if depth >= MAX_DEPTH {
                        self.out_may_drop.push(Hit {
                            unsure: Some(format!("chains nested deeper than {MAX_DEPTH}")),
                            ..hit(&fit)
                        });
                        continue;
                    }
                    let inner_unsure = match &fit {
                        Fit::Yes => None,
                        f => Some(f),
                    };
                    match self.walk(c, depth + 1, inner_unsure) {
                        Flow::Next if matches!(r.action, Action::Goto(_)) && fit == Fit::Yes => {
                            return Flow::Next
                        }
                        Flow::Next => {}
                        done => return done,
                    }
                }
            }
        }
        Flow::Next
    }
}

/// Follows `p` from base chain `base` of `set`.
pub fn evaluate(set: &Ruleset, base: &str, p: &Packet) -> Outcome {
    let mut w = Walker {
        set,
        p,
        out_may_drop: Vec::new(),
        out_may_accept: Vec::new(),
        ours: None,
    };
    let end = match w.walk(base, 0, None) {
        Flow::Accept(by) => End::Accepted { by },
        Flow::Drop(by) => End::Dropped { by },
        Flow::Next => {
            let (drop, pkts) = set.policies.get(base).copied().unwrap_or((false, 0));
            End::Policy { drop, pkts }
        }
    };
    Outcome {
        end,
        may_drop: w.out_may_drop,
        may_accept: w.out_may_accept,
        ours: w.ours,
    }
}

// ------------------------------------------------------------------ iptables -S

fn nets(v: &str) -> Option<Vec<IpNetwork>> {
    v.split(',').map(|a| a.parse().ok()).collect()
}

fn ports(v: &str) -> Option<Vec<(u16, u16)>> {
    v.split(',')
        .map(|p| {
            let (a, b) = p.split_once(':').unwrap_or((p, p));
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

/// Reads one iptables rule's arguments (`-s X ! -o Y -m conntrack --ctstate NEW -j DROP`).
pub fn from_iptables(chain: &str, args: &[String], pkts: u64, user_chains: &[String]) -> FRule {
    let mut conds = Vec::new();
    let mut action = Action::Continue;
    let mut negate = false;
    let mut i = 0;
    // The module a `--option` belongs to: `-m comment --comment` is no match at all.
    let mut module = "";
    while i < args.len() {
        let a = args[i].as_str();
        let val = args.get(i + 1).map(String::as_str).unwrap_or("");
        let mut took = 2;
        let cond = match a {
            "!" => {
                negate = true;
                i += 1;
                continue;
            }
            "-s" => nets(val).map(Cond::Src),
            "-d" => nets(val).map(Cond::Dst),
            "-i" => Some(Cond::Iif(val.to_string())),
            "-o" => Some(Cond::Oif(val.to_string())),
            "-p" => Some(Cond::Proto(val.to_lowercase())),
            "-m" => {
                module = match val {
                    "comment" | "tcp" | "udp" | "conntrack" | "state" | "multiport" | "icmp"
                    | "icmp6" => val,
                    _ => "",
                };
                if module.is_empty() {
                    Some(Cond::Unknown(format!("-m {val}")))
                } else {
                    i += 2;
                    continue;
                }
            }
            "--comment" if module == "comment" => {
                i += 2;
                continue;
            }
            "--ctstate" | "--state" => Some(Cond::CtState(
                val.split(',').map(str::to_uppercase).collect(),
            )),
            "--dport" | "--dports" | "--destination-port" => ports(val).map(Cond::Dport),
            "--icmp-type" | "--icmpv6-type" => Some(Cond::Partial(format!("{a} {val}"))),
            "-j" | "-g" => {
                action = match val {
                    "ACCEPT" => Action::Accept,
                    "DROP" => Action::Drop,
                    "REJECT" => Action::Reject,
                    "RETURN" => Action::Return,
                    c if user_chains.iter().any(|u| u == c) => {
                        if a == "-g" {
                            Action::Goto(c.to_string())
                        } else {
                            Action::Jump(c.to_string())
                        }
                    }
                    "NFQUEUE" | "QUEUE" => Action::Other(val.to_string()),
                    // LOG, MARK, CONNMARK, NFLOG, TCPMSS, CT, …: the packet goes on.
                    _ => Action::Continue,
                };
                // The target's own options follow.
                break;
            }
            other if other.starts_with('-') => {
                // An option with a value we do not evaluate (`--match-set x src`,
                // `--mark 0x1`, `--icmp-type 8`, …); its values run up to the next option.
                took = 1 + args[i + 1..]
                    .iter()
                    .take_while(|v| !v.starts_with('-') && *v != "!")
                    .count();
                let text = args[i..i + took].join(" ");
                Some(Cond::Unknown(text))
            }
            _ => {
                took = 1;
                None
            }
        };
        if let Some(c) = cond {
            conds.push(if negate { Cond::Not(Box::new(c)) } else { c });
        }
        negate = false;
        i += took;
    }
    FRule {
        chain: chain.to_string(),
        conds,
        action,
        text: crate::firewall::Rule::new(chain, args.to_vec()).spec,
        pkts,
    }
}

/// An iptables filter table, as `-v -S` lists it.
pub fn from_listing(l: &Listing) -> Ruleset {
    let mut set = Ruleset::default();
    for r in &l.rules {
        set.chains
            .entry(r.chain.clone())
            .or_default()
            .push(from_iptables(&r.chain, &r.args, r.pkts, &l.chains));
    }
    for (chain, policy) in &l.policies {
        set.policies
            .insert(chain.clone(), (policy == "DROP", l.policy_pkts(chain)));
    }
    set
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
