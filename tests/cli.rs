//! The commands for people as a person meets them: the real binary with real argv and
//! environment. Every subcommand answers --help (exit 0, usage on stdout); an unknown flag is
//! named and exits 2; the ROUTED_CNI_* / NODE_NAME fallbacks reach the command, an empty one
//! counts as unset, and a flag beats its variable; CNI mode never parses argv. No root needed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

mod common;

use common::{bin, unique, TempDir};

/// Every variable the cli layer reads, so the caller's environment cannot leak into a test.
const OURS: [&str; 19] = [
    "CNI_COMMAND",
    "NODE_NAME",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "ROUTED_CNI_POD_SUBNET",
    "ROUTED_CNI_BIN_DIR",
    "ROUTED_CNI_CONF_DIR",
    "ROUTED_CNI_CONF_NAME",
    "ROUTED_CNI_NETWORK_NAME",
    "ROUTED_CNI_CLUSTER_CIDR",
    "ROUTED_CNI_MTU",
    "ROUTED_CNI_LOG_FILE",
    "ROUTED_CNI_API_SERVER",
    "ROUTED_CNI_TOKEN_FILE",
    "ROUTED_CNI_CA_FILE",
    "ROUTED_CNI_RESYNC_SECONDS",
    "ROUTED_CNI_STALE_SECONDS",
    "ROUTED_CNI_HEALTH_ADDR",
    "ROUTED_CNI_NO_PORTMAP",
];

fn cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin());
    for k in OURS {
        cmd.env_remove(k);
    }
    // install must never write the machine's own /etc: these directories do not exist, so
    // install skips its .link file and NetworkManager drop-in (a test's `env` may override).
    for (k, dir) in [
        ("ROUTED_CNI_SYSTEMD_NETWORK_DIR", "systemd/network"),
        (
            "ROUTED_CNI_NETWORKMANAGER_CONF_DIR",
            "NetworkManager/conf.d",
        ),
    ] {
        cmd.env(k, format!("/nonexistent/routed-cni-cli-test/{dir}"));
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run routed-cni")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn every_command_answers_help() {
    for sub in [
        "list",
        "doctor",
        "install",
        "uninstall",
        "audit",
        "agent",
        "policy",
        "version",
    ] {
        for flag in ["--help", "-h"] {
            let out = cli(&[sub, flag], &[]);
            let stdout = text(&out.stdout);
            assert_eq!(out.status.code(), Some(0), "{sub} {flag}: {out:?}");
            assert!(
                stdout.contains(&format!("Usage: routed-cni {sub}")),
                "{sub} {flag}: {stdout}"
            );
            assert!(out.stderr.is_empty(), "{sub} {flag}: {out:?}");
        }
    }
    // The top level, and `help COMMAND`, too.
    for args in [&["--help"][..], &[], &["help", "doctor"]] {
        let out = cli(args, &[]);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        assert!(text(&out.stdout).contains("Usage: routed-cni"), "{out:?}");
    }
    let help = text(&cli(&["--help"], &[]).stdout);
    for sub in [
        "list",
        "doctor",
        "install",
        "uninstall",
        "audit",
        "agent",
        "policy",
        "version",
    ] {
        assert!(help.contains(sub), "top-level help lacks {sub}: {help}");
    }
    // The environment fallbacks are in the help, generated from the declarations.
    let help = text(&cli(&["install", "--help"], &[]).stdout);
    assert!(help.contains("ROUTED_CNI_POD_SUBNET"), "{help}");
    let help = text(&cli(&["agent", "--help"], &[]).stdout);
    assert!(
        help.contains("NODE_NAME") && help.contains("ROUTED_CNI_BIN_DIR"),
        "{help}"
    );
}

#[test]
fn unknown_flags_and_commands_exit_2_naming_them() {
    for sub in [
        "list",
        "doctor",
        "install",
        "uninstall",
        "audit",
        "agent",
        "policy",
        "version",
    ] {
        let out = cli(&[sub, "--frobnicate"], &[]);
        assert_eq!(out.status.code(), Some(2), "{sub}: {out:?}");
        let err = text(&out.stderr);
        assert!(err.contains("--frobnicate"), "{sub}: {err}");
        assert!(
            err.contains(&format!("Usage: routed-cni {sub}")),
            "{sub}: {err}"
        );
        assert!(out.stdout.is_empty(), "{sub}: {out:?}");
    }
    let out = cli(&["frobnicate"], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("frobnicate"), "{out:?}");
    // A near miss gets a suggestion.
    let out = cli(&["list", "--jsn"], &[]);
    assert!(text(&out.stderr).contains("--json"), "{out:?}");
    // Two selectors: a usage error too, with doctor's documented code for it.
    let out = cli(&["doctor", "--pod", "a/b", "--all"], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn version_both_ways() {
    for args in [&["version"][..], &["--version"]] {
        let out = cli(args, &[]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let v = text(&out.stdout);
        assert!(
            v.starts_with("routed-cni ") && v.contains("(CNI ") && v.contains("1.1.0"),
            "{v}"
        );
    }
}

#[test]
fn cni_mode_never_parses_argv() {
    // A runtime sets CNI_COMMAND; whatever argv holds, the plugin speaks CNI.
    let out = cli(&["--frobnicate", "doctor"], &[("CNI_COMMAND", "VERSION")]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("CNI JSON");
    assert!(doc["supportedVersions"].is_array(), "{doc}");
}

fn conflist(dir: &Path) -> serde_json::Value {
    let path = dir.join("net.d/10-routed-cni.conflist");
    serde_json::from_slice(&fs::read(&path).unwrap()).unwrap()
}

#[test]
fn install_reads_its_environment() {
    let tmp = TempDir::new(&unique("rcni-cli-env"));
    let (bin_dir, conf_dir) = (tmp.path.join("bin"), tmp.path.join("net.d"));
    let (bin_dir, conf_dir) = (bin_dir.to_str().unwrap(), conf_dir.to_str().unwrap());
    // Everything from the environment, as the DaemonSet passes it; MTU set but empty means
    // "the default", as it did before the cli layer.
    let env = [
        ("ROUTED_CNI_POD_SUBNET", "10.250.1.0/24"),
        ("ROUTED_CNI_CLUSTER_CIDR", "10.250.0.0/16"),
        ("ROUTED_CNI_BIN_DIR", bin_dir),
        ("ROUTED_CNI_CONF_DIR", conf_dir),
        ("ROUTED_CNI_NETWORK_NAME", "from-env"),
        ("ROUTED_CNI_MTU", ""),
    ];
    let out = cli(&["install"], &env);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(Path::new(bin_dir).join("routed-cni").exists());
    assert!(
        text(&out.stdout).contains(
            "/nonexistent/routed-cni-cli-test/systemd/network/10-routed-cni.link skipped"
        ),
        "{out:?}"
    );
    let c = conflist(&tmp.path);
    assert_eq!(c["name"], "from-env");
    assert_eq!(c["plugins"][0]["ipam"]["subnet"], "10.250.1.0/24");
    assert_eq!(
        c["plugins"][0]["nonMasqueradeCIDRs"],
        serde_json::json!(["10.250.0.0/16"])
    );
    assert!(c["plugins"][0].get("mtu").is_none(), "{c}");
    // A flag beats its variable.
    let out = cli(
        &["install", "--pod-subnet", "10.250.2.0/24", "--mtu", "1400"],
        &env,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let c = conflist(&tmp.path);
    assert_eq!(c["plugins"][0]["ipam"]["subnet"], "10.250.2.0/24");
    assert_eq!(c["plugins"][0]["mtu"], 1400);
    // A bad value from the environment is a usage error naming the flag.
    let mut bad = env;
    bad[5] = ("ROUTED_CNI_MTU", "lots");
    let out = cli(&["install"], &bad);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("--mtu"), "{out:?}");
    // No subnet at all: the message names the flag and the variable.
    let out = cli(
        &["install", "--bin-dir", bin_dir, "--conf-dir", conf_dir],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains("ROUTED_CNI_POD_SUBNET"),
        "{out:?}"
    );
}

#[test]
fn install_chains_portmap_unless_told_not_to_and_warns_when_it_is_missing() {
    let tmp = TempDir::new(&unique("rcni-cli-portmap"));
    let bin_dir = tmp.path.join("bin");
    let conf_dir = tmp.path.join("net.d");
    let env = [
        ("ROUTED_CNI_POD_SUBNET", "10.250.1.0/24"),
        ("ROUTED_CNI_BIN_DIR", bin_dir.to_str().unwrap()),
        ("ROUTED_CNI_CONF_DIR", conf_dir.to_str().unwrap()),
    ];
    let types = || -> Vec<String> {
        conflist(&tmp.path)["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap().to_string())
            .collect()
    };
    // Default: portmap chained; the bin dir has none, so install says so (exit 0 all the same:
    // the plugin may arrive later, and the conflist is right for a node that has it).
    let out = cli(&["install"], &env);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(types(), ["routed-cni", "portmap"]);
    let err = text(&out.stderr);
    assert!(
        err.contains("warning") && err.contains("\"portmap\"") && err.contains("--no-portmap"),
        "{out:?}"
    );
    assert!(
        !text(&out.stdout).contains("warning"),
        "warnings go to stderr: {out:?}"
    );
    // With portmap in the bin dir: no warning.
    fs::write(bin_dir.join("portmap"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(bin_dir.join("portmap"), fs::Permissions::from_mode(0o755)).unwrap();
    let out = cli(&["install"], &env);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!text(&out.stderr).contains("warning"), "{out:?}");
    fs::remove_file(bin_dir.join("portmap")).unwrap();
    // The flag, and the variable (any of clap's boolish words), drop it: no warning either.
    for (args, var) in [
        (&["install", "--no-portmap"][..], None),
        (&["install"][..], Some("true")),
        (&["install"][..], Some("1")),
    ] {
        let mut e = env.to_vec();
        e.extend(var.map(|v| ("ROUTED_CNI_NO_PORTMAP", v)));
        let out = cli(args, &e);
        assert_eq!(out.status.code(), Some(0), "{args:?} {var:?}: {out:?}");
        assert_eq!(types(), ["routed-cni"], "{args:?} {var:?}");
        assert!(!text(&out.stderr).contains("warning"), "{out:?}");
    }
    let mut e = env.to_vec();
    e.push(("ROUTED_CNI_NO_PORTMAP", "false"));
    assert_eq!(cli(&["install"], &e).status.code(), Some(0));
    assert_eq!(types(), ["routed-cni", "portmap"]);
    // Not a yes or a no: a usage error naming the flag, not a silent guess.
    e.pop();
    e.push(("ROUTED_CNI_NO_PORTMAP", "maybe"));
    let out = cli(&["install"], &e);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("--no-portmap"), "{out:?}");
}

#[test]
fn agent_asks_for_node_name_and_reads_it_from_the_environment() {
    let out = cli(&["agent"], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("NODE_NAME"), "{out:?}");
    // With NODE_NAME it gets past that, to the API server it cannot find outside a pod.
    let out = cli(&["agent"], &[("NODE_NAME", "n1")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        !err.contains("NODE_NAME") && err.contains("KUBERNETES_SERVICE_HOST"),
        "{err}"
    );
    let out = cli(
        &["agent"],
        &[("NODE_NAME", "n1"), ("ROUTED_CNI_API_SERVER", "http://x")],
    );
    assert!(text(&out.stderr).contains("https"), "{out:?}");
    // The manifest ships ROUTED_CNI_API_SERVER="" as a placeholder: empty is unset, so the
    // agent falls back to the kubernetes Service and gets as far as the (missing) CA file.
    let out = cli(
        &[
            "agent",
            "--ca-file",
            "/nonexistent/ca.crt",
            "--health-addr",
            "127.0.0.1:0",
        ],
        &[
            ("NODE_NAME", "n1"),
            ("ROUTED_CNI_API_SERVER", ""),
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        err.contains("/nonexistent/ca.crt") && !err.contains("https://"),
        "{err}"
    );
}

/// A loopback port nothing listens on (bound, then let go).
fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    addr
}

#[test]
fn policy_without_an_agent_says_where_it_asked_and_exits_3() {
    let addr = closed_port();
    let out = cli(&["policy", "--pod", "x/a", "--agent-addr", &addr], &[]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains(&addr) && err.contains("--network-policy") && out.stdout.is_empty(),
        "{out:?}"
    );
    // --json: the same on stdout, as JSON.
    let out = cli(
        &["policy", "--pod", "x/a", "--agent-addr", &addr, "--json"],
        &[],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(doc["agentUnreachable"], true, "{doc}");
    assert!(doc["error"].as_str().unwrap().contains(&addr), "{doc}");
    // Usage: no pod, a pod without its namespace, an address that is not IP:PORT.
    for args in [
        &["policy"][..],
        &["policy", "--pod", "a"],
        &["policy", "--pod", "x/a", "--agent-addr", "localhost"],
    ] {
        let out = cli(args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
    }
}

#[test]
fn doctor_keeps_its_exit_codes() {
    let tmp = TempDir::new(&unique("rcni-cli-doctor"));
    let store = tmp.path.to_str().unwrap();
    // No such pod: 3, before it needs root or netlink.
    let out = cli(
        &["doctor", "--data-dir", store, "--pod", "default/nope"],
        &[],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let out = cli(&["doctor", "--data-dir", store, "--to", "example.com"], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("example.com"), "{out:?}");
}

#[test]
fn doctor_fails_the_node_when_a_chained_plugin_is_missing() {
    let tmp = TempDir::new(&unique("rcni-cli-doctor-plugins"));
    let store = tmp.path.join("store");
    fs::create_dir_all(&store).unwrap();
    let (bin_dir, conf_dir) = (tmp.path.join("bin"), tmp.path.join("net.d"));
    let env = [
        ("ROUTED_CNI_POD_SUBNET", "10.250.1.0/24"),
        ("ROUTED_CNI_BIN_DIR", bin_dir.to_str().unwrap()),
        ("ROUTED_CNI_CONF_DIR", conf_dir.to_str().unwrap()),
    ];
    assert_eq!(cli(&["install"], &env).status.code(), Some(0));
    // The same variables point doctor at what install wrote (as in the agent's container).
    let doctor = || {
        let out = cli(
            &["doctor", "--data-dir", store.to_str().unwrap(), "--json"],
            &env[1..],
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no JSON ({e}): {out:?}"));
        (out.status.code(), doc["node"][0].clone())
    };
    // No pod at all, and still broken: no pod can start on this node.
    let (code, step) = doctor();
    assert_eq!(code, Some(1), "{step}");
    assert_eq!(
        (&step["id"], &step["status"]),
        (&"cni-plugins".into(), &"fail".into())
    );
    assert_eq!(step["details"]["missing"][0]["plugin"], "portmap", "{step}");
    fs::write(bin_dir.join("portmap"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(bin_dir.join("portmap"), fs::Permissions::from_mode(0o755)).unwrap();
    let (code, step) = doctor();
    assert_eq!((code, &step["status"]), (Some(0), &"ok".into()), "{step}");
    // The flags name other dirs; without a conflist the step is skipped, not failed.
    let out = cli(
        &[
            "doctor",
            "--data-dir",
            store.to_str().unwrap(),
            "--conf-dir",
            tmp.path.join("absent").to_str().unwrap(),
        ],
        &env[1..],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stdout).contains("no conflist at"), "{out:?}");
}

#[test]
fn list_reads_the_store_it_is_given() {
    let tmp = TempDir::new(&unique("rcni-cli-list"));
    let store = tmp.path.to_str().unwrap();
    let out = cli(&["list", "--data-dir", store, "--json"], &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(text(&out.stdout).trim(), "[]");
    assert!(!text(&out.stderr).contains("error"), "{out:?}");
}
