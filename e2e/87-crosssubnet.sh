#!/usr/bin/env bash
# routed-cni agent across subnets (issue 16): direct routes where nodes share a link, VXLAN
# where a router stands between them. Three nodes and the stand-in API server of e2e/85:
#
#   node A 100.64.0.1 --pa--+                         +--pc-- node C 100.65.0.3 (fd00:65::3)
#   node B 100.64.0.2 --pb--+ br0  underlay/router  br1
#     (fd00:64::1, ::2)       100.64.0.254        100.65.0.254
#
# The router forwards between the two subnets and knows no pod CIDR; rp_filter is strict (1)
# on every node (all, default, every interface) and on the router. nft counters in the
# router's bridge family see every frame: bridged between node ports (the A-B link) and to or
# from the router's own stack (everything that crosses from one subnet to the other).
# Checks, as an operator would:
#   - crosssubnet (the default, no flag): /readyz 200 only once rcni.vxlan (VNI 77, dstport
#     4789, nolearning, local = InternalIP) and C's neighbour, FDB and route entries are in
#     place, none for B (direct route); A<->B frames on the link carry pod addresses and no
#     UDP 4789; A<->C and B<->C cross the router only as UDP 4789 between node addresses; pod
#     source addresses preserved (IPv4 and IPv6); node -> remote pod works;
#   - MTU: conflist mtu and pod eth0 1450 (uplink 1500 - 50); ping -M "do" -s 1422 crosses,
#     -s 1423 is refused locally; 1 MB TCP each way A-pod <-> C-pod, IPv4 and IPv6, intact;
#   - SIGTERM: the agents exit 0, pods keep talking; restarted: ready again; an FDB entry, a
#     neighbour entry and a route deleted by hand come back by the next resync;
#   - C moves onto A's link (InternalIP 100.64.0.3): direct at the next event (no FDB or
#     neighbour entry left for C), frames bridged with pod addresses; moves back: VXLAN again;
#     C leaves: its entries are gone from A and B;
#   - --encapsulation vxlan (A) / ROUTED_CNI_ENCAPSULATION=vxlan (B): A<->B encapsulated too;
#     --encapsulation never: no rcni.vxlan device left on A, B routed directly again.
# Nothing outside the namespaces this script creates is touched.
set -euo pipefail
# shellcheck disable=SC2034 # read by lib/cluster.sh: the agents make the routes between nodes
CLUSTER_ROUTES=none
. "$(dirname "$0")/lib/cluster.sh"
[ -x "$BIN" ] || die "no routed-cni binary at $BIN (build it, or set ROUTED_CNI_BIN)"
for tool in openssl nft socat jq bridge; do
    command -v $tool >/dev/null || die "$tool is needed (see the packages in scripts/test.sh)"
done
PY=/usr/bin/python3 # not pyenv's python3 from PATH: the stand-in needs only the stdlib
[ -x $PY ] || die "$PY is needed (apt-get install python3)"
RESYNC=2
STALE=5
CLUSTER_CIDR6=fd00:10:244::/48
API=https://$ROUTER_IP:6443
FIXTURES=$ROOT/e2e/lib/fixtures
NODES=$WORK/nodes
VX=rcni.vxlan
FAR_ROUTER=100.65.0.254 FAR_ROUTER6=fd00:65::254
NODE_C_FAR=100.65.0.3 NODE_C_FAR6=fd00:65::3
mkdir -p "$NODES"
declare -A AGENT_PID
SERVER_PID=

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# wait_for SECONDS WHAT COMMAND...: polls COMMAND until it succeeds; ok/fail says how long.
wait_for() {
    local secs=$1 what=$2 start end
    shift 2
    start=$(now_ms)
    end=$((start + secs * 1000))
    until "$@" >/dev/null 2>&1; do
        if (($(now_ms) > end)); then
            fail "$what (not within ${secs}s)"
            return 0
        fi
        sleep 0.2
    done
    ok "$what ($(($(now_ms) - start)) ms)"
}
# check WHAT COMMAND...: ok when COMMAND succeeds now (no waiting), else fail
check() {
    local what=$1
    shift
    if "$@" >/dev/null 2>&1; then ok "$what"; else fail "$what"; fi
}

fam() { case $1 in *:*) echo -6 ;; *) echo -4 ;; esac; }
# ours NS DST: our route to exactly DST, if any
ours() { ip -n "$1" "$(fam "$2")" route show "$2" proto 77; }
route_is() { ours "$1" "$2" | grep -q "$3"; }
route_gone() { [ -z "$(ours "$1" "$2")" ]; }

health() {
    ip netns exec "$1" timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/9465 && printf "GET %s HTTP/1.0\r\n\r\n" "$0" >&3 && cat <&3' "${2:-/healthz}" 2>/dev/null |
        tr -d '\r' | awk 'NR==1 {code=$2} body {print code, $0} /^$/ {body=1}' || true
}
ready() { [[ "$(health "$1" /readyz)" == 200* ]]; }
# wait_ready SECONDS WHAT NS: wait_for ready, and the /readyz body (the agent's reason) if not
wait_ready() {
    wait_for "$1" "$2" ready "$3"
    ready "$3" || log "its /readyz: $(health "$3" /readyz)"
}

start_server() {
    ip netns exec "$UNDERLAY" $PY "$ROOT/e2e/lib/fake-apiserver.py" --listen $ROUTER_IP:6443 \
        --cert "$WORK/server.crt" --key "$WORK/server.key" --token-file "$WORK/token" \
        --nodes "$NODES" 2>>"$WORK/apiserver.log" &
    SERVER_PID=$!
    BACKGROUND_PIDS+=("$SERVER_PID")
    for _ in $(seq 50); do
        ip netns exec "$UNDERLAY" ss -Hltn "sport = :6443" | grep -q . && return 0
        sleep 0.1
    done
    die "the stand-in API server did not start: $(cat "$WORK/apiserver.log")"
}

# start_agent NS NODE_NAME [ARG...]: the agent as the DaemonSet runs it, with the node's own
# CNI dirs under $WORK/NODE_NAME; ARGs go to the agent (e.g. --encapsulation vxlan). Set
# ENCAP=MODE to pass the mode through ROUTED_CNI_ENCAPSULATION instead, as the manifest can.
start_agent() {
    local ns=$1 name=$2 dir=$WORK/$2 env=()
    shift 2
    mkdir -p "$dir"
    [ -n "${ENCAP:-}" ] && env+=(ROUTED_CNI_ENCAPSULATION="$ENCAP")
    ip netns exec "$ns" env NODE_NAME="$name" ROUTED_CNI_CLUSTER_CIDR="$CLUSTER_CIDR,$CLUSTER_CIDR6" "${env[@]}" "$BIN" agent \
        --api-server $API --token-file "$WORK/token" --ca-file "$WORK/ca.crt" \
        --resync-seconds $RESYNC --stale-seconds $STALE \
        --bin-dir "$dir/bin" --conf-dir "$dir/net.d" --data-dir "$dir/store" --log-file "$dir/cni.log" \
        --systemd-network-dir "$dir/systemd/network" --networkmanager-conf-dir "$dir/NetworkManager/conf.d" \
        "$@" 2>>"$dir/agent.log" &
    AGENT_PID[$name]=$!
    BACKGROUND_PIDS+=($!)
}
# stop_agent NODE_NAME: SIGTERM, and the exit status must be 0
stop_agent() {
    local rc=0
    if ! kill -TERM "${AGENT_PID[$1]}" 2>/dev/null; then
        wait "${AGENT_PID[$1]}" || rc=$?
        fail "$1's agent had already exited (status $rc): $(tail -3 "$WORK/$1/agent.log")"
        return 0
    fi
    wait "${AGENT_PID[$1]}" || rc=$?
    expect_eq "$1's agent exits on SIGTERM with status" "$rc" 0
}

conflist() { echo "$WORK/$1/net.d/10-routed-cni.conflist"; }
has_conflist() { [ -s "$(conflist "$1")" ]; }
plugin_conf() {
    local out=$WORK/$1/plugin.json
    jq --arg d "$WORK/$1/store" '.plugins[0] + {name: .name, cniVersion: .cniVersion} | .ipam.dataDir = $d' \
        "$(conflist "$1")" >"$out"
    echo "$out"
}
# add_pod NODE_NS NODE_NAME POD -> the pod's IPv4 address, wired by the binary the agent installed
add_pod() { BIN=$WORK/$2/bin/routed-cni pod_add "$1" "$(plugin_conf "$2")" "$3" "${3%-"$RUN_ID"}"; }
pod_ip6() { ip -n "$1" -6 -o addr show dev eth0 scope global | awk '{print $4}' | cut -d/ -f1; }
set_node() { # set_node NAME JQ_FILTER: edit a Node object as the API would see it change
    local f=$NODES/$1.json
    jq "$2" "$f" >"$f.tmp" && mv "$f.tmp" "$f"
}

# ---- kernel state on a node, as `ip -d link`, `ip neigh` and `bridge fdb` show it -----------
vx_json() { ip -n "$1" -d -j link show $VX 2>/dev/null || true; }
has_vx() { [ -n "$(vx_json "$1")" ]; }
no_vx() { ! has_vx "$1"; }
vx_local_is() { [ "$(vx_json "$1" | jq -r '.[0].linkinfo.info_data.local')" == "$2" ]; }
vx_mac() { vx_json "$1" | jq -r '.[0].address'; }
# vx_summary NS -> "kind vni port learning local mtu state"
vx_summary() {
    vx_json "$1" | jq -r '.[0] | [.linkinfo.info_kind, .linkinfo.info_data.id, .linkinfo.info_data.port,
        (.linkinfo.info_data.learning | tostring), (.linkinfo.info_data.local // "none"), .mtu, .operstate] | join(" ")'
}
# fdb_dsts NS [MAC] -> the destinations of the FDB entries on rcni.vxlan (of MAC only, if given)
fdb_dsts() {
    ip netns exec "$1" bridge -j fdb show dev $VX 2>/dev/null |
        jq -r --arg m "${2:-}" '.[] | select($m == "" or .mac == $m) | .dst // empty' | sort
}
fdb_line() { ip netns exec "$1" bridge fdb show dev $VX 2>/dev/null | grep -F "$2" || true; }
# neigh_of NS ADDR -> "LLADDR STATE" of the neighbour entry on rcni.vxlan, empty when none
neigh_of() { ip -n "$1" -j neigh show dev $VX "$2" 2>/dev/null | jq -r '.[0] | select(.) | "\(.lladdr) \(.state | join(","))"'; }
fdb_has() { [ "$(fdb_dsts "$1" "$2")" == "$3" ]; }
fdb_none_for() { [ -z "$(fdb_dsts "$1" "$2")" ]; }
neigh_is() { [ "$(neigh_of "$1" "$2")" == "$3 PERMANENT" ]; }
neigh_gone() { [ -z "$(neigh_of "$1" "$2")" ]; }
via_vx4() { echo "via $1 dev $VX .*onlink"; }

# state NS: what an operator would paste into a bug report
state() {
    log "---- state of $1"
    # A subshell of the pipeline: a missing device must not end the script (set -e).
    { set +e; ip -n "$1" -d link show $VX; ip -n "$1" addr show dev $VX; ip netns exec "$1" bridge fdb show dev $VX
        ip -n "$1" neigh show dev $VX; ip -n "$1" -4 route show proto 77; ip -n "$1" -6 route show proto 77; true; } 2>&1 | sed 's/^/    /'
}

# ---- what crosses the wires: nft counters in the router's bridge family --------------------
# "bridged": frames the switch passes from one node port to another (never seen by the
# router's IP stack); "router": frames into or out of the router's own stack, i.e. every frame
# that goes from one subnet to the other.
counters() {
    ip netns exec "$UNDERLAY" nft -f - <<EOF
table bridge rcni_e2e {
    counter ab_pod {}
    counter ab_vxlan {}
    counter ac_pod {}
    counter ac_vxlan {}
    counter router_pod {}
    counter router_vxlan_nodes {}
    counter router_vxlan_all {}
    set nodes4 { type ipv4_addr; elements = { $NODE_A_IP, $NODE_B_IP, $NODE_C_IP, $NODE_C_FAR } }
    chain bridged {
        type filter hook forward priority 0; policy accept;
        iifname { "pa", "pb" } oifname { "pa", "pb" } ip saddr $CLUSTER_CIDR counter name ab_pod
        iifname { "pa", "pb" } oifname { "pa", "pb" } ip daddr $CLUSTER_CIDR ip saddr != $CLUSTER_CIDR counter name ab_pod
        iifname { "pa", "pb" } oifname { "pa", "pb" } ip6 saddr $CLUSTER_CIDR6 counter name ab_pod
        iifname { "pa", "pb" } oifname { "pa", "pb" } ip6 daddr $CLUSTER_CIDR6 ip6 saddr != $CLUSTER_CIDR6 counter name ab_pod
        iifname { "pa", "pb" } oifname { "pa", "pb" } udp dport 4789 counter name ab_vxlan
        iifname { "pa", "pc2" } oifname { "pa", "pc2" } ip saddr $CLUSTER_CIDR counter name ac_pod
        iifname { "pa", "pc2" } oifname { "pa", "pc2" } ip6 saddr $CLUSTER_CIDR6 counter name ac_pod
        iifname { "pa", "pc2" } oifname { "pa", "pc2" } udp dport 4789 counter name ac_vxlan
    }
    chain router_in {
        type filter hook input priority 0; policy accept;
        jump router
    }
    chain router_out {
        type filter hook output priority 0; policy accept;
        jump router
    }
    chain router {
        ip saddr $CLUSTER_CIDR counter name router_pod
        ip daddr $CLUSTER_CIDR ip saddr != $CLUSTER_CIDR counter name router_pod
        ip6 saddr $CLUSTER_CIDR6 counter name router_pod
        ip6 daddr $CLUSTER_CIDR6 ip6 saddr != $CLUSTER_CIDR6 counter name router_pod
        udp dport 4789 ip saddr @nodes4 ip daddr @nodes4 counter name router_vxlan_nodes
        udp dport 4789 counter name router_vxlan_all
    }
}
EOF
}
count() {
    ip netns exec "$UNDERLAY" nft -j list counter bridge rcni_e2e "$1" | jq '.nftables[] | select(.counter) | .counter.packets'
}
reset_counts() { ip netns exec "$UNDERLAY" nft reset counters table bridge rcni_e2e >/dev/null; }
counts() { local c out=; for c in "$@"; do out+="$c=$(count "$c") "; done; echo "${out% }"; }
expect_some() { # expect_some WHAT COUNTER
    local n
    n=$(count "$2")
    if ((n > 0)); then ok "$1 ($2: $n packets)"; else fail "$1: counter $2 is 0 ($(counts ab_pod ab_vxlan ac_pod ac_vxlan router_pod router_vxlan_nodes router_vxlan_all))"; fi
}
expect_none() { # expect_none WHAT COUNTER
    local n
    n=$(count "$2")
    if ((n == 0)); then ok "$1 ($2: 0)"; else fail "$1: counter $2 is $n ($(counts ab_pod ab_vxlan ac_pod ac_vxlan router_pod router_vxlan_nodes router_vxlan_all))"; fi
}

# ping_both NS ADDR4 ADDR6 WHAT: one IPv4 and one IPv6 ping, each reported
ping_both() {
    can_ping "$1" "$2" && ok "ping $4 ($2)" || fail "ping $4 ($2) from $1"
    in_ns "$1" ping -6 -c1 -W2 -q "$3" >/dev/null 2>&1 && ok "ping -6 $4 ($3)" || fail "ping -6 $4 ($3) from $1"
}
# answer_is FROM_NS ADDR PORT WANT WHAT: the server's "NAME PEER" answer, i.e. the source it saw
answer_is() {
    local got peer
    got=$(ask "$1" "$2" "$3")
    # socat names an IPv6 peer in full and in brackets: [fd00:0010:...]; compare it compressed.
    peer=${got#* }
    if [[ "$peer" == "["* ]]; then
        peer=$($PY -c 'import ipaddress, sys; print(ipaddress.ip_address(sys.argv[1].strip("[]")))' "$peer")
        got="${got%% *} $peer"
    fi
    expect_eq "$5: the server sees" "$got" "$4"
}
# serve_name6 NS PORT NAME: serve_name over IPv6
serve_name6() {
    ip netns exec "$1" timeout 300 socat -T5 TCP6-LISTEN:"$2",reuseaddr,fork \
        SYSTEM:"echo $3 \$SOCAT_PEERADDR; cat >/dev/null" &
    BACKGROUND_PIDS+=($!)
    for _ in $(seq 50); do
        in_ns "$1" ss -Hltn "sport = :$2" | grep -q . && return 0
        sleep 0.1
    done
    die "server $3 in $1:$2 did not start"
}

# transfer FROM_NS TO_NS TO_ADDR WHAT: 1 MB over one TCP connection (DF set: Linux TCP does path
# MTU discovery), received intact (sha256 on both ends)
BLOB=$WORK/blob
transfer() {
    local from=$1 to=$2 addr=$3 what=$4 port=7000 recv=$WORK/recv srv rc=0 target
    rm -f "$recv"
    target="$addr"
    [[ "$addr" == *:* ]] && target="[$addr]"
    ip netns exec "$to" timeout 25 socat -u TCP6-LISTEN:$port,reuseaddr,ipv6only=0 OPEN:"$recv",creat,trunc 2>>"$WORK/transfer.log" &
    srv=$!
    BACKGROUND_PIDS+=("$srv")
    for _ in $(seq 50); do
        in_ns "$to" ss -Hltn "sport = :$port" | grep -q . && break
        sleep 0.1
    done
    local start
    start=$(now_ms)
    ip netns exec "$from" timeout 20 socat -u OPEN:"$BLOB" TCP:"$target":$port,connect-timeout=3 2>>"$WORK/transfer.log" || rc=$?
    ((rc == 0)) || kill "$srv" 2>/dev/null || true
    wait "$srv" || rc=$((rc ? rc : $?))
    if [ $rc -eq 0 ] && [ "$(sha256sum <"$recv")" == "$(sha256sum <"$BLOB")" ]; then
        ok "1 MB TCP $what: intact ($(($(now_ms) - start)) ms)"
    else
        fail "1 MB TCP $what: rc $rc, received $(stat -c %s "$recv" 2>/dev/null || echo 0) bytes (see $WORK/transfer.log: $(tail -2 "$WORK/transfer.log"))"
    fi
}

# ---- the world --------------------------------------------------------------------------------
make_cluster
in_ns "$UNDERLAY" sysctl -qw net.ipv6.conf.all.forwarding=1 net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.br0.accept_dad=0
ip -n "$UNDERLAY" addr add fd00:64::254/64 dev br0 nodad
# The second subnet: C's switch, on the router's other side.
ip -n "$UNDERLAY" link add br1 type bridge
ip -n "$UNDERLAY" addr add $FAR_ROUTER/24 dev br1
ip -n "$UNDERLAY" addr add $FAR_ROUTER6/64 dev br1 nodad
ip -n "$UNDERLAY" link set br1 up
for n in "$NODE_A:1" "$NODE_B:2"; do
    ip -n "${n%:*}" addr add "fd00:64::${n#*:}/64" dev uplink nodad
    ip -n "${n%:*}" -6 route add default via fd00:64::254
done
netns_add "$NODE_C"
ip link add up-pc-$RUN_ID netns "$NODE_C" type veth peer name pc-$RUN_ID netns "$UNDERLAY"
ip -n "$NODE_C" link set up-pc-$RUN_ID name uplink
ip -n "$UNDERLAY" link set pc-$RUN_ID name pc
ip -n "$UNDERLAY" link set pc master br1 up
in_ns "$NODE_C" sysctl -qw net.ipv6.conf.uplink.accept_dad=0
ip -n "$NODE_C" addr add $NODE_C_FAR/24 dev uplink
ip -n "$NODE_C" addr add $NODE_C_FAR6/64 dev uplink nodad
ip -n "$NODE_C" link set uplink up
ip -n "$NODE_C" route add default via $FAR_ROUTER
ip -n "$NODE_C" -6 route add default via $FAR_ROUTER6
# Strict reverse-path filtering everywhere: all, default (for the links made later: the VXLAN
# device, pod veths) and every link there now.
for ns in "$UNDERLAY" "$NODE_A" "$NODE_B" "$NODE_C"; do set_rp_filter "$ns" 1; done
# The bridges hand their frames to the router's iptables when br_netfilter is loaded: not here,
# the counters below are the only view of the switch.
for f in /proc/sys/net/bridge/bridge-nf-call-iptables /proc/sys/net/bridge/bridge-nf-call-ip6tables; do
    in_ns "$UNDERLAY" sh -c "[ ! -e $f ] || echo 0 >$f"
done
counters
can_ping "$NODE_A" $NODE_C_FAR && ok "the router forwards A -> C (100.64.0.1 -> 100.65.0.3)" || die "A cannot reach C's address through the router"
expect_eq "A reaches C through a gateway" "$(ip -n "$NODE_A" -4 route get $NODE_C_FAR | grep -o 'via [^ ]*')" "via $ROUTER_IP"
expect_eq "the router knows no pod CIDR (routes to 10.244.3.1)" "$(ip -n "$UNDERLAY" -4 route get 10.244.3.1 2>&1 | head -1)" "RTNETLINK answers: Network is unreachable"
head -c 1000000 /dev/urandom >"$BLOB"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=e2e-kubernetes-ca -keyout "$WORK/ca.key" -out "$WORK/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=kube-apiserver \
    -keyout "$WORK/server.key" -out "$WORK/server.csr" 2>/dev/null
printf 'subjectAltName=IP:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' $ROUTER_IP >"$WORK/san.ext"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" -CAcreateserial \
    -days 1 -extfile "$WORK/san.ext" -out "$WORK/server.crt" 2>/dev/null
head -c 24 /dev/urandom | base64 >"$WORK/token"
cp "$FIXTURES/node-a.json" "$FIXTURES/node-b.json" "$NODES/"
c_addresses() { # c_addresses IPV4 IPV6 -> jq filter setting C's InternalIPs
    echo ".status.addresses = [{\"type\": \"InternalIP\", \"address\": \"$1\"}, {\"type\": \"InternalIP\", \"address\": \"$2\"}, {\"type\": \"Hostname\", \"address\": \"node-c\"}]"
}
jq "$(c_addresses $NODE_C_FAR $NODE_C_FAR6)" "$FIXTURES/node-c.json" >"$NODES/node-c.json"
start_server
ok "stand-in API server on $API; nodes a, b (100.64.0.0/24) and c ($NODE_C_FAR, behind the router)"

# ---- crosssubnet, the default: ready means everything is in place -----------------------------
start_agent "$NODE_A" node-a
start_agent "$NODE_B" node-b
start_agent "$NODE_C" node-c
for n in "$NODE_A:node-a" "$NODE_B:node-b" "$NODE_C:node-c"; do
    wait_ready 20 "${n#*:}: /readyz 200" "${n%:*}"
done
# No waiting from here on: a ready agent has made all of it.
if has_vx "$NODE_A"; then ok "A: $VX exists once A is ready"; else fail "A: no $VX device although ready: $(ip -n "$NODE_A" -o link show | cut -d: -f2 | tr '\n' ' ')"; fi
# Bound to no address over IPv4: it receives on any of the node's addresses (see C's move below).
expect_eq "A: $VX kind, VNI, dstport, learning, local, MTU, state" "$(vx_summary "$NODE_A")" "vxlan 77 4789 false none 1450 UNKNOWN"
check "C: $VX is bound to no address either" vx_local_is "$NODE_C" null
MAC_A=$(vx_mac "$NODE_A") MAC_B=$(vx_mac "$NODE_B") MAC_C=$(vx_mac "$NODE_C")
log "$VX MACs: A $MAC_A, B $MAC_B, C $MAC_C"
locally_administered_unicast() { (((0x${1%%:*} & 3) == 2)); }
check "C's $VX MAC $MAC_C is locally administered unicast" locally_administered_unicast "$MAC_C"
[ "$MAC_A" != "$MAC_C" ] && [ "$MAC_A" != "$MAC_B" ] && ok "each node's $VX MAC differs" || fail "MACs A $MAC_A B $MAC_B C $MAC_C"
expect_eq "A: own tunnel addresses on $VX" "$(ip -n "$NODE_A" -j addr show dev $VX | jq -r '[.[0].addr_info[] | select(.scope == "global") | "\(.local)/\(.prefixlen)"] | sort | join(" ")')" \
    "10.244.1.0/32 fd00:10:244:1::/128"
expect_eq "A: neighbour 10.244.3.0 (C's tunnel address) -> C's MAC, permanent" "$(neigh_of "$NODE_A" 10.244.3.0)" "$MAC_C PERMANENT"
expect_eq "A: neighbour fd00:10:244:3:: -> C's MAC, permanent" "$(neigh_of "$NODE_A" fd00:10:244:3::)" "$MAC_C PERMANENT"
expect_eq "A: FDB $MAC_C -> C's InternalIP" "$(fdb_dsts "$NODE_A" "$MAC_C")" $NODE_C_FAR
fdb_line "$NODE_A" "$MAC_C" | grep -q "self permanent" && ok "A: C's FDB entry is 'self permanent'" || fail "A: C's FDB entry: $(fdb_line "$NODE_A" "$MAC_C")"
check "A: 10.244.3.0/24 via 10.244.3.0 dev $VX onlink proto 77" route_is "$NODE_A" 10.244.3.0/24 "$(via_vx4 10.244.3.0)"
check "A: fd00:10:244:3::/64 via fd00:10:244:3:: dev $VX onlink proto 77" route_is "$NODE_A" fd00:10:244:3::/64 "via fd00:10:244:3:: dev $VX .*onlink"
check "A: 10.244.2.0/24 via 100.64.0.2 dev uplink (B is on A's link: direct)" route_is "$NODE_A" 10.244.2.0/24 "via $NODE_B_IP dev uplink"
check "A: fd00:10:244:2::/64 via fd00:64::2 dev uplink" route_is "$NODE_A" fd00:10:244:2::/64 "via fd00:64::2 dev uplink"
expect_eq "A: FDB entries on $VX (C only, none for B)" "$(fdb_dsts "$NODE_A" | tr '\n' ' ')" "$NODE_C_FAR "
check "A: no neighbour entry for B's tunnel address 10.244.2.0" neigh_gone "$NODE_A" 10.244.2.0
check "B: 10.244.3.0/24 via 10.244.3.0 dev $VX onlink" route_is "$NODE_B" 10.244.3.0/24 "$(via_vx4 10.244.3.0)"
expect_eq "B: FDB entries on $VX (C only)" "$(fdb_dsts "$NODE_B" | tr '\n' ' ')" "$NODE_C_FAR "
check "C: 10.244.1.0/24 via 10.244.1.0 dev $VX onlink" route_is "$NODE_C" 10.244.1.0/24 "$(via_vx4 10.244.1.0)"
check "C: 10.244.2.0/24 via 10.244.2.0 dev $VX onlink" route_is "$NODE_C" 10.244.2.0/24 "$(via_vx4 10.244.2.0)"
expect_eq "C: FDB $MAC_A, $MAC_B -> A's and B's InternalIPs" "$(fdb_dsts "$NODE_C" "$MAC_A") $(fdb_dsts "$NODE_C" "$MAC_B")" "$NODE_A_IP $NODE_B_IP"
for n in node-a node-b node-c; do
    expect_eq "$n: conflist mtu (uplink 1500 - 50)" "$(jq '.plugins[0].mtu' "$(conflist $n)" 2>/dev/null)" 1450
done
((FAILURES == 0)) || { state "$NODE_A"; state "$NODE_C"; }

PA1=rcn-a1-$RUN_ID PB1=rcn-b1-$RUN_ID PC1=rcn-c1-$RUN_ID
make_pod "$PA1"
make_pod "$PB1"
make_pod "$PC1"
A1=$(add_pod "$NODE_A" node-a "$PA1")
B1=$(add_pod "$NODE_B" node-b "$PB1")
C1=$(add_pod "$NODE_C" node-c "$PC1")
A1_6=$(pod_ip6 "$PA1") B1_6=$(pod_ip6 "$PB1") C1_6=$(pod_ip6 "$PC1")
log "pods: a1 $A1 $A1_6, b1 $B1 $B1_6, c1 $C1 $C1_6"
for p in "$PA1:a1" "$PB1:b1" "$PC1:c1"; do
    serve_name "${p%:*}" 8080 "${p#*:}"
    serve_name6 "${p%:*}" 8086 "${p#*:}"
done

# A <-> B: plain on the shared link.
reset_counts
ping_both "$PA1" "$B1" "$B1_6" "a1 -> b1"
ping_both "$PB1" "$A1" "$A1_6" "b1 -> a1"
answer_is "$PA1" "$B1" 8080 "b1 $A1" "a1 -> b1"
answer_is "$PA1" "[$B1_6]" 8086 "b1 $A1_6" "a1 -> b1 over IPv6"
expect_some "A<->B: the switch passes frames with pod addresses between A and B" ab_pod
expect_none "A<->B: no UDP 4789 on their link" ab_vxlan
expect_none "A<->B: nothing with a pod address reaches the router" router_pod

# A <-> C and B <-> C: UDP 4789 between node addresses is all the router sees.
reset_counts
ping_both "$PA1" "$C1" "$C1_6" "a1 -> c1"
ping_both "$PC1" "$A1" "$A1_6" "c1 -> a1"
ping_both "$PB1" "$C1" "$C1_6" "b1 -> c1"
ping_both "$PC1" "$B1" "$B1_6" "c1 -> b1"
answer_is "$PA1" "$C1" 8080 "c1 $A1" "a1 -> c1 (source preserved)"
answer_is "$PC1" "$A1" 8080 "a1 $C1" "c1 -> a1"
answer_is "$PB1" "$C1" 8080 "c1 $B1" "b1 -> c1"
answer_is "$PA1" "[$C1_6]" 8086 "c1 $A1_6" "a1 -> c1 over IPv6"
answer_is "$PC1" "[$B1_6]" 8086 "b1 $C1_6" "c1 -> b1 over IPv6"
got=$(ask "$NODE_A" "$C1" 8080)
[[ "$got" == "c1 "* ]] && ok "node A -> c1 works (c1 sees ${got#c1 })" || fail "node A -> c1 ($C1): no answer (route: $(ip -n "$NODE_A" route get "$C1" 2>&1))"
got=$(ask "$NODE_C" "$A1" 8080)
[[ "$got" == "a1 "* ]] && ok "node C -> a1 works (a1 sees ${got#a1 })" || fail "node C -> a1 ($A1): no answer"
expect_some "A/B<->C: the router forwards UDP 4789 between node addresses" router_vxlan_nodes
expect_eq "A/B<->C: every UDP 4789 packet at the router is between node addresses" "$(count router_vxlan_all)" "$(count router_vxlan_nodes)"
expect_none "A/B<->C: the router sees no packet with a pod address in its outer header" router_pod
expect_none "A/B<->C: nothing encapsulated on the A-B link" ab_vxlan

# ---- MTU: the pods' packets fit the tunnel -----------------------------------------------------
expect_eq "a1's eth0 MTU" "$(ip -n "$PA1" -j link show eth0 | jq '.[0].mtu')" 1450
expect_eq "c1's eth0 MTU" "$(ip -n "$PC1" -j link show eth0 | jq '.[0].mtu')" 1450
in_ns "$PA1" ping -c1 -W2 -M "do" -s 1422 -q "$C1" >/dev/null 2>&1 && ok "a1 -> c1: 1450-byte packet with DF crosses the tunnel" ||
    fail "a1 -> c1: ping -M do -s 1422 $C1 failed: $(in_ns "$PA1" ping -c1 -W2 -M "do" -s 1422 "$C1" 2>&1 | tail -2)"
out=$(in_ns "$PA1" ping -c1 -W2 -M "do" -s 1423 "$C1" 2>&1 || true)
[[ "$out" == *"message too long"* ]] && ok "a1 -> c1: a 1451-byte packet with DF is refused in the pod (message too long)" ||
    fail "a1 -> c1: ping -M do -s 1423: want 'message too long', got: $out"
in_ns "$PA1" ping -6 -c1 -W2 -M "do" -s 1402 -q "$C1_6" >/dev/null 2>&1 && ok "a1 -> c1: 1450-byte IPv6 packet crosses the tunnel" ||
    fail "a1 -> c1: ping -6 -M do -s 1402 $C1_6 failed"
expect_eq "a1: TCP does path MTU discovery (DF set): net.ipv4.ip_no_pmtu_disc" "$(in_ns "$PA1" sysctl -n net.ipv4.ip_no_pmtu_disc)" 0
transfer "$PA1" "$PC1" "$C1" "a1 -> c1"
transfer "$PC1" "$PA1" "$A1" "c1 -> a1"
transfer "$PA1" "$PC1" "$C1_6" "a1 -> c1 over IPv6"
transfer "$PC1" "$PA1" "$A1_6" "c1 -> a1 over IPv6"

# ---- SIGTERM leaves the tunnel up; the resync repairs entries deleted by hand -----------------
before=$(state "$NODE_A" 2>&1 | tail -n +2)
stop_agent node-a
stop_agent node-c
check "A: $VX still there with the agent stopped" has_vx "$NODE_A"
expect_same "A's device, FDB, neighbours and routes after the agent stopped" "$(state "$NODE_A" 2>&1 | tail -n +2)" "$before"
ping_both "$PA1" "$C1" "$C1_6" "a1 -> c1 with A's and C's agents stopped"
start_agent "$NODE_A" node-a
start_agent "$NODE_C" node-c
wait_ready 15 "A's agent restarted: /readyz 200" "$NODE_A"
wait_ready 15 "C's agent restarted: /readyz 200" "$NODE_C"
check "A: C's FDB entry still there after the restart" fdb_has "$NODE_A" "$MAC_C" $NODE_C_FAR
ip netns exec "$NODE_A" bridge fdb del "$MAC_C" dev $VX dst $NODE_C_FAR self || fail "bridge fdb del $MAC_C dev $VX dst $NODE_C_FAR self (on A)"
check "A: C's FDB entry deleted by hand" fdb_none_for "$NODE_A" "$MAC_C"
wait_for $((RESYNC * 2 + 2)) "A: the FDB entry for C is back by the next resync" fdb_has "$NODE_A" "$MAC_C" $NODE_C_FAR
ip -n "$NODE_A" neigh del 10.244.3.0 dev $VX || fail "ip neigh del 10.244.3.0 dev $VX (on A)"
wait_for $((RESYNC * 2 + 2)) "A: the neighbour entry 10.244.3.0 deleted by hand is back" neigh_is "$NODE_A" 10.244.3.0 "$MAC_C"
ip -n "$NODE_A" route del 10.244.3.0/24 proto 77 || fail "ip route del 10.244.3.0/24 proto 77 (on A)"
wait_for $((RESYNC * 2 + 2)) "A: the route to 10.244.3.0/24 deleted by hand is back" route_is "$NODE_A" 10.244.3.0/24 "$(via_vx4 10.244.3.0)"
ping_both "$PA1" "$C1" "$C1_6" "a1 -> c1 after the repairs"

# ---- C moves onto A's link, and back -----------------------------------------------------------
ip link add up-pc2-$RUN_ID netns "$NODE_C" type veth peer name pc2-$RUN_ID netns "$UNDERLAY"
ip -n "$NODE_C" link set up-pc2-$RUN_ID name uplink2
ip -n "$UNDERLAY" link set pc2-$RUN_ID name pc2
ip -n "$UNDERLAY" link set pc2 master br0 up
in_ns "$NODE_C" sysctl -qw net.ipv6.conf.uplink2.accept_dad=0 net.ipv4.conf.uplink2.rp_filter=1
ip -n "$NODE_C" addr add $NODE_C_IP/24 dev uplink2
ip -n "$NODE_C" addr add fd00:64::3/64 dev uplink2 nodad
ip -n "$NODE_C" link set uplink2 up
set_node node-c "$(c_addresses $NODE_C_IP fd00:64::3)"
moved=$(now_ms)
log "C is on br0 too (uplink2 $NODE_C_IP, fd00:64::3); its Node object says so"
wait_for 10 "A: 10.244.3.0/24 via 100.64.0.3 dev uplink (direct)" route_is "$NODE_A" 10.244.3.0/24 "via $NODE_C_IP dev uplink"
wait_for 10 "A: fd00:10:244:3::/64 via fd00:64::3 dev uplink" route_is "$NODE_A" fd00:10:244:3::/64 "via fd00:64::3 dev uplink"
wait_for 5 "A: no FDB entry for C left" fdb_none_for "$NODE_A" "$MAC_C"
wait_for 5 "A: no neighbour entry 10.244.3.0 left" neigh_gone "$NODE_A" 10.244.3.0
wait_for 5 "A: no neighbour entry fd00:10:244:3:: left" neigh_gone "$NODE_A" fd00:10:244:3::
wait_for 10 "B: 10.244.3.0/24 via 100.64.0.3 (direct)" route_is "$NODE_B" 10.244.3.0/24 "via $NODE_C_IP dev uplink"
wait_for 10 "C: 10.244.1.0/24 via 100.64.0.1 dev uplink2 (direct)" route_is "$NODE_C" 10.244.1.0/24 "via $NODE_A_IP dev uplink2"
# C's own watch of the API server stalls here: its packets to 100.64.0.254 now leave by
# uplink2 while the answers come in by uplink, which strict rp_filter drops (as when a real
# node's address moves). Its own resync must not wait for that connection to time out.
if ! route_is "$NODE_C" 10.244.1.0/24 "via $NODE_A_IP dev uplink2"; then
    log "C's routes: $(ip -n "$NODE_C" route show | tr '\n' ';')"
    for _ in $(seq 100); do route_is "$NODE_C" 10.244.1.0/24 "via $NODE_A_IP dev uplink2" && break; sleep 0.2; done
    log "C's route to A became direct $(($(now_ms) - moved)) ms after the move (if at all: $(ours "$NODE_C" 10.244.1.0/24))"
fi
reset_counts
ping_both "$PA1" "$C1" "$C1_6" "a1 -> c1, C on A's link"
answer_is "$PA1" "$C1" 8080 "c1 $A1" "a1 -> c1, C on A's link"
expect_some "A<->C direct: the switch passes frames with pod addresses between A and C" ac_pod
expect_none "A<->C direct: no UDP 4789 between them" ac_vxlan
expect_none "A<->C direct: nothing through the router" router_vxlan_all

ip -n "$NODE_C" link del uplink2
set_node node-c "$(c_addresses $NODE_C_FAR $NODE_C_FAR6)"
log "C left br0 again; its Node object says $NODE_C_FAR, $NODE_C_FAR6"
wait_for 10 "A: 10.244.3.0/24 via 10.244.3.0 dev $VX again" route_is "$NODE_A" 10.244.3.0/24 "$(via_vx4 10.244.3.0)"
wait_for 10 "A: fd00:10:244:3::/64 via fd00:10:244:3:: dev $VX again" route_is "$NODE_A" fd00:10:244:3::/64 "via fd00:10:244:3:: dev $VX"
wait_for 5 "A: FDB $MAC_C -> $NODE_C_FAR again" fdb_has "$NODE_A" "$MAC_C" $NODE_C_FAR
wait_for 5 "A: neighbour 10.244.3.0 -> C's MAC again" neigh_is "$NODE_A" 10.244.3.0 "$MAC_C"
wait_for 10 "C: 10.244.1.0/24 via 10.244.1.0 dev $VX again" route_is "$NODE_C" 10.244.1.0/24 "$(via_vx4 10.244.1.0)"
# No waiting for C's own agent to learn its address back from the API (its watch may still be
# stalled as above): the device is bound to no address, so it takes A's packets at once.
reset_counts
ping_both "$PA1" "$C1" "$C1_6" "a1 -> c1, C behind the router again"
answer_is "$PA1" "$C1" 8080 "c1 $A1" "a1 -> c1, C behind the router again"
expect_some "A<->C: through the router as UDP 4789 again" router_vxlan_nodes
expect_none "A<->C: no pod address at the router" router_pod

# ---- C leaves -------------------------------------------------------------------------------
stop_agent node-c
rm "$NODES/node-c.json"
for n in "$NODE_A:A" "$NODE_B:B"; do
    wait_for 10 "C leaves: ${n#*:}'s route to 10.244.3.0/24 is gone" route_gone "${n%:*}" 10.244.3.0/24
    wait_for 5 "C leaves: ${n#*:}'s route to fd00:10:244:3::/64 is gone" route_gone "${n%:*}" fd00:10:244:3::/64
    wait_for 5 "C leaves: ${n#*:}'s FDB entry for C is gone" fdb_none_for "${n%:*}" "$MAC_C"
    wait_for 5 "C leaves: ${n#*:}'s neighbour 10.244.3.0 is gone" neigh_gone "${n%:*}" 10.244.3.0
    wait_for 5 "C leaves: ${n#*:}'s neighbour fd00:10:244:3:: is gone" neigh_gone "${n%:*}" fd00:10:244:3::
done
expect_eq "A: FDB entries left on $VX" "$(fdb_dsts "$NODE_A" | wc -l)" 0

# ---- vxlan mode: A <-> B encapsulated as well ---------------------------------------------------
stop_agent node-a
stop_agent node-b
start_agent "$NODE_A" node-a --encapsulation vxlan
ENCAP=vxlan start_agent "$NODE_B" node-b
wait_for 10 "A (--encapsulation vxlan): 10.244.2.0/24 via 10.244.2.0 dev $VX onlink" route_is "$NODE_A" 10.244.2.0/24 "$(via_vx4 10.244.2.0)"
wait_for 10 "B (ROUTED_CNI_ENCAPSULATION=vxlan): 10.244.1.0/24 via 10.244.1.0 dev $VX onlink" route_is "$NODE_B" 10.244.1.0/24 "$(via_vx4 10.244.1.0)"
wait_for 5 "A: FDB $MAC_B -> $NODE_B_IP" fdb_has "$NODE_A" "$MAC_B" $NODE_B_IP
wait_ready 10 "A ready in vxlan mode" "$NODE_A"
wait_ready 10 "B ready in vxlan mode" "$NODE_B"
reset_counts
ping_both "$PA1" "$B1" "$B1_6" "a1 -> b1, vxlan mode"
answer_is "$PA1" "$B1" 8080 "b1 $A1" "a1 -> b1, vxlan mode"
answer_is "$PB1" "[$A1_6]" 8086 "a1 $B1_6" "b1 -> a1 over IPv6, vxlan mode"
expect_some "vxlan mode: A<->B frames are UDP 4789" ab_vxlan
expect_none "vxlan mode: no pod address in any outer header on the A-B link" ab_pod

# ---- never mode: no device --------------------------------------------------------------------
stop_agent node-a
start_agent "$NODE_A" node-a --encapsulation never
wait_for 10 "A (--encapsulation never): no $VX device" no_vx "$NODE_A"
wait_for 10 "A (never): 10.244.2.0/24 via 100.64.0.2 again" route_is "$NODE_A" 10.244.2.0/24 "via $NODE_B_IP dev uplink"
stop_agent node-a
stop_agent node-b

log "agent log lines: A $(wc -l <"$WORK/node-a/agent.log"), B $(wc -l <"$WORK/node-b/agent.log"), C $(wc -l <"$WORK/node-c/agent.log")"
if [ "$FAILURES" -ne 0 ]; then
    state "$NODE_A"
    state "$NODE_B"
    ip netns exec "$UNDERLAY" nft list table bridge rcni_e2e | sed 's/^/    /'
    for n in node-a node-b node-c; do
        log "---- $n agent log (tail)"
        tail -40 "$WORK/$n/agent.log" || true
    done
fi
finish
