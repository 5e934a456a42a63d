//! /healthz and /readyz for kubelet's probes: a plain HTTP/1.1 listener on its own thread.
//!
//! - healthz (startup and liveness): the agent's own loop is alive. Before each step that can
//!   block (a list, a watch, applying install and routes, a wait before a retry) the loop says
//!   what it is doing and how long that may take at most; healthz is 503 once a step has run
//!   past its bound (plus a grace), and until the loop's first pass is done (the first list
//!   answered or failed, and after an answer the first install and route sync): that is what
//!   the startupProbe waits for. An unreachable API server is not a liveness failure: a failed
//!   list ends the first pass too, the loop keeps stepping through its retries, and restarting
//!   the agent on every node at once during a control-plane outage could not help (routes and
//!   conflist stay in place anyway).
//! - readyz: the API server answered (a list, a watch request, a watch event or a watch that
//!   ran to its end) within the staleness bound, the conflist is installed, the routes were
//!   synced within the bound and every route of the last sync is in place. A 503 names why.
//! - /metrics: the Prometheus exposition (metrics.rs).
//!   Problems that leave the node's pods networked (the NetworkUnavailable patch failed, a
//!   kernel table limit the agent could not raise) are named after "ok" without making it
//!   unready: a restart or a held-back rollout would not fix them.
//! - /policy and /policy/verdict: the agent's NetworkPolicy view as JSON (policy/explain.rs),
//!   read under the view's read lock; `routed-cni policy` and doctor ask them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, RwLock};

use crate::policy::explain::{self, View};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Step {
    what: String,
    since: Instant,
    within: Duration,
}

#[derive(Debug, Default)]
struct State {
    step: Option<Step>,
    first_pass_done: bool,
    installed: Option<String>,
    install_problem: Option<String>,
    last_sync: Option<Instant>,
    last_sync_error: Option<String>,
    last_api_answer: Option<Instant>,
    last_api_error: Option<String>,
    route_failures: Vec<String>,
    /// Pools whose firewall rules the last resync found missing and could not restore.
    firewall_failures: Vec<String>,
    /// Why NetworkPolicy enforcement is not what the API says (not yet computed, nft failed).
    policy_problem: Option<String>,
    /// Why the Node's NetworkUnavailable condition is not what the agent would say
    /// (condition.rs). Said, not unready.
    condition_problem: Option<String>,
    /// Which kernel table limit is below what the cluster needs and why the agent did not
    /// raise it (kernel_tables.rs). Said, not unready.
    kernel_tables_problem: Option<String>,
}

/// Shared between the agent loop (writer) and the listener (reader).
#[derive(Debug)]
pub struct Health {
    state: Mutex<State>,
    stale_after: Duration,
    /// Slack past a step's own bound before the loop counts as stuck: scheduling delays on a
    /// busy node, a slow syscall.
    grace: Duration,
}

impl Health {
    pub fn new(stale_after: Duration, grace: Duration) -> Arc<Health> {
        Arc::new(Health {
            state: Mutex::new(State::default()),
            stale_after,
            grace,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The loop's heartbeat: it starts `what`, which ends (or fails) within `within`.
    pub fn step(&self, what: impl Into<String>, within: Duration) {
        self.state().step = Some(Step {
            what: what.into(),
            since: Instant::now(),
            within,
        });
    }

    /// The first list has failed, or it answered and the first install and sync ran.
    pub fn first_pass_done(&self) {
        self.state().first_pass_done = true;
    }

    pub fn installed(&self, what: String) {
        let mut s = self.state();
        s.installed = Some(what);
        s.install_problem = None;
    }

    /// Install has not happened (no podCIDR yet) or failed; a done install stays done, since the
    /// files on the node are still there.
    pub fn install_problem(&self, why: String) {
        self.state().install_problem = Some(why);
    }

    pub fn synced(&self, route_failures: Vec<String>) {
        let mut s = self.state();
        s.last_sync = Some(Instant::now());
        s.last_sync_error = None;
        s.route_failures = route_failures;
    }

    /// The last resync's firewall check: what it could not check or restore (a restored rule
    /// is logged, not counted: the node is right again).
    pub fn firewall_checked(&self, failures: Vec<String>) {
        self.state().firewall_failures = failures;
    }

    /// The outcome of the last NetworkPolicy sync: `None` when the node enforces what the API
    /// says.
    pub fn policy_synced(&self, problem: Option<String>) {
        self.state().policy_problem = problem;
    }

    /// The outcome of the last NetworkUnavailable patch decision: `None` when the condition
    /// says what the agent would.
    pub fn condition_problem(&self, problem: Option<String>) {
        self.state().condition_problem = problem;
    }

    /// The outcome of the last kernel table check: `None` when the limits are enough.
    pub fn kernel_tables_problem(&self, problem: Option<String>) {
        self.state().kernel_tables_problem = problem;
    }

    /// The API server answered: the cache the routes come from is current.
    pub fn api_answered(&self) {
        let mut s = self.state();
        s.last_api_answer = Some(Instant::now());
        s.last_api_error = None;
    }

    pub fn api_failed(&self, why: String) {
        self.state().last_api_error = Some(why);
    }

    pub fn sync_failed(&self, why: String) {
        self.state().last_sync_error = Some(why);
    }

    /// (alive, reason) for healthz: is the loop within the bound of the step it is in?
    pub fn live(&self) -> (bool, String) {
        let s = self.state();
        let Some(step) = &s.step else {
            // The listener starts just before the loop.
            return (false, "starting".into());
        };
        let took = step.since.elapsed();
        if took > step.within + self.grace {
            return (
                false,
                format!(
                    "agent loop stuck: {} for {:.1}s, bound {:.1}s (+{}s grace)",
                    step.what,
                    took.as_secs_f64(),
                    step.within.as_secs_f64(),
                    self.grace.as_secs()
                ),
            );
        }
        if !s.first_pass_done {
            return (
                false,
                format!(
                    "starting: first pass (list nodes, install, route sync) not done: {} for {:.1}s (bound {:.1}s)",
                    step.what,
                    took.as_secs_f64(),
                    step.within.as_secs_f64()
                ),
            );
        }
        (
            true,
            format!(
                "ok: agent loop alive: {} for {:.1}s (bound {:.1}s)",
                step.what,
                took.as_secs_f64(),
                step.within.as_secs_f64()
            ),
        )
    }

    /// (ready, reason) for readyz.
    pub fn ready(&self) -> (bool, String) {
        let s = self.state();
        let last_error = [&s.last_api_error, &s.last_sync_error]
            .into_iter()
            .flatten()
            .map(|e| format!("; last error: {e}"))
            .collect::<String>();
        let bound = self.stale_after.as_secs();
        // The API server first: when it cannot be reached, that is the cause of the rest.
        match s.last_api_answer {
            None => {
                return (
                    false,
                    format!("no answer from the API server yet{last_error}"),
                )
            }
            Some(t) if t.elapsed() > self.stale_after => {
                let ago = t.elapsed().as_secs();
                let why = format!("last answer from the API server {ago}s ago (bound {bound}s)");
                return (false, format!("{why}{last_error}"));
            }
            Some(_) => {}
        }
        let Some(installed) = &s.installed else {
            let why = s
                .install_problem
                .clone()
                .unwrap_or_else(|| "waiting for this node's podCIDR from the API server".into());
            return (
                false,
                format!("CNI config not installed: {why}{last_error}"),
            );
        };
        match s.last_sync {
            None => return (false, format!("no successful sync yet{last_error}")),
            Some(t) if t.elapsed() > self.stale_after => {
                let ago = t.elapsed().as_secs();
                let why = format!("last successful route sync {ago}s ago (bound {bound}s)");
                return (false, format!("{why}{last_error}"));
            }
            Some(_) => {}
        }
        if !s.route_failures.is_empty() {
            return (
                false,
                format!(
                    "{} route(s) failed: {}",
                    s.route_failures.len(),
                    s.route_failures.join("; ")
                ),
            );
        }
        if !s.firewall_failures.is_empty() {
            return (
                false,
                format!(
                    "{} pool(s) without their firewall rules: {}",
                    s.firewall_failures.len(),
                    s.firewall_failures.join("; ")
                ),
            );
        }
        if let Some(p) = &s.policy_problem {
            return (false, format!("NetworkPolicy: {p}"));
        }
        let age = s.last_sync.map(|t| t.elapsed().as_secs()).unwrap_or(0);
        let notes = [&s.condition_problem, &s.kernel_tables_problem]
            .into_iter()
            .flatten()
            .map(|p| format!("; but {p}"))
            .collect::<String>();
        (
            true,
            format!("ok: {installed}; last sync {age}s ago{notes}"),
        )
    }
}

/// Binds `addr` now (so a taken port fails the start, visibly) and serves on a thread.
/// `policy` is the agent's NetworkPolicy view, `None` when enforcement is off.
pub fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    policy: Option<Arc<RwLock<View>>>,
) -> std::io::Result<()> {
    listen(addr, "health", Some(health), policy)
}

/// `--metrics-addr`: a second listener with /metrics alone, for a Prometheus outside the node
/// (the DaemonSet runs in the host's network namespace, where the health listener's loopback
/// address is out of its reach, and opening that listener would also open /policy, which
/// names the node's pods).
pub fn serve_metrics(addr: SocketAddr) -> std::io::Result<()> {
    listen(addr, "metrics", None, None)
}

fn listen(
    addr: SocketAddr,
    name: &str,
    health: Option<Arc<Health>>,
    policy: Option<Arc<RwLock<View>>>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                // One probe at a time is plenty; a silent client must not block the next.
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
                answer(conn, health.as_deref(), policy.as_deref());
            }
        })?;
    Ok(())
}

/// `health`: `None` on the metrics-only listener.
fn answer(mut conn: TcpStream, health: Option<&Health>, policy: Option<&RwLock<View>>) {
    let mut buf = [0u8; 2048];
    let mut got = 0;
    // The request line is all we need; stop at the end of the headers or when the buffer is full.
    while got < buf.len() {
        match conn.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
        if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let request = String::from_utf8_lossy(&buf[..got]);
    let mut words = request.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let policy_answer = match method {
        "GET" | "HEAD" if health.is_some() => explain::http(policy, path, query),
        _ => None,
    };
    let mut content_type = "text/plain; charset=utf-8";
    let (code, body) = match (method, path) {
        _ if policy_answer.is_some() => {
            let (code, json) = policy_answer.expect("checked");
            content_type = "application/json; charset=utf-8";
            let status = match code {
                200 => "200 OK",
                400 => "400 Bad Request",
                404 => "404 Not Found",
                _ => "503 Service Unavailable",
            };
            (status, json.to_string())
        }
        ("GET" | "HEAD", "/metrics") => {
            content_type = super::metrics::CONTENT_TYPE;
            ("200 OK", super::metrics::text())
        }
        ("GET" | "HEAD", _) if health.is_none() => (
            "404 Not Found",
            "this listener serves /metrics only".to_string(),
        ),
        ("GET" | "HEAD", "/healthz" | "/livez") => verdict(health.expect("checked").live()),
        ("GET" | "HEAD", "/readyz") => verdict(health.expect("checked").ready()),
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "try /healthz, /readyz, /metrics, /policy?pod=NS/NAME or /policy/verdict?src=IP&dst=IP&proto=tcp&port=N".to_string(),
        ),
        _ => ("405 Method Not Allowed", "GET only".to_string()),
    };
    let body = format!("{body}\n");
    let head = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    if method != "HEAD" {
        let _ = conn.write_all(body.as_bytes());
    }
}

fn verdict((ok, why): (bool, String)) -> (&'static str, String) {
    if ok {
        ("200 OK", why)
    } else {
        ("503 Service Unavailable", why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn live_while_the_loop_keeps_within_its_steps() {
        let h = Health::new(Duration::from_secs(60), MS(50));
        assert!(!h.live().0, "{:?}", h.live());
        h.step("listing nodes", MS(100));
        // Not started (the startupProbe waits) until the first pass is through.
        let (ok, why) = h.live();
        assert!(
            !ok && why.contains("starting") && why.contains("listing nodes"),
            "{why}"
        );
        h.first_pass_done();
        let (ok, why) = h.live();
        assert!(ok && why.contains("listing nodes"), "{why}");
        std::thread::sleep(MS(200));
        // 200 ms into a step bounded at 100 + 50: stuck, and named.
        let (ok, why) = h.live();
        assert!(!ok && why.contains("stuck: listing nodes"), "{why}");
        // The next step is the heartbeat: alive again.
        h.step("waiting 1s before retrying", MS(1000));
        assert!(h.live().0);
    }

    #[test]
    fn liveness_ignores_the_api_server_readiness_does_not() {
        let h = Health::new(MS(200), MS(50));
        h.step("listing nodes", Duration::from_secs(60));
        // A failed first list ends the first pass: the agent is alive, retrying.
        h.first_pass_done();
        let (ready, why) = h.ready();
        assert!(
            !ready && why.contains("no answer from the API server"),
            "{why}"
        );
        h.api_failed("cannot reach the API server at https://x: timeout: connect".into());
        let (ready, why) = h.ready();
        assert!(!ready && why.contains("timeout: connect"), "{why}");
        assert!(
            h.live().0,
            "an unreachable API server is not a liveness failure"
        );
        h.api_answered();
        h.install_problem("node n1 has no podCIDR yet".into());
        let (ready, why) = h.ready();
        assert!(!ready && why.contains("no podCIDR"), "{why}");
        h.installed("podCIDR 10.244.1.0/24".into());
        let (ready, why) = h.ready();
        assert!(!ready && why.contains("no successful sync"), "{why}");
        h.synced(vec!["add route x: boom".into()]);
        let (ready, why) = h.ready();
        assert!(!ready && why.contains("boom"), "{why}");
        h.synced(vec![]);
        assert!(h.ready().0);
        // A pool whose missing rules could not be restored: not ready until a resync fixes it.
        h.firewall_checked(vec![
            "firewall rules of pool 10.244.1.0/24 are missing: boom".into(),
        ]);
        let (ready, why) = h.ready();
        assert!(!ready && why.contains("10.244.1.0/24"), "{why}");
        h.firewall_checked(vec![]);
        assert!(h.ready().0);
        // A failed condition patch or a table limit left low is named, not unready.
        h.condition_problem(Some(
            "could not set node condition NetworkUnavailable=False".into(),
        ));
        h.kernel_tables_problem(Some("net.ipv4.neigh.default.gc_thresh3 is 1024".into()));
        let (ready, why) = h.ready();
        assert!(
            ready && why.contains("NetworkUnavailable=False") && why.contains("gc_thresh3"),
            "{why}"
        );
        h.condition_problem(None);
        h.kernel_tables_problem(None);
        assert!(!h.ready().1.contains("but"), "{:?}", h.ready());
        // The API server goes away; routes re-applied from the cache do not hide it.
        h.api_failed("cannot reach the API server".into());
        std::thread::sleep(MS(250));
        h.synced(vec![]);
        h.step("waiting 2s before retrying", Duration::from_secs(2));
        let (ready, why) = h.ready();
        assert!(
            !ready
                && why.contains("last answer from the API server")
                && why.contains("cannot reach"),
            "{why}"
        );
        assert!(h.live().0, "{:?}", h.live());
        // Back: ready again, same Health, no restart.
        h.api_answered();
        assert!(h.ready().0, "{:?}", h.ready());
    }

    #[test]
    fn serves_http() {
        let h = Health::new(Duration::from_secs(60), Duration::from_secs(10));
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        serve(addr, h.clone(), None).unwrap();
        let get = |path: &str| {
            let mut c = TcpStream::connect(addr).unwrap();
            write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).unwrap();
            out
        };
        h.step("listing nodes", Duration::from_secs(60));
        assert!(get("/healthz").starts_with("HTTP/1.1 503"));
        h.first_pass_done();
        assert!(get("/healthz").starts_with("HTTP/1.1 200"));
        let r = get("/readyz");
        assert!(
            r.starts_with("HTTP/1.1 503") && r.contains("no answer from the API server"),
            "{r}"
        );
        h.installed("podCIDR 10.244.1.0/24".into());
        h.api_answered();
        h.synced(vec![]);
        let ok = get("/readyz");
        assert!(
            ok.starts_with("HTTP/1.1 200") && ok.contains("10.244.1.0/24"),
            "{ok}"
        );
        assert!(get("/livez").starts_with("HTTP/1.1 200"));
        assert!(get("/nope").starts_with("HTTP/1.1 404"));
        let m = get("/metrics");
        assert!(
            m.starts_with("HTTP/1.1 200")
                && m.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n")
                && m.contains("# TYPE routed_cni_watch_events_total counter"),
            "{m}"
        );
        // Enforcement off: the policy endpoints say so, as JSON.
        let off = get("/policy?pod=x/a");
        assert!(
            off.starts_with("HTTP/1.1 503") && off.contains("--network-policy=false"),
            "{off}"
        );
    }

    #[test]
    fn serves_the_policy_view_as_json() {
        use crate::policy::compile::harness::Cluster;
        let c = Cluster::model();
        let view = Arc::new(RwLock::new(View {
            node: "n1".into(),
            cache: c.cache.clone(),
            listed: [true; 3],
            local: c.local("n1"),
            applied: Some(c.ruleset("n1")),
        }));
        let h = Health::new(Duration::from_secs(60), Duration::from_secs(10));
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        serve(addr, h, Some(view.clone())).unwrap();
        // Through the client `routed-cni policy` and doctor use.
        let (found, body) = crate::policy::client::pod(addr, "x", "a").unwrap();
        assert!(found, "{body}");
        assert_eq!(body["pod"]["hostVeth"], "rcni-x-a");
        assert_eq!(body["ingress"]["isolated"], false);
        let (found, body) = crate::policy::client::pod(addr, "x", "nope").unwrap();
        assert!(!found && body["error"].is_string(), "{body}");
        let v = crate::policy::client::verdict(
            addr,
            "fd00::2:2".parse().unwrap(),
            "fd00::1:1".parse().unwrap(),
            "tcp",
            80,
        )
        .unwrap();
        assert_eq!(v["allowed"], true, "{v}");
        assert_eq!(v["ingress"]["onThisNode"], true, "{v}");
        // Not listed yet: no view to give, and the client says why.
        view.write().unwrap().listed[0] = false;
        let e = crate::policy::client::pod(addr, "x", "a").unwrap_err();
        assert!(
            matches!(&e, crate::policy::client::AgentError::NoView(m) if m.contains("pods")),
            "{e:?}"
        );
    }
}
