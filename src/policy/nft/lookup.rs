//! One lookup per chain: the rules of a chain that name both peers (an address set) and ports
//! become the elements of one concatenated interval set `addr . l4proto . dport`, matched by a
//! single rule, so a new connection costs one set lookup however many policies select the pod
//! (1,000 policies each allowing its own port were 345 rules walked in order, and the
//! connection rate fell to 0.6 of the unpoliced one). nft refuses overlapping elements, so
//! each protocol's ports are cut into the pieces no rule boundary crosses, and each piece
//! gets the union of the addresses of the rules that cover it.

use std::collections::BTreeMap;

use crate::policy::ruleset::{Peers, Ports, Protocol, Rule, Ruleset};

/// (first address, last address, protocol, first port, last port), addresses as integers.
pub type Element = (u128, u128, Protocol, u16, u16);

/// From this many peer-and-port rules a chain gets a lookup set. Below it, walking the rules
/// costs a new connection less than the set costs every apply: the kernel's set type for
/// concatenated ranges (pipapo) rebuilds its tables per inserted element, so a 200-policy table
/// whose every chain had its set took 578 ms to apply instead of 60 ms, for small chains that
/// gain nothing measurable.
pub const MIN_RULES: usize = 8;

/// Ports `first..=last` allowed from these address ranges.
type Piece = (u16, u16, Vec<(u128, u128)>);

/// Whether `r` goes into the lookup set rather than a rule of its own.
pub fn combinable(r: &Rule) -> bool {
    matches!((&r.peers, &r.ports), (Peers::Set(_), Ports::Listed(specs)) if !specs.is_empty())
}

fn merge(mut ranges: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
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

/// The lookup set's elements for one family (`v4`: IPv4 addresses, else IPv6), disjoint.
pub fn elements(rs: &Ruleset, rules: &[&Rule], v4: bool) -> Vec<Element> {
    // Per protocol: (first port, last port, addresses) of each rule's entries.
    let mut by_proto: BTreeMap<Protocol, Vec<Piece>> = BTreeMap::new();
    for r in rules {
        let (Peers::Set(name), Ports::Listed(specs)) = (&r.peers, &r.ports) else {
            continue;
        };
        let Some(set) = rs.address_sets.get(name) else {
            continue;
        };
        let addrs: Vec<(u128, u128)> = if v4 {
            set.v4
                .iter()
                .map(|&(l, h)| (u32::from(l).into(), u32::from(h).into()))
                .collect()
        } else {
            set.v6.iter().map(|&(l, h)| (l.into(), h.into())).collect()
        };
        if addrs.is_empty() {
            continue;
        }
        for spec in specs {
            let (lo, hi) = spec.range.unwrap_or((0, u16::MAX));
            by_proto.entry(spec.protocol).or_default().push((
                lo.min(hi),
                lo.max(hi),
                addrs.clone(),
            ));
        }
    }
    let mut out = Vec::new();
    for (proto, entries) in by_proto {
        // Every place a port range starts or ends after: pieces between them are covered by
        // the same rules throughout.
        let mut cuts: Vec<u32> = entries
            .iter()
            .flat_map(|&(lo, hi, _)| [u32::from(lo), u32::from(hi) + 1])
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut pieces: Vec<Piece> = Vec::new();
        for w in cuts.windows(2) {
            let (a, b) = (w[0] as u16, (w[1] - 1) as u16);
            let covering: Vec<(u128, u128)> = entries
                .iter()
                .filter(|&&(lo, hi, _)| lo <= a && b <= hi)
                .flat_map(|(_, _, addrs)| addrs.iter().copied())
                .collect();
            if covering.is_empty() {
                continue;
            }
            let addrs = merge(covering);
            // Neighbouring pieces with the same addresses are one piece.
            match pieces.last_mut() {
                Some(last) if last.1.checked_add(1) == Some(a) && last.2 == addrs => last.1 = b,
                _ => pieces.push((a, b, addrs)),
            }
        }
        for (a, b, addrs) in pieces {
            for (lo, hi) in addrs {
                out.push((lo, hi, proto, a, b));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ruleset::{AddressSet, PortSpec};

    fn rs_with(sets: &[(&str, &[(&str, &str)])]) -> Ruleset {
        let mut rs = Ruleset::default();
        for (name, ranges) in sets {
            let v4 = ranges
                .iter()
                .map(|(l, h)| (l.parse().unwrap(), h.parse().unwrap()))
                .collect();
            rs.address_sets
                .insert(name.to_string(), AddressSet { v4, v6: Vec::new() });
        }
        rs
    }

    fn rule(set: &str, specs: &[(Protocol, Option<(u16, u16)>)]) -> Rule {
        Rule {
            peers: Peers::Set(set.into()),
            ports: Ports::Listed(
                specs
                    .iter()
                    .map(|&(protocol, range)| PortSpec { protocol, range })
                    .collect(),
            ),
        }
    }

    fn ip(s: &str) -> u128 {
        u32::from(s.parse::<std::net::Ipv4Addr>().unwrap()).into()
    }

    #[test]
    fn overlapping_rules_become_disjoint_elements_that_allow_the_same() {
        use Protocol::*;
        let rs = rs_with(&[
            ("a", &[("10.0.0.0", "10.0.0.255")]),
            ("b", &[("10.0.0.5", "10.0.0.5"), ("10.9.0.1", "10.9.0.1")]),
        ]);
        let r1 = rule("a", &[(Tcp, Some((80, 81)))]);
        let r2 = rule("b", &[(Tcp, Some((80, 80))), (Udp, None)]);
        let e = elements(&rs, &[&r1, &r2], true);
        // 80: both rules (a's /24 absorbs b's 10.0.0.5, 10.9.0.1 stays); 81: a only; UDP: b.
        assert_eq!(
            e,
            vec![
                (ip("10.0.0.0"), ip("10.0.0.255"), Tcp, 80, 80),
                (ip("10.9.0.1"), ip("10.9.0.1"), Tcp, 80, 80),
                (ip("10.0.0.0"), ip("10.0.0.255"), Tcp, 81, 81),
                (ip("10.0.0.5"), ip("10.0.0.5"), Udp, 0, 65535),
                (ip("10.9.0.1"), ip("10.9.0.1"), Udp, 0, 65535),
            ]
        );
        // Whatever the split, each (address, protocol, port) is allowed exactly when one of
        // the rules allows it.
        let allowed = |addr: u128, p: Protocol, port: u16| {
            e.iter()
                .filter(|&&(l, h, pp, a, b)| {
                    l <= addr && addr <= h && pp == p && a <= port && port <= b
                })
                .count()
        };
        for (addr, p, port, want) in [
            (ip("10.0.0.5"), Tcp, 80, 1),
            (ip("10.0.0.6"), Tcp, 81, 1),
            (ip("10.9.0.1"), Tcp, 81, 0),
            (ip("10.9.0.1"), Udp, 53, 1),
            (ip("10.0.0.6"), Udp, 53, 0),
            (ip("10.0.0.6"), Sctp, 80, 0),
        ] {
            assert_eq!(allowed(addr, p, port), want, "{addr} {p:?} {port}");
        }
    }

    #[test]
    fn neighbouring_pieces_with_the_same_addresses_merge() {
        use Protocol::*;
        let rs = rs_with(&[("a", &[("10.0.0.1", "10.0.0.1")])]);
        let r1 = rule("a", &[(Tcp, Some((80, 89)))]);
        let r2 = rule("a", &[(Tcp, Some((85, 99)))]);
        assert_eq!(
            elements(&rs, &[&r1, &r2], true),
            vec![(ip("10.0.0.1"), ip("10.0.0.1"), Tcp, 80, 99)]
        );
        assert!(elements(&rs, &[&r1], false).is_empty());
    }
}
