//! A `Ruleset` as one nft JSON batch (`nft -j -f -` runs a batch as one transaction). The
//! layout and its names are a contract with CNI ADD (`pending`), doctor and people reading
//! `nft list table inet routed-cni`; mod.rs documents it.
//!
//! Objects are the `nftables` crate's typed model, except the two verdict maps: the crate's
//! `SetType` has no `verdict` (nftables-rs issue #237), so those few commands are written as
//! raw JSON.

use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Range, SetItem, Verdict, CT,
};
use nftables::schema::{
    Chain, Element, FlushObject, NfCmd, NfListObject, NfObject, Rule as NfRule, Set, SetFlag,
    SetType, SetTypeValue, Table,
};
use nftables::stmt::{Counter, JumpTarget, Match, Operator, Statement, VerdictMap};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde::Serialize;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{PolicyError, EGRESS, FORWARD, INGRESS, PENDING, POD_IFS, SPOOF4, SPOOF6, TABLE};
use crate::policy::ruleset::{Peers, PortSpec, Ports, Protocol, Rule, Ruleset};

/// Priority of our forward base chain: before iptables' filter FORWARD (0), so a packet we drop
/// never reaches the RCNI-FWD ACCEPT there, and one we let through still meets it.
pub const PRIORITY: i32 = -10;
/// nft refuses comments longer than this (bytes).
const COMMENT_MAX: usize = 128;
/// Names of what the table always holds; a Ruleset may not reuse them.
pub const FIXED_SETS: [&str; 4] = [PENDING, POD_IFS, SPOOF4, SPOOF6];
const FIXED_MAPS: [&str; 2] = [INGRESS, EGRESS];

/// One command of the batch: the crate's model, or raw JSON where the crate has no type.
#[derive(Serialize)]
#[serde(untagged)]
enum Cmd<'a> {
    Typed(NfObject<'a>),
    Raw(Value),
}

/// What is installed now, by name (from a terse listing): what a new batch must delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    pub chains: BTreeSet<String>,
    pub sets: BTreeSet<String>,
    pub maps: BTreeSet<String>,
    /// The content hash of each set, map and chain as our last batch wrote it (incremental.rs);
    /// empty when the table was listed rather than written by us.
    pub contents: BTreeMap<String, u64>,
}

/// A rendered batch and its size, for `Applied`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    pub json: String,
    pub chains: usize,
    pub sets: usize,
    pub rules: usize,
    pub elements: usize,
    pub removed_chains: Vec<String>,
    pub removed_sets: Vec<String>,
    /// What the table holds once the batch is applied.
    pub names: Names,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fam {
    V4,
    V6,
}

impl Fam {
    fn proto(self) -> &'static str {
        match self {
            Fam::V4 => "ip",
            Fam::V6 => "ip6",
        }
    }
    fn suffix(self) -> &'static str {
        match self {
            Fam::V4 => "-4",
            Fam::V6 => "-6",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Ingress,
    Egress,
}

fn cmd(c: NfCmd<'static>) -> Cmd<'static> {
    Cmd::Typed(NfObject::CmdObject(c))
}

fn s(v: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(v.into()))
}

fn set_ref(name: &str) -> Expression<'static> {
    s(format!("@{name}"))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn rule(chain: &str, expr: Vec<Statement<'static>>, comment: Option<String>) -> Cmd<'static> {
    cmd(NfCmd::Add(NfListObject::Rule(NfRule {
        family: NfFamily::INet,
        table: TABLE.into(),
        chain: Cow::Owned(chain.to_string()),
        expr: expr.into(),
        comment: comment.map(Cow::Owned),
        ..NfRule::default()
    })))
}

fn set(name: &str, set_type: SetTypeValue<'static>, interval: bool) -> Set<'static> {
    Set {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: Cow::Owned(name.to_string()),
        set_type,
        flags: interval.then(|| [SetFlag::Interval].into_iter().collect()),
        ..Set::default()
    }
}

fn elements(name: &str, elem: Vec<Expression<'static>>) -> Option<Cmd<'static>> {
    (!elem.is_empty()).then(|| {
        cmd(NfCmd::Add(NfListObject::Element(Element {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: Cow::Owned(name.to_string()),
            elem: elem.into(),
        })))
    })
}

fn chain(name: &str) -> Chain<'static> {
    Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: Cow::Owned(name.to_string()),
        ..Chain::default()
    }
}

fn verdict_map(verb: &str, name: &str) -> Cmd<'static> {
    let mut map = json!({"family": "inet", "table": TABLE, "name": name});
    if verb == "add" {
        map["type"] = json!("ifname");
        map["map"] = json!("verdict");
    }
    Cmd::Raw(json!({ verb: { "map": map } }))
}

/// Sorted, merged inclusive ranges: nft rejects overlapping intervals in one set, and the
/// compiler's merge is not something this side should have to trust.
fn merge(mut ranges: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    ranges
        .iter_mut()
        .for_each(|r| *r = (r.0.min(r.1), r.0.max(r.1)));
    ranges.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

fn interval_elements(
    ranges: Vec<(u128, u128)>,
    to_ip: fn(u128) -> IpAddr,
) -> Vec<Expression<'static>> {
    merge(ranges)
        .into_iter()
        .map(|(lo, hi)| {
            if lo == hi {
                s(to_ip(lo).to_string())
            } else {
                Expression::Range(Box::new(Range {
                    range: [s(to_ip(lo).to_string()), s(to_ip(hi).to_string())],
                }))
            }
        })
        .collect()
}

fn v4(n: u128) -> IpAddr {
    IpAddr::from(std::net::Ipv4Addr::from(n as u32))
}

fn v6(n: u128) -> IpAddr {
    IpAddr::from(std::net::Ipv6Addr::from(n))
}

/// `meta l4proto N [th dport {…}]` per protocol. Numbers, not names: nft resolves protocol
/// names through /etc/protocols, which a minimal image may lack, and SCTP must stay 132.
fn port_matches(specs: &[PortSpec]) -> Vec<Vec<Statement<'static>>> {
    let mut by_proto: BTreeMap<Protocol, Option<Vec<(u16, u16)>>> = BTreeMap::new();
    for spec in specs {
        let entry = by_proto
            .entry(spec.protocol)
            .or_insert_with(|| Some(Vec::new()));
        match (spec.range, entry.as_mut()) {
            (None, _) => *entry = None,
            (Some(r), Some(list)) => list.push(r),
            (Some(_), None) => {}
        }
    }
    by_proto
        .into_iter()
        .map(|(proto, ports)| {
            let mut stmts = vec![matches(
                meta(MetaKey::L4proto),
                Operator::EQ,
                Expression::Number(proto.number().into()),
            )];
            if let Some(ports) = ports {
                let items = merge(ports.iter().map(|&(a, b)| (a.into(), b.into())).collect())
                    .into_iter()
                    .map(|(lo, hi)| {
                        SetItem::Element(if lo == hi {
                            Expression::Number(lo as u32)
                        } else {
                            Expression::Range(Box::new(Range {
                                range: [
                                    Expression::Number(lo as u32),
                                    Expression::Number(hi as u32),
                                ],
                            }))
                        })
                    })
                    .collect();
                stmts.push(matches(
                    payload("th", "dport"),
                    Operator::EQ,
                    Expression::Named(NamedExpression::Set(items)),
                ));
            }
            stmts
        })
        .collect()
}

/// The nft rules of one policy rule: one per (peer family × protocol or named-port family).
/// A rule whose peers or named ports have no address of a family matches nothing there.
fn render_rule(rs: &Ruleset, dir: Dir, r: &Rule) -> Vec<Vec<Statement<'static>>> {
    let field = match dir {
        Dir::Ingress => "saddr",
        Dir::Egress => "daddr",
    };
    let peer_fams: Vec<Option<Fam>> = match &r.peers {
        Peers::All => vec![None],
        Peers::Set(name) => {
            let a = &rs.address_sets[name];
            [(Fam::V4, !a.v4.is_empty()), (Fam::V6, !a.v6.is_empty())]
                .into_iter()
                .filter_map(|(f, has)| has.then_some(Some(f)))
                .collect()
        }
    };
    let mut out = Vec::new();
    for peer in peer_fams {
        let head: Vec<Statement<'static>> = match (peer, &r.peers) {
            (Some(f), Peers::Set(name)) => vec![matches(
                payload(f.proto(), field),
                Operator::EQ,
                set_ref(&format!("{name}{}", f.suffix())),
            )],
            _ => vec![],
        };
        let tails: Vec<Vec<Statement<'static>>> = match &r.ports {
            Ports::All => vec![vec![]],
            Ports::Listed(specs) => port_matches(specs),
            Ports::Named(name) => {
                let p = &rs.port_sets[name];
                [(Fam::V4, !p.v4.is_empty()), (Fam::V6, !p.v6.is_empty())]
                    .into_iter()
                    .filter(|&(f, has)| has && peer.is_none_or(|pf| pf == f))
                    .map(|(f, _)| {
                        let key = NamedExpression::Concat(vec![
                            payload(f.proto(), "daddr"),
                            meta(MetaKey::L4proto),
                            payload("th", "dport"),
                        ]);
                        vec![matches(
                            Expression::Named(key),
                            Operator::EQ,
                            set_ref(&format!("{name}{}", f.suffix())),
                        )]
                    })
                    .collect()
            }
        };
        for tail in tails {
            let mut stmts = head.clone();
            stmts.extend(tail);
            stmts.push(Statement::Return(None));
            out.push(stmts);
        }
    }
    out
}

fn comment(text: String) -> String {
    if text.len() <= COMMENT_MAX {
        return text;
    }
    let mut end = COMMENT_MAX - 3;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// The base chain's rules, in order (mod.rs says why this order).
fn forward_rules() -> Vec<(Vec<Statement<'static>>, &'static str)> {
    let spoof = |f: Fam, set: &str| {
        vec![
            matches(meta(MetaKey::Iifname), Operator::EQ, set_ref(POD_IFS)),
            matches(
                Expression::Named(NamedExpression::Concat(vec![
                    meta(MetaKey::Iifname),
                    payload(f.proto(), "saddr"),
                ])),
                Operator::NEQ,
                set_ref(set),
            ),
            Statement::Drop(None),
        ]
    };
    let ct = Expression::Named(NamedExpression::CT(CT {
        key: "state".into(),
        family: None,
        dir: None,
    }));
    let vmap = |key: MetaKey, map: &str| {
        vec![Statement::VerdictMap(VerdictMap {
            key: meta(key),
            data: set_ref(map),
        })]
    };
    vec![
        (
            spoof(Fam::V4, SPOOF4),
            "a pod's source must be its own address",
        ),
        (
            spoof(Fam::V6, SPOOF6),
            "a pod's source must be its own address",
        ),
        (
            vec![
                matches(
                    ct,
                    Operator::IN,
                    Expression::List(vec![s("established"), s("related")]),
                ),
                Statement::Accept(None),
            ],
            "replies of allowed connections",
        ),
        (
            vec![
                matches(meta(MetaKey::Iifname), Operator::EQ, set_ref(PENDING)),
                Statement::Drop(None),
            ],
            "pod not yet programmed",
        ),
        (
            vec![
                matches(meta(MetaKey::Oifname), Operator::EQ, set_ref(PENDING)),
                Statement::Drop(None),
            ],
            "pod not yet programmed",
        ),
        (vmap(MetaKey::Iifname, EGRESS), "egress-isolated pods"),
        (vmap(MetaKey::Oifname, INGRESS), "ingress-isolated pods"),
    ]
}

/// The whole batch that makes the table exactly `rs`, given what is installed (`names`).
/// The name of a chain's lookup set of one family (lookup.rs).
fn lookup_set(chain: &str, fam: Fam) -> String {
    format!("{chain}-l{}", if fam == Fam::V4 { 4 } else { 6 })
}

/// A lookup element: `addr-range . proto . port-range`, single values where a range has one.
fn lookup_element(e: &super::lookup::Element, to_ip: fn(u128) -> IpAddr) -> Expression<'static> {
    let (lo, hi, proto, a, b) = *e;
    let addr = if lo == hi {
        s(to_ip(lo).to_string())
    } else {
        Expression::Range(Box::new(Range {
            range: [s(to_ip(lo).to_string()), s(to_ip(hi).to_string())],
        }))
    };
    let port = if a == b {
        Expression::Number(a.into())
    } else {
        Expression::Range(Box::new(Range {
            range: [Expression::Number(a.into()), Expression::Number(b.into())],
        }))
    };
    Expression::Named(NamedExpression::Concat(vec![
        addr,
        Expression::Number(proto.number().into()),
        port,
    ]))
}

pub fn render(rs: &Ruleset, names: &Names) -> Result<Rendered, PolicyError> {
    let mut derived = super::validate::validate(rs)?;
    // Chains with many peer-and-port rules get one lookup set per family instead (lookup.rs).
    let mut lookups: BTreeMap<&str, Vec<(Fam, Vec<super::lookup::Element>)>> = BTreeMap::new();
    for (name, ch) in &rs.chains {
        let rules: Vec<&Rule> = ch
            .rules
            .iter()
            .filter(|r| super::lookup::combinable(r))
            .collect();
        if rules.len() < super::lookup::MIN_RULES {
            continue;
        }
        let per_fam = [Fam::V4, Fam::V6]
            .into_iter()
            .map(|f| (f, super::lookup::elements(rs, &rules, f == Fam::V4)))
            .filter(|(_, e)| !e.is_empty())
            .collect::<Vec<_>>();
        for (f, _) in &per_fam {
            let set_name = lookup_set(name, *f);
            super::validate::check_name(&set_name)?;
            derived.insert(set_name);
        }
        lookups.insert(name.as_str(), per_fam);
    }
    let mut out = Rendered::default();
    let mut b: Vec<Cmd<'static>> = Vec::new();
    let table = Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    };
    b.push(cmd(NfCmd::Add(NfListObject::Table(table))));

    // Declarations. `pending` is added (a no-op when it exists) and never flushed: CNI ADD
    // writes it concurrently.
    let ifname = || SetTypeValue::Single(SetType::Ifname);
    let concat = |t: &[SetType]| SetTypeValue::Concatenated(t.to_vec().into());
    let mut sets = vec![
        set(POD_IFS, ifname(), false),
        set(SPOOF4, concat(&[SetType::Ifname, SetType::Ipv4Addr]), false),
        set(SPOOF6, concat(&[SetType::Ifname, SetType::Ipv6Addr]), false),
    ];
    for name in rs.address_sets.keys() {
        sets.push(set(
            &format!("{name}-4"),
            SetTypeValue::Single(SetType::Ipv4Addr),
            true,
        ));
        sets.push(set(
            &format!("{name}-6"),
            SetTypeValue::Single(SetType::Ipv6Addr),
            true,
        ));
    }
    for name in rs.port_sets.keys() {
        for (suffix, addr) in [("-4", SetType::Ipv4Addr), ("-6", SetType::Ipv6Addr)] {
            let t = concat(&[addr, SetType::InetProto, SetType::InetService]);
            sets.push(set(&format!("{name}{suffix}"), t, false));
        }
    }
    for (chain, per_fam) in &lookups {
        for (f, _) in per_fam {
            let addr = match f {
                Fam::V4 => SetType::Ipv4Addr,
                Fam::V6 => SetType::Ipv6Addr,
            };
            let t = concat(&[addr, SetType::InetProto, SetType::InetService]);
            sets.push(set(&lookup_set(chain, *f), t, true));
        }
    }
    b.push(cmd(NfCmd::Add(NfListObject::Set(Box::new(set(
        PENDING,
        ifname(),
        false,
    ))))));
    for st in &sets {
        b.push(cmd(NfCmd::Add(NfListObject::Set(Box::new(st.clone())))));
        b.push(cmd(NfCmd::Flush(FlushObject::Set(Box::new(st.clone())))));
    }
    for map in FIXED_MAPS {
        b.push(verdict_map("add", map));
        b.push(verdict_map("flush", map));
    }
    out.sets = sets.len() + 1 + FIXED_MAPS.len();

    // Chains: every one we keep, and every stale one, emptied first.
    let stale_chains: Vec<String> = names
        .chains
        .iter()
        .filter(|c| *c != FORWARD && !rs.chains.contains_key(*c))
        .cloned()
        .collect();
    for name in rs.chains.keys() {
        b.push(cmd(NfCmd::Add(NfListObject::Chain(chain(name)))));
    }
    let base = Chain {
        _type: Some(NfChainType::Filter),
        hook: Some(NfHook::Forward),
        prio: Some(PRIORITY),
        policy: Some(NfChainPolicy::Accept),
        ..chain(FORWARD)
    };
    b.push(cmd(NfCmd::Add(NfListObject::Chain(base))));
    for name in rs
        .chains
        .keys()
        .chain(&stale_chains)
        .chain([&FORWARD.to_string()])
    {
        b.push(cmd(NfCmd::Flush(FlushObject::Chain(chain(name)))));
    }
    out.chains = rs.chains.len() + 1;

    // Set contents.
    let mut add = |b: &mut Vec<Cmd<'static>>, name: &str, elem: Vec<Expression<'static>>| {
        out.elements += elem.len();
        if let Some(c) = elements(name, elem) {
            b.push(c);
        }
    };
    add(
        &mut b,
        POD_IFS,
        rs.pods.keys().map(|i| s(i.clone())).collect(),
    );
    for (set_name, want_v4) in [(SPOOF4, true), (SPOOF6, false)] {
        let elem = rs
            .pods
            .iter()
            .flat_map(|(i, ips)| ips.iter().map(move |ip| (i, ip)))
            .filter(|(_, ip)| ip.is_ipv4() == want_v4)
            .map(|(i, ip)| {
                Expression::Named(NamedExpression::Concat(vec![
                    s(i.clone()),
                    s(ip.to_string()),
                ]))
            })
            .collect();
        add(&mut b, set_name, elem);
    }
    for (name, a) in &rs.address_sets {
        let r4 =
            a.v4.iter()
                .map(|&(l, h)| (u32::from(l).into(), u32::from(h).into()))
                .collect();
        let r6 =
            a.v6.iter()
                .map(|&(l, h)| (u128::from(l), u128::from(h)))
                .collect();
        add(&mut b, &format!("{name}-4"), interval_elements(r4, v4));
        add(&mut b, &format!("{name}-6"), interval_elements(r6, v6));
    }
    for (name, p) in &rs.port_sets {
        let triple = |ip: String, proto: Protocol, port: u16| {
            Expression::Named(NamedExpression::Concat(vec![
                s(ip),
                Expression::Number(proto.number().into()),
                Expression::Number(port.into()),
            ]))
        };
        let e4 =
            p.v4.iter()
                .map(|&(ip, pr, po)| triple(ip.to_string(), pr, po))
                .collect();
        let e6 =
            p.v6.iter()
                .map(|&(ip, pr, po)| triple(ip.to_string(), pr, po))
                .collect();
        add(&mut b, &format!("{name}-4"), e4);
        add(&mut b, &format!("{name}-6"), e6);
    }

    for (chain, per_fam) in &lookups {
        for (f, elems) in per_fam {
            let to_ip = if *f == Fam::V4 { v4 } else { v6 };
            let elem = elems.iter().map(|e| lookup_element(e, to_ip)).collect();
            add(&mut b, &lookup_set(chain, *f), elem);
        }
    }

    // Rules.
    for (name, ch) in &rs.chains {
        // A chain unused by both maps is never jumped to: its direction does not matter.
        let dir = if rs.egress.values().any(|c| c == name) {
            Dir::Egress
        } else {
            Dir::Ingress
        };
        let field = match dir {
            Dir::Ingress => "saddr",
            Dir::Egress => "daddr",
        };
        let lookup = lookups.get(name.as_str());
        for (f, _) in lookup.into_iter().flatten() {
            let key = NamedExpression::Concat(vec![
                payload(f.proto(), field),
                meta(MetaKey::L4proto),
                payload("th", "dport"),
            ]);
            let stmts = vec![
                matches(
                    Expression::Named(key),
                    Operator::EQ,
                    set_ref(&lookup_set(name, *f)),
                ),
                Statement::Return(None),
            ];
            b.push(rule(name, stmts, None));
            out.rules += 1;
        }
        for r in &ch.rules {
            if lookup.is_some() && super::lookup::combinable(r) {
                continue;
            }
            for stmts in render_rule(rs, dir, r) {
                b.push(rule(name, stmts, None));
                out.rules += 1;
            }
        }
        let text = format!("policies: {}", ch.policies.join(", "));
        let end = vec![
            Statement::Counter(Counter::Anonymous(None)),
            Statement::Drop(None),
        ];
        b.push(rule(name, end, Some(comment(text))));
        out.rules += 1;
    }
    for (stmts, why) in forward_rules() {
        b.push(rule(FORWARD, stmts, Some(why.to_string())));
        out.rules += 1;
    }

    // Dispatch: the chains exist by now.
    for (map, entries) in [(INGRESS, &rs.ingress), (EGRESS, &rs.egress)] {
        let elem = entries
            .iter()
            .map(|(i, c)| {
                let jump = Verdict::Jump(JumpTarget {
                    target: Cow::Owned(c.clone()),
                });
                Expression::List(vec![s(i.clone()), Expression::Verdict(jump)])
            })
            .collect();
        add(&mut b, map, elem);
    }

    // Pods now programmed leave `pending`. Adding first makes the delete valid whether or not
    // ADD had listed them; the other elements of `pending` are left alone.
    let programmed: Vec<Expression<'static>> = rs.pods.keys().map(|i| s(i.clone())).collect();
    if !programmed.is_empty() {
        let el = |elem: Vec<Expression<'static>>| Element {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: PENDING.into(),
            elem: elem.into(),
        };
        b.push(cmd(NfCmd::Add(NfListObject::Element(el(
            programmed.clone()
        )))));
        b.push(cmd(NfCmd::Delete(NfListObject::Element(el(programmed)))));
    }

    // What the Ruleset no longer has: chains (emptied above, and no map jumps to them any
    // more), then sets and maps (no rule refers to them any more).
    for name in &stale_chains {
        b.push(cmd(NfCmd::Delete(NfListObject::Chain(chain(name)))));
    }
    for name in &names.sets {
        if !FIXED_SETS.contains(&name.as_str()) && !derived.contains(name) {
            let st = set(name, SetTypeValue::Single(SetType::Ifname), false);
            b.push(cmd(NfCmd::Delete(NfListObject::Set(Box::new(st)))));
            out.removed_sets.push(name.clone());
        }
    }
    for name in &names.maps {
        if !FIXED_MAPS.contains(&name.as_str()) {
            b.push(verdict_map("delete", name));
            out.removed_sets.push(name.clone());
        }
    }
    out.removed_chains = stale_chains;
    out.names = Names {
        chains: rs
            .chains
            .keys()
            .cloned()
            .chain([FORWARD.to_string()])
            .collect(),
        sets: FIXED_SETS
            .iter()
            .map(|s| s.to_string())
            .chain(derived)
            .collect(),
        maps: FIXED_MAPS.iter().map(|s| s.to_string()).collect(),
        contents: BTreeMap::new(),
    };
    let invalid = |e: serde_json::Error| {
        PolicyError::Invalid(format!("cannot write the nft batch as JSON: {e}"))
    };
    let cmds = b
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<Value>, _>>()
        .map_err(invalid)?;
    let (cmds, contents) = super::incremental::prune(cmds, &names.contents);
    out.names.contents = contents;
    out.json = serde_json::to_string(&json!({ "nftables": cmds })).map_err(invalid)?;
    Ok(out)
}
