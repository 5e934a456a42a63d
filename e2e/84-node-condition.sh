#!/usr/bin/env bash
# The agent's NetworkUnavailable node condition, against the stand-in API server
# (e2e/lib/fake-apiserver.py: its PATCH nodes/NAME/status merges conditions by type, as a
# strategic merge patch does, and writes the result back to the node's file, so the agent
# sees its own patch come back as MODIFIED). Checks, as an operator would:
#   - node-a registered as a cloud does it (NetworkUnavailable=True, NoRouteCreated) beside
#     kubelet's conditions: once the agent has installed the conflist and routed to node-b,
#     the condition is False with our reason, a message naming the podCIDR, a new
#     lastTransitionTime; kubelet's Ready and MemoryPressure are untouched;
#   - the MODIFIED event of that patch and the resyncs after it patch nothing more;
#   - the podCIDR removed from the Node: True with our reason; put back: False again;
#   - one PATCH per change in the agent's log and the API server's; a restarted agent finds
#     the condition already its own and patches nothing; /readyz 200 throughout the good parts.
# Nothing outside the namespaces this script creates is touched.
set -euo pipefail
# shellcheck disable=SC2034 # read by lib/cluster.sh: the agent makes the routes between nodes
CLUSTER_ROUTES=none
. "$(dirname "$0")/lib/cluster.sh"
[ -x "$BIN" ] || die "no routed-cni binary at $BIN (build it, or set ROUTED_CNI_BIN)"
command -v openssl >/dev/null || die "openssl is needed (apt-get install openssl)"
PY=/usr/bin/python3 # not pyenv's python3 from PATH: the stand-in needs only the stdlib
[ -x $PY ] || die "$PY is needed (apt-get install python3)"
RESYNC=1
API=https://$ROUTER_IP:6443
NODES=$WORK/nodes
mkdir -p "$NODES"
AGENT_PID=

now_ms() { echo $(($(date +%s%N) / 1000000)); }
# wait_for SECONDS WHAT COMMAND...: polls COMMAND until it succeeds; ok/fail says how long.
wait_for() {
    local secs=$1 what=$2 start
    shift 2
    start=$(now_ms)
    until "$@" >/dev/null 2>&1; do
        if (($(now_ms) > start + secs * 1000)); then
            fail "$what (not within ${secs}s)"
            return 0
        fi
        sleep 0.2
    done
    ok "$what ($(($(now_ms) - start)) ms)"
}
readyz() {
    ip netns exec "$NODE_A" timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/9465 && printf "GET /readyz HTTP/1.0\r\n\r\n" >&3 && cat <&3' 2>/dev/null |
        tr -d '\r' | awk 'NR==1 {code=$2} body {print code, $0} /^$/ {body=1}' || true
}
ready() { [[ "$(readyz)" == "200 ok"* ]]; }
# cond NODE FIELD: a field of the node's NetworkUnavailable condition, as the API server has it
cond() { jq -r --arg f "$2" '.status.conditions[] | select(.type == "NetworkUnavailable") | .[$f]' "$NODES/$1.json"; }
cond_is() { [ "$(cond node-a status) $(cond node-a reason)" == "$1 $2" ]; }
other_conditions() { jq -c '[.status.conditions[] | select(.type != "NetworkUnavailable")]' "$NODES/node-a.json"; }
set_node() { # set_node NAME JQ_FILTER: edit a Node object as the API would see it change
    local f=$NODES/$1.json
    jq "$2" "$f" >"$NODES/.$1.tmp" && mv "$NODES/.$1.tmp" "$f"
}
patches_logged() { grep -c "node condition NetworkUnavailable=$1 .* set" "$WORK/node-a/agent.log" || true; }
patches_served() { grep -c 'PATCH /api/v1/nodes/node-a/status -> 200' "$WORK/apiserver.log" || true; }

start_agent() {
    ip netns exec "$NODE_A" env NODE_NAME=node-a ROUTED_CNI_CLUSTER_CIDR=$CLUSTER_CIDR,fd00:10:244::/48 "$BIN" agent \
        --api-server $API --token-file "$WORK/token" --ca-file "$WORK/ca.crt" \
        --resync-seconds $RESYNC --encapsulation never --network-policy=false \
        --bin-dir "$WORK/node-a/bin" --conf-dir "$WORK/node-a/net.d" --data-dir "$WORK/node-a/store" \
        --systemd-network-dir "$WORK/node-a/systemd/network" --networkmanager-conf-dir "$WORK/node-a/NetworkManager/conf.d" \
        2>>"$WORK/node-a/agent.log" &
    AGENT_PID=$!
    BACKGROUND_PIDS+=($!)
}

# ---- the world --------------------------------------------------------------------------------
make_cluster
# The fixtures' nodes are dual-stack: their IPv6 InternalIPs on the switch too.
ip -n "$NODE_A" addr add fd00:64::1/64 dev uplink nodad
ip -n "$NODE_B" addr add fd00:64::2/64 dev uplink nodad
mkdir -p "$WORK/node-a"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=e2e-kubernetes-ca -keyout "$WORK/ca.key" -out "$WORK/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=kube-apiserver \
    -keyout "$WORK/server.key" -out "$WORK/server.csr" 2>/dev/null
printf 'subjectAltName=IP:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' $ROUTER_IP >"$WORK/san.ext"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" -CAcreateserial \
    -days 1 -extfile "$WORK/san.ext" -out "$WORK/server.crt" 2>/dev/null
head -c 24 /dev/urandom | base64 >"$WORK/token"
# node-a as GCE registers it: NetworkUnavailable=True until the network plugin says otherwise.
jq '.status.conditions += [{"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated",
      "message": "Node created without a route", "lastHeartbeatTime": "2026-11-20T09:14:02Z",
      "lastTransitionTime": "2026-11-20T09:14:02Z"}]' "$ROOT/e2e/lib/fixtures/node-a.json" >"$NODES/node-a.json"
cp "$ROOT/e2e/lib/fixtures/node-b.json" "$NODES/"
KUBELET_CONDITIONS=$(other_conditions)
ip netns exec "$UNDERLAY" $PY "$ROOT/e2e/lib/fake-apiserver.py" --listen $ROUTER_IP:6443 \
    --cert "$WORK/server.crt" --key "$WORK/server.key" --token-file "$WORK/token" \
    --nodes "$NODES" 2>>"$WORK/apiserver.log" &
BACKGROUND_PIDS+=($!)
for _ in $(seq 50); do
    ip netns exec "$UNDERLAY" ss -Hltn "sport = :6443" | grep -q . && break
    sleep 0.1
done

# ---- cleared once the node is networked -------------------------------------------------------
start_agent
wait_for 15 "node-a: NetworkUnavailable False (RoutedCniReady) once the agent has installed and routed" cond_is False RoutedCniReady
ip -n "$NODE_A" route show 10.244.2.0/24 proto 77 | grep -q "via 100.64.0.2" &&
    ok "the route to node-b was in place" || fail "no route to node-b on A"
[ -f "$WORK/node-a/net.d/10-routed-cni.conflist" ] && ok "the conflist was in place" || fail "no conflist on A"
msg=$(cond node-a message)
[[ "$msg" == *10.244.1.0/24* ]] && ok "message: $msg" || fail "message does not name the podCIDR: $msg"
first=$(cond node-a lastTransitionTime)
[[ "$first" =~ ^20[0-9-]+T[0-9:]+Z$ && "$first" != 2026-11-20T09:14:02Z ]] &&
    ok "lastTransitionTime moved to $first" || fail "lastTransitionTime: $first"
expect_eq "kubelet's conditions (Ready, MemoryPressure) untouched" "$(other_conditions)" "$KUBELET_CONDITIONS"
wait_for 5 "A /readyz 200" ready
# Our own MODIFIED event, and three resyncs: no second patch.
sleep $((RESYNC * 3 + 1))
expect_eq "one PATCH served so far (no loop on our own MODIFIED event or the resyncs)" "$(patches_served)" 1
expect_eq "one 'set' line in the agent's log" "$(patches_logged False)" 1

# ---- the podCIDR goes, then comes back --------------------------------------------------------
set_node node-a 'del(.spec.podCIDR) | del(.spec.podCIDRs)'
wait_for 10 "podCIDR removed: NetworkUnavailable True (RoutedCniNoPodCIDR)" cond_is True RoutedCniNoPodCIDR
[ "$(cond node-a lastTransitionTime)" != 2026-11-20T09:14:02Z ] && ok "lastTransitionTime set: $(cond node-a lastTransitionTime)" ||
    fail "lastTransitionTime not set"
set_node node-a '.spec.podCIDR = "10.244.1.0/24" | .spec.podCIDRs = ["10.244.1.0/24", "fd00:10:244:1::/64"]'
wait_for 10 "podCIDR back: NetworkUnavailable False (RoutedCniReady) again" cond_is False RoutedCniReady
expect_eq "kubelet's conditions still untouched" "$(other_conditions)" "$KUBELET_CONDITIONS"
sleep $((RESYNC * 2 + 1))
expect_eq "PATCHes served: one per change (False, True, False)" "$(patches_served)" 3
expect_eq "'set' lines: False twice" "$(patches_logged False)" 2
expect_eq "'set' lines: True once" "$(patches_logged True)" 1
# Our patches come back as MODIFIED events too: only the two podCIDR edits are changes.
expect_eq "'node node-a changed' lines: the two podCIDR edits, not our three patches" \
    "$(grep -c 'node node-a changed' "$WORK/node-a/agent.log" || true)" 2

# ---- a restart finds the condition its own ------------------------------------------------------
kill -TERM "$AGENT_PID"
wait "$AGENT_PID" || true
start_agent
wait_for 15 "restarted agent: /readyz 200" ready
sleep $((RESYNC * 2 + 1))
expect_eq "the restarted agent patched nothing (the condition is already ours)" "$(patches_served)" 3
[[ "$(readyz)" != *"but "* ]] && ok "/readyz names no problem: $(readyz)" || fail "/readyz: $(readyz)"
kill -TERM "$AGENT_PID"
wait "$AGENT_PID" || true

if [ "$FAILURES" -ne 0 ]; then
    log "---- agent log"
    cat "$WORK/node-a/agent.log" || true
    log "---- API server log (tail)"
    tail -20 "$WORK/apiserver.log" || true
fi
finish
