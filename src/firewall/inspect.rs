//! Reading what others installed in the forward path, for doctor: the filter table of each
//! iptables backend, and nftables tables (firewalld's `inet firewalld`). Read-only: nothing
//! here creates a table, loads a module or changes a rule.

use std::process::{Command, Stdio};

use super::iptables::{Backend, Iptables, Listing};
use super::Family;

/// The filter table of one backend.
#[derive(Debug, Clone)]
pub struct BackendFilter {
    pub backend: Backend,
    /// The program that lists and repairs it (`iptables-legacy`, `ip6tables-nft`, …).
    pub program: &'static str,
    /// `Ok(None)`: the backend has no filter table here (so it drops nothing).
    pub listing: Result<Option<Listing>, String>,
}

/// Whether the legacy backend has `table` in this network namespace. Listing a legacy table
/// creates it (and loads its module), so, as Calico's Felix does, legacy is read only for the
/// tables the kernel already lists. `thread-self`: a thread may have entered another netns.
fn legacy_has(family: Family, table: &str) -> bool {
    let file = match family {
        Family::V4 => "/proc/thread-self/net/ip_tables_names",
        Family::V6 => "/proc/thread-self/net/ip6_tables_names",
    };
    std::fs::read_to_string(file).is_ok_and(|s| s.lines().any(|l| l.trim() == table))
}

/// The filter table of `family` in both backends, with counters (listing an nft table does
/// not create it; a legacy one is read only when it exists).
pub fn filter_tables(family: Family) -> Vec<BackendFilter> {
    Backend::ALL
        .iter()
        .map(|&backend| {
            let ipt = Iptables::of(family, backend);
            let listing = if backend == Backend::Legacy && !legacy_has(family, "filter") {
                Ok(None)
            } else {
                ipt.list_counted("filter", None).map_err(|e| e.msg)
            };
            BackendFilter {
                backend,
                program: ipt.program(),
                listing,
            }
        })
        .collect()
}

fn nft(args: &[&str]) -> Result<String, String> {
    let out = Command::new("nft")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run nft: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`nft {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `(family, name)` of every nftables table (`nft list tables`); empty when `nft` is not
/// installed, since then nothing on the node can have written nftables rules with it either
/// (iptables-nft's tables are read through iptables-nft).
pub fn nft_tables() -> Result<Vec<(String, String)>, String> {
    let text = match nft(&["list", "tables"]) {
        Err(e) if e.starts_with("run nft") => return Ok(Vec::new()),
        r => r?,
    };
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "table").then_some(())?;
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect())
}

/// `nft list table <family> <name>`, with counters where the rules have them.
pub fn nft_table(family: &str, name: &str) -> Result<String, String> {
    nft(&["list", "table", family, name])
}
