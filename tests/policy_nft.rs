//! policy::nft against the real nft and kernel, with real packets: a scratch node namespace
//! with three pods (A, B, C: veth pairs whose host ends are named like ours, /32 and /128
//! routes, forwarding on), hand-built Rulesets applied to it, and TCP/UDP probes between the
//! pods. nft always runs as `ip netns exec <node> nft`: the host's ruleset is never touched.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use routed_cni::policy::nft::{Nft, PolicyError};
use routed_cni::policy::ruleset::{
    AddressSet, Chain, Peers, PortSet, PortSpec, Ports, Protocol, Rule, Ruleset,
};

mod common;
use common::{ip, run, run_ok, World};

const SERVER: &str = r#"
import socket, sys, threading
log, ready = sys.argv[1], sys.argv[2]
def sock(kind, port):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    return s
def tcp(s):
    s.listen(64)
    while True:
        c, _ = s.accept(); c.sendall(b"ok"); c.close()
def udp(s):
    while True:
        d, a = s.recvfrom(64)
        with open(log, "a") as f: f.write(a[0] + "\n")
        s.sendto(b"ok", a)
socks = [(tcp, sock(socket.SOCK_STREAM, p)) for p in (80, 81, 8080)] + [(udp, sock(socket.SOCK_DGRAM, 80))]
for f, s in socks: threading.Thread(target=f, args=(s,), daemon=True).start()
open(ready, "w").close()
threading.Event().wait()
"#;

/// Exit 0 when the server answered within the timeout. `src`: bind to that address first.
const PROBE: &str = r#"
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
src = sys.argv[4] if len(sys.argv) > 4 else None
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.settimeout(0.7)
if src: s.bind((src, 0))
try:
    if proto == "tcp": s.connect((host, port))
    else: s.sendto(b"ping", (host, port))
    sys.exit(0 if s.recv(16) == b"ok" else 1)
except OSError:
    sys.exit(1)
"#;

struct Pod {
    ns: String,
    veth: String,
    v4: String,
    v6: String,
}

/// The world, its pods and their servers (killed before the namespaces go).
struct Lab {
    pods: Vec<Pod>,
    servers: Vec<Child>,
    nft: Nft,
    w: World,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

impl Lab {
    fn new(test: &str) -> Lab {
        let mut w = World::bare("pnft", test);
        let node = w.node.clone();
        for s in [
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv4.conf.all.rp_filter=0",
        ] {
            run_ok("ip", &["netns", "exec", &node, "sysctl", "-qw", s]);
        }
        std::fs::write(w.dir.join("server.py"), SERVER).unwrap();
        std::fs::write(w.dir.join("probe.py"), PROBE).unwrap();
        let mut pods = Vec::new();
        let mut servers = Vec::new();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let ns = w.pod_ns(name);
            let veth = format!("rcni{:011x}", 0xa0 + i);
            let (v4, v6) = (
                format!("10.244.0.{}", i + 2),
                format!("fd00:244::{}", i + 2),
            );
            ip(&[
                "-n", &node, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            ip(&[
                "-n",
                &node,
                "addr",
                "add",
                "fe80::1/64",
                "dev",
                &veth,
                "nodad",
            ]);
            // The pods' gateway, on every host veth: the node answers ARP for it.
            ip(&["-n", &node, "addr", "add", "169.254.1.1/32", "dev", &veth]);
            ip(&["-n", &node, "link", "set", &veth, "up"]);
            ip(&[
                "-n",
                &node,
                "route",
                "add",
                &format!("{v4}/32"),
                "dev",
                &veth,
            ]);
            ip(&[
                "-n",
                &node,
                "-6",
                "route",
                "add",
                &format!("{v6}/128"),
                "dev",
                &veth,
            ]);
            ip(&["-n", &ns, "addr", "add", &format!("{v4}/32"), "dev", "eth0"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{v6}/128"),
                "dev",
                "eth0",
                "nodad",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "169.254.1.1",
                "dev",
                "eth0",
                "scope",
                "link",
            ]);
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                "169.254.1.1",
                "dev",
                "eth0",
            ]);
            ip(&[
                "-n", &ns, "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
            ]);
            let (log, ready) = (
                w.dir.join(format!("{name}.log")),
                w.dir.join(format!("{name}.ready")),
            );
            let server = Command::new("ip")
                .args(["netns", "exec", &ns, "python3"])
                .arg(w.dir.join("server.py"))
                .args([&log, &ready])
                .stdin(Stdio::null())
                .spawn()
                .expect("start server");
            servers.push(server);
            pods.push(Pod { ns, veth, v4, v6 });
        }
        let nft = Nft::with_command(
            "ip",
            vec!["netns".to_string(), "exec".into(), node, "nft".into()],
        );
        let lab = Lab {
            pods,
            servers,
            nft,
            w,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        for name in ["a", "b", "c"] {
            while !lab.w.dir.join(format!("{name}.ready")).exists() {
                assert!(
                    Instant::now() < deadline,
                    "server in pod {name} did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        lab
    }

    fn dir(&self) -> &Path {
        &self.w.dir
    }

    /// Does `from` get an answer from `to` over `proto` on `port` (IPv4, or IPv6 with `v6`)?
    fn reaches(&self, from: usize, to: usize, proto: &str, port: u16, v6: bool) -> bool {
        let t = &self.pods[to];
        let dst = if v6 { &t.v6 } else { &t.v4 };
        let probe: PathBuf = self.dir().join("probe.py");
        let out = run(
            "ip",
            &[
                "netns",
                "exec",
                &self.pods[from].ns,
                "python3",
                probe.to_str().unwrap(),
                proto,
                dst,
                &port.to_string(),
            ],
        );
        out.status.success()
    }

    /// Every pod of the lab in `pods`, with its addresses.
    fn pods_of(&self) -> BTreeMap<String, Vec<IpAddr>> {
        self.pods
            .iter()
            .map(|p| {
                (
                    p.veth.clone(),
                    vec![p.v4.parse().unwrap(), p.v6.parse().unwrap()],
                )
            })
            .collect()
    }

    fn set_of(&self, pods: &[usize]) -> AddressSet {
        let mut a = AddressSet::default();
        for &i in pods {
            let (v4, v6) = (
                self.pods[i].v4.parse().unwrap(),
                self.pods[i].v6.parse().unwrap(),
            );
            a.v4.push((v4, v4));
            a.v6.push((v6, v6));
        }
        a
    }

    fn nft_text(&self) -> String {
        run_ok(
            "ip",
            &["netns", "exec", &self.w.node, "nft", "list", "ruleset"],
        )
    }
}

fn chain(rules: Vec<Rule>) -> Chain {
    Chain {
        rules,
        policies: vec!["test/policy".into()],
    }
}

fn tcp(port: u16) -> Ports {
    Ports::Listed(vec![PortSpec {
        protocol: Protocol::Tcp,
        range: Some((port, port)),
    }])
}

/// `ingress` on B only: the pod isolated, with `rules`.
fn ingress_on_b(lab: &Lab, rules: Vec<Rule>) -> Ruleset {
    let mut rs = Ruleset {
        pods: lab.pods_of(),
        ..Ruleset::default()
    };
    rs.chains.insert("ing-b".into(), chain(rules));
    rs.ingress.insert(lab.pods[B].veth.clone(), "ing-b".into());
    rs
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn ingress_default_deny_lets_replies_out_and_allows_only_what_a_rule_names() {
    let lab = Lab::new("ingress");
    assert!(
        lab.reaches(A, B, "tcp", 80, false),
        "no path before any policy"
    );

    // Default deny: A -> B is dropped, B -> A and its replies pass.
    let applied = lab.nft.apply(&ingress_on_b(&lab, vec![])).unwrap();
    eprintln!("applied {applied:?}");
    assert!(!lab.reaches(A, B, "tcp", 80, false), "{}", lab.nft_text());
    assert!(!lab.reaches(A, B, "udp", 80, false));
    assert!(!lab.reaches(A, B, "tcp", 80, true), "IPv6 too");
    assert!(
        lab.reaches(B, A, "tcp", 80, false),
        "B's own connections and their replies pass"
    );
    assert!(lab.reaches(B, A, "udp", 80, true));
    assert!(
        lab.reaches(A, C, "tcp", 80, false),
        "C is selected by nothing"
    );

    // A's addresses on TCP 80 only.
    let mut rs = ingress_on_b(
        &lab,
        vec![Rule {
            peers: Peers::Set("from-a".into()),
            ports: tcp(80),
        }],
    );
    rs.address_sets.insert("from-a".into(), lab.set_of(&[A]));
    lab.nft.apply(&rs).unwrap();
    assert!(lab.reaches(A, B, "tcp", 80, false), "{}", lab.nft_text());
    assert!(
        lab.reaches(A, B, "tcp", 80, true),
        "A's IPv6 address is in the set too"
    );
    assert!(!lab.reaches(A, B, "tcp", 81, false));
    assert!(!lab.reaches(A, B, "udp", 80, false));
    assert!(!lab.reaches(C, B, "tcp", 80, false), "C is not in the set");

    // SCTP 80 allowed from everyone: TCP 80 is still not.
    let sctp = Ports::Listed(vec![PortSpec {
        protocol: Protocol::Sctp,
        range: Some((80, 80)),
    }]);
    lab.nft
        .apply(&ingress_on_b(
            &lab,
            vec![Rule {
                peers: Peers::All,
                ports: sctp,
            }],
        ))
        .unwrap();
    assert!(
        !lab.reaches(A, B, "tcp", 80, false),
        "an SCTP rule let TCP through: {}",
        lab.nft_text()
    );
    assert!(!lab.reaches(C, B, "tcp", 80, false));

    // A named port: B's "web" is TCP 8080 on B's IPv4 address.
    let mut rs = ingress_on_b(
        &lab,
        vec![Rule {
            peers: Peers::All,
            ports: Ports::Named("web".into()),
        }],
    );
    let mut web = PortSet::default();
    web.v4
        .insert((lab.pods[B].v4.parse().unwrap(), Protocol::Tcp, 8080));
    rs.port_sets.insert("web".into(), web);
    lab.nft.apply(&rs).unwrap();
    assert!(lab.reaches(A, B, "tcp", 8080, false), "{}", lab.nft_text());
    assert!(lab.reaches(C, B, "tcp", 8080, false));
    assert!(!lab.reaches(A, B, "tcp", 80, false));
    assert!(
        !lab.reaches(A, B, "tcp", 8080, true),
        "no IPv6 entry for web"
    );
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn a_chain_of_many_rules_is_one_lookup_that_allows_the_same() {
    let lab = Lab::new("lookup");
    // Ten rules, as ten policies each allowing their own port would give: A on TCP 72-80, one
    // port per rule; C on UDP 80 and TCP 80, overlapping A's rule for TCP 80.
    let mut rules: Vec<Rule> = (72..=80)
        .map(|port| Rule {
            peers: Peers::Set("from-a".into()),
            ports: tcp(port),
        })
        .collect();
    rules.push(Rule {
        peers: Peers::Set("from-c".into()),
        ports: Ports::Listed(vec![
            PortSpec {
                protocol: Protocol::Udp,
                range: Some((80, 80)),
            },
            PortSpec {
                protocol: Protocol::Tcp,
                range: Some((80, 80)),
            },
        ]),
    });
    let mut rs = ingress_on_b(&lab, rules);
    rs.address_sets.insert("from-a".into(), lab.set_of(&[A]));
    rs.address_sets.insert("from-c".into(), lab.set_of(&[C]));
    lab.nft.apply(&rs).unwrap();
    let text = lab.nft_text();
    assert!(
        text.contains("ing-b-l4") && text.contains("ing-b-l6"),
        "no lookup sets: {text}"
    );
    assert!(lab.reaches(A, B, "tcp", 80, false), "{text}");
    assert!(
        lab.reaches(A, B, "tcp", 80, true),
        "IPv6 through the -l6 set"
    );
    assert!(!lab.reaches(A, B, "tcp", 81, false));
    assert!(!lab.reaches(A, B, "udp", 80, false), "UDP 80 is C's only");
    assert!(lab.reaches(C, B, "udp", 80, false));
    assert!(lab.reaches(C, B, "tcp", 80, false));
    assert!(!lab.reaches(C, B, "tcp", 81, false));
    // Reading the table back copes with the concatenated ranges (apply's retry path reads it).
    let installed = lab.nft.read().unwrap().expect("the table is there");
    assert!(
        installed.sets.contains_key("ing-b-l4"),
        "{:?}",
        installed.sets.keys()
    );
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn egress_chain_limits_where_a_pod_may_connect() {
    let lab = Lab::new("egress");
    let mut rs = Ruleset {
        pods: lab.pods_of(),
        ..Ruleset::default()
    };
    rs.chains.insert(
        "egr-a".into(),
        chain(vec![Rule {
            peers: Peers::Set("to-b".into()),
            ports: Ports::All,
        }]),
    );
    rs.address_sets.insert("to-b".into(), lab.set_of(&[B]));
    rs.egress.insert(lab.pods[A].veth.clone(), "egr-a".into());
    lab.nft.apply(&rs).unwrap();
    assert!(lab.reaches(A, B, "tcp", 80, false));
    assert!(lab.reaches(A, B, "udp", 80, true));
    assert!(!lab.reaches(A, C, "tcp", 80, false), "{}", lab.nft_text());
    assert!(!lab.reaches(A, C, "udp", 80, true));
    assert!(
        lab.reaches(C, A, "tcp", 80, false),
        "egress does not limit A's replies"
    );
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn pending_holds_a_pod_back_until_apply_lists_it() {
    let lab = Lab::new("pending");
    let c = lab.pods[C].veth.clone();
    assert!(
        !lab.nft.mark_pending(&c).unwrap(),
        "no table: nothing to mark"
    );
    assert!(
        lab.nft.read().unwrap().is_none(),
        "mark_pending must not create the table"
    );

    // The agent knows A and B only; ADD then marks C.
    let mut rs = Ruleset {
        pods: lab.pods_of(),
        ..Ruleset::default()
    };
    rs.pods.remove(&c);
    lab.nft.apply(&rs).unwrap();
    assert!(lab.nft.mark_pending(&c).unwrap());
    assert!(!lab.reaches(A, C, "tcp", 80, false), "{}", lab.nft_text());
    assert!(!lab.reaches(C, A, "tcp", 80, false));
    assert!(lab.reaches(A, B, "tcp", 80, false), "only C is held back");

    // Another apply that does not list C keeps it pending (pending is never flushed) ...
    lab.nft.apply(&rs).unwrap();
    assert!(lab.nft.read().unwrap().unwrap().pending.contains(&c));
    assert!(!lab.reaches(A, C, "tcp", 80, false));
    // ... and one that lists C lets it go, leaving another pending veth alone.
    assert!(lab.nft.mark_pending("rcni0000000000f").unwrap());
    lab.nft
        .apply(&Ruleset {
            pods: lab.pods_of(),
            ..Ruleset::default()
        })
        .unwrap();
    let installed = lab.nft.read().unwrap().unwrap();
    assert_eq!(installed.pending, ["rcni0000000000f".to_string()].into());
    assert!(lab.reaches(A, C, "tcp", 80, false), "{}", lab.nft_text());
    assert!(lab.reaches(C, A, "tcp", 80, false));
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn a_pod_cannot_send_with_another_pods_source_address() {
    let lab = Lab::new("spoof");
    let (a, c) = (&lab.pods[A], &lab.pods[C]);
    // A takes C's address too, so the kernel lets it send from it, out of A's veth.
    ip(&[
        "-n",
        &a.ns,
        "addr",
        "add",
        &format!("{}/32", c.v4),
        "dev",
        "eth0",
    ]);
    let sent_from_c = |tag: &str| {
        let probe = lab.dir().join("probe.py");
        let probe = probe.to_str().unwrap();
        let _ = run(
            "ip",
            &[
                "netns",
                "exec",
                &a.ns,
                "python3",
                probe,
                "udp",
                &lab.pods[B].v4,
                "80",
                &c.v4,
            ],
        );
        std::thread::sleep(Duration::from_millis(200));
        let log = std::fs::read_to_string(lab.dir().join("b.log")).unwrap_or_default();
        eprintln!("{tag}: b.log = {log:?}");
        log.lines().filter(|l| l.ends_with(&c.v4)).count()
    };
    assert_eq!(
        sent_from_c("no table"),
        1,
        "without anti-spoof the forged packet reaches B"
    );
    lab.nft
        .apply(&Ruleset {
            pods: lab.pods_of(),
            ..Ruleset::default()
        })
        .unwrap();
    assert_eq!(
        sent_from_c("anti-spoof"),
        1,
        "the forged packet got through: {}",
        lab.nft_text()
    );
    assert!(
        lab.reaches(A, B, "udp", 80, false),
        "A's own address still passes"
    );
    assert!(lab.reaches(A, B, "tcp", 80, true));
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn reapply_removes_what_is_gone_and_remove_table_leaves_nothing() {
    let lab = Lab::new("reapply");
    let mut rs = ingress_on_b(
        &lab,
        vec![Rule {
            peers: Peers::Set("from-a".into()),
            ports: tcp(80),
        }],
    );
    rs.address_sets.insert("from-a".into(), lab.set_of(&[A]));
    rs.chains.insert("egr-c".into(), chain(vec![]));
    rs.egress.insert(lab.pods[C].veth.clone(), "egr-c".into());
    lab.nft.apply(&rs).unwrap();
    let t = lab.nft.read().unwrap().unwrap();
    assert!(t.chains.contains_key("ing-b") && t.chains.contains_key("egr-c"));
    assert_eq!(
        t.chains["ing-b"].comment.as_deref(),
        Some("policies: test/policy")
    );
    assert_eq!(t.sets["from-a-4"], [lab.pods[A].v4.clone()]);
    assert_eq!(t.egress[&lab.pods[C].veth], "egr-c");
    assert_eq!(t.pods, lab.pods_of());
    assert!(!lab.reaches(C, A, "tcp", 80, false));

    // Same again: nothing changes (idempotent). A chain that did not change is not rewritten,
    // so its drop counter keeps counting (the probe above was dropped there).
    let again = lab.nft.apply(&rs).unwrap();
    assert!(again.removed_chains.is_empty() && again.removed_sets.is_empty());
    let now = lab.nft.read().unwrap().unwrap();
    assert!(
        now.chains["egr-c"]
            .dropped
            .is_some_and(|(packets, _)| packets >= 1),
        "the drop counter was reset: {:?}",
        now.chains["egr-c"]
    );
    let counters_aside = |mut i: routed_cni::policy::nft::Installed| {
        i.chains.values_mut().for_each(|c| c.dropped = None);
        i
    };
    assert_eq!(counters_aside(now), counters_aside(t));

    // C's chain and the address set go.
    let mut fewer = ingress_on_b(&lab, vec![]);
    fewer.pods = rs.pods.clone();
    let applied = lab.nft.apply(&fewer).unwrap();
    assert_eq!(applied.removed_chains, ["egr-c".to_string()]);
    assert_eq!(
        applied.removed_sets,
        ["from-a-4".to_string(), "from-a-6".into()]
    );
    let t = lab.nft.read().unwrap().unwrap();
    assert!(
        !t.chains.contains_key("egr-c") && t.egress.is_empty(),
        "{t:?}"
    );
    assert!(!t.sets.contains_key("from-a-4"));
    assert!(
        lab.reaches(C, A, "tcp", 80, false),
        "C's egress chain is gone"
    );
    assert!(!lab.reaches(A, B, "tcp", 80, false));

    // The table deleted behind our back: what the last apply left (egr-c) is gone, and the
    // next apply, which would delete it, lists the table again and succeeds.
    lab.nft.apply(&rs).unwrap();
    run_ok(
        "ip",
        &[
            "netns",
            "exec",
            &lab.w.node,
            "nft",
            "delete table inet routed-cni",
        ],
    );
    let applied = lab.nft.apply(&fewer).unwrap();
    assert!(applied.removed_chains.is_empty(), "{applied:?}");
    assert!(!lab.reaches(A, B, "tcp", 80, false));

    assert!(lab.nft.remove_table().unwrap());
    assert!(!lab.nft.remove_table().unwrap(), "nothing left to remove");
    let tables = run_ok(
        "ip",
        &["netns", "exec", &lab.w.node, "nft", "list", "tables"],
    );
    assert_eq!(tables.trim(), "", "tables left: {tables}");
    assert!(lab.nft.read().unwrap().is_none());
    assert!(lab.reaches(A, B, "tcp", 80, false));
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn a_refused_batch_changes_nothing_and_says_why() {
    let lab = Lab::new("refused");
    lab.nft.apply(&ingress_on_b(&lab, vec![])).unwrap();
    // Someone made a set by hand whose name our next Ruleset needs with another type: nft
    // refuses the whole batch, including the rule it would have let A through with.
    let stray = "add set inet routed-cni from-a-4 { type ifname; }";
    run_ok("ip", &["netns", "exec", &lab.w.node, "nft", stray]);
    let before = lab.nft.read().unwrap().unwrap();
    let mut rs = ingress_on_b(
        &lab,
        vec![Rule {
            peers: Peers::Set("from-a".into()),
            ports: Ports::All,
        }],
    );
    rs.address_sets.insert("from-a".into(), lab.set_of(&[A]));
    match lab.nft.apply(&rs) {
        Err(e @ PolicyError::Failed { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("Error:") && msg.contains("nothing was changed"),
                "{msg}"
            );
        }
        other => panic!("expected nft to refuse the batch, got {other:?}"),
    }
    assert_eq!(lab.nft.read().unwrap().unwrap(), before);
    assert!(
        !lab.reaches(A, B, "tcp", 80, false),
        "the old rules stay in force"
    );

    // Not nft at all: error values, not panics.
    let node = lab.w.node.clone();
    let broken = Nft::with_command(
        "ip",
        vec!["netns".to_string(), "exec".into(), node, "false".into()],
    );
    match broken.apply(&rs) {
        Err(PolicyError::Failed { stderr, .. }) => {
            assert!(stderr.contains("exit status"), "{stderr}")
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    let gone = Nft::with_command("/nonexistent/nft", Vec::<String>::new());
    assert!(matches!(gone.apply(&rs), Err(PolicyError::Exec { .. })));
}
