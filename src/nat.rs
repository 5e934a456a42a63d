//! Masquerade for pod traffic leaving the cluster: one chain per pool in the `nat` table and
//! one jump to it from POSTROUTING, never a rule per pod. The steady-state ADD costs a single
//! `iptables -C`.

use ipnetwork::IpNetwork;
use iptables::IPTables;
use sha2::{Digest, Sha256};

use crate::cni::error::{CniError, Result};

const TABLE: &str = "nat";
const POSTROUTING: &str = "POSTROUTING";
/// Multicast is link-local business; masquerading it breaks it.
const MULTICAST: &str = "224.0.0.0/4";
const MULTICAST6: &str = "ff00::/8";

/// The masquerade rules of one pool, in `iptables` or `ip6tables` by the pool's family.
#[derive(Debug, Clone)]
pub struct PoolNat {
    pub subnet: IpNetwork,
    /// Only those of the pool's family are used.
    pub non_masquerade: Vec<IpNetwork>,
}

/// A running `iptables -C` for a pool's jump.
pub struct InstalledProbe(std::process::Child);

impl InstalledProbe {
    /// True when the jump is in place. Any failure of `-C` (missing rule, missing chain) reads
    /// as "not installed": installing is the cure for all of them.
    pub fn wait(self) -> Result<bool> {
        let out = self
            .0
            .wait_with_output()
            .map_err(|e| CniError::nat(format!("wait for iptables: {e}")))?;
        if !out.status.success() {
            crate::debug!(
                "masquerade jump not found: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out.status.success())
    }
}

/// Serializes NAT installs when there is no pool lock to hold (delegated IPAM).
pub fn lock() -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::path::Path::new(crate::config::DEFAULT_DATA_DIR);
    std::fs::create_dir_all(dir)
        .map_err(|e| CniError::nat(format!("create {}: {e}", dir.display())))?;
    let path = dir.join("nat.lock");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| CniError::nat(format!("open {}: {e}", path.display())))?;
    file.lock()
        .map_err(|e| CniError::nat(format!("lock {}: {e}", path.display())))?;
    Ok(file)
}

fn iptables(cmd: &'static str) -> IPTables {
    // Built directly: iptables::new() would exec `iptables --version` on every call, and every
    // iptables we run on (1.6+, Debian 12 ships 1.8.9) has -C and --wait. Only `-S` listings
    // are used (see `chain_exists`), which never resolve names, so `is_numeric` stays off:
    // iptables rejects `-S … -n`.
    IPTables {
        cmd,
        has_check: true,
        has_wait: true,
        is_numeric: false,
    }
}

/// The crate's `chain_exists` runs `-L` without `-n`, which resolves every address in the
/// chain through DNS and hangs a DEL for 20 s on a node whose resolver is unreachable.
fn chain_exists(ipt: &IPTables, chain: &str) -> Result<bool> {
    ipt.execute(TABLE, &format!("-S {chain}"))
        .map(|out| out.status.success())
        .map_err(|e| ipt_err(format_args!("list chain {chain}"), e))
}

fn ipt_err(what: impl std::fmt::Display, e: Box<dyn std::error::Error>) -> CniError {
    CniError::nat(format!(
        "{what}: {e}; check that the iptables commands work on this node (`iptables -t nat -S`, `ip6tables -t nat -S` for IPv6 pools)"
    ))
}

impl PoolNat {
    /// `iptables` or `ip6tables`: the pool's family decides.
    pub fn command(&self) -> &'static str {
        if self.subnet.is_ipv6() {
            "ip6tables"
        } else {
            "iptables"
        }
    }

    fn ipt(&self) -> IPTables {
        iptables(self.command())
    }

    /// The exceptions that apply to this pool's family.
    fn exceptions(&self) -> impl Iterator<Item = &IpNetwork> {
        let v6 = self.subnet.is_ipv6();
        self.non_masquerade
            .iter()
            .filter(move |c| c.is_ipv6() == v6)
    }

    /// The comment that marks the pool's jump; teardown finds jumps by it.
    fn pool_comment(&self) -> String {
        format!("routed-cni pool {}", self.subnet)
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
        format!("RCNI-{hex}")
    }

    /// The jump as separate arguments, for running iptables directly.
    pub fn jump_args(&self) -> Vec<String> {
        vec![
            "-s".into(),
            self.subnet.to_string(),
            "-m".into(),
            "comment".into(),
            "--comment".into(),
            self.pool_comment(),
            "-j".into(),
            self.chain(),
        ]
    }

    /// Starts `iptables -C` for the jump without waiting: ADD runs it while it does its
    /// netlink work, which hides the exec and ruleset load (~2 ms) behind it.
    pub fn probe(&self) -> Result<InstalledProbe> {
        std::process::Command::new(self.command())
            .args(["-t", TABLE, "-C", POSTROUTING])
            .args(self.jump_args())
            .arg("--wait")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map(InstalledProbe)
            .map_err(|e| {
                CniError::nat(format!(
                    "run {}: {e}; is the iptables package installed on this node?",
                    self.command()
                ))
            })
    }

    pub fn jump_rule(&self) -> String {
        format!(
            "-s {} -m comment --comment \"{}\" -j {}",
            self.subnet,
            self.pool_comment(),
            self.chain()
        )
    }

    pub fn chain_rules(&self) -> Vec<String> {
        let multicast = if self.subnet.is_ipv6() {
            MULTICAST6
        } else {
            MULTICAST
        };
        let mut rules: Vec<String> = self
            .exceptions()
            .map(|c| {
                format!("-d {c} -m comment --comment \"routed-cni no masquerade to {c}\" -j RETURN")
            })
            .collect();
        rules.push(format!(
            "! -d {multicast} -m comment --comment \"routed-cni masquerade {}\" -j MASQUERADE",
            self.subnet
        ));
        rules
    }

    /// One `iptables -C`: is the pool's jump in place?
    pub fn is_installed(&self) -> Result<bool> {
        self.ipt()
            .exists(TABLE, POSTROUTING, &self.jump_rule())
            .map_err(|e| ipt_err("check masquerade jump", e))
    }

    /// Creates (or refills) the pool's chain, then adds the jump, then drops jumps of the same
    /// pool left by an older config. Call with the pool lock held so two ADDs do not race.
    pub fn install(&self) -> Result<()> {
        let ipt = self.ipt();
        let chain = self.chain();
        if self.is_installed()? {
            return Ok(());
        }
        if chain_exists(&ipt, &chain)? {
            ipt.flush_chain(TABLE, &chain)
                .map_err(|e| ipt_err(format_args!("flush chain {chain}"), e))?;
        } else {
            ipt.new_chain(TABLE, &chain)
                .map_err(|e| ipt_err(format_args!("create chain {chain}"), e))?;
        }
        for rule in self.chain_rules() {
            ipt.append(TABLE, &chain, &rule)
                .map_err(|e| ipt_err(format_args!("append to {chain}"), e))?;
        }
        crate::crashpoint::here("nat:chain-filled");
        ipt.append(TABLE, POSTROUTING, &self.jump_rule())
            .map_err(|e| ipt_err(format_args!("add jump POSTROUTING -> {chain}"), e))?;
        self.remove_jumps(|c| c != chain)
    }

    /// CHECK: the jump and every rule of the chain are in place; names the first one missing.
    pub fn check(&self) -> Result<()> {
        let ipt = self.ipt();
        let chain = self.chain();
        let mut wanted = vec![(POSTROUTING.to_string(), self.jump_rule())];
        wanted.extend(self.chain_rules().into_iter().map(|r| (chain.clone(), r)));
        for (in_chain, rule) in wanted {
            let present = ipt
                .exists(TABLE, &in_chain, &rule)
                .map_err(|e| ipt_err("check masquerade rules", e))?;
            if !present {
                return Err(CniError::nat(format!(
                    "masquerade rule missing: `{cmd} -t nat -A {in_chain} {rule}` (see `{cmd} -t nat -S {in_chain}`)",
                    cmd = self.command()
                )));
            }
        }
        Ok(())
    }

    /// The pool whose jump covers `ip`, found by the jumps' comments: with delegated IPAM the
    /// pool is whatever network the IPAM plugin returned at ADD, which CHECK no longer has.
    pub fn installed_pool_for(ip: std::net::IpAddr) -> Result<Option<IpNetwork>> {
        let cmd = if ip.is_ipv6() {
            "ip6tables"
        } else {
            "iptables"
        };
        let rules = iptables(cmd)
            .list(TABLE, POSTROUTING)
            .map_err(|e| ipt_err("list POSTROUTING", e))?;
        Ok(rules
            .iter()
            .filter_map(|line| line.split("routed-cni pool ").nth(1))
            .filter_map(|rest| rest.split('"').next())
            .filter_map(|subnet| subnet.parse::<IpNetwork>().ok())
            .find(|net| net.contains(ip)))
    }

    /// Removes every jump and chain of this pool (any config). Missing rules are fine.
    pub fn uninstall(&self) -> Result<()> {
        self.remove_jumps(|_| true)?;
        // The chain of the current config may have lost its jump (someone flushed POSTROUTING).
        let ipt = self.ipt();
        let chain = self.chain();
        if chain_exists(&ipt, &chain)? {
            ipt.flush_chain(TABLE, &chain)
                .and_then(|_| ipt.delete_chain(TABLE, &chain))
                .map_err(|e| ipt_err(format_args!("delete chain {chain}"), e))?;
        }
        Ok(())
    }

    fn remove_jumps(&self, select: impl Fn(&str) -> bool) -> Result<()> {
        let ipt = self.ipt();
        let marker = self.pool_comment();
        let rules = ipt
            .list(TABLE, POSTROUTING)
            .map_err(|e| ipt_err("list POSTROUTING", e))?;
        let mut errors = Vec::new();
        for line in rules {
            if !line.contains(&marker) {
                continue;
            }
            let Some(target) = line.rsplit_once("-j ").map(|(_, t)| t.trim().to_string()) else {
                continue;
            };
            if !target.starts_with("RCNI-") || !select(&target) {
                continue;
            }
            let spec = line.trim_start_matches("-A POSTROUTING").trim();
            if let Err(e) = ipt.delete(TABLE, POSTROUTING, spec) {
                errors.push(ipt_err(format_args!("delete jump to {target}"), e));
                continue;
            }
            if chain_exists(&ipt, &target).unwrap_or(false) {
                if let Err(e) = ipt
                    .flush_chain(TABLE, &target)
                    .and_then(|_| ipt.delete_chain(TABLE, &target))
                {
                    errors.push(ipt_err(format_args!("delete chain {target}"), e));
                }
            }
        }
        crate::cni::error::join(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_fit_and_follow_config() {
        let a = PoolNat {
            subnet: "10.244.1.0/24".parse().unwrap(),
            non_masquerade: vec!["10.244.0.0/16".parse().unwrap()],
        };
        let mut b = a.clone();
        b.non_masquerade.push("10.96.0.0/12".parse().unwrap());
        assert!(
            a.chain().len() <= 28,
            "iptables chain names are at most 28 chars"
        );
        assert!(a.chain().starts_with("RCNI-"));
        assert_ne!(a.chain(), b.chain());
        assert_eq!(
            a.jump_rule(),
            format!(
                "-s 10.244.1.0/24 -m comment --comment \"routed-cni pool 10.244.1.0/24\" -j {}",
                a.chain()
            )
        );
        assert_eq!(a.jump_rule().replace('"', ""), a.jump_args().join(" "));
        assert_eq!(b.chain_rules().len(), 3);
        assert!(
            b.chain_rules()[2].contains("! -d 224.0.0.0/4")
                && b.chain_rules()[2].ends_with("-j MASQUERADE")
        );
    }
}
