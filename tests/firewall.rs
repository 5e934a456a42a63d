//! The firewall module against the real iptables programs, each test in a network namespace
//! of its own (the host's tables are never touched). Every iptables program the module runs
//! goes through a logging shim put first in PATH, so the tests can count the runs: installing
//! or removing a pool's masquerade is one `iptables-restore`, whatever was there before.
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
use routed_cni::firewall::Masquerade;

const SHIMMED: [&str; 4] = [
    "iptables",
    "ip6tables",
    "iptables-restore",
    "ip6tables-restore",
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

    /// `iptables-save -t nat` (or ip6tables-save) lines that are ours.
    fn ours(&self, save: &str) -> Vec<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, save, "-t", "nat"])
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

/// What `iptables-save` prints for the pool's masquerade, in its order.
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

fn restores(runs: &[String]) -> usize {
    runs.iter().filter(|r| r.contains("-restore")).count()
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn install_is_one_restore_and_uninstall_leaves_nothing() {
    shim_dir();
    let ns = Ns::new();
    for (m, save) in [
        (pool("10.244.1.0/24", &["10.244.0.0/16"]), "iptables-save"),
        (
            pool("fd00:10:244:1::/64", &["fd00:10:244::/48"]),
            "ip6tables-save",
        ),
    ] {
        let probe_before = ns.run(|| m.probe().unwrap().wait().unwrap());
        assert!(!probe_before, "nothing installed yet");
        ns.runs();

        ns.run(|| m.install()).unwrap();
        let runs = ns.runs();
        // One listing of POSTROUTING, then every change in a single restore.
        assert_eq!(runs.len(), 2, "{runs:#?}");
        assert_eq!(restores(&runs), 1, "{runs:#?}");
        assert!(runs[1].ends_with("-restore --noflush -w"), "{runs:#?}");
        assert_eq!(ns.ours(save), saved(&m));
        assert!(ns.run(|| m.probe().unwrap().wait().unwrap()));
        ns.run(|| m.check()).unwrap();
        ns.runs();

        // Installed already (a parallel ADD got there first): a listing, no change.
        ns.run(|| m.install()).unwrap();
        assert_eq!(restores(&ns.runs()), 0);

        ns.run(|| m.uninstall()).unwrap();
        let runs = ns.runs();
        assert_eq!((runs.len(), restores(&runs)), (2, 1), "{runs:#?}");
        assert_eq!(ns.ours(save), Vec::<String>::new());
        // Removing what is not there is fine (a retried DEL).
        ns.run(|| m.uninstall()).unwrap();
        let err = ns.run(|| m.check()).unwrap_err();
        assert_eq!(err.code, Code::Nat);
        assert!(err.msg.contains("masquerade rule missing"), "{err}");
    }
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn install_replaces_an_older_config_of_the_pool() {
    shim_dir();
    let ns = Ns::new();
    let old = pool("10.244.1.0/24", &["10.244.0.0/16", "10.96.0.0/12"]);
    let new = pool("10.244.1.0/24", &["10.244.0.0/16"]);
    let other = pool("10.244.2.0/24", &["10.244.0.0/16"]);
    ns.run(|| old.install().and(other.install())).unwrap();
    ns.runs();

    ns.run(|| new.install()).unwrap();
    assert_eq!(restores(&ns.runs()), 1);
    let mut want = saved(&new);
    want.extend(saved(&other));
    want.sort();
    let mut have = ns.ours("iptables-save");
    have.sort();
    assert_eq!(
        have, want,
        "old chain and jump gone, the other pool untouched"
    );

    // The current chain left without its jump, with a stray rule: install refills it.
    let mut delete = vec!["iptables", "-t", "nat", "-D", "POSTROUTING"];
    let jump = new.jump();
    delete.extend(jump.args.iter().map(String::as_str));
    ns.sh(&delete);
    ns.sh(&["iptables", "-t", "nat", "-A", &new.chain(), "-j", "ACCEPT"]);
    ns.run(|| new.install()).unwrap();
    let mut have = ns.ours("iptables-save");
    have.sort();
    assert_eq!(have, want);
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn a_failing_change_changes_nothing() {
    shim_dir();
    let ns = Ns::new();
    let old = pool("10.244.1.0/24", &["10.96.0.0/12"]);
    let new = pool("10.244.1.0/24", &["10.244.0.0/16"]);
    ns.run(|| old.install()).unwrap();
    // Someone else jumps to the old chain too, so it cannot be deleted: the install that
    // would replace it must fail whole, not leave the new chain and a second jump behind.
    ns.sh(&["iptables", "-t", "nat", "-N", "ADMIN"]);
    ns.sh(&["iptables", "-t", "nat", "-A", "ADMIN", "-j", &old.chain()]);
    let before = ns.ours("iptables-save");
    let err = ns.run(|| new.install()).unwrap_err();
    assert_eq!(err.code, Code::Nat);
    assert!(
        err.msg.contains("nothing was changed") && err.msg.contains("iptables -t nat -S"),
        "{err}"
    );
    assert_eq!(ns.ours("iptables-save"), before);
}
