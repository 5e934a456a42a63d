#!/usr/bin/env bash
# cnitool (upstream, built from Debian's source) drives routed-cni in a scratch node namespace,
# for every cniVersion we speak: add, check (>= 0.4.0, including a broken pod it must catch),
# connectivity with masquerade, del twice, nothing left. Debian's libcni (1.1.2) predates GC and
# STATUS, so those verbs are sent the way libcni 1.1 sends them (same env, stdin with
# cni.dev/valid-attachments) by this script.
set -euo pipefail
. "$(dirname "$0")/lib/world.sh"

CNITOOL=$(bash "$(dirname "$0")/lib/get-cnitool.sh" | tail -1)
[ -x "$CNITOOL" ] || die "cnitool could not be built"
export NETCONFPATH=$WORK/net.d CNI_PATH=/usr/lib/cni:$(dirname "$BIN")
mkdir -p "$NETCONFPATH"
STORE=$WORK/store

make_node
serve_peer_addr "$OUTSIDE" 8080

cnitool() { on_node env NETCONFPATH="$NETCONFPATH" CNI_PATH="$CNI_PATH" "$CNITOOL" "$@"; }
# libcni caches results per network under /var/lib/cni/results: remove ours on exit.
trap 'rm -f /var/lib/cni/results/e2e-$RUN_ID-*; cleanup_world' EXIT

conflist() { # conflist VERSION SUBNET -> network name
    local v=$1 subnet=$2 net=e2e-$RUN_ID-${1//./}
    cat >"$NETCONFPATH/$net.conflist" <<JSON
{"cniVersion":"$v","name":"$net","plugins":[{"type":"routed-cni",
 "ipam":{"subnet":"$subnet","dataDir":"$STORE"},"nonMasqueradeCIDRs":["10.200.0.0/16"],
 "dns":{"nameservers":["10.96.0.10"]},"logFile":"$WORK/cni.log","logLevel":"debug"}]}
JSON
    echo "$net"
}

i=0
for v in 0.3.0 0.3.1 0.4.0 1.0.0 1.1.0; do
    i=$((i + 1))
    log "--- cniVersion $v"
    net=$(conflist "$v" "10.200.$i.0/24")
    pod=rcn-p$i-$RUN_ID
    make_pod "$pod"
    # Debian's libcni 1.1.2 rejects 1.1.0 results ("unsupported CNI result version"): for 1.1.0
    # this script plays the runtime itself, with the same environment and stdin libcni builds.
    if [ "$v" == 1.1.0 ]; then
        jq '.plugins[0] + {name: .name, cniVersion: .cniVersion}' "$NETCONFPATH/$net.conflist" >"$WORK/$net.json"
        cid=direct-$RUN_ID
        cnitool() {
            local verb=$1 conf=$WORK/$net.json
            if [ "$verb" != add ]; then
                jq --argjson prev "$result" '. + {prevResult: $prev}' "$WORK/$net.json" >"$WORK/$net-prev.json"
                conf=$WORK/$net-prev.json
            fi
            cni "${verb^^}" "$cid" "$pod" "$conf"
        }
    fi
    if ! result=$(cnitool add "$net" /run/netns/$pod); then
        fail "cnitool add ($v): $result"
        continue
    fi
    expect_eq "result cniVersion" "$(jq -r .cniVersion <<<"$result")" "$v"
    expect_eq "pod interface sandbox" "$(jq -r '.interfaces[] | select(.name=="eth0") | .sandbox' <<<"$result")" "/run/netns/$pod"
    expect_eq "ips[0].gateway" "$(jq -r '.ips[0].gateway' <<<"$result")" "169.254.1.1"
    if [[ $v == 0.* ]]; then
        expect_eq "ips[0].version" "$(jq -r '.ips[0].version' <<<"$result")" "4"
    else
        expect_eq "ips[0] has no version" "$(jq -r '.ips[0] | has("version")' <<<"$result")" "false"
    fi
    ip=$(pod_ip "$pod")
    expect_eq "address on eth0 matches result" "$ip/32" "$(jq -r '.ips[0].address' <<<"$result")"
    expect_eq "outside sees the node (masquerade)" "$(seen_by "$pod" $OUTSIDE_ADDR 8080)" "$NODE_UPLINK"

    if [[ $v != 0.3.* ]]; then
        out=$(cnitool check "$net" /run/netns/$pod 2>&1) && ok "check passes on a healthy pod" || fail "check ($v): $out"
        ip -n "$pod" route del default
        if out=$(cnitool check "$net" /run/netns/$pod 2>&1); then
            fail "check did not notice the missing default route"
        else
            grep -q "default route" <<<"$out" && ok "check names the missing default route" || fail "check said: $out"
        fi
        ip -n "$pod" route add default via 169.254.1.1 dev eth0
    fi

    cnitool del "$net" /run/netns/$pod && ok "del" || fail "del ($v)"
    cnitool del "$net" /run/netns/$pod && ok "second del" || fail "second del ($v)"
    expect_eq "pod has no eth0 after del" "$(ip -n "$pod" -o link show eth0 2>/dev/null | wc -l)" "0"
done
expect_clean_node "$STORE"

log "--- GC and STATUS (cniVersion 1.1.0)"
conf=$WORK/gc.json
cat >"$conf" <<JSON
{"cniVersion":"1.1.0","name":"e2e-gc","type":"routed-cni","ipam":{"subnet":"10.201.0.0/30","dataDir":"$STORE"}}
JSON
make_pod rcn-gc1-$RUN_ID
make_pod rcn-gc2-$RUN_ID
cni ADD keep rcn-gc1-$RUN_ID "$conf" >/dev/null && cni ADD stale rcn-gc2-$RUN_ID "$conf" >/dev/null || fail "ADD for GC"
listing=$(on_node "$BIN" list --data-dir "$STORE" --json)
expect_eq "routed-cni list shows both pods alive" \
    "$(jq -c '[.[] | select(.pool=="10.201.0.0/30") | [.record.containerId, .record.podName, .hostVethPresent]] | sort' <<<"$listing")" \
    '[["keep","keep",true],["stale","stale",true]]'
out=$(ip netns exec "$NODE" env CNI_COMMAND=STATUS CNI_PATH=/usr/lib/cni "$BIN" <"$conf") && fail "STATUS on a full pool passed" ||
    expect_eq "STATUS code on a full pool" "$(jq -r .code <<<"$out")" "50"
jq '. + {"cni.dev/valid-attachments":[{"containerID":"keep","ifname":"eth0"}]}' "$conf" >"$WORK/gc-run.json"
ip netns exec "$NODE" env CNI_COMMAND=GC CNI_PATH=/usr/lib/cni "$BIN" <"$WORK/gc-run.json" && ok "GC" || fail "GC failed"
expect_eq "GC left the valid pod's eth0" "$(ip -n rcn-gc1-$RUN_ID -o link show eth0 | wc -l)" "1"
expect_eq "GC removed the stale pod's eth0" "$(ip -n rcn-gc2-$RUN_ID -o link show eth0 2>/dev/null | wc -l)" "0"
ip netns exec "$NODE" env CNI_COMMAND=STATUS CNI_PATH=/usr/lib/cni "$BIN" <"$conf" && ok "STATUS with room" || fail "STATUS with room"
out=$(jq '.cniVersion="0.3.1" | .prevResult={}' "$conf" | cni CHECK keep rcn-gc1-$RUN_ID /dev/stdin) || true
expect_eq "CHECK on cniVersion 0.3.1 answers code" "$(jq -r .code <<<"$out")" "1"
for verb in GC STATUS; do
    out=$(jq '.cniVersion="1.0.0"' "$conf" | ip netns exec "$NODE" env CNI_COMMAND=$verb "$BIN") || true
    expect_eq "$verb on cniVersion 1.0.0 answers code" "$(jq -r .code <<<"$out")" "1"
done
cni DEL keep rcn-gc1-$RUN_ID "$conf" >/dev/null || fail "DEL after GC"
expect_clean_node "$STORE"

log "--- CHECK names each broken piece"
ck=$WORK/check.json
cat >"$ck" <<JSON
{"cniVersion":"1.0.0","name":"e2e-check","type":"routed-cni","ipam":{"subnet":"10.201.1.0/24","dataDir":"$STORE"}}
JSON
make_pod rcn-ck-$RUN_ID
result=$(cni ADD ck rcn-ck-$RUN_ID "$ck") || fail "ADD for CHECK"
jq --argjson prev "$result" '. + {prevResult: $prev}' "$ck" >"$WORK/check-prev.json"
ip=$(pod_ip rcn-ck-$RUN_ID)
veth=$(jq -r '.interfaces[0].name' <<<"$result")
record=$STORE/10.201.1.0-24/$ip
check_catches() { # check_catches WHAT NEEDLE BREAK REPAIR
    eval "$3"
    local out
    if out=$(cni CHECK ck rcn-ck-$RUN_ID "$WORK/check-prev.json"); then
        fail "CHECK passed with $1"
    elif grep -q -- "$2" <<<"$(jq -r .msg <<<"$out")"; then
        ok "CHECK names $1: $(jq -r .msg <<<"$out" | cut -c1-100)"
    else
        fail "CHECK with $1 said: $out"
    fi
    eval "$4"
    cni CHECK ck rcn-ck-$RUN_ID "$WORK/check-prev.json" >/dev/null && ok "CHECK passes again after repairing $1" || fail "CHECK after repairing $1"
}
cp "$record" "$WORK/record.bak"
jump=$(on_node iptables -t nat -S POSTROUTING | grep 'routed-cni pool 10.201.1.0/24' | sed 's/^-A POSTROUTING //')
check_catches "the pod default route" "default route" \
    "ip -n rcn-ck-$RUN_ID route del default" "ip -n rcn-ck-$RUN_ID route add default via 169.254.1.1 dev eth0"
check_catches "the host /32 route" "$ip/32" \
    "ip -n $NODE route del $ip/32" "ip -n $NODE route add $ip/32 dev $veth scope link"
check_catches "proxy_arp" "proxy_arp" \
    "on_node sysctl -qw net.ipv4.conf.$veth.proxy_arp=0" "on_node sysctl -qw net.ipv4.conf.$veth.proxy_arp=1"
check_catches "the host veth's MTU" "host veth $veth has MTU 1400, expected 1500" \
    "ip -n $NODE link set $veth mtu 1400" "ip -n $NODE link set $veth mtu 1500"
check_catches "the uplink's forwarding flag" "sysctl -w net.ipv4.conf.uplink.forwarding=1" \
    "on_node sysctl -qw net.ipv4.conf.uplink.forwarding=0" "on_node sysctl -qw net.ipv4.conf.uplink.forwarding=1"
check_catches "the NAT jump" "masquerade rule missing" \
    "on_node iptables -t nat -D POSTROUTING $jump" "on_node iptables -t nat -A POSTROUTING $jump"
check_catches "the allocation record" "no allocation" \
    "rm -f $record" "cp $WORK/record.bak $record"
cni DEL ck rcn-ck-$RUN_ID "$ck" >/dev/null || fail "DEL after CHECK tests"

log "--- node crash: pods' namespaces deleted without DEL, then GC with the survivors"
crash_conf=$WORK/crash-gc.json
jq '.ipam.subnet = "10.201.2.0/29"' "$conf" >"$crash_conf"
declare -A addr
for i in 1 2 3 4; do
    make_pod rcn-nc$i-$RUN_ID
    cni ADD nc$i rcn-nc$i-$RUN_ID "$crash_conf" >/dev/null || fail "ADD nc$i"
    addr[$i]=$(pod_ip rcn-nc$i-$RUN_ID)
done
ip netns del rcn-nc3-$RUN_ID
ip netns del rcn-nc4-$RUN_ID
jq '. + {"cni.dev/valid-attachments":[{"containerID":"nc1","ifname":"eth0"},{"containerID":"nc2","ifname":"eth0"}]}' \
    "$crash_conf" >"$WORK/crash-gc-run.json"
ip netns exec "$NODE" env CNI_COMMAND=GC "$BIN" <"$WORK/crash-gc-run.json" && ok "GC after the crash" || fail "GC after the crash"
left=$(ls "$STORE/10.201.2.0-29" | grep -E '^[0-9.]+$' | sort | tr '\n' ' ')
expect_eq "GC kept exactly the survivors' addresses" "$left" "$(printf '%s\n' "${addr[1]}" "${addr[2]}" | sort | tr '\n' ' ')"
expect_eq "survivors still reach the node" "$(ip netns exec rcn-nc1-$RUN_ID ping -c1 -W2 $NODE_UPLINK >/dev/null && ip netns exec rcn-nc2-$RUN_ID ping -c1 -W2 $NODE_UPLINK >/dev/null && echo yes)" "yes"
# The freed addresses are handed out again and work: the /29 has 6, 2 are live, so 4 new pods
# must fit and two of them must get the dead pods' addresses.
got=""
for i in 5 6 7 8; do
    make_pod rcn-nc$i-$RUN_ID
    cni ADD nc$i rcn-nc$i-$RUN_ID "$crash_conf" >/dev/null || fail "ADD nc$i after GC"
    got="$got $(pod_ip rcn-nc$i-$RUN_ID)"
    ip netns exec rcn-nc$i-$RUN_ID ping -c1 -W2 $NODE_UPLINK >/dev/null || fail "nc$i cannot reach the node"
done
for i in 3 4; do
    grep -qw "${addr[$i]}" <<<"$got" && ok "dead pod's ${addr[$i]} handed out again and reachable" || fail "${addr[$i]} not reused: $got"
done
for i in 1 2 5 6 7 8; do cni DEL nc$i rcn-nc$i-$RUN_ID "$crash_conf" >/dev/null || fail "DEL nc$i"; done
expect_clean_node "$STORE"
finish
