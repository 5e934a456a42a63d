#!/usr/bin/env bash
# routed-cni agent with --encapsulation never (direct routes only, the behaviour before VXLAN;
# e2e/87-crosssubnet.sh covers crosssubnet and vxlan) against a stand-in API server (e2e/lib/fake-apiserver.py: HTTPS with a CA
# made here, bearer token, list + watch of the Node objects in a directory). Nodes are network
# namespaces on one switch (lib/cluster.sh, without its hand-made routes: the agents make them).
# Checks, as an operator would:
#   - each agent installs a conflist with its own node's podCIDR; A routes B's podCIDRs (IPv4
#     and IPv6) via B's InternalIPs with proto 77, and vice versa; pods ping across nodes;
#   - node C joins: routes to C appear on A and B, A<->C pods ping; on B a route of another
#     protocol to C's podCIDR is reported (readyz 503) and left alone until removed by hand;
#   - B's address changes: routes replaced in place; B's podCIDR changes: old route gone, new
#     one there, B's conflist rewritten, a new pod on B reachable;
#   - B leaves: its routes disappear from A and C, a hand-made route of another protocol stays;
#   - a node whose address is on no link of A's: A logs why and routes nothing to it;
#   - a route deleted by hand comes back at the next resync (from the agent's cache: the agent
#     lists only at start and after a failed watch); a compacted watch (410) relists;
#   - a pod's pool rules (FORWARD and POSTROUTING jumps) flushed by hand, as a firewalld reload
#     leaves them: back by the next resync and logged; none put back once the pool is empty;
#   - the API server gone well past the staleness bound: /healthz stays 200 (the agent's own
#     loop is alive: a kubelet restart could not help), /readyz 503 saying why; the API server
#     back: /readyz 200 again from the same process;
#   - an agent pointed at a closed port, or at an address that drops SYNs, says so in its log
#     within seconds (short connect timeout) and /readyz names the failure;
#   - SIGTERM: exit 0, routes left in place; a wrong token: the agent says 401 and what to
#     check, and stays not ready.
# Nothing outside the namespaces this script creates is touched.
set -euo pipefail
# shellcheck disable=SC2034 # read by lib/cluster.sh: the agents make the routes between nodes
CLUSTER_ROUTES=none
. "$(dirname "$0")/lib/cluster.sh"
[ -x "$BIN" ] || die "no routed-cni binary at $BIN (build it, or set ROUTED_CNI_BIN)"
command -v openssl >/dev/null || die "openssl is needed (apt-get install openssl)"
PY=/usr/bin/python3 # not pyenv's python3 from PATH: the stand-in needs only the stdlib
[ -x $PY ] || die "$PY is needed (apt-get install python3)"
RESYNC=2
CLUSTER_CIDR6=fd00:10:244::/48
STALE=5
API=https://$ROUTER_IP:6443
FIXTURES=$ROOT/e2e/lib/fixtures
NODES=$WORK/nodes
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

fam() { case $1 in *:*) echo -6 ;; *) echo -4 ;; esac; }
# ours NS DST: our route to exactly DST, if any
ours() { ip -n "$1" "$(fam "$2")" route show "$2" proto 77; }
route_is() { ours "$1" "$2" | grep -q "via $3 "; }
route_gone() { [ -z "$(ours "$1" "$2")" ]; }
count_ours() { echo $(($(ip -n "$1" -4 route show proto 77 | wc -l) + $(ip -n "$1" -6 route show proto 77 | wc -l))); }

# health NS [PATH] -> "CODE body" from the agent's health listener in NS (bash's /dev/tcp:
# no HTTP client needed).
# HEALTH_PORT picks another agent's listener (default the DaemonSet's 9465).
health() {
    ip netns exec "$1" timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/$1 && printf "GET %s HTTP/1.0\r\n\r\n" "$0" >&3 && cat <&3' "${2:-/healthz}" "${HEALTH_PORT:-9465}" 2>/dev/null |
        tr -d '\r' | awk 'NR==1 {code=$2} body {print code, $0} /^$/ {body=1}' || true
}
healthy() { [[ "$(health "$1")" == 200* ]]; }
ready() { [[ "$(health "$1" /readyz)" == 200* ]]; }
not_ready() { [[ "$(health "$1" /readyz)" == 503* ]]; }

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

# start_agent NS NODE_NAME [TOKEN_FILE]: the agent as the DaemonSet runs it (NODE_NAME and
# ROUTED_CNI_CLUSTER_CIDR from the environment, health on the default 127.0.0.1:9465), with
# the node's own CNI dirs under $WORK/NODE_NAME (and its udev and NetworkManager dirs there,
# absent: never the machine's own /etc).
start_agent() {
    local ns=$1 name=$2 token=${3:-$WORK/token} dir=$WORK/$2
    mkdir -p "$dir"
    ip netns exec "$ns" env NODE_NAME="$name" ROUTED_CNI_CLUSTER_CIDR="$CLUSTER_CIDR,$CLUSTER_CIDR6" "$BIN" agent \
        --api-server $API --token-file "$token" --ca-file "$WORK/ca.crt" \
        --resync-seconds $RESYNC --stale-seconds $STALE --encapsulation never \
        --bin-dir "$dir/bin" --conf-dir "$dir/net.d" --data-dir "$dir/store" --log-file "$dir/cni.log" \
        --systemd-network-dir "$dir/systemd/network" --networkmanager-conf-dir "$dir/NetworkManager/conf.d" \
        2>>"$dir/agent.log" &
    AGENT_PID[$name]=$!
    BACKGROUND_PIDS+=($!)
}

conflist() { echo "$WORK/$1/net.d/10-routed-cni.conflist"; }
# subnet_is NODE_NAME CIDR...: the installed conflist's pod subnets, one range set per family
subnet_is() {
    local name=$1
    shift
    [ "$(jq -r '.plugins[0].ipam | [.subnet // empty, (.ranges // [] | .[][].subnet)] | join(" ")' "$(conflist "$name")" 2>/dev/null)" == "$*" ]
}

# plugin_conf NODE_NAME -> one plugin's config from the conflist the agent installed, with a
# store of its own (the default /run/routed-cni belongs to the host)
plugin_conf() {
    local out=$WORK/$1/plugin.json
    jq --arg d "$WORK/$1/store" '.plugins[0] + {name: .name, cniVersion: .cniVersion} | .ipam.dataDir = $d' \
        "$(conflist "$1")" >"$out"
    echo "$out"
}

# add_pod NODE_NS NODE_NAME POD -> the pod's address, wired by the binary the agent installed
add_pod() {
    BIN=$WORK/$2/bin/routed-cni pod_add "$1" "$(plugin_conf "$2")" "$3" "${3%-"$RUN_ID"}"
}

set_node() { # set_node NAME JQ_FILTER: edit a Node object as the API would see it change
    local f=$NODES/$1.json
    jq "$2" "$f" >"$f.tmp" && mv "$f.tmp" "$f"
}

# ---- the world --------------------------------------------------------------------------------
make_cluster
ip -n "$NODE_A" addr add fd00:64::1/64 dev uplink nodad
ip -n "$NODE_B" addr add fd00:64::2/64 dev uplink nodad
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=e2e-kubernetes-ca -keyout "$WORK/ca.key" -out "$WORK/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=kube-apiserver \
    -keyout "$WORK/server.key" -out "$WORK/server.csr" 2>/dev/null
printf 'subjectAltName=IP:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' $ROUTER_IP >"$WORK/san.ext"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" -CAcreateserial \
    -days 1 -extfile "$WORK/san.ext" -out "$WORK/server.crt" 2>/dev/null
head -c 24 /dev/urandom | base64 >"$WORK/token"
echo "not-the-token" >"$WORK/wrong-token"
cp "$FIXTURES/node-a.json" "$FIXTURES/node-b.json" "$NODES/"
start_server
ok "stand-in API server on $API"

# ---- two nodes --------------------------------------------------------------------------------
start_agent "$NODE_A" node-a
start_agent "$NODE_B" node-b
wait_for 15 "node-a's agent installs a conflist for its podCIDRs 10.244.1.0/24 fd00:10:244:1::/64" subnet_is node-a 10.244.1.0/24 fd00:10:244:1::/64
wait_for 15 "node-b's agent installs a conflist for its podCIDRs 10.244.2.0/24 fd00:10:244:2::/64" subnet_is node-b 10.244.2.0/24 fd00:10:244:2::/64
expect_eq "node-a conflist nonMasqueradeCIDRs" "$(jq -c '.plugins[0].nonMasqueradeCIDRs' "$(conflist node-a)")" "[\"$CLUSTER_CIDR\",\"$CLUSTER_CIDR6\"]"
cmp -s "$BIN" "$WORK/node-a/bin/routed-cni" && ok "node-a's bin dir holds the agent's own binary" || fail "installed binary differs"
wait_for 10 "A: 10.244.2.0/24 via 100.64.0.2 proto 77" route_is "$NODE_A" 10.244.2.0/24 100.64.0.2
wait_for 10 "A: fd00:10:244:2::/64 via fd00:64::2 proto 77" route_is "$NODE_A" fd00:10:244:2::/64 fd00:64::2
wait_for 10 "B: 10.244.1.0/24 via 100.64.0.1 proto 77" route_is "$NODE_B" 10.244.1.0/24 100.64.0.1
wait_for 10 "B: fd00:10:244:1::/64 via fd00:64::1 proto 77" route_is "$NODE_B" fd00:10:244:1::/64 fd00:64::1
expect_eq "A has exactly 2 routes of ours (v4 + v6 to B), none to its own podCIDRs" "$(count_ours "$NODE_A")" 2
wait_for 10 "A /healthz 200" healthy "$NODE_A"
log "A /healthz: $(health "$NODE_A")"
log "A /readyz: $(health "$NODE_A" /readyz)"

PA1=rcn-a1-$RUN_ID PB1=rcn-b1-$RUN_ID PC1=rcn-c1-$RUN_ID PB2=rcn-b2-$RUN_ID
make_pod "$PA1"
make_pod "$PB1"
A1=$(add_pod "$NODE_A" node-a "$PA1")
B1=$(add_pod "$NODE_B" node-b "$PB1")
log "pods: a1=$A1 b1=$B1"
can_ping "$PA1" "$B1" && ok "ping a1 -> b1 across nodes" || fail "ping a1 ($A1) -> b1 ($B1)"
can_ping "$PB1" "$A1" && ok "ping b1 -> a1 across nodes" || fail "ping b1 ($B1) -> a1 ($A1)"
pod_ip6() { ip -n "$1" -6 -o addr show dev eth0 scope global | awk '{print $4}' | cut -d/ -f1; }
A1_6=$(pod_ip6 "$PA1") B1_6=$(pod_ip6 "$PB1")
log "pods over IPv6: a1=$A1_6 b1=$B1_6"
# One packet, one second: the first IPv6 packet after ADD must go through (lib/cluster.sh turns
# DAD off on the fresh uplinks, as on a node that has been up for a while).
in_ns "$PA1" ping -6 -c1 -W1 -q "$B1_6" >/dev/null && ok "first ping a1 -> b1 over IPv6 (fd00:10:244:2::/64 via fd00:64::2)" ||
    fail "first ping a1 ($A1_6) -> b1 ($B1_6) over IPv6"

# ---- node C joins -----------------------------------------------------------------------------
make_cluster_node "$NODE_C" pc $NODE_C_IP
ip -n "$NODE_C" addr add fd00:64::3/64 dev uplink nodad
# Someone else already routes C's podCIDR on B: the agent must leave that route alone.
ip -n "$NODE_B" route add 10.244.3.0/24 via $ROUTER_IP proto static
cp "$FIXTURES/node-c.json" "$NODES/"
wait_for 10 "C joins (ADDED): A routes 10.244.3.0/24 via 100.64.0.3" route_is "$NODE_A" 10.244.3.0/24 100.64.0.3
wait_for 10 "B reports the foreign route to C's podCIDR instead of overwriting it" \
    grep -q "already has a route to 10.244.3.0/24 that routed-cni did not make" "$WORK/node-b/agent.log"
ip -n "$NODE_B" route show 10.244.3.0/24 | grep -q "via $ROUTER_IP .*proto static" &&
    ok "B's foreign route to 10.244.3.0/24 is untouched" || fail "B's foreign route: $(ip -n "$NODE_B" route show 10.244.3.0/24)"
[[ "$(health "$NODE_B" /readyz)" == 503*10.244.3.0/24* ]] && ok "B /readyz 503 naming the route it could not add" || fail "B /readyz: $(health "$NODE_B" /readyz)"
healthy "$NODE_B" && ok "B /healthz stays 200 (the agent itself works)" || fail "B /healthz: $(health "$NODE_B")"
ip -n "$NODE_B" route del 10.244.3.0/24 proto static
wait_for $((RESYNC * 2 + 2)) "foreign route removed: B routes 10.244.3.0/24 via 100.64.0.3 by the next resync" route_is "$NODE_B" 10.244.3.0/24 100.64.0.3
wait_for 5 "B /readyz 200 again" ready "$NODE_B"
wait_for 10 "C joins: B routes fd00:10:244:3::/64 via fd00:64::3" route_is "$NODE_B" fd00:10:244:3::/64 fd00:64::3
start_agent "$NODE_C" node-c
wait_for 15 "node-c's agent installs 10.244.3.0/24 fd00:10:244:3::/64" subnet_is node-c 10.244.3.0/24 fd00:10:244:3::/64
wait_for 10 "C: 10.244.1.0/24 via 100.64.0.1" route_is "$NODE_C" 10.244.1.0/24 100.64.0.1
wait_for 10 "C: 10.244.2.0/24 via 100.64.0.2" route_is "$NODE_C" 10.244.2.0/24 100.64.0.2
make_pod "$PC1"
C1=$(add_pod "$NODE_C" node-c "$PC1")
can_ping "$PA1" "$C1" && ok "ping a1 -> c1" || fail "ping a1 ($A1) -> c1 ($C1)"
can_ping "$PC1" "$A1" && ok "ping c1 -> a1" || fail "ping c1 ($C1) -> a1 ($A1)"
can_ping "$PC1" "$B1" && ok "ping c1 -> b1" || fail "ping c1 ($C1) -> b1 ($B1)"

# ---- B's address changes, then its podCIDR (MODIFIED) ---------------------------------------
ip -n "$NODE_B" addr add 100.64.0.12/24 dev uplink
set_node node-b '.status.addresses[0].address = "100.64.0.12"'
wait_for 10 "B's InternalIP 100.64.0.2 -> .12: A's route replaced" route_is "$NODE_A" 10.244.2.0/24 100.64.0.12
wait_for 10 "B's InternalIP changed: C's route replaced" route_is "$NODE_C" 10.244.2.0/24 100.64.0.12
grep -q "route replaced: 10.244.2.0/24 via 100.64.0.12 (node node-b) (was via 100.64.0.2)" "$WORK/node-a/agent.log" &&
    ok "A's log says: route replaced ... (was via 100.64.0.2)" || fail "no 'route replaced' line in A's log"
expect_eq "A still has exactly one route of ours to 10.244.2.0/24" "$(ours "$NODE_A" 10.244.2.0/24 | wc -l)" 1
can_ping "$PA1" "$B1" && ok "ping a1 -> b1 via B's new address" || fail "ping a1 -> b1 after B's address changed"

set_node node-b '.spec.podCIDR = "10.244.22.0/24" | .spec.podCIDRs = ["10.244.22.0/24", "fd00:10:244:22::/64"]'
wait_for 10 "B's podCIDR 10.244.2.0/24 -> 10.244.22.0/24: A routes the new one" route_is "$NODE_A" 10.244.22.0/24 100.64.0.12
wait_for 10 "B's podCIDR changed: C routes the new one" route_is "$NODE_C" 10.244.22.0/24 100.64.0.12
wait_for 10 "B's podCIDR changed: A's route to the old one is gone" route_gone "$NODE_A" 10.244.2.0/24
wait_for 10 "B's podCIDR changed: A's IPv6 route to the old one is gone" route_gone "$NODE_A" fd00:10:244:2::/64
wait_for 10 "B's podCIDR changed: B's agent re-installs its conflist for 10.244.22.0/24 fd00:10:244:22::/64" subnet_is node-b 10.244.22.0/24 fd00:10:244:22::/64
make_pod "$PB2"
B2=$(add_pod "$NODE_B" node-b "$PB2")
log "pod b2 from the new conflist: $B2"
can_ping "$PA1" "$B2" && ok "ping a1 -> b2 (B's new podCIDR)" || fail "ping a1 ($A1) -> b2 ($B2)"
can_ping "$PC1" "$B2" && ok "ping c1 -> b2" || fail "ping c1 ($C1) -> b2 ($B2)"

# ---- B leaves (DELETED); routes of another protocol stay ------------------------------------
ip -n "$NODE_A" route add 10.99.0.0/24 via $ROUTER_IP proto static
ip -n "$NODE_C" route add 10.99.0.0/24 via $ROUTER_IP proto static
ip -n "$NODE_C" route add 10.98.0.0/24 via 100.64.0.2 proto boot
rm "$NODES/node-b.json"
wait_for 10 "B leaves: A's route to 10.244.22.0/24 is gone" route_gone "$NODE_A" 10.244.22.0/24
wait_for 10 "B leaves: C's route to 10.244.22.0/24 is gone" route_gone "$NODE_C" 10.244.22.0/24
route_gone "$NODE_C" fd00:10:244:22::/64 && ok "B leaves: C's IPv6 route to B is gone" || fail "C still routes fd00:10:244:22::/64"
ip -n "$NODE_A" route show 10.99.0.0/24 proto static | grep -q "via $ROUTER_IP" &&
    ok "A: the proto static route is still there" || fail "A lost its proto static route"
expect_eq "C: both foreign routes are still there" "$(ip -n "$NODE_C" route show | grep -c '^10\.9[89]\.')" 2
expect_eq "A now routes only C (v4 + v6)" "$(count_ours "$NODE_A")" 2
grep -q "route removed: 10.244.22.0/24 via 100.64.0.12 (node node-b" "$WORK/node-a/agent.log" &&
    ok "A's log names node-b for the removed route" || fail "no 'route removed ... node-b' line in A's log"

# ---- a node A cannot reach directly: said, not routed -----------------------------------------
jq '.metadata.name = "node-d" | .spec.podCIDR = "10.244.4.0/24" | .spec.podCIDRs = ["10.244.4.0/24", "fd00:10:244:4::/64"]
    | .status.addresses = [{"type": "InternalIP", "address": "192.0.2.4"}, {"type": "InternalIP", "address": "2001:db8::4"}]' \
    "$FIXTURES/node-c.json" >"$NODES/node-d.json"
wait_for 10 "node-d at 192.0.2.4 (no shared link): A says why it cannot route it" \
    grep -q "192.0.2.4 is not on a network this node is attached to" "$WORK/node-a/agent.log"
grep -q "2001:db8::4 is not on a network this node is attached to" "$WORK/node-a/agent.log" &&
    ok "... and the same for its IPv6 address" || fail "no explanation for node-d's IPv6 route in A's log"
route_gone "$NODE_A" 10.244.4.0/24 && ok "no route to node-d on A" || fail "A routes node-d: $(ours "$NODE_A" 10.244.4.0/24)"
rm "$NODES/node-d.json"
wait_for 10 "node-d gone: A /readyz 200 again" ready "$NODE_A"

# ---- repairs: a route deleted by hand, a compacted watch ------------------------------------
ip -n "$NODE_A" route del 10.244.3.0/24 proto 77
wait_for $((RESYNC * 2 + 2)) "a route deleted by hand on A is back by the next resync" route_is "$NODE_A" 10.244.3.0/24 100.64.0.3
# The agent lists at start and after a failed watch only (resyncs come from its cache), so
# its version predates the compaction: the server ends the open watches, the next one gets 410.
lists_by_a() { grep -c "^$NODE_A_IP GET /api/v1/nodes -> 200" "$WORK/apiserver.log" || true; }
n=$(lists_by_a)
relisted_by_a() { (($(lists_by_a) > n)); }
kill -USR1 "$SERVER_PID"
wait_for $((RESYNC * 2 + 2)) "after the API server compacts, A's watch gets 410 Gone" grep -q "expired" "$WORK/node-a/agent.log"
wait_for $((RESYNC * 2 + 2)) "... and A lists the nodes again" relisted_by_a
sleep 0.5
healthy "$NODE_A" && ok "A healthy after the relist" || fail "A after relist: $(health "$NODE_A")"

# ---- SIGTERM leaves the routes --------------------------------------------------------------
before=$(ip -n "$NODE_A" -4 route show proto 77; ip -n "$NODE_A" -6 route show proto 77)
kill -TERM "${AGENT_PID[node-a]}"
rc=0
wait "${AGENT_PID[node-a]}" || rc=$?
expect_eq "A's agent exits 0 on SIGTERM" "$rc" 0
expect_same "A's routes after the agent stopped" "$(ip -n "$NODE_A" -4 route show proto 77; ip -n "$NODE_A" -6 route show proto 77)" "$before"
can_ping "$PA1" "$C1" && ok "pods still talk with the agent stopped" || fail "ping a1 -> c1 without agent"

# ---- the API server goes away: live but not ready; back: ready, same process ----------------
# Liveness is the agent's own loop, not the API server: kubelet restarting every agent during a
# control-plane outage could not help (routes and conflists stay in place anyway).
wait_for 5 "C /readyz 200 before the API server stops" ready "$NODE_C"
kill "$SERVER_PID"
wait "$SERVER_PID" 2>/dev/null || true
stopped=$(now_ms)
sleep 1
ready "$NODE_C" && ok "C still ready 1 s after the API server stopped (bound ${STALE}s)" || fail "C not ready too early: $(health "$NODE_C" /readyz)"
wait_for $((STALE + RESYNC + 2)) "C /readyz turns 503 without the API server" not_ready "$NODE_C"
log "C not ready $(($(now_ms) - stopped)) ms after the API server stopped: $(health "$NODE_C" /readyz)"
# Which bound trips first (the API answer's age or the last route sync's) is a race; either
# way the reason ends with the connect error.
[[ "$(health "$NODE_C" /readyz)" == 503*" ago "*"cannot reach the API server"* ]] &&
    ok "C's /readyz names the reason (a stale answer or sync, the connect error)" || fail "C's /readyz reason: $(health "$NODE_C" /readyz)"
# Well past the bound: three times it, plus a resync.
left=$(((3 * STALE + RESYNC) - ($(now_ms) - stopped) / 1000))
((left <= 0)) || sleep $left
away=$((($(now_ms) - stopped) / 1000))
healthy "$NODE_C" && ok "C /healthz 200 with the API server gone ${away}s (stale bound ${STALE}s): $(health "$NODE_C")" ||
    fail "C /healthz with the API server gone ${away}s: $(health "$NODE_C")"
expect_eq "C keeps its routes while the API server is away" "$(count_ours "$NODE_C")" 2
start_server
wait_for $((RESYNC * 4 + 5)) "API server back: C /readyz 200 again" ready "$NODE_C"
kill -0 "${AGENT_PID[node-c]}" 2>/dev/null && ok "... from the same agent process (pid ${AGENT_PID[node-c]}, no restart)" || fail "C's agent is gone"
expect_eq "C's agent started once" "$(grep -c 'agent starting' "$WORK/node-c/agent.log")" 1

# ---- a wrong address: said within seconds ---------------------------------------------------
# start_lost_agent PORT URL: an agent in A's namespace (A's own agent is stopped) with its own
# health port and dirs, pointed at URL through ROUTED_CNI_API_SERVER as the manifest sets it.
start_lost_agent() {
    local port=$1 url=$2 dir=$WORK/lost-$1
    mkdir -p "$dir"
    ip netns exec "$NODE_A" env NODE_NAME=node-a ROUTED_CNI_API_SERVER="$url" ROUTED_CNI_CLUSTER_CIDR="$CLUSTER_CIDR" "$BIN" agent \
        --token-file "$WORK/token" --ca-file "$WORK/ca.crt" --health-addr 127.0.0.1:"$port" \
        --resync-seconds $RESYNC --stale-seconds $STALE --encapsulation never \
        --bin-dir "$dir/bin" --conf-dir "$dir/net.d" --data-dir "$dir/store" --log-file "$dir/cni.log" 2>>"$dir/agent.log" &
    AGENT_PID[lost-$port]=$!
    BACKGROUND_PIDS+=($!)
}
# The router drops SYNs to 6444 (a firewall, or an address that is not there): only the
# agent's connect timeout ends the attempt. 127.0.0.1:1 is closed: refused at once.
ip netns exec "$UNDERLAY" iptables -I INPUT -p tcp --dport 6444 -j DROP
for target in "9471 127.0.0.1:1 closed port" "9472 $ROUTER_IP:6444 SYNs dropped"; do
    read -r port addr what <<<"$target"
    started=$(now_ms)
    start_lost_agent $port "https://$addr"
    wait_for 12 "agent at https://$addr ($what) logs the connect failure" \
        grep -q "cannot reach the API server at https://$addr" "$WORK/lost-$port/agent.log"
    took=$(($(now_ms) - started))
    ((took < 8000)) && ok "... within ${took} ms (< 8 s)" || fail "connect failure to $addr ($what) took ${took} ms to show"
    log "its log: $(grep -m1 'cannot reach' "$WORK/lost-$port/agent.log")"
    r=$(HEALTH_PORT=$port health "$NODE_A" /readyz)
    [[ "$r" == 503*"cannot reach the API server at https://$addr"* ]] && ok "its /readyz says why: $r" || fail "its /readyz: $r"
    r=$(HEALTH_PORT=$port health "$NODE_A" /healthz)
    [[ "$r" == 200* ]] && ok "its /healthz 200: the loop is alive, retrying" || fail "its /healthz: $r"
    kill -TERM "${AGENT_PID[lost-$port]}"
    wait "${AGENT_PID[lost-$port]}" || true
done
ip netns exec "$UNDERLAY" iptables -D INPUT -p tcp --dport 6444 -j DROP

# ---- a wrong token ------------------------------------------------------------------------
start_agent "$NODE_A" node-a "$WORK/wrong-token"
wait_for 10 "an agent with a wrong token logs the 401 and what to check" \
    grep -q "HTTP 401.*service account token" "$WORK/node-a/agent.log"
log "A's log: $(grep -m1 'HTTP 401' "$WORK/node-a/agent.log")"
sleep 1
[[ "$(health "$NODE_A" /readyz)" == 503*401* ]] && ok "A not ready with the wrong token: $(health "$NODE_A" /readyz)" || fail "A /readyz with a wrong token: $(health "$NODE_A" /readyz)"
expect_eq "A's routes untouched by the unauthorized agent" "$(count_ours "$NODE_A")" 2
kill -TERM "${AGENT_PID[node-a]}"
wait "${AGENT_PID[node-a]}" || true

# A restarted with the right token finds everything in place and changes nothing.
lines=$(wc -l <"$WORK/node-a/agent.log")
start_agent "$NODE_A" node-a
wait_for 10 "A's agent restarted with the right token is ready" ready "$NODE_A"
expect_eq "the restarted agent added, replaced or removed nothing" \
    "$(tail -n +$((lines + 1)) "$WORK/node-a/agent.log" | grep -cE 'route (added|replaced|removed)')" 0
# ---- firewall rules flushed by hand (firewalld/ufw reload, an admin's flush) ----------------
# The agent re-checks, at every resync, the rules of each pool of its conflist that holds an
# allocation. For it to see the pod's allocation, the agent and the pod's ADD share the
# conflist's own dataDir (/run/routed-cni): a tmpfs in a mount namespace of their own, slave to
# the host's so the pod namespaces made later under /run/netns show up in it.
kill -TERM "${AGENT_PID[node-a]}"
wait "${AGENT_PID[node-a]}" || true
if [ ! -d /run/routed-cni ]; then
    mkdir /run/routed-cni
    # The mount point only: the tmpfs is mounted in the agent's namespace alone.
    trap 'cleanup_world; rmdir /run/routed-cni 2>/dev/null || true' EXIT
fi
# shellcheck disable=SC2016 # "$@" is the inner shell's
ip netns exec "$NODE_A" unshare -m --propagation slave sh -c 'mount -t tmpfs -o mode=0755 tmpfs /run/routed-cni && exec "$@"' sh \
    env NODE_NAME=node-a ROUTED_CNI_CLUSTER_CIDR="$CLUSTER_CIDR,$CLUSTER_CIDR6" "$BIN" agent \
    --api-server $API --token-file "$WORK/token" --ca-file "$WORK/ca.crt" \
    --resync-seconds $RESYNC --stale-seconds $STALE \
    --bin-dir "$WORK/node-a/bin" --conf-dir "$WORK/node-a/net.d" --log-file "$WORK/node-a/cni.log" \
    --systemd-network-dir "$WORK/node-a/systemd/network" --networkmanager-conf-dir "$WORK/node-a/NetworkManager/conf.d" \
    2>>"$WORK/node-a/agent.log" &
AGENT_PID[node-a]=$!
BACKGROUND_PIDS+=($!)
wait_for 10 "A's agent (own /run/routed-cni) is ready" ready "$NODE_A"
PA2=rcn-a2-$RUN_ID
make_pod "$PA2"
# The ADD as the runtime would run it: the conflist's plugin config unchanged, in A's network
# namespace and the agent's mount namespace.
jq '.plugins[0] + {name: .name, cniVersion: .cniVersion}' "$(conflist node-a)" >"$WORK/node-a/as-installed.json"
out=$(nsenter -t "${AGENT_PID[node-a]}" -m -n env CNI_COMMAND=ADD CNI_CONTAINERID=a2 CNI_NETNS=/run/netns/$PA2 \
    CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=e2e;K8S_POD_NAME=a2" \
    "$WORK/node-a/bin/routed-cni" <"$WORK/node-a/as-installed.json") || fail "ADD a2 with the installed conflist: $out"
A2=$(jq -r '.ips[0].address' <<<"$out" | cut -d/ -f1)
log "pod a2 from the installed conflist (dataDir /run/routed-cni): $A2"
# our_jumps SAVE: the FORWARD and POSTROUTING jumps of ours to 10.244.1.0/24's chains, as -A lines
our_jumps() { ip netns exec "$NODE_A" "$1" 2>/dev/null | grep -E '^-A (FORWARD|POSTROUTING) .*-j RCNI-' | grep -F '10.244.1.0/24' || true; }
jumps_both() { [ "$(our_jumps "$1" | wc -l)" -eq 2 ]; }
SAVE=
for s in iptables-nft-save iptables-legacy-save; do
    command -v $s >/dev/null && jumps_both $s && SAVE=$s && break
done
if [ -z "$SAVE" ]; then
    fail "after ADD a2, no backend holds both jumps of 10.244.1.0/24: $(ip netns exec "$NODE_A" iptables-save 2>&1)"
else
    log "A's jumps ($SAVE):"
    our_jumps $SAVE | sed 's/^/    /'
    lines=$(wc -l <"$WORK/node-a/agent.log")
    # As a firewalld reload or an admin's `iptables -F FORWARD` would leave them: both jumps gone.
    while read -r rule; do
        table=filter
        [[ "$rule" == "-A POSTROUTING"* ]] && table=nat
        eval "ip netns exec \"\$NODE_A\" ${SAVE%-save} -t $table -D ${rule#-A }"
    done < <(our_jumps $SAVE)
    expect_eq "both jumps flushed by hand" "$(our_jumps $SAVE | wc -l)" 0
    wait_for $((RESYNC * 2 + 2)) "the agent restores A's FORWARD and POSTROUTING jumps by the next resync" jumps_both $SAVE
    restored() { tail -n +$((lines + 1)) "$WORK/node-a/agent.log" | grep -q "firewall rules of pool 10.244.1.0/24.*restored"; }
    wait_for 3 "A's log says the pool's rules were missing and restored" restored
    log "its log: $(tail -n +$((lines + 1)) "$WORK/node-a/agent.log" | grep -m1 'firewall rules of pool')"
    wait_for 5 "A /readyz 200 after the repair" ready "$NODE_A"
    n=$(grep -c 'firewall rules of pool' "$WORK/node-a/agent.log" || true)
    sleep $((RESYNC + 1))
    expect_eq "rules in place: the next resync logs nothing" "$(grep -c 'firewall rules of pool' "$WORK/node-a/agent.log" || true)" "$n"
fi
out=$(nsenter -t "${AGENT_PID[node-a]}" -m -n env CNI_COMMAND=DEL CNI_CONTAINERID=a2 CNI_NETNS=/run/netns/$PA2 \
    CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni "$WORK/node-a/bin/routed-cni" <"$WORK/node-a/as-installed.json") || fail "DEL a2: $out"
sleep $((RESYNC + 1))
[ -n "$SAVE" ] && expect_eq "a2 deleted (pool empty): the agent does not put its rules back" "$(our_jumps $SAVE | wc -l)" 0
kill -TERM "${AGENT_PID[node-a]}"
wait "${AGENT_PID[node-a]}" || true

log "agent log lines: A $(wc -l <"$WORK/node-a/agent.log"), B $(wc -l <"$WORK/node-b/agent.log"), C $(wc -l <"$WORK/node-c/agent.log")"
log "API requests: $(grep -c ' -> ' "$WORK/apiserver.log") ($(grep -c 'watch=1' "$WORK/apiserver.log") watches, $(grep -c ' -> 401' "$WORK/apiserver.log") unauthorized)"
if [ "$FAILURES" -ne 0 ]; then
    for n in node-a node-b node-c; do
        log "---- $n agent log"
        cat "$WORK/$n/agent.log" || true
    done
    log "---- API server log (tail)"
    tail -20 "$WORK/apiserver.log" || true
fi
finish
