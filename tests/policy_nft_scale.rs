//! policy::nft at the benchmark size, against the real nft in a scratch namespace
//! (`ip netns exec <node> nft`: the host's ruleset is never touched): how long one apply of
//! 1,000 pods and 200 policies takes, first, unchanged and after a small change. Run with
//! `cargo test --test policy_nft_scale -- --include-ignored --nocapture` to see the figures.

use std::time::{Duration, Instant};

use routed_cni::policy::nft::Nft;
use routed_cni::policy::ruleset::{
    AddressSet, Chain, Peers, PortSet, PortSpec, Ports, Protocol, Rule, Ruleset,
};

mod common;
use common::World;

/// 1,000 pods and 200 policies, as the benchmark sizes them: 20 namespaces of 50 pods;
/// 150 ingress and 50 egress chains of 3 rules (pod peers on TCP ports, named ports, an
/// ipBlock); 200 address sets of 50 pods (both families) plus a /16; 20 named-port sets.
fn synthetic() -> Ruleset {
    use std::net::{Ipv4Addr, Ipv6Addr};
    let v4 = |i: usize| Ipv4Addr::new(10, 244, (i / 250) as u8, (i % 250 + 2) as u8);
    let v6 = |i: usize| Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, i as u16 + 2);
    let mut rs = Ruleset::default();
    for i in 0..1000 {
        let veth = format!("rcni{i:011x}");
        rs.pods
            .insert(veth.clone(), vec![v4(i).into(), v6(i).into()]);
        rs.ingress
            .insert(veth.clone(), format!("ing-{:012x}", i % 150));
        if i % 2 == 0 {
            rs.egress.insert(veth, format!("egr-{:012x}", i % 50));
        }
    }
    for s in 0..200 {
        let mut a = AddressSet::default();
        for k in 0..50 {
            let i = (s * 5 + k * 20) % 1000;
            a.v4.push((v4(i), v4(i)));
            a.v6.push((v6(i), v6(i)));
        }
        a.v4.push((
            Ipv4Addr::new(172, 16, 0, 0),
            Ipv4Addr::new(172, 16, 255, 255),
        ));
        rs.address_sets.insert(format!("peers-{s:012x}"), a);
    }
    for n in 0..20 {
        let mut p = PortSet::default();
        for k in 0..50 {
            let i = n * 50 + k;
            p.v4.insert((v4(i), Protocol::Tcp, 8080));
            p.v6.insert((v6(i), Protocol::Tcp, 8080));
        }
        rs.port_sets.insert(format!("web-{n:012x}"), p);
    }
    let ports = Ports::Listed(vec![
        PortSpec {
            protocol: Protocol::Tcp,
            range: Some((80, 80)),
        },
        PortSpec {
            protocol: Protocol::Tcp,
            range: Some((8000, 8090)),
        },
        PortSpec {
            protocol: Protocol::Udp,
            range: Some((53, 53)),
        },
    ]);
    for (prefix, count) in [("ing", 150), ("egr", 50)] {
        for c in 0..count {
            let set = |k: usize| Peers::Set(format!("peers-{:012x}", (c + k * 97) % 200));
            let rules = vec![
                Rule {
                    peers: set(0),
                    ports: ports.clone(),
                },
                Rule {
                    peers: set(1),
                    ports: Ports::Named(format!("web-{:012x}", c % 20)),
                },
                Rule {
                    peers: set(2),
                    ports: Ports::All,
                },
            ];
            let policies = vec![
                format!("ns-{}/allow-{c}", c % 20),
                format!("ns-{}/deny-{c}", c % 20),
            ];
            rs.chains
                .insert(format!("{prefix}-{c:012x}"), Chain { rules, policies });
        }
    }
    rs
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn apply_at_scale_is_one_transaction_of_bounded_time() {
    let w = World::bare("pnft", "scale");
    let nft = Nft::with_command(
        "ip",
        vec![
            "netns".to_string(),
            "exec".into(),
            w.node.clone(),
            "nft".into(),
        ],
    );
    let rs = synthetic();
    let first = nft.apply(&rs).unwrap();
    let again = nft.apply(&rs).unwrap();
    // One pod leaves, its chain changes; the steady-state sync of an agent.
    let mut changed = rs.clone();
    let gone = changed.pods.keys().next().unwrap().clone();
    changed.pods.remove(&gone);
    changed.ingress.remove(&gone);
    changed.egress.remove(&gone);
    changed.chains.remove("ing-000000000095");
    changed.ingress.retain(|_, c| c != "ing-000000000095");
    let update = nft.apply(&changed).unwrap();
    let start = Instant::now();
    let t = nft.read().unwrap().unwrap();
    let read = start.elapsed();
    eprintln!(
        "scale: {} chains, {} sets, {} rules, {} elements, batch {} KiB; apply: first {:?}, same again {:?}, one pod and chain less {:?}; read {:?}",
        first.chains, first.sets, first.rules, first.elements, first.batch_bytes / 1024,
        first.took, again.took, update.took, read
    );
    assert_eq!(t.pods.len(), 999);
    assert_eq!(t.chains.len(), 200, "199 policy chains and forward");
    assert_eq!(update.removed_chains, ["ing-000000000095".to_string()]);
    assert_eq!(t.ingress.len(), 999 - 1000 / 150);
    assert_eq!(t.sets["peers-000000000000-4"].len(), 51);
    // A budget, far above what this machine measures, so a regression to per-element nft
    // runs or quadratic rendering fails here.
    for a in [&first, &again, &update] {
        assert!(a.took < Duration::from_secs(10), "{a:?}");
    }
}
