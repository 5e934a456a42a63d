//! The evaluator on rule sets as `iptables -v -S` prints them: Docker's, ufw's, kube-proxy's
//! and ours, against the pod's packets.

use super::*;

const POOL: &str = "10.244.1.0/24";

fn set(text: &str) -> Ruleset {
    from_listing(&Listing::parse(text))
}

/// pod 10.244.1.5 on rcni0123 -> `dst` out of uplink (a new flow, any protocol).
fn req(dst: Option<&str>) -> Packet {
    Packet {
        src: Addr::Ip("10.244.1.5".parse().unwrap()),
        dst: match dst {
            Some(d) => Addr::Ip(d.parse().unwrap()),
            None => Addr::Outside(POOL.parse().unwrap()),
        },
        iif: Some("rcni0123abcdef".into()),
        oif: Some("uplink".into()),
        proto: None,
        dport: None,
        new: true,
    }
}

fn reply(dst: &str) -> Packet {
    Packet {
        src: Addr::Ip(dst.parse().unwrap()),
        dst: Addr::Ip("10.244.1.5".parse().unwrap()),
        iif: Some("uplink".into()),
        oif: Some("rcni0123abcdef".into()),
        proto: None,
        dport: None,
        new: false,
    }
}

fn dropped_at(o: &Outcome) -> (String, usize) {
    match &o.end {
        End::Dropped { by } => (by.chain.clone(), by.position),
        other => panic!("not dropped: {other:?}"),
    }
}

#[test]
fn a_drop_of_the_pool_at_the_top_blocks_and_other_drops_do_not() {
    let s = set("-P FORWARD ACCEPT -c 0 0\n\
         -A FORWARD -s 10.244.1.0/24 -c 5 420 -j DROP\n");
    let o = evaluate(&s, "FORWARD", &req(Some("198.51.100.2")));
    assert!(o.blocked());
    assert_eq!(dropped_at(&o), ("FORWARD".into(), 1));
    match &o.end {
        End::Dropped { by } => {
            assert_eq!(by.rule, "-s 10.244.1.0/24 -j DROP");
            assert_eq!(by.pkts, 5);
        }
        _ => unreachable!(),
    }
    // Without --to: any destination outside the pool.
    assert!(evaluate(&s, "FORWARD", &req(None)).blocked());
    // Replies are not from the pool.
    assert!(!evaluate(&s, "FORWARD", &reply("198.51.100.2")).blocked());

    for other in [
        "-A FORWARD -s 192.0.2.0/24 -j DROP",
        "-A FORWARD ! -s 10.0.0.0/8 ! -d 10.0.0.0/8 -j DROP",
        "-A FORWARD -i docker0 ! -o docker0 -j DROP",
        "-A FORWARD -d 10.244.1.0/24 -m conntrack --ctstate NEW -j DROP",
        "-A FORWARD -m conntrack --ctstate INVALID -j DROP",
    ] {
        let s = set(other);
        for p in [req(Some("198.51.100.2")), req(None), reply("198.51.100.2")] {
            let o = evaluate(&s, "FORWARD", &p);
            assert!(
                !o.blocked() && !o.maybe_blocked(),
                "{other} for {p:?}: {o:?}"
            );
        }
    }
}

#[test]
fn destinations_and_interfaces_decide() {
    let s = set("-A FORWARD -d 203.0.113.0/24 -j REJECT --reject-with icmp-port-unreachable");
    assert!(evaluate(&s, "FORWARD", &req(Some("203.0.113.9"))).blocked());
    assert!(!evaluate(&s, "FORWARD", &req(Some("198.51.100.2"))).maybe_blocked());
    // Without --to it drops part of the pod's traffic: a warning.
    let o = evaluate(&s, "FORWARD", &req(None));
    assert!(!o.blocked() && o.maybe_blocked(), "{o:?}");
    assert_eq!(
        o.may_drop[0].unsure.as_deref(),
        Some("only destinations in 203.0.113.0/24")
    );
    // A drop inside the pool is no drop of traffic leaving it.
    let s = set("-A FORWARD -d 10.244.1.0/25 -j DROP");
    assert!(!evaluate(&s, "FORWARD", &req(None)).maybe_blocked());

    let s = set("-A FORWARD -i rcni+ -o uplink -j DROP");
    assert!(evaluate(&s, "FORWARD", &req(None)).blocked());
    let s = set("-A FORWARD ! -i rcni+ -j DROP");
    assert!(!evaluate(&s, "FORWARD", &req(None)).maybe_blocked());
    // ... but it drops the replies, which come in on the uplink.
    assert!(evaluate(&s, "FORWARD", &reply("198.51.100.2")).blocked());
}

#[test]
fn docker_layout_with_policy_drop() {
    // Docker's FORWARD as iptables-legacy -v -S prints it.
    let docker = "-P FORWARD DROP -c 17 1428\n\
        -N DOCKER\n-N DOCKER-ISOLATION-STAGE-1\n-N DOCKER-ISOLATION-STAGE-2\n-N DOCKER-USER\n\
        -A FORWARD -c 0 0 -j DOCKER-USER\n\
        -A FORWARD -c 0 0 -j DOCKER-ISOLATION-STAGE-1\n\
        -A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -c 0 0 -j ACCEPT\n\
        -A FORWARD -o docker0 -c 0 0 -j DOCKER\n\
        -A FORWARD -i docker0 ! -o docker0 -c 0 0 -j ACCEPT\n\
        -A FORWARD -i docker0 -o docker0 -c 0 0 -j ACCEPT\n\
        -A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -c 0 0 -j DOCKER-ISOLATION-STAGE-2\n\
        -A DOCKER-ISOLATION-STAGE-1 -c 0 0 -j RETURN\n\
        -A DOCKER-ISOLATION-STAGE-2 -o docker0 -c 0 0 -j DROP\n\
        -A DOCKER-ISOLATION-STAGE-2 -c 0 0 -j RETURN\n\
        -A DOCKER-USER -c 0 0 -j RETURN\n";
    let s = set(docker);
    let o = evaluate(&s, "FORWARD", &req(Some("198.51.100.2")));
    assert!(o.blocked(), "{o:?}");
    assert_eq!(
        o.end,
        End::Policy {
            drop: true,
            pkts: 17
        }
    );
    assert!(o.ours.is_none());

    // routed-cni's chain jumped to from the top of FORWARD accepts the pool both ways.
    let ours = format!(
        "-N RCNI-FWD\n\
         -A FORWARD -m comment --comment \"routed-cni forward\" -c 3 180 -j RCNI-FWD\n\
         {docker}\
         -A RCNI-FWD -s {POOL} -c 2 120 -j ACCEPT\n\
         -A RCNI-FWD -d {POOL} -c 1 60 -j ACCEPT\n"
    );
    let s = set(&ours);
    for p in [req(Some("198.51.100.2")), req(None), reply("198.51.100.2")] {
        let o = evaluate(&s, "FORWARD", &p);
        assert!(!o.blocked() && !o.maybe_blocked(), "{o:?}");
        match &o.end {
            End::Accepted { by } => assert_eq!(by.chain, "RCNI-FWD"),
            other => panic!("{other:?}"),
        }
        assert_eq!(o.ours.as_ref().map(|h| h.position), Some(1));
    }
    // A drop inserted above our jump still wins.
    let above = format!("-A FORWARD -s {POOL} -j DROP\n{ours}");
    let s = set(&above);
    let o = evaluate(&s, "FORWARD", &req(Some("198.51.100.2")));
    assert!(o.blocked());
    assert_eq!(dropped_at(&o), ("FORWARD".into(), 1));
    assert!(o.ours.is_none(), "the drop comes before our jump");
}

#[test]
fn established_only_accepts_do_not_accept_new_flows() {
    // kube-proxy's KUBE-FORWARD and ufw's first rules, then the policy.
    let s = set("-P FORWARD DROP\n-N KUBE-FORWARD\n\
        -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
        -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
        -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
        -A KUBE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    let o = evaluate(&s, "FORWARD", &req(Some("198.51.100.2")));
    // The mark accept cannot be evaluated: the policy drop is then only a "may".
    assert!(!o.blocked() && o.maybe_blocked(), "{o:?}");
    assert_eq!(o.may_accept.len(), 1);
    assert_eq!(o.may_accept[0].chain, "KUBE-FORWARD");
    // The replies are ESTABLISHED: accepted.
    let o = evaluate(&s, "FORWARD", &reply("198.51.100.2"));
    assert!(matches!(o.end, End::Accepted { .. }), "{o:?}");

    // Without the mark rule the policy surely drops new flows.
    let s = set("-P FORWARD DROP\n\
        -A FORWARD -m state --state RELATED,ESTABLISHED -j ACCEPT\n\
        -A FORWARD -p icmp -m icmp --icmp-type 8 -j ACCEPT\n");
    let o = evaluate(&s, "FORWARD", &req(None));
    assert!(
        o.blocked(),
        "a partial accept leaves the rest to the policy: {o:?}"
    );
}

#[test]
fn unevaluable_drops_are_warnings_and_ports_are_compared() {
    let s = set("-A FORWARD -m set --match-set blocked dst -j DROP\n\
        -A FORWARD -p tcp -m tcp --dport 25 -j REJECT --reject-with tcp-reset\n");
    let mut p = req(Some("198.51.100.2"));
    let o = evaluate(&s, "FORWARD", &p);
    assert!(!o.blocked() && o.maybe_blocked());
    assert_eq!(o.may_drop.len(), 2, "{o:?}");
    assert!(o.may_drop[0].unsure.as_deref().unwrap().contains("-m set"));
    p.proto = Some("tcp");
    p.dport = Some(25);
    assert!(evaluate(&s, "FORWARD", &p).blocked());
    p.dport = Some(80);
    let o = evaluate(&s, "FORWARD", &p);
    assert_eq!(o.may_drop.len(), 1, "only the set rule is unsure: {o:?}");
}

#[test]
fn goto_returns_to_the_callers_caller_and_depth_is_bounded() {
    let s = set("-P FORWARD DROP\n-N A\n-N B\n\
        -A FORWARD -j A\n\
        -A FORWARD -j ACCEPT\n\
        -A A -g B\n\
        -A A -j DROP\n\
        -A B -s 192.0.2.0/24 -j DROP\n");
    // B falls through: back in FORWARD after the jump to A, not in A (whose DROP is skipped).
    let o = evaluate(&s, "FORWARD", &req(None));
    assert!(
        matches!(&o.end, End::Accepted { by } if by.chain == "FORWARD"),
        "{o:?}"
    );

    let mut text = String::from("-N L\n-A FORWARD -j L\n-A L -j L\n");
    text.push_str("-P FORWARD ACCEPT\n");
    let o = evaluate(&set(&text), "FORWARD", &req(None));
    assert!(o.maybe_blocked(), "a loop ends as an unsure step: {o:?}");
}
