//! `policy`'s flags. Exit codes: 0 found, 1 the agent does not know the pod, 2 usage, 3 the
//! agent cannot be asked.

use clap::Args;
use std::net::SocketAddr;

use crate::policy::client::DEFAULT_AGENT_ADDR;
use crate::policy::show::Options;

/// `NAMESPACE/NAME`, both parts present.
fn parse_pod(v: &str) -> Result<(String, String), String> {
    match v.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("{v:?} is not NAMESPACE/NAME")),
    }
}

/// Show the NetworkPolicies selecting a pod and what they allow, from the local agent's view
///
/// Asks `routed-cni agent` on this node (its health listener, GET /policy) for the pod: its
/// node, addresses and labels, whether it is isolated for ingress and egress and by which
/// policies, and each of those policies' rules as people read them (named ports resolved for
/// this pod). Needs the agent running with --network-policy (the default). Exit 0 found, 1 the
/// agent does not know the pod, 2 usage, 3 the agent cannot be asked.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// The pod
    #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_pod)]
    pod: (String, String),
    /// The agent's health listener (agent --health-addr)
    #[arg(long, value_name = "IP:PORT", default_value = DEFAULT_AGENT_ADDR)]
    agent_addr: SocketAddr,
    /// Print the agent's JSON instead of text
    #[arg(long)]
    json: bool,
}

impl PolicyArgs {
    pub fn into_options(self) -> Options {
        Options {
            namespace: self.pod.0,
            name: self.pod.1,
            agent_addr: self.agent_addr,
            json: self.json,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse, Command};

    #[test]
    fn arguments() {
        let Some(Command::Policy(a)) = parse(&["policy", "--pod", "x/a"]).unwrap().command else {
            panic!("policy")
        };
        let o = a.into_options();
        assert_eq!(
            (o.namespace.as_str(), o.name.as_str(), o.json),
            ("x", "a", false)
        );
        assert_eq!(o.agent_addr, "127.0.0.1:9465".parse().unwrap());
        let Some(Command::Policy(a)) = parse(&[
            "policy",
            "--pod=x/a",
            "--agent-addr",
            "[::1]:9000",
            "--json",
        ])
        .unwrap()
        .command
        else {
            panic!("policy")
        };
        let o = a.into_options();
        assert_eq!(
            (o.agent_addr, o.json),
            ("[::1]:9000".parse().unwrap(), true)
        );
        for bad in [
            &["policy"][..],
            &["policy", "--pod", "a"],
            &["policy", "--pod", "/a"],
            &["policy", "--pod", "x/"],
            &["policy", "--pod", "x/a/b"],
            &["policy", "--pod", "x/a", "--agent-addr", "localhost"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }
}
