//! Address ranges per family, as integers: ipBlock `cidr` less `except`, pod addresses as ranges
//! of one, unions merged so that a set holds each address once and adjacent pod addresses (one
//! node's pod CIDR filling up) collapse into one interval.

use crate::policy::model::IpBlock;
use crate::policy::ruleset::AddressSet;
use ipnetwork::IpNetwork;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Inclusive ranges; after `normalize`, sorted, disjoint and not adjacent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Ranges {
    pub v4: Vec<(u32, u32)>,
    pub v6: Vec<(u128, u128)>,
}

trait Int: Copy + Ord {
    fn succ(self) -> Option<Self>;
    fn pred(self) -> Option<Self>;
}

impl Int for u32 {
    fn succ(self) -> Option<u32> {
        self.checked_add(1)
    }
    fn pred(self) -> Option<u32> {
        self.checked_sub(1)
    }
}

impl Int for u128 {
    fn succ(self) -> Option<u128> {
        self.checked_add(1)
    }
    fn pred(self) -> Option<u128> {
        self.checked_sub(1)
    }
}

fn merge<T: Int>(ranges: &mut Vec<(T, T)>) {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for &(start, end) in ranges.iter() {
        match out.last_mut() {
            // Overlapping or adjacent (previous end + 1 == start): one interval.
            Some(last) if last.1.succ().is_none_or(|next| start <= next) => {
                last.1 = last.1.max(end);
            }
            _ => out.push((start, end)),
        }
    }
    *ranges = out;
}

/// `ranges` less `holes`; both normalized.
fn subtract<T: Int>(ranges: &[(T, T)], holes: &[(T, T)]) -> Vec<(T, T)> {
    let mut out = Vec::new();
    for &(mut start, end) in ranges {
        let mut open = true;
        for &(hs, he) in holes {
            if he < start || hs > end {
                continue;
            }
            if hs > start {
                // hs > start, so hs - 1 exists.
                out.push((start, hs.pred().unwrap_or(hs)));
            }
            match he.succ() {
                Some(next) if he < end => start = next,
                _ => {
                    open = false;
                    break;
                }
            }
        }
        if open {
            out.push((start, end));
        }
    }
    out
}

fn contains<T: Int>(ranges: &[(T, T)], x: T) -> bool {
    // Normalized: the candidate is the last range starting at or before x.
    let i = ranges.partition_point(|&(start, _)| start <= x);
    i > 0 && ranges[i - 1].1 >= x
}

impl Ranges {
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    pub fn add_ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(a) => self.v4.push((a.into(), a.into())),
            IpAddr::V6(a) => self.v6.push((a.into(), a.into())),
        }
    }

    pub fn add_network(&mut self, net: &IpNetwork) {
        match net {
            // network()/broadcast() clear and set the host bits, so a cidr written with host
            // bits set ("10.0.0.5/8") means the whole network, as the API reads it.
            IpNetwork::V4(n) => self.v4.push((n.network().into(), n.broadcast().into())),
            IpNetwork::V6(n) => {
                let start = u128::from(n.network());
                let host_mask = u128::MAX.checked_shr(u32::from(n.prefix())).unwrap_or(0);
                self.v6.push((start, start | host_mask));
            }
        }
    }

    /// `cidr` less every `except`, for one ipBlock peer (another peer may still allow what this
    /// one excepts: exceptions never reach beyond their own block).
    pub fn from_block(block: &IpBlock) -> Ranges {
        let mut whole = Ranges::default();
        whole.add_network(&block.cidr);
        let mut holes = Ranges::default();
        for e in &block.except {
            holes.add_network(e);
        }
        holes.normalize();
        Ranges {
            v4: subtract(&whole.v4, &holes.v4),
            v6: subtract(&whole.v6, &holes.v6),
        }
    }

    pub fn extend(&mut self, other: &Ranges) {
        self.v4.extend_from_slice(&other.v4);
        self.v6.extend_from_slice(&other.v6);
    }

    pub fn normalize(&mut self) {
        merge(&mut self.v4);
        merge(&mut self.v6);
    }

    /// Whether a normalized set holds `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => contains(&self.v4, u32::from(a)),
            IpAddr::V6(a) => contains(&self.v6, u128::from(a)),
        }
    }

    pub fn to_address_set(&self) -> AddressSet {
        AddressSet {
            v4: (self.v4.iter())
                .map(|&(s, e)| (Ipv4Addr::from(s), Ipv4Addr::from(e)))
                .collect(),
            v6: (self.v6.iter())
                .map(|&(s, e)| (Ipv6Addr::from(s), Ipv6Addr::from(e)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(cidr: &str, except: &[&str]) -> IpBlock {
        IpBlock {
            cidr: cidr.parse().unwrap(),
            except: except.iter().map(|e| e.parse().unwrap()).collect(),
        }
    }

    fn v4(s: &str) -> u32 {
        s.parse::<Ipv4Addr>().unwrap().into()
    }

    #[test]
    fn except_cuts_holes_inside_the_cidr() {
        let r = Ranges::from_block(&block("10.0.0.0/24", &["10.0.0.16/28", "10.0.0.5/32"]));
        assert_eq!(
            r.v4,
            vec![
                (v4("10.0.0.0"), v4("10.0.0.4")),
                (v4("10.0.0.6"), v4("10.0.0.15")),
                (v4("10.0.0.32"), v4("10.0.0.255")),
            ]
        );
        assert!(r.v6.is_empty());
    }

    #[test]
    fn overlapping_and_edge_exceptions() {
        // Overlapping exceptions, one at each edge, one covering the rest.
        let r = Ranges::from_block(&block(
            "10.0.0.0/30",
            &["10.0.0.0/32", "10.0.0.3/32", "10.0.0.2/31"],
        ));
        assert_eq!(r.v4, vec![(v4("10.0.0.1"), v4("10.0.0.1"))]);
        let r = Ranges::from_block(&block("10.0.0.0/24", &["10.0.0.0/16"]));
        assert!(
            r.is_empty(),
            "an exception wider than the block leaves nothing"
        );
        // An exception of the other family does nothing.
        let r = Ranges::from_block(&block("0.0.0.0/0", &["::/0"]));
        assert_eq!(r.v4, vec![(0, u32::MAX)]);
    }

    #[test]
    fn v6_blocks_and_host_bits() {
        let r = Ranges::from_block(&block("fd00::/64", &["fd00::1/128"]));
        let base = u128::from("fd00::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            r.v6,
            vec![(base, base), (base + 2, base | u128::from(u64::MAX))]
        );
        let all = Ranges::from_block(&block("::/0", &[]));
        assert_eq!(all.v6, vec![(0, u128::MAX)]);
        let host = Ranges::from_block(&block("fd00::7/128", &[]));
        assert_eq!(host.v6, vec![(base + 7, base + 7)]);
        let masked = Ranges::from_block(&block("10.1.2.3/8", &[]));
        assert_eq!(masked.v4, vec![(v4("10.0.0.0"), v4("10.255.255.255"))]);
    }

    #[test]
    fn union_merges_overlaps_and_neighbours() {
        let mut r = Ranges::default();
        for ip in [
            "10.0.0.3", "10.0.0.1", "10.0.0.2", "10.0.0.9", "fd00::1", "fd00::1",
        ] {
            r.add_ip(ip.parse().unwrap());
        }
        r.extend(&Ranges::from_block(&block("10.0.0.8/30", &[])));
        r.normalize();
        assert_eq!(
            r.v4,
            vec![
                (v4("10.0.0.1"), v4("10.0.0.3")),
                (v4("10.0.0.8"), v4("10.0.0.11"))
            ]
        );
        assert_eq!(r.v6.len(), 1);
        assert!(r.contains("10.0.0.10".parse().unwrap()));
        assert!(!r.contains("10.0.0.4".parse().unwrap()));
        assert!(!r.contains("10.0.0.0".parse().unwrap()));
        assert!(r.contains("fd00::1".parse().unwrap()));
        assert!(!r.contains("fd00::2".parse().unwrap()));
        // The top of the address space merges without overflow.
        let mut top = Ranges {
            v4: vec![(u32::MAX, u32::MAX), (0, u32::MAX)],
            v6: vec![],
        };
        top.normalize();
        assert_eq!(top.v4, vec![(0, u32::MAX)]);
    }
}
