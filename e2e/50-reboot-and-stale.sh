#!/usr/bin/env bash
# Reboots and stale state, as an operator meets them:
# (a) a reboot with the default tmpfs-style store: node, pods and dataDir all gone; the fresh
#     node's first ADD works and gets the first address of the range;
# (b) a reboot with a dataDir that survives: GC with an empty valid-attachments list reclaims
#     every record; so does a DEL with an empty CNI_NETNS (as containerd sends after a reboot);
# (c) leftovers of crashes: a stale host veth of the attachment's own name, a /32 route to the
#     next address through a dead veth of ours, a pod that already has an eth0 that is not ours,
#     and a DEL after the pod namespace is gone.
set -euo pipefail
. "$(dirname "$0")/lib/world.sh"

host_veth() { printf 'rcni%s' "$(printf '%s/%s' "$1" "${2:-eth0}" | sha256sum | cut -c1-11)"; }

# The machine goes down: every namespace this script made (node, outside, pods) disappears.
power_off() {
    local ns
    for ns in "${CREATED_NETNS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
}

conf() { # conf FILE SUBNET DATADIR [RANGE_START RANGE_END]
    local file=$1 subnet=$2 dir=$3 range=""
    [ $# -eq 5 ] && range=",\"rangeStart\":\"$4\",\"rangeEnd\":\"$5\""
    cat >"$file" <<JSON
{"cniVersion":"1.1.0","name":"e2e-reboot","type":"routed-cni",
 "ipam":{"subnet":"$subnet"$range,"dataDir":"$dir"},"logFile":"$WORK/cni.log"}
JSON
}

records() { # records POOLDIR -> "ip containerId" lines, sorted
    find "$1" -maxdepth 1 -regextype posix-extended -regex '.*/[0-9]+(\.[0-9]+){3}$' -print0 2>/dev/null |
        xargs -0 -r jq -r '"\(.ip) \(.containerId)"' | sort
}

reaches_node() { ip netns exec "$1" ping -c1 -W1 -q $NODE_UPLINK >/dev/null 2>&1; }

add_pods() { # add_pods CONF TAG N: ADDs N pods tag-1..N (namespaces rcn-TAG-I-RUN_ID)
    local c=$1 tag=$2 n=$3 i out
    for i in $(seq "$n"); do
        make_pod "rcn-$tag-$i-$RUN_ID"
        out=$(cni ADD "$tag-$i" "rcn-$tag-$i-$RUN_ID" "$c") || fail "ADD $tag-$i: $out"
    done
}

# ---------------------------------------------------------------------------------------------
log "--- (a) reboot with the store on tmpfs (dataDir lost with /run)"
RUNDIR=$WORK/run/routed-cni # plays /run/routed-cni
conf "$WORK/a.json" 10.246.0.0/24 "$RUNDIR"
make_node
add_pods "$WORK/a.json" a 3
expect_eq "(a) records before the reboot" "$(records "$RUNDIR/10.246.0.0-24" | awk '{print $1}' | tr '\n' ' ')" \
    "10.246.0.1 10.246.0.2 10.246.0.3 "
power_off
rm -rf "$WORK/run"
make_node
make_pod rcn-a-new-$RUN_ID
if out=$(cni ADD a-new rcn-a-new-$RUN_ID "$WORK/a.json"); then
    ok "(a) first ADD after the reboot"
    expect_eq "(a) it gets the first address of the range" "$(jq -r '.ips[0].address' <<<"$out")" 10.246.0.1/32
    expect_eq "(a) the pod has it" "$(pod_ip rcn-a-new-$RUN_ID)" 10.246.0.1
    reaches_node rcn-a-new-$RUN_ID && ok "(a) the pod reaches the node" || fail "(a) the pod cannot ping $NODE_UPLINK"
    expect_eq "(a) the recreated store is private (pool dir, keys, record)" \
        "$(stat -c %a "$RUNDIR/10.246.0.0-24" "$RUNDIR/10.246.0.0-24/keys" "$RUNDIR/10.246.0.0-24/10.246.0.1" | tr '\n' ' ')" "700 700 600 "
else
    fail "(a) first ADD after the reboot: $out"
fi
cni DEL a-new rcn-a-new-$RUN_ID "$WORK/a.json" >/dev/null && ok "(a) DEL" || fail "(a) DEL"
expect_clean_node "$RUNDIR"

# ---------------------------------------------------------------------------------------------
log "--- (b) reboot with a persistent dataDir: GC and DEL with an empty CNI_NETNS reclaim"
STORE=$WORK/var-lib/routed-cni # survives the reboot
conf "$WORK/b.json" 10.247.0.0/24 "$STORE"
POOL=$STORE/10.247.0.0-24
add_pods "$WORK/b.json" gc 3
expect_eq "(b) records before the reboot" "$(records "$POOL" | awk '{print $2}' | tr '\n' ' ')" "gc-1 gc-2 gc-3 "
power_off
make_node
expect_eq "(b) records after the reboot" "$(records "$POOL" | wc -l)" 3
expect_eq "(b) no host veth after the reboot" "$(ip -n "$NODE" -o link show | grep -c rcni || true)" 0
jq '. + {"cni.dev/valid-attachments": []}' "$WORK/b.json" >"$WORK/gc.json"
if out=$(on_node env CNI_COMMAND=GC CNI_PATH=/usr/lib/cni "$BIN" <"$WORK/gc.json"); then
    ok "(b) GC with valid-attachments []"
else
    fail "(b) GC: $out"
fi
expect_eq "(b) records after GC" "$(records "$POOL" | wc -l)" 0
expect_eq "(b) keys after GC" "$(ls "$POOL/keys" | wc -l)" 0
expect_clean_node "$STORE"

add_pods "$WORK/b.json" del 3
expect_eq "(b) records before the second reboot" "$(records "$POOL" | awk '{print $2}' | tr '\n' ' ')" "del-1 del-2 del-3 "
power_off
make_node
for i in 1 2 3; do
    # containerd after a reboot: the sandbox's namespace is gone, CNI_NETNS is empty.
    out=$(cni DEL del-$i "" "$WORK/b.json") && ok "(b) DEL del-$i with empty CNI_NETNS" || fail "(b) DEL del-$i: $out"
done
expect_eq "(b) records after DEL" "$(records "$POOL" | wc -l)" 0
expect_eq "(b) keys after DEL" "$(ls "$POOL/keys" | wc -l)" 0
expect_clean_node "$STORE"

# ---------------------------------------------------------------------------------------------
log "--- (c) stale state"
STORE=$WORK/store
conf "$WORK/c.json" 10.248.0.0/24 "$STORE"
POOL=$STORE/10.248.0.0-24

log "(c1) a host veth of the attachment's name, left by a crashed ADD"
cid=crashed ip=""
stale=$(host_veth $cid)
on_node ip link add "$stale" type veth peer name x
stale_index=$(on_node cat /sys/class/net/"$stale"/ifindex)
make_pod rcn-c1-$RUN_ID
if out=$(cni ADD $cid rcn-c1-$RUN_ID "$WORK/c.json"); then
    ok "(c1) ADD over a stale host veth"
    expect_eq "(c1) result names the host veth" "$(jq -r '.interfaces[0].name' <<<"$out")" "$stale"
    new_index=$(on_node cat /sys/class/net/"$stale"/ifindex 2>/dev/null || echo none)
    [ "$new_index" != "$stale_index" ] && [ "$new_index" != none ] && ok "(c1) the stale veth was replaced" ||
        fail "(c1) host veth index $new_index (stale one was $stale_index)"
    expect_eq "(c1) the stale veth's peer x is gone" "$(ip -n "$NODE" -o link show x 2>/dev/null | wc -l)" 0
    expect_eq "(c1) the new veth has the gateway MAC" "$(on_node cat /sys/class/net/"$stale"/address)" ee:ee:ee:ee:ee:ee
    ip=$(pod_ip rcn-c1-$RUN_ID)
    expect_eq "(c1) the node routes the pod's address via the veth" \
        "$(ip -n "$NODE" -4 route show "$ip/32" | awk '{print $3}')" "$stale"
    reaches_node rcn-c1-$RUN_ID && ok "(c1) the pod reaches the node" || fail "(c1) the pod cannot ping $NODE_UPLINK"
else
    fail "(c1) ADD over a stale host veth: $out"
fi

log "(c1b) a retried ADD of a live attachment keeps its address and the pod keeps working"
if out=$(cni ADD $cid rcn-c1-$RUN_ID "$WORK/c.json"); then
    expect_eq "(c1b) same address" "$(jq -r '.ips[0].address' <<<"$out")" "$ip/32"
    expect_eq "(c1b) one address in the store for it" "$(records "$POOL" | grep -c " $cid$")" 1
    expect_eq "(c1b) the pod has it" "$(pod_ip rcn-c1-$RUN_ID)" "$ip"
    reaches_node rcn-c1-$RUN_ID && ok "(c1b) the pod reaches the node" || fail "(c1b) the pod cannot ping $NODE_UPLINK"
else
    fail "(c1b) retried ADD: $out"
fi

log "(c2) a /32 route to the next address through a dead veth of ours"
# The pool's next address: the one after last_reserved (the store hands addresses round-robin).
last=$(cat "$POOL/last_reserved")
next=${last%.*}.$((${last##*.} + 1))
dead=rcnideadbeef000
make_pod rcn-dead-$RUN_ID
on_node ip link add $dead type veth peer name eth0 netns rcn-dead-$RUN_ID
on_node ip link set $dead up # the kernel refuses routes through a link that is down
on_node ip route add "$next/32" dev $dead scope link
make_pod rcn-c2-$RUN_ID
if out=$(cni ADD c2 rcn-c2-$RUN_ID "$WORK/c.json"); then
    ok "(c2) ADD with a /32 route to its address through $dead"
    expect_eq "(c2) it got $next" "$(jq -r '.ips[0].address' <<<"$out")" "$next/32"
    expect_eq "(c2) the /32 route now points at the new pod's veth" \
        "$(ip -n "$NODE" -4 route show "$next/32" | awk '{print $1, $2, $3}')" "$next dev $(host_veth c2)"
    reaches_node rcn-c2-$RUN_ID && ok "(c2) the pod reaches the node" || fail "(c2) the pod cannot ping $NODE_UPLINK"
else
    fail "(c2) ADD with a stale /32 route: $out"
fi
on_node ip link del $dead # the operator removes the dead veth (not an attachment routed-cni knows)

log "(c3) the pod already has an eth0 that routed-cni did not create"
make_pod rcn-c3-$RUN_ID
ip -n rcn-c3-$RUN_ID link add eth0 type veth peer name other0
before=$(records "$POOL")
rc=0
out=$(cni ADD c3 rcn-c3-$RUN_ID "$WORK/c.json") || rc=$?
expect_eq "(c3) ADD exit code" "$rc" 1
expect_eq "(c3) ADD error code" "$(jq -r .code <<<"$out" 2>/dev/null)" 101
grep -q eth0 <<<"$(jq -r .msg <<<"$out" 2>/dev/null)" && ok "(c3) the error names eth0" || fail "(c3) error does not name eth0: $out"
expect_eq "(c3) no host veth for it" "$(ip -n "$NODE" -o link show "$(host_veth c3)" 2>/dev/null | wc -l)" 0
[ "$(records "$POOL")" == "$before" ] && ok "(c3) no allocation record for it (records unchanged)" ||
    fail "(c3) records changed: $(records "$POOL" | tr '\n' ' ') (before: $(tr '\n' ' ' <<<"$before"))"
[ -e "$POOL/keys/$(printf c3/eth0 | sha256sum | cut -d' ' -f1)" ] && fail "(c3) a store key was left" || ok "(c3) no store key for it"
expect_eq "(c3) the pod's own eth0 is untouched" "$(ip -n rcn-c3-$RUN_ID -o link show eth0 | grep -c 'eth0@other0' || true)" 1
expect_eq "(c3) no address given to the pod's eth0" "$(ip -n rcn-c3-$RUN_ID -4 -o addr show dev eth0 | wc -l)" 0
cni DEL c3 rcn-c3-$RUN_ID "$WORK/c.json" >/dev/null && ok "(c3) DEL of the failed attachment" || fail "(c3) DEL of the failed attachment"
expect_eq "(c3) DEL leaves the foreign eth0 alone" "$(ip -n rcn-c3-$RUN_ID -o link show eth0 2>/dev/null | wc -l)" 1

log "(c4) DEL after the pod namespace is gone"
for p in c1:crashed c2:c2; do
    ns=rcn-${p%%:*}-$RUN_ID cid=${p##*:}
    ip=$(pod_ip "$ns")
    ip netns del "$ns"
    out=$(cni DEL "$cid" "$ns" "$WORK/c.json") && ok "(c4) DEL $cid with its namespace gone" || fail "(c4) DEL $cid: $out"
    [ -e "$POOL/$ip" ] && fail "(c4) record $ip of $cid left" || ok "(c4) $ip released"
    expect_eq "(c4) no route to $ip" "$(ip -n "$NODE" -4 route show "$ip/32" | wc -l)" 0
    out=$(cni DEL "$cid" "$ns" "$WORK/c.json") && ok "(c4) second DEL $cid" || fail "(c4) second DEL $cid: $out"
done
expect_clean_node "$STORE"
finish
