//! The pool's masquerade rules as iptables shows them, with their packet counters. doctor does
//! not know the network config, so the pool's exceptions (`nonMasqueradeCIDRs`) are read back
//! from the chain's RETURN rules, and the chain's name, a hash of them, tells whether the
//! chain still holds what ADD put in it. IPv6 pools are read the same way from `ip6tables`.

use ipnetwork::IpNetwork;
use serde::Serialize;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use crate::nat::PoolNat;

/// One `-A` line of `iptables -v -S`, its counters taken out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// The rule without `-A <chain>` and without `-c <pkts> <bytes>`: what `-A`/`-D` take.
    pub spec: String,
    pub target: Option<String>,
    pub pkts: u64,
    pub bytes: u64,
}

/// `iptables` or `ip6tables`, for an address of that family.
pub fn command_for(ip: IpAddr) -> &'static str {
    if ip.is_ipv6() {
        "ip6tables"
    } else {
        "iptables"
    }
}

/// `<cmd> -t nat -v -S [chain]`: the lines, or `None` when the chain does not exist.
fn list(cmd_name: &str, chain: Option<&str>) -> Result<Option<Vec<String>>, String> {
    let mut cmd = Command::new(cmd_name);
    cmd.args(["-w", "-t", "nat", "-v", "-S"]);
    if let Some(c) = chain {
        cmd.arg(c);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd_name}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No chain") || err.contains("does not exist") {
            return Ok(None);
        }
        return Err(format!(
            "`{cmd_name} -t nat -v -S {}` failed: {}",
            chain.unwrap_or(""),
            err.trim()
        ));
    }
    Ok(Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
    ))
}

/// Parses `-A <chain> <spec with -c P B>`; `None` for other lines and other chains.
pub fn parse_rule(line: &str, chain: &str) -> Option<Rule> {
    let rest = line.strip_prefix(&format!("-A {chain} "))?;
    let tokens: Vec<&str> = rest.split(' ').collect();
    let mut kept = Vec::with_capacity(tokens.len());
    let (mut pkts, mut bytes) = (0, 0);
    let mut i = 0;
    while i < tokens.len() {
        if tokens[i] == "-c" && i + 2 < tokens.len() {
            if let (Ok(p), Ok(b)) = (tokens[i + 1].parse(), tokens[i + 2].parse()) {
                (pkts, bytes) = (p, b);
                i += 3;
                continue;
            }
        }
        kept.push(tokens[i]);
        i += 1;
    }
    let spec = kept.join(" ");
    let target = spec
        .rsplit_once("-j ")
        .and_then(|(_, t)| t.split_whitespace().next())
        .map(str::to_string);
    Some(Rule {
        spec,
        target,
        pkts,
        bytes,
    })
}

fn rules_of(lines: &[String], chain: &str) -> Vec<Rule> {
    lines.iter().filter_map(|l| parse_rule(l, chain)).collect()
}

/// The destination of `-d <cidr>` (not `! -d`) in a rule.
fn dest_of(spec: &str) -> Option<IpNetwork> {
    let mut it = spec.split_whitespace().peekable();
    let mut negated = false;
    while let Some(t) = it.next() {
        match t {
            "!" => negated = true,
            "-d" => {
                let v = it.next()?;
                if !negated {
                    return v.parse().ok();
                }
                negated = false;
            }
            _ => negated = false,
        }
    }
    None
}

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
    /// Reads POSTROUTING and the pool's chain (two or three runs of `iptables`, or of
    /// `ip6tables` for an IPv6 pool).
    pub fn read(subnet: IpNetwork) -> Result<PoolRules, String> {
        let cmd = command_for(subnet.ip());
        let post = list(cmd, Some("POSTROUTING"))?.unwrap_or_default();
        let all_post = rules_of(&post, "POSTROUTING");
        let marker = format!("\"routed-cni pool {subnet}\"");
        let jumps: Vec<Rule> = all_post
            .iter()
            .filter(|r| r.spec.contains(&marker))
            .cloned()
            .collect();
        let jump_position = all_post
            .iter()
            .position(|r| r.spec.contains(&marker))
            .map(|i| (i + 1, all_post.len()));
        let mut chain = jumps.iter().find_map(|j| j.target.clone());
        if chain.is_none() {
            // The jump is gone; its chain may still be there.
            let masq = format!("\"routed-cni masquerade {subnet}\"");
            chain = list(cmd, None)?.unwrap_or_default().iter().find_map(|l| {
                let name = l.strip_prefix("-A ")?.split(' ').next()?;
                (name.starts_with("RCNI-") && l.contains(&masq)).then(|| name.to_string())
            });
        }
        let chain_rules = match &chain {
            Some(c) => rules_of(&list(cmd, Some(c))?.unwrap_or_default(), c),
            None => Vec::new(),
        };
        let non_masquerade = chain_rules
            .iter()
            .filter(|r| r.target.as_deref() == Some("RETURN"))
            .filter_map(|r| dest_of(&r.spec))
            .collect();
        Ok(PoolRules {
            subnet,
            jumps,
            jump_position,
            chain,
            chain_rules,
            non_masquerade,
        })
    }

    /// `iptables` or `ip6tables`: what lists and repairs this pool's rules.
    pub fn command(&self) -> &'static str {
        command_for(self.subnet.ip())
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
    pub fn expected(&self) -> PoolNat {
        PoolNat {
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
    let lines = list(command_for(dst), Some("KUBE-SERVICES")).ok()??;
    let want = format!("-d {dst}/{} ", crate::dataplane::host_prefix(dst));
    rules_of(&lines, "KUBE-SERVICES")
        .into_iter()
        .filter(|r| r.spec.contains(&want))
        .find(|r| port.is_none_or(|p| r.spec.contains(&format!("--dport {p} "))))
        .map(|r| {
            r.spec
                .split_once("--comment ")
                .map(|(_, c)| {
                    c.trim_start_matches('"')
                        .split('"')
                        .next()
                        .unwrap_or_default()
                        .to_string()
                })
                .unwrap_or_else(|| r.spec.clone())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_with_counters() {
        let l = "-A POSTROUTING -s 10.244.1.0/24 -m comment --comment \"routed-cni pool 10.244.1.0/24\" -c 12 840 -j RCNI-14F68DE1BD076ADC";
        let r = parse_rule(l, "POSTROUTING").unwrap();
        assert_eq!((r.pkts, r.bytes), (12, 840));
        assert_eq!(r.target.as_deref(), Some("RCNI-14F68DE1BD076ADC"));
        assert_eq!(
            r.spec,
            "-s 10.244.1.0/24 -m comment --comment \"routed-cni pool 10.244.1.0/24\" -j RCNI-14F68DE1BD076ADC"
        );
        assert!(parse_rule(l, "OUTPUT").is_none());
        assert!(parse_rule("-P POSTROUTING ACCEPT -c 0 0", "POSTROUTING").is_none());
    }

    /// The rules ADD writes for `nat`, as `-v -S` would list them, read back.
    fn read_back(nat: &PoolNat) -> PoolRules {
        let chain_rules: Vec<Rule> = nat
            .chain_rules()
            .iter()
            .map(|r| parse_rule(&format!("-A {} {r} -c 3 180", nat.chain()), &nat.chain()).unwrap())
            .collect();
        let non_masquerade: Vec<_> = chain_rules
            .iter()
            .filter(|r| r.target.as_deref() == Some("RETURN"))
            .filter_map(|r| dest_of(&r.spec))
            .collect();
        PoolRules {
            subnet: nat.subnet,
            jumps: vec![parse_rule(
                &format!("-A POSTROUTING {}", nat.jump_rule()),
                "POSTROUTING",
            )
            .unwrap()],
            jump_position: Some((1, 1)),
            chain: Some(nat.chain()),
            chain_rules,
            non_masquerade,
        }
    }

    #[test]
    fn exceptions_come_from_return_rules() {
        let nat = PoolNat {
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
        assert_eq!(dest_of("! -d 224.0.0.0/4 -j MASQUERADE"), None);
    }

    #[test]
    fn ipv6_pools_read_the_same_way_from_ip6tables() {
        // A dual-stack config's exceptions: only the pool's own family is in its chain.
        let nat = PoolNat {
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
        // ip6tables prints the jump exactly as PoolNat spells it.
        let listed = "-A POSTROUTING -s fd00:10:244:1::/64 -m comment --comment \"routed-cni pool fd00:10:244:1::/64\" -c 4 416 -j RCNI-3DE3CD72EDA0AA52";
        let r = parse_rule(listed, "POSTROUTING").unwrap();
        assert_eq!((r.pkts, r.bytes), (4, 416));
        assert_eq!(r.spec, nat.jump_rule());
        assert_eq!(dest_of("! -d ff00::/8 -j MASQUERADE"), None);
    }
}
