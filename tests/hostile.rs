//! Hostile input, table-driven: every bad stdin, config value or `CNI_*` variable gets the
//! right error code and a message naming what to fix, and nothing on the node changes: no
//! link, no route, no NAT rule, no store record. The plugin runs in a scratch node namespace.

use serde_json::{json, Value};
use std::process::Command;

mod common;

/// A node namespace, a pod namespace and a store directory (`common::World::bare`).
struct Scratch {
    world: common::World,
    pod: String,
}

impl std::ops::Deref for Scratch {
    type Target = common::World;
    fn deref(&self) -> &common::World {
        &self.world
    }
}

impl Scratch {
    fn new() -> Scratch {
        let mut world = common::World::bare("rch", "hostile");
        let pod = world.pod_ns("pod");
        Scratch { world, pod }
    }

    fn config(&self) -> Value {
        json!({"cniVersion":"1.0.0","name":"hostile","type":"routed-cni",
               "ipam":{"subnet":"10.210.0.0/24","dataDir": self.dir.join("store")}})
    }

    /// Runs the plugin in the node with `env` over a valid default environment.
    fn run(&self, env: &[(&str, &str)], stdin: &[u8]) -> (i32, Value) {
        let pod_path = format!("/run/netns/{}", self.pod);
        let mut all = vec![
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "hostile-1"),
            ("CNI_NETNS", pod_path.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ];
        // Later entries win: `env` overrides the defaults.
        all.extend_from_slice(env);
        let out = self.exec_plugin(&all, stdin);
        // DEL, CHECK, GC and STATUS print nothing on success.
        let doc = if out.stdout.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!(
                    "stdout is not one JSON document ({e}): {:?}",
                    String::from_utf8_lossy(&out.stdout)
                )
            })
        };
        (out.status.code().unwrap_or(-1), doc)
    }

    /// Links, routes and NAT rules in the node, and record files in the store.
    fn node_state(&self) -> String {
        let sh = |args: &[&str]| {
            let o = Command::new("ip")
                .args(["netns", "exec", &self.node])
                .args(args)
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let records = walk(&self.dir);
        format!(
            "links:\n{}routes:\n{}nat:\n{}records:{records:?}",
            sh(&["ip", "-o", "link"]),
            sh(&["ip", "route"]),
            sh(&["iptables", "-t", "nat", "-S"])
        )
    }
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else if p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
            {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn bad_inputs_get_the_right_code_and_change_nothing() {
    let s = Scratch::new();
    let before = s.node_state();
    let good = s.config();
    let with = |path: &[&str], v: Value| {
        let mut c = good.clone();
        let mut cur = &mut c;
        for k in &path[..path.len() - 1] {
            cur = cur.get_mut(*k).unwrap();
        }
        cur[path[path.len() - 1]] = v;
        serde_json::to_vec(&c).unwrap()
    };
    let good_bytes = serde_json::to_vec(&good).unwrap();
    let regular_file = s.dir.join("not-a-netns");
    std::fs::write(&regular_file, b"x").unwrap();
    let regular_file = regular_file.display().to_string();
    let long_ifname = "a".repeat(16);

    // (what, env overrides, stdin, expected code, text the message must contain)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u64, &'a str);
    let cases: Vec<Case> = vec![
        ("empty stdin", vec![], vec![], 6, "no network config"),
        ("10 MB stdin", vec![], vec![b' '; 10 << 20], 6, "at most"),
        (
            "not JSON",
            vec![],
            b"{\"cniVersion\":".to_vec(),
            6,
            "not valid JSON",
        ),
        ("JSON array", vec![], b"[1,2,3]".to_vec(), 6, "JSON object"),
        (
            "unknown version",
            vec![],
            with(&["cniVersion"], json!("9.9.9")),
            1,
            "9.9.9",
        ),
        (
            "version of wrong type",
            vec![],
            with(&["cniVersion"], json!(1)),
            7,
            "cniVersion",
        ),
        (
            "subnet of wrong type",
            vec![],
            with(&["ipam", "subnet"], json!(42)),
            7,
            "ipam.subnet",
        ),
        (
            "invalid CIDR",
            vec![],
            with(&["ipam", "subnet"], json!("10.0.0.0/33")),
            7,
            "10.0.0.0/33",
        ),
        (
            "host bits in subnet",
            vec![],
            with(&["ipam", "subnet"], json!("10.0.0.1/24")),
            7,
            "host bits",
        ),
        (
            "rangeStart outside the subnet",
            vec![],
            with(&["ipam", "rangeStart"], json!("10.99.0.1")),
            7,
            "outside",
        ),
        (
            "IPv6 subnet too small",
            vec![],
            with(&["ipam", "subnet"], json!("fd00::/127")),
            7,
            "too small",
        ),
        (
            "IPv4 rangeStart in an IPv6 subnet",
            vec![],
            with(
                &["ipam"],
                json!({"subnet":"fd00:10::/64","rangeStart":"10.210.0.5"}),
            ),
            7,
            "outside",
        ),
        (
            "two IPv6 range sets",
            vec![],
            with(
                &["ipam"],
                json!({"ranges":[[{"subnet":"fd00:1::/64"}],[{"subnet":"fd00:2::/64"}]]}),
            ),
            2,
            "two IPv6 range sets",
        ),
        (
            "three range sets",
            vec![],
            with(
                &["ipam"],
                json!({"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00:2::/64"}],[{"subnet":"10.3.0.0/24"}]]}),
            ),
            2,
            "range sets",
        ),
        (
            "relative dataDir",
            vec![],
            with(&["ipam", "dataDir"], json!("../../etc")),
            7,
            "ipam.dataDir",
        ),
        (
            "mtu of wrong type",
            vec![],
            with(&["mtu"], json!("9000")),
            7,
            "mtu",
        ),
        (
            "masquerade of wrong type",
            vec![],
            with(&["masquerade"], json!("yes")),
            7,
            "masquerade",
        ),
        (
            "hostVethPrefix with a path",
            vec![],
            with(&["hostVethPrefix"], json!("../x")),
            7,
            "hostVethPrefix",
        ),
        (
            "network name with a slash",
            vec![],
            with(&["name"], json!("../../etc/passwd")),
            7,
            "name",
        ),
        (
            "unknown command",
            vec![("CNI_COMMAND", "EXPLODE")],
            good_bytes.clone(),
            4,
            "CNI_COMMAND",
        ),
        (
            "no container ID",
            vec![("CNI_CONTAINERID", "")],
            good_bytes.clone(),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "container ID with a slash",
            vec![("CNI_CONTAINERID", "a/../../b")],
            good_bytes.clone(),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "container ID ..",
            vec![("CNI_CONTAINERID", "..")],
            good_bytes.clone(),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "container ID with spaces",
            vec![("CNI_CONTAINERID", "a b")],
            good_bytes.clone(),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "ifname of 16 bytes",
            vec![("CNI_IFNAME", &long_ifname)],
            good_bytes.clone(),
            4,
            "CNI_IFNAME",
        ),
        (
            "ifname with a slash",
            vec![("CNI_IFNAME", "../eth0")],
            good_bytes.clone(),
            4,
            "CNI_IFNAME",
        ),
        (
            "no netns",
            vec![("CNI_NETNS", "")],
            good_bytes.clone(),
            4,
            "CNI_NETNS",
        ),
        (
            "netns is a regular file",
            vec![("CNI_NETNS", &regular_file)],
            good_bytes.clone(),
            4,
            "not a namespace",
        ),
        (
            "netns path missing",
            vec![("CNI_NETNS", "/run/netns/does-not-exist-rch")],
            good_bytes.clone(),
            4,
            "cannot be opened",
        ),
        (
            "netns is the plugin's own",
            vec![("CNI_NETNS", "/proc/self/ns/net")],
            good_bytes.clone(),
            4,
            "own network namespace",
        ),
        (
            "netns of another kind",
            vec![("CNI_NETNS", "/proc/self/ns/mnt")],
            good_bytes.clone(),
            4,
            "not a network namespace",
        ),
    ];
    for (what, env, stdin, code, needle) in cases {
        let (rc, doc) = s.run(&env, &stdin);
        assert_eq!(rc, 1, "{what}: exit code, doc {doc}");
        assert_eq!(doc["code"].as_u64(), Some(code), "{what}: {doc}");
        let msg = doc["msg"].as_str().unwrap_or_default();
        assert!(
            msg.contains(needle),
            "{what}: message {msg:?} should mention {needle:?}"
        );
        assert!(
            doc["cniVersion"].is_string(),
            "{what}: error has no cniVersion: {doc}"
        );
        assert_eq!(s.node_state(), before, "{what} changed the node");
    }
    // And the plugin still works afterwards; its log file keeps other users out.
    let log = s.dir.join("logs/cni.log");
    let mut logged = good.clone();
    logged["logFile"] = json!(log);
    let good_bytes = serde_json::to_vec(&logged).unwrap();
    let (rc, doc) = s.run(&[], &good_bytes);
    assert_eq!(rc, 0, "valid ADD after the bad ones: {doc}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&log)
        .expect("log file written")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "log file mode");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("ADD ok") && text.contains("took="),
        "one line per call with its duration: {text}"
    );
    let (rc, _) = s.run(&[("CNI_COMMAND", "DEL")], &good_bytes);
    assert_eq!(rc, 0);
    assert_eq!(s.node_state(), before, "ADD+DEL left something");
}
