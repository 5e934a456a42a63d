//! The firewall module against the real iptables programs, each test in a network namespace
//! of its own (the host's tables are never touched). Every iptables program the module runs
//! goes through a logging shim put first in PATH, so the tests can count the runs: installing
//! a pool's rules is one listing and one `iptables-restore` per backend, whatever was there
//! before; removing them is one blind `iptables-restore` per backend the hint names (a listing
//! and a restore more where it fails); the steady-state probe is one run.
//!
//! The tests need root: without it `cargo test` reports them as ignored.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use nix::sched::{setns, CloneFlags};
use routed_cni::cni::error::Code;
use routed_cni::config::IptablesBackend;
use routed_cni::firewall::forward::Forward;
use routed_cni::firewall::{Masquerade, PoolRules};

mod common;

/// Every program the module may run, shimmed; `iptables-nft-save` etc. for the tests' own
/// look are run by absolute path, so they are not counted.
const SHIMMED: [&str; 16] = [
    "iptables",
    "ip6tables",
    "iptables-restore",
    "ip6tables-restore",
    "iptables-nft",
    "ip6tables-nft",
    "iptables-nft-restore",
    "ip6tables-nft-restore",
    "iptables-nft-save",
    "ip6tables-nft-save",
    "iptables-legacy",
    "ip6tables-legacy",
    "iptables-legacy-restore",
    "ip6tables-legacy-restore",
    "iptables-legacy-save",
    "ip6tables-legacy-save",
];

/// Puts the logging shims first in PATH (once per test binary) and returns their log dir.
fn shim_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Under target/tmp, rewritten each run: nothing is left in the system's temp dir.
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("firewall-shims");
        fs::create_dir_all(&dir).unwrap();
        for prog in SHIMMED {
            let real = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .map(|d| PathBuf::from(d).join(prog))
                .find(|p| p.exists())
                .unwrap_or_else(|| panic!("{prog} is not installed (apt-get install iptables)"));
            let path = dir.join(prog);
            // Refuses to run outside a named namespace: a test bug must not reach the host.
            fs::write(
                &path,
                format!(
                    "#!/bin/sh\nns=$(ip netns identify)\n\
                     [ -n \"$ns\" ] || {{ echo 'shim: not in a test namespace' >&2; exit 99; }}\n\
                     echo \"{prog} $*\" >>\"{}/$ns.log\"\nexec {} \"$@\"\n",
                    dir.display(),
                    real.display()
                ),
            )
            .unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let path = std::env::var("PATH").unwrap_or_default();
        std::env::set_var("PATH", format!("{}:{path}", dir.display()));
        dir
    })
}

/// A network namespace of the test's own, removed on drop.
struct Ns(String);

impl Ns {
    fn new() -> Ns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "rcnifw{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {name}");
        Ns(name)
    }

    /// Runs `f` on a thread inside the namespace: the programs it starts run there too.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = fs::File::open(format!("/run/netns/{}", self.0)).unwrap();
                setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .unwrap()
        })
    }

    /// The programs run in this namespace since the last call, one line each.
    fn runs(&self) -> Vec<String> {
        let log = shim_dir().join(format!("{}.log", self.0));
        let text = fs::read_to_string(&log).unwrap_or_default();
        let _ = fs::remove_file(&log);
        text.lines().map(str::to_string).collect()
    }

    /// `<save> -t nat` lines that are ours (`save`: e.g. `iptables-nft-save`).
    fn ours(&self, save: &str) -> Vec<String> {
        self.ours_in(save, "nat")
    }

    /// `<save> -t <table>` lines that are ours, run by absolute path (not counted).
    fn ours_in(&self, save: &str, table: &str) -> Vec<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .arg(PathBuf::from("/usr/sbin").join(save))
            .args(["-t", table])
            .output()
            .unwrap();
        assert!(out.status.success(), "{save}: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("RCNI") || l.contains("routed-cni"))
            .map(str::to_string)
            .collect()
    }

    fn sh(&self, args: &[&str]) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        let _ = fs::remove_file(shim_dir().join(format!("{}.log", self.0)));
    }
}

fn pool(subnet: &str, exceptions: &[&str]) -> Masquerade {
    Masquerade {
        subnet: subnet.parse().unwrap(),
        non_masquerade: exceptions.iter().map(|c| c.parse().unwrap()).collect(),
    }
}

fn rules(m: &Masquerade) -> PoolRules {
    PoolRules {
        forward: Forward { subnet: m.subnet },
        nat: m.clone(),
        masquerade: true,
        setting: IptablesBackend::Auto,
        // Under target/tmp: the tests leave nothing in the node's /run.
        hint_dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("firewall-hints"),
    }
}

/// What `iptables-save -t nat` prints for the pool's masquerade, in its order.
fn saved(m: &Masquerade) -> Vec<String> {
    let mut lines = vec![format!(":{} - [0:0]", m.chain())];
    lines.push(format!("-A POSTROUTING {}", m.jump_rule()));
    lines.extend(
        m.chain_rules()
            .iter()
            .map(|r| format!("-A {} {r}", m.chain())),
    );
    lines
}

/// What `iptables-save -t filter` prints for the pool's forward accepts.
fn saved_forward(f: &Forward) -> Vec<String> {
    let c = f.chain();
    let mut lines = vec![
        format!(":{c} - [0:0]"),
        format!("-A FORWARD {}", f.jump().spec),
    ];
    lines.extend(f.rules().iter().map(|r| format!("-A {c} {}", r.spec)));
    lines
}

fn restores(runs: &[String]) -> usize {
    runs.iter().filter(|r| r.contains("-restore")).count()
}

fn probe(ns: &Ns, p: &PoolRules) -> bool {
    ns.run(|| p.probe().unwrap().wait().unwrap())
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn install_is_one_listing_and_one_restore_and_uninstall_leaves_nothing() {
    shim_dir();
    let ns = Ns::new();
    for (m, save, prog) in [
        (
            pool("10.244.1.0/24", &["10.244.0.0/16"]),
            "iptables-nft-save",
            "iptables-nft",
        ),
        (
            pool("fd00:10:244:1::/64", &["fd00:10:244::/48"]),
            "ip6tables-nft-save",
            "ip6tables-nft",
        ),
    ] {
        let p = rules(&m);
        assert!(!probe(&ns, &p), "nothing installed yet");
        ns.runs();

        ns.run(|| p.install()).unwrap();
        let runs = ns.runs();
        // No legacy table in a fresh namespace: one save of nft, then forward and masquerade
        // in a single restore.
        assert_eq!(
            runs,
            [format!("{save} "), format!("{prog}-restore --noflush -w")],
            "{runs:#?}"
        );
        assert_eq!(ns.ours(save), saved(&m));
        assert_eq!(ns.ours_in(save, "filter"), saved_forward(&p.forward));
        // The steady state: one run that checks both jumps.
        assert!(probe(&ns, &p));
        assert_eq!(ns.runs().len(), 1);
        ns.run(|| p.check()).unwrap();
        ns.runs();

        // Installed already (a parallel ADD got there first): a listing, no change.
        ns.run(|| p.install()).unwrap();
        assert_eq!(restores(&ns.runs()), 0);

        // An admin flushes FORWARD only: the probe sees it, CHECK names it, install repairs
        // the filter table alone.
        ns.sh(&[prog, "-F", "FORWARD"]);
        assert!(!probe(&ns, &p));
        let err = ns.run(|| p.check()).unwrap_err();
        assert!(
            err.msg.contains("forward rule missing")
                && err.msg.contains(&format!("`{prog} -S FORWARD`")),
            "{err}"
        );
        ns.runs();
        ns.run(|| p.install()).unwrap();
        assert_eq!(restores(&ns.runs()), 1);
        assert!(probe(&ns, &p));
        // …and POSTROUTING only.
        ns.sh(&[prog, "-t", "nat", "-F", "POSTROUTING"]);
        assert!(!probe(&ns, &p));
        ns.run(|| p.install()).unwrap();
        ns.run(|| p.check()).unwrap();
        ns.runs();

        // The last pod: the hint says where the rules are, so one blind restore removes
        // them, no listing.
        ns.run(|| p.uninstall()).unwrap();
        let runs = ns.runs();
        assert_eq!(runs, [format!("{prog}-restore --noflush -w")], "{runs:#?}");
        assert_eq!(ns.ours(save), Vec::<String>::new());
        assert_eq!(ns.ours_in(save, "filter"), Vec::<String>::new());
        // Removing what is not there is fine (a retried DEL): the hint went with the rules,
        // so there is no blind restore; the listing finds nothing, and nothing is restored.
        ns.run(|| p.uninstall()).unwrap();
        let runs = ns.runs();
        assert_eq!(runs, [format!("{save} ")], "{runs:#?}");
        let err = ns.run(|| p.check()).unwrap_err();
        assert_eq!(err.code, Code::Nat);
        assert!(err.msg.contains("rule missing"), "{err}");
    }
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn install_replaces_an_older_config_of_the_pool() {
    shim_dir();
    let ns = Ns::new();
    let old = rules(&pool("10.244.1.0/24", &["10.244.0.0/16", "10.96.0.0/12"]));
    let new = rules(&pool("10.244.1.0/24", &["10.244.0.0/16"]));
    let other = rules(&pool("10.244.2.0/24", &["10.244.0.0/16"]));
    ns.run(|| old.install().and(other.install())).unwrap();
    ns.runs();

    ns.run(|| new.install()).unwrap();
    assert_eq!(restores(&ns.runs()), 1);
    let mut want = saved(&new.nat);
    want.extend(saved(&other.nat));
    want.sort();
    let mut have = ns.ours("iptables-nft-save");
    have.sort();
    assert_eq!(
        have, want,
        "old chain and jump gone, the other pool untouched"
    );

    // The current chain left without its jump, with a stray rule: install refills it.
    let mut delete = vec!["iptables", "-t", "nat", "-D", "POSTROUTING"];
    let jump = new.nat.jump();
    delete.extend(jump.args.iter().map(String::as_str));
    ns.sh(&delete);
    ns.sh(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        &new.nat.chain(),
        "-j",
        "ACCEPT",
    ]);
    ns.run(|| new.install()).unwrap();
    let mut have = ns.ours("iptables-nft-save");
    have.sort();
    assert_eq!(have, want);
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn a_failing_change_changes_nothing() {
    shim_dir();
    let ns = Ns::new();
    let old = rules(&pool("10.244.1.0/24", &["10.96.0.0/12"]));
    let new = rules(&pool("10.244.1.0/24", &["10.244.0.0/16"]));
    ns.run(|| old.install()).unwrap();
    // Someone else jumps to the old chain too, so it cannot be deleted: the install that
    // would replace it must fail whole, not leave the new chain and a second jump behind.
    ns.sh(&["iptables", "-t", "nat", "-N", "ADMIN"]);
    ns.sh(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "ADMIN",
        "-j",
        &old.nat.chain(),
    ]);
    let before = ns.ours("iptables-nft-save");
    let err = ns.run(|| new.install()).unwrap_err();
    assert_eq!(err.code, Code::Nat);
    assert!(
        err.msg.contains("nothing was changed") && err.msg.contains("iptables-nft -t nat -S"),
        "{err}"
    );
    assert_eq!(ns.ours("iptables-nft-save"), before);
}

/// Docker's filter layout on iptables-legacy: policy DROP, its chains, its MASQUERADE.
const DOCKER_LEGACY: &str = "*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
COMMIT
";

/// Loads Docker's legacy layout into the node, as `iptables-legacy-restore` would.
fn load_legacy(node: &str, rules: &str) {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", node, "/usr/sbin/iptables-legacy-restore"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "iptables-legacy-restore");
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn auto_finds_docker_on_legacy_and_installs_there() {
    shim_dir();
    let ns = Ns::new();
    load_legacy(&ns.0, DOCKER_LEGACY);
    let p = rules(&pool("10.244.1.0/24", &["10.244.0.0/16"]));
    ns.runs();
    ns.run(|| p.install()).unwrap();
    let runs = ns.runs();
    // One listing per backend present, one restore in the backend chosen.
    assert_eq!(
        runs,
        [
            "iptables-nft-save ",
            "iptables-legacy-save ",
            "iptables-legacy-restore --noflush -w"
        ],
        "{runs:#?}"
    );
    let fwd = ns.ours_in("iptables-legacy-save", "filter");
    assert_eq!(fwd, saved_forward(&p.forward));
    assert_eq!(ns.ours("iptables-legacy-save"), saved(&p.nat));
    assert_eq!(
        ns.ours_in("iptables-nft-save", "filter"),
        Vec::<String>::new()
    );
    // Our jump is first in FORWARD, ahead of Docker's.
    let out = common::run_ok(
        "ip",
        &[
            "netns",
            "exec",
            &ns.0,
            "/usr/sbin/iptables-legacy",
            "-S",
            "FORWARD",
        ],
    );
    let first = out.lines().find(|l| l.starts_with("-A FORWARD")).unwrap();
    assert_eq!(first, format!("-A FORWARD {}", p.forward.jump().spec));
    // The steady state asks legacy, where the rules are: one run, no detection.
    assert!(probe(&ns, &p));
    assert_eq!(ns.runs(), ["iptables-legacy-restore --noflush -w --test"]);
    ns.run(|| p.check()).unwrap();

    // Now nft carries rules too (a DROP policy): the next install goes to both.
    ns.sh(&["/usr/sbin/iptables-nft", "-P", "FORWARD", "DROP"]);
    ns.runs();
    ns.run(|| p.install()).unwrap();
    let runs = ns.runs();
    assert_eq!(restores(&runs), 1, "legacy has it all already: {runs:#?}");
    assert_eq!(
        ns.ours_in("iptables-nft-save", "filter"),
        saved_forward(&p.forward)
    );

    // The last pod: nothing of ours left in either backend, one blind restore in each (the
    // hint names both).
    ns.run(|| p.uninstall()).unwrap();
    // The backends' runs overlap: their order in the log is not theirs to keep.
    let mut runs = ns.runs();
    runs.sort();
    assert_eq!(
        runs,
        [
            "iptables-legacy-restore --noflush -w",
            "iptables-nft-restore --noflush -w"
        ],
        "{runs:#?}"
    );
    let nothing_left = |ns: &Ns| {
        for save in ["iptables-nft-save", "iptables-legacy-save"] {
            for table in ["filter", "nat"] {
                assert_eq!(
                    ns.ours_in(save, table),
                    Vec::<String>::new(),
                    "{save} {table}"
                );
            }
        }
    };
    nothing_left(&ns);

    // A stale hint (edited by hand to "nft" alone) while this pool's rules are in legacy too.
    // The removal lists legacy (present, not hinted) and finds them.
    ns.run(|| p.install()).unwrap();
    let ino = fs::metadata(format!("/run/netns/{}", ns.0)).unwrap();
    let hint = p.hint_dir.join(format!(
        "{}.{}",
        std::os::unix::fs::MetadataExt::ino(&ino),
        p.forward.subnet.to_string().replace('/', "-")
    ));
    assert_eq!(fs::read_to_string(&hint).unwrap(), "legacy nft");
    fs::write(&hint, "nft").unwrap();
    ns.runs();
    ns.run(|| p.uninstall()).unwrap();
    let mut runs = ns.runs();
    runs.sort();
    assert_eq!(
        runs,
        [
            "iptables-legacy-restore --noflush -w",
            "iptables-legacy-save ",
            "iptables-nft-restore --noflush -w"
        ],
        "{runs:#?}"
    );
    nothing_left(&ns);
    assert!(!hint.exists(), "the pool's hint outlived its rules");
}

/// The blind removal is never trusted further than it goes: a FORWARD flushed by an admin
/// (jump gone, chain left), a second copy of the jump, or rules of a config whose nat chain
/// differs each make it fail, and the listing that follows leaves nothing of the pool.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn removal_cleans_what_the_blind_restore_cannot() {
    shim_dir();
    let ns = Ns::new();
    let p = rules(&pool("10.244.1.0/24", &["10.244.0.0/16"]));
    let other_config = rules(&pool("10.244.1.0/24", &["10.96.0.0/12"]));
    let jump = p.forward.jump();
    let mut second_jump = vec!["iptables-nft", "-I", "FORWARD", "1"];
    second_jump.extend(jump.args.iter().map(String::as_str));
    let cases: [(&str, &PoolRules, &[&str]); 4] = [
        ("nothing spoiled", &p, &["true"]),
        ("FORWARD flushed", &p, &["iptables-nft", "-F", "FORWARD"]),
        ("a second jump", &p, &second_jump),
        ("another config installed", &other_config, &["true"]),
    ];
    for (what, installed, spoil) in cases {
        ns.run(|| installed.install()).unwrap();
        ns.sh(spoil);
        ns.runs();
        ns.run(|| p.uninstall()).unwrap();
        let runs = ns.runs();
        // Blind restore; where it fails, a listing and the restore of what it found.
        let want = if what == "nothing spoiled" { 1 } else { 3 };
        assert_eq!(runs.len(), want, "{what}: {runs:#?}");
        for table in ["filter", "nat"] {
            assert_eq!(
                ns.ours_in("iptables-nft-save", table),
                Vec::<String>::new(),
                "{what}: {table}"
            );
        }
    }
}

/// The plugin (`ROUTED_CNI_BIN` when set) run in the node for a pod namespace `ns`.
fn run_plugin(w: &common::World, cmd: &str, ns: &str, config: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &w.node])
        .arg(common::bin())
        .env_clear()
        .env("PATH", common::PATH)
        .envs([
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", &format!("ctr-{ns}")),
            ("CNI_NETNS", &format!("/run/netns/{ns}")),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = config.as_bytes().to_vec();
    child.stdin.take().unwrap().write_all(&stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// A node (`common::World`) whose iptables-legacy has Docker's rules, FORWARD policy DROP: a
/// pod must still reach the outside and another pod, and DEL of the last pod leaves nothing
/// of ours in either backend. Run with ROUTED_CNI_BIN=<main's binary> to see it fail there.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn pods_forward_through_a_legacy_docker_drop_policy() {
    let mut w = common::World::new("rcnifw", "docker");
    load_legacy(&w.node, DOCKER_LEGACY);
    let config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "test",
        "type": "routed-cni",
        "ipam": {"subnet": "10.244.7.0/24", "dataDir": w.dir.join("store")},
        "nonMasqueradeCIDRs": ["10.244.0.0/16"],
        "logLevel": "debug",
        "logFile": w.dir.join("cni.log"),
    })
    .to_string();
    let plugin_with = |w: &common::World, cmd: &str, ns: &str, config: &str| {
        let out = run_plugin(w, cmd, ns, config);
        assert!(
            out.status.success(),
            "{cmd} {ns}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let plugin = |w: &common::World, cmd: &str, ns: &str| plugin_with(w, cmd, ns, &config);
    let (a, b) = (w.pod_ns("a"), w.pod_ns("b"));
    let added_a: serde_json::Value = serde_json::from_str(&plugin(&w, "ADD", &a)).unwrap();
    let added: serde_json::Value = serde_json::from_str(&plugin(&w, "ADD", &b)).unwrap();
    let ip_b = added["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let ping = |from: &str, to: &str| {
        common::run(
            "ip",
            &[
                "netns", "exec", from, "ping", "-c", "1", "-w", "3", "-q", to,
            ],
        )
        .status
        .success()
    };
    assert!(
        ping(&a, common::OUTSIDE_IP),
        "pod -> outside through FORWARD DROP"
    );
    assert!(ping(&a, &ip_b), "pod -> pod through FORWARD DROP");
    assert!(ping(&a, common::NODE_IP), "pod -> node");
    // CHECK sees the forward path: fine now, and names it once an admin flushes FORWARD.
    let mut checked: serde_json::Value = serde_json::from_str(&config).unwrap();
    checked["prevResult"] = added_a;
    let checked = checked.to_string();
    plugin_with(&w, "CHECK", &a, &checked);
    common::run_ok(
        "ip",
        &["netns", "exec", &w.node, "iptables-legacy", "-F", "FORWARD"],
    );
    let out = run_plugin(&w, "CHECK", &a, &checked);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success()
            && stdout.contains("forward rule missing")
            && stdout.contains("iptables-legacy -S FORWARD"),
        "{stdout}"
    );
    assert!(
        !ping(&a, common::OUTSIDE_IP),
        "FORWARD flushed: the DROP policy wins"
    );
    // The next ADD in the pool repairs it.
    let c = w.pod_ns("c");
    plugin(&w, "ADD", &c);
    assert!(ping(&a, common::OUTSIDE_IP), "repaired by the next ADD");
    for ns in [&a, &b, &c] {
        plugin(&w, "DEL", ns);
    }
    for save in ["iptables-nft-save", "iptables-legacy-save"] {
        let out = common::run_ok("ip", &["netns", "exec", &w.node, save]);
        assert!(
            !out.contains("routed-cni") && !out.contains("RCNI"),
            "{save} still has ours:\n{out}"
        );
    }
    // Docker's policy is untouched.
    let legacy = common::run_ok("ip", &["netns", "exec", &w.node, "iptables-legacy-save"]);
    assert!(legacy.contains(":FORWARD DROP"), "{legacy}");
}
