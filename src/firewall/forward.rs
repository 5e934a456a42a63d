//! Forwarding that survives a FORWARD policy DROP (Docker, ufw) or a REJECT at the end of
//! FORWARD (RHEL's iptables-services): one chain per pool in the `filter` table that accepts
//! traffic from and to the pool, jumped to from the top of FORWARD, never a rule per pod.
//!
//! The accepts match addresses only, no conntrack state, like flannel's FLANNEL-FWD: pods are
//! routed, not hidden, so a new connection from outside to a pod (`-d pool`) must pass as much
//! as a reply; the traffic a pod originates (`-s pool`) is the pod's to send. The jump is
//! inserted at position 1 because an appended one loses to any DROP/REJECT before it
//! (flannel#2116). An ACCEPT here ends the filter FORWARD chain, so iptables FORWARD rules
//! after it (NetworkPolicy enforcers of the iptables kind) no longer see pod traffic; policy
//! for routed-cni belongs in an nftables table of its own, which an ACCEPT here cannot skip.

use ipnetwork::IpNetwork;
use sha2::{Digest, Sha256};

use super::iptables::{Listing, Rule, Transaction};

pub const TABLE: &str = "filter";
pub const FORWARD: &str = "FORWARD";
/// `RCNI-FWD-` + 16 hex: 25 characters, under iptables' 28.
pub const CHAIN_PREFIX: &str = "RCNI-FWD-";
/// The comment of the FORWARD jump (the same words as the nat jump's: "routed-cni pool ").
const POOL_COMMENT: &str = "routed-cni pool ";

/// The forward accepts of one pool.
#[derive(Debug, Clone)]
pub struct Forward {
    pub subnet: IpNetwork,
}

/// A FORWARD jump that carries a pool's comment and goes to one of our forward chains.
#[derive(Debug, Clone)]
pub struct ForwardJump {
    pub pool: String,
    pub chain: String,
    pub rule: Rule,
}

/// The pool jumps in a filter table's listing, in FORWARD order.
pub fn jumps(filter: &Listing) -> Vec<ForwardJump> {
    filter
        .rules_of(FORWARD)
        .filter_map(|r| {
            let pool = r.arg("--comment")?.strip_prefix(POOL_COMMENT)?;
            let chain = r
                .target
                .as_deref()
                .filter(|t| t.starts_with(CHAIN_PREFIX))?;
            Some(ForwardJump {
                pool: pool.to_string(),
                chain: chain.to_string(),
                rule: r.clone(),
            })
        })
        .collect()
}

impl Forward {
    /// `RCNI-FWD-` + 16 hex of sha256 of the pool: one chain per pool, whatever the config.
    pub fn chain(&self) -> String {
        let digest = Sha256::digest(format!("forward {}", self.subnet).as_bytes());
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02X}")).collect();
        format!("{CHAIN_PREFIX}{hex}")
    }

    /// The FORWARD rule that sends every forwarded packet through the pool's chain (both
    /// directions, so it matches no address itself).
    pub fn jump(&self) -> Rule {
        let comment = format!("{POOL_COMMENT}{}", self.subnet);
        let args = ["-m", "comment", "--comment", &comment, "-j", &self.chain()];
        Rule::new(FORWARD, args.map(String::from).to_vec())
    }

    /// The chain's rules: accept from the pool, accept to the pool.
    pub fn rules(&self) -> Vec<Rule> {
        let chain = self.chain();
        let net = self.subnet.to_string();
        [("-s", "from"), ("-d", "to")]
            .into_iter()
            .map(|(flag, dir)| {
                let comment = format!("routed-cni forward {dir} {net}");
                let args = [flag, &net, "-m", "comment", "--comment", &comment, "-j"];
                let mut args = args.map(String::from).to_vec();
                args.push("ACCEPT".into());
                Rule::new(&chain, args)
            })
            .collect()
    }

    /// True when `filter` has the jump and the chain holds exactly our rules.
    pub fn is_installed(&self, filter: &Listing) -> bool {
        let jump = self.jump();
        let chain = self.chain();
        let have: Vec<&Rule> = filter.rules_of(&chain).collect();
        let want = self.rules();
        filter.rules_of(FORWARD).any(|r| r.same_as(&jump))
            && have.len() == want.len()
            && have.iter().zip(&want).all(|(h, w)| h.same_as(w))
    }

    /// Fills the chain (creating it, or emptying it first) and puts one jump at the top of
    /// FORWARD, removing any jump of the pool already there (a second copy, or one left below
    /// a rule inserted since).
    pub fn install(&self, txn: &mut Transaction, filter: &Listing) {
        let chain = self.chain();
        txn.declare(&chain);
        for rule in self.rules() {
            txn.append(&rule);
        }
        let pool = self.subnet.to_string();
        let old: Vec<ForwardJump> = jumps(filter)
            .into_iter()
            .filter(|j| j.pool == pool)
            .collect();
        for j in &old {
            txn.delete(&j.rule);
        }
        txn.insert_first(&self.jump());
        for j in old.iter().filter(|j| j.chain != chain) {
            txn.remove_chain(&j.chain);
        }
    }

    /// Removes every jump of the pool and the chain, whether or not they exist.
    pub fn uninstall(&self, txn: &mut Transaction, filter: &Listing) {
        let pool = self.subnet.to_string();
        let old: Vec<ForwardJump> = jumps(filter)
            .into_iter()
            .filter(|j| j.pool == pool)
            .collect();
        for j in &old {
            txn.delete(&j.rule);
        }
        txn.remove_chain(&self.chain());
        for j in &old {
            txn.remove_chain(&j.chain);
        }
    }

    /// True when `filter` holds anything of this pool: a jump or its chain.
    pub fn present(&self, filter: &Listing) -> bool {
        let pool = self.subnet.to_string();
        filter.chains.contains(&self.chain()) || jumps(filter).iter().any(|j| j.pool == pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(s: &str) -> Forward {
        Forward {
            subnet: s.parse().unwrap(),
        }
    }

    #[test]
    fn chain_name_fits_and_rules_accept_both_directions() {
        let f = fwd("10.244.1.0/24");
        let chain = f.chain();
        assert!(
            chain.len() <= 28 && chain.starts_with("RCNI-FWD-"),
            "{chain}"
        );
        assert_eq!(chain.len(), 25);
        assert_ne!(chain, fwd("10.244.2.0/24").chain());
        assert_eq!(
            f.jump().spec,
            format!("-m comment --comment \"routed-cni pool 10.244.1.0/24\" -j {chain}")
        );
        let rules: Vec<String> = f.rules().into_iter().map(|r| r.spec).collect();
        assert_eq!(
            rules,
            [
                "-s 10.244.1.0/24 -m comment --comment \"routed-cni forward from 10.244.1.0/24\" -j ACCEPT",
                "-d 10.244.1.0/24 -m comment --comment \"routed-cni forward to 10.244.1.0/24\" -j ACCEPT",
            ]
        );
    }

    #[test]
    fn install_puts_one_jump_first_and_replaces_stale_ones() {
        let f = fwd("fd00:10:244:1::/64");
        let c = f.chain();
        // Our jump pushed down by a DROP inserted since: it moves back to the top.
        let listed = Listing::parse(&format!(
            "-P FORWARD DROP\n-N {c}\n-A FORWARD -s fd00:10:244:1::/64 -j DROP\n-A FORWARD {j}\n",
            j = f.jump().spec
        ));
        let mut txn = Transaction::new(TABLE);
        f.install(&mut txn, &listed);
        assert_eq!(
            txn.text(),
            format!(
                "*filter\n:{c} - [0:0]\n\
                 -A {c} -s fd00:10:244:1::/64 -m comment --comment \"routed-cni forward from fd00:10:244:1::/64\" -j ACCEPT\n\
                 -A {c} -d fd00:10:244:1::/64 -m comment --comment \"routed-cni forward to fd00:10:244:1::/64\" -j ACCEPT\n\
                 -D FORWARD {j}\n-I FORWARD 1 {j}\nCOMMIT\n",
                j = f.jump().spec
            )
        );
        assert!(!f.is_installed(&listed), "chain empty");
        let full = Listing::parse(&format!(
            "-N {c}\n-A FORWARD {}\n-A {c} {}\n-A {c} {}\n",
            f.jump().spec,
            f.rules()[0].spec,
            f.rules()[1].spec
        ));
        assert!(f.is_installed(&full));
        assert!(f.present(&full) && f.present(&listed));
        assert!(!f.present(&Listing::default()));
    }

    #[test]
    fn uninstall_removes_the_jumps_and_the_chain_even_when_gone() {
        let f = fwd("10.244.1.0/24");
        let other = fwd("10.244.2.0/24");
        let c = f.chain();
        let listed = Listing::parse(&format!(
            "-A FORWARD {}\n-A FORWARD {}\n",
            other.jump().spec,
            f.jump().spec
        ));
        let mut txn = Transaction::new(TABLE);
        f.uninstall(&mut txn, &listed);
        assert_eq!(
            txn.text(),
            format!(
                "*filter\n:{c} - [0:0]\n-D FORWARD {}\n-X {c}\nCOMMIT\n",
                f.jump().spec
            )
        );
        let mut txn = Transaction::new(TABLE);
        f.uninstall(&mut txn, &Listing::default());
        assert_eq!(
            txn.text(),
            format!("*filter\n:{c} - [0:0]\n-X {c}\nCOMMIT\n")
        );
    }
}
