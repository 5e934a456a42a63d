//! `doctor`'s flags. Its exit codes: 0 healthy, 1 broken, 2 usage (clap's own code for a usage
//! error, and doctor's when it cannot look), 3 no such pod.

use clap::{ArgGroup, Args};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::config::DEFAULT_DATA_DIR;
use crate::doctor::{Dest, Options, Select};
use crate::install::{DEFAULT_BIN_DIR, DEFAULT_CONF_DIR, DEFAULT_CONF_NAME};

/// `IP`, `IPv4:PORT` or `[IPv6]:PORT`; port 0 is no port.
fn parse_dest(s: &str) -> Result<Dest, String> {
    let bad = || format!("{s:?} is not IP, IPv4:PORT or [IPv6]:PORT");
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Dest { ip, port: None });
    }
    let sa = s.parse::<SocketAddr>().map_err(|_| bad())?;
    match sa.port() {
        0 => Err(bad()),
        port => Ok(Dest {
            ip: sa.ip(),
            port: Some(port),
        }),
    }
}

/// `NAMESPACE/NAME`, or `NAME` alone (any namespace).
fn parse_pod(v: &str) -> Result<Select, String> {
    match v.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Ok(Select::Pod {
            namespace: Some(ns.to_string()),
            name: name.to_string(),
        }),
        None if !v.is_empty() => Ok(Select::Pod {
            namespace: None,
            name: v.to_string(),
        }),
        _ => Err(format!("{v:?} is not NAMESPACE/NAME")),
    }
}

fn parse_container(v: &str) -> Result<String, String> {
    if v.is_empty() {
        return Err("needs a container ID (or a unique prefix of one)".into());
    }
    Ok(v.to_string())
}

/// Walk a pod's packet path on this node and say what is broken and how to fix it
///
/// Run it in the node's network namespace. It checks the pod interface, address, routes and
/// gateway neighbour; the host veth, its sysctls, ip_forward, the /32 route, rp_filter; the
/// NAT rules and counters; and the allocation record. First, for the node: that every plugin
/// the conflist chains is in the CNI bin dir (a missing one fails every pod's ADD). IPv6 addresses get their own walk (the
/// /128, fe80::ecee:eeff:feee:eeee on the host veth, IPv6 sysctls and forwarding, the /128
/// route, ip6tables). --to adds the route each side takes to IP and whether it is
/// masqueraded; with a PORT, the local agent's NetworkPolicy verdict for that TCP connection
/// (which policy allows it, in which direction, or why it is denied). Each step prints ✓ or ✗, what it saw and the command that fixes it. No
/// selector means --all. Exit 0 healthy, 1 broken, 2 usage, 3 no such pod.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("select").args(["pod", "container", "netns", "all"])))]
pub struct DoctorArgs {
    /// The pod, by its Kubernetes name
    #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_pod)]
    pod: Option<Select>,
    /// The pod, by its container ID or a unique prefix of it
    #[arg(long, value_name = "ID", value_parser = parse_container)]
    container: Option<String>,
    /// The pod, by its network namespace (the runtime's path or /proc/PID/ns/net)
    #[arg(long, value_name = "PATH")]
    netns: Option<String>,
    /// Every allocation in the store
    #[arg(long)]
    all: bool,
    /// Also trace the way to this destination from the pod and from the node
    #[arg(long, value_name = "IP|IPv4:PORT|[IPv6]:PORT", value_parser = parse_dest)]
    to: Option<Dest>,
    /// The store: one directory per pool
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
    /// The CNI config dir the runtime reads (install's --conf-dir)
    #[arg(long, value_name = "DIR", env = "ROUTED_CNI_CONF_DIR", default_value = DEFAULT_CONF_DIR)]
    conf_dir: PathBuf,
    /// Our conflist's name in it (install's --conf-name)
    #[arg(long, value_name = "NAME", env = "ROUTED_CNI_CONF_NAME", default_value = DEFAULT_CONF_NAME)]
    conf_name: String,
    /// The CNI bin dir the runtime runs plugins from (install's --bin-dir)
    #[arg(long, value_name = "DIR", env = "ROUTED_CNI_BIN_DIR", default_value = DEFAULT_BIN_DIR)]
    bin_dir: PathBuf,
    /// The local agent's health listener, asked for NetworkPolicy verdicts (agent --health-addr)
    #[arg(long, value_name = "IP:PORT", default_value = crate::policy::client::DEFAULT_AGENT_ADDR)]
    agent_addr: SocketAddr,
}

impl DoctorArgs {
    pub fn into_options(self) -> Options {
        let select = match (self.pod, self.container, self.netns) {
            (Some(pod), _, _) => pod,
            (_, Some(id), _) => Select::Container(id),
            (_, _, Some(path)) => Select::Netns(path),
            _ => Select::All,
        };
        Options {
            select,
            to: self.to,
            data_dir: self.data_dir,
            json: self.json,
            conflist: self.conf_dir.join(self.conf_name),
            bin_dir: self.bin_dir,
            agent_addr: self.agent_addr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse, Command};
    use super::*;

    fn doctor(s: &str) -> Result<Options, clap::Error> {
        let argv: Vec<&str> = std::iter::once("doctor")
            .chain(s.split_whitespace())
            .collect();
        match parse(&argv)?.command {
            Some(Command::Doctor(a)) => Ok(a.into_options()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn arguments() {
        let o = doctor("--pod default/web-1 --to 10.96.0.10:53 --json").unwrap();
        assert_eq!(
            o.select,
            Select::Pod {
                namespace: Some("default".into()),
                name: "web-1".into()
            }
        );
        let to = o.to.unwrap();
        assert_eq!((to.ip, to.port), ("10.96.0.10".parse().unwrap(), Some(53)));
        assert!(o.json);
        assert_eq!(o.agent_addr, "127.0.0.1:9465".parse().unwrap());
        let o = doctor("--to 10.0.0.1:80 --agent-addr 127.0.0.1:9000").unwrap();
        assert_eq!(o.agent_addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(doctor("").unwrap().select, Select::All);
        assert_eq!(doctor("--all").unwrap().select, Select::All);
        assert_eq!(
            doctor("--container abc").unwrap().select,
            Select::Container("abc".into())
        );
        assert_eq!(
            doctor("--pod web").unwrap().select,
            Select::Pod {
                namespace: None,
                name: "web".into()
            }
        );
        for (arg, ip, port) in [
            ("fd00::2", "fd00::2", None),
            ("[fd00::2]:80", "fd00::2", Some(80)),
            ("10.0.0.1", "10.0.0.1", None),
        ] {
            let to = parse_dest(arg).unwrap_or_else(|e| panic!("{arg}: {e}"));
            assert_eq!((to.ip, to.port), (ip.parse().unwrap(), port), "{arg}");
        }
        for bad in [
            "--pod a/b --all",
            "--container a --netns /x",
            "--pod a/",
            "--to 10.0.0.1:0",
            "--to [fd00::2]:0",
            "--to fd00::2:80:",
            "--to example.com",
            "--container",
            "--agent-addr localhost",
            "--frobnicate",
        ] {
            let e = doctor(bad).unwrap_err();
            // Usage errors share doctor's documented exit code for them.
            assert_eq!(e.exit_code(), crate::doctor::EXIT_USAGE, "{bad}: {e}");
        }
    }
}
