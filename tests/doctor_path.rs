//! `routed-cni doctor --to <remote pod>`: the path step names the way the node sends the
//! packet — a direct route to another node, or the VXLAN device with the neighbour entry, FDB
//! entry and underlay route it relies on — and the MTU step compares the pod's MTU with what
//! that path carries.
//!
//! The world: `common::World::new` (node uplink 198.51.100.1/24, default via .2 outside), one
//! pod wired by a real ADD, and the kernel state the agent keeps for remote nodes, made here by
//! hand with `ip` and `bridge`: `rcni.vxlan` (VNI 77, port 4789, nolearning, MTU 1450), for a
//! node behind the router at 203.0.113.3 its permanent neighbour and FDB entries and
//! `10.244.3.0/24 via 10.244.3.0 dev rcni.vxlan onlink proto 77`, and for a node on the
//! uplink's network `10.244.5.0/24 via 198.51.100.3 proto 77`. Nothing is sent: doctor only
//! reads. Everything is removed with the namespaces when the guard drops.

use serde_json::{json, Value};

mod common;

use common::{run, BIN, OUTSIDE_IP};

const SUBNET: &str = "10.244.1.0/24";
const SUBNET6: &str = "fd00:10:244:1::/64";
const REMOTE_NODE: &str = "203.0.113.3";
const REMOTE_MAC: &str = "02:aa:bb:cc:dd:03";
const NEAR_NODE: &str = "198.51.100.3";
const BROKEN: i32 = 1;

struct World {
    base: common::World,
    netns: String,
}

struct Doctor {
    code: i32,
    stdout: String,
}

impl std::fmt::Debug for Doctor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n{}", self.code, self.stdout)
    }
}

impl Doctor {
    fn step(&self, id: &str) -> Value {
        self.step_in("ipv4", id)
    }

    /// A step of the report for the pod's address in `family` (`ipv4`, `ipv6`).
    fn step_in(&self, family: &str, id: &str) -> Value {
        let doc: Value = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("no JSON ({e}): {self:?}"));
        doc["pods"]
            .as_array()
            .expect("pods")
            .iter()
            .find(|p| p["family"] == family)
            .unwrap_or_else(|| panic!("no {family} report: {self:?}"))["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .find(|s| s["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no {family} step {id}: {self:?}"))
    }

    fn saw(&self, id: &str) -> String {
        self.step(id)["saw"].as_str().unwrap().to_string()
    }
}

impl World {
    /// A node with one pod (MTU 1500, the plugin's default) wired by ADD.
    fn new(test: &str) -> World {
        World::with_ipam(test, json!({"subnet": SUBNET}))
    }

    /// `new` with a dual-stack pod: one IPv4 and one IPv6 address.
    fn dual(test: &str) -> World {
        World::with_ipam(
            test,
            json!({"ranges": [[{"subnet": SUBNET}], [{"subnet": SUBNET6}]]}),
        )
    }

    fn with_ipam(test: &str, mut ipam: Value) -> World {
        let mut base = common::World::new("rcnip", test);
        let ns = base.pod_ns("web-1");
        let netns = format!("/run/netns/{ns}");
        let store = base.dir.join("store");
        ipam["dataDir"] = json!(store);
        let config = json!({
            "cniVersion": "1.0.0",
            "name": "test",
            "type": "routed-cni",
            "ipam": ipam,
            "nonMasqueradeCIDRs": ["10.244.0.0/16", "fd00:10:244::/48"],
            "logFile": base.dir.join("cni.log"),
        });
        let id = format!("web-1-{}", base.prefix);
        let out = base.exec_plugin(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", &id),
                ("CNI_NETNS", &netns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/usr/lib/cni"),
                (
                    "CNI_ARGS",
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1",
                ),
            ],
            config.to_string().as_bytes(),
        );
        assert!(
            out.status.success(),
            "ADD failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        World { base, netns: ns }
    }

    /// The agent's state for a node across a router, and for one on the uplink's network.
    fn remote_nodes(&self) {
        self.base.on_node(&format!(
            "ip link add rcni.vxlan type vxlan id 77 dstport 4789 local 198.51.100.1 nolearning \
             && ip link set rcni.vxlan mtu 1450 up \
             && ip neigh add 10.244.3.0 lladdr {REMOTE_MAC} dev rcni.vxlan nud permanent \
             && bridge fdb append {REMOTE_MAC} dev rcni.vxlan dst {REMOTE_NODE} self permanent \
             && ip route add 10.244.3.0/24 via 10.244.3.0 dev rcni.vxlan onlink proto 77 \
             && ip route add 10.244.5.0/24 via {NEAR_NODE} proto 77"
        ));
    }

    fn doctor_to(&self, to: &str) -> Doctor {
        let store = self.base.dir.join("store");
        let conf_dir = store.join("no-conflist-here");
        let out = run(
            "ip",
            &[
                "netns",
                "exec",
                &self.base.node,
                BIN,
                "doctor",
                "--data-dir",
                store.to_str().unwrap(),
                "--conf-dir",
                conf_dir.to_str().unwrap(),
                "--pod",
                "default/web-1",
                "--json",
                "--to",
                to,
            ],
        );
        Doctor {
            code: out.status.code().expect("exit code"),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        }
    }
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn vxlan_path_names_device_neighbour_fdb_and_underlay() {
    let w = World::new("vxlan");
    w.remote_nodes();
    let d = w.doctor_to("10.244.3.7");
    let step = d.step("path-to");
    assert_eq!(step["status"], "ok", "{d:?}");
    let saw = d.saw("path-to");
    for needle in [
        "VXLAN via 10.244.3.0 dev rcni.vxlan (VNI 77, port 4789, local 198.51.100.1)",
        "route 10.244.3.0/24 proto 77 (routed-cni agent's)",
        &format!("neighbour 10.244.3.0 -> {REMOTE_MAC} (permanent)"),
        &format!("FDB {REMOTE_MAC} -> node address {REMOTE_NODE}"),
        &format!("underlay: {REMOTE_NODE} via router {OUTSIDE_IP} dev uplink"),
    ] {
        assert!(saw.contains(needle), "{needle:?} not in {saw:?}");
    }
    let det = &step["details"];
    assert_eq!(det["path"], "vxlan");
    assert_eq!(det["route"]["ours"], true, "{det:#}");
    assert_eq!(det["route"]["onlink"], true, "{det:#}");
    assert_eq!(det["fdb"]["dst"], REMOTE_NODE, "{det:#}");
    assert_eq!(det["device"]["vni"], 77, "{det:#}");
    assert_eq!(det["underlay"]["gateway"], OUTSIDE_IP, "{det:#}");

    // MTU: the pod's 1500 does not fit the 1450 device. The fix printed sets it.
    let mtu = d.step("path-mtu");
    assert_eq!(mtu["status"], "warn", "{d:?}");
    assert!(
        d.saw("path-mtu").contains(
            "pod eth0 MTU 1500; rcni.vxlan MTU 1450; uplink MTU 1500 - 50 VXLAN headers = 1450"
        ),
        "{d:?}"
    );
    assert!(mtu["why"].as_str().unwrap().contains("\"mtu\""), "{mtu:#}");
    assert_eq!(mtu["details"]["fits"], 1450);
    let fixes: Vec<String> = mtu["fix"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    assert_eq!(fixes.len(), 2, "the pod's side and the host veth: {mtu:#}");
    assert_eq!(
        fixes[0],
        format!("ip -n {} link set eth0 mtu 1450", w.netns)
    );
    for fix in &fixes {
        w.base.on_node(fix);
    }
    let d = w.doctor_to("10.244.3.7");
    assert_eq!(d.step("path-mtu")["status"], "ok", "{d:?}");
    assert_eq!(d.code, 0, "{d:?}");

    // An underlay smaller than the device thinks: 1400 - 50 leaves 1350.
    w.base.on_node("ip link set uplink mtu 1400");
    let d = w.doctor_to("10.244.3.7");
    assert_eq!(d.step("path-mtu")["status"], "warn", "{d:?}");
    assert!(
        d.saw("path-mtu")
            .contains("larger than the 1350 that fit uplink once encapsulated"),
        "{d:?}"
    );
    w.base.on_node("ip link set uplink mtu 1500");

    // The FDB entry deleted by hand: the chain breaks there, and doctor says so.
    w.base.on_node(&format!(
        "bridge fdb del {REMOTE_MAC} dev rcni.vxlan dst {REMOTE_NODE} self"
    ));
    let d = w.doctor_to("10.244.3.7");
    assert_eq!(d.code, BROKEN, "{d:?}");
    let step = d.step("path-to");
    assert_eq!(step["status"], "fail", "{d:?}");
    assert!(
        d.saw("path-to")
            .contains(&format!("no FDB entry for {REMOTE_MAC} on rcni.vxlan")),
        "{d:?}"
    );
    let why = step["why"].as_str().unwrap();
    assert!(
        why.contains("is routed-cni agent running?")
            && why.contains("bridge fdb show dev rcni.vxlan"),
        "{why}"
    );
    assert_eq!(step["details"]["fdb"], Value::Null);

    // The neighbour entry gone too: the chain breaks one step earlier.
    w.base.on_node("ip neigh del 10.244.3.0 dev rcni.vxlan");
    let d = w.doctor_to("10.244.3.7");
    assert_eq!(d.step("path-to")["status"], "fail", "{d:?}");
    assert!(
        d.saw("path-to")
            .contains("no neighbour entry for 10.244.3.0 on rcni.vxlan"),
        "{d:?}"
    );

    // The device down: the kernel drops the route through it, the packet falls through to
    // the default route, and doctor says why.
    w.base.on_node("ip link set rcni.vxlan down");
    let d = w.doctor_to("10.244.3.7");
    let step = d.step("path-to");
    assert_eq!(step["status"], "warn", "{d:?}");
    assert_eq!(
        d.saw("path-to"),
        format!("direct to {OUTSIDE_IP} via uplink, route default proto boot (not routed-cni's); rcni.vxlan is DOWN")
    );
    assert_eq!(step["fix"][0], "ip link set rcni.vxlan up", "{step:#}");
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn direct_path_names_the_node_address_and_whose_route_it_is() {
    let w = World::new("direct");
    w.remote_nodes();
    let d = w.doctor_to("10.244.5.7:80");
    let step = d.step("path-to");
    assert_eq!(step["status"], "ok", "{d:?}");
    assert_eq!(
        d.saw("path-to"),
        format!(
            "direct to node address {NEAR_NODE} via uplink, route 10.244.5.0/24 proto 77 (routed-cni agent's)"
        )
    );
    assert_eq!(step["details"]["path"], "direct");
    assert_eq!(step["details"]["route"]["ours"], true);
    assert_eq!(d.step("path-mtu")["status"], "ok", "{d:?}");
    assert!(
        d.saw("path-mtu")
            .contains("pod eth0 MTU 1500; uplink MTU 1500"),
        "{d:?}"
    );
    assert_eq!(d.code, 0, "{d:?}");

    // Anything else leaves by the default route, which is not ours.
    let d = w.doctor_to(OUTSIDE_IP);
    assert!(
        d.saw("path-to")
            .starts_with(&format!("direct on uplink: {OUTSIDE_IP} is on the link")),
        "{d:?}"
    );
    let d = w.doctor_to("192.0.2.9");
    assert_eq!(
        d.saw("path-to"),
        format!("direct to {OUTSIDE_IP} via uplink, route default proto boot (not routed-cni's)")
    );

    // A pod of this node, or the node itself: the other steps cover it.
    let d = w.doctor_to("10.244.1.77");
    assert_eq!(d.step("path-to")["status"], "skip", "{d:?}");
    let d = w.doctor_to("198.51.100.1");
    assert_eq!(d.step("path-to")["status"], "skip", "{d:?}");

    // The pod's MTU over a smaller uplink.
    w.base.on_node("ip link set uplink mtu 1400");
    let d = w.doctor_to("10.244.5.7");
    assert_eq!(d.step("path-mtu")["status"], "warn", "{d:?}");
    assert!(
        d.saw("path-mtu")
            .contains("larger than the 1400 that fit uplink"),
        "{d:?}"
    );
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn ipv6_pods_share_the_ipv4_tunnel() {
    let w = World::dual("vxlan6");
    w.remote_nodes();
    // The agent's IPv6 entries for the same remote node: its IPv6 tunnel address, same MAC.
    w.base.on_node(&format!(
        "ip -6 neigh add fd00:10:244:3:: lladdr {REMOTE_MAC} dev rcni.vxlan nud permanent \
         && ip -6 route add fd00:10:244:3::/64 via fd00:10:244:3:: dev rcni.vxlan onlink proto 77"
    ));
    let d = w.doctor_to("fd00:10:244:3::7");
    let step = d.step_in("ipv6", "path-to");
    assert_eq!(step["status"], "ok", "{d:?}");
    let saw = step["saw"].as_str().unwrap();
    for needle in [
        "VXLAN via fd00:10:244:3:: dev rcni.vxlan (VNI 77, port 4789, local 198.51.100.1)",
        &format!("neighbour fd00:10:244:3:: -> {REMOTE_MAC} (permanent)"),
        &format!("FDB {REMOTE_MAC} -> node address {REMOTE_NODE}"),
        &format!("underlay: {REMOTE_NODE} via router {OUTSIDE_IP} dev uplink"),
    ] {
        assert!(saw.contains(needle), "{needle:?} not in {saw:?}");
    }
    // The headers are the IPv4 underlay's, whatever the pod's family.
    let mtu = d.step_in("ipv6", "path-mtu");
    assert_eq!(mtu["details"]["underlay"]["overhead"], 50, "{mtu:#}");
    assert_eq!(mtu["status"], "warn", "{mtu:#}");
    // The IPv4 walk skips the IPv6 destination's path steps.
    assert_eq!(d.step_in("ipv4", "path-to")["status"], "skip", "{d:?}");
}
