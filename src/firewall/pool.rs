//! A pool's rules on the node: the forward accepts (always: forwarding is not optional) and
//! the masquerade (when the config asks), in the backend(s) the node uses, installed and
//! removed together.
//!
//! Costs, by design (tests/firewall.rs counts them):
//! - steady-state ADD: one `iptables-restore` that only checks (`-C`) the FORWARD jump and the
//!   POSTROUTING jump, in the backend the last install chose (the hint), run while ADD does
//!   its netlink work. A FORWARD flushed by an admin, or a POSTROUTING flushed alone, fails it;
//! - first pod of a pool, or a repair: one `iptables-save` per backend present (detection and
//!   the listing both come from it), then one `iptables-restore` per chosen backend that holds
//!   filter and nat changes together;
//! - first pod, known as such (the store found the pool empty under its lock): the same
//!   listing and restore, but ADD runs them on a thread of their own during its netlink work
//!   and probes nothing;
//! - last pod: in each backend the hint names, one blind restore that deletes the jumps and the
//!   chains (it fails whole when anything is missing or stays referenced, and then that
//!   backend is listed and cleaned as below); every other backend present is listed
//!   (`iptables-save`) and gets one restore only when it holds something of the pool, whatever
//!   detection would choose today. DEL starts these and deletes the veth while they run.

use ipnetwork::IpNetwork;
use std::net::IpAddr;
use std::process::Child;

use super::backend::{self, Choice};
use super::forward::{self, Forward};
use super::iptables::{Applying, Backend, Iptables, Listing, Saving, Tables, Transaction};
use super::masquerade::Masquerade;
use super::Family;
use crate::cni::error::{CniError, Result};
use crate::config::{IptablesBackend, NetConf};
use crate::ipam::PoolLock;

/// What `backend::read` returned: each backend present with its tables.
type Saved = Vec<(Backend, Tables)>;

/// One pool's forward accepts and masquerade.
#[derive(Debug, Clone)]
pub struct PoolRules {
    pub forward: Forward,
    /// The masquerade of the pool; installed only when `masquerade` is set, but always
    /// removed with the pool (the config may have changed since it was installed).
    pub nat: Masquerade,
    pub masquerade: bool,
    pub setting: IptablesBackend,
    /// Where installs leave their backend hint: under the config's `dataDir`, next to the
    /// store, never elsewhere on the node.
    pub hint_dir: std::path::PathBuf,
}

/// A running probe of a pool's jumps.
pub struct Probe(Child);

impl Probe {
    /// True when the jumps are in place. Any failure (missing rule, chain or table) reads as
    /// "not installed": installing is the cure for all of them.
    pub fn wait(self) -> Result<bool> {
        let out = self
            .0
            .wait_with_output()
            .map_err(|e| CniError::nat(format!("wait for iptables-restore: {e}")))?;
        if !out.status.success() {
            crate::debug!(
                "pool rules not found: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out.status.success())
    }
}

/// A removal of a pool's rules under way (`PoolRules::start_uninstall`).
pub struct Removal {
    rules: PoolRules,
    steps: Vec<(Backend, Step)>,
}

enum Step {
    /// The blind removal, in a backend the hint names.
    Blind(Applying),
    /// The listing of a backend the hint does not name (or of every backend, see
    /// `blind_backends`).
    Listing(Saving),
}

impl Removal {
    /// Waits for every step; a blind removal that failed (something missing, or a second
    /// jump still holding a chain) falls back to listing that backend and removing what is
    /// left, so a partial state (jump gone, chain still there) is cleaned too.
    pub fn finish(self) -> Result<()> {
        let family = self.rules.family();
        for (b, step) in self.steps {
            let ipt = Iptables::of(family, b);
            let saved = match step {
                Step::Blind(applying) => match applying.wait() {
                    Ok(()) => continue,
                    Err(e) => {
                        crate::debug!("blind removal in {} failed, listing: {e}", b.name());
                        ipt.spawn_save().and_then(Saving::wait)
                    }
                },
                Step::Listing(saving) => saving.wait(),
            };
            match saved {
                Ok(tables) => ipt.apply_all(&self.rules.uninstall_transactions(&tables))?,
                // As `backend::read`: a backend that cannot be listed holds nothing of ours.
                Err(e) => crate::debug!("{} not readable: {e}", b.name()),
            }
        }
        // The pool's rules are gone from the node: so is its hint, like every other file of
        // ours (the pool's next first pod detects again).
        backend::forget(&self.rules.hint_dir, &self.rules.forward.subnet);
        Ok(())
    }
}

fn table<'a>(tables: &'a [(String, Listing)], name: &str) -> Option<&'a Listing> {
    tables.iter().find(|(t, _)| t == name).map(|(_, l)| l)
}

impl PoolRules {
    pub fn for_pool(conf: &NetConf, subnet: IpNetwork) -> PoolRules {
        PoolRules {
            forward: Forward { subnet },
            nat: Masquerade::for_pool(conf, subnet),
            masquerade: conf.masquerade,
            setting: conf.iptables_backend,
            hint_dir: conf.data_dir.join(backend::HINT_DIR),
        }
    }

    fn family(&self) -> Family {
        Family::of(self.forward.subnet.ip())
    }

    /// The backend the steady-state probe asks: the forced one, else the primary of the last
    /// install, else nft (a wrong guess costs one detection, on the first pod anyway).
    fn probe_backend(&self) -> Backend {
        match self.setting {
            IptablesBackend::Nft => Backend::Nft,
            IptablesBackend::Legacy => Backend::Legacy,
            IptablesBackend::Auto => backend::hint(&self.hint_dir, &self.forward.subnet)
                .and_then(|b| b.first().copied())
                .unwrap_or(Backend::Nft),
        }
    }

    /// `-C` of both jumps, filter first.
    fn checks(&self) -> Vec<Transaction> {
        let mut filter = Transaction::new(forward::TABLE);
        filter.check(&self.forward.jump());
        let mut txns = vec![filter];
        if self.masquerade {
            let mut nat = Transaction::new("nat");
            nat.check(&self.nat.jump());
            txns.push(nat);
        }
        txns
    }

    /// Starts the steady-state probe without waiting: ADD runs it while it does its netlink
    /// work, which hides the exec (~2-3 ms) behind it.
    pub fn probe(&self) -> Result<Probe> {
        Iptables::of(self.family(), self.probe_backend())
            .spawn_checks(&self.checks())
            .map(Probe)
    }

    /// The changes that bring one backend's tables to this pool's rules; empty when they
    /// are all in place.
    fn install_transactions(&self, tables: &[(String, Listing)]) -> Vec<Transaction> {
        let empty = Listing::default();
        let filter = table(tables, forward::TABLE).unwrap_or(&empty);
        let nat = table(tables, "nat").unwrap_or(&empty);
        let mut txns = Vec::new();
        if !self.forward.is_installed(filter) {
            let mut txn = Transaction::new(forward::TABLE);
            self.forward.install(&mut txn, filter);
            txns.push(txn);
        }
        if self.masquerade && !self.nat.is_installed(nat) {
            txns.push(self.nat.install_transaction(nat));
        }
        txns
    }

    /// The changes that remove everything of this pool from one backend's tables; empty
    /// when it holds nothing of the pool (so a backend we never wrote to is not touched).
    fn uninstall_transactions(&self, tables: &[(String, Listing)]) -> Vec<Transaction> {
        let mut txns = Vec::new();
        if let Some(filter) = table(tables, forward::TABLE).filter(|f| self.forward.present(f)) {
            let mut txn = Transaction::new(forward::TABLE);
            self.forward.uninstall(&mut txn, filter);
            txns.push(txn);
        }
        if let Some(nat) = table(tables, "nat").filter(|n| self.nat.present(n)) {
            txns.push(self.nat.uninstall_transaction(nat));
        }
        txns
    }

    /// What the install reads: every backend present for `auto`, the forced one otherwise.
    fn read(&self) -> Result<Saved> {
        let family = self.family();
        Ok(match self.setting {
            IptablesBackend::Auto => backend::read(family),
            IptablesBackend::Nft => {
                vec![(Backend::Nft, Iptables::of(family, Backend::Nft).save()?)]
            }
            IptablesBackend::Legacy => vec![(
                Backend::Legacy,
                Iptables::of(family, Backend::Legacy).save()?,
            )],
        })
    }

    /// Installs (or repairs) the pool's rules in every backend the node uses: one
    /// `iptables-save` per backend, then one restore per backend that lacks something. Call
    /// with the pool lock held so two ADDs do not race.
    pub fn install(&self) -> Result<()> {
        let family = self.family();
        let saved = self.read()?;
        let choice = backend::choose(self.setting, &saved);
        crate::debug!(
            "{} rules for {} go to {:?}: {}",
            crate::config::family_name(self.forward.subnet.ip()),
            self.forward.subnet,
            choice.backends,
            choice.why
        );
        let none = Vec::new();
        for b in &choice.backends {
            let tables = saved.iter().find(|(s, _)| s == b).map_or(&none, |(_, t)| t);
            let txns = self.install_transactions(tables);
            Iptables::of(family, *b).apply_all(&txns)?;
        }
        backend::remember(&self.hint_dir, &self.forward.subnet, &choice.backends);
        // Chains, rules and jumps are in; the ADD has not answered yet.
        crate::crashpoint::here("nat:chain-filled");
        Ok(())
    }

    /// Removes every rule of this pool (any config) from both backends. Missing rules are fine.
    pub fn uninstall(&self) -> Result<()> {
        self.start_uninstall()?.finish()
    }

    /// Removes the pool's rules once its last address is gone. Call with the pool lock held,
    /// so no ADD can allocate in between.
    pub fn remove_if_pool_empty(&self, lock: &PoolLock) -> Result<()> {
        match self.start_removal_if_pool_empty(lock)? {
            Some(removal) => removal.finish(),
            None => Ok(()),
        }
    }

    /// `remove_if_pool_empty` without waiting for the iptables programs: hold the pool lock
    /// until `Removal::finish` returns.
    pub fn start_removal_if_pool_empty(&self, lock: &PoolLock) -> Result<Option<Removal>> {
        if lock.is_empty()? {
            return self.start_uninstall().map(Some);
        }
        Ok(None)
    }

    /// Where a blind removal may run: the backends the last install chose (the hint; the
    /// forced one when `iptablesBackend` forces it). None without masquerade: the nat table
    /// may still hold the chain of a config that had it, which only a listing finds.
    fn blind_backends(&self) -> Vec<Backend> {
        if !self.masquerade {
            return Vec::new();
        }
        match self.setting {
            IptablesBackend::Nft => vec![Backend::Nft],
            IptablesBackend::Legacy => vec![Backend::Legacy],
            IptablesBackend::Auto => {
                backend::hint(&self.hint_dir, &self.forward.subnet).unwrap_or_default()
            }
        }
    }

    /// The blind removal of one backend: delete the jumps of this config, then the chains.
    /// The restore fails (and changes nothing in that table) when a jump is missing, or a
    /// chain is still referenced by a second jump, an older config's, or someone else's.
    fn blind_transactions(&self) -> Vec<Transaction> {
        let mut filter = Transaction::new(forward::TABLE);
        filter.delete(&self.forward.jump());
        filter.remove_chain(&self.forward.chain());
        let mut nat = Transaction::new("nat");
        nat.delete(&self.nat.jump());
        nat.remove_chain(&self.nat.chain());
        vec![filter, nat]
    }

    /// Starts removing every rule of this pool from every backend present: a blind removal
    /// where the hint says the rules went, a listing elsewhere (finished by `Removal::finish`).
    pub fn start_uninstall(&self) -> Result<Removal> {
        let family = self.family();
        let blind = self.blind_backends();
        let mut steps = Vec::new();
        for b in backend::present(family) {
            let ipt = Iptables::of(family, b);
            let step = if blind.contains(&b) {
                ipt.spawn_apply(&self.blind_transactions())?
                    .map(Step::Blind)
                    .expect("a blind removal changes something")
            } else {
                match ipt.spawn_save() {
                    Ok(saving) => Step::Listing(saving),
                    // As `backend::read`: a backend that cannot be listed holds nothing of ours.
                    Err(e) => {
                        crate::debug!("{} not readable: {e}", b.name());
                        continue;
                    }
                }
            };
            steps.push((b, step));
        }
        Ok(Removal {
            rules: self.clone(),
            steps,
        })
    }

    /// The backends CHECK looks in: the forced one, else where the last install put the
    /// rules, else what an install would choose now.
    fn installed_backends(&self) -> Result<(Vec<Backend>, Saved)> {
        if let Some(hinted) = (self.setting == IptablesBackend::Auto)
            .then(|| backend::hint(&self.hint_dir, &self.forward.subnet))
            .flatten()
        {
            return Ok((hinted, Vec::new()));
        }
        let saved = self.read()?;
        let Choice { backends, .. } = backend::choose(self.setting, &saved);
        Ok((backends, saved))
    }

    /// CHECK: in every backend the rules went to, the FORWARD jump and the forward chain's
    /// rules, and (with masquerade) the nat jump and chain. Names the first thing missing and
    /// the command that shows it.
    pub fn check(&self) -> Result<()> {
        let family = self.family();
        let (backends, mut saved) = self.installed_backends()?;
        for b in backends {
            let ipt = Iptables::of(family, b);
            let tables = match saved.iter().position(|(s, _)| *s == b) {
                Some(i) => saved.swap_remove(i).1,
                None => ipt.save()?,
            };
            let empty = Listing::default();
            let filter = table(&tables, forward::TABLE).unwrap_or(&empty);
            self.check_forward(filter, ipt.program())?;
            if self.masquerade {
                let nat = table(&tables, "nat").unwrap_or(&empty);
                self.nat.check_in(nat, ipt.program())?;
            }
        }
        Ok(())
    }

    fn check_forward(&self, filter: &Listing, program: &str) -> Result<()> {
        let f = &self.forward;
        let chain = f.chain();
        if !filter
            .rules_of(forward::FORWARD)
            .any(|r| r.same_as(&f.jump()))
        {
            return Err(CniError::nat(format!(
                "forward rule missing: `{program} -I FORWARD 1 {}` (see `{program} -S FORWARD`); \
                 without it a FORWARD policy DROP or a REJECT in FORWARD drops the pool's traffic",
                f.jump().spec
            )));
        }
        for rule in f.rules() {
            if !filter.rules_of(&chain).any(|r| r.same_as(&rule)) {
                return Err(CniError::nat(format!(
                    "forward rule missing: `{program} -A {chain} {}` (see `{program} -S {chain}`)",
                    rule.spec
                )));
            }
        }
        Ok(())
    }

    /// The pool whose installed FORWARD jump covers `ip`, found by the jumps' comments: with
    /// delegated IPAM the pool is whatever network the IPAM plugin returned at ADD, which
    /// CHECK no longer has.
    pub fn installed_for(conf: &NetConf, ip: IpAddr) -> Result<PoolRules> {
        let family = Family::of(ip);
        let probe = PoolRules::for_pool(conf, IpNetwork::from(ip));
        let (backends, saved) = probe.installed_backends()?;
        let b = backends.first().copied().unwrap_or(Backend::Nft);
        let ipt = Iptables::of(family, b);
        let tables = match saved.into_iter().find(|(s, _)| *s == b) {
            Some((_, t)) => t,
            None => ipt.save()?,
        };
        let empty = Listing::default();
        forward::jumps(table(&tables, forward::TABLE).unwrap_or(&empty))
            .iter()
            .filter_map(|j| j.pool.parse::<IpNetwork>().ok())
            .find(|net| net.contains(ip))
            .map(|subnet| PoolRules::for_pool(conf, subnet))
            .ok_or_else(|| {
                CniError::nat(format!(
                    "no forward jump covers {ip}: `{} -S FORWARD` shows no \"routed-cni pool\" rule for its network",
                    ipt.program()
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(subnet: &str, masquerade: bool) -> PoolRules {
        let subnet: IpNetwork = subnet.parse().unwrap();
        PoolRules {
            forward: Forward { subnet },
            nat: Masquerade {
                subnet,
                non_masquerade: vec!["10.244.0.0/16".parse().unwrap()],
            },
            masquerade,
            setting: IptablesBackend::Auto,
            hint_dir: "/nonexistent/iptables-backend".into(),
        }
    }

    #[test]
    fn first_pod_installs_forward_and_nat_in_one_restore() {
        let p = rules("10.244.1.0/24", true);
        let txns = p.install_transactions(&[]);
        let text = super::super::iptables::restore_text(&txns);
        let (fc, nc) = (p.forward.chain(), p.nat.chain());
        assert_eq!(
            text,
            format!(
                "*filter\n:{fc} - [0:0]\n-A {fc} {}\n-A {fc} {}\n-I FORWARD 1 {}\nCOMMIT\n\
                 *nat\n:{nc} - [0:0]\n-A {nc} {}\n-A {nc} {}\n-A POSTROUTING {}\nCOMMIT\n",
                p.forward.rules()[0].spec,
                p.forward.rules()[1].spec,
                p.forward.jump().spec,
                p.nat.rules()[0].spec,
                p.nat.rules()[1].spec,
                p.nat.jump().spec,
            )
        );
        // Without masquerade the forward accepts still go in, and nothing of nat.
        let nomasq = rules("10.244.1.0/24", false);
        let text = super::super::iptables::restore_text(&nomasq.install_transactions(&[]));
        assert!(
            text.starts_with("*filter\n") && !text.contains("*nat"),
            "{text}"
        );
    }

    #[test]
    fn installed_tables_need_nothing_and_a_flushed_forward_only_the_filter() {
        let p = rules("10.244.1.0/24", true);
        let (fc, nc) = (p.forward.chain(), p.nat.chain());
        let mut save = format!(
            "*filter\n:FORWARD DROP [0:0]\n:{fc} - [0:0]\n-A FORWARD {}\n-A {fc} {}\n-A {fc} {}\nCOMMIT\n\
             *nat\n:POSTROUTING ACCEPT [0:0]\n:{nc} - [0:0]\n-A POSTROUTING {}\n-A {nc} {}\n-A {nc} {}\nCOMMIT\n",
            p.forward.jump().spec,
            p.forward.rules()[0].spec,
            p.forward.rules()[1].spec,
            p.nat.jump().spec,
            p.nat.rules()[0].spec,
            p.nat.rules()[1].spec,
        );
        let tables = Listing::parse_save(&save);
        assert!(p.install_transactions(&tables).is_empty());
        p.check_forward(table(&tables, "filter").unwrap(), "iptables-nft")
            .unwrap();
        // `iptables -F FORWARD`: the jump is gone, the chain stays.
        save = save.replace(&format!("-A FORWARD {}\n", p.forward.jump().spec), "");
        let tables = Listing::parse_save(&save);
        let txns = p.install_transactions(&tables);
        assert_eq!(txns.len(), 1);
        assert!(txns[0].text().starts_with("*filter\n"));
        let err = p
            .check_forward(table(&tables, "filter").unwrap(), "iptables-legacy")
            .unwrap_err();
        assert!(
            err.msg.contains("`iptables-legacy -I FORWARD 1 ")
                && err.msg.contains("`iptables-legacy -S FORWARD`"),
            "{err}"
        );
        // Uninstall: both tables, every piece.
        let un = super::super::iptables::restore_text(&p.uninstall_transactions(&tables));
        assert!(
            un.contains(&format!("-X {fc}")) && un.contains(&format!("-X {nc}")),
            "{un}"
        );
        // A backend holding nothing of the pool is left alone.
        let other = Listing::parse_save("*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n*nat\nCOMMIT\n");
        assert!(p.uninstall_transactions(&other).is_empty());
    }

    #[test]
    fn probe_checks_both_jumps_in_one_input() {
        let p = rules("10.244.1.0/24", true);
        let text = super::super::iptables::restore_text(&p.checks());
        assert_eq!(
            text,
            format!(
                "*filter\n-C FORWARD {}\nCOMMIT\n*nat\n-C POSTROUTING {}\nCOMMIT\n",
                p.forward.jump().spec,
                p.nat.jump().spec
            )
        );
        let forward_only =
            super::super::iptables::restore_text(&rules("10.244.1.0/24", false).checks());
        assert!(!forward_only.contains("*nat"));
    }
}
