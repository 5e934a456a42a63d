//! Node-level integration tests: the real `routed-cni` binary wires pods in
//! network namespaces created by the test, and we check the data path with
//! real traffic (ping, TCP) and the node state with `ip` / `iptables-save`.
//!
//! Every test builds its own world of namespaces:
//!   node     routed-cni runs inside it; uplink 198.51.100.1/24, default via .2
//!   outside  "the internet": 198.51.100.2/24, no route back to the pod subnet
//!   pods     empty namespaces handed to the plugin as CNI_NETNS
//! and a `World` guard removes all of it (and its temp dir) on drop, also on
//! panic. Nothing touches the host's own network namespace.
//!
//! The tests need root: a plain `cargo test` reports them as ignored.

use std::collections::HashSet;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;
use nix::sched::{setns, CloneFlags};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

mod common;

use common::{ip, run, run_ok, NODE_IP, OUTSIDE_IP, OUTSIDE_IP6};

const GATEWAY: &str = "169.254.1.1";
const HOST_MAC: &str = "ee:ee:ee:ee:ee:ee";
const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// Name of the host-side veth for a container: "rcni" + 11 hex of sha256("<id>/<ifname>").
fn host_veth(container_id: &str, ifname: &str) -> String {
    let digest = Sha256::digest(format!("{container_id}/{ifname}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("rcni{}", &hex[..11])
}

fn is_ipv4_name(name: &str) -> bool {
    name.parse::<Ipv4Addr>().is_ok()
}

/// Moves the calling thread into the named network namespace.
fn enter_netns(ns: &str) {
    let f = fs::File::open(format!("/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("open /run/netns/{ns}: {e}"));
    setns(&f, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {ns}: {e}"));
}

/// One plugin run.
struct CniRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for CniRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n  stdout: {}\n  stderr: {}",
            self.code,
            self.stdout.trim(),
            self.stderr.trim()
        )
    }
}

impl CniRun {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Asserts success and returns the result JSON.
    fn result(&self) -> Value {
        assert!(self.ok(), "plugin failed: {self:?}");
        self.json()
    }

    /// Asserts a CNI error (exit 1, error JSON on stdout) and returns (code, msg + details).
    fn error(&self) -> (u64, String) {
        assert_eq!(self.code, Some(1), "expected exit 1: {self:?}");
        let v = self.json();
        let code = v["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no numeric code: {v}"));
        let msg = v["msg"].as_str().unwrap_or_else(|| panic!("no msg: {v}"));
        assert!(!msg.is_empty(), "empty msg: {v}");
        assert!(v["cniVersion"].is_string(), "no cniVersion: {v}");
        let details = v["details"].as_str().unwrap_or("");
        (code, format!("{msg} {details}"))
    }
}

struct Pod {
    ns: String,
    container_id: String,
}

impl Pod {
    fn netns(&self) -> String {
        format!("/run/netns/{}", self.ns)
    }
}

/// A node, an outside network and pods (`common::World`), with the network config of one pool.
struct World {
    base: common::World,
    subnet: Ipv4Network,
    config: Value,
}

impl std::ops::Deref for World {
    type Target = common::World;
    fn deref(&self) -> &common::World {
        &self.base
    }
}

impl std::ops::DerefMut for World {
    fn deref_mut(&mut self) -> &mut common::World {
        &mut self.base
    }
}

impl World {
    fn new(test: &str, subnet: &str) -> World {
        World::on(common::World::new("rcnit", test), subnet)
    }

    /// `new` with IPv6 on the uplink and a second pool, `subnet6`: dual-stack pods.
    fn dual(test: &str, subnet: &str, subnet6: &str) -> World {
        let mut w = World::on(common::World::new("rcnit", test).with_ipv6(), subnet);
        let store = w.dir.join("store");
        w.config["ipam"] = json!({
            "ranges": [[{"subnet": subnet}], [{"subnet": subnet6}]],
            "dataDir": store,
        });
        w
    }

    fn on(base: common::World, subnet: &str) -> World {
        let dir = &base.dir;
        World {
            subnet: subnet.parse().unwrap(),
            config: json!({
                "cniVersion": "1.0.0",
                "name": "test",
                "type": "routed-cni",
                "ipam": {"subnet": subnet, "dataDir": dir.join("store")},
                "masquerade": true,
                "nonMasqueradeCIDRs": [CLUSTER_CIDR],
                "mtu": 1500,
                "logLevel": "debug",
                "logFile": dir.join("cni.log"),
            }),
            base,
        }
    }

    fn pod(&mut self, name: &str) -> Pod {
        Pod {
            container_id: format!("ctr-{}-{name}", self.prefix),
            ns: self.pod_ns(name),
        }
    }

    fn config_str(&self) -> String {
        self.config.to_string()
    }

    /// Runs the plugin inside the node namespace with exactly `env` (plus PATH) and `stdin`.
    fn exec(&self, env: &[(&str, &str)], stdin: &str) -> CniRun {
        let out = self.exec_plugin(env, stdin.as_bytes());
        CniRun {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The environment a runtime passes for `pod`, with CNI_NETNS overridable.
    fn cni_with(&self, command: &str, pod: &Pod, netns: &str, config: &str) -> CniRun {
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={}",
            pod.ns
        );
        self.exec(
            &[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", &pod.container_id),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/usr/lib/cni"),
                ("CNI_ARGS", &args),
            ],
            config,
        )
    }

    fn add(&self, pod: &Pod) -> CniRun {
        self.cni_with("ADD", pod, &pod.netns(), &self.config_str())
    }

    /// CHECK with `prev` (ADD's result) as prevResult.
    fn check(&self, pod: &Pod, prev: &Value) -> CniRun {
        let mut conf = self.config.clone();
        conf["prevResult"] = prev.clone();
        self.cni_with("CHECK", pod, &pod.netns(), &conf.to_string())
    }

    fn del(&self, pod: &Pod) -> CniRun {
        self.cni_with("DEL", pod, &pod.netns(), &self.config_str())
    }

    /// ADD that must succeed; checks the result and the state it built; returns the pod IP.
    fn add_ok(&self, pod: &Pod) -> Ipv4Addr {
        let res = self.add(pod).result();
        self.check_add_result(&res, pod, "1.0.0")
    }

    /// DEL that must succeed silently.
    fn del_ok(&self, pod: &Pod) {
        let r = self.del(pod);
        assert!(r.ok(), "DEL {} failed: {r:?}", pod.ns);
        assert_eq!(r.stdout.trim(), "", "DEL must print nothing: {r:?}");
    }

    /// Checks the ADD result JSON and that the pod and node really look like it says.
    fn check_add_result(&self, res: &Value, pod: &Pod, version: &str) -> Ipv4Addr {
        assert_eq!(res["cniVersion"], version, "result: {res}");
        let ifs = res["interfaces"].as_array().expect("interfaces");
        assert_eq!(ifs.len(), 2, "two interfaces expected: {res}");
        let hv = host_veth(&pod.container_id, "eth0");
        assert_eq!(ifs[0]["name"], hv.as_str(), "host veth name: {res}");
        assert_eq!(ifs[0]["mac"], HOST_MAC, "host veth mac: {res}");
        assert!(
            ifs[0].get("sandbox").is_none_or(|s| s.as_str() == Some("")),
            "host veth has no sandbox: {res}"
        );
        assert_eq!(ifs[1]["name"], "eth0", "{res}");
        assert_eq!(ifs[1]["sandbox"], pod.netns().as_str(), "{res}");

        let ips = res["ips"].as_array().expect("ips");
        assert_eq!(ips.len(), 1, "{res}");
        let addr = ips[0]["address"].as_str().expect("ips[0].address");
        let (ip_s, len) = addr.split_once('/').expect("address is a CIDR");
        assert_eq!(len, "32", "pod address is a /32: {res}");
        let pod_ip: Ipv4Addr = ip_s.parse().expect("IPv4 address");
        assert!(
            self.subnet.contains(pod_ip),
            "{pod_ip} not in {}",
            self.subnet
        );
        assert_ne!(pod_ip, self.subnet.network(), "network address handed out");
        assert_ne!(
            pod_ip,
            self.subnet.broadcast(),
            "broadcast address handed out"
        );
        assert_eq!(ips[0]["gateway"], GATEWAY, "{res}");
        assert_eq!(ips[0]["interface"], 1, "{res}");
        let routes = res["routes"].as_array().expect("routes");
        assert!(
            routes
                .iter()
                .any(|r| r["dst"] == "0.0.0.0/0" && r["gw"] == GATEWAY),
            "default route via {GATEWAY} in result: {res}"
        );

        // The pod side.
        let link: Value =
            serde_json::from_str(&ip(&["-n", &pod.ns, "-j", "addr", "show", "dev", "eth0"]))
                .unwrap();
        assert_eq!(
            link[0]["address"].as_str().map(str::to_lowercase),
            ifs[1]["mac"].as_str().map(str::to_lowercase),
            "eth0 mac as reported: {link}"
        );
        assert!(
            link[0]["flags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f == "UP"),
            "pod eth0 is up: {link}"
        );
        let inet: Vec<String> = link[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["family"] == "inet")
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect();
        assert_eq!(inet, vec![format!("{pod_ip}/32")], "pod eth0 addresses");
        // Routes are compared on their meaning (dst, gateway, dev, scope), not on
        // text, so that e.g. "proto static" does not matter.
        let routes = routes_json(&pod.ns);
        assert!(
            routes
                .iter()
                .any(|r| r["dst"] == "default" && r["gateway"] == GATEWAY && r["dev"] == "eth0"),
            "pod default route via {GATEWAY} dev eth0: {routes:?}"
        );
        assert!(
            routes.iter().any(|r| r["dst"] == GATEWAY
                && r["dev"] == "eth0"
                && r["scope"] == "link"
                && r.get("gateway").is_none()),
            "pod route {GATEWAY} dev eth0 scope link: {routes:?}"
        );
        let neigh = ip(&["-n", &pod.ns, "neigh", "show", GATEWAY, "dev", "eth0"]);
        assert!(
            neigh.contains(&format!("lladdr {HOST_MAC}")) && neigh.contains("PERMANENT"),
            "permanent neighbour {GATEWAY} -> {HOST_MAC} in pod: {neigh}"
        );

        // The node side.
        let hl: Value =
            serde_json::from_str(&ip(&["-n", &self.node, "-j", "link", "show", "dev", &hv]))
                .unwrap();
        assert_eq!(hl[0]["address"], HOST_MAC, "host veth mac: {hl}");
        assert!(
            hl[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
            "host veth is up: {hl}"
        );
        let to_pod: Vec<Value> = routes_json(&self.node)
            .into_iter()
            .filter(|r| r["dst"] == pod_ip.to_string().as_str())
            .collect();
        assert!(
            to_pod.len() == 1
                && to_pod[0]["dev"] == hv.as_str()
                && to_pod[0]["scope"] == "link"
                && to_pod[0].get("gateway").is_none(),
            "node route {pod_ip} dev {hv} scope link: {to_pod:?}"
        );
        assert_eq!(
            self.node_sysctl(&format!("net/ipv4/conf/{hv}/proxy_arp")),
            "1"
        );
        assert_eq!(self.node_sysctl("net/ipv4/ip_forward"), "1");
        pod_ip
    }

    fn node_sysctl(&self, key: &str) -> String {
        run_ok(
            "ip",
            &[
                "netns",
                "exec",
                &self.node,
                "cat",
                &format!("/proc/sys/{key}"),
            ],
        )
        .trim()
        .to_string()
    }

    fn pool_dir(&self) -> PathBuf {
        self.dir
            .join("store")
            .join(self.subnet.to_string().replace('/', "-"))
    }

    /// IP-named allocation records in the pool directory.
    fn records(&self) -> Vec<String> {
        list_dir(&self.pool_dir())
            .into_iter()
            .filter(|n| is_ipv4_name(n))
            .collect()
    }

    fn keys(&self) -> Vec<String> {
        list_dir(&self.pool_dir().join("keys"))
    }

    /// Names of rcni* links in the node.
    fn host_veths(&self) -> Vec<String> {
        ip(&["-n", &self.node, "-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap().to_string())
            .filter(|n| n.starts_with("rcni"))
            .collect()
    }

    fn nat(&self) -> String {
        run_ok(
            "ip",
            &["netns", "exec", &self.node, "iptables-save", "-t", "nat"],
        )
    }

    /// Asserts the per-pool NAT chain: POSTROUTING -s subnet jumps to RCNI-<16 hex>,
    /// which RETURNs for the cluster CIDR before MASQUERADE; all rules tagged.
    fn assert_nat_rules(&self) {
        let nat = self.nat();
        let jump = nat
            .lines()
            .find(|l| {
                l.starts_with("-A POSTROUTING")
                    && l.contains(&format!("-s {}", self.subnet))
                    && l.contains("-j RCNI-")
            })
            .unwrap_or_else(|| panic!("no POSTROUTING jump for {}:\n{nat}", self.subnet));
        let chain = jump
            .rsplit("-j ")
            .next()
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        let hex = chain.strip_prefix("RCNI-").unwrap();
        assert!(
            hex.len() == 16 && hex.chars().all(|c| c.is_ascii_hexdigit()),
            "chain name RCNI-<16 hex>: {chain}"
        );
        let rules: Vec<&str> = nat
            .lines()
            .filter(|l| l.starts_with(&format!("-A {chain} ")))
            .collect();
        let ret = rules
            .iter()
            .position(|l| l.contains(&format!("-d {CLUSTER_CIDR}")) && l.contains("-j RETURN"));
        let masq = rules.iter().position(|l| l.contains("-j MASQUERADE"));
        assert!(
            matches!((ret, masq), (Some(r), Some(m)) if r < m),
            "{chain}: RETURN for {CLUSTER_CIDR} before MASQUERADE:\n{nat}"
        );
        for l in nat
            .lines()
            .filter(|l| l.starts_with("-A") && l.contains("RCNI-"))
        {
            assert!(
                l.contains("routed-cni"),
                "rule without routed-cni comment: {l}"
            );
        }
    }

    /// Asserts that nothing of the plugin is left in the node or the store.
    fn assert_clean(&self, pod_ips: &[Ipv4Addr]) {
        assert_eq!(self.host_veths(), Vec::<String>::new(), "rcni veths left");
        let routes = ip(&["-n", &self.node, "route", "show"]);
        for p in pod_ips {
            assert!(
                !routes.lines().any(|l| l.starts_with(&format!("{p} "))),
                "route to {p} left:\n{routes}"
            );
        }
        assert_eq!(self.records(), Vec::<String>::new(), "allocations left");
        assert_eq!(self.keys(), Vec::<String>::new(), "keys left");
        let nat = self.nat();
        assert!(
            !nat.contains("routed-cni") && !nat.contains("RCNI"),
            "NAT rules left:\n{nat}"
        );
    }

    fn ping(&self, from: &str, to: &str) -> bool {
        run(
            "ip",
            &[
                "netns", "exec", from, "ping", "-c", "1", "-w", "3", "-q", to,
            ],
        )
        .status
        .success()
    }

    fn assert_ping(&self, from: &Pod, to: &str) {
        assert!(self.ping(&from.ns, to), "ping {} -> {to} failed", from.ns);
    }
}

/// The main routing table of a namespace, as `ip -j route` objects.
fn routes_json(ns: &str) -> Vec<Value> {
    let out = ip(&["-n", ns, "-j", "route", "show"]);
    match serde_json::from_str(&out) {
        Ok(Value::Array(v)) => v,
        _ => panic!("ip -j route in {ns}: {out}"),
    }
}

fn list_dir(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(p) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read {}: {e}", p.display()),
    };
    v.sort();
    v
}

/// A TCP server in `server_ns` on `server_ip` accepts one connection from a client
/// in `client_ns`, and answers with a greeting. Returns the peer address the server saw.
fn tcp_source_seen(server_ns: &str, server_ip: Ipv4Addr, client_ns: &str) -> Ipv4Addr {
    let (tx, rx) = mpsc::channel();
    let sns = server_ns.to_string();
    let server = thread::spawn(move || -> Result<SocketAddr, String> {
        enter_netns(&sns);
        let l = TcpListener::bind((server_ip, 0)).map_err(|e| format!("bind: {e}"))?;
        tx.send(l.local_addr().unwrap().port()).unwrap();
        l.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match l.accept() {
                Ok((mut s, peer)) => {
                    s.set_nonblocking(false).unwrap();
                    s.write_all(b"hello from server\n")
                        .map_err(|e| format!("write: {e}"))?;
                    return Ok(peer);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        }
    });
    let Ok(port) = rx.recv_timeout(Duration::from_secs(10)) else {
        panic!("server did not start: {:?}", server.join());
    };
    let cns = client_ns.to_string();
    let client = thread::spawn(move || -> Result<String, String> {
        enter_netns(&cns);
        let addr = SocketAddr::from((server_ip, port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got)
            .map_err(|e| format!("read: {e}"))?;
        Ok(got)
    });
    let got = client.join().expect("client thread");
    let peer = server.join().expect("server thread");
    let got = got.unwrap_or_else(|e| panic!("client {client_ns} -> {server_ip}: {e}"));
    assert_eq!(got, "hello from server\n");
    match peer.unwrap_or_else(|e| panic!("server in {server_ns}: {e}")) {
        SocketAddr::V4(a) => *a.ip(),
        other => panic!("unexpected peer {other}"),
    }
}

// -------------------------------------------------------------------- tests

/// Lines of the node's conntrack table (procfs) that name `ip` as a source or destination.
fn conntrack_entries_of(w: &World, ip: Ipv4Addr) -> usize {
    let table = run_ok(
        "ip",
        &["netns", "exec", &w.node, "cat", "/proc/net/nf_conntrack"],
    );
    table
        .lines()
        .filter(|l| l.contains(&format!("src={ip} ")) || l.contains(&format!("dst={ip} ")))
        .count()
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn del_forgets_the_connections_of_the_released_address() {
    let mut w = World::new("ct", "10.244.9.0/24");
    let p1 = w.pod("p1");
    let p2 = w.pod("p2");
    let ip1 = w.add_ok(&p1);
    let _ip2 = w.add_ok(&p2);
    // Forwarded traffic to and from p1 leaves entries in the node's table.
    w.assert_ping(&p2, &ip1.to_string());
    w.assert_ping(&p1, OUTSIDE_IP);
    assert!(
        conntrack_entries_of(&w, ip1) >= 2,
        "no conntrack entries for {ip1} after pings"
    );
    w.del_ok(&p1);
    // A pod that gets ip1 next must not inherit p1's flows.
    assert_eq!(
        conntrack_entries_of(&w, ip1),
        0,
        "DEL left conntrack entries of {ip1}"
    );
    w.del_ok(&p2);
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn two_pods_reach_each_other_node_and_outside() {
    let mut w = World::new("a", "10.244.1.0/24");
    let p1 = w.pod("p1");
    let p2 = w.pod("p2");
    let ip1 = w.add_ok(&p1);
    let ip2 = w.add_ok(&p2);
    assert_ne!(ip1, ip2);
    let mut veths = w.host_veths();
    veths.sort();
    let mut want = vec![
        host_veth(&p1.container_id, "eth0"),
        host_veth(&p2.container_id, "eth0"),
    ];
    want.sort();
    assert_eq!(veths, want);
    assert_eq!(w.records().len(), 2, "two allocation records");
    assert_eq!(w.keys().len(), 2, "two key index files");
    w.assert_nat_rules();

    w.assert_ping(&p1, &ip2.to_string());
    w.assert_ping(&p2, &ip1.to_string());
    w.assert_ping(&p1, NODE_IP);
    w.assert_ping(&p1, OUTSIDE_IP);
    w.assert_ping(&p2, OUTSIDE_IP);

    // Leaving the cluster: masqueraded to the node's uplink address.
    let seen = tcp_source_seen(
        w.outside.as_ref().unwrap(),
        OUTSIDE_IP.parse().unwrap(),
        &p1.ns,
    );
    assert_eq!(
        seen,
        NODE_IP.parse::<Ipv4Addr>().unwrap(),
        "outside sees the node"
    );
    // Pod to pod: inside nonMasqueradeCIDRs, the source address is kept.
    let seen = tcp_source_seen(&p2.ns, ip2, &p1.ns);
    assert_eq!(seen, ip1, "pod2 sees pod1's own address");

    w.del_ok(&p1);
    // Pool still in use by pod2: its NAT rules stay; pod1's state is gone.
    w.assert_nat_rules();
    assert_eq!(w.host_veths(), vec![host_veth(&p2.container_id, "eth0")]);
    assert_eq!(w.records(), vec![ip2.to_string()]);
    w.del_ok(&p2);
    w.assert_clean(&[ip1, ip2]);

    // DEL is idempotent.
    w.del_ok(&p1);
    w.del_ok(&p2);
    w.assert_clean(&[ip1, ip2]);
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn thirty_parallel_adds_get_distinct_addresses() {
    const N: usize = 30;
    let mut w = World::new("b", "10.244.2.0/24");
    let pods: Vec<Pod> = (0..N).map(|i| w.pod(&format!("p{i}"))).collect();
    let w = &w;

    // All ADDs start at the same moment to contend for the pool lock.
    let start = Barrier::new(N);
    let runs: Vec<CniRun> = thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .map(|p| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    w.add(p)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ips: Vec<Ipv4Addr> = runs
        .iter()
        .zip(&pods)
        .map(|(r, p)| w.check_add_result(&r.result(), p, "1.0.0"))
        .collect();
    let distinct: HashSet<_> = ips.iter().collect();
    assert_eq!(distinct.len(), N, "distinct addresses: {ips:?}");
    assert_eq!(w.host_veths().len(), N);
    assert_eq!(w.records().len(), N);
    assert_eq!(w.keys().len(), N);

    let failed: Vec<&str> = thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .map(|p| s.spawn(move || (!w.ping(&p.ns, NODE_IP)).then_some(p.ns.as_str())))
            .collect();
        hs.into_iter().filter_map(|h| h.join().unwrap()).collect()
    });
    assert!(failed.is_empty(), "cannot ping the node from {failed:?}");

    let runs: Vec<CniRun> = thread::scope(|s| {
        let hs: Vec<_> = pods.iter().map(|p| s.spawn(move || w.del(p))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &runs {
        assert!(r.ok() && r.stdout.trim().is_empty(), "DEL failed: {r:?}");
    }
    w.assert_clean(&ips);
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn failed_add_leaves_nothing() {
    let subnet = "10.244.3.0/30"; // two usable addresses: .1 and .2
    let mut w = World::new("c", subnet);
    let p1 = w.pod("p1");
    let p2 = w.pod("p2");
    let p3 = w.pod("p3");
    let ip1 = w.add_ok(&p1);

    // A sandbox that does not exist: rejected, nothing allocated or created.
    let missing = format!("/run/netns/{}-nosuchpod", w.prefix);
    let ghost = Pod {
        ns: format!("{}-ghost", w.prefix),
        container_id: format!("ctr-{}-ghost", w.prefix),
    };
    let r = w.cni_with("ADD", &ghost, &missing, &w.config_str());
    let (code, msg) = r.error();
    assert_eq!(code, 4, "missing netns is an environment error: {r:?}");
    assert!(msg.contains("CNI_NETNS"), "message names CNI_NETNS: {msg}");
    assert_eq!(w.host_veths(), vec![host_veth(&p1.container_id, "eth0")]);
    assert_eq!(w.records(), vec![ip1.to_string()]);
    assert_eq!(w.keys().len(), 1);

    let ip2 = w.add_ok(&p2);
    let r = w.add(&p3);
    let (code, msg) = r.error();
    assert!(code >= 100, "pool exhaustion uses a plugin code: {r:?}");
    assert!(
        msg.contains(subnet) || msg.contains(&subnet.replace('/', "-")),
        "message names the pool {subnet}: {msg}"
    );
    let links = ip(&["-n", &p3.ns, "-o", "link", "show"]);
    assert!(!links.contains("eth0"), "pod3 has no eth0:\n{links}");
    let mut veths = w.host_veths();
    veths.sort();
    let mut want = vec![
        host_veth(&p1.container_id, "eth0"),
        host_veth(&p2.container_id, "eth0"),
    ];
    want.sort();
    assert_eq!(veths, want, "exactly the two working pods' veths");
    let mut want_records = vec![ip1.to_string(), ip2.to_string()];
    want_records.sort();
    assert_eq!(w.records(), want_records);
    assert_eq!(w.keys().len(), 2);

    // The runtime calls DEL after a failed ADD: fine, and the others keep working.
    w.del_ok(&p3);
    w.assert_ping(&p1, &ip2.to_string());
    w.assert_nat_rules();
    assert_eq!(w.records().len(), 2);

    w.del_ok(&p1);
    w.del_ok(&p2);
    w.assert_clean(&[ip1, ip2]);
    // The freed addresses can be handed out again.
    let ip3 = w.add_ok(&p3);
    w.del_ok(&p3);
    w.assert_clean(&[ip3]);
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn del_without_netns_and_version() {
    let mut w = World::new("d", "10.244.4.0/24");
    let p1 = w.pod("p1");

    // DEL without a sandbox (it may already be gone) still releases everything.
    let ip1 = w.add_ok(&p1);
    assert_eq!(w.records(), vec![ip1.to_string()]);
    let r = w.cni_with("DEL", &p1, "", &w.config_str());
    assert!(
        r.ok() && r.stdout.trim().is_empty(),
        "DEL without netns: {r:?}"
    );
    w.assert_clean(&[ip1]);

    // VERSION
    let r = w.exec(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
    let v = r.result();
    let supported: Vec<&str> = v["supportedVersions"]
        .as_array()
        .unwrap_or_else(|| panic!("supportedVersions: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for want in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        assert!(supported.contains(&want), "{want} in {supported:?}");
    }
    assert!(v["cniVersion"].is_string(), "{v}");

    // An old cniVersion gets the old result format.
    let mut old = w.config.clone();
    old["cniVersion"] = json!("0.3.1");
    let r = w.cni_with("ADD", &p1, &p1.netns(), &old.to_string());
    let res = r.result();
    let ip_old = w.check_add_result(&res, &p1, "0.3.1");
    assert_eq!(
        res["ips"][0]["version"], "4",
        "0.3.x result has ips[].version: {res}"
    );
    w.assert_ping(&p1, NODE_IP);
    let r = w.cni_with("DEL", &p1, &p1.netns(), &old.to_string());
    assert!(r.ok(), "DEL 0.3.1: {r:?}");
    w.assert_clean(&[ip_old]);

    // Garbage on stdin: decode error, nothing created.
    let r = w.cni_with("ADD", &p1, &p1.netns(), "this is { not json");
    let (code, _) = r.error();
    assert_eq!(code, 6, "{r:?}");
    w.assert_clean(&[]);

    // No CNI_CONTAINERID: environment error naming the variable.
    let conf = w.config_str();
    let netns = p1.netns();
    let r = w.exec(
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_NETNS", &netns),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ],
        &conf,
    );
    let (code, msg) = r.error();
    assert_eq!(code, 4, "{r:?}");
    assert!(
        msg.contains("CNI_CONTAINERID"),
        "message names CNI_CONTAINERID: {msg}"
    );
    w.assert_clean(&[]);
    let links = ip(&["-n", &p1.ns, "-o", "link", "show"]);
    assert!(!links.contains("eth0"), "no eth0 left in the pod:\n{links}");
}

/// Runs GC in the node with `valid` as cni.dev/valid-attachments (config at cniVersion 1.1.0).
fn gc(w: &World, valid: &[&Pod]) -> CniRun {
    let mut conf = w.config.clone();
    conf["cniVersion"] = json!("1.1.0");
    conf["cni.dev/valid-attachments"] = valid
        .iter()
        .map(|p| json!({"containerID": p.container_id, "ifname": "eth0"}))
        .collect();
    w.exec(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
        &conf.to_string(),
    )
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn gc_deletes_only_links_that_are_exactly_ours() {
    let mut w = World::new("own", "10.244.61.0/24");
    let keep = w.pod("keep");
    w.add_ok(&keep);
    let node = w.node.clone();
    let link_with_route = |args: &[&str], name: &str, ip_: &str| {
        let mut a = vec!["-n", &node, "link", "add", name];
        a.extend_from_slice(args);
        ip(&a);
        ip(&["-n", &node, "link", "set", name, "up"]);
        ip(&[
            "-n",
            &node,
            "route",
            "add",
            &format!("{ip_}/32"),
            "dev",
            name,
        ]);
    };
    // Starts with the prefix, but is not prefix + 11 hex: someone else's.
    link_with_route(
        &["type", "veth", "peer", "name", "minepeer"],
        "rcnimine",
        "10.244.61.200",
    );
    // Our name, but a bridge: not a veth we made.
    link_with_route(&["type", "bridge"], "rcni0123456789a", "10.244.61.201");
    // Ours, explained by nothing: the one GC must delete.
    let leaked = host_veth("gone", "eth0");
    link_with_route(
        &["type", "veth", "peer", "name", "gonepeer"],
        &leaked,
        "10.244.61.202",
    );

    let r = gc(&w, &[&keep]);
    assert!(r.ok(), "GC: {r:?}");
    let links = ip(&["-n", &node, "-o", "link", "show"]);
    assert!(links.contains("rcnimine"), "GC deleted rcnimine:\n{links}");
    assert!(
        links.contains("rcni0123456789a"),
        "GC deleted a bridge:\n{links}"
    );
    assert!(
        !links.contains(&leaked),
        "GC left the leaked veth {leaked}:\n{links}"
    );
    assert!(links.contains(&host_veth(&keep.container_id, "eth0")));
    w.assert_ping(&keep, NODE_IP);
    w.del_ok(&keep);
}

/// Spawns GC, and only then makes the list of valid attachments: every attachment whose ADD
/// finished before the list is in it, and every one that was still running when the list was
/// made ran while the GC process did. (A real runtime makes its list a few milliseconds before
/// it starts GC; what finishes in between is beyond any plugin's sight.)
fn gc_racing(w: &World, live: &std::sync::Mutex<HashSet<String>>) -> CniRun {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &w.node, common::BIN])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", "GC")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn GC");
    thread::sleep(Duration::from_millis(50));
    let valid: Vec<Value> = live
        .lock()
        .unwrap()
        .iter()
        .map(|c| json!({"containerID": c, "ifname": "eth0"}))
        .collect();
    let mut conf = w.config.clone();
    conf["cniVersion"] = json!("1.1.0");
    conf["cni.dev/valid-attachments"] = json!(valid);
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes());
    let out = child.wait_with_output().expect("wait for GC");
    CniRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn gc_in_a_loop_never_unwires_a_pod_that_was_added_and_not_deleted() {
    const WORKERS: usize = 3;
    const PER_WORKER: usize = 8;
    let mut w = World::new("gcrace", "10.244.62.0/24");
    let pods: Vec<Vec<Pod>> = (0..WORKERS)
        .map(|k| {
            (0..PER_WORKER)
                .map(|i| w.pod(&format!("r{k}x{i}")))
                .collect()
        })
        .collect();
    // The runtime's view: ADD finished and DEL not begun.
    let live = std::sync::Mutex::new(HashSet::new());
    let done = std::sync::atomic::AtomicBool::new(false);
    let started = Instant::now();
    let gc_runs = thread::scope(|s| {
        let (w, live, done) = (&w, &live, &done);
        let gc = s.spawn(move || {
            let mut runs = 0;
            while !done.load(Ordering::SeqCst) {
                let r = gc_racing(w, live);
                assert!(r.ok(), "GC: {r:?}");
                runs += 1;
            }
            runs
        });
        let workers: Vec<_> = pods
            .iter()
            .map(|ps| {
                s.spawn(move || {
                    for (i, p) in ps.iter().enumerate() {
                        let r = w.add(p);
                        assert!(r.ok(), "ADD {}: {r:?}", p.ns);
                        live.lock().unwrap().insert(p.container_id.clone());
                        if i % 2 == 1 {
                            live.lock().unwrap().remove(&p.container_id);
                            let r = w.del(p);
                            assert!(r.ok(), "DEL {}: {r:?}", p.ns);
                        }
                    }
                })
            })
            .collect();
        for h in workers {
            h.join().expect("worker");
        }
        done.store(true, Ordering::SeqCst);
        gc.join().expect("GC loop")
    });
    assert!(gc_runs >= 3, "only {gc_runs} GC runs overlapped the ADDs");
    assert!(started.elapsed() < Duration::from_secs(60));
    let veths = w.host_veths();
    let routes = ip(&["-n", &w.node, "route", "show"]);
    let live = live.into_inner().unwrap();
    assert_eq!(live.len(), WORKERS * PER_WORKER / 2);
    assert_eq!(w.records().len(), live.len(), "one allocation per live pod");
    for p in pods
        .iter()
        .flatten()
        .filter(|p| live.contains(&p.container_id))
    {
        let hv = host_veth(&p.container_id, "eth0");
        assert!(
            veths.contains(&hv),
            "{}: host veth {hv} is gone ({gc_runs} GC runs)",
            p.ns
        );
        assert!(
            routes.lines().any(|l| l.contains(&format!("dev {hv} "))),
            "{}: no route into {hv}:\n{routes}",
            p.ns
        );
        w.assert_ping(p, NODE_IP);
    }
}

/// The reply to a pod's packet arrives on the uplink, and for IPv4 the forwarding flag of the
/// interface a packet arrives on decides whether the node routes it: an uplink with
/// `forwarding=0` (under `ip_forward=1`) lets every request out and drops every answer. ADD and
/// CHECK name the uplink and the command that fixes it.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn an_uplink_that_does_not_forward_is_named_by_add_and_check() {
    let mut w = World::new("upfwd", "10.244.1.0/24");
    let a = w.pod("a");
    let b = w.pod("b");
    let prev = w.add(&a).result();
    w.assert_ping(&a, OUTSIDE_IP);

    w.on_node("sysctl -qw net.ipv4.conf.uplink.forwarding=0");
    assert!(
        !w.ping(&a.ns, OUTSIDE_IP),
        "the answer is dropped on the uplink"
    );
    let fix = "sysctl -w net.ipv4.conf.uplink.forwarding=1";
    let (code, msg) = w.check(&a, &prev).error();
    assert_eq!(code, 101, "{msg}");
    assert!(
        msg.contains("uplink") && msg.contains(fix),
        "CHECK said: {msg}"
    );
    let (code, msg) = w.add(&b).error();
    assert_eq!(code, 101, "{msg}");
    assert!(
        msg.contains("uplink") && msg.contains(fix),
        "ADD said: {msg}"
    );
    // A failed ADD leaves nothing of b, and does not overrule the node's choice itself.
    assert_eq!(w.host_veths(), vec![host_veth(&a.container_id, "eth0")]);
    assert_eq!(w.records().len(), 1);
    assert_eq!(w.node_sysctl("net/ipv4/conf/uplink/forwarding"), "0");

    w.on_node(fix);
    let check = w.check(&a, &prev);
    assert!(check.ok(), "CHECK after the fix: {check:?}");
    w.assert_ping(&a, OUTSIDE_IP);
    w.add_ok(&b);
    w.assert_ping(&b, OUTSIDE_IP);
}

/// A node whose uplink learns its IPv6 default route from router advertisements (accept_ra=1):
/// switching net.ipv6.conf.all.forwarding on makes the kernel ignore them, and remove the
/// learned route at once. ADD does not switch it on there: it fails naming accept_ra=2, and
/// CHECK names the same. The learned route is simulated with `proto ra` (a route the kernel
/// learned itself would be gone the moment forwarding went on).
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn an_uplink_that_learns_its_ipv6_default_route_from_ras_is_not_cut_off() {
    let mut w = World::dual("ra", "10.244.2.0/24", "fd00:10:244:2::/64");
    let a = w.pod("a");
    w.on_node(&format!(
        "sysctl -qw net.ipv6.conf.uplink.accept_ra=1 && \
         ip -6 route replace default via {OUTSIDE_IP6} dev uplink proto ra"
    ));
    assert_eq!(w.node_sysctl("net/ipv6/conf/all/forwarding"), "0");
    let fix = "sysctl -w net.ipv6.conf.uplink.accept_ra=2";
    let (code, msg) = w.add(&a).error();
    assert_eq!(code, 101, "{msg}");
    assert!(
        msg.contains("uplink") && msg.contains("router advertisement") && msg.contains(fix),
        "ADD said: {msg}"
    );
    assert_eq!(
        w.node_sysctl("net/ipv6/conf/all/forwarding"),
        "0",
        "ADD switched IPv6 forwarding on"
    );
    assert!(w.host_veths().is_empty() && w.records().is_empty());

    w.on_node(fix);
    let prev = w.add(&a).result();
    assert_eq!(w.node_sysctl("net/ipv6/conf/all/forwarding"), "1");
    let check = w.check(&a, &prev);
    assert!(check.ok(), "CHECK with accept_ra=2: {check:?}");
    w.assert_ping(&a, OUTSIDE_IP6);

    // Back to accept_ra=1 on a forwarding node: the route would not be renewed.
    w.on_node("sysctl -qw net.ipv6.conf.uplink.accept_ra=1");
    let (code, msg) = w.check(&a, &prev).error();
    assert_eq!(code, 101, "{msg}");
    assert!(
        msg.contains("uplink") && msg.contains(fix),
        "CHECK said: {msg}"
    );
    // accept_ra=0: the kernel does not learn routes there at all, nothing to lose.
    w.on_node("sysctl -qw net.ipv6.conf.uplink.accept_ra=0");
    let check = w.check(&a, &prev);
    assert!(check.ok(), "CHECK with accept_ra=0: {check:?}");
}

/// `/sys/class/net/<ifname>/addr_assign_type` as seen from namespace `ns` (`ip netns exec`
/// mounts that namespace's sysfs): 0 permanent, 1 random, 2 stolen, 3 set by the creator.
fn addr_assign_type(ns: &str, ifname: &str) -> String {
    run_ok(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "cat",
            &format!("/sys/class/net/{ifname}/addr_assign_type"),
        ],
    )
    .trim()
    .to_string()
}

/// systemd-udev's `MACAddressPolicy=persistent` (the default since systemd 242) rewrites the
/// MAC of any new link whose addr_assign_type is 1 (random), some time after it appears: the
/// pod's neighbour entry for the gateway and CHECK's recorded MAC would then be wrong. Both
/// veth ends must carry a MAC given in the creating request (3, NET_ADDR_SET), which udev
/// leaves alone. The pod MAC is derived from the attachment, so a retried ADD gives the same
/// one, and CHECK accepts it.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn both_veth_macs_are_set_at_creation_so_udev_leaves_them_alone() {
    let mut w = World::new("mac", "10.244.7.0/24");
    let p = w.pod("p");
    let res = w.add(&p).result();
    w.check_add_result(&res, &p, "1.0.0");
    let hv = host_veth(&p.container_id, "eth0");
    assert_eq!(
        (
            addr_assign_type(&w.node, &hv),
            addr_assign_type(&p.ns, "eth0")
        ),
        ("3".to_string(), "3".to_string()),
        "addr_assign_type of (host end, pod end)"
    );
    let mac = res["interfaces"][1]["mac"].as_str().unwrap().to_string();
    let first = u8::from_str_radix(&mac[..2], 16).unwrap();
    assert_eq!(
        first & 0x03,
        0x02,
        "pod MAC {mac} is locally administered unicast"
    );
    assert_ne!(mac, HOST_MAC);

    // CHECK compares the live pod MAC with the one ADD reported.
    let mut conf = w.config.clone();
    conf["prevResult"] = res.clone();
    let check = w.cni_with("CHECK", &p, &p.netns(), &conf.to_string());
    assert!(check.ok(), "CHECK after ADD: {check:?}");

    // The same attachment gets the same MAC again.
    w.del_ok(&p);
    let again = w.add(&p).result();
    assert_eq!(again["interfaces"][1]["mac"], mac.as_str(), "{again}");
    w.del_ok(&p);
}
