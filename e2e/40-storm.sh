#!/usr/bin/env bash
# Concurrency storm: 100 pods ADDed and DELed in parallel into a /24; 100 pods into a pool of
# exactly 100 addresses (all succeed, the 101st fails with code 100 and leaves nothing); then
# 3 rounds of ADDs and DELs interleaved (and a small pool emptied and refilled each round) while
# another iptables writer (like kube-proxy) churns the node's nat table. After every round, what
# an operator would check: no address on two pods, the store's records (and keys) are exactly the
# live pods, no orphan host veth or /32 route, one masquerade jump per pool with pods and none
# for an empty one, every pod reaches the node, a sample pod per pool reaches the outside as the
# node. At the end the node is clean and the plugin logged no unexpected error.
set -euo pipefail
. "$(dirname "$0")/lib/world.sh"

STORE=$WORK/store
RES=$WORK/res
mkdir -p "$RES"
START=$SECONDS
make_node
serve_peer_addr "$OUTSIDE" 8080 # answers with the source address it sees

conf() { # conf FILE SUBNET [RANGE_START RANGE_END]
    local file=$1 subnet=$2 range=""
    [ $# -eq 4 ] && range=",\"rangeStart\":\"$3\",\"rangeEnd\":\"$4\""
    cat >"$file" <<JSON
{"cniVersion":"1.0.0","name":"e2e-storm","type":"routed-cni",
 "ipam":{"subnet":"$subnet"$range,"dataDir":"$STORE"},"logFile":"$WORK/cni.log"}
JSON
}
SUBNET_A=10.244.0.0/24
SUBNET_B=10.245.0.0/24
conf "$WORK/a.json" $SUBNET_A
conf "$WORK/b.json" $SUBNET_B 10.245.0.10 10.245.0.109 # exactly 100 addresses
POOL_A=$STORE/${SUBNET_A/\//-}
POOL_B=$STORE/${SUBNET_B/\//-}

declare -A LIVE=()   # container ID -> pod netns, for every pod whose ADD succeeded and not DELed
declare -A ADDR=()   # container ID -> the address ADD reported
declare -A CONF_OF=() # container ID -> the config it was ADDed with
declare -A SUBNET_OF=(["$WORK/a.json"]=$SUBNET_A ["$WORK/b.json"]=$SUBNET_B)
declare -A POOLDIR_OF=(["$WORK/a.json"]=$POOL_A ["$WORK/b.json"]=$POOL_B)
SEQ=0

host_veth() { printf 'rcni%s' "$(printf '%s/eth0' "$1" | sha256sum | cut -c1-11)"; }
key_name() { printf '%s/eth0' "$1" | sha256sum | cut -d' ' -f1; }

# new_pods N TAG FILE: N fresh pod namespaces, "CID NETNS" lines into FILE. Not in a pipeline:
# the namespaces must be recorded in this shell for the cleanup trap.
new_pods() {
    local n=$1 tag=$2 i cid ns
    : >"$3"
    for i in $(seq "$n"); do
        SEQ=$((SEQ + 1))
        cid=$tag-$RUN_ID-$(printf %03d $SEQ)
        ns=rcn-s$SEQ-$RUN_ID
        make_pod "$ns"
        echo "$cid $ns" >>"$3"
    done
}

# run_jobs JOBFILE: every line "VERB CID NETNS CONF" started at once; each call's stdout, stderr
# and exit code land in $RES/VERB-CID.{out,err,rc}.
run_jobs() {
    local pids=() verb cid ns conf p
    while read -r verb cid ns conf; do
        (
            rc=0
            cni "$verb" "$cid" "$ns" "$conf" >"$RES/$verb-$cid.out" 2>"$RES/$verb-$cid.err" || rc=$?
            echo $rc >"$RES/$verb-$cid.rc"
        ) &
        pids+=($!)
    done <"$1"
    for p in "${pids[@]}"; do wait "$p" || true; done
}

# collect JOBFILE LABEL: books every job's outcome into LIVE/ADDR; counts failed calls.
collect() {
    local verb cid ns conf rc adds=0 dels=0 bad=0
    while read -r verb cid ns conf; do
        rc=$(cat "$RES/$verb-$cid.rc" 2>/dev/null || echo missing)
        if [ "$rc" != 0 ]; then
            bad=$((bad + 1))
            fail "$2: $verb $cid exited $rc: $(cat "$RES/$verb-$cid.out" "$RES/$verb-$cid.err" 2>/dev/null | head -c 400)"
            # A failed ADD must leave nothing; the invariants below check that it did.
            continue
        fi
        case $verb in
            ADD)
                adds=$((adds + 1))
                LIVE[$cid]=$ns
                CONF_OF[$cid]=$conf
                ADDR[$cid]=$(jq -r '.ips[0].address' "$RES/$verb-$cid.out" | cut -d/ -f1)
                ;;
            DEL)
                dels=$((dels + 1))
                if ip -n "$ns" -o link show eth0 >/dev/null 2>&1; then
                    bad=$((bad + 1))
                    fail "$2: DEL $cid left eth0 in $ns"
                fi
                unset "LIVE[$cid]" "ADDR[$cid]" "CONF_OF[$cid]"
                ip netns del "$ns"
                ;;
        esac
    done <"$1"
    [ $bad -eq 0 ] && ok "$2: all $adds ADDs and $dels DELs succeeded"
}

# check_invariants LABEL: the whole node against the pods the script believes live.
check_invariants() {
    local audit
    audit=$(on_node "$BIN" audit --data-dir "$STORE") && ok "$1: routed-cni audit finds no leak" ||
        fail "$1: routed-cni audit: $audit"
    local label=$1 cid ns ip want got pids=() p c n addrs_ok=1 subnet chain
    local -A owner=()
    # 1. Each live pod has one address, the one ADD reported, and no other pod has it.
    for cid in "${!LIVE[@]}"; do
        ip=$(pod_ip "${LIVE[$cid]}")
        if [ "$ip" != "${ADDR[$cid]}" ]; then
            fail "$label: pod $cid has '$ip' on eth0, ADD reported '${ADDR[$cid]}'"
            addrs_ok=0
        fi
        if [ -n "$ip" ] && [ -n "${owner[$ip]:-}" ]; then
            fail "$label: $ip is on two pods: ${owner[$ip]} and $cid"
            addrs_ok=0
        fi
        owner[$ip]=$cid
    done
    [ $addrs_ok -eq 1 ] && ok "$label: ${#LIVE[@]} live pods, every address distinct and as reported"

    for c in "$WORK/a.json" "$WORK/b.json"; do
        subnet=${SUBNET_OF[$c]}
        # 2. The pool's records are exactly its live pods (file name = ip = pod address, owner),
        #    and so are its keys.
        want=$(for cid in "${!LIVE[@]}"; do [ "${CONF_OF[$cid]}" == "$c" ] && echo "${ADDR[$cid]} ${ADDR[$cid]} $cid"; done | sort || true)
        got=$(find "${POOLDIR_OF[$c]}" -maxdepth 1 -regextype posix-extended -regex '.*/[0-9]+(\.[0-9]+){3}$' -print0 2>/dev/null |
            xargs -0 -r jq -r '"\(input_filename | split("/") | last) \(.ip) \(.containerId)"' | sort || true)
        n=$(grep -c . <<<"$want" || true)
        if [ "$want" == "$got" ]; then
            ok "$label: $subnet store records = its live pods ($n)"
        else
            fail "$label: $subnet store records differ from live pods (< want, > store):"
            diff <(echo "$want") <(echo "$got") | grep '^[<>]' | head -20 || true
        fi
        want=$(for cid in "${!LIVE[@]}"; do [ "${CONF_OF[$cid]}" == "$c" ] && key_name "$cid" && echo; done | grep . | sort || true)
        got=$(ls "${POOLDIR_OF[$c]}/keys" 2>/dev/null | sort || true)
        [ "$want" == "$got" ] && ok "$label: $subnet store keys = its live pods" ||
            fail "$label: $subnet store keys differ from live pods: $(diff <(echo "$want") <(echo "$got") | grep '^[<>]' | head -5 | tr '\n' ' ')"
        # 3. Masquerade: one jump to one chain (default nonMasqueradeCIDRs: RETURN for the pool,
        #    MASQUERADE the rest) while the pool has pods; nothing once it has none.
        got=$(on_node iptables -t nat -S POSTROUTING | grep -c -- "-s $subnet .*-j RCNI-" || true)
        if [ "$n" -gt 0 ]; then
            # ... and it works: a pod of the pool reaches the outside as the node.
            cid=$(for cid in "${!LIVE[@]}"; do [ "${CONF_OF[$cid]}" == "$c" ] && echo "$cid"; done | shuf -n1 || true)
            got=$(seen_by "${LIVE[$cid]}" $OUTSIDE_ADDR 8080)
            [ "$got" == "$NODE_UPLINK" ] && ok "$label: $subnet pod $cid reaches the outside as the node" ||
                fail "$label: the outside saw pod $cid of $subnet as '$got', want $NODE_UPLINK"
            got=$(on_node iptables -t nat -S POSTROUTING | grep -c -- "-s $subnet .*-j RCNI-" || true)
            chain=$(on_node iptables -t nat -S POSTROUTING | grep -- "-s $subnet .*-j RCNI-" | head -1 | awk '{print $NF}')
            if [ "$got" -eq 1 ] && [ "$(on_node iptables -t nat -S "$chain" | grep -c '^-A')" -eq 2 ]; then
                ok "$label: $subnet has one masquerade jump and chain"
            else
                fail "$label: $subnet masquerade rules: $(on_node iptables-save -t nat | grep -- "$subnet\|RCNI" | tr '\n' ' ')"
            fi
        else
            [ "$got" -eq 0 ] && ok "$label: $subnet has no pod and no masquerade jump" ||
                fail "$label: $subnet has no pod but $got masquerade jumps"
        fi
    done

    # 4. Host veths and /32 routes into them: one per live pod, none else.
    want=$(for cid in "${!LIVE[@]}"; do host_veth "$cid"; echo; done | grep . | sort || true)
    got=$(ip -n "$NODE" -o link show | awk -F': ' '{sub(/@.*/, "", $2); print $2}' | grep '^rcni' | sort || true)
    [ "$want" == "$got" ] && ok "$label: host veths = live pods" ||
        fail "$label: host veths differ (< want, > node): $(diff <(echo "$want") <(echo "$got") | grep '^[<>]' | head -10 | tr '\n' ' ')"
    want=$(for cid in "${!LIVE[@]}"; do echo "${ADDR[$cid]} $(host_veth "$cid")"; done | sort)
    got=$(ip -n "$NODE" -4 route show | awk '/ dev rcni/ {for (i = 1; i < NF; i++) if ($i == "dev") print $1, $(i + 1)}' | sort)
    [ "$want" == "$got" ] && ok "$label: /32 routes = live pods, each via its own veth" ||
        fail "$label: routes differ (< want, > node): $(diff <(echo "$want") <(echo "$got") | grep '^[<>]' | head -10 | tr '\n' ' ')"

    # 5. Every live pod reaches the node's uplink address, all at once.
    rm -f "$WORK/unreachable"
    for cid in "${!LIVE[@]}"; do
        ns=${LIVE[$cid]}
        (ip netns exec "$ns" ping -c1 -W1 -q $NODE_UPLINK >/dev/null 2>&1 || echo "$cid" >>"$WORK/unreachable") &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || true; done
    if [ -s "$WORK/unreachable" ]; then
        fail "$label: $(wc -l <"$WORK/unreachable") pods cannot ping $NODE_UPLINK: $(head -5 "$WORK/unreachable" | tr '\n' ' ')"
    else
        ok "$label: all ${#LIVE[@]} pods ping $NODE_UPLINK"
    fi
}

jobs_for() { # jobs_for VERB CONF < "CID NETNS" lines -> job lines
    local cid ns
    while read -r cid ns; do echo "$1 $cid $ns $2"; done
}

all_live() { # all_live CONF -> "CID NETNS" of the live pods ADDed with CONF
    local cid
    for cid in "${!LIVE[@]}"; do
        if [ "${CONF_OF[$cid]}" == "$1" ]; then echo "$cid ${LIVE[$cid]}"; fi
    done
}

# ---------------------------------------------------------------------------------------------
log "--- (a) 100 parallel ADDs into $SUBNET_A, then 100 parallel DELs"
t=$SECONDS
new_pods 100 a "$WORK/new"
jobs_for ADD "$WORK/a.json" <"$WORK/new" >"$WORK/a-add.jobs"
run_jobs "$WORK/a-add.jobs"
collect "$WORK/a-add.jobs" "(a) ADD"
check_invariants "(a) after ADD"
all_live "$WORK/a.json" | jobs_for DEL "$WORK/a.json" >"$WORK/a-del.jobs"
run_jobs "$WORK/a-del.jobs"
collect "$WORK/a-del.jobs" "(a) DEL"
check_invariants "(a) after DEL"
expect_clean_node "$STORE"
log "(a) took $((SECONDS - t)) s"

# ---------------------------------------------------------------------------------------------
log "--- (b) 100 parallel ADDs into a pool of exactly 100 addresses, then a 101st"
t=$SECONDS
new_pods 100 b "$WORK/new"
jobs_for ADD "$WORK/b.json" <"$WORK/new" >"$WORK/b-add.jobs"
run_jobs "$WORK/b-add.jobs"
collect "$WORK/b-add.jobs" "(b) ADD"
expect_eq "(b) pods with an address" "${#LIVE[@]}" 100
if [ "$(for cid in "${!LIVE[@]}"; do echo "${ADDR[$cid]}"; done | sort -u -t. -k4,4n)" == \
    "$(for i in $(seq 10 109); do echo "10.245.0.$i"; done)" ]; then
    ok "(b) the 100 pods hold exactly 10.245.0.10-10.245.0.109"
else
    fail "(b) the pods' addresses are not exactly the range"
fi
check_invariants "(b) full pool"

new_pods 1 b-extra "$WORK/new"
read -r cid ns <"$WORK/new"
rc=0
out=$(cni ADD "$cid" "$ns" "$WORK/b.json") || rc=$?
expect_eq "(b) 101st ADD exit code" "$rc" 1
expect_eq "(b) 101st ADD error code" "$(jq -r .code <<<"$out" 2>/dev/null)" 100
grep -q "$SUBNET_B" <<<"$(jq -r .msg <<<"$out" 2>/dev/null)" && ok "(b) the error names the pool" ||
    fail "(b) error message does not name $SUBNET_B: $out"
expect_eq "(b) 101st pod has no eth0" "$(ip -n "$ns" -o link show eth0 2>/dev/null | wc -l)" 0
expect_eq "(b) 101st host veth absent" "$(ip -n "$NODE" -o link show "$(host_veth "$cid")" 2>/dev/null | wc -l)" 0
if grep -rqs -- "\"$cid\"" "$POOL_B"; then fail "(b) the store mentions $cid"; else ok "(b) the store does not mention $cid"; fi
check_invariants "(b) after the 101st"
ip netns del "$ns"

all_live "$WORK/b.json" | jobs_for DEL "$WORK/b.json" >"$WORK/b-del.jobs"
run_jobs "$WORK/b-del.jobs"
collect "$WORK/b-del.jobs" "(b) DEL"
check_invariants "(b) after DEL"
expect_clean_node "$STORE"
log "(b) took $((SECONDS - t)) s"

# ---------------------------------------------------------------------------------------------
log "--- (c) 3 rounds of interleaved ADDs and DELs in $SUBNET_A and $SUBNET_B, another iptables writer running"
t=$SECONDS
# Another writer of the node's nat table, the way kube-proxy is one: append and delete rules in
# POSTROUTING (the chain routed-cni jumps from) and create and delete a chain of its own.
rm -f "$WORK/noise.stop"
(
    n=0 errs=0 i=0
    while [ ! -e "$WORK/noise.stop" ]; do
        i=$(((i + 1) % 200))
        ip netns exec "$NODE" sh -c "
            iptables -w -t nat -A POSTROUTING -s 192.0.2.$i/32 -m comment --comment e2e-noise -j RETURN &&
            iptables -w -t nat -N E2E-NOISE-$i && iptables -w -t nat -A E2E-NOISE-$i -j RETURN &&
            iptables -w -t nat -D POSTROUTING -s 192.0.2.$i/32 -m comment --comment e2e-noise -j RETURN &&
            iptables -w -t nat -F E2E-NOISE-$i && iptables -w -t nat -X E2E-NOISE-$i" 2>>"$WORK/noise.err" || errs=$((errs + 1))
        n=$((n + 1))
    done
    echo "$n $errs" >"$WORK/noise.stats"
) &
NOISE=$!
BACKGROUND_PIDS+=($NOISE)

# Alongside, a small pool ($SUBNET_B) is emptied and refilled in every round, so its masquerade
# rules are removed and installed again while ADDs race the DELs that empty it.
new_pods 60 c0 "$WORK/new"
new_pods 3 cb0 "$WORK/newb"
{
    jobs_for ADD "$WORK/a.json" <"$WORK/new"
    jobs_for ADD "$WORK/b.json" <"$WORK/newb"
} >"$WORK/c0.jobs"
run_jobs "$WORK/c0.jobs"
collect "$WORK/c0.jobs" "(c) initial ADD"
check_invariants "(c) initial 60+3"
for round in 1 2 3; do
    # DEL half of the live pods while 40 new ones are ADDed, all at once, in random order; in the
    # small pool, DEL all 3 and ADD 3 new ones.
    new_pods 40 c$round "$WORK/new"
    new_pods 3 cb$round "$WORK/newb"
    n=$(all_live "$WORK/a.json" | wc -l)
    {
        all_live "$WORK/a.json" | shuf | head -n $((n / 2)) | jobs_for DEL "$WORK/a.json"
        all_live "$WORK/b.json" | jobs_for DEL "$WORK/b.json"
        jobs_for ADD "$WORK/a.json" <"$WORK/new"
        jobs_for ADD "$WORK/b.json" <"$WORK/newb"
    } | shuf >"$WORK/c$round.jobs"
    run_jobs "$WORK/c$round.jobs"
    collect "$WORK/c$round.jobs" "(c) round $round"
    check_invariants "(c) round $round"
done
# The last DELs remove the pools' NAT rules, with the other writer still at work.
{
    all_live "$WORK/a.json" | jobs_for DEL "$WORK/a.json"
    all_live "$WORK/b.json" | jobs_for DEL "$WORK/b.json"
} >"$WORK/c-del.jobs"
run_jobs "$WORK/c-del.jobs"
collect "$WORK/c-del.jobs" "(c) final DEL"
check_invariants "(c) after final DEL"
touch "$WORK/noise.stop"
wait $NOISE || true
read -r noise_n noise_errs <"$WORK/noise.stats"
log "(c) the other iptables writer ran $noise_n rounds, $noise_errs of them failed"
[ "$noise_errs" -gt 0 ] && log "its errors: $(sort "$WORK/noise.err" | uniq -c | sort -rn | head -3 | tr '\n' ' ')"
[ "$noise_n" -gt 0 ] && ok "(c) the other iptables writer ran concurrently" || fail "(c) the other iptables writer never ran"
expect_eq "(c) the other writer's rules are gone" "$(on_node iptables-save -t nat | grep -c 'e2e-noise\|E2E-NOISE' || true)" 0
log "(c) took $((SECONDS - t)) s"

log "--- the node at the end"
expect_clean_node "$STORE"
# The only failure the plugin may have logged is the 101st ADD of (b).
errors=$(grep -E '^[^ ]+ (error|warn) ' "$WORK/cni.log" | grep -v "ADD failed network=e2e-storm container=b-extra-$RUN_ID-[0-9]* .* code=100 " || true)
[ -z "$errors" ] && ok "the plugin logged no error or warning but the 101st ADD's" ||
    fail "the plugin logged: $(head -5 <<<"$errors")"
log "total $((SECONDS - START)) s"
finish
