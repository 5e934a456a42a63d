//! `routed-cni doctor` against real pods: the real binary wires a pod in namespaces made by the
//! test, the test breaks one piece of the path the way an operator or another tool would, and
//! doctor must name that step, and the fix command it prints (run as is, from its JSON) must
//! repair the path: doctor passes again and the pod reaches the node and the outside again.
//!
//! The world of each test:
//!   node     routed-cni and doctor run inside it; uplink 198.51.100.1/24, default via .2
//!   outside  198.51.100.2/24, with no route back to the pod subnet, so a pod reaches it
//!            only when it is masqueraded
//!   pods     namespaces handed to the plugin as CNI_NETNS
//! A dual-stack world (`World::dual`) adds 2001:db8:100::1/64 (node) and ::2 (outside), a
//! node IPv6 default route, and an IPv6 pool beside the IPv4 one; the outside has no route
//! back to the IPv6 pod subnet either.
//! all removed when the `World` guard drops, also on panic. The host's own namespace is never
//! touched. The tests need root: a plain `cargo test` reports them as ignored.

use std::path::PathBuf;

use serde_json::{json, Value};

mod common;

use common::{ip, run, BIN, NODE_IP, NODE_IP6, OUTSIDE_IP, OUTSIDE_IP6};

const SUBNET: &str = "10.244.1.0/24";
const CLUSTER_CIDR: &str = "10.244.0.0/16";
const SUBNET6: &str = "fd00:10:244:1::/64";
const CLUSTER_CIDR6: &str = "fd00:10:244::/48";
/// The pod's IPv6 gateway: the host veth's link-local address.
const GATEWAY6: &str = "fe80::ecee:eeff:feee:eeee";
/// doctor's exit codes.
const HEALTHY: i32 = 0;
const BROKEN: i32 = 1;
const NOT_FOUND: i32 = 3;

/// One doctor run.
struct Doctor {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Doctor {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}): {self:?}"))
    }

    /// The report of the pod's address in `family` (`ipv4`, `ipv6`): a dual-stack pod has one
    /// per address.
    fn report(&self, family: &str) -> Value {
        let doc = self.json();
        let pods: Vec<&Value> = doc["pods"]
            .as_array()
            .expect("pods")
            .iter()
            .filter(|p| p["family"] == family)
            .collect();
        assert_eq!(pods.len(), 1, "one {family} report expected: {doc:#}");
        pods[0].clone()
    }

    fn failed_in(&self, family: &str) -> Vec<String> {
        self.report(family)["failed"]
            .as_array()
            .expect("failed")
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    }

    fn step_in(&self, family: &str, id: &str) -> Value {
        self.report(family)["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no {family} step {id}: {self:?}"))
    }

    /// The single pod's report.
    fn pod(&self) -> Value {
        let doc = self.json();
        let pods = doc["pods"].as_array().expect("pods");
        assert_eq!(pods.len(), 1, "one pod expected: {doc:#}");
        pods[0].clone()
    }

    fn failed(&self) -> Vec<String> {
        self.pod()["failed"]
            .as_array()
            .expect("failed")
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    }

    /// The fix commands of every failed step, in path order, each once (of every report).
    fn fixes(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let doc = self.json();
        let steps = doc["pods"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["steps"].as_array().unwrap().clone());
        for step in steps {
            if step["status"] != "fail" {
                continue;
            }
            for f in step["fix"].as_array().unwrap() {
                let f = f.as_str().unwrap().to_string();
                if !out.contains(&f) {
                    out.push(f);
                }
            }
        }
        out
    }

    fn step(&self, id: &str) -> Value {
        self.pod()["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no step {id}: {self:?}"))
    }
}

impl std::fmt::Debug for Doctor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

struct Pod {
    name: String,
    ns: String,
    container_id: String,
}

impl Pod {
    fn netns(&self) -> String {
        format!("/run/netns/{}", self.ns)
    }
}

/// A node, an outside network and pods (`common::World`), and which pools the config has.
struct World {
    base: common::World,
    /// Pods get an IPv6 address too.
    dual: bool,
    /// Pods get only an IPv6 address (a single IPv6 `ipam.subnet`).
    ipv6_only: bool,
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
    fn new(test: &str) -> World {
        World {
            base: common::World::new("rcnid", test),
            dual: false,
            ipv6_only: false,
        }
    }

    /// A dual-stack world: the uplink gets IPv6 addresses and the node an IPv6 default route;
    /// pods get one address of each family.
    fn dual(test: &str) -> World {
        World {
            base: common::World::new("rcnid", test).with_ipv6(),
            dual: true,
            ipv6_only: false,
        }
    }

    fn store(&self) -> PathBuf {
        self.dir.join("store")
    }

    fn config(&self) -> String {
        if self.ipv6_only {
            return json!({
                "cniVersion": "1.0.0",
                "name": "test",
                "type": "routed-cni",
                "ipam": {"subnet": SUBNET6, "dataDir": self.store()},
                "nonMasqueradeCIDRs": [CLUSTER_CIDR6],
                "logFile": self.dir.join("cni.log"),
            })
            .to_string();
        }
        if self.dual {
            return json!({
                "cniVersion": "1.0.0",
                "name": "test",
                "type": "routed-cni",
                "ipam": {
                    "ranges": [[{"subnet": SUBNET}], [{"subnet": SUBNET6}]],
                    "dataDir": self.store(),
                },
                "nonMasqueradeCIDRs": [CLUSTER_CIDR, CLUSTER_CIDR6],
                "logFile": self.dir.join("cni.log"),
            })
            .to_string();
        }
        json!({
            "cniVersion": "1.0.0",
            "name": "test",
            "type": "routed-cni",
            "ipam": {"subnet": SUBNET, "dataDir": self.store()},
            "nonMasqueradeCIDRs": [CLUSTER_CIDR],
            "logFile": self.dir.join("cni.log"),
        })
        .to_string()
    }

    /// A pod namespace wired by a real ADD.
    fn pod(&mut self, name: &str) -> Pod {
        let pod = Pod {
            name: name.to_string(),
            container_id: format!("{name}-{}", self.prefix),
            ns: self.pod_ns(name),
        };
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}");
        let netns = pod.netns();
        let out = self.exec_plugin(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", pod.container_id.as_str()),
                ("CNI_NETNS", netns.as_str()),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/usr/lib/cni"),
                ("CNI_ARGS", args.as_str()),
            ],
            self.config().as_bytes(),
        );
        assert!(
            out.status.success(),
            "ADD {name} failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        pod
    }

    fn doctor(&self, args: &[&str]) -> Doctor {
        let store = self.store();
        // No conflist there: the node-level plugin step is skipped, whatever the machine
        // running the tests has in /etc/cni/net.d.
        let conf_dir = store.join("no-conflist-here");
        let mut all = vec![
            "netns",
            "exec",
            &self.node,
            BIN,
            "doctor",
            "--data-dir",
            store.to_str().unwrap(),
            "--conf-dir",
            conf_dir.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        let out = run("ip", &all);
        Doctor {
            code: out.status.code().expect("exit code"),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn doctor_pod(&self, pod: &Pod, extra: &[&str]) -> Doctor {
        let sel = format!("default/{}", pod.name);
        let mut args = vec!["--pod", sel.as_str(), "--json"];
        args.extend_from_slice(extra);
        self.doctor(&args)
    }

    /// Both walks of a dual-stack pod pass, and the pod reaches the node and the outside over
    /// both families.
    fn assert_healthy_dual(&self, pod: &Pod) {
        let to = format!("[{OUTSIDE_IP6}]:80");
        let d = self.doctor_pod(pod, &["--to", &to]);
        assert_eq!(d.code, HEALTHY, "doctor should pass: {d:?}");
        for family in ["ipv4", "ipv6"] {
            let report = d.report(family);
            assert_eq!(report["ok"], true, "{report:#}");
            assert_eq!(report["failed"], json!([]), "{report:#}");
        }
        for to in [NODE_IP, OUTSIDE_IP, NODE_IP6, OUTSIDE_IP6] {
            assert!(self.ping(pod, to), "{} cannot ping {to}", pod.ns);
        }
    }

    /// `break_and_repair` for the IPv6 path of a dual-stack pod: the IPv6 walk fails on
    /// `expect` (perhaps also on `also`), the IPv4 walk stays whole, and the fix commands
    /// from the JSON bring IPv6 back.
    fn break_and_repair6(
        &self,
        pod: &Pod,
        break_cmds: &[String],
        expect: &[&str],
        also: &[&str],
        extra: &[&str],
    ) -> Doctor {
        self.assert_healthy_dual(pod);
        for c in break_cmds {
            self.on_node(c);
        }
        assert!(
            !self.ping(pod, OUTSIDE_IP6),
            "the IPv6 path still works after {break_cmds:?}"
        );
        let d = self.doctor_pod(pod, extra);
        assert_eq!(d.code, BROKEN, "doctor should fail: {d:?}");
        assert_eq!(d.failed_in("ipv4"), Vec::<String>::new(), "{d:?}");
        let failed = d.failed_in("ipv6");
        for id in expect {
            assert!(
                failed.iter().any(|f| f == id),
                "doctor did not name {id}: {failed:?}\n{d:?}"
            );
        }
        for f in &failed {
            assert!(
                expect.contains(&f.as_str()) || also.contains(&f.as_str()),
                "doctor failed an unrelated step {f}: {d:?}"
            );
        }
        let fixes = d.fixes();
        assert!(!fixes.is_empty(), "no fix command: {d:?}");
        for f in &fixes {
            self.on_node(f);
        }
        self.assert_healthy_dual(pod);
        d
    }

    fn ping(&self, pod: &Pod, to: &str) -> bool {
        run(
            "ip",
            &[
                "netns", "exec", &pod.ns, "ping", "-c", "1", "-w", "2", "-q", to,
            ],
        )
        .status
        .success()
    }

    fn assert_healthy(&self, pod: &Pod) {
        let d = self.doctor_pod(pod, &["--to", OUTSIDE_IP]);
        assert_eq!(d.code, HEALTHY, "doctor should pass: {d:?}");
        let report = d.pod();
        assert_eq!(report["ok"], true, "{report:#}");
        assert_eq!(report["failed"], json!([]), "{report:#}");
        assert!(self.ping(pod, NODE_IP), "{} cannot ping the node", pod.ns);
        assert!(
            self.ping(pod, OUTSIDE_IP),
            "{} cannot ping the outside",
            pod.ns
        );
    }

    /// Breaks the path with `break_cmds` (run in the node namespace), checks that doctor
    /// fails exactly on `expect` (among perhaps others in `also`), runs the fix commands from
    /// the JSON, and checks that the path is whole again.
    fn break_and_repair(
        &self,
        pod: &Pod,
        break_cmds: &[String],
        expect: &[&str],
        also: &[&str],
        extra: &[&str],
    ) -> Doctor {
        self.assert_healthy(pod);
        for c in break_cmds {
            self.on_node(c);
        }
        assert!(
            !self.ping(pod, OUTSIDE_IP),
            "the path still works after {break_cmds:?}"
        );
        let d = self.doctor_pod(pod, extra);
        assert_eq!(d.code, BROKEN, "doctor should fail: {d:?}");
        let failed = d.failed();
        for id in expect {
            assert!(
                failed.iter().any(|f| f == id),
                "doctor did not name {id}: {failed:?}\n{d:?}"
            );
        }
        for f in &failed {
            assert!(
                expect.contains(&f.as_str()) || also.contains(&f.as_str()),
                "doctor failed an unrelated step {f}: {d:?}"
            );
        }
        let fixes = d.fixes();
        assert!(!fixes.is_empty(), "no fix command: {d:?}");
        for f in &fixes {
            self.on_node(f);
        }
        self.assert_healthy(pod);
        d
    }
}

fn host_veth(w: &World, pod: &Pod) -> String {
    let d = w.doctor_pod(pod, &[]);
    d.pod()["hostVeth"].as_str().unwrap().to_string()
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn healthy_pod_passes_every_step_found_by_pod_container_or_netns() {
    let mut w = World::new("healthy");
    let pod = w.pod("web-1");
    let _other = w.pod("web-2");
    w.assert_healthy(&pod);

    let d = w.doctor_pod(&pod, &["--to", &format!("{OUTSIDE_IP}:80")]);
    let report = d.pod();
    assert_eq!(report["pod"], "default/web-1");
    assert_eq!(report["containerId"], pod.container_id.as_str());
    assert_eq!(report["netns"], pod.netns().as_str());
    let ids: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "pod-netns",
            "pod-interface",
            "pod-address",
            "pod-gateway-route",
            "pod-default-route",
            "pod-neighbour",
            "host-veth",
            "host-veth-sysctls",
            "ip-forward",
            "host-route",
            "rp-filter",
            "forward-filter",
            "firewalld",
            "nat",
            "pod-route-to",
            "node-route-to",
            "path-to",
            "path-mtu",
            "masquerade-to",
            "policy",
            "allocation"
        ],
        "steps in packet-path order"
    );
    // No agent in this node's namespace: the NetworkPolicy step is skipped, saying where it asked.
    for s in report["steps"].as_array().unwrap() {
        let want = if s["id"] == "policy" { "skip" } else { "ok" };
        assert_eq!(s["status"], want, "step {s:#}");
    }
    let policy = d.step("policy")["saw"].as_str().unwrap().to_string();
    assert!(
        policy.contains("http://127.0.0.1:9465") && policy.contains("--network-policy"),
        "{policy}"
    );
    assert!(
        d.step("masquerade-to")["saw"]
            .as_str()
            .unwrap()
            .starts_with("yes"),
        "{d:?}"
    );
    // Counters move: the pings above went through the pool's MASQUERADE rule.
    let nat = d.step("nat");
    let masq = &nat["details"]["chainRules"][1];
    assert_eq!(masq["target"], "MASQUERADE", "{nat:#}");
    assert!(masq["pkts"].as_u64().unwrap() >= 1, "{nat:#}");
    // Inside the cluster CIDR, no masquerade.
    let d = w.doctor_pod(&pod, &["--to", "10.244.7.7"]);
    assert!(
        d.step("masquerade-to")["saw"]
            .as_str()
            .unwrap()
            .starts_with(&format!("no: 10.244.7.7 is inside {CLUSTER_CIDR}")),
        "{d:?}"
    );

    // A Service IP (kube-proxy's iptables mode): doctor says the route that counts is the
    // endpoint's. The chain is not jumped to, so it changes no packet here.
    w.on_node(
        "iptables -t nat -N KUBE-SERVICES && iptables -t nat -A KUBE-SERVICES -d 10.96.0.10/32 -p tcp \
         -m comment --comment 'kube-system/kube-dns:dns-tcp cluster IP' -m tcp --dport 53 -j RETURN",
    );
    let d = w.doctor_pod(&pod, &["--to", "10.96.0.10:53"]);
    assert_eq!(
        d.step("node-route-to")["details"]["service"],
        "kube-system/kube-dns:dns-tcp cluster IP",
        "{d:?}"
    );

    // The same pod by container ID (whole, then a prefix) and by netns path.
    for args in [
        vec!["--container", pod.container_id.as_str(), "--json"],
        vec!["--container", &pod.container_id[..8], "--json"],
        vec!["--netns", &pod.netns(), "--json"],
    ] {
        let d = w.doctor(&args);
        assert_eq!(d.code, HEALTHY, "{args:?}: {d:?}");
        assert_eq!(
            d.pod()["containerId"],
            pod.container_id.as_str(),
            "{args:?}"
        );
    }

    // Both pods, for people.
    let d = w.doctor(&["--all"]);
    assert_eq!(d.code, HEALTHY, "{d:?}");
    assert!(d.stdout.contains("pod default/web-1") && d.stdout.contains("pod default/web-2"));
    assert!(
        d.stdout.contains("✓ host route") && !d.stdout.contains('✗'),
        "{d:?}"
    );
    println!(
        "{}",
        w.doctor(&["--pod", "default/web-1", "--to", "8.8.8.8:443"])
            .stdout
    );
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn unknown_pod_is_not_found() {
    let mut w = World::new("notfound");
    let _pod = w.pod("web-1");
    for args in [
        vec!["--pod", "default/nope"],
        vec!["--pod", "other/web-1", "--json"],
        vec!["--container", "nope"],
        vec!["--netns", "/run/netns/nope"],
    ] {
        let d = w.doctor(&args);
        assert_eq!(d.code, NOT_FOUND, "{args:?}: {d:?}");
        assert!(d.stderr.contains("no allocation matches"), "{d:?}");
        if args.contains(&"--json") {
            assert_eq!(d.json()["notFound"], true, "{d:?}");
        }
    }
    let d = w.doctor(&["--pod"]);
    assert_eq!(d.code, 2, "usage error: {d:?}");
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn missing_pod_default_route() {
    let mut w = World::new("defroute");
    let pod = w.pod("web-1");
    let d = w.break_and_repair(
        &pod,
        &[format!("ip -n {} route del default", pod.ns)],
        &["pod-default-route"],
        &["pod-route-to"],
        &["--to", OUTSIDE_IP],
    );
    assert_eq!(
        d.step("pod-default-route")["fix"],
        json!([format!(
            "ip -n {} route replace default via 169.254.1.1 dev eth0",
            pod.ns
        )])
    );
    // For people: the mark, what was seen, and the fix under it.
    let text = w.doctor(&["--pod", "default/web-1"]).stdout;
    assert!(!text.contains('✗'), "repaired: {text}");
    w.on_node(&format!("ip -n {} route del default", pod.ns));
    let text = w.doctor(&["--pod", "default/web-1"]).stdout;
    assert!(
        text.contains("✗ pod default route")
            && text.contains(&format!(
                "fix: ip -n {} route replace default via 169.254.1.1 dev eth0",
                pod.ns
            ))
            && text.contains("BROKEN: 1 step(s) failed: pod-default-route"),
        "{text}"
    );
    println!("{text}");
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn missing_pod_gateway_route() {
    let mut w = World::new("gwroute");
    let pod = w.pod("web-1");
    // Alone it breaks nothing yet: the kernel checked the gateway when the default route
    // was added. doctor warns.
    w.on_node(&format!("ip -n {} route del 169.254.1.1 dev eth0", pod.ns));
    let d = w.doctor_pod(&pod, &[]);
    assert_eq!(d.code, HEALTHY, "{d:?}");
    assert_eq!(d.step("pod-gateway-route")["status"], "warn", "{d:?}");
    assert!(w.ping(&pod, OUTSIDE_IP));
    // With the default route gone too, both fail, and the fixes, in order, repair both.
    w.break_and_repair(
        &pod,
        &[format!("ip -n {} route del default", pod.ns)],
        &["pod-gateway-route", "pod-default-route"],
        &[],
        &[],
    );
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn missing_gateway_neighbour_and_proxy_arp() {
    let mut w = World::new("neigh");
    let pod = w.pod("web-1");
    let veth = host_veth(&w, &pod);
    let d = w.break_and_repair(
        &pod,
        &[
            format!("ip -n {} neigh del 169.254.1.1 dev eth0", pod.ns),
            format!("sysctl -qw net.ipv4.conf.{veth}.proxy_arp=0"),
        ],
        &["pod-neighbour", "host-veth-sysctls"],
        &[],
        &[],
    );
    let why = d.step("pod-neighbour")["why"].as_str().unwrap().to_string();
    assert!(why.contains("proxy_arp is not 1"), "{d:?}");

    // proxy_arp alone repairs resolution (a warning: the entry is learned, not permanent).
    w.on_node(&format!("ip -n {} neigh del 169.254.1.1 dev eth0", pod.ns));
    let d = w.doctor_pod(&pod, &[]);
    assert_eq!(d.code, HEALTHY, "{d:?}");
    assert_eq!(d.step("pod-neighbour")["status"], "warn", "{d:?}");
    assert_eq!(
        d.step("pod-neighbour")["details"]["mac"],
        json!(null),
        "{d:?}"
    );
    assert!(
        d.step("pod-neighbour")["saw"]
            .as_str()
            .unwrap()
            .contains("-> ee:ee:ee:ee:ee:ee (reachable)"),
        "{d:?}"
    );
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn missing_host_route_under_strict_rp_filter() {
    let mut w = World::new("hostroute");
    let pod = w.pod("web-1");
    let ip = w.doctor_pod(&pod, &[]).pod()["ip"]
        .as_str()
        .unwrap()
        .to_string();
    // Real nodes often run with rp_filter=1: then the pod's own packets die too.
    w.on_node("sysctl -qw net.ipv4.conf.all.rp_filter=1");
    let d = w.break_and_repair(
        &pod,
        &[format!("ip route del {ip}/32")],
        &["host-route", "rp-filter"],
        &["node-route-to"],
        &["--to", OUTSIDE_IP],
    );
    assert_eq!(
        d.step("node-route-to")["details"]["errno"],
        22,
        "the kernel refuses the pod's packet: {d:?}"
    );
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn host_route_shadowed_by_a_policy_rule() {
    let mut w = World::new("shadow");
    let pod = w.pod("web-1");
    let ip = w.doctor_pod(&pod, &[]).pod()["ip"]
        .as_str()
        .unwrap()
        .to_string();
    w.on_node(&format!(
        "ip rule add to {ip} lookup 100 pref 100 && ip route add {ip} dev uplink table 100"
    ));
    let d = w.doctor_pod(&pod, &[]);
    assert_eq!(d.code, BROKEN, "{d:?}");
    assert_eq!(d.failed(), ["host-route"], "{d:?}");
    let saw = d.step("host-route")["saw"].as_str().unwrap().to_string();
    assert!(
        saw.contains("shadowed") && saw.contains("dev uplink table 100"),
        "{saw}"
    );
    w.on_node("ip rule del pref 100");
    w.assert_healthy(&pod);
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn ip_forward_off() {
    let mut w = World::new("forward");
    let pod = w.pod("web-1");
    w.break_and_repair(
        &pod,
        &["sysctl -qw net.ipv4.ip_forward=0".to_string()],
        // Writing ip_forward rewrites every interface's forwarding, the veth's included.
        &["ip-forward", "host-veth-sysctls", "node-route-to"],
        &[],
        &["--to", &format!("{OUTSIDE_IP}:80")],
    );
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn replies_not_forwarded_on_the_uplink() {
    let mut w = World::new("uplinkfwd");
    let pod = w.pod("web-1");
    // The request is forwarded (the veth forwards) and masqueraded; the answer arrives on the
    // uplink, and what decides is the forwarding flag of the interface a packet comes in on.
    let d = w.break_and_repair(
        &pod,
        &["sysctl -qw net.ipv4.conf.uplink.forwarding=0".to_string()],
        // The node's forwarding step names the uplink too, with or without --to.
        &["ip-forward", "node-route-to"],
        &[],
        &["--to", OUTSIDE_IP],
    );
    let fix = json!(["sysctl -w net.ipv4.conf.uplink.forwarding=1"]);
    assert_eq!(d.step("node-route-to")["fix"], fix);
    assert_eq!(d.step("ip-forward")["fix"], fix);
    assert!(
        d.step("ip-forward")["saw"]
            .as_str()
            .unwrap()
            .contains("uplink uplink: forwarding=0"),
        "{d:?}"
    );
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn missing_nat_jump() {
    let mut w = World::new("nat");
    let pod = w.pod("web-1");
    let d = w.doctor_pod(&pod, &[]);
    let chain = d.step("nat")["details"]["chain"]
        .as_str()
        .unwrap()
        .to_string();
    let d = w.break_and_repair(
        &pod,
        &[format!(
            "iptables -t nat -D POSTROUTING -s {SUBNET} -m comment --comment 'routed-cni pool {SUBNET}' -j {chain}"
        )],
        &["nat", "masquerade-to"],
        &[],
        &["--to", OUTSIDE_IP],
    );
    assert_eq!(
        d.step("nat")["fix"],
        json!([format!(
            "iptables -t nat -A POSTROUTING -s {SUBNET} -m comment --comment \"routed-cni pool {SUBNET}\" -j {chain}"
        )])
    );
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn pod_whose_sandbox_is_gone() {
    let mut w = World::new("gone");
    let pod = w.pod("web-1");
    let veth = host_veth(&w, &pod);
    // The runtime lost the sandbox without DEL: the namespace (and with it the veth) is gone.
    ip(&["netns", "del", &pod.ns]);
    w.namespaces.retain(|n| *n != pod.ns);
    let started = std::time::Instant::now();
    while run("ip", &["-n", &w.node, "link", "show", &veth])
        .status
        .success()
    {
        assert!(
            started.elapsed().as_secs() < 10,
            "the kernel did not remove {veth}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let d = w.doctor_pod(&pod, &[]);
    assert_eq!(d.code, BROKEN, "{d:?}");
    assert!(d.failed().starts_with(&["pod-netns".to_string()]), "{d:?}");
    assert_eq!(d.step("pod-interface")["status"], "skip", "{d:?}");
    for f in d.fixes() {
        w.on_node(&f);
    }
    // Released: the pod is no longer in the store.
    let d = w.doctor_pod(&pod, &[]);
    assert_eq!(d.code, NOT_FOUND, "{d:?}");
}

// ---------------------------------------------------------------- IPv6 and dual-stack

fn ip6_of(w: &World, pod: &Pod) -> String {
    w.doctor_pod(pod, &[]).report("ipv6")["ip"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn dual_stack_pod_gets_both_walks() {
    let mut w = World::dual("dual");
    let pod = w.pod("web-1");
    let _other = w.pod("web-2");
    w.assert_healthy_dual(&pod);

    let to = format!("[{OUTSIDE_IP6}]:80");
    let d = w.doctor_pod(&pod, &["--to", &to]);
    let v6 = d.report("ipv6");
    assert_eq!(v6["pod"], "default/web-1");
    assert_eq!(v6["pool"], SUBNET6);
    assert!(v6["ip"].as_str().unwrap().starts_with("fd00:10:244:1::"));
    let ids: Vec<&str> = v6["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "pod-netns",
            "pod-interface",
            "pod-address",
            "pod-default-route",
            "pod-neighbour",
            "host-veth",
            "host-veth-sysctls",
            "host-veth-address",
            "ipv6-forwarding",
            "host-route",
            "forward-filter",
            "firewalld",
            "nat",
            "pod-route-to",
            "node-route-to",
            "path-to",
            "path-mtu",
            "masquerade-to",
            "policy",
            "allocation"
        ],
        "IPv6 steps in packet-path order"
    );
    for s in v6["steps"].as_array().unwrap() {
        let want = if s["id"] == "policy" { "skip" } else { "ok" };
        assert_eq!(s["status"], want, "step {s:#}");
    }
    assert_eq!(
        d.step_in("ipv6", "pod-neighbour")["saw"],
        format!("{GATEWAY6} -> ee:ee:ee:ee:ee:ee (permanent), the host veth's MAC")
    );
    assert!(
        d.step_in("ipv6", "masquerade-to")["saw"]
            .as_str()
            .unwrap()
            .starts_with("yes"),
        "{d:?}"
    );
    // The pings went through the IPv6 pool's MASQUERADE rule, read from ip6tables.
    let nat = d.step_in("ipv6", "nat");
    let masq = &nat["details"]["chainRules"][1];
    assert_eq!(masq["target"], "MASQUERADE", "{nat:#}");
    assert!(masq["pkts"].as_u64().unwrap() >= 1, "{nat:#}");
    // The IPv4 walk is the IPv4 walk, its --to steps skipped for an IPv6 destination.
    let v4 = d.report("ipv4");
    assert_eq!(v4["steps"].as_array().unwrap().len(), 21, "{v4:#}");
    assert_eq!(d.step_in("ipv4", "policy")["status"], "skip");
    assert_eq!(d.step_in("ipv4", "pod-route-to")["status"], "skip");
    assert_eq!(d.step_in("ipv4", "rp-filter")["status"], "ok");

    // Inside the IPv6 cluster CIDR, no masquerade; an address without a port works too.
    let d = w.doctor_pod(&pod, &["--to", "fd00:10:244:7::7"]);
    assert!(
        d.step_in("ipv6", "masquerade-to")["saw"]
            .as_str()
            .unwrap()
            .starts_with(&format!("no: fd00:10:244:7::7 is inside {CLUSTER_CIDR6}")),
        "{d:?}"
    );

    // For people: one section per address, IPv4 first, both healthy.
    let text = w.doctor(&["--pod", "default/web-1", "--to", &to]).stdout;
    let v4_at = text.find("ip 10.244.1.").expect("IPv4 section");
    let v6_at = text.find("ip fd00:10:244:1::").expect("IPv6 section");
    assert!(v4_at < v6_at, "{text}");
    assert!(
        !text.contains('✗') && text.contains("✓ host veth gateway"),
        "{text}"
    );
    assert!(
        text.contains("1 pod(s) checked (2 addresses), 0 address(es) broken"),
        "{text}"
    );
    println!("{text}");

    // --all: each pod's two addresses together, IPv4 first.
    let text = w.doctor(&["--all"]).stdout;
    let sections: Vec<(String, bool)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("pod default/"))
        .map(|l| {
            let (name, rest) = l.split_once("  ip ").unwrap();
            (name.to_string(), rest.starts_with("fd00:"))
        })
        .collect();
    assert_eq!(
        sections,
        [
            ("web-1".to_string(), false),
            ("web-1".to_string(), true),
            ("web-2".to_string(), false),
            ("web-2".to_string(), true)
        ],
        "{text}"
    );
    assert!(
        text.contains("2 pod(s) checked (4 addresses), 0 address(es) broken"),
        "{text}"
    );
    // Not found: each pool named once.
    let d = w.doctor(&["--pod", "default/nope"]);
    assert_eq!(d.code, NOT_FOUND, "{d:?}");
    assert!(
        d.stderr.contains(&format!("(pools: {SUBNET}, {SUBNET6})")),
        "{d:?}"
    );
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn ipv6_missing_pod_default_route() {
    let mut w = World::dual("defroute6");
    let pod = w.pod("web-1");
    let to = format!("[{OUTSIDE_IP6}]:80");
    let d = w.break_and_repair6(
        &pod,
        &[format!("ip -n {} -6 route del default", pod.ns)],
        &["pod-default-route"],
        &["pod-route-to"],
        &["--to", &to],
    );
    assert_eq!(
        d.step_in("ipv6", "pod-default-route")["fix"],
        json!([format!(
            "ip -n {} -6 route replace default via {GATEWAY6} dev eth0",
            pod.ns
        )])
    );
    // For people.
    w.on_node(&format!("ip -n {} -6 route del default", pod.ns));
    let text = w.doctor(&["--pod", "default/web-1"]).stdout;
    assert!(
        text.contains("✗ pod default route")
            && text.contains(&format!(
                "fix: ip -n {} -6 route replace default via {GATEWAY6} dev eth0",
                pod.ns
            ))
            && text.contains("BROKEN: 1 step(s) failed: pod-default-route"),
        "{text}"
    );
    println!("{text}");
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn ipv6_forwarding_off() {
    let mut w = World::dual("forward6");
    let pod = w.pod("web-1");
    let to = format!("[{OUTSIDE_IP6}]:80");
    let d = w.break_and_repair6(
        &pod,
        &["sysctl -qw net.ipv6.conf.all.forwarding=0".to_string()],
        // Writing all.forwarding also rewrites the veth's flag: a warning of its own.
        &["ipv6-forwarding", "node-route-to"],
        &[],
        &["--to", &to],
    );
    assert_eq!(
        d.step_in("ipv6", "ipv6-forwarding")["fix"],
        json!(["sysctl -w net.ipv6.conf.all.forwarding=1"])
    );
    assert_eq!(d.step_in("ipv6", "host-veth-sysctls")["status"], "warn");
}

/// An uplink that learns the node's IPv6 default route from router advertisements at
/// accept_ra=1 on a forwarding node: the kernel ignores them, and the route expires. Simulated
/// with a `proto ra` route (a learned one is removed at once when forwarding goes on).
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn ipv6_uplink_ignoring_router_advertisements() {
    let mut w = World::dual("ra6");
    let pod = w.pod("web-1");
    w.assert_healthy_dual(&pod);
    w.on_node(&format!(
        "sysctl -qw net.ipv6.conf.uplink.accept_ra=1 && \
         ip -6 route replace default via {OUTSIDE_IP6} dev uplink proto ra"
    ));
    let d = w.doctor_pod(&pod, &[]);
    assert_eq!(d.code, BROKEN, "{d:?}");
    assert_eq!(d.failed_in("ipv4"), Vec::<String>::new(), "{d:?}");
    assert_eq!(d.failed_in("ipv6"), ["ipv6-forwarding"], "{d:?}");
    let step = d.step_in("ipv6", "ipv6-forwarding");
    assert_eq!(
        step["fix"],
        json!(["sysctl -w net.ipv6.conf.uplink.accept_ra=2"]),
        "{step:#}"
    );
    assert!(
        step["why"]
            .as_str()
            .unwrap()
            .contains("router advertisements"),
        "{step:#}"
    );
    w.on_node("sysctl -qw net.ipv6.conf.uplink.accept_ra=2");
    w.assert_healthy_dual(&pod);
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn ipv6_host_veth_sysctls() {
    let mut w = World::dual("sysctl6");
    let pod = w.pod("web-1");
    let veth = host_veth_dual(&w, &pod);
    // proxy_ndp and the veth's own forwarding flag: not as ADD left them, but IPv6 still
    // flows (all.forwarding decides; the gateway is the veth's own address). A warning.
    w.on_node(&format!(
        "sysctl -qw net.ipv6.conf.{veth}.proxy_ndp=0 net.ipv6.conf.{veth}.forwarding=0"
    ));
    let d = w.doctor_pod(&pod, &[]);
    assert_eq!(d.code, HEALTHY, "{d:?}");
    let step = d.step_in("ipv6", "host-veth-sysctls");
    assert_eq!(step["status"], "warn", "{d:?}");
    assert!(w.ping(&pod, OUTSIDE_IP6) && w.ping(&pod, NODE_IP6), "{d:?}");
    for f in step["fix"].as_array().unwrap() {
        w.on_node(f.as_str().unwrap());
    }
    assert_eq!(
        w.doctor_pod(&pod, &[]).step_in("ipv6", "host-veth-sysctls")["status"],
        "ok"
    );
    // disable_ipv6 on the veth takes its gateway address and the pod's /128 route with it.
    let d = w.break_and_repair6(
        &pod,
        &[format!("sysctl -qw net.ipv6.conf.{veth}.disable_ipv6=1")],
        &["host-veth-sysctls", "host-veth-address", "host-route"],
        &[],
        &[],
    );
    assert!(
        d.step_in("ipv6", "host-veth-sysctls")["why"]
            .as_str()
            .unwrap()
            .contains("disable_ipv6=1"),
        "{d:?}"
    );
}

fn host_veth_dual(w: &World, pod: &Pod) -> String {
    w.doctor_pod(pod, &[]).report("ipv6")["hostVeth"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn ipv6_missing_host_veth_gateway_address() {
    let mut w = World::dual("gwaddr6");
    let pod = w.pod("web-1");
    let veth = host_veth_dual(&w, &pod);
    let d = w.break_and_repair6(
        &pod,
        &[
            format!("ip -6 addr del {GATEWAY6}/64 dev {veth}"),
            // What the node already knows of the pod would carry replies for a while.
            format!("ip -6 neigh flush dev {veth}"),
        ],
        &["host-veth-address"],
        &[],
        &[],
    );
    assert_eq!(
        d.step_in("ipv6", "host-veth-address")["fix"],
        json!([format!("ip -6 addr replace {GATEWAY6}/64 dev {veth} nodad")])
    );
    // With the pod's permanent entry gone too, resolving the gateway fails, and doctor says
    // why.
    w.on_node(&format!("ip -6 addr del {GATEWAY6}/64 dev {veth}"));
    w.on_node(&format!(
        "ip -n {} -6 neigh del {GATEWAY6} dev eth0",
        pod.ns
    ));
    let d = w.doctor_pod(&pod, &[]);
    assert_eq!(d.code, BROKEN, "{d:?}");
    let neigh = d.step_in("ipv6", "pod-neighbour");
    assert_eq!(neigh["status"], "fail", "{d:?}");
    assert!(
        neigh["why"]
            .as_str()
            .unwrap()
            .contains(&format!("does not hold {GATEWAY6}/64")),
        "{d:?}"
    );
    for f in d.fixes() {
        w.on_node(&f);
    }
    w.assert_healthy_dual(&pod);
    // With the address back, neighbour discovery resolves the gateway: a warning, since ADD's
    // permanent entry is what the pod should have.
    w.on_node(&format!(
        "ip -n {} -6 neigh del {GATEWAY6} dev eth0",
        pod.ns
    ));
    let d = w.doctor_pod(&pod, &[]);
    assert_eq!(d.code, HEALTHY, "{d:?}");
    let neigh = d.step_in("ipv6", "pod-neighbour");
    assert_eq!(neigh["status"], "warn", "{d:?}");
    assert!(
        neigh["saw"]
            .as_str()
            .unwrap()
            .contains("-> ee:ee:ee:ee:ee:ee (reachable) (the host veth answered)"),
        "{d:?}"
    );
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn ipv6_missing_host_route() {
    let mut w = World::dual("hostroute6");
    let pod = w.pod("web-1");
    let ip6 = ip6_of(&w, &pod);
    let to = format!("[{OUTSIDE_IP6}]:80");
    let d = w.break_and_repair6(
        &pod,
        &[format!("ip -6 route del {ip6}/128")],
        &["host-route", "node-route-to"],
        &[],
        &["--to", &to],
    );
    assert_eq!(
        d.step_in("ipv6", "host-route")["fix"],
        json!([format!(
            "ip -6 route replace {ip6}/128 dev {}",
            host_veth_dual(&w, &pod)
        )])
    );
    assert!(
        d.step_in("ipv6", "node-route-to")["saw"]
            .as_str()
            .unwrap()
            .contains("but replies on uplink go via 2001:db8:100::2 dev uplink"),
        "{d:?}"
    );
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn ipv6_missing_nat_jump() {
    let mut w = World::dual("nat6");
    let pod = w.pod("web-1");
    let d = w.doctor_pod(&pod, &[]);
    let chain = d.step_in("ipv6", "nat")["details"]["chain"]
        .as_str()
        .unwrap()
        .to_string();
    let to = OUTSIDE_IP6.to_string();
    let d = w.break_and_repair6(
        &pod,
        &[format!(
            "ip6tables -t nat -D POSTROUTING -s {SUBNET6} -m comment --comment 'routed-cni pool {SUBNET6}' -j {chain}"
        )],
        &["nat", "masquerade-to"],
        &[],
        &["--to", &to],
    );
    assert_eq!(
        d.step_in("ipv6", "nat")["fix"],
        json!([format!(
            "ip6tables -t nat -A POSTROUTING -s {SUBNET6} -m comment --comment \"routed-cni pool {SUBNET6}\" -j {chain}"
        )])
    );
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn ipv6_pod_address_missing_tentative_or_disabled() {
    let mut w = World::dual("podaddr6");
    let pod = w.pod("web-1");
    let ip6 = ip6_of(&w, &pod);
    let in_pod = |cmd: &str| format!("ip netns exec {} {cmd}", pod.ns);
    // Gone.
    w.break_and_repair6(
        &pod,
        &[format!("ip -n {} -6 addr del {ip6}/128 dev eth0", pod.ns)],
        &["pod-address"],
        &[],
        &[],
    );
    // Back, but through duplicate address detection, which a minute of probes keeps running:
    // the kernel does not send from a tentative address.
    let d = w.break_and_repair6(
        &pod,
        &[
            in_pod(
                "sysctl -qw net.ipv6.conf.eth0.accept_dad=1 net.ipv6.conf.eth0.dad_transmits=60",
            ),
            format!("ip -n {} -6 addr del {ip6}/128 dev eth0", pod.ns),
            format!("ip -n {} -6 addr add {ip6}/128 dev eth0", pod.ns),
        ],
        &["pod-address"],
        &[],
        &[],
    );
    let step = d.step_in("ipv6", "pod-address");
    assert!(
        step["saw"].as_str().unwrap().contains("still tentative"),
        "{d:?}"
    );
    assert_eq!(
        step["fix"],
        json!([
            format!("ip -n {} -6 addr del {ip6}/128 dev eth0", pod.ns),
            format!("ip -n {} -6 addr replace {ip6}/128 dev eth0 nodad", pod.ns),
        ])
    );
    // IPv6 off in the pod: the address, the default route and the gateway entry go with it,
    // and the fixes, in path order, put them back.
    let d = w.break_and_repair6(
        &pod,
        &[in_pod("sysctl -qw net.ipv6.conf.eth0.disable_ipv6=1")],
        &["pod-address", "pod-default-route", "pod-neighbour"],
        &[],
        &[],
    );
    assert_eq!(
        d.step_in("ipv6", "pod-address")["fix"][0],
        in_pod("sysctl -w net.ipv6.conf.eth0.disable_ipv6=0"),
        "{d:?}"
    );
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn ipv6_only_pool() {
    let mut w = World::dual("only6");
    w.ipv6_only = true;
    let pod = w.pod("web-1");
    let d = w.doctor_pod(&pod, &["--to", OUTSIDE_IP6]);
    assert_eq!(d.code, HEALTHY, "{d:?}");
    let report = d.pod();
    assert_eq!(report["family"], "ipv6");
    assert_eq!(report["failed"], json!([]), "{d:?}");
    assert!(w.ping(&pod, OUTSIDE_IP6) && w.ping(&pod, NODE_IP6));
    let text = w.doctor(&["--all"]).stdout;
    assert!(
        text.contains("ip fd00:10:244:1::") && text.contains("healthy") && !text.contains('✗'),
        "{text}"
    );
}

/// The filter FORWARD step of `d`: failed, naming `needles` in what it saw.
fn assert_forward_blocked(d: &Doctor, family: &str, needles: &[&str]) -> Value {
    let step = d.step_in(family, "forward-filter");
    assert_eq!(step["status"], "fail", "{step:#}");
    assert_eq!(step["title"], "FORWARD filter", "{step:#}");
    let saw = step["saw"].as_str().unwrap();
    for n in needles {
        assert!(
            saw.contains(n),
            "forward-filter does not name {n:?}: {step:#}"
        );
    }
    step
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn forward_drop_rule_for_the_pool() {
    let mut w = World::new("fwdrop");
    let pod = w.pod("web-1");
    let rule = format!("-s {SUBNET} -j DROP");
    // Inserted at position 1, above routed-cni's jump, under a DROP policy.
    w.on_node("iptables -P FORWARD DROP");
    let d = w.break_and_repair(
        &pod,
        &[format!("iptables -I FORWARD 1 {rule}")],
        &["forward-filter"],
        &[],
        &["--to", OUTSIDE_IP],
    );
    let step = assert_forward_blocked(&d, "ipv4", &["iptables-nft", "FORWARD", &rule]);
    assert_eq!(
        step["fix"],
        json!([format!("iptables-nft -D FORWARD {rule}")]),
        "{step:#}"
    );
    // Without --to, the same rule blocks pod -> outside in general.
    w.on_node(&format!("iptables -I FORWARD 1 {rule}"));
    let d = w.doctor_pod(&pod, &[]);
    assert_eq!(d.code, BROKEN, "{d:?}");
    assert_forward_blocked(&d, "ipv4", &[&rule]);
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn forward_drop_in_a_user_chain() {
    // Docker's layout: FORWARD jumps to DOCKER-USER first; an operator's drop there counts.
    let mut w = World::new("fwuser");
    let pod = w.pod("web-1");
    let d = w.break_and_repair(
        &pod,
        &[
            "iptables -N DOCKER-USER".to_string(),
            "iptables -I FORWARD 1 -j DOCKER-USER".to_string(),
            "iptables -A DOCKER-USER -o uplink -m conntrack --ctstate NEW -j REJECT".to_string(),
        ],
        &["forward-filter"],
        &[],
        &["--to", OUTSIDE_IP],
    );
    assert_forward_blocked(&d, "ipv4", &["DOCKER-USER", "-o uplink"]);
    // A drop of other traffic, or an accept of replies only, does not block the pod.
    w.on_node("iptables -A DOCKER-USER -s 192.0.2.0/24 -j DROP");
    w.on_node("iptables -A DOCKER-USER -i uplink -o uplink -j DROP");
    w.on_node("iptables -A DOCKER-USER -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT");
    let d = w.doctor_pod(&pod, &["--to", OUTSIDE_IP]);
    assert_eq!(d.code, HEALTHY, "{d:?}");
    assert!(w.ping(&pod, OUTSIDE_IP));
    // A match doctor cannot evaluate is a warning, not a failure.
    w.on_node("iptables -I DOCKER-USER 1 -m mark --mark 0x1 -j DROP");
    let d = w.doctor_pod(&pod, &["--to", OUTSIDE_IP]);
    assert_eq!(d.code, HEALTHY, "{d:?}");
    let step = d.step("forward-filter");
    assert_eq!(step["status"], "warn", "{step:#}");
    assert!(
        step["saw"].as_str().unwrap().contains("may drop"),
        "{step:#}"
    );
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn forward_policy_drop() {
    let mut w = World::new("fwpolicy");
    let pod = w.pod("web-1");
    // routed-cni's forward chain, jumped to from the top of FORWARD, accepts the pool.
    w.on_node("iptables -P FORWARD DROP");
    w.assert_healthy(&pod);
    let d = w.doctor_pod(&pod, &["--to", OUTSIDE_IP]);
    let step = d.step("forward-filter");
    assert_eq!(step["status"], "ok", "{step:#}");
    assert!(
        step["saw"]
            .as_str()
            .unwrap()
            .contains("accepted by routed-cni's forward chain ahead of the DROP policy"),
        "{step:#}"
    );
    // Without our jump, nothing accepts a new flow: the policy drops it.
    w.on_node("iptables -P FORWARD ACCEPT");
    let d = w.break_and_repair(
        &pod,
        &[
            // Another tool rewriting FORWARD drops routed-cni's jump.
            "eval iptables $(iptables -S FORWARD | grep 'routed-cni pool' | sed 's/^-A/-D/')"
                .to_string(),
            // kube-proxy's and ufw's first rule: replies only, never a new flow.
            "iptables -A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".to_string(),
            "iptables -P FORWARD DROP".to_string(),
        ],
        &["forward-filter"],
        &[],
        &["--to", OUTSIDE_IP],
    );
    let step = assert_forward_blocked(&d, "ipv4", &["iptables-nft", "policy DROP"]);
    let fix = step["fix"].as_array().unwrap();
    assert!(
        fix.last()
            .unwrap()
            .as_str()
            .unwrap()
            .starts_with("iptables-nft -I FORWARD 1 -m comment --comment \"routed-cni pool"),
        "the fix puts routed-cni's jump back at the top: {step:#}"
    );
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn forward_policy_drop_in_the_legacy_backend() {
    // An ACCEPT in iptables-nft cannot undo a DROP in iptables-legacy: both hooks run.
    let mut w = World::new("fwlegacy");
    let pod = w.pod("web-1");
    let d = w.break_and_repair(
        &pod,
        &["iptables-legacy -P FORWARD DROP".to_string()],
        &["forward-filter"],
        &[],
        &["--to", OUTSIDE_IP],
    );
    let step = assert_forward_blocked(&d, "ipv4", &["iptables-legacy", "policy DROP"]);
    for f in step["fix"].as_array().unwrap() {
        assert!(
            f.as_str().unwrap().starts_with("iptables-legacy "),
            "{step:#}"
        );
    }
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn ipv6_forward_drop_rule_for_the_pool() {
    let mut w = World::dual("fwdrop6");
    let pod = w.pod("web-1");
    let rule = format!("-s {SUBNET6} -j DROP");
    let to = OUTSIDE_IP6.to_string();
    let d = w.break_and_repair6(
        &pod,
        &[format!("ip6tables -I FORWARD 1 {rule}")],
        &["forward-filter"],
        &[],
        &["--to", &to],
    );
    let step = assert_forward_blocked(&d, "ipv6", &["ip6tables-nft", &rule]);
    assert_eq!(
        step["fix"],
        json!([format!("ip6tables-nft -D FORWARD {rule}")])
    );
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn firewalld_rejects_forwarded_pod_traffic() {
    // firewalld's forward chains as firewalld 1.3 writes them with its default zones (a
    // fixture: e2e/47-firewalld.sh runs the daemon itself). No iptables rule can undo its reject.
    let mut w = World::new("firewalld");
    let pod = w.pod("web-1");
    w.assert_healthy(&pod);
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/firewalld-forward.nft"
    );
    w.on_node(&format!("nft -f {fixture}"));
    assert!(
        !w.ping(&pod, OUTSIDE_IP),
        "firewalld's reject did not apply"
    );
    let d = w.doctor_pod(&pod, &["--to", OUTSIDE_IP]);
    assert_eq!(d.code, BROKEN, "{d:?}");
    assert_eq!(d.failed(), ["firewalld"], "{d:?}");
    let step = d.step("firewalld");
    let saw = step["saw"].as_str().unwrap();
    assert!(
        saw.contains("filter_FWD_public") && saw.contains("reject"),
        "names the zone chain that rejects: {step:#}"
    );
    // The host veths (by prefix), not the pool as a source: a source would also trust a
    // packet arriving on the uplink with a pod's address.
    assert_eq!(
        step["fix"],
        json!([
            "firewall-cmd --zone=trusted --add-interface=rcni+",
            "firewall-cmd --permanent --zone=trusted --add-interface=rcni+",
        ])
    );
    // The iptables FORWARD chain accepts: only firewalld is named.
    assert_eq!(d.step("forward-filter")["status"], "ok", "{d:?}");
    // The veths in a zone an operator named "routed-cni" with no policy yet, as
    // `firewall-cmd --permanent --new-zone=routed-cni --add-interface=rcni+` leaves it
    // (firewalld 1.3.3): still rejected, and that zone's rules are not routed-cni's jump.
    w.on_node(
        "nft 'add chain inet firewalld filter_FWD_routed-cni; \
         add rule inet firewalld filter_FWD_routed-cni reject with icmpx admin-prohibited; \
         insert rule inet firewalld filter_FORWARD_ZONES iifname \"rcni*\" goto filter_FWD_routed-cni'",
    );
    let d = w.doctor_pod(&pod, &["--to", OUTSIDE_IP]);
    assert_eq!(d.failed(), ["firewalld"], "{d:?}");
    let saw = d.step("firewalld")["saw"].as_str().unwrap().to_string();
    assert!(saw.contains("filter_FWD_routed-cni"), "{saw}");
    assert!(!saw.contains("routed-cni's jump"), "{saw}");
    w.on_node("nft flush chain inet firewalld filter_FORWARD_ZONES");
    w.on_node("nft add rule inet firewalld filter_FORWARD_ZONES goto filter_FWD_public");
    // What the fix does to the table (firewalld 1.3.3, seen with `nft list table`): the
    // wildcard dispatched to the trusted zone ahead of the default zone.
    w.on_node(
        "nft insert rule inet firewalld filter_FORWARD_ZONES iifname '\"rcni*\"' goto filter_FWD_trusted",
    );
    w.assert_healthy(&pod);
    let d = w.doctor_pod(&pod, &[]);
    let step = d.step("firewalld");
    assert_eq!(step["status"], "ok", "{step:#}");
    assert!(
        step["saw"].as_str().unwrap().contains("filter_FWD_trusted"),
        "{step:#}"
    );
}
