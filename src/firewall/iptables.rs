//! The iptables programs: running them, listing a table with `-S` (never `-L`, which resolves
//! every address through DNS unless told not to), parsing what they print into `Rule`s, and
//! applying a change as one `iptables-restore --noflush` transaction, which the kernel takes
//! whole or not at all. Every run waits for the xtables lock (`-w`) instead of failing when
//! kube-proxy or another plugin holds it.

use serde::Serialize;
use std::io::Write;
use std::process::{Child, Command, Stdio};

use super::Family;
use crate::cni::error::{CniError, Result};

/// The iptables programs of one family. The one place a program is named: choosing between
/// `iptables-legacy` and `iptables-nft` is a field here, not something callers see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Iptables {
    family: Family,
    /// `None`: the node's `iptables`, whichever backend it is linked to.
    backend: Option<Backend>,
}

/// The two kernel interfaces the iptables programs drive. Each keeps its own rules, and a
/// DROP in either is final: an ACCEPT in the other cannot undo it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Nft,
    Legacy,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Nft, Backend::Legacy];
}

/// A built-in chain's policy as `-S` prints it (`-P FORWARD DROP`), with counters when listed
/// with `-v`: the packets that reached the end of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub chain: String,
    pub target: String,
    pub pkts: u64,
    pub bytes: u64,
}

/// One rule as `-S` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    #[serde(skip)]
    pub chain: String,
    /// The rule's arguments after `-A <chain>`, unquoted, counters taken out.
    #[serde(skip)]
    pub args: Vec<String>,
    /// `args` as `-A`/`-D` take them on a command line, quoted where needed.
    pub spec: String,
    pub target: Option<String>,
    /// Zero unless listed with counters.
    pub pkts: u64,
    pub bytes: u64,
}

/// A table or a chain as `-S` lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// User-defined chains (`-N`).
    pub chains: Vec<String>,
    /// Built-in chains' policies (`-P`).
    pub policies: Vec<Policy>,
    /// Every `-A` line, in order.
    pub rules: Vec<Rule>,
}

/// One change to one table: `iptables-restore --noflush` applies all of it or none of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    table: &'static str,
    /// Declared chains: created, or emptied when they exist.
    declared: Vec<String>,
    lines: Vec<String>,
}

impl Rule {
    /// Builds the rule `-A <chain> <args>` would add.
    pub fn new(chain: &str, args: Vec<String>) -> Rule {
        Rule {
            chain: chain.to_string(),
            spec: quote(&args),
            target: value_of(&args, "-j").map(str::to_string),
            args,
            pkts: 0,
            bytes: 0,
        }
    }

    /// The value of `flag` (e.g. `-d`, `--comment`, `--dport`) unless negated with `!`.
    pub fn arg(&self, flag: &str) -> Option<&str> {
        value_of(&self.args, flag)
    }

    /// Same rule, counters aside.
    pub fn same_as(&self, other: &Rule) -> bool {
        self.chain == other.chain && self.args == other.args
    }
}

fn value_of<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let mut negated = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == flag {
            let v = it.next()?;
            if !negated {
                return Some(v);
            }
        }
        negated = a == "!";
    }
    None
}

/// Splits a line the way `iptables-restore` does: on spaces, with `"…"` quoting and `\`
/// escapes inside quotes (which is how `-S` prints comments).
fn split(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut in_quotes, mut started) = (false, false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                started = true;
            }
            '\\' if in_quotes => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !in_quotes => {
                if started {
                    out.push(std::mem::take(&mut cur));
                    started = false;
                }
            }
            c => {
                cur.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(cur);
    }
    out
}

/// Takes `-c <pkts> <bytes>` (what `-v -S` adds) out of `args`; zeros when absent.
fn take_counters(args: &mut Vec<String>) -> (u64, u64) {
    let Some(i) = args.iter().position(|a| a == "-c") else {
        return (0, 0);
    };
    let counted = args
        .get(i + 1)
        .zip(args.get(i + 2))
        .and_then(|(p, b)| Some((p.parse().ok()?, b.parse().ok()?)));
    match counted {
        Some(c) => {
            args.drain(i..i + 3);
            c
        }
        None => (0, 0),
    }
}

/// Joins arguments into one line that `split` (and `iptables-restore`) reads back as they were.
fn quote(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty() && !a.contains(|c: char| c.is_whitespace() || "\"'\\".contains(c)) {
                a.clone()
            } else {
                let escaped: String = a
                    .chars()
                    .flat_map(|c| {
                        let esc = matches!(c, '"' | '\\').then_some('\\');
                        esc.into_iter().chain([c])
                    })
                    .collect();
                format!("\"{escaped}\"")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Listing {
    /// Reads `-S` (or `-v -S`) output. Comments (iptables-nft prints a warning line when
    /// legacy tables exist too) and anything else that is not `-N`/`-P`/`-A` are skipped.
    pub fn parse(text: &str) -> Listing {
        let mut listing = Listing::default();
        for line in text.lines() {
            let mut tokens = split(line);
            match tokens.first().map(String::as_str) {
                Some("-N") if tokens.len() == 2 => listing.chains.push(tokens.remove(1)),
                Some("-P") if tokens.len() >= 3 => {
                    let mut args = tokens.split_off(1);
                    let (pkts, bytes) = take_counters(&mut args);
                    listing.policies.push(Policy {
                        chain: args[0].clone(),
                        target: args[1].clone(),
                        pkts,
                        bytes,
                    });
                }
                Some("-A") if tokens.len() >= 2 => {
                    let chain = tokens[1].clone();
                    let mut args = tokens.split_off(2);
                    let (pkts, bytes) = take_counters(&mut args);
                    let mut rule = Rule::new(&chain, args);
                    (rule.pkts, rule.bytes) = (pkts, bytes);
                    listing.rules.push(rule);
                }
                _ => {}
            }
        }
        listing
    }

    /// The policy of built-in `chain`, when listed.
    pub fn policy(&self, chain: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.chain == chain)
    }

    pub fn rules_of<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |r| r.chain == chain)
    }
}

impl Transaction {
    pub fn new(table: &'static str) -> Transaction {
        Transaction {
            table,
            declared: Vec::new(),
            lines: Vec::new(),
        }
    }

    /// Creates `chain`, or empties it when it exists.
    pub fn declare(&mut self, chain: &str) {
        if !self.declared.iter().any(|c| c == chain) {
            self.declared.push(chain.to_string());
        }
    }

    pub fn append(&mut self, rule: &Rule) {
        self.lines.push(format!("-A {} {}", rule.chain, rule.spec));
    }

    /// Deletes one copy of `rule`; the whole transaction fails when there is none.
    pub fn delete(&mut self, rule: &Rule) {
        self.lines.push(format!("-D {} {}", rule.chain, rule.spec));
    }

    /// Removes `chain` whether or not it exists: declaring it first makes it exist (empty),
    /// so `-X` cannot fail on a chain someone already removed. Its jumps must be deleted in
    /// the same transaction.
    pub fn remove_chain(&mut self, chain: &str) {
        let line = format!("-X {chain}");
        // A second `-X` of the same chain would fail the whole transaction.
        if !self.lines.contains(&line) {
            self.declare(chain);
            self.lines.push(line);
        }
    }

    /// The input for `iptables-restore --noflush`.
    pub fn text(&self) -> String {
        let mut text = format!("*{}\n", self.table);
        for c in &self.declared {
            text.push_str(&format!(":{c} - [0:0]\n"));
        }
        for l in &self.lines {
            text.push_str(l);
            text.push('\n');
        }
        text.push_str("COMMIT\n");
        text
    }
}

impl Iptables {
    pub fn new(family: Family) -> Iptables {
        Iptables {
            family,
            backend: None,
        }
    }

    /// The programs of one explicit backend (`iptables-nft`, `ip6tables-legacy`, …).
    pub fn in_backend(family: Family, backend: Backend) -> Iptables {
        Iptables {
            family,
            backend: Some(backend),
        }
    }

    /// The command that lists and changes rules of this family, as the operator would type it.
    pub fn program(&self) -> &'static str {
        match (self.family, self.backend) {
            (Family::V4, None) => "iptables",
            (Family::V6, None) => "ip6tables",
            (Family::V4, Some(Backend::Nft)) => "iptables-nft",
            (Family::V6, Some(Backend::Nft)) => "ip6tables-nft",
            (Family::V4, Some(Backend::Legacy)) => "iptables-legacy",
            (Family::V6, Some(Backend::Legacy)) => "ip6tables-legacy",
        }
    }

    /// Whether `table` exists in this backend, when that can be known without creating it.
    /// Listing a legacy table creates it (and loads its kernel module), so, as Calico's Felix
    /// does, the legacy backend is read only for tables the kernel already lists in
    /// `/proc/net/ip{,6}_tables_names` of this network namespace. Listing an nft table does
    /// not create it: `None`, list it.
    pub fn table_exists(&self, table: &str) -> Option<bool> {
        if self.backend != Some(Backend::Legacy) {
            return None;
        }
        let names = match self.family {
            Family::V4 => "/proc/net/ip_tables_names",
            Family::V6 => "/proc/net/ip6_tables_names",
        };
        let text = std::fs::read_to_string(names).unwrap_or_default();
        Some(text.lines().any(|l| l.trim() == table))
    }

    fn restore_program(&self) -> &'static str {
        match (self.family, self.backend) {
            (Family::V4, None) => "iptables-restore",
            (Family::V6, None) => "ip6tables-restore",
            (Family::V4, Some(Backend::Nft)) => "iptables-nft-restore",
            (Family::V6, Some(Backend::Nft)) => "ip6tables-nft-restore",
            (Family::V4, Some(Backend::Legacy)) => "iptables-legacy-restore",
            (Family::V6, Some(Backend::Legacy)) => "ip6tables-legacy-restore",
        }
    }

    fn error(&self, what: impl std::fmt::Display) -> CniError {
        CniError::nat(format!(
            "{what}; check that the iptables commands work on this node (`{} -t nat -S`)",
            self.program()
        ))
    }

    fn spawn_error(&self, program: &str, e: std::io::Error) -> CniError {
        CniError::nat(format!(
            "run {program}: {e}; is the iptables package installed on this node?"
        ))
    }

    /// `-S` of a table, or of one chain of it; `None` when the chain does not exist.
    pub fn list(&self, table: &str, chain: Option<&str>) -> Result<Option<Listing>> {
        self.list_with(table, chain, false)
    }

    /// Like `list`, with each rule's packet and byte counters.
    pub fn list_counted(&self, table: &str, chain: Option<&str>) -> Result<Option<Listing>> {
        self.list_with(table, chain, true)
    }

    fn list_with(
        &self,
        table: &str,
        chain: Option<&str>,
        counters: bool,
    ) -> Result<Option<Listing>> {
        let mut cmd = Command::new(self.program());
        cmd.args(["-w", "-t", table]);
        if counters {
            cmd.arg("-v");
        }
        cmd.arg("-S").args(chain);
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| self.spawn_error(self.program(), e))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            // iptables-nft 1.8.9 calls a missing chain "incompatible" when asked for its rules.
            let missing = ["No chain", "does not exist", "incompatible"];
            if chain.is_some() && missing.iter().any(|m| err.contains(m)) {
                return Ok(None);
            }
            return Err(self.error(format_args!(
                "`{} -t {table} -S {}` failed: {}",
                self.program(),
                chain.unwrap_or(""),
                err.trim()
            )));
        }
        Ok(Some(Listing::parse(&String::from_utf8_lossy(&out.stdout))))
    }

    /// Starts `-C` for `rule` without waiting for it; exit 0 means the rule is in place.
    pub fn spawn_check(&self, table: &str, rule: &Rule) -> Result<Child> {
        Command::new(self.program())
            .args(["-w", "-t", table, "-C", &rule.chain])
            .args(&rule.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error(self.program(), e))
    }

    /// Applies `txn` with one `iptables-restore --noflush -w`: every line or none.
    pub fn apply(&self, txn: &Transaction) -> Result<()> {
        let text = txn.text();
        let program = self.restore_program();
        let mut child = Command::new(program)
            .args(["--noflush", "-w"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error(program, e))?;
        let written = child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(text.as_bytes());
        let out = child
            .wait_with_output()
            .map_err(|e| self.error(format_args!("wait for {program}: {e}")))?;
        if let Err(e) = written {
            return Err(self.error(format_args!("write to {program}: {e}")));
        }
        if !out.status.success() {
            return Err(self
                .error(format_args!(
                    "`{program} --noflush` failed, nothing was changed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
                .with_details(format!("{program} input:\n{text}")));
        }
        crate::debug!("{program}: applied\n{text}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn parses_rules_chains_and_counters() {
        let text = "# Warning: iptables-legacy tables present, use iptables-legacy to see them\n\
            -P POSTROUTING ACCEPT -c 0 0\n\
            -N RCNI-14F68DE1BD076ADC\n\
            -A POSTROUTING -s 10.244.1.0/24 -m comment --comment \"routed-cni pool 10.244.1.0/24\" -c 12 840 -j RCNI-14F68DE1BD076ADC\n\
            -A RCNI-14F68DE1BD076ADC ! -d 224.0.0.0/4 -m comment --comment \"routed-cni masquerade 10.244.1.0/24\" -j MASQUERADE\n";
        let l = Listing::parse(text);
        assert_eq!(l.chains, ["RCNI-14F68DE1BD076ADC"]);
        assert_eq!(l.rules.len(), 2);
        let jump = &l.rules[0];
        assert_eq!(jump.chain, "POSTROUTING");
        assert_eq!((jump.pkts, jump.bytes), (12, 840));
        assert_eq!(jump.target.as_deref(), Some("RCNI-14F68DE1BD076ADC"));
        assert_eq!(jump.arg("--comment"), Some("routed-cni pool 10.244.1.0/24"));
        assert_eq!(
            jump.spec,
            "-s 10.244.1.0/24 -m comment --comment \"routed-cni pool 10.244.1.0/24\" -j RCNI-14F68DE1BD076ADC"
        );
        let masq = &l.rules[1];
        assert_eq!((masq.pkts, masq.bytes), (0, 0));
        assert_eq!(masq.arg("-d"), None, "a negated -d is no destination");
        assert_eq!(l.rules_of("POSTROUTING").count(), 1);
        let p = l.policy("POSTROUTING").expect("policy");
        assert_eq!((p.target.as_str(), p.pkts), ("ACCEPT", 0));
        let l = Listing::parse("-P FORWARD DROP -c 7 420\n-P INPUT ACCEPT\n");
        let p = l.policy("FORWARD").expect("policy");
        assert_eq!((p.target.as_str(), p.pkts, p.bytes), ("DROP", 7, 420));
        assert_eq!(l.policy("INPUT").map(|p| p.pkts), Some(0));
        assert_eq!(l.rules_of("OUTPUT").count(), 0);
    }

    #[test]
    fn quoting_round_trips() {
        let a = args(&[
            "-m",
            "comment",
            "--comment",
            "say \"hi\" \\ there",
            "-j",
            "X",
        ]);
        let r = Rule::new("C", a.clone());
        assert_eq!(
            r.spec,
            "-m comment --comment \"say \\\"hi\\\" \\\\ there\" -j X"
        );
        assert_eq!(split(&r.spec), a);
        assert_eq!(
            Listing::parse(&format!("-A C {}", r.spec)).rules[0],
            r,
            "what we write reads back as the same rule"
        );
    }

    #[test]
    fn transaction_text_declares_chains_first_and_commits() {
        let mut t = Transaction::new("nat");
        t.declare("RCNI-A");
        t.append(&Rule::new("RCNI-A", args(&["-j", "MASQUERADE"])));
        t.append(&Rule::new(
            "POSTROUTING",
            args(&["-s", "10.0.0.0/24", "-j", "RCNI-A"]),
        ));
        t.delete(&Rule::new(
            "POSTROUTING",
            args(&["-s", "10.0.0.0/24", "-j", "RCNI-B"]),
        ));
        t.remove_chain("RCNI-B");
        t.remove_chain("RCNI-A");
        t.remove_chain("RCNI-B");
        assert_eq!(
            t.text(),
            "*nat\n:RCNI-A - [0:0]\n:RCNI-B - [0:0]\n\
             -A RCNI-A -j MASQUERADE\n-A POSTROUTING -s 10.0.0.0/24 -j RCNI-A\n\
             -D POSTROUTING -s 10.0.0.0/24 -j RCNI-B\n-X RCNI-B\n-X RCNI-A\nCOMMIT\n"
        );
    }

    #[test]
    fn programs_follow_the_family() {
        assert_eq!(Iptables::new(Family::V4).program(), "iptables");
        assert_eq!(Iptables::new(Family::V6).program(), "ip6tables");
        assert_eq!(
            Iptables::new(Family::V6).restore_program(),
            "ip6tables-restore"
        );
        assert_eq!(
            Iptables::in_backend(Family::V6, Backend::Legacy).program(),
            "ip6tables-legacy"
        );
        assert_eq!(
            Iptables::in_backend(Family::V4, Backend::Nft).restore_program(),
            "iptables-nft-restore"
        );
    }
}
