#!/usr/bin/env bash
# Nodes with a firewall (issue 14, item 1). Three scenarios, each on a fresh node namespace with
# two dual-stack pods, an "outside" host two hops away and a router between them that routes
# the pod pool to the node (as a cluster's fabric would), so the outside can open connections
# to pods as well as receive them:
#   docker  Docker 24/25's chain layout (FORWARD policy DROP, DOCKER-USER, the isolation stages,
#           docker0's accepts, its nat DOCKER chain and MASQUERADE) written by
#           iptables-legacy-restore from e2e/lib/fixtures/docker-25-iptables-legacy.rules, while
#           the node's `iptables` command is iptables-nft (Debian's default): the plugin must
#           find the backend the node really uses.
#   ufw     ufw's own rule set, IPv4 and IPv6, enabled by ufw itself inside the node namespace:
#           `ip netns exec NODE ufw --rootdir=/ --datadir=DIR --force enable`. ufw is a Python
#           front end to /lib/ufw/ufw-init; with --datadir every file it reads or writes
#           (etc/default/ufw, etc/ufw/*.rules, ufw.conf, the lock in lib/ufw) is under DIR,
#           which is filled from the package's pristine files in /usr/share/ufw (and
#           /etc/default/ufw with IPT_SYSCTL pointed into DIR). What it does outside DIR is
#           iptables/ip6tables(-restore) and `sysctl -p` of net.* keys, both per network
#           namespace. So the run is confined to the node namespace, and the script checks it:
#           the host's /etc/ufw/ufw.conf and /etc/default/ufw are unchanged and the host's
#           iptables-nft holds no more ufw chains afterwards. The defaults are ufw's: INPUT and
#           FORWARD policy DROP, for both families, in whatever backend `iptables` is.
#   nft     `iptables-nft -P FORWARD DROP` and `ip6tables-nft -P FORWARD DROP`, nothing else.
# In each: pod -> pod, pod -> node, pod -> outside (the outside sees the node's uplink
# address: masquerade) and outside -> pod through the router (the pod sees the outside's own
# address) work over TCP for both families; a negative control then takes routed-cni's FORWARD
# jump out of every backend and shows pod -> outside failing (so these checks can fail) and
# puts it back; DEL of both pods leaves no rule of ours in any backend or family
# (iptables/ip6tables, legacy and nft) and the firewall's own rules exactly as they were.
# TCP, not ping, carries the verdicts: ufw's before-forward chain accepts ICMP echo by itself.
# Nothing here touches the machine's own firewall: never `ufw enable` or a daemon on the host.
# shellcheck disable=SC2317 # load_* and can_ping are called through variables and check()
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/world.sh
. "$(dirname "$0")/lib/world.sh"
# shellcheck source-path=SCRIPTDIR source=lib/peer.sh
. "$(dirname "$0")/lib/peer.sh"

[ -x "$BIN" ] || die "no plugin binary at $BIN (cargo build --release, or set ROUTED_CNI_BIN)"
for tool in iptables-legacy-restore iptables-nft ip6tables-legacy-save ufw; do
    command -v "$tool" >/dev/null || die "$tool is not installed (scripts/test.sh installs iptables and ufw)"
done

PORT=7070 # not Docker's published 8080, which its nat DOCKER chain DNATs on the node
POOL4=10.244.1.0/24
POOL6=fd00:10:244:1::/64
ROUTER_UP=198.51.100.254
ROUTER_UP6=fd00:198:51:100::fe
ROUTER_FAR=203.0.113.1
ROUTER_FAR6=fd00:203:0:113::1
FAR=203.0.113.2
FAR6=fd00:203:0:113::2
BACKENDS=(iptables-legacy iptables-nft ip6tables-legacy ip6tables-nft)


check() { # check WHAT COMMAND...: ok when COMMAND succeeds
    local what=$1
    shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}
can_ping() { ip netns exec "$1" ping -c1 -W2 "$2" >/dev/null 2>&1; }

# Every rule of ours in every backend and family (full saves: `-t TABLE` would instantiate a
# legacy table in the namespace, which changes what backend detection sees).
our_rules() {
    local prog
    for prog in "${BACKENDS[@]}"; do
        on_node "$prog-save" 2>/dev/null | grep -E 'RCNI|routed-cni' | sed "s/^/$prog: /" || true
    done
}

# Every backend's rules, table-qualified, counters dropped: what "untouched" is compared on.
snapshot() {
    local prog
    for prog in "${BACKENDS[@]}"; do
        on_node "$prog-save" 2>/dev/null |
            awk -v p="$prog" '/^\*/ {t = $1} /^(:|-A)/ {sub(/ \[[0-9]+:[0-9]+\]$/, ""); print p, t, $0}'
    done
}

# The world of one scenario: node, router, outside; two pods; a pool config.
make_scenario() { # make_scenario NAME
    local s=$1
    NODE=rcn-$s-node-$RUN_ID
    ROUTER=rcn-$s-rtr-$RUN_ID
    OUTSIDE=rcn-$s-far-$RUN_ID
    POD_A=rcn-$s-a-$RUN_ID
    POD_B=rcn-$s-b-$RUN_ID
    STORE=$WORK/store-$s
    CONF=$WORK/$s.conf
    netns_add "$NODE"
    netns_add "$ROUTER"
    netns_add "$OUTSIDE"
    ip link add "n-$RUN_ID" netns "$NODE" type veth peer name "r-$RUN_ID" netns "$ROUTER"
    ip -n "$NODE" link set "n-$RUN_ID" name uplink
    ip -n "$ROUTER" link set "r-$RUN_ID" name tonode
    ip link add "o-$RUN_ID" netns "$ROUTER" type veth peer name "f-$RUN_ID" netns "$OUTSIDE"
    ip -n "$ROUTER" link set "o-$RUN_ID" name tofar
    ip -n "$OUTSIDE" link set "f-$RUN_ID" name eth0
    # No DAD on any fresh link of the path, link-local addresses included, as on links that have
    # been up a while: a tentative link-local address delays the first forwarded packet's
    # neighbour solicitation by 1-2 s, which the 2 s connect timeout below would not absorb.
    on_node sysctl -qw net.ipv6.conf.uplink.accept_dad=0
    ip netns exec "$ROUTER" sysctl -qw net.ipv6.conf.tonode.accept_dad=0 net.ipv6.conf.tofar.accept_dad=0
    ip netns exec "$OUTSIDE" sysctl -qw net.ipv6.conf.eth0.accept_dad=0
    ip -n "$NODE" addr add "$NODE_UPLINK/24" dev uplink
    ip -n "$NODE" addr add "$NODE_UPLINK6/64" dev uplink nodad
    ip -n "$ROUTER" addr add "$ROUTER_UP/24" dev tonode
    ip -n "$ROUTER" addr add "$ROUTER_UP6/64" dev tonode nodad
    ip -n "$ROUTER" addr add "$ROUTER_FAR/24" dev tofar
    ip -n "$ROUTER" addr add "$ROUTER_FAR6/64" dev tofar nodad
    ip -n "$OUTSIDE" addr add "$FAR/24" dev eth0
    ip -n "$OUTSIDE" addr add "$FAR6/64" dev eth0 nodad
    ip -n "$NODE" link set uplink up
    ip -n "$ROUTER" link set tonode up
    ip -n "$ROUTER" link set tofar up
    ip -n "$OUTSIDE" link set eth0 up
    ip netns exec "$ROUTER" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
    ip -n "$NODE" route add default via "$ROUTER_UP"
    ip -n "$NODE" -6 route add default via "$ROUTER_UP6"
    ip -n "$OUTSIDE" route add default via "$ROUTER_FAR"
    ip -n "$OUTSIDE" -6 route add default via "$ROUTER_FAR6"
    # The fabric: the pool lives behind the node.
    ip -n "$ROUTER" route add "$POOL4" via "$NODE_UPLINK"
    ip -n "$ROUTER" -6 route add "$POOL6" via "$NODE_UPLINK6"
    make_pod "$POD_A"
    make_pod "$POD_B"
    cat >"$CONF" <<EOF
{"cniVersion":"1.0.0","name":"fw-$s","type":"routed-cni",
 "ipam":{"ranges":[[{"subnet":"$POOL4"}],[{"subnet":"$POOL6"}]],"dataDir":"$STORE"},
 "nonMasqueradeCIDRs":["10.244.0.0/16","fd00:10:244::/48"]}
EOF
}

# pod -> pod, pod -> node, pod -> outside, outside -> pod; both families.
traffic_checks() { # traffic_checks SCENARIO NODE_TCP(yes|no)
    local r="[$1]" node_tcp=$2
    expect_eq "$r pod B sees pod A (IPv4) as" "$(seen "$POD_A" "$B4")" "$A4"
    expect_eq "$r pod A sees pod B (IPv4) as" "$(seen "$POD_B" "$A4")" "$B4"
    expect_eq "$r pod B sees pod A (IPv6) as" "$(seen "$POD_A" "$B6")" "$A6"
    check "$r ping pod A -> node $NODE_UPLINK" can_ping "$POD_A" "$NODE_UPLINK"
    check "$r ping -6 pod A -> node $NODE_UPLINK6" can_ping "$POD_A" "$NODE_UPLINK6"
    if [ "$node_tcp" = yes ]; then
        expect_eq "$r node sees pod A (TCP, IPv4) as" "$(seen "$POD_A" "$NODE_UPLINK")" "$A4"
        expect_eq "$r node sees pod A (TCP, IPv6) as" "$(seen "$POD_A" "$NODE_UPLINK6")" "$A6"
    else
        # routed-cni opens nothing on INPUT: the node's own policy decides, as for any client.
        expect_eq "$r TCP pod A -> node (the firewall's INPUT policy is DROP)" "$(seen "$POD_A" "$NODE_UPLINK")" ""
    fi
    expect_eq "$r outside sees pod A (IPv4) as the node" "$(seen "$POD_A" "$FAR")" "$NODE_UPLINK"
    expect_eq "$r outside sees pod B (IPv4) as the node" "$(seen "$POD_B" "$FAR")" "$NODE_UPLINK"
    expect_eq "$r outside sees pod A (IPv6) as the node" "$(seen "$POD_A" "$FAR6")" "$NODE_UPLINK6"
    expect_eq "$r pod A sees the outside (IPv4, through the router) as" "$(seen "$OUTSIDE" "$A4")" "$FAR"
    expect_eq "$r pod B sees the outside (IPv4, through the router) as" "$(seen "$OUTSIDE" "$B4")" "$FAR"
    expect_eq "$r pod A sees the outside (IPv6, through the router) as" "$(seen "$OUTSIDE" "$A6")" "$FAR6"
}

# Takes routed-cni's FORWARD jumps out of every backend, shows pod -> outside failing, puts
# them back where they were (top of FORWARD) and shows it working again.
negative_control() { # negative_control SCENARIO IPV6_DROPS(yes|no)
    local r="[$1]" v6=$2 prog line i removed=()
    for prog in "${BACKENDS[@]}"; do
        while read -r line; do
            removed+=("$prog ${line#-A FORWARD }")
        done < <(on_node "$prog-save" 2>/dev/null | grep -E '^-A FORWARD .*(routed-cni|-j RCNI)' || true)
    done
    if [ ${#removed[@]} -eq 0 ]; then
        fail "$r negative control: no FORWARD jump of routed-cni in any backend"
    fi
    for line in "${removed[@]}"; do
        log "$r removing ${line%% *}: -A FORWARD ${line#* }"
        eval "on_node ${line%% *} -w -D FORWARD ${line#* }"
    done
    expect_eq "$r without our FORWARD jump, pod A -> outside (IPv4)" "$(seen "$POD_A" "$FAR")" ""
    expect_eq "$r without our FORWARD jump, outside -> pod A (IPv4)" "$(seen "$OUTSIDE" "$A4")" ""
    expect_eq "$r without our FORWARD jump, pod A -> pod B (IPv4)" "$(seen "$POD_A" "$B4")" ""
    if [ "$v6" = yes ]; then
        expect_eq "$r without our FORWARD jump, pod A -> outside (IPv6)" "$(seen "$POD_A" "$FAR6")" ""
    fi
    for ((i = ${#removed[@]} - 1; i >= 0; i--)); do
        line=${removed[i]}
        eval "on_node ${line%% *} -w -I FORWARD 1 ${line#* }"
    done
    [ ${#removed[@]} -eq 0 ] ||
        expect_eq "$r jump restored, pod A -> outside (IPv4)" "$(seen "$POD_A" "$FAR")" "$NODE_UPLINK"
}

run_scenario() { # run_scenario NAME LOAD_FUNCTION NODE_TCP IPV6_DROPS
    local s=$1 load=$2 node_tcp=$3 v6=$4 before after missing
    log "--- scenario $s"
    make_scenario "$s"
    "$load"
    snapshot >"$WORK/$s.before"
    log "[$s] the node's firewall: $(grep -c ' -A ' "$WORK/$s.before") rules; FORWARD policies: $(grep -E ' :FORWARD ' "$WORK/$s.before" | awk '{print $1 "=" $4}' | xargs)"

    res_a=$(cni ADD a "$POD_A" "$CONF") || fail "[$s] ADD pod A: $res_a"
    res_b=$(cni ADD b "$POD_B" "$CONF") || fail "[$s] ADD pod B: $res_b"
    A4=$(pod_ip "$POD_A")
    B4=$(pod_ip "$POD_B")
    A6=$(pod_ip6 "$POD_A")
    B6=$(pod_ip6 "$POD_B")
    log "[$s] pods: a=$A4 $A6  b=$B4 $B6"
    log "[$s] routed-cni's rules after ADD:"
    our_rules | sed 's/^/    /'
    serve "$NODE"
    serve "$POD_A"
    serve "$POD_B"
    serve "$OUTSIDE"

    traffic_checks "$s" "$node_tcp"
    negative_control "$s" "$v6"

    cni DEL a "$POD_A" "$CONF" || fail "[$s] DEL pod A"
    cni DEL b "$POD_B" "$CONF" || fail "[$s] DEL pod B"
    after=$(our_rules)
    expect_eq "[$s] rules of routed-cni left in any backend or family after DEL" "$after" ""
    snapshot >"$WORK/$s.after"
    missing=$(comm -23 <(sort "$WORK/$s.before") <(sort "$WORK/$s.after"))
    expect_eq "[$s] the firewall's chains, policies and rules gone after DEL" "$missing" ""
    before=$(grep ' -A ' "$WORK/$s.before" || true)
    after=$(grep -Fx -f "$WORK/$s.before" "$WORK/$s.after" | grep ' -A ' || true)
    if [ "$after" == "$before" ]; then
        ok "[$s] the firewall's $(grep -c . <<<"$before" || true) rules are still there in their original order"
    else
        fail "[$s] the firewall's rules changed: $(diff <(echo "$before") <(echo "$after") | grep '^[<>]' | xargs)"
    fi
    expect_clean_node "$STORE"
}

# ---- the firewalls ----------------------------------------------------------------------------

load_docker() {
    # docker0 exists on a Docker node; its address makes 172.17.0.0/16 a connected subnet.
    ip -n "$NODE" link add docker0 type bridge
    ip -n "$NODE" addr add 172.17.0.1/16 dev docker0
    ip -n "$NODE" link set docker0 up
    on_node iptables-legacy-restore <"$ROOT/e2e/lib/fixtures/docker-25-iptables-legacy.rules"
    expect_eq "[docker] legacy FORWARD policy" "$(on_node iptables-legacy -S FORWARD | head -1)" "-P FORWARD DROP"
    expect_eq "[docker] the node's iptables command is" "$(on_node iptables -V | grep -o 'nf_tables\|legacy')" nf_tables
}

load_ufw() {
    local data=$WORK/ufw-data host_conf host_default host_ufw_chains
    mkdir -p "$data/etc/default" "$data/etc/ufw" "$data/lib/ufw"
    cp /usr/share/ufw/iptables/*.rules /usr/share/ufw/ufw.conf /usr/share/ufw/before.init \
        /usr/share/ufw/after.init /etc/ufw/sysctl.conf "$data/etc/ufw/"
    chmod 640 "$data"/etc/ufw/*.rules
    cp -r /etc/ufw/applications.d "$data/etc/ufw/"
    sed "s|^IPT_SYSCTL=.*|IPT_SYSCTL=$data/etc/ufw/sysctl.conf|" /etc/default/ufw >"$data/etc/default/ufw"
    host_conf=$(sha256sum /etc/ufw/ufw.conf)
    host_default=$(sha256sum /etc/default/ufw)
    host_ufw_chains=$(iptables-nft-save 2>/dev/null | grep -c '^:ufw' || true)
    # ufw warns that /tmp is world-writable (a parent of DIR); that is all it says.
    on_node ufw --rootdir=/ --datadir="$data" --force enable 2>&1 | grep -v 'world writable' |
        sed 's/^/    ufw: /' || true
    expect_eq "[ufw] ufw's FORWARD policy in the node (IPv4)" "$(on_node iptables -S FORWARD | head -1)" "-P FORWARD DROP"
    expect_eq "[ufw] ufw's FORWARD policy in the node (IPv6)" "$(on_node ip6tables -S FORWARD | head -1)" "-P FORWARD DROP"
    expect_eq "[ufw] ufw chains in the node" "$(on_node iptables-save | grep -c '^:ufw-before-forward')" 1
    expect_eq "[ufw] the host's /etc/ufw/ufw.conf" "$(sha256sum /etc/ufw/ufw.conf)" "$host_conf"
    expect_eq "[ufw] the host's /etc/default/ufw" "$(sha256sum /etc/default/ufw)" "$host_default"
    expect_eq "[ufw] ufw chains in the host's iptables-nft" \
        "$(iptables-nft-save 2>/dev/null | grep -c '^:ufw' || true)" "$host_ufw_chains"
}

load_nft() {
    on_node iptables-nft -w -P FORWARD DROP
    on_node ip6tables-nft -w -P FORWARD DROP
}

run_scenario docker load_docker yes no
run_scenario ufw load_ufw no yes
run_scenario nft load_nft yes yes
finish
