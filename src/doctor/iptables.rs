//! The pool's masquerade rules as iptables shows them, with their packet counters. doctor does
//! not know the network config, so the pool's exceptions (`nonMasqueradeCIDRs`) are read back
//! from the chain's RETURN rules, and the chain's name, a hash of them, tells whether the
//! chain still holds what ADD put in it. IPv6 pools are read the same way from `ip6tables`.

use ipnetwork::IpNetwork;
use std::net::IpAddr;

use crate::firewall::masquerade::PoolListing;
use crate::firewall::{self, Family, Masquerade};

pub use crate::firewall::Rule;

/// What the node has for one pool.
#[derive(Debug, Clone)]
pub struct PoolRules {
    pub subnet: IpNetwork,
    /// POSTROUTING rules carrying the pool's comment.
    pub jumps: Vec<Rule>,
    /// 1-based position of the first jump in POSTROUTING, and how many rules it has.
    pub jump_position: Option<(usize, usize)>,
    /// The pool's chain: the jump's target, else a chain whose MASQUERADE names the pool.
    pub chain: Option<String>,
    pub chain_rules: Vec<Rule>,
    /// The pool's exceptions as the chain's RETURN rules say.
    pub non_masquerade: Vec<IpNetwork>,
}

impl PoolRules {
    /// Reads POSTROUTING and the pool's chain, with counters.
    pub fn read(subnet: IpNetwork) -> Result<PoolRules, String> {
        Masquerade::list(subnet)
            .map(|listed| PoolRules::from_listing(subnet, listed))
            .map_err(|e| e.msg)
    }

    fn from_listing(subnet: IpNetwork, listed: PoolListing) -> PoolRules {
        let non_masquerade = listed
            .chain_rules
            .iter()
            .filter(|r| r.target.as_deref() == Some("RETURN"))
            .filter_map(|r| r.arg("-d")?.parse().ok())
            .collect();
        PoolRules {
            subnet,
            jumps: listed.jumps,
            jump_position: listed.jump_position,
            chain: listed.chain,
            chain_rules: listed.chain_rules,
            non_masquerade,
        }
    }

    /// `iptables` or `ip6tables`: what lists and repairs this pool's rules.
    pub fn command(&self) -> &'static str {
        self.expected().program()
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "subnet": self.subnet.to_string(),
            "jumps": self.jumps,
            "jumpPosition": self.jump_position,
            "chain": self.chain,
            "chainRules": self.chain_rules,
            "nonMasquerade": self.non_masquerade.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        })
    }

    /// The rules as ADD would have written them for the exceptions found.
    pub fn expected(&self) -> Masquerade {
        Masquerade {
            subnet: self.subnet,
            non_masquerade: self.non_masquerade.clone(),
        }
    }

    /// The jump as it should read, to the chain that exists.
    pub fn jump_spec(&self) -> String {
        let nat = self.expected();
        match &self.chain {
            Some(c) if *c != nat.chain() => nat.jump_rule().replace(&nat.chain(), c),
            _ => nat.jump_rule(),
        }
    }

    /// True when the jump is in place exactly once and the chain holds ADD's rules in order.
    pub fn jump_ok(&self) -> bool {
        self.jumps.iter().any(|j| j.spec == self.jump_spec())
    }

    pub fn chain_ok(&self) -> bool {
        let nat = self.expected();
        self.chain.as_deref() == Some(nat.chain().as_str())
            && self
                .chain_rules
                .iter()
                .map(|r| r.spec.as_str())
                .eq(nat.chain_rules().iter().map(String::as_str))
    }

    /// What happens to a packet from the pool to `dst` in the pool's chain.
    pub fn verdict(&self, dst: IpAddr) -> Verdict {
        if self.chain.is_none() || !self.jump_ok() {
            return Verdict::NoRules;
        }
        if let Some(c) = self.non_masquerade.iter().find(|c| c.contains(dst)) {
            return Verdict::Return(*c);
        }
        if dst.is_multicast() {
            return Verdict::Multicast;
        }
        Verdict::Masquerade
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No jump or no chain: the packet leaves with the pod's address.
    NoRules,
    /// Inside `nonMasqueradeCIDRs`: the packet keeps the pod's address.
    Return(IpNetwork),
    Multicast,
    Masquerade,
}

/// The Service kube-proxy (iptables mode) has for `dst` (and the port, when given): the
/// rule's comment, or `None` when kube-proxy's chain is absent or has no such Service IP.
pub fn kube_service(dst: IpAddr, port: Option<u16>) -> Option<String> {
    let rules = firewall::nat_chain(Family::of(dst), "KUBE-SERVICES").ok()??;
    let want = format!("{dst}/{}", crate::dataplane::host_prefix(dst));
    let port = port.map(|p| p.to_string());
    rules
        .into_iter()
        .filter(|r| r.arg("-d") == Some(want.as_str()))
        .find(|r| port.is_none() || r.arg("--dport") == port.as_deref())
        .map(|r| r.arg("--comment").map(str::to_string).unwrap_or(r.spec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::iptables::Listing;

    /// The rules ADD writes for `nat`, as `-v -S` lists them, read back.
    fn read_back(nat: &Masquerade) -> PoolRules {
        let chain = nat.chain();
        let mut text = format!(
            "-A POSTROUTING {}\n",
            nat.jump_rule().replace(" -j ", " -c 4 416 -j ")
        );
        for r in nat.chain_rules() {
            text.push_str(&format!(
                "-A {chain} {}\n",
                r.replace(" -j ", " -c 3 180 -j ")
            ));
        }
        let listed = Listing::parse(&text);
        let jumps: Vec<Rule> = listed.rules_of("POSTROUTING").cloned().collect();
        assert_eq!((jumps[0].pkts, jumps[0].bytes), (4, 416));
        PoolRules::from_listing(
            nat.subnet,
            PoolListing {
                jumps,
                jump_position: Some((1, 1)),
                chain: Some(chain.clone()),
                chain_rules: listed.rules_of(&chain).cloned().collect(),
            },
        )
    }

    #[test]
    fn exceptions_come_from_return_rules() {
        let nat = Masquerade {
            subnet: "10.244.1.0/24".parse().unwrap(),
            non_masquerade: vec![
                "10.244.0.0/16".parse().unwrap(),
                "10.96.0.0/12".parse().unwrap(),
            ],
        };
        let rules = read_back(&nat);
        assert_eq!(rules.non_masquerade, nat.non_masquerade);
        assert!(rules.jump_ok() && rules.chain_ok());
        assert_eq!(rules.command(), "iptables");
        assert_eq!(
            rules.verdict("10.96.0.10".parse().unwrap()),
            Verdict::Return("10.96.0.0/12".parse().unwrap())
        );
        assert_eq!(
            rules.verdict("224.0.0.251".parse().unwrap()),
            Verdict::Multicast
        );
        assert_eq!(
            rules.verdict("8.8.8.8".parse().unwrap()),
            Verdict::Masquerade
        );
        // A chain whose RETURN rules were edited no longer matches its name.
        let mut edited = rules.clone();
        edited.chain_rules.remove(0);
        edited.non_masquerade.remove(0);
        assert!(!edited.chain_ok());
    }

    #[test]
    fn ipv6_pools_read_the_same_way_from_ip6tables() {
        // A dual-stack config's exceptions: only the pool's own family is in its chain.
        let nat = Masquerade {
            subnet: "fd00:10:244:1::/64".parse().unwrap(),
            non_masquerade: vec![
                "10.244.0.0/16".parse().unwrap(),
                "fd00:10:244::/48".parse().unwrap(),
            ],
        };
        let rules = read_back(&nat);
        assert_eq!(
            rules.non_masquerade,
            ["fd00:10:244::/48".parse::<IpNetwork>().unwrap()]
        );
        assert!(rules.jump_ok() && rules.chain_ok());
        assert_eq!(rules.command(), "ip6tables");
        assert_eq!(
            rules.verdict("fd00:10:244:7::7".parse().unwrap()),
            Verdict::Return("fd00:10:244::/48".parse().unwrap())
        );
        assert_eq!(
            rules.verdict("ff02::fb".parse().unwrap()),
            Verdict::Multicast
        );
        assert_eq!(
            rules.verdict("2001:db8::1".parse().unwrap()),
            Verdict::Masquerade
        );
        // ip6tables prints the jump exactly as Masquerade spells it.
        let listed = "-A POSTROUTING -s fd00:10:244:1::/64 -m comment --comment \"routed-cni pool fd00:10:244:1::/64\" -c 4 416 -j RCNI-3DE3CD72EDA0AA52";
        assert_eq!(Listing::parse(listed).rules[0].spec, nat.jump_rule());
    }
}
