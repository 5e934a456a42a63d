#!/usr/bin/env bash
# SIGKILL the plugin at named instants inside ADD and DEL (ROUTED_CNI_CRASH_AT, inert unless a
# test sets it), including while it holds the store lock and between writing and renaming a
# record, then run each recovery a runtime would (DEL, ADD again, GC). Every time: the store
# stays readable, the node ends clean, and afterwards every address of the pool can still be
# handed out (none lost for good). The pods are dual-stack, so every instant leaves two pools to
# recover, including the one between the IPv4 and the IPv6 allocation.
set -euo pipefail
. "$(dirname "$0")/lib/world.sh"

STORE=$WORK/store
CONF=$WORK/crash.json
# A /29 and a /125: 6 addresses each, so a single lost address of either family shows at the end.
cat >"$CONF" <<JSON
{"cniVersion":"1.1.0","name":"e2e-crash","type":"routed-cni",
 "ipam":{"ranges":[[{"subnet":"10.204.0.0/29"}],[{"subnet":"fd00:10:204::/125"}]],"dataDir":"$STORE"},
 "logFile":"$WORK/cni.log"}
JSON
jq '. + {"cni.dev/valid-attachments":[]}' "$CONF" >"$WORK/gc.json"
make_node

crash() { # crash POINT VERB CID POD -> asserts the plugin died by SIGKILL
    local rc=0 out
    out=$(ROUTED_CNI_CRASH_AT=$1 cni "$2" "$3" "$4" "$CONF") || rc=$?
    if [ $rc -eq 137 ] && [ -z "$out" ]; then ok "$2 killed at $1"; else fail "$2 at $1: rc=$rc out=$out"; fi
}
recover() { # recover HOW CID POD
    case $1 in
        DEL) cni DEL "$2" "$3" "$CONF" >/dev/null ;;
        ADD) cni ADD "$2" "$3" "$CONF" >/dev/null &&
            ip netns exec "$3" ping -c1 -W2 $NODE_UPLINK >/dev/null &&
            ip netns exec "$3" ping -6 -c1 -W2 $NODE_UPLINK6 >/dev/null &&
            cni DEL "$2" "$3" "$CONF" >/dev/null ;;
        GC) ip netns exec "$NODE" env CNI_COMMAND=GC CNI_PATH=/usr/lib/cni "$BIN" <"$WORK/gc.json" ;;
    esac
}
store_readable() {
    ip netns exec "$NODE" env CNI_COMMAND=STATUS CNI_PATH=/usr/lib/cni "$BIN" <"$CONF" >/dev/null
}

n=0
for point in store:locked store:key-before-rename store:key-written store:record-before-rename \
    add:first-family-allocated add:allocated add:veth-created add:pod-configured add:before-nat nat:chain-filled; do
    for how in DEL ADD GC; do
        n=$((n + 1))
        pod=rcn-cr$n-$RUN_ID
        make_pod "$pod"
        crash "$point" ADD "c$n" "$pod"
        store_readable || fail "store unreadable after ADD killed at $point"
        recover "$how" "c$n" "$pod" && ok "recovered by $how" || fail "recovery by $how after ADD killed at $point"
        expect_clean_node "$STORE" >/dev/null
        ip netns del "$pod"
    done
done
# DEL killed part-way: the runtime retries DEL; GC must also finish the job.
for point in store:locked store:record-removed del:released; do
    for how in DEL GC; do
        n=$((n + 1))
        pod=rcn-cr$n-$RUN_ID
        make_pod "$pod"
        cni ADD "c$n" "$pod" "$CONF" >/dev/null || fail "ADD before DEL crash"
        crash "$point" DEL "c$n" "$pod"
        if [ "$point" == del:released ]; then
            # Address released, veth still there: exactly what the leak audit exists to find.
            if audit=$(on_node "$BIN" audit --data-dir "$STORE"); then
                fail "audit missed the veth left by a DEL killed at $point"
            else
                grep -q "host veth rcni.*no allocation explains it" <<<"$audit" && ok "audit reports the orphan veth" ||
                    fail "audit said: $audit"
            fi
        fi
        store_readable || fail "store unreadable after DEL killed at $point"
        recover "$how" "c$n" "$pod" && ok "recovered by $how" || fail "recovery by $how after DEL killed at $point"
        expect_clean_node "$STORE" >/dev/null
        ip netns del "$pod"
    done
done
[ "$FAILURES" -eq 0 ] && ok "node clean after every crash and recovery"

# No address lost for good: the whole /29 and the whole /125 can still be handed out.
for i in 1 2 3 4 5 6; do
    make_pod rcn-full$i-$RUN_ID
    res=$(cni ADD full$i rcn-full$i-$RUN_ID "$CONF") || fail "addresses $i of 6 could not be allocated"
    [ "$(jq '.ips | length' <<<"$res")" = 2 ] || fail "ADD full$i did not get one address per family: $res"
done
out=$(cni ADD full7 rcn-full1-$RUN_ID "$CONF") || true
expect_eq "7th ADD on a /29 answers code" "$(jq -r .code <<<"$out")" "100"
for i in 1 2 3 4 5 6; do cni DEL full$i rcn-full$i-$RUN_ID "$CONF" >/dev/null || fail "DEL full$i"; done
expect_clean_node "$STORE"
finish
