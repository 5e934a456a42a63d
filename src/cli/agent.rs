//! `agent`'s flags: its own, each with an environment fallback, and install's settings.

use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::install::SettingsArgs;
use crate::agent::kernel_tables::TablesMode;
use crate::agent::tunnel::{Encapsulation, TunnelOptions};
use crate::agent::AgentOptions;
use crate::dataplane::vxlan::{DEFAULT_VXLAN_PORT, DEFAULT_VXLAN_VNI};

/// VNIs are 24 bits.
fn vni(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(v) if (1..1 << 24).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a VNI (1 to 16777215)")),
    }
}

fn seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

/// Run the DaemonSet's long-running side: install from the Node's podCIDR, route to the
/// other nodes, answer health probes
///
/// Reads this node's podCIDR from the API server and runs install with it (again when it
/// changes); keeps a route to every other node's podCIDRs (both families, marked `proto 77`;
/// only those are ever changed): via its InternalIP where the nodes share a link, through the
/// VXLAN device rcni.vxlan where they do not (--encapsulation); re-applies both every resync from its
/// watch-fed cache (repairing what was removed by hand; it lists again only at start and
/// after a failed or expired watch); and answers GET /healthz (its own loop is alive) and
/// /readyz (API server reachable, conflist installed, routes in sync; a 503 says why). The API
/// server is --api-server/ROUTED_CNI_API_SERVER; unset or empty, it defaults to
/// https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT (the kubernetes Service, which
/// needs kube-proxy). Token and CA default to the pod's service account. SIGTERM exits; the
/// routes stay.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// This node's name, as in its Node object [required]
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    node_name: Option<String>,
    /// The API server's https:// URL, e.g. the control plane's own address so the agent does
    /// not depend on kube-proxy; empty counts as unset [default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT]
    #[arg(long, value_name = "URL", env = "ROUTED_CNI_API_SERVER")]
    api_server: Option<String>,
    /// The bearer token, read again at each request (it is rotated)
    #[arg(
        long,
        value_name = "PATH",
        env = "ROUTED_CNI_TOKEN_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    token_file: PathBuf,
    /// The CA that signed the API server's certificate
    #[arg(
        long,
        value_name = "PATH",
        env = "ROUTED_CNI_CA_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    )]
    ca_file: PathBuf,
    /// How often everything is re-applied from the cache
    #[arg(long, value_name = "SECONDS", env = "ROUTED_CNI_RESYNC_SECONDS", default_value = "60", value_parser = seconds)]
    resync_seconds: Duration,
    /// Not ready (/readyz 503) after this long without an answer from the API server or a
    /// route sync [default: 3 resyncs]. Liveness (/healthz) does not depend on it
    ///
    /// /healthz only says whether the agent's own loop is alive: an API server outage makes
    /// every agent not ready, never restarted.
    #[arg(long, value_name = "SECONDS", env = "ROUTED_CNI_STALE_SECONDS", value_parser = seconds)]
    stale_seconds: Option<Duration>,
    /// Where /healthz and /readyz are answered
    #[arg(
        long,
        value_name = "ADDRESS:PORT",
        env = "ROUTED_CNI_HEALTH_ADDR",
        default_value = "127.0.0.1:9465"
    )]
    health_addr: SocketAddr,
    /// Also serve /metrics alone on this address (for a Prometheus outside the node, e.g.
    /// 0.0.0.0:9466); unset: /metrics only on the health listener
    #[arg(long, value_name = "ADDRESS:PORT", env = "ROUTED_CNI_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// How pod traffic reaches other nodes: never (direct routes only: all nodes share a
    /// link), vxlan (every node through the VXLAN device), crosssubnet (direct where the kernel
    /// reaches the node without a gateway, VXLAN elsewhere)
    #[arg(
        long,
        value_name = "MODE",
        env = "ROUTED_CNI_ENCAPSULATION",
        default_value = "crosssubnet"
    )]
    encapsulation: Encapsulation,
    /// The VXLAN device's UDP port (IANA's 4789; every node must use the same)
    #[arg(long, value_name = "PORT", env = "ROUTED_CNI_VXLAN_PORT", default_value_t = DEFAULT_VXLAN_PORT)]
    vxlan_port: u16,
    /// The VXLAN network identifier (every node must use the same; 77 is neither flannel's 1
    /// nor Calico's 4096, so either can run beside routed-cni during a migration)
    #[arg(long, value_name = "VNI", env = "ROUTED_CNI_VXLAN_VNI", default_value_t = DEFAULT_VXLAN_VNI, value_parser = vni)]
    vxlan_vni: u32,
    /// Enforce Kubernetes NetworkPolicy on this node (nftables table inet routed-cni; needs
    /// `nft` and RBAC list/watch on pods, namespaces and networkpolicies); false for clusters
    /// that run another policy engine: the table is then removed
    #[arg(long, value_name = "BOOL", env = "ROUTED_CNI_NETWORK_POLICY", default_value = "true",
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    network_policy: bool,
    /// How the agent's log lines on stderr look: text (`<time> <level> pid=<pid> <message>`)
    /// or json (one object per line: time, level, message, fields with thread, component and
    /// node)
    #[arg(
        long,
        value_name = "FORMAT",
        env = "ROUTED_CNI_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: crate::log::Format,
    /// What to do when a kernel table limit is below what the cluster needs (the neighbour
    /// tables' gc_thresh2/3 for thousands of directly routed nodes, IPv6 route/max_size on old
    /// kernels): raise it (never lowers one), or report (log and /readyz text only, for nodes
    /// whose sysctls another tool owns)
    #[arg(
        long,
        value_name = "MODE",
        env = "ROUTED_CNI_KERNEL_TABLES",
        default_value = "raise"
    )]
    kernel_tables: TablesMode,
    /// Refused with a reason: the agent reads the podCIDR from the Node object.
    #[arg(long, value_name = "CIDR", hide = true)]
    pod_subnet: Option<String>,
    #[command(flatten)]
    install: SettingsArgs,
}

impl AgentArgs {
    /// The options, or why they are incomplete. `env` reads the variables that only give
    /// defaults (KUBERNETES_SERVICE_HOST and _PORT); empty counts as unset.
    pub fn into_options(
        self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<AgentOptions, String> {
        let env = |k: &str| env(k).filter(|v| !v.is_empty());
        if self.pod_subnet.is_some() {
            return Err("--pod-subnet is not an agent flag: the agent reads this node's podCIDR from its Node object".into());
        }
        let node_name = self.node_name.ok_or(
            "--node-name (or NODE_NAME) is required: in a DaemonSet, set NODE_NAME from the downward API (fieldRef spec.nodeName)",
        )?;
        let api_server = match self.api_server {
            Some(url) => url,
            None => {
                let host = env("KUBERNETES_SERVICE_HOST").ok_or(
                    "no API server: KUBERNETES_SERVICE_HOST is not set (not in a pod?); pass --api-server https://HOST:PORT",
                )?;
                let port = env("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into());
                // An IPv6 service address needs brackets in a URL.
                if host.contains(':') {
                    format!("https://[{host}]:{port}")
                } else {
                    format!("https://{host}:{port}")
                }
            }
        };
        if !api_server.starts_with("https://") {
            return Err(format!(
                "--api-server {api_server:?} must be an https:// URL: the token must not travel in clear"
            ));
        }
        Ok(AgentOptions {
            node_name,
            api_server,
            token_file: self.token_file,
            ca_file: self.ca_file,
            resync: self.resync_seconds,
            // Unhealthy after three missed resyncs unless told otherwise.
            stale_after: self.stale_seconds.unwrap_or(self.resync_seconds * 3),
            health_addr: self.health_addr,
            metrics_addr: self.metrics_addr,
            install: self.install.into_settings(),
            tunnel: TunnelOptions {
                mode: self.encapsulation,
                vni: self.vxlan_vni,
                port: self.vxlan_port,
            },
            network_policy: self.network_policy,
            log_format: self.log_format,
            kernel_tables: self.kernel_tables,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse, Command};
    use super::*;

    fn agent(args: &[&str], env: &[(&str, &str)]) -> Result<AgentOptions, String> {
        let argv: Vec<&str> = std::iter::once("agent")
            .chain(args.iter().copied())
            .collect();
        match parse(&argv).map_err(|e| e.to_string())?.command {
            Some(Command::Agent(a)) => a.into_options(|k| {
                env.iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| v.to_string())
            }),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flags_and_defaults() {
        let o = agent(
            &[
                "--node-name",
                "n1",
                "--api-server",
                "https://100.64.0.254:6443",
                "--resync-seconds",
                "2",
                "--bin-dir",
                "/x/bin",
                "--cluster-cidr",
                "10.244.0.0/16",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(o.node_name, "n1");
        assert_eq!(o.resync, Duration::from_secs(2));
        assert_eq!(o.stale_after, Duration::from_secs(6));
        assert_eq!(o.health_addr, "127.0.0.1:9465".parse().unwrap());
        assert_eq!(
            o.token_file,
            PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
        );
        assert_eq!(o.install.bin_dir, PathBuf::from("/x/bin"));
        assert_eq!(o.install.cluster_cidrs[0].to_string(), "10.244.0.0/16");
        assert_eq!(o.tunnel, TunnelOptions::default());
        assert_eq!(o.tunnel.mode, Encapsulation::CrossSubnet);
        assert!(o.network_policy);
        assert_eq!(o.kernel_tables, TablesMode::Raise);
        let off = agent(
            &[
                "--node-name",
                "n1",
                "--api-server",
                "https://x",
                "--network-policy=false",
            ],
            &[],
        );
        assert!(!off.unwrap().network_policy);
        assert_eq!(o.log_format, crate::log::Format::Text);
        let json = agent(
            &[
                "--node-name",
                "n1",
                "--api-server",
                "https://x",
                "--log-format",
                "json",
            ],
            &[],
        );
        assert_eq!(json.unwrap().log_format, crate::log::Format::Json);
        let bad = agent(
            &[
                "--node-name",
                "n1",
                "--api-server",
                "https://x",
                "--log-format",
                "xml",
            ],
            &[],
        );
        assert!(bad.unwrap_err().contains("text or json"));
        let maybe = agent(
            &[
                "--node-name",
                "n1",
                "--api-server",
                "https://x",
                "--network-policy",
                "maybe",
            ],
            &[],
        );
        assert!(maybe.unwrap_err().contains("--network-policy"));
        let v = agent(
            &[
                "--node-name",
                "n1",
                "--api-server",
                "https://x",
                "--vxlan-vni",
                "4097",
            ],
            &[],
        );
        assert_eq!(v.unwrap().tunnel.vni, 4097);
        let r = agent(
            &[
                "--node-name",
                "n1",
                "--api-server",
                "https://x",
                "--kernel-tables",
                "report",
            ],
            &[],
        );
        assert_eq!(r.unwrap().kernel_tables, TablesMode::Report);
        let err = |v: &[&str]| agent(v, &[]).unwrap_err();
        let base = ["--node-name", "n1", "--api-server", "https://x"];
        let with =
            |extra: &[&'static str]| -> Vec<&str> { base.iter().chain(extra).copied().collect() };
        assert!(err(&["--node-name", "n1", "--api-server", "http://x:80"]).contains("https"));
        assert!(err(&with(&["--pod-subnet", "10.0.0.0/24"])).contains("podCIDR"));
        assert!(err(&with(&["--resync-seconds", "0"])).contains("positive"));
        assert!(err(&with(&["--stale-seconds", "inf"])).contains("positive"));
        assert!(err(&with(&["--bogus", "1"])).contains("--bogus"));
        assert!(err(&with(&["--health-addr", "9465"])).contains("ADDRESS:PORT"));
        assert!(err(&with(&["--mtu", "x"])).contains("--mtu"));
        assert!(err(&["--node-name"]).contains("--node-name"));
        assert!(err(&with(&["--encapsulation", "ipip"])).contains("never, vxlan or crosssubnet"));
        assert!(err(&with(&["--vxlan-vni", "16777216"])).contains("VNI"));
        assert!(err(&with(&["--vxlan-port", "70000"])).contains("--vxlan-port"));
        assert!(err(&with(&["--kernel-tables", "lower"])).contains("raise or report"));
        assert!(err(&["--api-server", "https://x"]).contains("NODE_NAME"));
    }

    #[test]
    fn api_server_from_the_service_variables() {
        let o = |env: &[(&str, &str)]| agent(&["--node-name", "n1"], env);
        assert_eq!(
            o(&[("KUBERNETES_SERVICE_HOST", "10.96.0.1")])
                .unwrap()
                .api_server,
            "https://10.96.0.1:443"
        );
        assert_eq!(
            o(&[
                ("KUBERNETES_SERVICE_HOST", "fd00::1"),
                ("KUBERNETES_SERVICE_PORT", "6443")
            ])
            .unwrap()
            .api_server,
            "https://[fd00::1]:6443"
        );
        assert!(o(&[("KUBERNETES_SERVICE_HOST", "")])
            .unwrap_err()
            .contains("KUBERNETES_SERVICE_HOST"));
    }
}
