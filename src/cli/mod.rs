//! Commands for people (no CNI_COMMAND): `version`, `list`, `doctor`, `install`, `uninstall`,
//! `audit`, `agent`, `policy`. The flags, their environment fallbacks and the help text are declared here once,
//! with clap; each command module takes a plain typed options struct and never sees argv, so
//! nothing imports this module back. CNI mode never reaches this module (see main.rs).

mod agent;
mod doctor;
mod install;
mod policy;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;

use crate::cni::types::SUPPORTED_VERSIONS;
use crate::config::{DEFAULT_DATA_DIR, DEFAULT_HOST_VETH_PREFIX};

/// A routed (calico-style) Kubernetes CNI plugin
///
/// As a CNI plugin it is run by the container runtime with CNI_COMMAND set (ADD, DEL, CHECK,
/// GC, STATUS, VERSION) and the network config on stdin. Without CNI_COMMAND it runs one of the
/// commands below. `routed-cni COMMAND --help` tells more about each.
#[derive(Debug, Parser)]
#[command(
    name = "routed-cni",
    bin_name = "routed-cni",
    disable_version_flag = true
)]
struct Cli {
    /// Print the plugin version and the CNI versions it speaks
    #[arg(long)]
    version: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the plugin version and the CNI versions it speaks
    Version,
    List(ListArgs),
    Doctor(doctor::DoctorArgs),
    Install(install::InstallArgs),
    Uninstall(install::UninstallArgs),
    Audit(AuditArgs),
    Agent(Box<agent::AgentArgs>),
    Policy(policy::PolicyArgs),
}

/// Show the allocations of every pool in the store
///
/// One row per allocated address: pool, address, pod, host veth, whether that host veth
/// exists on this node, and the container and interface it was allocated for.
#[derive(Debug, Args)]
struct ListArgs {
    /// The store: one directory per pool
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

/// Find what leaked: anything of ours on this node that no allocation explains
///
/// Reports host veths, /32 and /128 routes, NAT jumps and chains (iptables and ip6tables) that
/// no live allocation explains, and allocations whose host veth is gone, each with the command
/// that removes it. Exit 0 clean, 1 on a leak, 2 when it could not look.
#[derive(Debug, Args)]
struct AuditArgs {
    /// The store: one directory per pool
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// The hostVethPrefix of the network config
    #[arg(long, value_name = "PREFIX", default_value = DEFAULT_HOST_VETH_PREFIX)]
    host_veth_prefix: String,
    /// Print JSON instead of lines
    #[arg(long)]
    json: bool,
}

/// The declared command line, with every environment fallback whose variable is set but empty
/// turned off: a manifest that sets `ROUTED_CNI_MTU: ""` means "the default", as it did before
/// clap (clap alone would hand "" to the flag's parser).
fn command() -> clap::Command {
    fn empty_env_is_unset(cmd: clap::Command) -> clap::Command {
        let cmd = cmd.mut_args(|a| {
            let empty = a
                .get_env()
                .and_then(std::env::var_os)
                .is_some_and(|v| v.is_empty());
            if empty {
                a.env(None)
            } else {
                a
            }
        });
        cmd.mut_subcommands(empty_env_is_unset)
    }
    empty_env_is_unset(Cli::command())
}

/// A usage error found after clap's own checks (a value that needs another's, a missing
/// flag whose message must name its variable), printed like clap's own: exit 2.
fn usage_error(subcommand: &str, msg: impl std::fmt::Display) -> i32 {
    let mut cmd = command();
    // Builds the subcommands' usage lines with the program's name, as clap's own errors have.
    cmd.build();
    let cmd = cmd
        .find_subcommand_mut(subcommand)
        .expect("declared subcommand");
    let e = cmd.error(ErrorKind::ValueValidation, msg);
    let _ = e.print();
    e.exit_code()
}

/// Parses `args` (the program name first) and runs the command; returns the exit code.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match command()
        .try_get_matches_from(args)
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) => {
            // --help goes to stdout with exit 0; a usage error to stderr with exit 2.
            let _ = e.print();
            return e.exit_code();
        }
    };
    match cli.command {
        None if cli.version => version(),
        Some(Command::Version) => version(),
        None => {
            let _ = command().print_long_help();
            0
        }
        Some(Command::List(a)) => crate::list::run(&crate::list::Options {
            data_dir: a.data_dir,
            json: a.json,
        }),
        Some(Command::Doctor(a)) => crate::doctor::run(a.into_options()),
        Some(Command::Install(a)) => match a.into_options() {
            Ok(o) => crate::install::run(&o),
            Err(e) => usage_error("install", e),
        },
        Some(Command::Uninstall(a)) => crate::install::run_uninstall(&a.into_options()),
        Some(Command::Audit(a)) => crate::audit::run(crate::audit::Options {
            data_dir: a.data_dir,
            host_veth_prefix: a.host_veth_prefix,
            json: a.json,
        }),
        Some(Command::Agent(a)) => match a.into_options(|k| std::env::var(k).ok()) {
            Ok(o) => crate::agent::run(o),
            Err(e) => usage_error("agent", e),
        },
        Some(Command::Policy(a)) => crate::policy::show::run(&a.into_options()),
    }
}

fn version() -> i32 {
    println!(
        "routed-cni {} (CNI {})",
        env!("CARGO_PKG_VERSION"),
        SUPPORTED_VERSIONS.join(", ")
    );
    0
}

/// Parses a command line in tests, without touching the process environment's fallbacks
/// beyond what clap reads.
#[cfg(test)]
fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    let argv = std::iter::once("routed-cni").chain(args.iter().copied());
    command()
        .try_get_matches_from(argv)
        .and_then(|m| Cli::from_arg_matches(&m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_are_consistent() {
        // clap's own checks: no duplicate flags, groups name existing args, defaults parse.
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_answers_help_and_rejects_unknown_flags() {
        for sub in [
            "list",
            "doctor",
            "install",
            "uninstall",
            "audit",
            "agent",
            "policy",
            "version",
        ] {
            let e = parse(&[sub, "--help"]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::DisplayHelp, "{sub}");
            assert_eq!(e.exit_code(), 0, "{sub}");
            assert!(
                e.to_string().contains(&format!("Usage: routed-cni {sub}")),
                "{sub}: {e}"
            );
            let e = parse(&[sub, "--frobnicate"]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::UnknownArgument, "{sub}");
            assert_eq!(e.exit_code(), 2, "{sub}");
            assert!(e.to_string().contains("--frobnicate"), "{sub}: {e}");
        }
        assert_eq!(
            parse(&["frobnicate"]).unwrap_err().kind(),
            ErrorKind::InvalidSubcommand
        );
    }

    #[test]
    fn list_and_audit_flags() {
        let Some(Command::List(l)) = parse(&["list"]).unwrap().command else {
            panic!("list")
        };
        assert_eq!(
            (l.data_dir, l.json),
            (PathBuf::from(DEFAULT_DATA_DIR), false)
        );
        let Some(Command::Audit(a)) = parse(&[
            "audit",
            "--data-dir=/x",
            "--host-veth-prefix",
            "pv",
            "--json",
        ])
        .unwrap()
        .command
        else {
            panic!("audit")
        };
        assert_eq!(
            (a.data_dir, a.host_veth_prefix.as_str(), a.json),
            (PathBuf::from("/x"), "pv", true)
        );
        // A flag that needs a value and got none is a usage error, not a silent default.
        assert_eq!(
            parse(&["audit", "--data-dir"]).unwrap_err().kind(),
            ErrorKind::InvalidValue
        );
    }
}
