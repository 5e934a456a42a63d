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
    /// `None`: the node's plain `iptables`, whichever backend its alternatives point at.
    backend: Option<Backend>,
}

/// The two kernels' worlds iptables can write to. Both are consulted for every packet: a DROP
/// in either is final, and an ACCEPT in one cannot undo a DROP in the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Backend {
    Nft,
    Legacy,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Nft, Backend::Legacy];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }

    pub fn parse(s: &str) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.name() == s)
    }
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
    /// Built-in chains and their policy (`-P FORWARD DROP`), in order.
    pub policies: Vec<(String, String)>,
    /// Built-in chain -> (packets, bytes) its policy decided, when listed with `-v`.
    pub policy_counters: Vec<(String, u64, u64)>,
    /// Every `-A` line, in order.
    pub rules: Vec<Rule>,
}

/// Every table of one backend and family, as `iptables-save` lists them.
pub type Tables = Vec<(String, Listing)>;

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
    let at = args.iter().position(|a| a == "-c");
    let num = |i: usize| args.get(i)?.parse().ok();
    let counted = at.and_then(|i| Some((num(i + 1)?, num(i + 2)?)));
    if let (Some(i), Some(_)) = (at, counted) {
        args.drain(i..i + 3);
    }
    counted.unwrap_or((0, 0))
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
    /// Reads `-S` (or `-v -S`) output. Comments (iptables-nft prints a warning line when legacy
    /// tables exist too) and anything else that is not `-N`/`-P`/`-A` are skipped.
    pub fn parse(text: &str) -> Listing {
        let mut listing = Listing::default();
        for line in text.lines() {
            let mut tokens = split(line);
            match tokens.first().map(String::as_str) {
                Some("-N") if tokens.len() == 2 => listing.chains.push(tokens.remove(1)),
                Some("-P") if tokens.len() >= 3 => {
                    let mut args = tokens.split_off(1);
                    let (pkts, bytes) = take_counters(&mut args);
                    listing.policy_counters.push((args[0].clone(), pkts, bytes));
                    listing.policies.push((args[0].clone(), args[1].clone()));
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

    pub fn rules_of<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |r| r.chain == chain)
    }

    /// The packets the policy of built-in `chain` decided (`-v` listings; 0 otherwise).
    pub fn policy_pkts(&self, chain: &str) -> u64 {
        self.policy_counters
            .iter()
            .find(|(c, _, _)| c == chain)
            .map_or(0, |(_, p, _)| *p)
    }

    /// The policy of a built-in chain, as listed.
    pub fn policy(&self, chain: &str) -> Option<&str> {
        self.policies
            .iter()
            .find(|(c, _)| c == chain)
            .map(|(_, p)| p.as_str())
    }

    /// Reads `iptables-save` output: one `Listing` per table (`*nat` … `COMMIT`), chains
    /// declared by `:NAME - [0:0]` (user) or `:NAME POLICY [p:b]` (built-in).
    pub fn parse_save(text: &str) -> Tables {
        let mut tables: Vec<(String, String)> = Vec::new();
        for line in text.lines() {
            if let Some(table) = line.strip_prefix('*') {
                tables.push((table.trim().to_string(), String::new()));
                continue;
            }
            let Some((_, body)) = tables.last_mut() else {
                continue;
            };
            // Turn the save dialect into the `-S` one, which `parse` reads.
            if let Some(decl) = line.strip_prefix(':') {
                let mut it = decl.split_whitespace();
                match (it.next(), it.next()) {
                    (Some(c), Some("-")) => body.push_str(&format!("-N {c}\n")),
                    (Some(c), Some(p)) => body.push_str(&format!("-P {c} {p}\n")),
                    _ => {}
                }
            } else if line.starts_with("-A ") {
                body.push_str(line);
                body.push('\n');
            }
        }
        tables
            .into_iter()
            .map(|(t, body)| (t, Listing::parse(&body)))
            .collect()
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

    /// Inserts `rule` at the top of its chain, ahead of whatever is there.
    pub fn insert_first(&mut self, rule: &Rule) {
        self.lines
            .push(format!("-I {} 1 {}", rule.chain, rule.spec));
    }

    /// Fails the whole restore unless `rule` is in place (changes nothing).
    pub fn check(&mut self, rule: &Rule) {
        self.lines.push(format!("-C {} {}", rule.chain, rule.spec));
    }

    pub fn is_empty(&self) -> bool {
        self.declared.is_empty() && self.lines.is_empty()
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

/// The input of one `iptables-restore`: each table's transaction, committed table by table.
pub fn restore_text(txns: &[Transaction]) -> String {
    txns.iter()
        .filter(|t| !t.is_empty())
        .map(Transaction::text)
        .collect()
}

impl Iptables {
    /// The node's plain `iptables` (or `ip6tables`): what an operator types.
    pub fn new(family: Family) -> Iptables {
        Iptables {
            family,
            backend: None,
        }
    }

    /// The programs of one backend: `iptables-nft`, `ip6tables-legacy`, …
    pub fn of(family: Family, backend: Backend) -> Iptables {
        Iptables {
            family,
            backend: Some(backend),
        }
    }

    pub fn backend(&self) -> Option<Backend> {
        self.backend
    }

    pub fn family(&self) -> Family {
        self.family
    }

    fn named(&self, suffix: &str) -> &'static str {
        use {Backend::*, Family::*};
        match (self.family, self.backend, suffix) {
            (V4, None, "") => "iptables",
            (V4, None, "restore") => "iptables-restore",
            (V4, None, _) => "iptables-save",
            (V6, None, "") => "ip6tables",
            (V6, None, "restore") => "ip6tables-restore",
            (V6, None, _) => "ip6tables-save",
            (V4, Some(Nft), "") => "iptables-nft",
            (V4, Some(Nft), "restore") => "iptables-nft-restore",
            (V4, Some(Nft), _) => "iptables-nft-save",
            (V6, Some(Nft), "") => "ip6tables-nft",
            (V6, Some(Nft), "restore") => "ip6tables-nft-restore",
            (V6, Some(Nft), _) => "ip6tables-nft-save",
            (V4, Some(Legacy), "") => "iptables-legacy",
            (V4, Some(Legacy), "restore") => "iptables-legacy-restore",
            (V4, Some(Legacy), _) => "iptables-legacy-save",
            (V6, Some(Legacy), "") => "ip6tables-legacy",
            (V6, Some(Legacy), "restore") => "ip6tables-legacy-restore",
            (V6, Some(Legacy), _) => "ip6tables-legacy-save",
        }
    }

    /// The command that lists and changes rules of this family, as the operator would type it.
    pub fn program(&self) -> &'static str {
        self.named("")
    }

    fn restore_program(&self) -> &'static str {
        self.named("restore")
    }

    pub fn save_program(&self) -> &'static str {
        self.named("save")
    }

    /// Every table of this backend and family, one `iptables-save` run. Legacy save dumps only
    /// the tables that exist (it never creates one); nft save reads them from the kernel.
    pub fn save(&self) -> Result<Tables> {
        self.spawn_save()?.wait()
    }

    /// Starts `iptables-save` without waiting for it: a removal lists the backends it has no
    /// hint for while the others' restores run.
    pub fn spawn_save(&self) -> Result<Saving> {
        let program = self.save_program();
        let child = Command::new(program)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error(program, e))?;
        Ok(Saving { ipt: *self, child })
    }

    /// Starts one `iptables-restore` that only checks (`-C`) every line of `txns`, without
    /// waiting: exit 0 means every rule is in place. One exec whatever the number of rules
    /// and tables. Legacy restore runs `--test` (it would otherwise write the unchanged
    /// tables back); nft restore must not (its `--test` skips `-C`), and an nft batch of
    /// checks alone changes nothing.
    pub fn spawn_checks(&self, txns: &[Transaction]) -> Result<Child> {
        let program = self.restore_program();
        let mut cmd = Command::new(program);
        cmd.args(["--noflush", "-w"]);
        if self.backend == Some(Backend::Legacy) {
            cmd.arg("--test");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error(program, e))?;
        // A few hundred bytes: the pipe takes them without blocking.
        let text = restore_text(txns);
        let mut stdin = child.stdin.take().expect("stdin is piped");
        if let Err(e) = stdin.write_all(text.as_bytes()) {
            crate::debug!("write to {program}: {e}");
        }
        Ok(child)
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
        self.apply_all(std::slice::from_ref(txn))
    }

    /// Applies the transactions of several tables with one `iptables-restore --noflush -w`.
    /// Each table commits on its own; a failing table stops the run before the tables after
    /// it, so callers put the one that matters most (filter: forwarding) first.
    pub fn apply_all(&self, txns: &[Transaction]) -> Result<()> {
        match self.spawn_apply(txns)? {
            Some(applying) => applying.wait(),
            None => Ok(()),
        }
    }

    /// Starts the restore of `apply_all` without waiting for it (`None`: nothing to change),
    /// so that the caller's own work (a veth's deletion) overlaps the kernel's commit.
    pub fn spawn_apply(&self, txns: &[Transaction]) -> Result<Option<Applying>> {
        let text = restore_text(txns);
        if text.is_empty() {
            return Ok(None);
        }
        let program = self.restore_program();
        let mut child = Command::new(program)
            .args(["--noflush", "-w"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error(program, e))?;
        // A few hundred bytes: the pipe takes them without blocking.
        let written = child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(text.as_bytes());
        Ok(Some(Applying {
            ipt: *self,
            child,
            text,
            written,
        }))
    }
}

/// A running `iptables-save`.
pub struct Saving {
    ipt: Iptables,
    child: Child,
}

impl Saving {
    pub fn wait(self) -> Result<Tables> {
        let (ipt, program) = (self.ipt, self.ipt.save_program());
        let out = self
            .child
            .wait_with_output()
            .map_err(|e| ipt.error(format_args!("wait for {program}: {e}")))?;
        if !out.status.success() {
            return Err(ipt.error(format_args!(
                "`{program}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(Listing::parse_save(&String::from_utf8_lossy(&out.stdout)))
    }
}

/// A running `iptables-restore --noflush` of one change.
pub struct Applying {
    ipt: Iptables,
    child: Child,
    text: String,
    written: std::io::Result<()>,
}

impl Applying {
    /// Waits for the restore; an error says that nothing of the failing table changed.
    pub fn wait(self) -> Result<()> {
        let (ipt, program) = (self.ipt, self.ipt.restore_program());
        let out = self
            .child
            .wait_with_output()
            .map_err(|e| ipt.error(format_args!("wait for {program}: {e}")))?;
        if let Err(e) = self.written {
            return Err(ipt.error(format_args!("write to {program}: {e}")));
        }
        if !out.status.success() {
            return Err(ipt
                .error(format_args!(
                    "`{program} --noflush` failed, nothing was changed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
                .with_details(format!("{program} input:\n{}", self.text)));
        }
        crate::debug!("{program}: applied\n{}", self.text);
        Ok(())
    }
}

#[cfg(test)]
#[path = "iptables_tests.rs"]
mod tests;
