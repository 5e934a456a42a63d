//! Tests of the pool store, each in its own temp directory.

use super::*;
use std::collections::HashSet;
use std::fs;
use std::sync::Arc;
use std::time::Instant;

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "rcni-store-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn pool(dir: &Path, subnet: &str, start: &str, end: &str) -> PoolConfig {
    PoolConfig {
        subnet: subnet.parse().unwrap(),
        range_start: start.parse().unwrap(),
        range_end: end.parse().unwrap(),
        data_dir: dir.to_path_buf(),
    }
}

fn rec(cid: &str) -> Record {
    Record {
        ip: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        container_id: cid.into(),
        ifname: "eth0".into(),
        host_veth: format!("rcni{}", &attachment_hash(cid, "eth0")[..11]),
        pod_namespace: Some("default".into()),
        pod_name: Some(format!("pod-{cid}")),
        network: "k8s".into(),
        netns: "/run/netns/x".into(),
        created: 0,
    }
}

#[test]
fn allocates_round_robin_and_never_network_or_broadcast() {
    let dir = tempdir("rr");
    let store = Store::open(&pool(&dir, "10.0.0.0/29", "10.0.0.1", "10.0.0.6")).unwrap();
    let lock = store.lock(LOCK_TIMEOUT).unwrap();
    let ips: Vec<_> = (0..6)
        .map(|i| {
            lock.allocate(&rec(&format!("c{i}")))
                .unwrap()
                .0
                .ip
                .to_string()
        })
        .collect();
    assert_eq!(
        ips,
        ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    );
    let e = lock.allocate(&rec("c6")).unwrap_err();
    assert_eq!(e.code, Code::PoolExhausted);
    assert!(e.msg.contains("10.0.0.0/29"), "{}", e.msg);
    // Release .2: the next allocation takes .2 only because it is the only free one;
    // release .2 and .4 and the search resumes after the last reserved, not at the lowest.
    assert_eq!(
        lock.release("c1", "eth0").unwrap().unwrap().ip.to_string(),
        "10.0.0.2"
    );
    assert_eq!(
        lock.allocate(&rec("c7")).unwrap().0.ip.to_string(),
        "10.0.0.2"
    );
    lock.release("c3", "eth0").unwrap();
    lock.release("c0", "eth0").unwrap();
    assert_eq!(
        lock.allocate(&rec("c8")).unwrap().0.ip.to_string(),
        "10.0.0.4"
    );
    assert_eq!(
        lock.allocate(&rec("c9")).unwrap().0.ip.to_string(),
        "10.0.0.1"
    );
    drop(lock);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ipv6_pool_allocates_distinct_addresses_and_reads_back() {
    let dir = tempdir("v6");
    let p = pool(
        &dir,
        "fd00:10:244:1::/64",
        "fd00:10:244:1:ffff:ffff:ffff:fffc",
        "fd00:10:244:1:ffff:ffff:ffff:fffe",
    );
    let store = Store::open(&p).unwrap();
    assert!(store.dir().ends_with("fd00:10:244:1::-64"));
    let lock = store.lock(LOCK_TIMEOUT).unwrap();
    let ips: Vec<String> = (0..3)
        .map(|i| {
            lock.allocate(&rec(&format!("v{i}")))
                .unwrap()
                .0
                .ip
                .to_string()
        })
        .collect();
    assert_eq!(
        ips,
        [
            "fd00:10:244:1:ffff:ffff:ffff:fffc",
            "fd00:10:244:1:ffff:ffff:ffff:fffd",
            "fd00:10:244:1:ffff:ffff:ffff:fffe"
        ]
    );
    assert_eq!(
        lock.allocate(&rec("v3")).unwrap_err().code,
        Code::PoolExhausted
    );
    assert_eq!(lock.records().unwrap().len(), 3);
    assert_eq!(
        lock.find("v1", "eth0").unwrap().unwrap().ip.to_string(),
        ips[1]
    );
    assert_eq!(
        lock.release("v1", "eth0").unwrap().unwrap().ip.to_string(),
        ips[1]
    );
    // Round robin wraps to the freed one.
    assert_eq!(lock.allocate(&rec("v4")).unwrap().0.ip.to_string(), ips[1]);
    drop(lock);
    // `routed-cni list` and audit find the pool by its directory name.
    let found = super::super::scan::scan(&dir).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].subnet.to_string(), "fd00:10:244:1::/64");
    assert_eq!(found[0].records.len(), 3);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn same_attachment_gets_same_address_and_release_is_idempotent() {
    let dir = tempdir("idem");
    let store = Store::open(&pool(&dir, "10.0.1.0/24", "10.0.1.1", "10.0.1.254")).unwrap();
    let lock = store.lock(LOCK_TIMEOUT).unwrap();
    let (a, reused_a) = lock.allocate(&rec("x")).unwrap();
    let (b, reused_b) = lock.allocate(&rec("x")).unwrap();
    assert!(!reused_a && reused_b);
    assert_eq!(a, b);
    assert_eq!(lock.find("x", "eth0").unwrap(), Some(a.clone()));
    assert_eq!(lock.find("x", "eth1").unwrap(), None);
    assert_eq!(lock.records().unwrap(), vec![a.clone()]);
    assert!(!lock.is_empty().unwrap());
    assert_eq!(lock.release("x", "eth0").unwrap(), Some(a));
    assert_eq!(lock.release("x", "eth0").unwrap(), None);
    assert_eq!(lock.release("never", "eth0").unwrap(), None);
    assert!(lock.is_empty().unwrap());
    assert!(fs::read_dir(store.dir().join(KEYS_DIR))
        .unwrap()
        .next()
        .is_none());
    drop(lock);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn many_threads_never_share_an_address() {
    let dir = tempdir("threads");
    let p = pool(&dir, "10.0.2.0/24", "10.0.2.1", "10.0.2.254");
    let handles: Vec<_> = (0..16)
        .map(|t| {
            let p = p.clone();
            std::thread::spawn(move || {
                // Each thread opens the store itself, as separate processes would.
                let store = Store::open(&p).unwrap();
                (0..15)
                    .map(|i| {
                        let lock = store.lock(LOCK_TIMEOUT).unwrap();
                        lock.allocate(&rec(&format!("t{t}-{i}"))).unwrap().0.ip
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<IpAddr> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 240);
    assert_eq!(distinct.len(), 240, "an address was handed out twice");
    let store = Store::open(&p).unwrap();
    assert_eq!(
        store.lock(LOCK_TIMEOUT).unwrap().records().unwrap().len(),
        240
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lock_wait_is_bounded() {
    let dir = tempdir("lock");
    let store =
        Arc::new(Store::open(&pool(&dir, "10.0.3.0/24", "10.0.3.1", "10.0.3.254")).unwrap());
    let held = store.lock(LOCK_TIMEOUT).unwrap();
    let other = Store::open(store.pool()).unwrap();
    let t0 = Instant::now();
    let e = other
        .lock(Duration::from_millis(100))
        .err()
        .expect("lock must time out");
    assert_eq!(e.code, Code::TryAgainLater);
    assert!(t0.elapsed() >= Duration::from_millis(100));
    drop(held);
    assert!(other.lock(Duration::from_millis(100)).is_ok());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reopened_after_interrupted_writes() {
    let dir = tempdir("crash");
    let p = pool(&dir, "10.0.4.0/29", "10.0.4.1", "10.0.4.6");
    let store = Store::open(&p).unwrap();
    {
        let lock = store.lock(LOCK_TIMEOUT).unwrap();
        lock.allocate(&rec("alive")).unwrap();
    }
    // A writer killed between writing and renaming leaves a temp file; one killed between
    // the key and the record leaves a key that points at a free address.
    fs::write(
        store.dir().join(format!("{TMP_PREFIX}10.0.4.2.999")),
        b"{\"ip\":\"10.0.",
    )
    .unwrap();
    fs::write(
        store
            .dir()
            .join(KEYS_DIR)
            .join(attachment_hash("dead", "eth0")),
        b"10.0.4.2",
    )
    .unwrap();
    let store = Store::open(&p).unwrap();
    let lock = store.lock(LOCK_TIMEOUT).unwrap();
    assert_eq!(lock.find("dead", "eth0").unwrap(), None);
    let (r, reused) = lock.allocate(&rec("dead")).unwrap();
    assert!(!reused);
    assert_eq!(r.ip.to_string(), "10.0.4.2");
    let (r2, _) = lock.allocate(&rec("new")).unwrap();
    assert_eq!(r2.ip.to_string(), "10.0.4.3");
    assert_eq!(lock.records().unwrap().len(), 3);
    assert!(!fs::read_dir(store.dir()).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(TMP_PREFIX)));
    // A key whose record belongs to someone else is dropped on release, the record kept.
    fs::write(
        store
            .dir()
            .join(KEYS_DIR)
            .join(attachment_hash("liar", "eth0")),
        b"10.0.4.1",
    )
    .unwrap();
    assert_eq!(lock.release("liar", "eth0").unwrap(), None);
    assert_eq!(
        lock.find("alive", "eth0").unwrap().unwrap().ip.to_string(),
        "10.0.4.1"
    );
    drop(lock);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir("perm");
    let store = Store::open(&pool(&dir, "10.0.5.0/24", "10.0.5.1", "10.0.5.254")).unwrap();
    let lock = store.lock(LOCK_TIMEOUT).unwrap();
    let (r, _) = lock.allocate(&rec("p")).unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(store.dir()), 0o700);
    assert_eq!(mode(&store.dir().join(r.ip.to_string())), 0o600);
    assert_eq!(mode(&store.dir().join(LOCK_FILE)), 0o600);
    drop(lock);
    fs::remove_dir_all(&dir).unwrap();
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Random allocate/release sequences against a model: never two attachments on one
        /// address, a retried ADD keeps its address, exhaustion only when the pool is full.
        #[test]
        fn store_matches_model(ops in prop::collection::vec((any::<bool>(), 0u8..12), 1..80)) {
            let dir = tempdir(&format!("model-{}", rand_tag(&ops)));
            let store = Store::open(&pool(&dir, "10.9.0.0/29", "10.9.0.1", "10.9.0.6")).unwrap();
            let lock = store.lock(LOCK_TIMEOUT).unwrap();
            let mut model: HashMap<String, IpAddr> = HashMap::new();
            for (add, who) in ops {
                let cid = format!("c{who}");
                if add {
                    match lock.allocate(&rec(&cid)) {
                        Ok((r, reused)) => {
                            prop_assert_eq!(reused, model.contains_key(&cid));
                            if let Some(ip) = model.get(&cid) {
                                prop_assert_eq!(*ip, r.ip);
                            }
                            prop_assert!(!model.iter().any(|(c, ip)| *ip == r.ip && *c != cid), "address {} given twice", r.ip);
                            model.insert(cid, r.ip);
                        }
                        Err(e) => {
                            prop_assert_eq!(e.code, Code::PoolExhausted);
                            prop_assert_eq!(model.len(), 6);
                        }
                    }
                } else {
                    let released = lock.release(&cid, "eth0").unwrap().map(|r| r.ip);
                    prop_assert_eq!(released, model.remove(&cid));
                }
            }
            let mut stored: Vec<_> = lock.records().unwrap().into_iter().map(|r| (r.container_id, r.ip)).collect();
            let mut want: Vec<_> = model.into_iter().collect();
            stored.sort();
            want.sort();
            prop_assert_eq!(stored, want);
            drop(lock);
            fs::remove_dir_all(&dir).unwrap();
        }
    }

    fn rand_tag(ops: &[(bool, u8)]) -> u64 {
        ops.iter().fold(1469598103934665603u64, |h, (a, w)| {
            (h ^ (*a as u64 * 256 + *w as u64)).wrapping_mul(1099511628211)
        })
    }
}

#[test]
fn unreadable_records_keep_their_address_and_show_up() {
    let dir = tempdir("unreadable");
    let store = Store::open(&pool(&dir, "10.0.6.0/29", "10.0.6.1", "10.0.6.2")).unwrap();
    fs::write(store.dir().join("10.0.6.1"), b"not json").unwrap();
    let lock = store.lock(LOCK_TIMEOUT).unwrap();
    assert_eq!(
        lock.allocate(&rec("a")).unwrap().0.ip.to_string(),
        "10.0.6.2"
    );
    assert_eq!(
        lock.allocate(&rec("b")).unwrap_err().code,
        Code::PoolExhausted,
        "the unreadable record's address was handed out"
    );
    let (ok, bad) = lock.entries().unwrap();
    assert_eq!(ok.len(), 1);
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].ip.to_string(), "10.0.6.1");
    drop(lock);
    fs::remove_dir_all(&dir).unwrap();
}
