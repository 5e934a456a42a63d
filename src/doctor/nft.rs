//! Reads an nftables table as `nft list table` prints it into the rule model of `filter`, so
//! firewalld's forward chains are followed like an iptables FORWARD chain. Only what a
//! forward-hook filter uses is understood (interfaces, addresses, ct state, protocol, ports,
//! jump/goto and verdicts); anything else is an unknown match, which makes a drop a "may".

use super::filter::{Action, Cond, FRule, Ruleset};

/// Splits a rule line into words, keeping `{ … }` sets and `"…"` strings whole.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut depth, mut quoted) = (0usize, false);
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            '{' if !quoted => {
                depth += 1;
                cur.push(c);
            }
            '}' if !quoted => {
                depth = depth.saturating_sub(1);
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted && depth == 0 => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The elements of a value: `"eth0"`, `{ a, b }`, `10.0.0.0/8`.
fn elements(v: &str) -> Vec<String> {
    v.trim_start_matches('{')
        .trim_end_matches('}')
        .split(',')
        .map(|e| e.trim().trim_matches('"').to_string())
        .filter(|e| !e.is_empty())
        .collect()
}

/// One rule line of a chain.
pub fn rule(chain: &str, line: &str) -> FRule {
    let w = words(line);
    let mut conds = Vec::new();
    let mut action = Action::Continue;
    let mut pkts = 0;
    let mut i = 0;
    // The value of a match at `i + at`, after an optional `==`/`!=`; and whether negated.
    let value = |i: usize, at: usize| -> (bool, String, usize) {
        match w.get(i + at).map(String::as_str) {
            Some("!=") => (true, w.get(i + at + 1).cloned().unwrap_or_default(), at + 2),
            Some("==") => (
                false,
                w.get(i + at + 1).cloned().unwrap_or_default(),
                at + 2,
            ),
            _ => (false, w.get(i + at).cloned().unwrap_or_default(), at + 1),
        }
    };
    while i < w.len() {
        let word = w[i].as_str();
        let next = w.get(i + 1).map(String::as_str).unwrap_or("");
        let (cond, took): (Option<Cond>, usize) = match (word, next) {
            ("iifname" | "oifname", _) => {
                let (neg, v, took) = value(i, 1);
                let names = elements(&v);
                let c = if names.len() == 1 {
                    if word == "iifname" {
                        Cond::Iif(names[0].clone())
                    } else {
                        Cond::Oif(names[0].clone())
                    }
                } else {
                    Cond::Unknown(format!("{word} {v}"))
                };
                (Some(negated(neg, c)), took)
            }
            ("ip" | "ip6", "saddr" | "daddr") => {
                let (neg, v, took) = value(i, 2);
                let nets: Option<Vec<_>> = elements(&v).iter().map(|e| e.parse().ok()).collect();
                let c = match nets {
                    Some(n) if next == "saddr" => Cond::Src(n),
                    Some(n) => Cond::Dst(n),
                    None => Cond::Unknown(format!("{word} {next} {v}")),
                };
                // `ip saddr` in an inet table matches IPv4 packets only, negated or not.
                conds.push(Cond::V6(word == "ip6"));
                (Some(negated(neg, c)), took)
            }
            ("ct", "state") => {
                let (neg, v, took) = value(i, 2);
                let states = elements(&v).iter().map(|s| s.to_uppercase()).collect();
                (Some(negated(neg, Cond::CtState(states))), took)
            }
            ("ct", "status") => {
                // A pod's own flow is not DNATed (a Service's is, before FORWARD).
                let (neg, v, took) = value(i, 2);
                let c = if elements(&v) == ["dnat"] {
                    Cond::Never
                } else {
                    Cond::Unknown(format!("ct status {v}"))
                };
                (Some(negated(neg, c)), took)
            }
            ("meta", "nfproto") => {
                let (neg, v, took) = value(i, 2);
                (Some(negated(neg, Cond::V6(v == "ipv6"))), took)
            }
            ("meta", "l4proto") | ("ip", "protocol") | ("ip6", "nexthdr") => {
                let (neg, v, took) = value(i, 2);
                let p = elements(&v);
                let c = if p.len() == 1 {
                    Cond::Proto(p[0].clone())
                } else {
                    Cond::Unknown(format!("{word} {next} {v}"))
                };
                (Some(negated(neg, c)), took)
            }
            ("tcp" | "udp" | "sctp", "dport") => {
                let (neg, v, took) = value(i, 2);
                let ports: Option<Vec<(u16, u16)>> = elements(&v)
                    .iter()
                    .map(|p| {
                        let (a, b) = p.split_once('-').unwrap_or((p, p));
                        Some((a.parse().ok()?, b.parse().ok()?))
                    })
                    .collect();
                conds.push(Cond::Proto(word.to_string()));
                let c = ports
                    .map(Cond::Dport)
                    .unwrap_or_else(|| Cond::Unknown(format!("{word} dport {v}")));
                (Some(negated(neg, c)), took)
            }
            ("counter", _) => {
                if next == "packets" {
                    pkts = w.get(i + 2).and_then(|p| p.parse().ok()).unwrap_or(0);
                    (None, 5)
                } else {
                    (None, 1)
                }
            }
            ("log", _) => {
                // `log prefix "…" level …`: its options up to the next statement.
                let n = w[i + 1..]
                    .iter()
                    .take_while(|t| !matches!(t.as_str(), "accept" | "drop" | "reject"))
                    .count();
                (None, 1 + n)
            }
            ("accept", _) => {
                action = Action::Accept;
                break;
            }
            ("drop", _) => {
                action = Action::Drop;
                break;
            }
            ("reject", _) => {
                action = Action::Reject;
                break;
            }
            ("return", _) => {
                action = Action::Return;
                break;
            }
            ("jump", c) => {
                action = Action::Jump(c.to_string());
                break;
            }
            ("goto", c) => {
                action = Action::Goto(c.to_string());
                break;
            }
            ("queue", _) => {
                action = Action::Other("queue".into());
                break;
            }
            (w, _) => (Some(Cond::Unknown(w.to_string())), 1),
        };
        conds.extend(cond);
        i += took;
    }
    FRule {
        chain: chain.to_string(),
        conds,
        action,
        text: line.trim().to_string(),
        pkts,
    }
}

fn negated(neg: bool, c: Cond) -> Cond {
    if neg {
        Cond::Not(Box::new(c))
    } else {
        c
    }
}

/// A whole `nft list table` output: its chains, and each base chain's policy.
pub fn table(text: &str) -> Ruleset {
    let mut set = Ruleset::default();
    let mut chain: Option<String> = None;
    for line in text.lines() {
        // `# handle N` comments (nft -a) are not part of the rule.
        let line = line.split(" # handle").next().unwrap_or(line).trim();
        if let Some(name) = line
            .strip_prefix("chain ")
            .and_then(|r| r.strip_suffix('{'))
        {
            let name = name.trim().to_string();
            set.chains.entry(name.clone()).or_default();
            chain = Some(name);
            continue;
        }
        let Some(c) = chain.clone() else { continue };
        if line == "}" {
            chain = None;
        } else if line.starts_with("type ") {
            if let Some(p) = line.split("policy ").nth(1) {
                let drop = p.trim_end_matches(';').trim() == "drop";
                set.policies.insert(c, (drop, 0));
            }
        } else if !line.is_empty() {
            set.chains
                .entry(c.clone())
                .or_default()
                .push(rule(&c, line));
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_firewalld_rule_lines() {
        let r = rule("filter_FORWARD", "ct state { established, related } accept");
        assert_eq!(
            r.conds,
            [Cond::CtState(vec!["ESTABLISHED".into(), "RELATED".into()])]
        );
        assert_eq!(r.action, Action::Accept);
        let r = rule(
            "filter_FORWARD_ZONES",
            "ip saddr 10.244.1.0/24 counter packets 3 bytes 252 goto filter_FWD_trusted",
        );
        assert_eq!(
            r.conds,
            [
                Cond::V6(false),
                Cond::Src(vec!["10.244.1.0/24".parse().unwrap()])
            ]
        );
        assert_eq!(r.action, Action::Goto("filter_FWD_trusted".into()));
        assert_eq!(r.pkts, 3);
        let r = rule(
            "x",
            "iifname != \"rcni*\" oifname \"eth0\" reject with icmpx admin-prohibited",
        );
        assert_eq!(
            r.conds,
            [
                Cond::Not(Box::new(Cond::Iif("rcni*".into()))),
                Cond::Oif("eth0".into())
            ]
        );
        assert_eq!(r.action, Action::Reject);
        let r = rule("x", "tcp dport { 22, 8000-8080 } accept");
        assert_eq!(
            r.conds,
            [
                Cond::Proto("tcp".into()),
                Cond::Dport(vec![(22, 22), (8000, 8080)])
            ]
        );
        let r = rule("x", "ct status dnat accept");
        assert_eq!(r.conds, [Cond::Never]);
        let r = rule("x", "fib saddr . iif oif missing drop");
        assert!(matches!(r.conds[0], Cond::Unknown(_)), "{r:?}");
        assert_eq!(r.action, Action::Drop);
    }

    #[test]
    fn reads_chains_and_policies() {
        let set = table(
            "table inet firewalld { # handle 3\n\tchain filter_FORWARD { # handle 1\n\t\ttype filter hook forward priority filter + 10; policy accept;\n\t\tjump filter_FORWARD_ZONES # handle 9\n\t\treject with icmpx admin-prohibited\n\t}\n\tchain filter_FORWARD_ZONES {\n\t\tgoto filter_FWD_public\n\t}\n}\n",
        );
        assert_eq!(set.policies.get("filter_FORWARD"), Some(&(false, 0)));
        let fwd = &set.chains["filter_FORWARD"];
        assert_eq!(fwd.len(), 2);
        assert_eq!(fwd[0].action, Action::Jump("filter_FORWARD_ZONES".into()));
        assert_eq!(fwd[0].text, "jump filter_FORWARD_ZONES");
        assert_eq!(set.chains["filter_FORWARD_ZONES"].len(), 1);
    }
}
