//! `routed-cni agent`: the DaemonSet's long-running side, kept out of the CNI verbs (which
//! never talk to the API server). It learns this node's podCIDR from its Node object and
//! installs the plugin with it, keeps a route to every other node's podCIDRs in sync from a
//! list + watch of all nodes (`via <its InternalIP>` where the nodes share a link, through the
//! VXLAN device where they do not: routes.rs decides, tunnel.rs keeps the device and its
//! entries), and answers kubelet's probes.
//!
//! Its inputs arrive on one channel (watch.rs): the Node list + watch on one thread, which
//! relists like client-go's reflector (at start, when the watch's version has expired (410) and
//! after any watch error; retries after API errors wait an exponential, capped, jittered time,
//! backoff.rs), and this node's own route changes on another (monitor.rs), which make
//! crosssubnet decide again which nodes are reached directly. The loop applies each change at
//! once; after a resync period without one it re-applies everything from the watch-fed cache
//! (repairing routes, VXLAN entries or a conflist removed by hand, and the firewall rules of
//! populated pools that a firewalld/ufw reload or a flush removed: firewall.rs) without asking
//! the API server again: a full list of every node by every node each minute would be the
//! heaviest load a large cluster puts on its API server. Before each step that can block, the
//! loop tells `health` what it starts and how long that may take: that heartbeat is the
//! liveness probe, the API server's state is readiness only. On SIGTERM it exits and leaves
//! the routes: pods keep working while the agent restarts or is upgraded.
//!
//! After each reconcile the agent reports on its own Node: NetworkUnavailable=False once the
//! conflist and routes are in place, True when the podCIDR goes (condition.rs); and it checks
//! the kernel table limits the plan needs (kernel_tables.rs).

pub mod backoff;
pub mod condition;
pub mod firewall;
pub mod health;
pub mod kernel_tables;
pub mod kube;
pub mod metrics;
mod monitor;
pub mod policy;
pub mod routes;
pub mod tunnel;
pub mod watch;

use ipnetwork::IpNetwork;
use nix::sys::signal::{SigSet, Signal};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::install::{self, InstallSettings};
use condition::{ConditionSync, Network};
use health::Health;
use kernel_tables::{KernelTables, TablesMode};
use kube::{ApiClient, NodeInfo};
use policy::PolicySync;
use routes::{Plan, Reach, RouteSync};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use tunnel::{Encapsulation, Local, TunnelOptions, TunnelReport, TunnelSync};
use watch::Input;

/// Install (copying the binary, writing the conflist) plus one route sync: local work that
/// takes milliseconds to a few seconds; beyond this bound the loop is stuck.
const RECONCILE_BOUND: Duration = Duration::from_secs(60);
/// Slack past a step's bound before /healthz calls the loop stuck.
const LIVENESS_GRACE: Duration = Duration::from_secs(15);
/// How long a burst of route changes may keep coming before the agent acts on it.
const LOCAL_CHANGE_SETTLE: Duration = Duration::from_millis(200);
/// How long policy inputs are gathered before the node's table is recomputed: a namespace's
/// worth of pod events costs one nft transaction, at the price of this much delay.
const POLICY_SETTLE: Duration = Duration::from_millis(100);

/// Changes of one sync that each get a log line (a route, an FDB or neighbour entry); beyond
/// this the sync's summary line counts them: the first sync on a node of a 5,000-node cluster
/// would otherwise log 15,000 lines.
const LISTED_CHANGES: usize = 50;

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
    /// A listener for /metrics alone (health.rs `serve_metrics`).
    pub metrics_addr: Option<SocketAddr>,
    pub install: InstallSettings,
    pub tunnel: TunnelOptions,
    /// Enforce NetworkPolicy (watches Pods, Namespaces, NetworkPolicies; table inet routed-cni).
    pub network_policy: bool,
    /// How the agent's log lines look on stderr.
    pub log_format: crate::log::Format,
    /// Raise kernel table limits the cluster needs, or only report them.
    pub kernel_tables: TablesMode,
}

/// Runs the agent until SIGTERM/SIGINT. Returns the exit code for a start-up failure.
pub fn run(opts: AgentOptions) -> i32 {
    one_malloc_arena();
    crate::log::set_format(
        opts.log_format,
        &[("component", "agent"), ("node", &opts.node_name)],
    );
    // Before any thread exists, so every thread inherits the mask and only the signal thread
    // ever sees these signals.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    if let Err(e) = signals.thread_block() {
        crate::error!("block signals: {e}");
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
        crate::error!("start signal thread: {e}");
        return 1;
    }
    let health = Health::new(opts.stale_after, LIVENESS_GRACE);
    // NetworkPolicy's view, read by the listener's /policy endpoints, written by the loop.
    let policy_view = opts.network_policy.then(|| {
        Arc::new(std::sync::RwLock::new(crate::policy::explain::View::new(
            &opts.node_name,
        )))
    });
    if let Err(e) = health::serve(opts.health_addr, health.clone(), policy_view.clone()) {
        crate::error!(
            "health listener on {}: {e} (is another agent running? change --health-addr)",
            opts.health_addr
        );
        return 1;
    }
    if let Some(addr) = opts.metrics_addr {
        if let Err(e) = health::serve_metrics(addr) {
            crate::error!(
                "metrics listener on {addr}: {e} (is another agent running? change --metrics-addr)"
            );
            return 1;
        }
    }
    let client = match ApiClient::new(&opts.api_server, &opts.token_file, &opts.ca_file) {
        Ok(c) => c,
        Err(e) => {
            crate::error!("{e}");
            return 1;
        }
    };
    let rt = match crate::dataplane::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            crate::error!("{e}");
            return 1;
        }
    };
    let netlink = match rt.block_on(async { crate::dataplane::Netlink::connect() }) {
        Ok(n) => n,
        Err(e) => {
            crate::error!("{e}");
            return 1;
        }
    };
    crate::info!(
        "agent starting: node {}, API server {}, resync every {:?}, not ready after {:?} without an API answer or a sync, health on http://{}/healthz and /readyz, routes marked proto {}",
        opts.node_name,
        opts.api_server,
        opts.resync,
        opts.stale_after,
        opts.health_addr,
        routes::ROUTE_PROTOCOL
    );
    crate::info!(
        "encapsulation {}{}",
        opts.tunnel.mode,
        match opts.tunnel.mode {
            Encapsulation::Never =>
                " (direct routes only: every node must share a link)".to_string(),
            _ => format!(
                ": device {}, VNI {}, UDP port {}",
                crate::dataplane::vxlan::VXLAN_DEVICE,
                opts.tunnel.vni,
                opts.tunnel.port
            ),
        }
    );
    let data_dir = opts
        .install
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_DATA_DIR));
    metrics::start(
        &[
            env!("CARGO_PKG_VERSION"),
            &opts.node_name,
            &opts.tunnel.mode.to_string(),
            &opts.network_policy.to_string(),
        ],
        opts.install.conf_dir.join(&opts.install.conf_name),
        data_dir.clone(),
    );
    let (tx, inputs) = std::sync::mpsc::channel();
    let client = Arc::new(client);
    let watcher = |name: &str, start: fn(Arc<ApiClient>, Arc<Health>, Sender<Input>, Duration)| {
        let (c, h, t, every) = (client.clone(), health.clone(), tx.clone(), opts.resync);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || start(c, h, t, every))
            .map(|_| ())
    };
    let mut started = watcher("node-watch", watch::resource::<watch::NodeEvent>);
    if opts.network_policy {
        use crate::policy::model::{Namespace, NetworkPolicy, Pod};
        started = started
            .and_then(|_| watcher("pod-watch", watch::resource::<Pod>))
            .and_then(|_| watcher("namespace-watch", watch::resource::<Namespace>))
            .and_then(|_| watcher("netpol-watch", watch::resource::<NetworkPolicy>));
    } else {
        policy::disable(&data_dir);
    }
    let monitor_tx = tx.clone();
    started = started.and_then(|_| {
        std::thread::Builder::new()
            .name("route-monitor".into())
            .spawn(move || monitor::local_routes(monitor_tx))
            .map(|_| ())
    });
    drop(tx);
    if let Err(e) = started {
        crate::error!("start threads: {e}");
        return 1;
    }

    let mut agent = Agent {
        tunnel: TunnelSync::new(netlink.clone(), opts.tunnel.clone()),
        routes: RouteSync::new(netlink.handle),
        rt,
        health,
        nodes: BTreeMap::new(),
        routed_for: BTreeMap::new(),
        on_link: BTreeMap::new(),
        fresh_next: false,
        last_device: None,
        installed_for: None,
        said: Vec::new(),
        policy: policy_view.map(|v| PolicySync::new(data_dir, v)),
        policy_due: None,
        condition: ConditionSync::new(client, &opts.node_name, opts.resync),
        kernel: KernelTables::new(opts.kernel_tables),
        opts,
    };
    agent.run(inputs)
}

struct Agent {
    opts: AgentOptions,
    rt: tokio::runtime::Runtime,
    routes: RouteSync,
    tunnel: TunnelSync,
    health: Arc<Health>,
    nodes: BTreeMap<String, NodeInfo>,
    /// Destination → node it was last routed for, to name the node when its route goes.
    routed_for: BTreeMap<IpNetwork, String>,
    /// The pod subnets and MTU of the last successful install.
    installed_for: Option<(Vec<IpNetwork>, Option<u32>)>,
    /// Crosssubnet's answer per node address (reached without a gateway?), kept between
    /// syncs: a node event asks the kernel about new addresses only (one route lookup each:
    /// 5,000 per event at 5,000 nodes otherwise); all are asked again at a full pass and when
    /// this node's own routes change.
    on_link: BTreeMap<IpAddr, bool>,
    /// The next sync compares with a dump of the node, not with what the last one left.
    fresh_next: bool,
    /// The VXLAN device's index at the last sync.
    last_device: Option<u32>,
    /// The notes of the last reconcile (skipped nodes, install wait), so each is logged once
    /// per change rather than at every resync.
    said: Vec<String>,
    /// NetworkPolicy enforcement, when on.
    policy: Option<PolicySync>,
    /// When the policy inputs that arrived are to be applied (a burst of pod events is taken
    /// whole first).
    policy_due: Option<Instant>,
    /// This node's NetworkUnavailable condition.
    condition: ConditionSync,
    /// The kernel table limits the plan needs.
    kernel: KernelTables,
}

impl Agent {
    /// The loop: every change of the inputs (watch.rs) is applied at once; with no change for
    /// a resync period, everything is re-applied from the cache (a full pass).
    fn run(&mut self, inputs: Receiver<Input>) -> ! {
        let mut listed = false;
        let mut next_full = Instant::now() + self.opts.resync;
        // An input that arrived while a burst of route changes settled, handled next.
        let mut carried: Option<Input> = None;
        loop {
            if self.policy_due.is_some_and(|due| due <= Instant::now()) {
                self.sync_policy(false);
            }
            let left = next_full.saturating_duration_since(Instant::now());
            let wait = match self.policy_due {
                Some(due) => left.min(due.saturating_duration_since(Instant::now())),
                None => left,
            };
            self.health
                .step("waiting for changes", left + LIVENESS_GRACE);
            let next = match carried.take() {
                Some(i) => Ok(i),
                None => inputs.recv_timeout(wait),
            };
            let input = match next {
                Ok(i) => i,
                Err(RecvTimeoutError::Timeout) if Instant::now() < next_full => continue,
                Err(RecvTimeoutError::Timeout) => {
                    // The periodic resync, from the cache the watch keeps current.
                    if listed {
                        self.reconcile(true);
                        self.sync_policy(true);
                    }
                    next_full = Instant::now() + self.opts.resync;
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    crate::error!(
                        "the node watch stopped; exiting so the kubelet restarts the agent"
                    );
                    std::process::exit(1);
                }
            };
            match input {
                Input::Listed(items) => {
                    self.nodes = items.into_iter().map(|n| (n.name.clone(), n)).collect();
                    listed = true;
                    self.reconcile(true);
                    next_full = Instant::now() + self.opts.resync;
                    self.health.first_pass_done();
                }
                Input::ListFailed => self.health.first_pass_done(),
                Input::PodRoutes => {
                    // A pod was added or deleted on this node: its store record is there (or
                    // gone), so its rules can be made (or dropped) now.
                    if self.policy.is_some() && self.policy_due.is_none() {
                        self.policy_due = Some(Instant::now() + POLICY_SETTLE);
                    }
                }
                Input::Policy(change, version) => {
                    if let Some(p) = self.policy.as_mut() {
                        if p.update(change, version) && self.policy_due.is_none() {
                            self.policy_due = Some(Instant::now() + POLICY_SETTLE);
                        }
                    }
                }
                Input::Upserted(info) => {
                    let old = self.nodes.insert(info.name.clone(), info.clone());
                    // A change of status alone (kubelet's heartbeats, our own condition patch)
                    // is kept in the cache but routes nothing differently.
                    if !old.as_ref().is_some_and(|o| o.same_routing(&info)) {
                        crate::info!(
                            "node {} {}: podCIDRs [{}], InternalIPs [{}]",
                            info.name,
                            if old.is_some() { "changed" } else { "joined" },
                            join(&info.pod_cidrs),
                            join(&info.internal_ips)
                        );
                        self.reconcile(false);
                    }
                }
                Input::Deleted(name) => {
                    if self.nodes.remove(&name).is_some() {
                        crate::info!("node {name} left");
                        self.reconcile(false);
                    }
                }
                Input::LocalRoutes(what) => {
                    // A change comes as a burst (an address brings a subnet route, a local
                    // route, a broadcast route): take it whole, then decide once.
                    let mut seen = vec![what];
                    while let Ok(i) = inputs.recv_timeout(LOCAL_CHANGE_SETTLE) {
                        match i {
                            Input::LocalRoutes(more) => seen.push(more),
                            other => {
                                carried = Some(other);
                                break;
                            }
                        }
                    }
                    // The kernel removes routes with the link or address they used: look.
                    self.fresh_next = true;
                    if listed && self.opts.tunnel.mode == Encapsulation::CrossSubnet {
                        self.on_link.clear();
                        crate::info!(
                            "this node's routes changed ({}): deciding again which nodes are reached directly",
                            seen.join(", ")
                        );
                        self.reconcile(false);
                    }
                }
            }
        }
    }

    /// Brings the node in line with `self.nodes`: install for our podCIDR (and, at a full pass,
    /// the firewall rules of its populated pools), then the routes.
    /// `full` (after a list) also re-runs an unchanged install, which repairs a conflist or
    /// binary someone removed.
    fn reconcile(&mut self, full: bool) {
        self.health
            .step("applying install and routes", RECONCILE_BOUND);
        let busy = BUSY.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let mut notes = Vec::new();
        let local = self.local_side(&mut notes);
        self.install(full, local.as_ref(), &mut notes);
        if full {
            self.repair_firewall();
        }
        let mut tunnel = TunnelReport::default();
        let device = self
            .rt
            .block_on(self.tunnel.device(local.as_ref(), &mut tunnel));
        let reach = self.reach(local.as_ref(), full);
        let plan: Plan = routes::plan(&self.nodes, &self.opts.node_name, &reach);
        metrics::planned(&plan, self.nodes.len());
        for n in self.nodes.values() {
            notes.extend(n.problems.iter().map(|p| format!("node {}: {p}", n.name)));
        }
        notes.extend(plan.skipped.iter().cloned());
        for n in notes.iter().filter(|n| !self.said.contains(n)) {
            crate::warn!("{n}");
        }
        self.said = notes;
        // The entries a new route through the tunnel needs go in before the route; those no
        // route needs any more go after the routes that used them.
        // Compared with a dump of the node (not with what the last sync left) at full passes,
        // after this node's own routes changed (the kernel drops routes with a link) and when
        // the device is another one.
        let fresh = full || std::mem::take(&mut self.fresh_next) || device != self.last_device;
        self.last_device = device;
        if let Some(index) = device {
            self.rt.block_on(
                self.tunnel
                    .add_entries(index, &plan.vxlan_peers, fresh, &mut tunnel),
            );
        }
        let mut routes_in_place = false;
        match self
            .rt
            .block_on(self.routes.sync(&plan, &self.routed_for, device, fresh))
        {
            Ok(mut report) => {
                if let Some(index) = device {
                    self.rt.block_on(self.tunnel.remove_stale(
                        index,
                        &plan.vxlan_peers,
                        &mut tunnel,
                    ));
                }
                if report.added + report.replaced + report.removed > 0
                    || !report.failures.is_empty()
                    || !tunnel.changes.is_empty()
                {
                    let changed = report.added + report.replaced + report.removed;
                    let unlisted = changed.saturating_sub(LISTED_CHANGES)
                        + tunnel.changes.len().saturating_sub(LISTED_CHANGES);
                    crate::info!(
                        "routes synced: {} added, {} replaced, {} removed, {} failed; {} route(s) to {} other node(s), {} of them through VXLAN{}",
                        report.added,
                        report.replaced,
                        report.removed,
                        report.failures.len(),
                        plan.routes.len(),
                        self.nodes.len().saturating_sub(1),
                        plan.vxlan_peers.len(),
                        if unlisted > 0 {
                            format!(
                                " ({unlisted} change(s) of routes and VXLAN entries not logged one by one)"
                            )
                        } else {
                            String::new()
                        }
                    );
                }
                report.failures.append(&mut tunnel.failures);
                routes_in_place = report.failures.is_empty();
                if report.failures.is_empty() {
                    metrics::synced("routes");
                } else {
                    metrics::SYNC_ERRORS.inc(&["routes"]);
                }
                self.health.synced(report.failures);
            }
            Err(e) => {
                crate::error!("routes: {e}");
                metrics::SYNC_ERRORS.inc(&["routes"]);
                self.health.sync_failed(format!("routes: {e}"));
            }
        }
        metrics::SYNC_DURATION.observe_duration(&[], started.elapsed());
        let own_subnets = self
            .nodes
            .get(&self.opts.node_name)
            .map(|n| n.install_subnets())
            .unwrap_or_default();
        let needs = kernel_tables::needs(
            &plan,
            self.opts.tunnel.mode,
            &own_subnets,
            kernel_tables::local_pods(),
        );
        self.kernel.check(&needs, &self.health);
        let network = self.network(&own_subnets, routes_in_place, &plan);
        self.routed_for = plan
            .routes
            .into_iter()
            .map(|(dst, r)| (dst, r.node))
            .collect();
        // The node is consistent now; a slow API server must not hold SIGTERM back.
        drop(busy);
        self.report_condition(&network);
    }

    /// What the condition should say of this node after a pass (condition.rs).
    fn network(&self, own_subnets: &[IpNetwork], routes_in_place: bool, plan: &Plan) -> Network {
        match self.nodes.get(&self.opts.node_name) {
            Some(_) if own_subnets.is_empty() => Network::NoPodCidr,
            Some(_)
                if routes_in_place
                    && self.installed_for.as_ref().map(|(s, _)| s.as_slice())
                        == Some(own_subnets) =>
            {
                Network::Up {
                    pod_cidrs: join(own_subnets),
                    nodes: self.nodes.len().saturating_sub(1),
                    via_vxlan: plan.vxlan_peers.len(),
                }
            }
            _ => Network::Unsettled,
        }
    }

    /// Patches this node's NetworkUnavailable condition when there is something new to say,
    /// and keeps what the server answered in the cache, so the next pass compares with it.
    fn report_condition(&mut self, network: &Network) {
        let name = &self.opts.node_name;
        let seen = self
            .nodes
            .get(name)
            .and_then(|n| n.network_unavailable.clone());
        if let Some(now) = self.condition.report(network, seen.as_ref(), &self.health) {
            if let Some(n) = self.nodes.get_mut(name) {
                n.network_unavailable = Some(now);
            }
        }
    }

    /// This node's side of the tunnel (`None` in never mode, or before its Node object has an
    /// InternalIP); a note when its uplink MTU is unknown.
    fn local_side(&self, notes: &mut Vec<String>) -> Option<Local> {
        let own = self.nodes.get(&self.opts.node_name)?;
        let local = self.rt.block_on(self.tunnel.local(
            &self.opts.node_name,
            &own.internal_ips,
            &own.pod_cidrs,
        ));
        match &local {
            None if self.opts.tunnel.mode != Encapsulation::Never => notes.push(format!(
                "node {} has no InternalIP: no VXLAN device until it has one (nodes on other subnets are unreachable meanwhile)",
                self.opts.node_name
            )),
            Some(l) => {
                if let Err(why) = &l.uplink_mtu {
                    notes.push(format!(
                        "{why}: assuming a {} byte uplink, so pods and {} get MTU {}",
                        crate::dataplane::DEFAULT_MTU,
                        crate::dataplane::vxlan::VXLAN_DEVICE,
                        l.spec.mtu
                    ));
                }
            }
            None => {}
        }
        local
    }

    /// What decides each node's path: the mode, our outer address and, in crosssubnet mode,
    /// which node addresses the kernel reaches without a gateway (asked again at every sync,
    /// so a node that moves, or a change in this node's own routes, re-decides it).
    fn reach(&mut self, local: Option<&Local>, full: bool) -> Reach {
        let mode = self.opts.tunnel.mode;
        if full {
            self.on_link.clear();
        }
        let on_link = if mode == Encapsulation::CrossSubnet {
            let ips: Vec<IpAddr> = self
                .nodes
                .values()
                .filter(|n| n.name != self.opts.node_name)
                .flat_map(|n| n.internal_ips.iter().copied())
                .collect();
            let unknown: Vec<IpAddr> = ips
                .iter()
                .filter(|ip| !self.on_link.contains_key(ip))
                .copied()
                .collect();
            if !unknown.is_empty() {
                let direct = self
                    .rt
                    .block_on(self.tunnel.on_link(unknown.iter().copied()));
                for ip in unknown {
                    self.on_link.insert(ip, direct.contains(&ip));
                }
            }
            ips.into_iter()
                .filter(|ip| self.on_link.get(ip) == Some(&true))
                .collect()
        } else {
            Default::default()
        };
        Reach {
            mode,
            local: local.map(|l| l.address),
            on_link,
        }
    }

    /// Makes the node's NetworkPolicy table what the cache says; `full` (a resync) applies it
    /// even when the compiled rules did not change, repairing a table changed by hand.
    fn sync_policy(&mut self, full: bool) {
        self.policy_due = None;
        let Some(p) = self.policy.as_mut() else {
            return;
        };
        self.health.step("applying NetworkPolicy", RECONCILE_BOUND);
        let _busy = BUSY.lock().unwrap_or_else(|p| p.into_inner());
        if full {
            p.reapply_next();
        }
        match p.sync() {
            Ok(Some(line)) => {
                crate::info!("{line}");
                metrics::synced("policy");
                self.health.policy_synced(None);
            }
            Ok(None) => {
                metrics::synced("policy");
                self.health.policy_synced(None)
            }
            Err(e) => {
                metrics::SYNC_ERRORS.inc(&["policy"]);
                p.forget_applied();
                crate::error!("NetworkPolicy: {e}");
                self.health.policy_synced(Some(e));
            }
        }
    }

    /// Puts back the rules of the installed conflist's populated pools that a firewall reload
    /// or a flush removed (firewall.rs); only at full passes (start, resync, relist).
    fn repair_firewall(&self) {
        if self.installed_for.is_none() {
            return;
        }
        let install = &self.opts.install;
        let done = match firewall::installed_conf(&install.conf_dir.join(&install.conf_name)) {
            Ok(conf) => firewall::repair(&conf),
            Err(e) => firewall::Repairs {
                restored: Vec::new(),
                failures: vec![format!("firewall check: {e}")],
            },
        };
        for r in &done.restored {
            crate::warn!("{r}");
        }
        for f in &done.failures {
            crate::error!("{f}");
            metrics::SYNC_ERRORS.inc(&["firewall"]);
        }
        self.health.firewall_checked(done.failures);
    }

    /// `local`: with encapsulation, the pods' MTU leaves room for the VXLAN headers (unless
    /// --mtu says otherwise).
    fn install(&mut self, full: bool, local: Option<&Local>, notes: &mut Vec<String>) {
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
        let mut opts = self.opts.install.for_subnets(subnets.clone());
        if opts.mtu.is_none() {
            opts.mtu = local.map(|l| l.spec.mtu);
        }
        let target = (subnets.clone(), opts.mtu);
        // A chained plugin missing from the bin dir is a note on every pass, so the warning
        // stands (logged once) until it is there: the runtime fails every pod's ADD meanwhile.
        if !full && self.installed_for.as_ref() == Some(&target) {
            let chain = install::conflist(&opts);
            notes.extend(
                install::plugins::missing(&chain, &opts.bin_dir)
                    .iter()
                    .map(|m| m.line()),
            );
            return;
        }
        let cidr = join(&subnets);
        match install::install(&opts) {
            Ok(done) => {
                if done.binary_changed
                    || done.config_changed
                    || self.installed_for.as_ref() != Some(&target)
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
                for f in done
                    .node_files
                    .iter()
                    .filter(|f| f.outcome == install::Outcome::Written)
                {
                    crate::info!("{}", f.line());
                }
                notes.extend(done.missing_plugins.iter().map(|m| m.line()));
                self.installed_for = Some(target);
                self.health
                    .installed(format!("conflist for podCIDR {cidr}"));
            }
            Err(e) => {
                let why = format!("install for podCIDR {cidr} failed: {e}");
                crate::error!("{why}");
                metrics::SYNC_ERRORS.inc(&["install"]);
                self.health.install_problem(why);
            }
        }
    }
}

/// glibc gives each thread that allocates its own arena; memory a watch thread's list decode
/// freed in its arena is then never reused by the loop's, and stays resident. The agent's
/// threads mostly take turns, so one arena costs no contention worth measuring and kept the
/// peak RSS of a 5,000-node first sync ~2 MiB lower (docs/benchmarks.md). The static image is
/// glibc too (scripts/build-static.sh).
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes a malloc tunable; called before any other thread exists.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
    }
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
