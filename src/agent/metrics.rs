//! `GET /metrics`: the agent's numbers in the Prometheus text exposition format (0.0.4), from a
//! small registry of our own (the format is a few lines of text; no client crate needed).
//!
//! Every metric is a static here, so the watch threads, the agent loop and the listener record
//! without passing a registry around; each keeps its series under its own mutex, held only for
//! an update or a render. What is cheaper to read than to keep (the store's pools) is read at
//! scrape time, on the listener's thread: never in the agent loop's way.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The Content-Type of the format rendered here.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Buckets for work done on this node in one pass (a route sync, a policy apply): from a
/// millisecond (nothing changed) to tens of seconds (thousands of nodes, a slow nft).
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Label values of one series, in the order of its family's label names.
type Key = Vec<String>;

/// What every metric has: a name, a help text, label names and its series.
struct Family<V> {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Mutex<BTreeMap<Key, V>>,
}

impl<V> Family<V> {
    const fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Family {
            name,
            help,
            labels,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    /// A panic elsewhere cannot leave a series half-updated (each update is one assignment):
    /// the numbers stay usable.
    fn lock(&self) -> MutexGuard<'_, BTreeMap<Key, V>> {
        self.series.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(&self, values: &[&str]) -> Key {
        debug_assert_eq!(values.len(), self.labels.len(), "{}", self.name);
        values.iter().map(|v| v.to_string()).collect()
    }

    fn head(&self, out: &mut String, kind: &str) {
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(self.help));
        let _ = writeln!(out, "# TYPE {} {kind}", self.name);
    }
}

/// A number that only goes up (events, errors); `_total` by convention.
pub struct Counter(Family<u64>);

impl Counter {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Counter {
        Counter(Family::new(name, help, labels))
    }

    pub fn inc(&self, values: &[&str]) {
        *self.0.lock().entry(self.0.key(values)).or_insert(0) += 1;
    }
}

/// A number that is set (sizes, counts of what exists, timestamps).
pub struct Gauge(Family<f64>);

impl Gauge {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Gauge {
        Gauge(Family::new(name, help, labels))
    }

    pub fn set(&self, values: &[&str], v: f64) {
        self.0.lock().insert(self.0.key(values), v);
    }
}

/// Observations counted into fixed buckets (durations).
pub struct Histogram {
    family: Family<Buckets>,
    /// Upper bounds, ascending; `+Inf` is implied.
    bounds: &'static [f64],
}

#[derive(Debug, Clone, Default)]
struct Buckets {
    /// Per bound, the observations that fell in it and in no lower one (cumulated when
    /// rendered); one more slot for those above the last bound.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        bounds: &'static [f64],
    ) -> Histogram {
        Histogram {
            family: Family::new(name, help, labels),
            bounds,
        }
    }

    pub fn observe(&self, values: &[&str], v: f64) {
        let mut series = self.family.lock();
        let b = series.entry(self.family.key(values)).or_default();
        if b.counts.is_empty() {
            b.counts = vec![0; self.bounds.len() + 1];
        }
        let slot = self
            .bounds
            .iter()
            .position(|le| v <= *le)
            .unwrap_or(self.bounds.len());
        b.counts[slot] += 1;
        b.sum += v;
    }

    pub fn observe_duration(&self, values: &[&str], d: Duration) {
        self.observe(values, d.as_secs_f64());
    }

    /// Observations so far (all buckets).
    pub fn count(&self, values: &[&str]) -> u64 {
        let series = self.family.lock();
        series
            .get(&self.family.key(values))
            .map_or(0, |b| b.counts.iter().sum())
    }
}

/// Anything that renders itself into the exposition.
pub trait Render: Sync {
    fn render(&self, out: &mut String);
}

impl Render for Counter {
    fn render(&self, out: &mut String) {
        let f = &self.0;
        f.head(out, "counter");
        let series = f.lock();
        for (key, v) in series.iter() {
            let _ = writeln!(out, "{}{} {v}", f.name, labels(f.labels, key, None));
        }
        // A counter without labels is 0 until it counts: absent would read as "not exported".
        if series.is_empty() && f.labels.is_empty() {
            let _ = writeln!(out, "{} 0", f.name);
        }
    }
}

impl Render for Gauge {
    fn render(&self, out: &mut String) {
        let f = &self.0;
        f.head(out, "gauge");
        for (key, v) in f.lock().iter() {
            let _ = writeln!(
                out,
                "{}{} {}",
                f.name,
                labels(f.labels, key, None),
                number(*v)
            );
        }
    }
}

impl Render for Histogram {
    fn render(&self, out: &mut String) {
        let f = &self.family;
        f.head(out, "histogram");
        let mut series = f.lock().clone();
        if series.is_empty() && f.labels.is_empty() {
            series.insert(Vec::new(), Buckets::default());
        }
        for (key, b) in &series {
            let mut cumulative = 0;
            for (i, le) in self
                .bounds
                .iter()
                .map(|b| number(*b))
                .chain(std::iter::once("+Inf".to_string()))
                .enumerate()
            {
                cumulative += b.counts.get(i).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "{}_bucket{} {cumulative}",
                    f.name,
                    labels(f.labels, key, Some(&le))
                );
            }
            let l = labels(f.labels, key, None);
            let _ = writeln!(out, "{}_sum{l} {}", f.name, number(b.sum));
            let _ = writeln!(out, "{}_count{l} {cumulative}", f.name);
        }
    }
}

/// `{a="x",le="0.5"}`, or nothing without labels.
fn labels(names: &[&str], values: &[String], le: Option<&str>) -> String {
    let mut pairs: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape_label(v)))
        .collect();
    if let Some(le) = le {
        pairs.push(format!("le=\"{le}\""));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

/// Label values escape backslash, double quote and line feed.
fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// Help texts escape backslash and line feed (a quote is fine there).
fn escape_help(v: &str) -> String {
    v.replace('\\', r"\\").replace('\n', r"\n")
}

/// Go's formatting of the special values; Rust's shortest round-trip form otherwise.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

// ---- the agent's metrics ----------------------------------------------------------------------

pub static AGENT_INFO: Gauge = Gauge::new(
    "routed_cni_agent_info",
    "Always 1: the agent's version and settings as labels.",
    &["version", "node", "encapsulation", "network_policy"],
);
pub static START_TIME: Gauge = Gauge::new(
    "routed_cni_agent_start_time_seconds",
    "When the agent started, in seconds since the Unix epoch.",
    &[],
);
pub static NODES: Gauge = Gauge::new(
    "routed_cni_nodes",
    "Nodes in the agent's cache (this one included).",
    &[],
);
pub static ROUTES: Gauge = Gauge::new(
    "routed_cni_routes",
    "Routes to other nodes' podCIDRs the last route sync wanted on this node (proto 77), by path: direct (via the node's InternalIP) or vxlan (through the VXLAN device).",
    &["path"],
);
pub static VXLAN_PEERS: Gauge = Gauge::new(
    "routed_cni_vxlan_peers",
    "Nodes reached through the VXLAN device (one FDB entry each).",
    &[],
);
pub static POLICY_OBJECTS: Gauge = Gauge::new(
    "routed_cni_policy_objects",
    "What the last NetworkPolicy apply wrote into table inet routed-cni, by kind: chain, rule, set (sets and maps), element.",
    &["kind"],
);
pub static POLICY_LOCAL_PODS: Gauge = Gauge::new(
    "routed_cni_policy_local_pods",
    "This node's pods the last NetworkPolicy apply knew, by isolation: all, ingress (ingress-isolated), egress (egress-isolated).",
    &["isolation"],
);
pub static LAST_SYNC: Gauge = Gauge::new(
    "routed_cni_last_successful_sync_timestamp_seconds",
    "When a sync last succeeded, in seconds since the Unix epoch, by what: routes (install and routes), policy (the NetworkPolicy table).",
    &["sync"],
);
pub static SYNC_DURATION: Histogram = Histogram::new(
    "routed_cni_route_sync_duration_seconds",
    "How long one pass of install, firewall check, VXLAN and route programming took.",
    &[],
    DURATION_BUCKETS,
);
pub static POLICY_DURATION: Histogram = Histogram::new(
    "routed_cni_policy_sync_duration_seconds",
    "How long one NetworkPolicy programming took: compile plus nft apply (passes that found nothing to apply are not counted).",
    &[],
    DURATION_BUCKETS,
);
pub static POLICY_PROGRAMMED: Histogram = Histogram::new(
    "routed_cni_policy_event_to_programmed_seconds",
    "From a Pod, Namespace or NetworkPolicy change reaching the agent to the node's table enforcing it (the settle window, compile and nft apply; changes that alter nothing enforced count when the sync that found so ends).",
    &[],
    DURATION_BUCKETS,
);
pub static SYNC_ERRORS: Counter = Counter::new(
    "routed_cni_sync_errors_total",
    "Failed syncs, by what: install, routes, policy, firewall.",
    &["sync"],
);
pub static API_ERRORS: Counter = Counter::new(
    "routed_cni_api_errors_total",
    "Failed API server requests and watch streams, by resource and reason: transport, http_<code>, decode, credentials, expired (410 Gone), stream.",
    &["resource", "reason"],
);
pub static WATCH_RESTARTS: Counter = Counter::new(
    "routed_cni_watch_restarts_total",
    "Watches started again, by resource and action: relist (after an error or an expired version: a full list) or rewatch (the previous watch ended: a new watch from the last version).",
    &["resource", "action"],
);
pub static WATCH_EVENTS: Counter = Counter::new(
    "routed_cni_watch_events_total",
    "Watch events received, by resource and type: added, modified, deleted, bookmark.",
    &["resource", "type"],
);
pub static LISTS: Counter = Counter::new(
    "routed_cni_lists_total",
    "Full lists answered by the API server, by resource (the first one and every relist).",
    &["resource"],
);

/// Every static metric, in the order rendered.
static ALL: &[&dyn Render] = &[
    &AGENT_INFO,
    &START_TIME,
    &NODES,
    &ROUTES,
    &VXLAN_PEERS,
    &POLICY_OBJECTS,
    &POLICY_LOCAL_PODS,
    &LAST_SYNC,
    &SYNC_DURATION,
    &POLICY_DURATION,
    &POLICY_PROGRAMMED,
    &SYNC_ERRORS,
    &API_ERRORS,
    &WATCH_RESTARTS,
    &WATCH_EVENTS,
    &LISTS,
];

/// Where the scrape finds the pools: the installed conflist (their sizes) and the store (what
/// is allocated).
#[derive(Debug, Clone)]
struct Store {
    conflist: PathBuf,
    data_dir: PathBuf,
}

static STORE: Mutex<Option<Store>> = Mutex::new(None);

/// At the agent's start: its identity, and where its pools are read at each scrape.
pub fn start(info: &[&str], conflist: PathBuf, data_dir: PathBuf) {
    AGENT_INFO.set(info, 1.0);
    START_TIME.set(&[], unix_now());
    *STORE.lock().unwrap_or_else(|p| p.into_inner()) = Some(Store { conflist, data_dir });
}

/// A sync of `what` ("routes", "policy") succeeded now.
pub fn synced(what: &str) {
    LAST_SYNC.set(&[what], unix_now());
}

/// A failed API request or watch stream of `resource`, by the kind of failure.
pub fn api_error(resource: &str, e: &super::kube::KubeError) {
    use super::kube::KubeError;
    let code;
    let reason = match e {
        KubeError::Token { .. } | KubeError::Ca { .. } => "credentials",
        KubeError::Transport { .. } => "transport",
        KubeError::Status { code: c, .. } | KubeError::Patch { code: c, .. } => {
            code = format!("http_{c}");
            &code
        }
        KubeError::Gone(_) => "expired",
        KubeError::Decode { .. } => "decode",
    };
    API_ERRORS.inc(&[resource, reason]);
}

/// What the last route sync planned: routes by path, VXLAN peers, nodes known.
pub fn planned(plan: &super::routes::Plan, nodes: usize) {
    let vxlan = plan
        .routes
        .values()
        .filter(|r| matches!(r.path, super::routes::Path::Vxlan { .. }))
        .count();
    ROUTES.set(&["direct"], (plan.routes.len() - vxlan) as f64);
    ROUTES.set(&["vxlan"], vxlan as f64);
    VXLAN_PEERS.set(&[], plan.vxlan_peers.len() as f64);
    NODES.set(&[], nodes as f64);
}

/// A NetworkPolicy apply that went through: what the table holds now and how long compiling
/// and applying took.
pub fn policy_applied(pods: [usize; 3], applied: &crate::policy::nft::Applied, took: Duration) {
    POLICY_DURATION.observe_duration(&[], took);
    for (kind, n) in [
        ("chain", applied.chains),
        ("rule", applied.rules),
        ("set", applied.sets),
        ("element", applied.elements),
    ] {
        POLICY_OBJECTS.set(&[kind], n as f64);
    }
    for (isolation, n) in ["all", "ingress", "egress"].into_iter().zip(pods) {
        POLICY_LOCAL_PODS.set(&[isolation], n as f64);
    }
}

/// The pools' gauges, read now: sizes from the installed conflist, addresses in use from the
/// store (counted without the pool locks: a scrape never makes an ADD wait).
fn pools(out: &mut String) {
    let size = Gauge::new(
        "routed_cni_ipam_pool_size",
        "Addresses the pool can hand out (its range in the installed conflist), by pool.",
        &["pool"],
    );
    let in_use = Gauge::new(
        "routed_cni_ipam_pool_addresses_in_use",
        "Addresses allocated in the pool's store (records readable or not, as `routed-cni list` shows them), by pool.",
        &["pool"],
    );
    let up = Gauge::new(
        "routed_cni_ipam_store_up",
        "1 when this scrape read the installed conflist's pools and the store, 0 when either failed (the agent's log does not say why: `routed-cni list` does).",
        &[],
    );
    let store = STORE.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut ok = true;
    if let Some(s) = store {
        match super::firewall::installed_conf(&s.conflist) {
            Ok(conf) => {
                if let crate::config::Ipam::Builtin(pools) = &conf.ipam {
                    for p in pools {
                        // An IPv6 /64 range is 2^64 addresses: a float says it well enough.
                        size.set(&[&p.subnet.to_string()], p.size() as f64);
                        in_use.set(&[&p.subnet.to_string()], 0.0);
                    }
                }
            }
            // Not installed yet (no podCIDR): no pools, not a failure.
            Err(_) if !s.conflist.exists() => {}
            Err(_) => ok = false,
        }
        match crate::ipam::scan::allocated(&s.data_dir) {
            Ok(found) => {
                for (subnet, n) in found {
                    in_use.set(&[&subnet.to_string()], n as f64);
                }
            }
            Err(_) => ok = false,
        }
    }
    up.set(&[], if ok { 1.0 } else { 0.0 });
    for g in [&size, &in_use, &up] {
        g.render(out);
    }
}

/// The whole exposition, as `GET /metrics` answers it.
pub fn text() -> String {
    let mut out = String::with_capacity(8 << 10);
    for m in ALL {
        m.render(&mut out);
    }
    pools(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_render_with_escaped_labels() {
        let c = Counter::new("t_events_total", "Events.\nBy \\kind.", &["kind"]);
        c.inc(&["a\"b\\c\nd"]);
        c.inc(&["a\"b\\c\nd"]);
        c.inc(&["plain"]);
        let mut out = String::new();
        c.render(&mut out);
        assert_eq!(
            out,
            "# HELP t_events_total Events.\\nBy \\\\kind.\n\
             # TYPE t_events_total counter\n\
             t_events_total{kind=\"a\\\"b\\\\c\\nd\"} 2\n\
             t_events_total{kind=\"plain\"} 1\n"
        );
        let g = Gauge::new("t_size", "Size.", &["pool", "x"]);
        g.set(&["10.0.0.0/24", "y"], 254.0);
        g.set(&["fd00::/64", "y"], 2f64.powi(64));
        g.set(&["n", "y"], 0.25);
        let mut out = String::new();
        g.render(&mut out);
        assert!(
            out.contains("t_size{pool=\"10.0.0.0/24\",x=\"y\"} 254\n"),
            "{out}"
        );
        assert!(
            out.contains("t_size{pool=\"fd00::/64\",x=\"y\"} 18446744073709552000\n"),
            "{out}"
        );
        assert!(out.contains("t_size{pool=\"n\",x=\"y\"} 0.25\n"), "{out}");
        // Without labels, a counter that never counted is 0, not missing.
        let mut out = String::new();
        Counter::new("t_zero_total", "Zero.", &[]).render(&mut out);
        assert!(out.ends_with("\nt_zero_total 0\n"), "{out}");
    }

    #[test]
    fn histograms_are_cumulative_and_end_at_inf() {
        let h = Histogram::new("t_seconds", "Durations.", &["what"], &[0.1, 1.0]);
        for v in [0.05, 0.1, 0.5, 3.0, 7.0] {
            h.observe(&["x"], v);
        }
        let mut out = String::new();
        h.render(&mut out);
        let want = "# HELP t_seconds Durations.\n\
                    # TYPE t_seconds histogram\n\
                    t_seconds_bucket{what=\"x\",le=\"0.1\"} 2\n\
                    t_seconds_bucket{what=\"x\",le=\"1\"} 3\n\
                    t_seconds_bucket{what=\"x\",le=\"+Inf\"} 5\n\
                    t_seconds_sum{what=\"x\"} 10.65\n\
                    t_seconds_count{what=\"x\"} 5\n";
        assert_eq!(out, want);
        assert_eq!(h.count(&["x"]), 5);
        // Unlabelled and not yet observed: every bucket 0, so rate() and quantiles work from
        // the first scrape.
        let h = Histogram::new("t_idle_seconds", "Idle.", &[], &[0.5]);
        let mut out = String::new();
        h.render(&mut out);
        assert!(
            out.contains("t_idle_seconds_bucket{le=\"0.5\"} 0\nt_idle_seconds_bucket{le=\"+Inf\"} 0\nt_idle_seconds_sum 0\nt_idle_seconds_count 0\n"),
            "{out}"
        );
    }

    #[test]
    fn special_values() {
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(1.5e9), "1500000000");
    }

    #[test]
    fn the_exposition_has_every_family_once() {
        WATCH_EVENTS.inc(&["node", "added"]);
        let text = text();
        for name in [
            "routed_cni_watch_events_total",
            "routed_cni_route_sync_duration_seconds",
            "routed_cni_ipam_pool_size",
            "routed_cni_ipam_store_up",
        ] {
            assert_eq!(
                text.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{name}: {text}"
            );
        }
        assert!(text.contains("routed_cni_watch_events_total{resource=\"node\",type=\"added\"} "));
    }
}
