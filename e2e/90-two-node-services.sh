#!/usr/bin/env bash
# Two nodes (network namespaces) on one switch, an "internet" behind it, routed-cni on each node
# (own pod subnet from 10.244.0.0/16, own dataDir, nonMasqueradeCIDRs = the cluster CIDR) and
# the routes kindnet/BGP would install between them. Then kube-proxy's iptables mode, emulated
# rule for rule on both nodes. Checks, in three rounds:
#   1. bare nodes, rp_filter off: pod<->pod across nodes keeps pod addresses (ICMP and TCP),
#      pod->outside is masqueraded to its own node's address;
#   2. kube-proxy rules present: the same, plus ClusterIP balancing (40 connections, each
#      endpoint >= 20%), endpoints on the other node, the client seeing the ClusterIP as its
#      peer (conntrack reverses the DNAT on the client's node; the endpoint's node sees a plain
#      routed flow), hairpin to self (and why it needs kube-proxy's masquerade), NodePort from
#      outside on both nodes, the node itself reaching a ClusterIP;
#   3. every pod DELeted and re-ADDed with kube-proxy rules present and rp_filter=1 (strict) on
#      every node interface, kube-proxy resynced to the new endpoints, all of 2 again.
# Finally everything is DELeted: nothing of routed-cni is left and kube-proxy's rules are
# untouched.
set -euo pipefail
. "$(dirname "$0")/lib/cluster.sh"
[ -x "$BIN" ] || die "no routed-cni binary at $BIN (build it, or set ROUTED_CNI_BIN)"

WEB_IP=10.96.0.10    # two endpoints: a1 (node A) and b1 (node B), NodePort 30080
SELF_IP=10.96.0.11   # one endpoint: a1, for hairpin
REMOTE_IP=10.96.0.12 # one endpoint: b1, on the other node from the client a2
NOHP_IP=10.96.0.13   # one endpoint: a1, *without* kube-proxy's hairpin masquerade rule
NODE_PORT=30080
PA1=rcn-a1-$RUN_ID PA2=rcn-a2-$RUN_ID # pods on node A: a1 serves, a2 is a client
PB1=rcn-b1-$RUN_ID PB2=rcn-b2-$RUN_ID # pods on node B: b1 serves, b2 is a client

# ---- checks -----------------------------------------------------------------------------------

routing_checks() { # routing_checks ROUND
    local r="[$1]"
    can_ping "$PA2" "$B1" && ok "$r ping a2 -> b1 across nodes" || fail "$r ping a2 ($A2) -> b1 ($B1)"
    can_ping "$PB2" "$A1" && ok "$r ping b2 -> a1 across nodes" || fail "$r ping b2 ($B2) -> a1 ($A1)"
    can_ping "$PA2" $OUTSIDE_ADDR && ok "$r ping a2 -> outside" || fail "$r ping a2 -> outside"
    expect_eq "$r a2 -> b1:8080 (other node), b1 answers with the peer it saw" "$(ask "$PA2" "$B1" 8080)" "b1 $A2"
    expect_eq "$r b2 -> a1:8080 (other node)" "$(ask "$PB2" "$A1" 8080)" "a1 $B2"
    expect_eq "$r a2 -> a1:8080 (same node)" "$(ask "$PA2" "$A1" 8080)" "a1 $A2"
    expect_eq "$r a2 -> outside, masqueraded to node A" "$(ask "$PA2" $OUTSIDE_ADDR 8080)" "outside $NODE_A_IP"
    expect_eq "$r b2 -> outside, masqueraded to node B" "$(ask "$PB2" $OUTSIDE_ADDR 8080)" "outside $NODE_B_IP"
}

balance_check() { # balance_check ROUND CLIENT_NS CLIENT_IP
    local r="[$1]" ns=$2 client=$3 answers n_a1 n_b1 i
    answers=$(for i in $(seq 40); do ask "$ns" $WEB_IP 80; done)
    n_a1=$(grep -c '^a1 ' <<<"$answers" || true)
    n_b1=$(grep -c '^b1 ' <<<"$answers" || true)
    log "$r 40 connections ${ns%-"$RUN_ID"} -> $WEB_IP:80: a1=$n_a1 b1=$n_b1; sources seen: $(awk '{print $1 "<-" $2}' <<<"$answers" | sort | uniq -c | xargs)"
    expect_eq "$r all 40 connections to the ClusterIP answered" "$((n_a1 + n_b1))" 40
    if ((n_a1 >= 8 && n_b1 >= 8)); then
        ok "$r both endpoints got >= 20% (a1=$n_a1, b1=$n_b1)"
    else
        fail "$r unbalanced: a1=$n_a1 b1=$n_b1 of 40"
    fi
    expect_eq "$r every endpoint saw the client's own address" "$(awk '{print $2}' <<<"$answers" | sort -u | xargs)" "$client"
}

held_connection_check() { # held_connection_check ROUND: a2 -> REMOTE_IP (endpoint b1 on node B)
    local r="[$1]" held peer local_port wire_port ct_a ct_b i
    (sleep 2 | in_ns "$PA2" socat -t3 -T5 - TCP:$REMOTE_IP:80 >"$WORK/held.out" 2>&1) &
    held=$!
    peer=""
    for i in $(seq 30); do
        read -r local_port peer < <(in_ns "$PA2" ss -Htn state established '( dport = :80 )' | awk '{print $3, $4}') || true
        [ -n "$peer" ] && break
        sleep 0.1
    done
    local_port=${local_port##*:}
    expect_eq "$r client a2's socket has the ClusterIP as its peer" "$peer" "$REMOTE_IP:80"
    ct_a=$(in_ns "$NODE_A" cat /proc/net/nf_conntrack | grep "src=$A2 dst=$REMOTE_IP sport=$local_port dport=80 " || true)
    # The port a2's packets carry on the wire: conntrack on node A may remap the
    # source port when an earlier a2 -> b1:8080 flow (still in TIME_WAIT) used
    # the same one, so node B's entry is looked up by the reply tuple's port.
    wire_port=$(grep -o "src=$B1 dst=$A2 sport=8080 dport=[0-9]*" <<<"$ct_a" | head -1 | sed 's/.*dport=//')
    ct_b=$(in_ns "$NODE_B" cat /proc/net/nf_conntrack | grep "src=$A2 dst=$B1 sport=${wire_port:-$local_port} dport=8080 " || true)
    log "$r node A conntrack: $(xargs <<<"$ct_a")"
    log "$r node B conntrack: $(xargs <<<"$ct_b")"
    [ -n "$wire_port" ] &&
        ok "$r node A: conntrack maps the reply from b1:8080 back to $REMOTE_IP:80 (DNAT reversed)" ||
        fail "$r node A has no DNAT conntrack entry for a2:$local_port -> $REMOTE_IP:80 -> b1:8080"
    [[ $ct_b == *"src=$B1 dst=$A2 sport=8080 dport=${wire_port:-$local_port}"* ]] &&
        ok "$r node B: the same flow is plain routed a2 -> b1:8080, no NAT" ||
        fail "$r node B has no un-NATed conntrack entry a2:${wire_port:-$local_port} -> b1:8080"
    wait "$held" || true
    expect_eq "$r held connection answered by b1, which saw a2" "$(head -1 "$WORK/held.out" | tr -d '\r')" "b1 $A2"
}

service_checks() { # service_checks ROUND
    local r="[$1]" answers node node_ip i
    balance_check "$1" "$PA2" "$A2"
    balance_check "$1" "$PB2" "$B2"
    expect_eq "$r a2 -> $REMOTE_IP:80 (endpoint only on node B)" "$(ask "$PA2" $REMOTE_IP 80)" "b1 $A2"
    held_connection_check "$1"

    # Hairpin: the endpoint pod reaches itself through its own Service.
    expect_eq "$r hairpin a1 -> $SELF_IP:80 lands on a1, which sees node A's address" \
        "$(ask "$PA1" $SELF_IP 80)" "a1 $NODE_A_IP"
    answers=$(for i in $(seq 20); do ask "$PA1" $WEB_IP 80; done)
    log "$r 20 connections a1 -> $WEB_IP:80 (a1 is one of two endpoints): $(sort <<<"$answers" | uniq -c | xargs)"
    expect_eq "$r a1 -> $WEB_IP: answers are 'a1 <node A>' (hairpin) or 'b1 <a1>' (no NAT)" \
        "$(sort -u <<<"$answers" | grep -v -x -e "a1 $NODE_A_IP" -e "b1 $A1" | xargs)" ""
    grep -q -x "a1 $NODE_A_IP" <<<"$answers" && ok "$r a1 landed on itself through $WEB_IP" ||
        fail "$r a1 never landed on itself in 20 tries"
    expect_eq "$r hairpin without kube-proxy's '-s <endpoint> -j KUBE-MARK-MASQ' fails" \
        "$(ask "$PA1" $NOHP_IP 80)" ""

    # NodePort from the internet, on either node: every endpoint, source = the entry node.
    for node in A B; do
        node_ip=NODE_${node}_IP
        node_ip=${!node_ip}
        answers=$(for i in $(seq 20); do ask "$OUTSIDE" "$node_ip" $NODE_PORT; done)
        log "$r 20 connections outside -> node $node $node_ip:$NODE_PORT: $(sort <<<"$answers" | uniq -c | xargs)"
        expect_eq "$r NodePort on node $node: all 20 answered" "$(grep -c . <<<"$answers" || true)" 20
        expect_eq "$r NodePort on node $node: endpoints saw node $node's address" \
            "$(awk '{print $2}' <<<"$answers" | sort -u | xargs)" "$node_ip"
        expect_eq "$r NodePort on node $node reached both endpoints" \
            "$(awk '{print $1}' <<<"$answers" | sort -u | xargs)" "a1 b1"
    done

    # The node itself (OUTPUT chain) to ClusterIPs: masqueraded to its own address.
    expect_eq "$r node A -> $REMOTE_IP:80" "$(ask "$NODE_A" $REMOTE_IP 80)" "b1 $NODE_A_IP"
    expect_eq "$r node B -> $SELF_IP:80" "$(ask "$NODE_B" $SELF_IP 80)" "a1 $NODE_B_IP"
}

add_pods() { # add_pods GENERATION: a1, a2 on node A, b1, b2 on node B
    A1=$(pod_add "$NODE_A" "$CONF_A" "$PA1" a1-$1)
    A2=$(pod_add "$NODE_A" "$CONF_A" "$PA2" a2-$1)
    B1=$(pod_add "$NODE_B" "$CONF_B" "$PB1" b1-$1)
    B2=$(pod_add "$NODE_B" "$CONF_B" "$PB2" b2-$1)
    log "pods (generation $1): a1=$A1 a2=$A2 (node A)  b1=$B1 b2=$B2 (node B)"
}

del_pods() { # del_pods GENERATION
    pod_del "$NODE_A" "$CONF_A" "$PA1" a1-$1
    pod_del "$NODE_A" "$CONF_A" "$PA2" a2-$1
    pod_del "$NODE_B" "$CONF_B" "$PB1" b1-$1
    pod_del "$NODE_B" "$CONF_B" "$PB2" b2-$1
}

sync_services() { # kube-proxy on both nodes, endpoints = the current pods
    kube_proxy_rules \
        "web $WEB_IP 80 $NODE_PORT yes $A1:8080,$B1:8080" \
        "self $SELF_IP 80 - yes $A1:8080" \
        "remote $REMOTE_IP 80 - yes $B1:8080" \
        "nohairpin $NOHP_IP 80 - no $A1:8080" >"$WORK/kube-proxy.rules"
    kube_proxy_sync "$NODE_A" "$WORK/kube-proxy.rules"
    kube_proxy_sync "$NODE_B" "$WORK/kube-proxy.rules"
}

# ---- round 1: bare nodes ----------------------------------------------------------------------
log "--- round 1: two nodes, routed-cni only, rp_filter=0"
make_cluster
for pod in "$PA1" "$PA2" "$PB1" "$PB2"; do make_pod "$pod"; done
CONF_A=$(node_conf "$NODE_A" $POD_CIDR_A)
CONF_B=$(node_conf "$NODE_B" $POD_CIDR_B)
set_rp_filter "$NODE_A" 0
set_rp_filter "$NODE_B" 0
serve_name "$OUTSIDE" 8080 outside
add_pods 1
serve_name "$PA1" 8080 a1
serve_name "$PB1" 8080 b1
ip -n "$OUTSIDE" route get "$A1" >/dev/null 2>&1 &&
    fail "outside has a route to pod addresses: the masquerade checks would prove nothing" ||
    ok "outside has no route to pod addresses"
routing_checks 1

# ---- round 2: kube-proxy ----------------------------------------------------------------------
log "--- round 2: kube-proxy iptables-mode rules on both nodes"
sync_services
log "kube-proxy rules on both nodes:"
sed 's/^/    /' "$WORK/kube-proxy.rules"
log "node A nat POSTROUTING: $(in_ns "$NODE_A" iptables -t nat -S POSTROUTING | tr '\n' ';')"
routing_checks 2
service_checks 2

# ---- round 3: pod churn under kube-proxy, strict rp_filter ------------------------------------
log "--- round 3: DEL every pod with kube-proxy rules present, rp_filter=1, re-ADD, resync"
KUBE_A=$(kube_rules "$NODE_A")
KUBE_B=$(kube_rules "$NODE_B")
del_pods 1
expect_same "node A: DEL of all pods left kube-proxy's rules alone" "$(kube_rules "$NODE_A")" "$KUBE_A"
expect_same "node B: DEL of all pods left kube-proxy's rules alone" "$(kube_rules "$NODE_B")" "$KUBE_B"
NODE=$NODE_A expect_clean_node "$WORK/store-$NODE_A"
NODE=$NODE_B expect_clean_node "$WORK/store-$NODE_B"
set_rp_filter "$NODE_A" 1
set_rp_filter "$NODE_B" 1
OLD="$A1 $A2 $B1 $B2"
add_pods 2
expect_eq "new pods have new addresses" "$(comm -12 <(tr ' ' '\n' <<<"$OLD" | sort) <(printf '%s\n' "$A1" "$A2" "$B1" "$B2" | sort) | xargs)" ""
veth=$(ip -n "$NODE_A" route get "$A1" | grep -o 'dev [^ ]*' | cut -d' ' -f2)
expect_eq "node A: new host veth $veth was born with rp_filter=1" \
    "$(in_ns "$NODE_A" cat /proc/sys/net/ipv4/conf/"$veth"/rp_filter)" 1
expect_eq "node A: rp_filter on uplink" "$(in_ns "$NODE_A" cat /proc/sys/net/ipv4/conf/uplink/rp_filter)" 1
expect_eq "node A: POSTROUTING = kube-proxy's jump, then the plugin's re-added pool jump" \
    "$(in_ns "$NODE_A" iptables -t nat -S POSTROUTING | awk '/^-A/ {print $NF}' | sed 's/^RCNI-.*/RCNI-…/' | xargs)" \
    "KUBE-POSTROUTING RCNI-…"
sync_services
routing_checks 3
service_checks 3

# ---- teardown ---------------------------------------------------------------------------------
log "--- DEL everything"
KUBE_A=$(kube_rules "$NODE_A")
KUBE_B=$(kube_rules "$NODE_B")
del_pods 2
del_pods 2 # a second DEL must succeed too
NODE=$NODE_A expect_clean_node "$WORK/store-$NODE_A"
NODE=$NODE_B expect_clean_node "$WORK/store-$NODE_B"
expect_same "node A: kube-proxy's rules untouched by DEL" "$(kube_rules "$NODE_A")" "$KUBE_A"
expect_same "node B: kube-proxy's rules untouched by DEL" "$(kube_rules "$NODE_B")" "$KUBE_B"
log "elapsed: $SECONDS s"
finish
