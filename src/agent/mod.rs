//! `routed-cni agent`: the DaemonSet's long-running side, kept out of the CNI verbs (which
//! never talk to the API server). It learns this node's podCIDR from its Node object and
//! installs the plugin with it, keeps `<other node's podCIDR> via <its InternalIP>` routes in
//! sync from a list + watch of all nodes, and answers kubelet's probes. Every resync period it
//! re-applies everything from the watch-fed cache (repairing routes or a conflist removed by
//! hand) without asking the API server again: a full list of every node by every node each
//! minute would be the heaviest load a large cluster puts on its API server. It relists, like
//! client-go's reflector, at start, when the watch's version has expired (410) and after any
//! watch error. On SIGTERM it exits and leaves the routes:
//! pods keep working while the agent restarts or is upgraded.

pub mod health;
pub mod kube;
pub mod routes;

use ipnetwork::IpNetwork;
use nix::sys::signal::{SigSet, Signal};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::install::{self, InstallSettings};
use health::Health;
use kube::{ApiClient, KubeError, NodeInfo, WatchEvent};
use routes::{Plan, RouteSync};

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
pub const DEFAULT_HEALTH_ADDR: &str = "127.0.0.1:9465";
const DEFAULT_RESYNC: Duration = Duration::from_secs(60);
/// The first retry after an API error; doubled up to the resync period.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// A watch that ends sooner than this without an error was refused in effect: back off before
/// the next one. (A normal watch lasts until its timeout, at least a second.)
const QUICK_WATCH_END: Duration = Duration::from_millis(200);

/// Held while the agent changes the node (install, routes), so SIGTERM never cuts a change in
/// half; the signal thread takes it before exiting.
static BUSY: Mutex<()> = Mutex::new(());

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentOptions {
    pub node_name: String,
    pub api_server: String,
    pub token_file: PathBuf,
    pub ca_file: PathBuf,
    pub resync: Duration,
    pub stale_after: Duration,
    pub health_addr: SocketAddr,
    pub install: InstallSettings,
}

const AGENT_FLAGS: [&str; 7] = [
    "--node-name",
    "--api-server",
    "--token-file",
    "--ca-file",
    "--resync-seconds",
    "--stale-seconds",
    "--health-addr",
];

/// `agent` flags, each with an environment fallback; the install flags go to install's parser.
pub fn parse_args(args: &[String]) -> Result<AgentOptions, String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut own = std::collections::HashMap::new();
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--pod-subnet" {
            return Err("--pod-subnet is not an agent flag: the agent reads this node's podCIDR from its Node object".into());
        }
        let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
        if AGENT_FLAGS.contains(&a.as_str()) {
            own.insert(a.trim_start_matches("--").to_string(), v.clone());
        } else {
            rest.push(a.clone());
            rest.push(v.clone());
        }
    }
    let get = |flag: &str, var: &str| own.get(flag).cloned().or_else(|| env(var));
    let node_name = get("node-name", "NODE_NAME").ok_or(
        "--node-name (or NODE_NAME) is required: in a DaemonSet, set NODE_NAME from the downward API (fieldRef spec.nodeName)",
    )?;
    let api_server = match get("api-server", "ROUTED_CNI_API_SERVER") {
        Some(url) => url,
        None => {
            let (host, port) = (
                env("KUBERNETES_SERVICE_HOST"),
                env("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into()),
            );
            let host = host.ok_or(
                "no API server: KUBERNETES_SERVICE_HOST is not set (not in a pod?); pass --api-server https://HOST:PORT",
            )?;
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
    let seconds = |flag: &str, var: &str, default: Duration| -> Result<Duration, String> {
        match get(flag, var) {
            None => Ok(default),
            Some(s) => match s.parse::<f64>() {
                Ok(v) if v > 0.0 && v.is_finite() => Ok(Duration::from_secs_f64(v)),
                _ => Err(format!(
                    "--{flag} {s:?} is not a positive number of seconds"
                )),
            },
        }
    };
    let resync = seconds(
        "resync-seconds",
        "ROUTED_CNI_RESYNC_SECONDS",
        DEFAULT_RESYNC,
    )?;
    let stale_after = seconds("stale-seconds", "ROUTED_CNI_STALE_SECONDS", resync * 3)?;
    let health_addr =
        get("health-addr", "ROUTED_CNI_HEALTH_ADDR").unwrap_or_else(|| DEFAULT_HEALTH_ADDR.into());
    let health_addr = health_addr
        .parse()
        .map_err(|_| format!("--health-addr {health_addr:?} is not ADDRESS:PORT"))?;
    Ok(AgentOptions {
        node_name,
        api_server,
        token_file: get("token-file", "ROUTED_CNI_TOKEN_FILE")
            .unwrap_or_else(|| format!("{SA_DIR}/token"))
            .into(),
        ca_file: get("ca-file", "ROUTED_CNI_CA_FILE")
            .unwrap_or_else(|| format!("{SA_DIR}/ca.crt"))
            .into(),
        resync,
        stale_after,
        health_addr,
        install: install::parse_settings(&rest)?,
    })
}

/// Runs the agent until SIGTERM/SIGINT. Returns the exit code for a start-up failure.
pub fn run(args: &[String]) -> i32 {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", crate::cli::USAGE);
        return 0;
    }
    let opts = match parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("routed-cni agent: {e}");
            return 2;
        }
    };
    // Before any thread exists, so every thread inherits the mask and only the signal thread
    // ever sees these signals.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    if let Err(e) = signals.thread_block() {
        eprintln!("routed-cni agent: block signals: {e}");
        return 1;
    }
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let sig = signals.wait().map(|s| s.as_str()).unwrap_or("signal");
            crate::info!("{sig}: exiting; routes stay in place so pods keep working until the next agent takes over");
            let _busy = BUSY.lock().unwrap_or_else(|p| p.into_inner());
            std::process::exit(0);
        });
    if let Err(e) = spawned {
        eprintln!("routed-cni agent: start signal thread: {e}");
        return 1;
    }
    let health = Health::new(opts.stale_after);
    if let Err(e) = health::serve(opts.health_addr, health.clone()) {
        eprintln!(
            "routed-cni agent: health listener on {}: {e} (is another agent running? change --health-addr)",
            opts.health_addr
        );
        return 1;
    }
    let client = match ApiClient::new(&opts.api_server, &opts.token_file, &opts.ca_file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("routed-cni agent: {e}");
            return 1;
        }
    };
    let rt = match crate::commands::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("routed-cni agent: {e}");
            return 1;
        }
    };
    let netlink = match rt.block_on(async { crate::dataplane::Netlink::connect() }) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("routed-cni agent: {e}");
            return 1;
        }
    };
    crate::info!(
        "agent starting: node {}, API server {}, resync every {:?}, unhealthy after {:?} without a sync, health on http://{}/healthz, routes marked proto {}",
        opts.node_name,
        opts.api_server,
        opts.resync,
        opts.stale_after,
        opts.health_addr,
        routes::ROUTE_PROTOCOL
    );
    let mut agent = Agent {
        routes: RouteSync::new(netlink.handle),
        rt,
        client,
        health,
        nodes: BTreeMap::new(),
        routed_for: BTreeMap::new(),
        installed_for: None,
        said: Vec::new(),
        opts,
    };
    agent.run()
}

struct Agent {
    opts: AgentOptions,
    client: ApiClient,
    rt: tokio::runtime::Runtime,
    routes: RouteSync,
    health: Arc<Health>,
    nodes: BTreeMap<String, NodeInfo>,
    /// Destination → node it was last routed for, to name the node when its route goes.
    routed_for: BTreeMap<IpNetwork, String>,
    /// The pod subnets of the last successful install.
    installed_for: Option<Vec<IpNetwork>>,
    /// The notes of the last reconcile (skipped nodes, install wait), so each is logged once
    /// per change rather than at every resync.
    said: Vec<String>,
}

/// Why a watch ended.
enum WatchEnd {
    /// Time for the periodic relist.
    Resync,
    /// The resource version expired, or the stream failed: relist now.
    Relist,
}

impl Agent {
    fn run(&mut self) -> ! {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let list = match self.client.list_nodes() {
                Ok(l) => l,
                Err(e) => {
                    self.api_error(&e);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(self.opts.resync);
                    continue;
                }
            };
            backoff = FIRST_BACKOFF;
            self.health.api_answered();
            self.nodes = list
                .items
                .iter()
                .map(|n| (n.metadata.name.clone(), NodeInfo::from_node(n)))
                .collect();
            self.reconcile(true);
            let mut version = list.metadata.resource_version;
            loop {
                let deadline = Instant::now() + self.opts.resync;
                match self.watch_until(deadline, &mut version) {
                    // The periodic resync, from the cache the watch keeps current.
                    WatchEnd::Resync => self.reconcile(true),
                    WatchEnd::Relist => {
                        std::thread::sleep(FIRST_BACKOFF);
                        break;
                    }
                }
            }
        }
    }

    fn api_error(&self, e: &KubeError) {
        crate::error!("API: {e}");
        self.health.api_failed(e.to_string());
    }

    /// Applies watch events until `deadline`, re-watching from the last version seen when the
    /// server ends a stream early.
    fn watch_until(&mut self, deadline: Instant, version: &mut String) -> WatchEnd {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left < Duration::from_millis(500) {
                return WatchEnd::Resync;
            }
            let stream = match self.client.watch_nodes(version, left) {
                Ok(s) => {
                    self.health.api_answered();
                    s
                }
                Err(KubeError::Gone(why)) => {
                    crate::info!("watch: resource version {version} expired ({why}); relisting");
                    return WatchEnd::Relist;
                }
                Err(e) => {
                    self.api_error(&e);
                    std::thread::sleep(backoff.min(left));
                    backoff = (backoff * 2).min(self.opts.resync);
                    continue;
                }
            };
            let started = Instant::now();
            for event in stream {
                let changed = match event {
                    Ok(WatchEvent::Added(n)) | Ok(WatchEvent::Modified(n)) => {
                        *version = n.metadata.resource_version.clone();
                        let info = NodeInfo::from_node(&n);
                        let old = self.nodes.insert(info.name.clone(), info.clone());
                        if old.as_ref() != Some(&info) {
                            crate::info!(
                                "node {} {}: podCIDRs [{}], InternalIPs [{}]",
                                info.name,
                                if old.is_some() { "changed" } else { "joined" },
                                join(&info.pod_cidrs),
                                join(&info.internal_ips)
                            );
                            true
                        } else {
                            false
                        }
                    }
                    Ok(WatchEvent::Deleted(n)) => {
                        *version = n.metadata.resource_version.clone();
                        crate::info!("node {} left", n.metadata.name);
                        self.nodes.remove(&n.metadata.name).is_some()
                    }
                    Ok(WatchEvent::Bookmark(v)) => {
                        *version = v;
                        false
                    }
                    Err(KubeError::Gone(why)) => {
                        crate::info!(
                            "watch: resource version {version} expired ({why}); relisting"
                        );
                        return WatchEnd::Relist;
                    }
                    Err(e) => {
                        // A broken stream or an ERROR event: the cache may have missed events.
                        self.api_error(&e);
                        return WatchEnd::Relist;
                    }
                };
                self.health.api_answered();
                if changed {
                    self.reconcile(false);
                }
            }
            // Ended without an error: the server was there until the end.
            self.health.api_answered();
            // A server that ends every watch at once must not turn this into a busy loop.
            if started.elapsed() < QUICK_WATCH_END {
                std::thread::sleep(backoff.min(left));
                backoff = (backoff * 2).min(self.opts.resync);
            } else {
                backoff = FIRST_BACKOFF;
            }
        }
    }

    /// Brings the node in line with `self.nodes`: install for our podCIDR, then the routes.
    /// `full` (after a list) also re-runs an unchanged install, which repairs a conflist or
    /// binary someone removed.
    fn reconcile(&mut self, full: bool) {
        let _busy = BUSY.lock().unwrap_or_else(|p| p.into_inner());
        let mut notes = Vec::new();
        self.install(full, &mut notes);
        let plan: Plan = routes::plan(&self.nodes, &self.opts.node_name);
        for n in self.nodes.values() {
            notes.extend(n.problems.iter().map(|p| format!("node {}: {p}", n.name)));
        }
        notes.extend(plan.skipped.iter().cloned());
        for n in notes.iter().filter(|n| !self.said.contains(n)) {
            crate::warn!("{n}");
        }
        self.said = notes;
        match self.rt.block_on(self.routes.sync(&plan, &self.routed_for)) {
            Ok(report) => {
                if report.added + report.replaced + report.removed > 0
                    || !report.failures.is_empty()
                {
                    crate::info!(
                        "routes synced: {} added, {} replaced, {} removed, {} failed; {} route(s) to {} other node(s)",
                        report.added,
                        report.replaced,
                        report.removed,
                        report.failures.len(),
                        plan.routes.len(),
                        self.nodes.len().saturating_sub(1)
                    );
                }
                self.health.synced(report.failures);
            }
            Err(e) => {
                crate::error!("routes: {e}");
                self.health.sync_failed(format!("routes: {e}"));
            }
        }
        self.routed_for = plan
            .routes
            .into_iter()
            .map(|(dst, r)| (dst, r.node))
            .collect();
    }

    fn install(&mut self, full: bool, notes: &mut Vec<String>) {
        let name = &self.opts.node_name;
        let subnets = match self.nodes.get(name) {
            None => {
                let why = format!("node {name} is not in the API's node list (check NODE_NAME/--node-name: it must be the Node object's name, spec.nodeName)");
                notes.push(why.clone());
                self.health.install_problem(why);
                return;
            }
            Some(n) if n.install_subnets().is_empty() => {
                let why = format!("node {name} has no podCIDR yet; waiting: kube-controller-manager assigns it with --allocate-node-cidrs, or set it in the Node spec");
                notes.push(why.clone());
                self.health.install_problem(why);
                return;
            }
            Some(n) => n.install_subnets(),
        };
        if !full && self.installed_for.as_ref() == Some(&subnets) {
            return;
        }
        let cidr = join(&subnets);
        let opts = self.opts.install.for_subnets(subnets.clone());
        match install::install(&opts) {
            Ok(done) => {
                if done.binary_changed
                    || done.config_changed
                    || self.installed_for.as_ref() != Some(&subnets)
                {
                    crate::info!(
                        "install for podCIDR {cidr}: {} {}, {} {}",
                        opts.bin_dir.join("routed-cni").display(),
                        if done.binary_changed {
                            "installed"
                        } else {
                            "unchanged"
                        },
                        opts.conf_dir.join(&opts.conf_name).display(),
                        if done.config_changed {
                            "written"
                        } else {
                            "unchanged"
                        },
                    );
                }
                self.installed_for = Some(subnets);
                self.health
                    .installed(format!("conflist for podCIDR {cidr}"));
            }
            Err(e) => {
                let why = format!("install for podCIDR {cidr} failed: {e}");
                crate::error!("{why}");
                self.health.install_problem(why);
            }
        }
    }
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_and_defaults() {
        let o = parse_args(&a(&[
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
        ]))
        .unwrap();
        assert_eq!(o.node_name, "n1");
        assert_eq!(o.resync, Duration::from_secs(2));
        // Unhealthy after three missed resyncs unless told otherwise.
        assert_eq!(o.stale_after, Duration::from_secs(6));
        assert_eq!(o.health_addr, DEFAULT_HEALTH_ADDR.parse().unwrap());
        assert_eq!(o.token_file, PathBuf::from(format!("{SA_DIR}/token")));
        assert_eq!(o.install.bin_dir, PathBuf::from("/x/bin"));
        assert_eq!(o.install.cluster_cidrs[0].to_string(), "10.244.0.0/16");
        let err = |v: &[&str]| parse_args(&a(v)).unwrap_err();
        assert!(err(&["--node-name", "n1", "--api-server", "http://x:80"]).contains("https"));
        assert!(err(&[
            "--node-name",
            "n1",
            "--api-server",
            "https://x",
            "--pod-subnet",
            "10.0.0.0/24"
        ])
        .contains("podCIDR"));
        assert!(err(&[
            "--node-name",
            "n1",
            "--api-server",
            "https://x",
            "--resync-seconds",
            "0"
        ])
        .contains("positive"));
        assert!(err(&[
            "--node-name",
            "n1",
            "--api-server",
            "https://x",
            "--bogus",
            "1"
        ])
        .contains("--bogus"));
        assert!(err(&[
            "--node-name",
            "n1",
            "--api-server",
            "https://x",
            "--health-addr",
            "9465"
        ])
        .contains("ADDRESS:PORT"));
        assert!(err(&["--node-name"]).contains("needs a value"));
    }
}
