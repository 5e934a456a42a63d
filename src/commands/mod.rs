//! The CNI verbs, each a sequence of store, data path and NAT steps, and the dispatcher that
//! turns environment + stdin into exactly one JSON document (or none) and an exit code.

pub mod add;
pub mod check;
pub mod del;
pub mod gc;
pub mod status;

use serde_json::Value;
use std::io::Read;
use std::time::Instant;

use crate::cni::env::{self, Command};
use crate::cni::error::{CniError, Code, Result};
use crate::cni::types::{self, LATEST_VERSION};
use crate::config::{self, NetConf, MAX_CONFIG_BYTES};

/// What the process prints and how it exits.
pub struct Outcome {
    pub stdout: Option<Value>,
    pub exit_code: i32,
}

fn read_stdin() -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin()
        .take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| CniError::new(Code::Io, format!("read network config from stdin: {e}")))?;
    Ok(buf)
}

/// Runs one CNI invocation as described by the environment. Never panics into the runtime's
/// face: every failure becomes an error document.
pub fn run_cni(command: &str) -> Outcome {
    let started = Instant::now();
    let started_at = std::time::SystemTime::now();
    let Some(cmd) = Command::parse(command) else {
        let e = CniError::invalid_env(
            "CNI_COMMAND",
            format!("{command:?} is not one of ADD, DEL, CHECK, GC, STATUS, VERSION"),
        );
        return early_failure(command, LATEST_VERSION, &e);
    };
    let stdin = match read_stdin() {
        Ok(b) => b,
        Err(e) => return early_failure(command, LATEST_VERSION, &e),
    };
    if cmd == Command::Version {
        let asked = config::parse_json(&stdin).ok();
        let asked = asked
            .as_ref()
            .and_then(|v| v.get("cniVersion"))
            .and_then(Value::as_str);
        return Outcome {
            stdout: Some(types::version_json(asked)),
            exit_code: 0,
        };
    }
    let raw = match config::parse_json(&stdin) {
        Ok(v) => v,
        Err(e) => return early_failure(command, LATEST_VERSION, &e),
    };
    let version = config::declared_version(&raw)
        .unwrap_or(LATEST_VERSION)
        .to_string();
    let conf = match config::parse(raw) {
        Ok(c) => c,
        Err(e) => return early_failure(command, &version, &e),
    };
    crate::log::configure(conf.log_level, conf.log_file.as_deref());
    let result = dispatch(cmd, &conf, started_at);
    let took = started.elapsed().as_secs_f64() * 1000.0;
    let who = format!(
        "container={} ifname={} netns={}",
        std::env::var("CNI_CONTAINERID").unwrap_or_default(),
        std::env::var("CNI_IFNAME").unwrap_or_default(),
        std::env::var("CNI_NETNS").unwrap_or_default()
    );
    match result {
        Ok(stdout) => {
            crate::info!(
                "{} ok network={} {who} took={took:.2}ms",
                cmd.as_str(),
                conf.name
            );
            Outcome {
                stdout,
                exit_code: 0,
            }
        }
        Err(e) => {
            crate::error!(
                "{} failed network={} {who} code={} msg={:?} took={took:.2}ms",
                cmd.as_str(),
                conf.name,
                e.code.as_u32(),
                e.to_string()
            );
            failure(&version, &e)
        }
    }
}

/// A failure before the config (and with it the log file) is known: the runtime gets the
/// error document on stdout, and a person reading the kubelet's or containerd's log gets one
/// line on stderr, where the log sink still points.
fn early_failure(command: &str, version: &str, e: &CniError) -> Outcome {
    crate::error!(
        "{command} failed before the config was read: code={} msg={:?}",
        e.code.as_u32(),
        e.to_string()
    );
    failure(version, e)
}

fn failure(version: &str, e: &CniError) -> Outcome {
    Outcome {
        stdout: Some(types::error_json(version, e)),
        exit_code: 1,
    }
}

fn dispatch(
    cmd: Command,
    conf: &NetConf,
    started_at: std::time::SystemTime,
) -> Result<Option<Value>> {
    let v = conf.version();
    let requires = |ok: bool, since: &str| -> Result<()> {
        if ok {
            Ok(())
        } else {
            Err(CniError::new(
                Code::IncompatibleVersion,
                format!(
                    "{} needs cniVersion {since} or later, the config says {}",
                    cmd.as_str(),
                    conf.cni_version
                ),
            ))
        }
    };
    match cmd {
        Command::Add => add::run(conf, &env::attachment(cmd)?).map(Some),
        Command::Del => del::run(conf, &env::attachment(cmd)?).map(|()| None),
        Command::Check => {
            requires(v.has_check(), "0.4.0")?;
            check::run(conf, &env::attachment(cmd)?).map(|()| None)
        }
        Command::Gc => {
            requires(v.is_1_1(), "1.1.0")?;
            gc::run(conf, started_at).map(|()| None)
        }
        Command::Status => {
            requires(v.is_1_1(), "1.1.0")?;
            status::run(conf).map(|()| None)
        }
        Command::Version => unreachable!("handled before config parsing"),
    }
}
