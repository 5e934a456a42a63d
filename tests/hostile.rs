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
        let (rc, doc, _) = self.run_full(env, stdin, None);
        (rc, doc)
    }

    /// `run`, also returning stderr; `nofile` caps the plugin's open files (RLIMIT_NOFILE).
    fn run_full(
        &self,
        env: &[(&str, &str)],
        stdin: &[u8],
        nofile: Option<u32>,
    ) -> (i32, Value, String) {
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
        let out = self.exec_plugin_limited(&all, stdin, nofile);
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
        (
            out.status.code().unwrap_or(-1),
            doc,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs a command for people (`list`, `audit`, `doctor`) in the node: exit code and
    /// stdout + stderr.
    fn cli(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.node, common::BIN])
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
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

/// The store refuses a `dataDir` or pool directory it cannot trust — a symlink, owned by
/// someone else, or writable by group or others — with code 103, the path and the fix, and
/// writes nothing, neither there nor through the link.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn untrusted_store_directories_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new();
    let store = s.dir.join("store");
    let chmod = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    let bytes = |c: &Value| serde_json::to_vec(c).unwrap();
    // (what, prepare, the path the message must name, a word of the fix)
    type Prepare<'a> = Box<dyn Fn() + 'a>;
    let real = s.dir.join("real");
    let link = s.dir.join("link");
    let cases: Vec<(&str, Prepare, std::path::PathBuf, &str)> = vec![
        (
            "world-writable dataDir",
            Box::new(|| {
                std::fs::create_dir_all(&store).unwrap();
                chmod(&store, 0o777);
            }),
            store.clone(),
            "chmod",
        ),
        (
            "group-writable dataDir",
            Box::new(|| {
                std::fs::create_dir_all(&store).unwrap();
                chmod(&store, 0o770);
            }),
            store.clone(),
            "chmod",
        ),
        (
            "dataDir owned by another user",
            Box::new(|| {
                std::fs::create_dir_all(&store).unwrap();
                chmod(&store, 0o755);
                std::os::unix::fs::chown(&store, Some(65534), None).unwrap();
            }),
            store.clone(),
            "chown",
        ),
        (
            "world-writable pool directory",
            Box::new(|| {
                let pool = store.join("10.210.0.0-24");
                std::fs::create_dir_all(&pool).unwrap();
                chmod(&store, 0o700);
                chmod(&pool, 0o777);
            }),
            store.join("10.210.0.0-24"),
            "chmod",
        ),
        (
            "symlinked dataDir",
            Box::new(|| {
                std::fs::create_dir_all(&real).unwrap();
                chmod(&real, 0o700);
                std::os::unix::fs::symlink(&real, &link).unwrap();
            }),
            link.clone(),
            "symbolic link",
        ),
    ];
    for (what, prepare, path, fix) in cases {
        let _ = std::fs::remove_dir_all(&store);
        let _ = std::fs::remove_dir_all(&real);
        let _ = std::fs::remove_file(&link);
        prepare();
        let before = s.node_state();
        let mut conf = s.config();
        conf["ipam"]["dataDir"] = json!(if what.starts_with("symlinked") {
            &link
        } else {
            &store
        });
        let (rc, doc) = s.run(&[], &bytes(&conf));
        assert_eq!(rc, 1, "{what}: {doc}");
        assert_eq!(doc["code"].as_u64(), Some(103), "{what}: {doc}");
        let msg = doc["msg"].as_str().unwrap_or_default();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains(fix),
            "{what}: message {msg:?} should name {} and say {fix:?}",
            path.display()
        );
        assert_eq!(s.node_state(), before, "{what} changed the node");
        assert_eq!(
            std::fs::read_dir(&real).map(|d| d.count()).unwrap_or(0),
            0,
            "{what}: something was written through the link"
        );
    }
    // A directory the store creates itself is private.
    let _ = std::fs::remove_dir_all(&store);
    let (rc, doc) = s.run(&[], &bytes(&s.config()));
    assert_eq!(rc, 0, "ADD into a fresh dataDir: {doc}");
    for d in [store.clone(), store.join("10.210.0.0-24")] {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} mode", d.display());
    }
    let (rc, _) = s.run(&[("CNI_COMMAND", "DEL")], &bytes(&s.config()));
    assert_eq!(rc, 0);
}

/// A record file that does not parse is shown by `list`, `audit` and `doctor` as unreadable,
/// not skipped; and ADD never hands out its address.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn unreadable_records_are_shown_not_skipped() {
    let s = Scratch::new();
    let mut conf = s.config();
    conf["ipam"]["rangeEnd"] = json!("10.210.0.2");
    let bytes = serde_json::to_vec(&conf).unwrap();
    let pool = s.dir.join("store/10.210.0.0-24");
    std::fs::create_dir_all(&pool).unwrap();
    std::fs::write(pool.join("10.210.0.1"), b"{\"ip\": \"10.210.0").unwrap();
    let (rc, doc) = s.run(&[], &bytes);
    assert_eq!(rc, 0, "{doc}");
    assert_eq!(
        doc["ips"][0]["address"], "10.210.0.2/32",
        "the unreadable record's address was handed out"
    );
    let data_dir = s.dir.join("store").display().to_string();
    for args in [
        vec!["list", "--data-dir", &data_dir],
        vec!["audit", "--data-dir", &data_dir],
        vec!["doctor", "--all", "--data-dir", &data_dir],
    ] {
        let (rc, out) = s.cli(&args);
        assert_ne!(rc, 0, "{args:?} exits 0 with an unreadable record: {out}");
        assert!(
            out.lines()
                .any(|l| l.contains("10.210.0.1") && l.contains("unreadable")),
            "{args:?} does not show the unreadable record:\n{out}"
        );
    }
    let (rc, _) = s.run(&[("CNI_COMMAND", "DEL")], &bytes);
    assert_eq!(rc, 0);
}

/// A live pod whose record turned unreadable: audit says its veth and route are unexplained
/// because of that record, and gives no command that would delete them; GC leaves them alone.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn unreadable_record_of_a_live_pod_is_not_called_a_leak() {
    let s = Scratch::new();
    let bytes = serde_json::to_vec(&s.config()).unwrap();
    let (rc, doc) = s.run(&[], &bytes);
    assert_eq!(rc, 0, "{doc}");
    let veth = doc["interfaces"][0]["name"].as_str().unwrap().to_string();
    let record = s.dir.join("store/10.210.0.0-24/10.210.0.1");
    std::fs::write(&record, b"{\"ip\": \"10.210.0").unwrap();
    let data_dir = s.dir.join("store").display().to_string();
    let (rc, out) = s.cli(&["audit", "--data-dir", &data_dir]);
    assert_ne!(rc, 0, "audit vouches for an unreadable record: {out}");
    for l in out.lines().filter(|l| l.contains(&veth)) {
        assert!(
            !l.contains("ip link del") && !l.contains("ip route del"),
            "audit advises deleting a live pod's interface: {l}"
        );
    }
    let record_s = record.display().to_string();
    assert!(
        out.lines().any(|l| l.starts_with("UNEXPLAINED host veth")
            && l.contains(&veth)
            && l.contains(&record_s)),
        "audit does not tie the veth to the unreadable record:\n{out}"
    );
    // GC with no attachment listed must not take the veth an unreadable record may explain.
    let mut gc = s.config();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    let (rc, doc) = s.run(&[("CNI_COMMAND", "GC")], &serde_json::to_vec(&gc).unwrap());
    assert_eq!(rc, 0, "{doc}");
    let links = common::run_ok("ip", &["-n", &s.node, "-o", "link", "show"]);
    assert!(links.contains(&veth), "GC deleted {veth}: {links}");
    std::fs::remove_file(&record).unwrap();
    let (rc, _) = s.run(&[("CNI_COMMAND", "DEL")], &bytes);
    assert_eq!(rc, 0);
}

/// The log file is not opened through a symlink, and the ADD still succeeds.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn log_file_symlink_is_not_followed() {
    let s = Scratch::new();
    let victim = s.dir.join("victim");
    std::fs::write(&victim, b"keep\n").unwrap();
    let link = s.dir.join("cni.log");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let mut conf = s.config();
    conf["logFile"] = json!(link);
    let bytes = serde_json::to_vec(&conf).unwrap();
    let (rc, doc, stderr) = s.run_full(&[], &bytes, None);
    assert_eq!(rc, 0, "a log problem must not fail the pod: {doc}");
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"keep\n",
        "logged through the link"
    );
    assert!(
        stderr.contains(&link.display().to_string()),
        "stderr should say the log file was refused: {stderr:?}"
    );
    let (rc, _) = s.run(&[("CNI_COMMAND", "DEL")], &bytes);
    assert_eq!(rc, 0);
}

/// Failures before the config (and so the log file) is known still leave one line on stderr,
/// while stdout carries exactly the error document.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn errors_before_the_config_reach_stderr() {
    let s = Scratch::new();
    let good = serde_json::to_vec(&s.config()).unwrap();
    let mut bad_conf = s.config();
    bad_conf["ipam"]["subnet"] = json!(42);
    let bad_conf = serde_json::to_vec(&bad_conf).unwrap();
    // (what, env overrides, stdin, text the stderr line must contain)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "bad JSON",
            vec![],
            b"{\"cniVersion\":".to_vec(),
            "not valid JSON",
        ),
        ("empty stdin", vec![], vec![], "no network config"),
        (
            "bad CNI_COMMAND",
            vec![("CNI_COMMAND", "EXPLODE")],
            good,
            "CNI_COMMAND",
        ),
        ("bad config", vec![], bad_conf, "ipam.subnet"),
    ];
    for (what, env, stdin, needle) in cases {
        let (rc, doc, stderr) = s.run_full(&env, &stdin, None);
        assert_eq!(rc, 1, "{what}: {doc}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(
            lines.len() == 1 && lines[0].contains(needle),
            "{what}: stderr should be one line naming {needle:?}: {stderr:?}"
        );
    }
}

/// An ADD that fails after its address was taken gives it back, whatever step failed: here
/// the plugin runs out of file descriptors at every possible point in turn.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn failed_add_gives_the_address_back() {
    let s = Scratch::new();
    let bytes = serde_json::to_vec(&s.config()).unwrap();
    let before = s.node_state();
    let mut failures = 0;
    for n in 4..48 {
        let (rc, doc, stderr) = s.run_full(&[], &bytes, Some(n));
        if rc == 0 {
            let (rc, _) = s.run(&[("CNI_COMMAND", "DEL")], &bytes);
            assert_eq!(rc, 0, "DEL after the ADD with {n} descriptors");
        } else {
            failures += 1;
            assert_eq!(
                s.node_state(),
                before,
                "ADD failed with {n} descriptors ({doc}; stderr {stderr}) and left this behind"
            );
        }
    }
    assert!(failures > 0, "no descriptor limit made ADD fail");
}
