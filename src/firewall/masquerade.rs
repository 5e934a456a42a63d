//! Masquerade for pod traffic leaving the cluster: one chain per pool in the `nat` table and
//! one jump to it from POSTROUTING, never a rule per pod. What the rules are and the
//! transactions that install and remove them; `pool` runs them, with the forward accepts, in
//! the backend(s) the node uses.

use ipnetwork::IpNetwork;
use sha2::{Digest, Sha256};

use super::iptables::{Iptables, Listing, Rule, Transaction};
use super::Family;
use crate::cni::error::{CniError, Result};
use crate::config::NetConf;

const TABLE: &str = "nat";
const POSTROUTING: &str = "POSTROUTING";
const CHAIN_PREFIX: &str = "RCNI-";
/// The comment that marks a pool's jump; teardown, CHECK and audit find jumps by it.
const POOL_COMMENT: &str = "routed-cni pool ";
/// Multicast is link-local business; masquerading it breaks it.
const MULTICAST: &str = "224.0.0.0/4";
const MULTICAST6: &str = "ff00::/8";

/// The masquerade of one pool, in `iptables` or `ip6tables` by the pool's family.
#[derive(Debug, Clone)]
pub struct Masquerade {
    pub subnet: IpNetwork,
    /// Only those of the pool's family are used.
    pub non_masquerade: Vec<IpNetwork>,
}

/// A POSTROUTING jump that carries a pool's comment.
#[derive(Debug, Clone)]
pub struct PoolJump {
    /// The pool as the comment names it.
    pub pool: String,
    /// The chain it jumps to.
    pub chain: String,
    pub rule: Rule,
}

/// Our masquerade as one family's nat table has it.
#[derive(Debug, Clone)]
pub struct Installed {
    pub program: &'static str,
    pub jumps: Vec<PoolJump>,
    /// Every `RCNI-` chain, with or without a jump to it.
    pub chains: Vec<String>,
}

/// One pool's rules as the node has them, with packet counters.
#[derive(Debug, Clone)]
pub struct PoolListing {
    /// POSTROUTING rules carrying the pool's comment.
    pub jumps: Vec<Rule>,
    /// 1-based position of the first jump in POSTROUTING, and how many rules it has.
    pub jump_position: Option<(usize, usize)>,
    /// The pool's chain: the jump's target, else a chain whose MASQUERADE names the pool.
    pub chain: Option<String>,
    pub chain_rules: Vec<Rule>,
}

/// The jumps in `listing` that carry a pool's comment and go to one of our chains.
fn pool_jumps(listing: &Listing) -> Vec<PoolJump> {
    listing
        .rules_of(POSTROUTING)
        .filter_map(|r| {
            let pool = pool_of(r)?;
            let chain = r
                .target
                .as_deref()
                .filter(|t| t.starts_with(CHAIN_PREFIX))?;
            Some(PoolJump {
                pool: pool.to_string(),
                chain: chain.to_string(),
                rule: r.clone(),
            })
        })
        .collect()
}

impl Installed {
    /// One `-S` of the family's nat table.
    pub fn read(family: Family) -> Result<Installed> {
        let ipt = Iptables::new(family);
        let listing = ipt.list(TABLE, None)?.unwrap_or_default();
        Ok(Installed::from_listing(ipt.program(), &listing))
    }

    /// What `-S` printed, read the way `read` does.
    pub fn parse(family: Family, text: &str) -> Installed {
        Installed::from_listing(Iptables::new(family).program(), &Listing::parse(text))
    }

    fn from_listing(program: &'static str, listing: &Listing) -> Installed {
        Installed {
            program,
            jumps: pool_jumps(listing),
            chains: listing
                .chains
                .iter()
                .filter(|c| c.starts_with(CHAIN_PREFIX))
                .cloned()
                .collect(),
        }
    }
}

impl Masquerade {
    /// The masquerade of a pool of `conf`; `nonMasqueradeCIDRs` defaults to the pool itself.
    pub fn for_pool(conf: &NetConf, subnet: IpNetwork) -> Masquerade {
        let same_family = conf
            .non_masquerade_cidrs
            .iter()
            .any(|c| c.is_ipv6() == subnet.is_ipv6());
        let non_masquerade = if !same_family {
            vec![subnet]
        } else {
            conf.non_masquerade_cidrs.clone()
        };
        Masquerade {
            subnet,
            non_masquerade,
        }
    }

    fn family(&self) -> Family {
        Family::of(self.subnet.ip())
    }

    fn iptables(&self) -> Iptables {
        Iptables::new(self.family())
    }

    /// The command that lists and repairs this pool's rules.
    pub fn program(&self) -> &'static str {
        self.iptables().program()
    }

    /// The exceptions that apply to this pool's family.
    fn exceptions(&self) -> impl Iterator<Item = &IpNetwork> {
        let v6 = self.subnet.is_ipv6();
        self.non_masquerade
            .iter()
            .filter(move |c| c.is_ipv6() == v6)
    }

    fn pool_comment(&self) -> String {
        format!("{POOL_COMMENT}{}", self.subnet)
    }

    /// `RCNI-` + 16 hex of sha256 of the pool and its exceptions: a config that changes
    /// `nonMasqueradeCIDRs` gets a fresh chain instead of silently keeping the old rules.
    pub fn chain(&self) -> String {
        let mut key = self.subnet.to_string();
        for c in self.exceptions() {
            key.push(' ');
            key.push_str(&c.to_string());
        }
        let digest = Sha256::digest(key.as_bytes());
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02X}")).collect();
        format!("{CHAIN_PREFIX}{hex}")
    }

    /// The POSTROUTING rule that sends the pool's traffic to its chain.
    pub fn jump(&self) -> Rule {
        let args = [
            "-s",
            &self.subnet.to_string(),
            "-m",
            "comment",
            "--comment",
            &self.pool_comment(),
            "-j",
            &self.chain(),
        ];
        Rule::new(POSTROUTING, args.map(String::from).to_vec())
    }

    /// The rules of the pool's chain, in order: a RETURN per exception, then MASQUERADE.
    pub fn rules(&self) -> Vec<Rule> {
        let chain = self.chain();
        let multicast = if self.subnet.is_ipv6() {
            MULTICAST6
        } else {
            MULTICAST
        };
        let mut rules: Vec<Rule> = self
            .exceptions()
            .map(|c| {
                let comment = format!("routed-cni no masquerade to {c}");
                let args = ["-d", &c.to_string(), "-m", "comment", "--comment", &comment];
                let mut args = args.map(String::from).to_vec();
                args.extend(["-j".into(), "RETURN".into()]);
                Rule::new(&chain, args)
            })
            .collect();
        let comment = format!("routed-cni masquerade {}", self.subnet);
        let args = ["!", "-d", multicast, "-m", "comment", "--comment", &comment];
        let mut args = args.map(String::from).to_vec();
        args.extend(["-j".into(), "MASQUERADE".into()]);
        rules.push(Rule::new(&chain, args));
        rules
    }

    /// The jump as `-A POSTROUTING` takes it.
    pub fn jump_rule(&self) -> String {
        self.jump().spec
    }

    /// The chain's rules as `-A <chain>` takes them.
    pub fn chain_rules(&self) -> Vec<String> {
        self.rules().into_iter().map(|r| r.spec).collect()
    }

    /// The transaction that fills the pool's chain (creating it, or emptying it first), adds
    /// the jump, and removes jumps and chains of the same pool left by an older config, as
    /// found in `postrouting`.
    pub(super) fn install_transaction(&self, postrouting: &Listing) -> Transaction {
        let chain = self.chain();
        let mut txn = Transaction::new(TABLE);
        txn.declare(&chain);
        for rule in self.rules() {
            txn.append(&rule);
        }
        txn.append(&self.jump());
        self.remove_jumps(&mut txn, postrouting, |c| c != chain);
        txn
    }

    /// The transaction that removes every jump and chain of this pool (any config), including
    /// the current config's chain when something flushed its jump.
    pub(super) fn uninstall_transaction(&self, postrouting: &Listing) -> Transaction {
        let mut txn = Transaction::new(TABLE);
        self.remove_jumps(&mut txn, postrouting, |_| true);
        txn.remove_chain(&self.chain());
        txn
    }

    fn remove_jumps(
        &self,
        txn: &mut Transaction,
        postrouting: &Listing,
        select: impl Fn(&str) -> bool,
    ) {
        let pool = self.subnet.to_string();
        let old: Vec<PoolJump> = pool_jumps(postrouting)
            .into_iter()
            .filter(|j| j.pool == pool && select(&j.chain))
            .collect();
        for j in &old {
            txn.delete(&j.rule);
        }
        for j in &old {
            txn.remove_chain(&j.chain);
        }
    }

    /// True when `nat` has the jump and the chain holds exactly the current config's rules.
    pub(super) fn is_installed(&self, nat: &Listing) -> bool {
        let chain = self.chain();
        let have: Vec<&Rule> = nat.rules_of(&chain).collect();
        let want = self.rules();
        nat.rules.iter().any(|r| r.same_as(&self.jump()))
            && have.len() == want.len()
            && have.iter().zip(&want).all(|(h, w)| h.same_as(w))
    }

    /// True when `nat` holds a jump of this pool (any config) or the current chain.
    pub(super) fn present(&self, nat: &Listing) -> bool {
        let pool = self.subnet.to_string();
        nat.chains.contains(&self.chain()) || pool_jumps(nat).iter().any(|j| j.pool == pool)
    }

    /// CHECK against a listing of the nat table: the jump and every rule of the chain are in
    /// place; names the first one missing, as `program` would add it.
    pub(super) fn check_in(&self, nat: &Listing, program: &str) -> Result<()> {
        let mut wanted = vec![self.jump()];
        wanted.extend(self.rules());
        for rule in wanted {
            if !nat.rules.iter().any(|r| r.same_as(&rule)) {
                return Err(CniError::nat(format!(
                    "masquerade rule missing: `{program} -t nat -A {c} {spec}` (see `{program} -t nat -S {c}`)",
                    c = rule.chain,
                    spec = rule.spec,
                )));
            }
        }
        Ok(())
    }

    /// What the node has for the pool, with counters: two runs of `iptables` (or `ip6tables`
    /// for an IPv6 pool), three when the jump is gone and its chain has to be searched for.
    pub fn list(subnet: IpNetwork) -> Result<PoolListing> {
        let ipt = Iptables::new(Family::of(subnet.ip()));
        let post = ipt
            .list_counted(TABLE, Some(POSTROUTING))?
            .unwrap_or_default();
        let pool = subnet.to_string();
        let all_post: Vec<&Rule> = post.rules_of(POSTROUTING).collect();
        let is_jump = |r: &Rule| pool_of(r).is_some_and(|p| p == pool);
        let jumps: Vec<Rule> = all_post
            .iter()
            .filter(|r| is_jump(r))
            .map(|r| (*r).clone())
            .collect();
        let jump_position = all_post
            .iter()
            .position(|r| is_jump(r))
            .map(|i| (i + 1, all_post.len()));
        let mut chain = jumps.iter().find_map(|j| j.target.clone());
        if chain.is_none() {
            // The jump is gone; its chain may still be there.
            let masq = format!("routed-cni masquerade {subnet}");
            chain = ipt
                .list(TABLE, None)?
                .unwrap_or_default()
                .rules
                .into_iter()
                .find_map(|r| {
                    (r.chain.starts_with(CHAIN_PREFIX) && r.arg("--comment") == Some(masq.as_str()))
                        .then_some(r.chain)
                });
        }
        let chain_rules = match &chain {
            Some(c) => ipt
                .list_counted(TABLE, Some(c))?
                .unwrap_or_default()
                .rules_of(c)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        Ok(PoolListing {
            jumps,
            jump_position,
            chain,
            chain_rules,
        })
    }
}

/// The pool a rule's comment names, if it is a pool jump.
fn pool_of(r: &Rule) -> Option<&str> {
    r.arg("--comment")?.strip_prefix(POOL_COMMENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(subnet: &str, exceptions: &[&str]) -> Masquerade {
        Masquerade {
            subnet: subnet.parse().unwrap(),
            non_masquerade: exceptions.iter().map(|c| c.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn chain_names_fit_and_follow_config() {
        let a = pool("10.244.1.0/24", &["10.244.0.0/16"]);
        let b = pool("10.244.1.0/24", &["10.244.0.0/16", "10.96.0.0/12"]);
        assert!(
            a.chain().len() <= 28,
            "iptables chain names are at most 28 chars"
        );
        assert!(a.chain().starts_with("RCNI-"));
        // The hash is part of the node's state: a new one would orphan every chain.
        assert_eq!(a.chain(), "RCNI-14F68DE1BD076ADC");
        assert_ne!(a.chain(), b.chain());
        assert_eq!(
            a.jump_rule(),
            format!(
                "-s 10.244.1.0/24 -m comment --comment \"routed-cni pool 10.244.1.0/24\" -j {}",
                a.chain()
            )
        );
        assert_eq!(b.chain_rules().len(), 3);
        assert_eq!(
            b.chain_rules()[1],
            "-d 10.96.0.0/12 -m comment --comment \"routed-cni no masquerade to 10.96.0.0/12\" -j RETURN"
        );
        assert_eq!(
            b.chain_rules()[2],
            "! -d 224.0.0.0/4 -m comment --comment \"routed-cni masquerade 10.244.1.0/24\" -j MASQUERADE"
        );
        // Dual-stack exceptions: only the pool's own family lands in its chain.
        let v6 = pool("fd00:10:244:1::/64", &["10.244.0.0/16", "fd00:10:244::/48"]);
        assert_eq!(v6.chain_rules().len(), 2);
        assert!(v6.chain_rules()[1].starts_with("! -d ff00::/8 "));
        assert_eq!(v6.program(), "ip6tables");
    }

    #[test]
    fn install_is_one_transaction_that_replaces_older_configs() {
        let m = pool("10.244.1.0/24", &["10.244.0.0/16"]);
        let chain = m.chain();
        let old = pool("10.244.1.0/24", &["10.244.0.0/16", "10.96.0.0/12"]);
        let other = pool("10.244.2.0/24", &["10.244.0.0/16"]);
        let listed = Listing::parse(&format!(
            "-P POSTROUTING ACCEPT\n-A POSTROUTING -j KUBE-POSTROUTING\n-A POSTROUTING {}\n-A POSTROUTING {}\n",
            old.jump_rule(),
            other.jump_rule()
        ));
        assert_eq!(
            m.install_transaction(&listed).text(),
            format!(
                "*nat\n:{chain} - [0:0]\n:{old_chain} - [0:0]\n\
                 -A {chain} -d 10.244.0.0/16 -m comment --comment \"routed-cni no masquerade to 10.244.0.0/16\" -j RETURN\n\
                 -A {chain} ! -d 224.0.0.0/4 -m comment --comment \"routed-cni masquerade 10.244.1.0/24\" -j MASQUERADE\n\
                 -A POSTROUTING {jump}\n\
                 -D POSTROUTING {old_jump}\n\
                 -X {old_chain}\n\
                 COMMIT\n",
                old_chain = old.chain(),
                jump = m.jump_rule(),
                old_jump = old.jump_rule(),
            )
        );
        // Nothing installed yet: create, fill, jump; nothing to remove.
        let empty = m.install_transaction(&Listing::default()).text();
        assert!(!empty.contains("-D ") && !empty.contains("-X "), "{empty}");
    }

    #[test]
    fn uninstall_removes_every_config_of_the_pool_and_only_it() {
        let m = pool("10.244.1.0/24", &["10.244.0.0/16"]);
        let old = pool("10.244.1.0/24", &["10.96.0.0/12"]);
        let other = pool("10.244.2.0/24", &["10.244.0.0/16"]);
        let listed = Listing::parse(&format!(
            "-A POSTROUTING {}\n-A POSTROUTING {}\n-A POSTROUTING {}\n",
            m.jump_rule(),
            old.jump_rule(),
            other.jump_rule()
        ));
        let text = m.uninstall_transaction(&listed).text();
        assert_eq!(
            text,
            format!(
                "*nat\n:{c} - [0:0]\n:{o} - [0:0]\n-D POSTROUTING {j}\n-D POSTROUTING {oj}\n-X {c}\n-X {o}\nCOMMIT\n",
                c = m.chain(),
                o = old.chain(),
                j = m.jump_rule(),
                oj = old.jump_rule(),
            )
        );
        assert!(!text.contains(&other.chain()));
        // Nothing listed: the chain is still removed, whether or not it exists.
        assert_eq!(
            m.uninstall_transaction(&Listing::default()).text(),
            format!("*nat\n:{c} - [0:0]\n-X {c}\nCOMMIT\n", c = m.chain())
        );
    }

    #[test]
    fn installed_finds_jumps_and_chains() {
        let m = pool("fd00:10:244:1::/64", &["fd00:10:244::/48"]);
        let text = format!(
            "-P POSTROUTING ACCEPT\n-N {c}\n-N RCNI-ORPHAN\n-N KUBE-POSTROUTING\n\
             -A POSTROUTING -j KUBE-POSTROUTING\n-A POSTROUTING {j}\n",
            c = m.chain(),
            j = m.jump_rule()
        );
        let found = Installed::parse(Family::V6, &text);
        assert_eq!(found.program, "ip6tables");
        assert_eq!(found.chains, [m.chain(), "RCNI-ORPHAN".to_string()]);
        assert_eq!(found.jumps.len(), 1);
        assert_eq!(found.jumps[0].pool, "fd00:10:244:1::/64");
        assert_eq!(found.jumps[0].chain, m.chain());
        assert!(found.jumps[0].rule.same_as(&m.jump()));
    }
}
