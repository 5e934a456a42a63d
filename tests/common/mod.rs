//! What every integration test builds its world from: the binary under test, command helpers,
//! a scratch directory, and a `World` of network namespaces (a node, optionally an outside
//! network behind an uplink, and pod namespaces), all removed when the guard drops, also on
//! panic. Nothing here touches the host's own network namespace.
//!
//! Tests that need root (namespaces, iptables) carry `#[ignore = "needs root: ..."]`: a plain
//! `cargo test` reports them as ignored instead of passing them untested, and scripts/test.sh
//! runs them with `-- --include-ignored`.

// Each test crate compiles this module for itself and uses only part of it.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The binary under test: `ROUTED_CNI_BIN` when set (scripts/test.sh points it at the release
/// build), else the one cargo built for this test run.
pub fn bin() -> PathBuf {
    std::env::var_os("ROUTED_CNI_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_routed-cni").into())
}

/// The cargo-built binary, for the tests that name it in a `&str` argument list.
pub const BIN: &str = env!("CARGO_BIN_EXE_routed-cni");

pub const NODE_IP: &str = "198.51.100.1";
pub const OUTSIDE_IP: &str = "198.51.100.2";
pub const NODE_IP6: &str = "2001:db8:100::1";
pub const OUTSIDE_IP6: &str = "2001:db8:100::2";

/// A search path for the tools the plugin runs (iptables), for commands run with a clean
/// environment.
pub const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name no other test of this process (nor another process) uses: `<kind>-<pid>-<n>`.
pub fn unique(kind: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{kind}-{}-{n}", std::process::id())
}

pub fn run(prog: &str, args: &[&str]) -> Output {
    Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"))
}

/// Runs a command that must succeed and returns its stdout.
pub fn run_ok(prog: &str, args: &[&str]) -> String {
    let out = run(prog, args);
    assert!(
        out.status.success(),
        "{prog} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn ip(args: &[&str]) -> String {
    run_ok("ip", args)
}

/// A fresh directory under the temp dir, removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(name);
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Network namespaces owned by this guard, named `<prefix>-…`, and a scratch directory.
pub struct World {
    /// Unique per world; every namespace name starts with it.
    pub prefix: String,
    /// The node's namespace: where the plugin runs.
    pub node: String,
    /// The outside network's namespace, behind the node's uplink (`World::new`).
    pub outside: Option<String>,
    /// Every namespace made, in order; deleted in reverse on drop.
    pub namespaces: Vec<String>,
    pub dir: PathBuf,
    tmp: TempDir,
}

impl World {
    /// A node namespace and a scratch directory; nothing else.
    pub fn bare(kind: &str, test: &str) -> World {
        let prefix = format!("{}-{test}", unique(kind));
        let tmp = TempDir::new(&prefix);
        let mut w = World {
            node: format!("{prefix}-node"),
            outside: None,
            prefix,
            namespaces: Vec::new(),
            dir: tmp.path.clone(),
            tmp,
        };
        let node = w.node.clone();
        w.netns_add(&node);
        w
    }

    /// A node with an uplink (198.51.100.1/24, default route via .2) to an outside namespace
    /// (198.51.100.2/24) that has no route back to any pod subnet: a pod reaches it only when
    /// it is masqueraded.
    pub fn new(kind: &str, test: &str) -> World {
        let mut w = World::bare(kind, test);
        let (node, outside) = (w.node.clone(), format!("{}-out", w.prefix));
        w.netns_add(&outside);
        ip(&[
            "-n", &node, "link", "add", "uplink", "type", "veth", "peer", "name", "wan", "netns",
            &outside,
        ]);
        ip(&[
            "-n",
            &node,
            "addr",
            "add",
            &format!("{NODE_IP}/24"),
            "dev",
            "uplink",
        ]);
        ip(&["-n", &node, "link", "set", "uplink", "up"]);
        ip(&["-n", &node, "route", "add", "default", "via", OUTSIDE_IP]);
        ip(&[
            "-n",
            &outside,
            "addr",
            "add",
            &format!("{OUTSIDE_IP}/24"),
            "dev",
            "wan",
        ]);
        ip(&["-n", &outside, "link", "set", "wan", "up"]);
        w.outside = Some(outside);
        w
    }

    /// Adds IPv6 to `World::new`'s uplink (nodad: no DAD wait), 2001:db8:100::1/64 on the node
    /// and ::2 outside, and a node IPv6 default route; the outside has no route back either.
    pub fn with_ipv6(self) -> World {
        let outside = self.outside.clone().expect("World::new has an outside");
        for (ns, dev, addr) in [
            (&self.node, "uplink", NODE_IP6),
            (&outside, "wan", OUTSIDE_IP6),
        ] {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/64"),
                "dev",
                dev,
                "nodad",
            ]);
        }
        ip(&[
            "-n",
            &self.node,
            "-6",
            "route",
            "add",
            "default",
            "via",
            OUTSIDE_IP6,
            "dev",
            "uplink",
        ]);
        self
    }

    pub fn netns_add(&mut self, name: &str) {
        ip(&["netns", "add", name]);
        self.namespaces.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"]);
    }

    /// A new empty namespace `<prefix>-<name>`, for a pod; returns its name.
    pub fn pod_ns(&mut self, name: &str) -> String {
        let ns = format!("{}-{name}", self.prefix);
        self.netns_add(&ns);
        ns
    }

    /// The plugin run inside the node namespace with exactly `env` (plus PATH) and `stdin`.
    pub fn exec_plugin(&self, env: &[(&str, &str)], stdin: &[u8]) -> Output {
        self.exec_plugin_limited(env, stdin, None)
    }

    /// `exec_plugin` with the plugin's open files capped at `nofile` (RLIMIT_NOFILE, by
    /// util-linux's `prlimit`), to make it fail part-way as a starved node would.
    pub fn exec_plugin_limited(
        &self,
        env: &[(&str, &str)],
        stdin: &[u8],
        nofile: Option<u32>,
    ) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node]);
        if let Some(n) = nofile {
            cmd.args(["prlimit", &format!("--nofile={n}:{n}"), "--"]);
        }
        let mut child = cmd
            .arg(BIN)
            .env_clear()
            .env("PATH", PATH)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn plugin");
        let mut pipe = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        // The plugin may fail, or stop reading oversized input, before it has read it all:
        // write from a thread and ignore a broken pipe.
        let writer = std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
        let out = child.wait_with_output().expect("wait for plugin");
        let _ = writer.join();
        out
    }

    /// Runs a shell command in the node's namespace, as an operator on the node would.
    pub fn on_node(&self, cmd: &str) {
        let out = run("ip", &["netns", "exec", &self.node, "sh", "-c", cmd]);
        assert!(
            out.status.success(),
            "`{cmd}` failed on the node: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(log) = fs::read_to_string(self.dir.join("cni.log")) {
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("--- {} cni.log (last lines):", self.prefix);
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        for ns in self.namespaces.iter().rev() {
            let _ = run("ip", &["netns", "del", ns]);
        }
        // self.tmp removes the directory.
    }
}
