#!/usr/bin/env bash
# Concurrency storm: 100 pods ADDed and DELed in parallel into a /24; 100 pods into a pool of
# exactly 100 addresses (all succeed, the 101st fails with code 100 and leaves nothing); then
# 3 rounds of ADDs and DELs interleaved while another iptables writer (like kube-proxy) churns
# the node's nat table. After every round, what an operator would check: no address on two
# pods, the store's records are exactly the live pods, no orphan host veth or /32 route, every
# pod reaches the node. At the end the node is clean.
set -euo pipefail
. "$(dirname "$0")/lib/world.sh"

STORE=$WORK/store
RES=$WORK/res
mkdir -p "$RES"
START=$SECONDS
make_node

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
                ADDR[$cid]=$(jq -r '.ips[0].address' "$RES/$verb-$cid.out" | cut -d/ -f1)
                ;;
            DEL)
                dels=$((dels + 1))
                if ip -n "$ns" -o link show eth0 >/dev/null 2>&1; then
                    bad=$((bad + 1))
                    fail "$2: DEL $cid left eth0 in $ns"
                fi
                unset "LIVE[$cid]" "ADDR[$cid]"
                ip netns del "$ns"
                ;;
        esac
    done <"$1"
    [ $bad -eq 0 ] && ok "$2: all $adds ADDs and $dels DELs succeeded"
}

# check_invariants LABEL POOLDIR SUBNET
check_invariants() {
    local label=$1 pooldir=$2 subnet=$3 cid ns ip want got pids=() p unreachable=0
    local -A owner=()
    local addrs_ok=1
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

    # 2. The store's records are exactly the live pods (file name = ip = pod address, owner).
    want=$(for cid in "${!LIVE[@]}"; do echo "${ADDR[$cid]} ${ADDR[$cid]} $cid"; done | sort)
    got=$(find "$pooldir" -maxdepth 1 -regextype posix-extended -regex '.*/[0-9]+(\.[0-9]+){3}$' -print0 2>/dev/null |
        xargs -0 -r jq -r '"\(input_filename | split("/") | last) \(.ip) \(.containerId)"' | sort)
    if [ "$want" == "$got" ]; then
        ok "$label: store records = live pods ($(grep -c . <<<"$got" || true))"
    else
        fail "$label: store records differ from live pods (< want, > store):"
        diff <(echo "$want") <(echo "$got") | grep '^[<>]' | head -20
    fi
    want=$(for cid in "${!LIVE[@]}"; do key_name "$cid"; echo; done | grep . | sort || true)
    got=$(ls "$pooldir/keys" 2>/dev/null | sort || true)
    [ "$want" == "$got" ] && ok "$label: store keys = live pods" ||
        fail "$label: store keys differ from live pods: $(diff <(echo "$want") <(echo "$got") | grep '^[<>]' | head -5 | tr '\n' ' ')"

    # 3. Host veths and /32 routes into them: one per live pod, none else.
    want=$(for cid in "${!LIVE[@]}"; do host_veth "$cid"; echo; done | grep . | sort || true)
    got=$(ip -n "$NODE" -o link show | grep -o 'rcni[0-9a-f]*' | sort || true)
    [ "$want" == "$got" ] && ok "$label: host veths = live pods" ||
        fail "$label: host veths differ (< want, > node): $(diff <(echo "$want") <(echo "$got") | grep '^[<>]' | head -10 | tr '\n' ' ')"
    want=$(for cid in "${!LIVE[@]}"; do echo "${ADDR[$cid]} $(host_veth "$cid")"; done | sort)
    got=$(ip -n "$NODE" -4 route show | awk '/ dev rcni/ {for (i = 1; i < NF; i++) if ($i == "dev") print $1, $(i + 1)}' | sort)
    [ "$want" == "$got" ] && ok "$label: /32 routes = live pods, each via its own veth" ||
        fail "$label: routes differ (< want, > node): $(diff <(echo "$want") <(echo "$got") | grep '^[<>]' | head -10 | tr '\n' ' ')"

    # 4. Masquerade for the pool is in place while it has pods.
    if [ ${#LIVE[@]} -gt 0 ]; then
        on_node iptables -t nat -S POSTROUTING | grep -q -- "-s $subnet .*-j RCNI-" &&
            ok "$label: pool $subnet jumps to its masquerade chain" ||
            fail "$label: no POSTROUTING jump for $subnet: $(on_node iptables -t nat -S POSTROUTING | tr '\n' ' ')"
    fi

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

all_live() { local cid; for cid in "${!LIVE[@]}"; do echo "$cid ${LIVE[$cid]}"; done; }

# ---------------------------------------------------------------------------------------------
log "--- (a) 100 parallel ADDs into $SUBNET_A, then 100 parallel DELs"
t=$SECONDS
new_pods 100 a "$WORK/new"
jobs_for ADD "$WORK/a.json" <"$WORK/new" >"$WORK/a-add.jobs"
run_jobs "$WORK/a-add.jobs"
collect "$WORK/a-add.jobs" "(a) ADD"
check_invariants "(a) after ADD" "$POOL_A" $SUBNET_A
all_live | jobs_for DEL "$WORK/a.json" >"$WORK/a-del.jobs"
run_jobs "$WORK/a-del.jobs"
collect "$WORK/a-del.jobs" "(a) DEL"
check_invariants "(a) after DEL" "$POOL_A" $SUBNET_A
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
check_invariants "(b) full pool" "$POOL_B" $SUBNET_B

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
check_invariants "(b) after the 101st" "$POOL_B" $SUBNET_B
ip netns del "$ns"

all_live | jobs_for DEL "$WORK/b.json" >"$WORK/b-del.jobs"
run_jobs "$WORK/b-del.jobs"
collect "$WORK/b-del.jobs" "(b) DEL"
check_invariants "(b) after DEL" "$POOL_B" $SUBNET_B
expect_clean_node "$STORE"
log "(b) took $((SECONDS - t)) s"

# ---------------------------------------------------------------------------------------------
log "--- (c) 3 rounds of interleaved ADDs and DELs in $SUBNET_A, another iptables writer running"
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

new_pods 60 c0 "$WORK/new"
jobs_for ADD "$WORK/a.json" <"$WORK/new" >"$WORK/c0.jobs"
run_jobs "$WORK/c0.jobs"
collect "$WORK/c0.jobs" "(c) initial ADD"
check_invariants "(c) initial 60" "$POOL_A" $SUBNET_A
for round in 1 2 3; do
    # DEL half of the live pods while 40 new ones are ADDed, all at once, in random order.
    new_pods 40 c$round "$WORK/new"
    {
        all_live | shuf | head -n $((${#LIVE[@]} / 2)) | jobs_for DEL "$WORK/a.json"
        jobs_for ADD "$WORK/a.json" <"$WORK/new"
    } | shuf >"$WORK/c$round.jobs"
    run_jobs "$WORK/c$round.jobs"
    collect "$WORK/c$round.jobs" "(c) round $round"
    check_invariants "(c) round $round" "$POOL_A" $SUBNET_A
done
# The last DEL removes the pool's NAT rules, with the other writer still at work (the first ADD
# of the initial 60 installed them the same way).
all_live | jobs_for DEL "$WORK/a.json" >"$WORK/c-del.jobs"
run_jobs "$WORK/c-del.jobs"
collect "$WORK/c-del.jobs" "(c) final DEL"
check_invariants "(c) after final DEL" "$POOL_A" $SUBNET_A
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
