#!/usr/bin/env bash
# Chaining with the reference plugins, driven by cnitool with CAP_ARGS as a runtime would:
# [routed-cni, portmap, bandwidth, tuning]. A hostPort on the node reaches a server in the pod
# from another namespace; bandwidth shapes the pod's egress (measured); tuning's sysctl lands in
# the pod; DEL in reverse order leaves nothing of ours or theirs (except portmap's shared
# top-level chains, which portmap itself never removes).
set -euo pipefail
. "$(dirname "$0")/lib/world.sh"

CNITOOL=$(bash "$(dirname "$0")/lib/get-cnitool.sh" | tail -1)
export NETCONFPATH=$WORK/net.d CNI_PATH=/usr/lib/cni:$(dirname "$BIN")
mkdir -p "$NETCONFPATH"
STORE=$WORK/store
NET=e2e-chain-$RUN_ID
POD=rcn-chain-$RUN_ID
RATE=8000000 # bit/s
cat >"$NETCONFPATH/$NET.conflist" <<JSON
{"cniVersion":"1.0.0","name":"$NET","plugins":[
 {"type":"routed-cni","ipam":{"subnet":"10.202.0.0/24","dataDir":"$STORE"},"nonMasqueradeCIDRs":["10.202.0.0/16"]},
 {"type":"portmap","capabilities":{"portMappings":true},"snat":true},
 {"type":"bandwidth","capabilities":{"bandwidth":true}},
 {"type":"tuning","sysctl":{"net.core.somaxconn":"512"}}]}
JSON
CAP_ARGS=$(jq -nc --argjson r $RATE '{portMappings:[{hostPort:18080,containerPort:8000,protocol:"tcp"}],
  bandwidth:{ingressRate:$r,ingressBurst:800000,egressRate:$r,egressBurst:800000}}')
cnitool() { on_node env NETCONFPATH="$NETCONFPATH" CNI_PATH="$CNI_PATH" CAP_ARGS="$CAP_ARGS" "$CNITOOL" "$@"; }
trap 'rm -f /var/lib/cni/results/$NET-*; cleanup_world' EXIT

make_node
make_pod "$POD"
result=$(cnitool add "$NET" /run/netns/$POD) || die "chain add failed: $result"
ok "chain ADD"
expect_eq "bandwidth appended its ifb to the result" "$(jq -r '[.interfaces[].name | select(startswith("bwp"))] | length' <<<"$result")" "1"
ip=$(pod_ip "$POD")

# hostPort: outside -> node:18080 -> DNAT -> pod:8000.
ip netns exec "$POD" timeout 120 socat -T5 TCP-LISTEN:8000,reuseaddr,fork SYSTEM:'echo hello-from-pod' &
BACKGROUND_PIDS+=($!)
sleep 0.3
expect_eq "hostPort 18080 on the node reaches the pod" "$(seen_by "$OUTSIDE" $NODE_UPLINK 18080)" "hello-from-pod"
expect_eq "pod port reached directly by pod IP from the node" "$(seen_by "$NODE" "$ip" 8000)" "hello-from-pod"

# Egress shaping: push 3 MB from the pod to a sink outside, timed until the sink has it all
# (the sender alone finishes early: its socket buffers absorb the tail).
ip netns exec "$OUTSIDE" timeout 120 socat -u TCP-LISTEN:9000,reuseaddr OPEN:"$WORK/sink",creat &
sink=$!
sleep 0.3
bytes=3000000
t0=$(date +%s%N)
head -c $bytes /dev/zero | ip netns exec "$POD" timeout 60 socat -u - TCP:$OUTSIDE_ADDR:9000
wait "$sink" || true
t1=$(date +%s%N)
expect_eq "bytes received" "$(stat -c %s "$WORK/sink")" "$bytes"
ms=$(((t1 - t0) / 1000000))
rate=$((bytes * 8 * 1000 / (ms > 0 ? ms : 1)))
log "egress: $bytes bytes in $ms ms = $rate bit/s (configured $RATE bit/s)"
# Shaped: no faster than the rate plus its burst allows; unshaped veth traffic runs at Gbit/s.
if [ "$rate" -le $((RATE * 125 / 100)) ] && [ "$rate" -ge $((RATE * 50 / 100)) ]; then
    ok "egress shaped to ~$RATE bit/s"
else
    fail "egress rate $rate bit/s is not close to $RATE"
fi
expect_eq "tuning sysctl in the pod" "$(ip netns exec "$POD" sysctl -n net.core.somaxconn)" "512"

cnitool del "$NET" /run/netns/$POD && ok "chain DEL" || fail "chain DEL"
cnitool del "$NET" /run/netns/$POD && ok "second chain DEL" || fail "second chain DEL"
expect_clean_node "$STORE"
left=$(on_node iptables-save -t nat | grep -E '^:CNI-DN-|-j CNI-DN-' || true)
[ -z "$left" ] && ok "no portmap rule for the pod left" || fail "portmap rules left: $left"
left=$(ip -n "$NODE" -o link show | grep -o 'bwp[0-9a-f]*' || true)
[ -z "$left" ] && ok "no bandwidth ifb left" || fail "ifb left: $left"
finish
