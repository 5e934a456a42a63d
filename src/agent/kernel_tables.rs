//! The kernel tables a large cluster fills, and their limits: checked after each route sync,
//! raised (never lowered) when too low, or reported in the log and /readyz's text when the
//! agent cannot or may not raise them (`--kernel-tables=report`).
//!
//! What fills them (facts checked against the kernel source):
//! - The neighbour tables (ARP for IPv4, NDP for IPv6). Every node reached by a direct route
//!   on a shared link is the gateway of that route: one dynamic entry for its InternalIP on the
//!   uplink once traffic flows; in vxlan mode the same for each tunnel's underlay address (the
//!   outer packets go to it directly when the nodes share a link). Every local pod is one
//!   dynamic entry on its host veth. A new dynamic entry beyond gc_thresh3 (default 1024) is
//!   refused ("neighbor table overflow", packets dropped), and above gc_thresh2 (512) every new
//!   entry first runs a forced GC when the last one is 5 s old, evicting entries unused for
//!   5 s (a re-resolution, so a latency spike, for a peer in use).
//!   `neigh_alloc` compares `tbl->gc_entries` with the thresholds, and since Linux 4.19
//!   ("neighbor: Improve garbage collection") entries added as NUD_PERMANENT (our VXLAN
//!   tunnel entries, the pods' entries for their gateway) or externally learned are
//!   `exempt_from_gc` and not counted; before 4.19 every entry counted, so there they are
//!   added to the need.
//! - The tables are one per family for the whole host, every network namespace included (the
//!   pods' namespaces count too), and their `default` sysctls (gc_thresh1..3) exist only in the
//!   host's namespace: `arp_init` registers them once, for the table's own parms; a child
//!   namespace has only the per-device directories, which stop before the gc_* entries. So the
//!   agent can raise them only with hostNetwork; elsewhere (a test namespace) it cannot even
//!   read them, and says so only when the kernel defaults would not do.
//! - `net.ipv6.route.max_size` is per network namespace. Before Linux 6.3 it bounded the IPv6
//!   dst cache (default 4096; every route in use has a dst per CPU) and beyond it new routes'
//!   dsts failed ("Route cache is full"); 6.3 ("ipv6: remove max_size check inline with
//!   ipv4") dropped the check and made the default INT_MAX, so on current kernels it is
//!   already far above any target and nothing is written. IPv4 has no such limit (its route
//!   cache went in 3.6; net.ipv4.route.max_size is a leftover).
//!
//! The targets (per family, `need` = dynamic entries expected):
//! - gc_thresh3 ≥ 2 × need: the hard limit must leave room for what is not ours to count
//!   (entries for the node's default gateway, DNS, the API server, other hosts on the link,
//!   incomplete and failed entries awaiting GC, pods coming and going).
//! - gc_thresh2 ≥ need: the steady state stays under the soft limit, so forced GC does not run
//!   at every new entry; above it, forced GC evicts only unreferenced entries unused for 5 s
//!   (idle peers, resolved again when used), so the limit needs no headroom of its own, and the
//!   defaults then hold exactly as long as gc_thresh3's (need ≤ 512). gc_thresh3 is raised
//!   first so the order 2 ≤ 3 always holds.
//! - gc_thresh1 is left alone: it is the floor under which the periodic GC keeps even stale
//!   entries; raising it only keeps dead entries longer.
//! - Rounded up to a multiple of 256, so a growing cluster writes rarely (every ~100 nodes),
//!   not at each join, and the kernel defaults hold for small clusters.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnetwork::IpNetwork;

use super::health::Health;
use super::routes::{self, Plan};
use super::tunnel::Encapsulation;

/// Whether the agent may write the limits it finds too low.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TablesMode {
    /// Raise what is too low, log it.
    #[default]
    Raise,
    /// Only say what is too low (a node whose sysctls another tool owns).
    Report,
}

impl FromStr for TablesMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raise" => Ok(TablesMode::Raise),
            "report" => Ok(TablesMode::Report),
            _ => Err(format!("{s:?} is not raise or report")),
        }
    }
}

/// What one family's tables must hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FamilyNeed {
    /// Other nodes this node resolves on a shared link (direct routes' gateways; tunnel
    /// underlays in vxlan mode).
    pub peers: usize,
    /// Local pods: one entry each on its host veth.
    pub pods: usize,
    /// Permanent entries (VXLAN tunnel addresses): counted only before Linux 4.19.
    pub permanent: usize,
    /// Routes the agent keeps (for IPv6's route/max_size on kernels before 6.3).
    pub routes: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub v4: FamilyNeed,
    pub v6: FamilyNeed,
}

/// What of the running kernel changes the arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel {
    /// Before 4.19, permanent entries count toward the thresholds.
    pub counts_permanent: bool,
    pub cpus: usize,
}

/// A limit below its target. `current` is `None` when it could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: &'static str,
    pub current: Option<u64>,
    pub target: u64,
    pub why: String,
}

/// The limits, their kernel defaults (what an unreadable one is assumed to be) and how each
/// target follows from the family's need.
struct Limit {
    key: &'static str,
    default: u64,
    v6: bool,
    target: fn(&FamilyNeed, Kernel) -> u64,
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

fn entries(n: &FamilyNeed, k: Kernel) -> u64 {
    (n.peers + n.pods + if k.counts_permanent { n.permanent } else { 0 }) as u64
}

const LIMITS: [Limit; 5] = [
    // Each family's thresh3 before its thresh2: 2 <= 3 holds between the writes.
    Limit {
        key: "net.ipv4.neigh.default.gc_thresh3",
        default: 1024,
        v6: false,
        target: |n, k| round_up(2 * entries(n, k), 256),
    },
    Limit {
        key: "net.ipv4.neigh.default.gc_thresh2",
        default: 512,
        v6: false,
        target: |n, k| round_up(entries(n, k), 256),
    },
    Limit {
        key: "net.ipv6.neigh.default.gc_thresh3",
        default: 1024,
        v6: true,
        target: |n, k| round_up(2 * entries(n, k), 256),
    },
    Limit {
        key: "net.ipv6.neigh.default.gc_thresh2",
        default: 512,
        v6: true,
        target: |n, k| round_up(entries(n, k), 256),
    },
    // Twice the dsts of every route in use on every CPU (the pre-6.3 dst cache).
    Limit {
        key: "net.ipv6.route.max_size",
        default: 4096,
        v6: true,
        target: |n, k| round_up(2 * ((n.routes + n.pods) * k.cpus.max(1)) as u64, 1024),
    },
];

/// The limits below their targets, in the order to raise them. `current` has each key's value
/// where it could be read; an unreadable one is taken to be the kernel default.
pub fn decide(needs: &Needs, current: &BTreeMap<&str, u64>, kernel: Kernel) -> Vec<Change> {
    let mut out = Vec::new();
    for l in &LIMITS {
        let need = if l.v6 { &needs.v6 } else { &needs.v4 };
        let target = (l.target)(need, kernel);
        let have = current.get(l.key).copied();
        if have.unwrap_or(l.default) >= target {
            continue;
        }
        let why = if l.key.ends_with("max_size") {
            format!(
                "{} IPv6 route(s) and {} pod(s) on {} CPU(s)",
                need.routes, need.pods, kernel.cpus
            )
        } else {
            format!(
                "{} neighbour entries expected: {} node(s) on a shared link, {} local pod(s){}",
                entries(need, kernel),
                need.peers,
                need.pods,
                if kernel.counts_permanent {
                    format!(
                        ", {} permanent VXLAN entries (counted before Linux 4.19)",
                        need.permanent
                    )
                } else {
                    String::new()
                }
            )
        };
        out.push(Change {
            key: l.key,
            current: have,
            target,
            why,
        });
    }
    out
}

/// What the plan puts in the tables. `local_pods`: this node's pods (host veths);
/// `own_subnets`: its podCIDRs (a family without one has no pods).
pub fn needs(
    plan: &Plan,
    mode: Encapsulation,
    own_subnets: &[IpNetwork],
    local_pods: usize,
) -> Needs {
    let mut peers: [std::collections::BTreeSet<IpAddr>; 2] = Default::default();
    let mut out = Needs::default();
    let slot = |ip: &IpAddr| usize::from(ip.is_ipv6());
    for r in plan.routes.values() {
        if r.path == routes::Path::Direct {
            peers[slot(&r.via)].insert(r.via);
        }
        if r.dst.is_ipv6() {
            out.v6.routes += 1;
        } else {
            out.v4.routes += 1;
        }
    }
    for p in plan.vxlan_peers.values() {
        if mode == Encapsulation::Vxlan {
            peers[slot(&p.underlay)].insert(p.underlay);
        }
        for t in &p.tunnels {
            if t.is_ipv6() {
                out.v6.permanent += 1;
            } else {
                out.v4.permanent += 1;
            }
        }
    }
    out.v4.peers = peers[0].len();
    out.v6.peers = peers[1].len();
    if own_subnets.iter().any(|s| s.is_ipv4()) {
        out.v4.pods = local_pods;
    }
    if own_subnets.iter().any(|s| s.is_ipv6()) {
        out.v6.pods = local_pods;
    }
    out
}

/// This network namespace's host veths of ours (/proc/self/net/dev lists the process's own
/// namespace's links, whatever /sys shows).
pub fn local_pods() -> usize {
    let Ok(text) = std::fs::read_to_string("/proc/self/net/dev") else {
        return 0;
    };
    text.lines()
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim()))
        .filter(|name| {
            crate::dataplane::owned::is_our_veth_name(name, crate::config::DEFAULT_HOST_VETH_PREFIX)
        })
        .count()
}

impl Kernel {
    pub fn running() -> Kernel {
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let cpus = std::fs::read_to_string("/proc/stat")
            .map(|s| {
                s.lines()
                    .filter(|l| {
                        l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit)
                    })
                    .count()
            })
            .unwrap_or(1);
        Kernel {
            counts_permanent: version(&release).is_some_and(|v| v < (4, 19)),
            cpus: cpus.max(1),
        }
    }
}

/// (major, minor) of a release string such as "6.18.44-fc-v595".
fn version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Checks the limits after each route sync; remembers what it said so a standing problem is
/// logged once.
pub struct KernelTables {
    mode: TablesMode,
    /// /proc/sys; a directory of the same layout in tests.
    root: PathBuf,
    kernel: Kernel,
    /// The limits (and targets) of the problems last logged: the text carries counts that
    /// move with every node that joins, the targets only every 256 entries.
    said: Vec<(&'static str, u64)>,
}

fn sysctl_path(root: &Path, key: &str) -> PathBuf {
    root.join(key.replace('.', "/"))
}

impl KernelTables {
    pub fn new(mode: TablesMode) -> KernelTables {
        KernelTables::at(mode, PathBuf::from("/proc/sys"), Kernel::running())
    }

    pub fn at(mode: TablesMode, root: PathBuf, kernel: Kernel) -> KernelTables {
        KernelTables {
            mode,
            root,
            kernel,
            said: Vec::new(),
        }
    }

    /// Reads the limits (a few small files), raises what is too low (in raise mode) and tells
    /// `health` what is still too low and why.
    pub fn check(&mut self, needs: &Needs, health: &Health) {
        let mut current = BTreeMap::new();
        let mut unreadable = BTreeMap::new();
        for l in &LIMITS {
            let path = sysctl_path(&self.root, l.key);
            match std::fs::read_to_string(&path) {
                Ok(v) => match v.trim().parse::<u64>() {
                    Ok(n) => {
                        current.insert(l.key, n);
                    }
                    Err(_) => {
                        unreadable.insert(l.key, format!("{:?} is not a number", v.trim()));
                    }
                },
                Err(e) => {
                    unreadable.insert(l.key, e.to_string());
                }
            }
        }
        let mut problems = Vec::new();
        let mut standing = Vec::new();
        for c in decide(needs, &current, self.kernel) {
            let key = (c.key, c.target);
            let Some(have) = c.current else {
                standing.push(key);
                let e = unreadable
                    .get(c.key)
                    .map(String::as_str)
                    .unwrap_or("unreadable");
                problems.push(format!(
                    "{} should be at least {} ({}) but cannot be read here ({e}){}",
                    c.key,
                    c.target,
                    c.why,
                    if c.key.contains(".neigh.") {
                        ": the neighbour tables' limits exist only in the host's network namespace (run the agent with hostNetwork, or set them on the node)"
                    } else {
                        ""
                    }
                ));
                continue;
            };
            if self.mode == TablesMode::Report {
                standing.push(key);
                problems.push(format!(
                    "{} is {have}, below {} ({}); not raised (--kernel-tables=report)",
                    c.key, c.target, c.why
                ));
                continue;
            }
            match std::fs::write(sysctl_path(&self.root, c.key), format!("{}\n", c.target)) {
                Ok(()) => crate::info!("raised {} from {have} to {}: {}", c.key, c.target, c.why),
                Err(e) => {
                    standing.push(key);
                    problems.push(format!(
                    "{} is {have}, below {} ({}), and could not be raised: {e}{}",
                    c.key,
                    c.target,
                    c.why,
                    // The DaemonSet's container is not privileged: its /proc/sys is read-only.
                    if e.raw_os_error() == Some(nix::libc::EROFS) {
                        " (/proc/sys is read-only in an unprivileged container: set it on the node, e.g. in /etc/sysctl.d)"
                    } else {
                        ""
                    }
                ));
                }
            }
        }
        let text =
            (!problems.is_empty()).then(|| format!("kernel tables: {}", problems.join("; ")));
        if standing != self.said {
            match &text {
                Some(t) => crate::warn!("{t}"),
                None => crate::info!("kernel tables: every limit is enough again"),
            }
            self.said = standing;
        }
        health.kernel_tables_problem(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const NOW: Kernel = Kernel {
        counts_permanent: false,
        cpus: 2,
    };

    fn family(peers: usize, pods: usize) -> FamilyNeed {
        FamilyNeed {
            peers,
            pods,
            ..Default::default()
        }
    }

    fn defaults() -> BTreeMap<&'static str, u64> {
        [
            ("net.ipv4.neigh.default.gc_thresh2", 512),
            ("net.ipv4.neigh.default.gc_thresh3", 1024),
            ("net.ipv6.neigh.default.gc_thresh2", 512),
            ("net.ipv6.neigh.default.gc_thresh3", 1024),
            ("net.ipv6.route.max_size", i32::MAX as u64),
        ]
        .into()
    }

    #[test]
    fn small_clusters_need_nothing_raised() {
        // The e2e and bench worlds: a few nodes, a few pods; and a /24's worth of pods.
        // Up to 512 entries the defaults (512, 1024) hold.
        for need in [family(2, 3), family(100, 110), family(402, 110)] {
            let needs = Needs { v4: need, v6: need };
            assert_eq!(decide(&needs, &defaults(), NOW), vec![], "{need:?}");
            // Unreadable (a test namespace): assumed default, still nothing to say.
            assert_eq!(decide(&needs, &BTreeMap::new(), NOW), vec![], "{need:?}");
        }
    }

    #[test]
    fn thousands_of_direct_peers_raise_thresh3_then_thresh2() {
        let needs = Needs {
            v4: family(1000, 110),
            v6: FamilyNeed::default(),
        };
        // One entry past the defaults: both limits move.
        let past = Needs {
            v4: family(403, 110),
            ..needs
        };
        assert_eq!(decide(&past, &defaults(), NOW).len(), 2);
        let c = decide(&needs, &defaults(), NOW);
        let got: Vec<_> = c.iter().map(|c| (c.key, c.current, c.target)).collect();
        // 1110 entries: 2220 -> 2304; 1110 -> 1280.
        assert_eq!(
            got,
            vec![
                ("net.ipv4.neigh.default.gc_thresh3", Some(1024), 2304),
                ("net.ipv4.neigh.default.gc_thresh2", Some(512), 1280),
            ]
        );
        assert!(
            c[0].why.contains("1110 neighbour entries") && c[0].why.contains("1000 node(s)"),
            "{}",
            c[0].why
        );
        // Never lowered: an operator's larger values stand.
        let mut big = defaults();
        big.insert("net.ipv4.neigh.default.gc_thresh3", 65536);
        big.insert("net.ipv4.neigh.default.gc_thresh2", 32768);
        assert_eq!(decide(&needs, &big, NOW), vec![]);
        // One more node does not move the targets (no write per join).
        let plus_one = Needs {
            v4: family(1001, 110),
            ..needs
        };
        let again: Vec<_> = decide(&plus_one, &defaults(), NOW)
            .iter()
            .map(|c| c.target)
            .collect();
        assert_eq!(again, vec![2304, 1280]);
    }

    #[test]
    fn permanent_entries_count_only_on_old_kernels() {
        let v = FamilyNeed {
            peers: 10,
            pods: 10,
            permanent: 5000,
            routes: 5000,
        };
        let needs = Needs {
            v4: v,
            v6: FamilyNeed::default(),
        };
        assert_eq!(decide(&needs, &defaults(), NOW), vec![]);
        let old = Kernel {
            counts_permanent: true,
            cpus: 2,
        };
        let c = decide(&needs, &defaults(), old);
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(c[0].why.contains("permanent VXLAN"), "{}", c[0].why);
        assert_eq!(version("4.14.336-1"), Some((4, 14)));
        assert_eq!(version("6.18.44-fc-v595"), Some((6, 18)));
        assert_eq!(version("garbage"), None);
    }

    #[test]
    fn ipv6_route_max_size_only_below_its_target() {
        let needs = Needs {
            v4: FamilyNeed::default(),
            v6: FamilyNeed {
                routes: 3000,
                ..Default::default()
            },
        };
        // Today's default (INT_MAX since 6.3): nothing.
        assert_eq!(decide(&needs, &defaults(), NOW), vec![]);
        // An old kernel's 4096: 3000 routes on 2 CPUs want 12288.
        let mut old = defaults();
        old.insert("net.ipv6.route.max_size", 4096);
        let c = decide(&needs, &old, NOW);
        assert_eq!(
            c.iter().map(|c| (c.key, c.target)).collect::<Vec<_>>(),
            vec![("net.ipv6.route.max_size", 12288)]
        );
    }

    #[test]
    fn needs_from_the_plan() {
        use crate::agent::kube::NodeInfo;
        use crate::agent::routes::{plan, Reach};
        let node = |name: &str, cidrs: &[&str], ips: &[&str]| {
            (
                name.to_string(),
                NodeInfo {
                    name: name.into(),
                    pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
                    internal_ips: ips.iter().map(|c| c.parse().unwrap()).collect(),
                    problems: vec![],
                    network_unavailable: None,
                },
            )
        };
        let nodes: BTreeMap<_, _> = [
            node(
                "a",
                &["10.244.1.0/24", "fd00:10:244:1::/64"],
                &["100.64.0.1", "fd00:64::1"],
            ),
            node(
                "b",
                &["10.244.2.0/24", "fd00:10:244:2::/64"],
                &["100.64.0.2", "fd00:64::2"],
            ),
            node("c", &["10.244.3.0/24"], &["100.64.0.3"]),
        ]
        .into();
        let p = plan(&nodes, "a", &Reach::default());
        let own = nodes["a"].pod_cidrs.clone();
        let n = needs(&p, Encapsulation::Never, &own, 7);
        assert_eq!(
            n.v4,
            FamilyNeed {
                peers: 2,
                pods: 7,
                permanent: 0,
                routes: 2
            }
        );
        assert_eq!(
            n.v6,
            FamilyNeed {
                peers: 1,
                pods: 7,
                permanent: 0,
                routes: 1
            }
        );
        // An IPv4-only node has no IPv6 pods to count.
        let v4only = needs(&p, Encapsulation::Never, &own[..1], 7);
        assert_eq!(v4only.v6.pods, 0);
    }

    /// The write path, against a directory laid out like /proc/sys (never the real one: the
    /// neighbour limits are the host's).
    #[test]
    fn raises_reports_and_says_why_it_cannot() {
        let dir = std::env::temp_dir().join(format!("rcni-kt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (key, v) in defaults() {
            let p = sysctl_path(&dir, key);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, format!("{v}\n")).unwrap();
        }
        let read = |key: &str| {
            std::fs::read_to_string(sysctl_path(&dir, key))
                .unwrap()
                .trim()
                .to_string()
        };
        let needs = Needs {
            v4: family(2000, 50),
            v6: FamilyNeed::default(),
        };
        let h = Health::new(Duration::from_secs(60), Duration::from_secs(10));
        let ready = |h: &Health| {
            h.api_answered();
            h.installed("x".into());
            h.synced(vec![]);
            h.ready()
        };
        // Report: nothing written, the reason in /readyz's text, still ready.
        let mut t = KernelTables::at(TablesMode::Report, dir.clone(), NOW);
        t.check(&needs, &h);
        assert_eq!(read("net.ipv4.neigh.default.gc_thresh3"), "1024");
        let (ok, why) = ready(&h);
        assert!(
            ok && why.contains("gc_thresh3 is 1024, below 4352") && why.contains("report"),
            "{why}"
        );
        // One more node: the text follows, the log does not repeat (same limits and targets).
        let said = t.said.clone();
        assert_eq!(said.len(), 2, "{said:?}");
        let plus_one = Needs {
            v4: family(2001, 50),
            ..needs
        };
        t.check(&plus_one, &h);
        assert_eq!(t.said, said);
        assert!(
            ready(&h).1.contains("2051 neighbour entries"),
            "{:?}",
            ready(&h)
        );
        // Raise: written, thresh3 first; nothing left to say.
        let mut t = KernelTables::at(TablesMode::Raise, dir.clone(), NOW);
        t.check(&needs, &h);
        assert_eq!(read("net.ipv4.neigh.default.gc_thresh3"), "4352");
        assert_eq!(read("net.ipv4.neigh.default.gc_thresh2"), "2304");
        assert_eq!(
            read("net.ipv6.neigh.default.gc_thresh3"),
            "1024",
            "IPv6 needs nothing"
        );
        assert!(!ready(&h).1.contains("kernel tables"), "{:?}", ready(&h));
        // Fewer nodes later: never lowered.
        t.check(&Needs::default(), &h);
        assert_eq!(read("net.ipv4.neigh.default.gc_thresh3"), "4352");
        // Gone (a child network namespace has no neigh/default): said, with what to do.
        std::fs::remove_dir_all(dir.join("net/ipv4/neigh")).unwrap();
        let bigger = Needs {
            v4: family(4000, 50),
            ..needs
        };
        t.check(&bigger, &h);
        let (ok, why) = ready(&h);
        assert!(
            ok && why.contains("cannot be read here") && why.contains("hostNetwork"),
            "{why}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
