//! What doctor found: one step per piece of the path, printed for people or as JSON.

use serde::Serialize;
use serde_json::Value;
use std::fmt::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The piece is there and does its job.
    Ok,
    /// Traffic flows, but not the way ADD left it (or doctor cannot be sure).
    Warn,
    /// This piece is broken: packets stop here.
    Fail,
    /// Not looked at, because a piece it stands on is missing.
    Skip,
}

impl Status {
    fn mark(self) -> &'static str {
        match self {
            Status::Ok => "✓",
            Status::Warn => "!",
            Status::Fail => "✗",
            Status::Skip => "-",
        }
    }
}

/// One piece of the path.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Stable name for scripts (`pod-default-route`, `nat`, …).
    pub id: &'static str,
    pub title: &'static str,
    pub status: Status,
    /// What doctor saw, in one line.
    pub saw: String,
    /// For a failure: what breaks because of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// Commands that repair it, to run in order on the node (in its network namespace).
    pub fix: Vec<String>,
    /// Machine-readable facts behind `saw` (routes, counters, sysctl values).
    #[serde(skip_serializing_if = "Value::is_null")]
    pub details: Value,
}

impl Step {
    pub fn new(id: &'static str, title: &'static str, status: Status, saw: String) -> Step {
        Step {
            id,
            title,
            status,
            saw,
            why: None,
            fix: Vec::new(),
            details: Value::Null,
        }
    }

    pub fn ok(id: &'static str, title: &'static str, saw: impl Into<String>) -> Step {
        Step::new(id, title, Status::Ok, saw.into())
    }

    pub fn fail(id: &'static str, title: &'static str, saw: impl Into<String>) -> Step {
        Step::new(id, title, Status::Fail, saw.into())
    }

    pub fn warn(id: &'static str, title: &'static str, saw: impl Into<String>) -> Step {
        Step::new(id, title, Status::Warn, saw.into())
    }

    pub fn skip(id: &'static str, title: &'static str, saw: impl Into<String>) -> Step {
        Step::new(id, title, Status::Skip, saw.into())
    }

    pub fn why(mut self, why: impl Into<String>) -> Step {
        self.why = Some(why.into());
        self
    }

    pub fn fix(mut self, cmd: impl Into<String>) -> Step {
        self.fix.push(cmd.into());
        self
    }

    pub fn details(mut self, details: Value) -> Step {
        self.details = details;
        self
    }
}

/// Everything doctor checked for one allocation.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodReport {
    /// `namespace/name` from the allocation record, when the runtime passed them.
    pub pod: Option<String>,
    pub container_id: String,
    pub ifname: String,
    pub ip: String,
    /// `ipv4` or `ipv6`: a dual-stack pod has one report per address.
    pub family: &'static str,
    pub pool: String,
    pub netns: String,
    pub host_veth: String,
    pub record: String,
    /// True when no step failed (warnings allowed).
    pub ok: bool,
    /// The ids of the failed steps, in path order.
    pub failed: Vec<&'static str>,
    pub warnings: Vec<&'static str>,
    pub steps: Vec<Step>,
}

impl PodReport {
    pub fn finish(&mut self) {
        let with = |s: Status| {
            self.steps
                .iter()
                .filter(|st| st.status == s)
                .map(|st| st.id)
                .collect::<Vec<_>>()
        };
        self.failed = with(Status::Fail);
        self.warnings = with(Status::Warn);
        self.ok = self.failed.is_empty();
    }

    /// The report for people: a header, then one line per step, with the reason and the fix
    /// under every step that is not fine.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "pod {}  ip {}  container {}/{}",
            self.pod.as_deref().unwrap_or("-/-"),
            self.ip,
            self.container_id,
            self.ifname
        );
        let _ = writeln!(
            out,
            "  netns {}  host veth {}  pool {}",
            if self.netns.is_empty() {
                "-"
            } else {
                &self.netns
            },
            self.host_veth,
            self.pool
        );
        let width = self.steps.iter().map(|s| s.title.len()).max().unwrap_or(0);
        let pad = " ".repeat(width + 5);
        for s in &self.steps {
            let _ = writeln!(out, "  {} {:<width$} {}", s.status.mark(), s.title, s.saw);
            if s.status == Status::Ok || s.status == Status::Skip {
                continue;
            }
            if let Some(why) = &s.why {
                let _ = writeln!(out, "{pad}{why}");
            }
            for f in &s.fix {
                let _ = writeln!(out, "{pad}fix: {f}");
            }
        }
        let _ = match (self.failed.len(), self.warnings.len()) {
            (0, 0) => writeln!(out, "  healthy"),
            (0, _) => writeln!(out, "  works, with warnings: {}", self.warnings.join(", ")),
            (n, _) => writeln!(
                out,
                "  BROKEN: {n} step(s) failed: {}",
                self.failed.join(", ")
            ),
        };
        out
    }
}

/// The node-wide steps (before any pod), for people: same marks, reasons and fixes as a pod's.
pub fn node_text(steps: &[Step]) -> String {
    let mut out = String::from("node\n");
    let width = steps.iter().map(|s| s.title.len()).max().unwrap_or(0);
    let pad = " ".repeat(width + 5);
    for s in steps {
        let _ = writeln!(out, "  {} {:<width$} {}", s.status.mark(), s.title, s.saw);
        if s.status == Status::Ok || s.status == Status::Skip {
            continue;
        }
        for line in s.why.iter().flat_map(|w| w.lines()) {
            let _ = writeln!(out, "{pad}{line}");
        }
        for f in &s.fix {
            let _ = writeln!(out, "{pad}fix: {f}");
        }
    }
    out
}
