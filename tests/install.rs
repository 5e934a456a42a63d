//! `routed-cni install` replaces files that a container runtime may read or exec at any instant:
//! the conflist (read on every pod start, and watched) and the plugin binary (exec'd on every
//! CNI call). While a writer loops `routed-cni install` into a scratch bin/conf dir, each round
//! switching both the pod subnet (so the conflist changes) and the binary it installs from (two
//! copies that differ by bytes appended past the ELF image, which still runs), readers loop:
//!   - reading the conflist: every read must be byte-for-byte one of the two complete configs;
//!   - reading the installed binary: every read must be one of the two complete binaries;
//!   - exec'ing `<bin-dir>/routed-cni version`: every exec must start and succeed (no ENOENT,
//!     no ETXTBSY "text file busy", no ENOEXEC from a half-written file).
//!
//! The second test points the same readers at a naive writer (truncate + write in chunks, as
//! `cat new > file` or `cp` do) and requires that they catch it, so the first test can fail.
//! The last tests run `install` and `uninstall` against a scratch "node" whose /etc has a
//! systemd network dir but no NetworkManager: the .link file and the drop-in are written only
//! where their dir exists, and uninstall removes exactly what install wrote.
//! Nothing here needs root or touches the host's network: only a temp directory.
//! ROUTED_CNI_ATOMIC_SECS sets how long the writer loops (default 5).

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const CONF_NAME: &str = "10-routed-cni.conflist";
const SUBNETS: [&str; 2] = ["10.244.1.0/24", "10.244.2.0/24"];
mod common;

use common::bin;

/// Replacements of both files the readers must overlap for the run to prove anything.
const MIN_ROUNDS: usize = 20;

fn secs() -> u64 {
    std::env::var("ROUTED_CNI_ATOMIC_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

/// A scratch directory with two runnable, different copies of the binary, and the two
/// conflists `install` writes for the two subnets. Removed on drop.
struct World {
    dir: PathBuf,
    /// Owns `dir`: removes it on drop.
    _tmp: common::TempDir,
    sources: [PathBuf; 2],
    bins: [Vec<u8>; 2],
    confs: [Vec<u8>; 2],
}

impl World {
    fn new() -> World {
        let tmp = common::TempDir::new(&common::unique("rcni-install-atomic"));
        let dir = tmp.path.clone();
        fs::create_dir_all(dir.join("src")).unwrap();
        let a = fs::read(bin()).unwrap();
        let mut b = a.clone();
        // Past the end of the ELF image: the loader never looks there, so it still runs.
        b.extend_from_slice(b"\nrouted-cni install-atomic test variant\n");
        let sources = [dir.join("src/a"), dir.join("src/b")];
        for (path, data) in sources.iter().zip([&a, &b]) {
            fs::write(path, data).unwrap();
            fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut w = World {
            dir,
            _tmp: tmp,
            sources,
            bins: [a, b],
            confs: [Vec::new(), Vec::new()],
        };
        for (i, subnet) in SUBNETS.iter().enumerate() {
            let out = w.install(i, &w.dir.join(format!("expect{i}")), subnet);
            assert!(out.contains("installed"), "{out}");
            w.confs[i] = fs::read(w.dir.join(format!("expect{i}/net.d/{CONF_NAME}"))).unwrap();
            // The appended bytes really leave a working binary.
            let bin = w.dir.join(format!("expect{i}/bin/routed-cni"));
            assert_eq!(fs::read(&bin).unwrap(), w.bins[i]);
            exec_version(&bin).unwrap();
        }
        assert_ne!(w.confs[0], w.confs[1]);
        assert_ne!(w.bins[0], w.bins[1]);
        w
    }

    fn node(&self) -> PathBuf {
        self.dir.join("node")
    }

    /// Runs `install` from source binary `src` into `root`/{bin,net.d}; returns its stdout.
    fn install(&self, src: usize, root: &Path, subnet: &str) -> String {
        let out = Command::new(&self.sources[src])
            .arg("install")
            .arg("--bin-dir")
            .arg(root.join("bin"))
            .arg("--conf-dir")
            .arg(root.join("net.d"))
            // Never the real node's udev and NetworkManager dirs (absent here: skipped).
            .arg("--systemd-network-dir")
            .arg(root.join("systemd/network"))
            .arg("--networkmanager-conf-dir")
            .arg(root.join("NetworkManager/conf.d"))
            .args(["--pod-subnet", subnet, "--cluster-cidr", "10.244.0.0/16"])
            .env_remove("ROUTED_CNI_MTU")
            .env_remove("ROUTED_CNI_LOG_FILE")
            .env_remove("ROUTED_CNI_CONF_NAME")
            .env_remove("ROUTED_CNI_NETWORK_NAME")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "install failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

fn exec_version(bin: &Path) -> Result<(), String> {
    match Command::new(bin).arg("version").output() {
        Err(e) => Err(format!("exec {}: {e}", bin.display())),
        Ok(o) if !o.status.success() => Err(format!("{} version: {}", bin.display(), o.status)),
        Ok(o) if !o.stdout.starts_with(b"routed-cni ") => Err(format!(
            "{} version printed {:?}",
            bin.display(),
            String::from_utf8_lossy(&o.stdout)
        )),
        Ok(_) => Ok(()),
    }
}

/// Which of `expected` the bytes at `path` are, or what is wrong with them.
fn read_one_of(path: &Path, expected: &[Vec<u8>; 2], what: &str) -> Result<usize, String> {
    let data = fs::read(path).map_err(|e| format!("read {what}: {e}"))?;
    if let Some(i) = expected.iter().position(|e| *e == data) {
        return Ok(i);
    }
    let parsed = if what == "conflist" {
        match serde_json::from_slice::<serde_json::Value>(&data) {
            Ok(_) => "valid JSON but neither config".to_string(),
            Err(e) => format!("not complete JSON: {e}"),
        }
    } else {
        "neither binary".to_string()
    };
    Err(format!("{what} read of {} bytes: {parsed}", data.len()))
}

#[derive(Default, Debug)]
struct Stats {
    conf_reads: [usize; 2],
    bin_reads: [usize; 2],
    execs: usize,
    conf_bad: usize,
    bin_bad: usize,
    exec_bad: usize,
    first_failures: Vec<String>,
}

/// Runs `writer` (which returns its round count) while two conflist readers, one binary reader
/// and one exec loop watch the node's dirs. Readers stop when the writer returns.
fn watch(w: &World, writer: impl FnOnce() -> usize + Send) -> (usize, Stats) {
    let node = w.node();
    let conf = node.join("net.d").join(CONF_NAME);
    let bin = node.join("bin/routed-cni");
    let stop = AtomicBool::new(false);
    let stats = Mutex::new(Stats::default());
    let fail = |msg: String, count: fn(&mut Stats) -> &mut usize| {
        let mut s = stats.lock().unwrap();
        *count(&mut s) += 1;
        if s.first_failures.len() < 6 {
            s.first_failures.push(msg);
        }
    };
    let rounds = std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    match read_one_of(&conf, &w.confs, "conflist") {
                        Ok(i) => stats.lock().unwrap().conf_reads[i] += 1,
                        Err(e) => fail(e, |s| &mut s.conf_bad),
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            });
        }
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                match read_one_of(&bin, &w.bins, "binary") {
                    Ok(i) => stats.lock().unwrap().bin_reads[i] += 1,
                    Err(e) => fail(e, |s| &mut s.bin_bad),
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                match exec_version(&bin) {
                    Ok(()) => stats.lock().unwrap().execs += 1,
                    Err(e) => fail(e, |s| &mut s.exec_bad),
                }
            }
        });
        // Readers stop also when the writer panics; else the scope would wait for them forever.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(&stop);
        writer()
    });
    (rounds, stats.into_inner().unwrap())
}

#[test]
fn readers_never_see_a_partial_conflist_or_binary_while_install_loops() {
    let w = World::new();
    let node = w.node();
    w.install(0, &node, SUBNETS[0]);
    // Enough evidence is both a time span and a number of replacements: a slow machine (or a
    // 100 MB debug binary) takes longer to reach the rounds, never fewer of them; the hard
    // limit only stops a run that makes no progress at all.
    let until = Instant::now() + Duration::from_secs(secs());
    let hard_limit = Instant::now() + Duration::from_secs(secs() * 24);
    let (rounds, s) = watch(&w, || {
        let mut round = 0;
        while (Instant::now() < until || round < MIN_ROUNDS) && Instant::now() < hard_limit {
            round += 1;
            let i = round % 2;
            let out = w.install(i, &node, SUBNETS[i]);
            // Both files really change every round.
            assert_eq!(out.matches(" installed").count(), 2, "round {round}: {out}");
        }
        round
    });
    println!(
        "install-atomic: {rounds} install rounds; conflist reads {} ({:?} per config), \
         binary reads {} ({:?} per binary), execs {}; bad conflist reads {}, bad binary \
         reads {}, failed execs {}",
        s.conf_reads.iter().sum::<usize>(),
        s.conf_reads,
        s.bin_reads.iter().sum::<usize>(),
        s.bin_reads,
        s.execs,
        s.conf_bad,
        s.bin_bad,
        s.exec_bad
    );
    assert_eq!(
        s.conf_bad + s.bin_bad + s.exec_bad,
        0,
        "{:#?}",
        s.first_failures
    );
    // The run proves something only if readers overlapped many replacements of both versions.
    assert!(rounds >= MIN_ROUNDS, "only {rounds} rounds");
    assert!(s.conf_reads.iter().all(|&n| n > 0), "{s:?}");
    assert!(s.bin_reads.iter().all(|&n| n > 0), "{s:?}");
    assert!(s.execs >= 20, "{s:?}");
    let leftovers: Vec<_> = fs::read_dir(node.join("net.d"))
        .unwrap()
        .chain(fs::read_dir(node.join("bin")).unwrap())
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "temp files left: {leftovers:?}");
}

/// The readers above can fail: a writer that truncates and writes in place (`cat new > file`,
/// `cp new file`) is caught within a second or two, for the conflist and for the binary.
#[test]
fn the_same_readers_catch_a_non_atomic_writer() {
    let w = World::new();
    let node = w.node();
    w.install(0, &node, SUBNETS[0]);
    let naive = |path: &Path, data: &[u8]| -> std::io::Result<()> {
        let mut f = fs::File::create(path)?; // O_TRUNC: from here readers may see it empty
        for chunk in data.chunks(data.len() / 4 + 1) {
            f.write_all(chunk)?;
            std::thread::sleep(Duration::from_micros(300));
        }
        Ok(())
    };
    let until = Instant::now() + Duration::from_secs(2);
    let (rounds, s) = watch(&w, || {
        let (conf, bin) = (
            node.join("net.d").join(CONF_NAME),
            node.join("bin/routed-cni"),
        );
        let mut round = 0;
        while Instant::now() < until {
            round += 1;
            let i = round % 2;
            naive(&conf, &w.confs[i]).unwrap();
            // While the binary is being exec'd it cannot be opened for writing (ETXTBSY), so
            // this `cp` fails now and then; when it gets through, readers catch it.
            let _ = naive(&bin, &w.bins[i]);
            std::thread::sleep(Duration::from_millis(1));
        }
        round
    });
    println!(
        "install-atomic self-check: naive writer, {rounds} rounds; conflist reads {:?} ok, \
         {} bad; binary reads {:?} ok, {} bad; execs {} ok, {} failed; first: {:#?}",
        s.conf_reads, s.conf_bad, s.bin_reads, s.bin_bad, s.execs, s.exec_bad, s.first_failures
    );
    assert!(
        s.conf_bad > 0,
        "the conflist readers missed a non-atomic writer"
    );
    assert!(
        s.bin_bad + s.exec_bad > 0,
        "the binary readers missed a non-atomic writer"
    );
}

/// A scratch node root: `etc/systemd/network` exists (with a foreign .link file in it),
/// `etc/NetworkManager` does not; `etc/cni/net.d` holds another plugin's conflist.
struct Node {
    _tmp: common::TempDir,
    root: PathBuf,
}

impl Node {
    fn new() -> Node {
        let tmp = common::TempDir::new(&common::unique("rcni-install-node"));
        let root = tmp.path.clone();
        fs::create_dir_all(root.join("etc/systemd/network")).unwrap();
        fs::create_dir_all(root.join("etc/cni/net.d")).unwrap();
        fs::write(
            root.join(FOREIGN_LINK),
            "[Match]\nOriginalName=eth*\n\n[Link]\nMTUBytes=9000\n",
        )
        .unwrap();
        fs::write(
            root.join(FOREIGN_CONF),
            r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        Node { _tmp: tmp, root }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Runs `routed-cni <args> <dir flags>`; returns (exit code, stdout, stderr).
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(bin())
            .args(args)
            .arg("--bin-dir")
            .arg(self.p("opt/cni/bin"))
            .arg("--conf-dir")
            .arg(self.p("etc/cni/net.d"))
            .arg("--systemd-network-dir")
            .arg(self.p("etc/systemd/network"))
            .env(
                "ROUTED_CNI_NETWORKMANAGER_CONF_DIR",
                self.p("etc/NetworkManager/conf.d"),
            )
            .env_remove("ROUTED_CNI_MTU")
            .env_remove("ROUTED_CNI_CONF_NAME")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    fn install(&self) -> String {
        let (code, out, err) = self.run(&["install", "--pod-subnet", "10.244.1.0/24"]);
        assert_eq!(code, 0, "install: {out}{err}");
        out
    }

    /// Every file under the root, relative, sorted.
    fn files(&self) -> Vec<String> {
        fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
            for e in fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, root, out);
                } else {
                    out.push(p.strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &self.root, &mut out);
        out.sort();
        out
    }
}

const FOREIGN_LINK: &str = "etc/systemd/network/50-jumbo.link";
const FOREIGN_CONF: &str = "etc/cni/net.d/20-bridge.conflist";
const LINK: &str = "etc/systemd/network/10-routed-cni.link";
const NM: &str = "etc/NetworkManager/conf.d/routed-cni.conf";

#[test]
fn install_writes_the_link_file_and_the_nm_drop_in_only_where_their_dir_exists() {
    let n = Node::new();
    let out = n.install();
    let link = fs::read_to_string(n.p(LINK)).unwrap();
    assert!(
        link.contains("[Match]\nOriginalName=rcni*\nDriver=veth\n")
            && link.contains("MACAddressPolicy=none"),
        "{link}"
    );
    assert!(
        out.contains(&format!("{} installed", n.p(LINK).display())),
        "{out}"
    );
    // No NetworkManager on this node: its dir is not created, and install says why.
    assert!(
        !n.p("etc/NetworkManager").exists(),
        "install created NetworkManager's dir"
    );
    assert!(
        out.contains(&format!("{} skipped", n.p(NM).display())),
        "{out}"
    );
    // Again: nothing changes, and the report says so for each file.
    let again = n.install();
    assert_eq!(again.matches(" unchanged").count(), 3, "{again}");
    assert!(!again.contains(" installed"), "{again}");

    // NetworkManager appears: the next install writes its drop-in.
    fs::create_dir_all(n.p("etc/NetworkManager/conf.d")).unwrap();
    let out = n.install();
    assert!(
        out.contains(&format!("{} installed", n.p(NM).display())),
        "{out}"
    );
    let nm = fs::read_to_string(n.p(NM)).unwrap();
    assert!(
        nm.contains("[keyfile]\nunmanaged-devices+=interface-name:rcni*\n"),
        "{nm}"
    );
    // A changed file is replaced whole; no temp file is left anywhere.
    fs::write(n.p(LINK), "stale").unwrap();
    assert!(n
        .install()
        .contains(&format!("{} installed", n.p(LINK).display())));
    assert_eq!(fs::read_to_string(n.p(LINK)).unwrap(), link);
    let files = n.files();
    assert!(!files.iter().any(|f| f.contains(".tmp.")), "{files:?}");
}

#[test]
fn uninstall_removes_exactly_what_install_wrote() {
    let n = Node::new();
    fs::create_dir_all(n.p("etc/NetworkManager/conf.d")).unwrap();
    let before = n.files();
    n.install();
    let installed = n.files();
    assert_eq!(installed.len(), before.len() + 4, "{installed:?}");

    let (code, out, err) = n.run(&["uninstall"]);
    assert_eq!(code, 0, "{out}{err}");
    for f in [
        "opt/cni/bin/routed-cni",
        "etc/cni/net.d/10-routed-cni.conflist",
        LINK,
        NM,
    ] {
        assert!(
            out.contains(&format!("{} removed", n.p(f).display())),
            "{f}: {out}"
        );
    }
    // The foreign .link file and conflist stay; the directories stay.
    assert_eq!(n.files(), before);
    assert!(n.p("etc/NetworkManager/conf.d").is_dir());

    // Idempotent: everything is already gone.
    let (code, out, _) = n.run(&["uninstall"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches(" absent").count(), 4, "{out}");
}

#[test]
fn uninstall_keeps_files_of_our_names_that_are_not_ours() {
    let n = Node::new();
    n.install();
    // Someone replaced our conflist with another plugin's, and our .link file with their own.
    let conf = n.p("etc/cni/net.d/10-routed-cni.conflist");
    fs::write(&conf, r#"{"plugins":[{"type":"calico"}]}"#).unwrap();
    fs::write(n.p(LINK), "[Match]\nOriginalName=cali*\n").unwrap();
    let (code, out, err) = n.run(&["uninstall"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(&format!("{} kept", conf.display())) && out.contains("calico"),
        "{out}"
    );
    assert!(
        out.contains(&format!("{} kept", n.p(LINK).display())),
        "{out}"
    );
    assert!(conf.exists() && n.p(LINK).exists());
    assert!(!n.p("opt/cni/bin/routed-cni").exists(), "our binary stays");
    assert!(err.contains("remove it yourself"), "{err}");

    // A binary of our name that is not routed-cni stays too.
    fs::write(
        n.p("opt/cni/bin/routed-cni"),
        b"#!/bin/sh\necho another plugin\n",
    )
    .unwrap();
    let (code, out, _) = n.run(&["uninstall"]);
    assert_eq!(code, 1);
    assert!(out.contains("not a routed-cni binary"), "{out}");
    assert!(n.p("opt/cni/bin/routed-cni").exists());
}
