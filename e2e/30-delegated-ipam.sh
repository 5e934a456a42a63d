#!/usr/bin/env bash
# Delegated IPAM: `ipam.type: host-local` runs Debian's host-local from CNI_PATH for ADD, CHECK
# and DEL, dual-stack. Its addresses land on eth0 as a /32 and a /128 behind the same routed data
# path, CHECK finds the masquerade rules of the networks host-local returned, and an ADD that
# fails after host-local allocated calls host-local's DEL, so no address leaks. Our own record of
# each delegated attachment (under the top-level dataDir) lets `audit` tell live pods from leaks,
# GC release attachments the runtime no longer knows, and the last DEL of a network's subnet
# remove its masquerade.
set -euo pipefail
. "$(dirname "$0")/lib/world.sh"

HL=$WORK/host-local
RCNI=$WORK/routed-cni
CONF=$WORK/delegated.json
cat >"$CONF" <<JSON
{"cniVersion":"1.0.0","name":"e2e-deleg-$RUN_ID","type":"routed-cni","dataDir":"$RCNI",
 "ipam":{"type":"host-local","ranges":[[{"subnet":"10.203.0.0/24"}],[{"subnet":"fd00:10:203::/64"}]],"dataDir":"$HL"},
 "nonMasqueradeCIDRs":["10.203.0.0/16","fd00:10:203::/48"]}
JSON
# audit in the node: prints its output, returns its exit code.
audit() { on_node "$BIN" audit --data-dir "$RCNI" 2>&1; }
allocated() { find "$HL" -regextype posix-extended -regex '.*/([0-9]+(\.[0-9]+){3}|[0-9a-f:]*:[0-9a-f:]*)$' 2>/dev/null | wc -l; }

make_node
serve_peer_addr "$OUTSIDE" 8080
make_pod rcn-dg1-$RUN_ID
result=$(cni ADD dg1 rcn-dg1-$RUN_ID "$CONF") || die "ADD with host-local failed: $result"
addr=$(jq -r '.ips[0].address' <<<"$result")
expect_eq "host-local's address is a /32 in the result" "${addr#*/}" "32"
expect_eq "eth0 holds it as a /32" "$(ip -n rcn-dg1-$RUN_ID -4 -o addr show eth0 | awk '{print $4}')" "$addr"
addr6=$(jq -r '.ips[1].address' <<<"$result")
expect_eq "host-local's IPv6 address is a /128 in the result" "${addr6#*/}" "128"
expect_eq "eth0 holds it as a /128" "$(ip -n rcn-dg1-$RUN_ID -6 -o addr show eth0 scope global | awk '{print $4}')" "$addr6"
expect_eq "host-local recorded one allocation per family" "$(allocated)" "2"
expect_eq "outside sees the node (masquerade)" "$(seen_by rcn-dg1-$RUN_ID $OUTSIDE_ADDR 8080)" "$NODE_UPLINK"
ip netns exec rcn-dg1-$RUN_ID ping -6 -c1 -W2 "$OUTSIDE_ADDR6" >/dev/null && ok "ping -6 pod -> outside" ||
    fail "ping -6 pod -> outside"
jq --argjson prev "$result" '. + {prevResult: $prev}' "$CONF" >"$WORK/check.json"
cni CHECK dg1 rcn-dg1-$RUN_ID "$WORK/check.json" && ok "CHECK (forwarded to host-local)" || fail "CHECK"
# CHECK finds the pool of the masquerade rules from the address alone.
jump=$(on_node ip6tables -t nat -S POSTROUTING | grep 'routed-cni pool fd00:10:203::/64' | sed 's/^-A //')
eval "on_node ip6tables -t nat -D $jump"
if out=$(cni CHECK dg1 rcn-dg1-$RUN_ID "$WORK/check.json"); then
    fail "CHECK passed without the IPv6 masquerade jump"
else
    msg=$(jq -r .msg <<<"$out")
    [[ $msg == *"masquerade rule missing"*"routed-cni pool fd00:10:203::/64"* ]] && ok "CHECK names the missing IPv6 jump" || fail "CHECK said: $msg"
fi
eval "on_node ip6tables -t nat -A $jump"
cni CHECK dg1 rcn-dg1-$RUN_ID "$WORK/check.json" && ok "CHECK after the repair" || fail "CHECK after the repair"
veth1=$(jq -r '.interfaces[0].name' <<<"$result")

# audit knows the delegated pod: its veth, routes and NAT jumps are explained.
out=$(audit) && ok "audit passes with a delegated pod" || fail "audit with a delegated pod: $out"
grep -q '^LEAK' <<<"$out" && fail "audit reports leaks on a healthy node: $out"
listed=$(on_node "$BIN" list --data-dir "$RCNI" 2>&1)
grep "${addr%/*}" <<<"$listed" | grep -q delegated && ok "list shows the delegated pod" ||
    fail "list does not show ${addr%/*} as delegated: $listed"
# A real leak next to it is still one: a veth of ours that no attachment names.
on_node ip link add rcni0123456789a type veth peer name rcnxpeer
if out=$(audit); then
    fail "audit missed a leaked veth next to a delegated pod: $out"
else
    grep -q '^LEAK host veth rcni0123456789a' <<<"$out" && ok "audit reports the leaked veth" ||
        fail "audit said: $out"
    grep "^LEAK" <<<"$out" | grep -q "$veth1" && fail "audit calls the delegated pod's veth a leak: $out"
fi
on_node ip link del rcni0123456789a

# A pod that already has a foreign eth0: ADD must fail after host-local allocated, and give the
# address back.
make_pod rcn-dg2-$RUN_ID
ip -n rcn-dg2-$RUN_ID link add eth0 type veth peer name other0
if out=$(cni ADD dg2 rcn-dg2-$RUN_ID "$CONF"); then
    fail "ADD into a pod with a foreign eth0 succeeded"
else
    expect_eq "failed ADD error code" "$(jq -r .code <<<"$out")" "101"
fi
expect_eq "host-local allocations after the failed ADD (pod dg1's two)" "$(allocated)" "2"
out=$(audit) && ok "audit is clean after the rolled-back ADD" || fail "audit after the rolled-back ADD: $out"

# GC: an attachment the runtime no longer lists loses its veth and our record; dg1 keeps both.
# host-local's addresses are host-local's GC's business: Debian's host-local (CNI 1.0) has none,
# so GC reports its failure after doing our part, and DEL gives dg3's addresses back below.
make_pod rcn-dg3-$RUN_ID
cni ADD dg3 rcn-dg3-$RUN_ID "$CONF" >/dev/null && ok "ADD dg3" || fail "ADD dg3"
expect_eq "host-local allocations with dg3" "$(allocated)" "4"
jq '. + {cniVersion: "1.1.0", "cni.dev/valid-attachments":[{"containerID":"dg1","ifname":"eth0"}]}' "$CONF" >"$WORK/gc.json"
if out=$(cni GC "" "" "$WORK/gc.json"); then
    ok "GC"
else
    [[ $(jq -r .msg <<<"$out") == *"IPAM plugin host-local GC failed"* ]] && ok "GC reports host-local's missing GC" ||
        fail "GC: $out"
fi
expect_eq "dg3's pod interface is gone" "$(ip -n rcn-dg3-$RUN_ID -o link show eth0 2>/dev/null | wc -l)" "0"
expect_eq "dg1's pod interface stays" "$(ip -n rcn-dg1-$RUN_ID -o link show eth0 | wc -l)" "1"
expect_eq "outside still sees dg1 masqueraded" "$(seen_by rcn-dg1-$RUN_ID $OUTSIDE_ADDR 8080)" "$NODE_UPLINK"
out=$(audit) && ok "audit is clean after GC" || fail "audit after GC: $out"
cni DEL dg3 rcn-dg3-$RUN_ID "$CONF" >/dev/null && ok "DEL dg3 after GC" || fail "DEL dg3 after GC"
expect_eq "host-local allocations after DEL dg3 (dg1's two)" "$(allocated)" "2"

cni DEL dg1 rcn-dg1-$RUN_ID "$CONF" >/dev/null && ok "DEL" || fail "DEL"
cni DEL dg1 rcn-dg1-$RUN_ID "$CONF" >/dev/null && ok "second DEL" || fail "second DEL"
expect_eq "host-local allocations after DEL" "$(allocated)" "0"
# The last pod of the subnets is gone: so are their masquerade rules, and every record.
expect_clean_node "$RCNI"
left=$(find "$RCNI" -type f ! -name lock 2>/dev/null || true)
[ -z "$left" ] && ok "no delegated record left" || fail "files left in $RCNI: $left"
finish
