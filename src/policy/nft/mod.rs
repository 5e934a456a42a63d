//! The node's NetworkPolicy enforcement in nftables: one table of our own, `inet routed-cni`
//! (IPv4 and IPv6 together), made exactly a `Ruleset` in one `nft -j -f -` transaction, which
//! the kernel takes whole or not at all.
//!
//! ```text
//! table inet routed-cni {
//!   set pending  { type ifname }               CNI ADD: a new pod's host veth, until programmed
//!   set pod-ifs  { type ifname }               every pod of Ruleset.pods
//!   set spoof4   { type ifname . ipv4_addr }   its addresses (spoof6 likewise)
//!   map ingress  { type ifname : verdict }     oif -> jump <ingress chain>
//!   map egress   { type ifname : verdict }     iif -> jump <egress chain>
//!   set <S>-4, <S>-6  interval address sets    AddressSet S
//!   set <P>-4, <P>-6  addr . inet_proto . inet_service   PortSet P (named ports)
//!   chain forward { hook forward priority filter - 10; policy accept
//!     anti-spoof (pod-ifs): source not one of the veth's addresses -> drop
//!     ct state established,related accept
//!     iifname @pending drop; oifname @pending drop
//!     iifname vmap @egress; oifname vmap @ingress }
//!   chain <name> { <rule> return ...; counter drop comment "policies: ..." }
//! }
//! ```
//! Anti-spoof comes before conntrack: a forged source must not ride on another pod's
//! established flow. Everything our chains do not drop goes on to iptables' FORWARD (priority
//! 0), where RCNI-FWD accepts pool traffic past a FORWARD DROP policy.
//!
//! `nft` is the only program run; errors carry its stderr and what to do. Nothing here prints.

mod incremental;
mod lookup;
mod read;
mod render;
mod validate;

pub use read::{Installed, InstalledChain};
pub use render::PRIORITY;
pub use validate::check_ifname;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::policy::ruleset::Ruleset;

pub const TABLE: &str = "routed-cni";
pub const FORWARD: &str = "forward";
pub const PENDING: &str = "pending";
pub const POD_IFS: &str = "pod-ifs";
pub const SPOOF4: &str = "spoof4";
pub const SPOOF6: &str = "spoof6";
pub const INGRESS: &str = "ingress";
pub const EGRESS: &str = "egress";

/// Where `nft` is looked for after PATH: the CNI plugin and the agent may run with a PATH
/// that lacks the sbin directories.
const NFT_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("nft was not found (looked in PATH and {dirs}); install the nftables package (nft 0.9.3 or newer) on the node, or turn enforcement off with --network-policy=false")]
    NoNft { dirs: String },
    #[error("cannot run {program}: {error}; check that it is an executable nft")]
    Exec {
        program: String,
        error: std::io::Error,
    },
    #[error("nft failed {what}: {stderr}; {hint}")]
    Failed {
        what: &'static str,
        stderr: String,
        hint: &'static str,
    },
    #[error("the policy ruleset is invalid: {0} (a bug in the policy compiler; report it)")]
    Invalid(String),
    #[error("cannot read nft's listing of table inet {TABLE}: {0}")]
    Listing(String),
}

/// What one `apply` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Chains in the table (the base chain included), sets and maps, rules, elements written.
    pub chains: usize,
    pub sets: usize,
    pub rules: usize,
    pub elements: usize,
    /// What the table had that the Ruleset no longer has, now deleted.
    pub removed_chains: Vec<String>,
    pub removed_sets: Vec<String>,
    /// Size of the JSON batch and the time of the whole apply (listing, rendering, nft).
    pub batch_bytes: usize,
    pub took: Duration,
}

/// How to run nft: a program and the arguments before nft's own (tests run
/// `ip netns exec <ns> nft`).
#[derive(Debug)]
pub struct Nft {
    program: PathBuf,
    prefix: Vec<OsString>,
    /// What our last successful apply left in the table, so the next one need not list it
    /// (listing a table of 1,000 pods costs about as much as applying it). Cleared and
    /// listed afresh when an apply fails, in case someone changed the table by hand.
    known: Mutex<Option<render::Names>>,
}

fn executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

impl Nft {
    /// The node's `nft`: the first executable one in PATH, then in the sbin/bin directories.
    pub fn find() -> Result<Nft, PolicyError> {
        Nft::find_in(&std::env::var_os("PATH").unwrap_or_default(), &NFT_DIRS)
    }

    fn find_in(path: &std::ffi::OsStr, dirs: &[&str]) -> Result<Nft, PolicyError> {
        std::env::split_paths(path)
            .chain(dirs.iter().map(PathBuf::from))
            .map(|d| d.join("nft"))
            .find(|p| p.is_absolute() && executable(p))
            .map(|program| Nft::with_command(program, Vec::<OsString>::new()))
            .ok_or_else(|| PolicyError::NoNft {
                dirs: NFT_DIRS.join(", "),
            })
    }

    /// `program prefix... <nft arguments>`.
    pub fn with_command(program: impl Into<PathBuf>, prefix: Vec<impl Into<OsString>>) -> Nft {
        Nft {
            program: program.into(),
            prefix: prefix.into_iter().map(Into::into).collect(),
            known: Mutex::new(None),
        }
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Runs nft with `args` (and `input` on stdin); stdout, or the failure with nft's stderr.
    /// The crate's helper does not capture stderr when it applies a batch (it inherits it),
    /// and our stderr is the CNI log, so nft is run here.
    fn run(
        &self,
        args: &[&str],
        input: Option<&str>,
        what: &'static str,
        hint: &'static str,
    ) -> Result<String, PolicyError> {
        let exec = |error| PolicyError::Exec {
            program: self.program.display().to_string(),
            error,
        };
        let mut child = Command::new(&self.program)
            .args(&self.prefix)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(exec)?;
        // Written from a thread: nft may print (and fill a pipe) before reading all of it.
        let writer = match (input, child.stdin.take()) {
            (Some(data), Some(mut pipe)) => {
                let data = data.as_bytes().to_vec();
                Some(std::thread::spawn(move || pipe.write_all(&data)))
            }
            _ => None,
        };
        let out = child.wait_with_output().map_err(exec)?;
        let wrote = writer.map(|w| w.join());
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let stderr = if stderr.is_empty() {
                format!("exit status {} and nothing on stderr", out.status)
            } else {
                stderr
            };
            return Err(PolicyError::Failed { what, stderr, hint });
        }
        if let Some(Ok(Err(e))) = wrote {
            return Err(exec(e));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `nft -j [-t] list table inet routed-cni`; `None` when the table does not exist.
    fn list(&self, terse: bool) -> Result<Option<String>, PolicyError> {
        let mut args = vec!["-j"];
        if terse {
            args.push("-t");
        }
        args.extend(["list", "table", "inet", TABLE]);
        let hint = "check that nft works on this node (`nft list tables`)";
        match self.run(&args, None, "listing our table", hint) {
            Ok(out) => Ok(Some(out)),
            Err(e) if missing(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes table `inet routed-cni` exactly `ruleset`, in one transaction: creates what is
    /// missing, replaces every chain's rules and every set's and map's elements, deletes chains
    /// and sets the Ruleset no longer has, and takes the Ruleset's pods out of `pending` (and
    /// nothing else: CNI ADD adds to it concurrently). On error nothing has changed.
    pub fn apply(&self, ruleset: &Ruleset) -> Result<Applied, PolicyError> {
        let start = Instant::now();
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let r = match known.take() {
            Some(names) => match self.apply_with(ruleset, &names) {
                Err(PolicyError::Failed { .. }) => self.apply_listed(ruleset)?,
                other => other?,
            },
            None => self.apply_listed(ruleset)?,
        };
        *known = Some(r.names);
        Ok(Applied {
            chains: r.chains,
            sets: r.sets,
            rules: r.rules,
            elements: r.elements,
            removed_chains: r.removed_chains,
            removed_sets: r.removed_sets,
            batch_bytes: r.json.len(),
            took: start.elapsed(),
        })
    }

    fn apply_listed(&self, ruleset: &Ruleset) -> Result<render::Rendered, PolicyError> {
        let names = match self.list(true)? {
            Some(json) => read::names(&json)?,
            None => render::Names::default(),
        };
        self.apply_with(ruleset, &names)
    }

    fn apply_with(
        &self,
        ruleset: &Ruleset,
        names: &render::Names,
    ) -> Result<render::Rendered, PolicyError> {
        let r = render::render(ruleset, names)?;
        self.run(
            &["-j", "-f", "-"],
            Some(&r.json),
            "applying the policy ruleset (nothing was changed)",
            "the agent retries on its next sync; if it keeps failing, run `nft -j list table inet routed-cni` and report this message",
        )?;
        Ok(r)
    }

    /// The next apply lists the table and rewrites all of it (the agent's resync: the table
    /// may have been changed by hand).
    pub fn forget(&self) {
        *self.known.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// What the table holds now; `None` when it does not exist.
    pub fn read(&self) -> Result<Option<Installed>, PolicyError> {
        self.list(false)?
            .map(|json| read::installed(&json))
            .transpose()
    }

    /// Deletes the table (enforcement off); false when there was none.
    pub fn remove_table(&self) -> Result<bool, PolicyError> {
        *self.known.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let hint = "delete it by hand: nft delete table inet routed-cni";
        match self.run(
            &["delete", "table", "inet", TABLE],
            None,
            "deleting our table",
            hint,
        ) {
            Ok(_) => Ok(true),
            Err(e) if missing(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// CNI ADD: holds `ifname`'s forwarded traffic back until the agent has programmed the
    /// pod (its next `apply` listing the pod takes it out). One nft run; false, and nothing
    /// done, when the table does not exist (enforcement is off, or the agent never ran).
    pub fn mark_pending(&self, ifname: &str) -> Result<bool, PolicyError> {
        check_ifname(ifname)?;
        let batch = serde_json::json!({"nftables": [{"add": {"element": {
            "family": "inet", "table": TABLE, "name": PENDING, "elem": [ifname]
        }}}]});
        let hint = "the pod's traffic is not held back until the agent programs it; check `nft list set inet routed-cni pending`";
        match self.run(
            &["-j", "-f", "-"],
            Some(&batch.to_string()),
            "marking the pod pending",
            hint,
        ) {
            Ok(_) => Ok(true),
            Err(e) if missing(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// CNI DEL: takes `ifname` out of `pending` (an ADD that failed after holding the pod back
    /// leaves it there; the agent only lifts holds of pods it programs). True when it was
    /// there; false, and nothing done, when it was not or there is no table.
    pub fn unmark_pending(&self, ifname: &str) -> Result<bool, PolicyError> {
        check_ifname(ifname)?;
        let batch = serde_json::json!({"nftables": [{"delete": {"element": {
            "family": "inet", "table": TABLE, "name": PENDING, "elem": [ifname]
        }}}]});
        match self.run(
            &["-j", "-f", "-"],
            Some(&batch.to_string()),
            "lifting a deleted pod's hold",
            "the name stays in the pending set; harmless, but `nft delete element inet routed-cni pending { NAME }` removes it",
        ) {
            Ok(_) => Ok(true),
            Err(e) if missing(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// nft's error when the table (or the set in it, or the element) does not exist.
fn missing(e: &PolicyError) -> bool {
    matches!(e, PolicyError::Failed { stderr, .. } if stderr.contains("No such file or directory"))
}

/// `Nft::find()?.apply(ruleset)`.
pub fn apply(ruleset: &Ruleset) -> Result<Applied, PolicyError> {
    Nft::find()?.apply(ruleset)
}

/// `Nft::find()?.read()`.
pub fn read() -> Result<Option<Installed>, PolicyError> {
    Nft::find()?.read()
}

/// `Nft::find()?.remove_table()`.
pub fn remove_table() -> Result<bool, PolicyError> {
    Nft::find()?.remove_table()
}

/// `Nft::find()?.mark_pending(ifname)`.
pub fn mark_pending(ifname: &str) -> Result<bool, PolicyError> {
    Nft::find()?.mark_pending(ifname)
}

/// `Nft::find()?.unmark_pending(ifname)`.
pub fn unmark_pending(ifname: &str) -> Result<bool, PolicyError> {
    Nft::find()?.unmark_pending(ifname)
}

#[cfg(test)]
mod tests;
