#!/usr/bin/env bash
# routed-cni NetworkPolicy benchmark (issue 17), run as `sudo scripts/bench.sh --policy`, one
# run of about 3-4 minutes:
#   (1) API event -> rules active (median, p99) with 1,000 pods and 200 policies: one change at a
#       time (a local pod's label, a new policy, a deleted one, a namespace's label, the label of a
#       pod on another node), from the stand-in API server's event timestamp to the agent's
#       `policy applied` log line, cross-checked against the table's content for some events;
#   (2) nftables chains, sets, rules and elements at that size;
#   (3) pod -> pod throughput (iperf3) and connection rate, same node and cross-node, with 0 and
#       with 1,000 policies selecting the server, alternating in one run;
#   (4) CNI ADD/DEL time with `agent --network-policy=true` vs `=false`.
# The measuring is in scripts/bench-policy.py; this script builds the world and runs it.
#
# The world: two nodes A and B, network namespaces joined by one veth pair (the uplink,
# 100.64.0.1/24 and .2), each running the real `routed-cni agent` (built here, policy on)
# against the project's stand-in API server (e2e/lib/fake-apiserver.py, in A) serving Nodes,
# Pods, Namespaces and NetworkPolicies from files this script writes. Real pods are added with
# the binary and the conflist the agent installed, naming their pod in CNI_ARGS as a kubelet
# does; the rest of the 1,000 Pod objects live on "other nodes" (objects only).
#
# Isolation: every namespace, process and file is made here, with names unique to this run; the
# host's routes, sysctls, iptables and nftables are never touched (every nft runs inside a node
# namespace) and no packet leaves the namespaces. Everything is removed on exit, failure or
# Ctrl-C included. BENCH_KEEP=dir keeps the raw results and logs.
#
# Called by scripts/bench.sh (which has installed the packages) with the doc to write as $1.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
DOC=${1:-$REPO/docs/benchmarks.md}
ROUNDS=${BENCH_POLICY_ROUNDS:-3}       # throughput rounds (each: 0 and 1,000 policies)
SECS=${BENCH_POLICY_SECONDS:-3}        # per iperf3 and connection-rate test
EVENTS=${BENCH_POLICY_EVENTS:-50}      # latency samples
CNI_N=${BENCH_POLICY_CNI_N:-20}        # ADD/DEL pairs per block (two blocks per mode)
LOCAL_PODS=${BENCH_POLICY_LOCAL_PODS:-30}
PY=/usr/bin/python3
HARNESS=$REPO/scripts/bench-policy.py
FIXTURES=$REPO/e2e/lib/fixtures
CLUSTER_CIDRS=10.244.0.0/16,fd00:10:244::/48
A_IP=100.64.0.1 B_IP=100.64.0.2
API=https://$A_IP:6443

[ "$(id -u)" = 0 ] || { echo "bench.sh --policy: must run as root (it creates network namespaces)" >&2; exit 1; }
for tool in iperf3 openssl jq nft "$PY"; do
    command -v "$tool" >/dev/null || { echo "bench.sh --policy: $tool missing" >&2; exit 1; }
done

ID=$$-$RANDOM
PREFIX=rcbench-pol-$ID
A=$PREFIX-a B=$PREFIX-b
TMP=
NETNS=()
PIDS=()
declare -A AGENT_PID

log() { printf '[bench --policy %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

cleanup() {
    set +e
    local pid ns
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    for ns in "${NETNS[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null; done
    done
    # deleting a node takes its uplink, its veths (and their pod ends), routes and its nft table
    for ns in "${NETNS[@]}"; do ip netns del "$ns" 2>/dev/null; done
    if [ -n "${BENCH_KEEP:-}" ] && [ -n "$TMP" ]; then
        mkdir -p "$BENCH_KEEP" &&
            tar -C "$TMP" -cf - --exclude='*.key' --exclude=routed-cni --exclude=store --exclude=bin . | tar -C "$BENCH_KEEP" -xf -
    fi
    [ -n "$TMP" ] && rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

netns_add() {
    ip netns add "$1"
    NETNS+=("$1")
    ip -n "$1" link set lo up
}

TMP=$(mktemp -d /tmp/routed-cni-bench-policy.XXXXXX)
RES=$TMP/results
APIDIR=$TMP/api
mkdir -p "$RES" "$APIDIR"/{nodes,pods,namespaces,networkpolicies}

# ------------------------------------------------------------------ build
command -v cargo >/dev/null || die "cargo not found; install Rust (rustup), then re-run"
cargo build --release --quiet
BIN=$TMP/routed-cni
cp "$REPO/target/release/routed-cni" "$BIN"
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || REV="$REV+uncommitted changes"
"$BIN" agent --help | grep -q -- '--network-policy' || die "this build's agent has no --network-policy"

# ------------------------------------------------------------------ credentials
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=bench-kubernetes-ca -keyout "$TMP/ca.key" -out "$TMP/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=kube-apiserver \
    -keyout "$TMP/server.key" -out "$TMP/server.csr" 2>/dev/null
printf 'subjectAltName=IP:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' $A_IP >"$TMP/san.ext"
openssl x509 -req -in "$TMP/server.csr" -CA "$TMP/ca.crt" -CAkey "$TMP/ca.key" -CAcreateserial \
    -days 1 -extfile "$TMP/san.ext" -out "$TMP/server.crt" 2>/dev/null
head -c 24 /dev/urandom | base64 >"$TMP/token"

# ------------------------------------------------------------------ helpers
# shellcheck disable=SC2016 # $0 expands in the inner bash
health() {
    ip netns exec "$1" timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/9465 && printf "GET %s HTTP/1.0\r\n\r\n" "$0" >&3 && cat <&3' "$2" 2>/dev/null |
        tr -d '\r' | awk 'NR==1 {code=$2} body {print code, $0} /^$/ {body=1}' || true
}
ready() { [[ "$(health "$1" /readyz)" == 200* ]]; }

# wait_until SECONDS WHAT COMMAND...
wait_until() {
    local secs=$1 what=$2 i
    shift 2
    for ((i = 0; i < secs * 10; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "$what (not within ${secs}s)"
}
listening() { ip netns exec "$1" ss -Hltn "sport = :$2" | grep -q .; }
node_ns() { if [ "$1" = node-a ]; then echo "$A"; else echo "$B"; fi; }

# start_agent NODE_NAME POLICY(true|false): the agent as the DaemonSet runs it, resync rare so
# that no resync lands inside a measurement
start_agent() {
    local name=$1 dir=$TMP/$1
    mkdir -p "$dir"
    ip netns exec "$(node_ns "$name")" env NODE_NAME="$name" ROUTED_CNI_CLUSTER_CIDR="$CLUSTER_CIDRS" "$BIN" agent \
        --network-policy "$2" --encapsulation never --no-portmap --resync-seconds 600 \
        --api-server $API --token-file "$TMP/token" --ca-file "$TMP/ca.crt" --data-dir "$dir/store" \
        --bin-dir "$dir/bin" --conf-dir "$dir/net.d" --log-file "$dir/cni.log" \
        --systemd-network-dir "$dir/systemd/network" --networkmanager-conf-dir "$dir/NetworkManager/conf.d" \
        2>>"$dir/agent.log" &
    AGENT_PID[$name]=$!
    PIDS+=($!)
}
stop_agent() {
    kill -TERM "${AGENT_PID[$1]}" 2>/dev/null || die "$1's agent had exited: $(tail -3 "$TMP/$1/agent.log")"
    wait "${AGENT_PID[$1]}" || die "$1's agent exited non-zero on SIGTERM: $(tail -3 "$TMP/$1/agent.log")"
}
applied_count() { grep -c 'policy applied' "$TMP/$1/agent.log" || true; }
applied_since() { (($(applied_count "$1") > $2)); } # NODE_NAME MARK (re-counted at each call)
has_table() { grep -qx 'table inet routed-cni' <<<"$(ip netns exec "$(node_ns "$1")" nft list tables)"; }
no_table() { ! has_table "$1"; }
# settle NODE_NAME MARK: the stand-in polls now; wait for NODE's next "policy applied" after MARK
settle() {
    kill -HUP "$SERVER_PID"
    wait_until 30 "$1's agent applied the change" applied_since "$1" "$2"
}
last_applied() { grep 'policy applied' "$TMP/$1/agent.log" | tail -1 | sed 's/.*policy applied: /policy applied: /'; }

# add_pod NODE_NAME NS NAME: a pod namespace and CNI ADD by the installed binary and conflist;
# prints "NS NAME IPv4 IPv6 NODE" for the harness, which writes the Pod object
add_pod() {
    local node=$1 ns=$2 name=$3 dir=$TMP/$1 netns=$PREFIX-p-$2-$3 out
    jq '.plugins[0] + {name: .name, cniVersion: .cniVersion}' "$dir/net.d/10-routed-cni.conflist" >"$dir/plugin.json"
    out=$(ip netns exec "$(node_ns "$node")" env CNI_COMMAND=ADD CNI_CONTAINERID="$ns-$name" \
        CNI_NETNS="/run/netns/$netns" CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni \
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=$ns;K8S_POD_NAME=$name" \
        "$dir/bin/routed-cni" <"$dir/plugin.json") || die "ADD $ns/$name on $node: $out"
    jq -r --arg ns "$ns" --arg n "$name" --arg node "$node" '[$ns, $n,
        ([.ips[].address | select(contains(".")) | split("/")[0]][0]),
        ([.ips[].address | select(contains(":")) | split("/")[0]][0]), $node] | join(" ")' <<<"$out"
}

# ------------------------------------------------------------------ the world
log "nodes $A and $B, scratch $TMP"
netns_add "$A"
netns_add "$B"
ip link add uplink netns "$A" type veth peer name uplink netns "$B"
ip -n "$A" addr add $A_IP/24 dev uplink
ip -n "$B" addr add $B_IP/24 dev uplink
ip -n "$A" addr add fd00:64::1/64 dev uplink nodad
ip -n "$B" addr add fd00:64::2/64 dev uplink nodad
for n in "$A" "$B"; do
    ip netns exec "$n" sysctl -qw net.ipv6.conf.uplink.accept_dad=0
    ip -n "$n" link set uplink up
done
ip -n "$A" route add default via $B_IP
ip -n "$B" route add default via $A_IP
cp "$FIXTURES/node-a.json" "$FIXTURES/node-b.json" "$APIDIR/nodes/"
ip netns exec "$A" "$PY" "$REPO/e2e/lib/fake-apiserver.py" --listen $A_IP:6443 \
    --cert "$TMP/server.crt" --key "$TMP/server.key" --token-file "$TMP/token" \
    --nodes "$APIDIR/nodes" --pods "$APIDIR/pods" --namespaces "$APIDIR/namespaces" \
    --networkpolicies "$APIDIR/networkpolicies" 2>>"$TMP/apiserver.log" &
SERVER_PID=$!
PIDS+=("$SERVER_PID")
wait_until 10 "the stand-in API server" listening "$A" 6443
start_agent node-a true
start_agent node-b true
wait_until 30 "node-a's agent ready" ready "$A"
wait_until 30 "node-b's agent ready" ready "$B"

# Real pods: LOCAL_PODS on A in ns-00.. (web, api, db, ...), the throughput pods in `perf`
apps=(web api db worker cache)
: >"$TMP/local-pods"
for ((i = 0; i < LOCAL_PODS; i++)); do
    ns=$(printf 'ns-%02d' $((i % 10)))
    name=${apps[$((i / 10 % 3))]}-$((i / 10))
    netns_add "$PREFIX-p-$ns-$name"
    add_pod node-a "$ns" "$name" >>"$TMP/local-pods"
done
for spec in node-a:server node-a:client-a node-b:client-b; do
    netns_add "$PREFIX-p-perf-${spec#*:}"
    add_pod "${spec%%:*}" perf "${spec#*:}" >>"$TMP/local-pods"
done
mark=$(applied_count node-a) # before: the stand-in's own poll may deliver it at once
"$PY" "$HARNESS" gen --api "$APIDIR" --local-pods "$TMP/local-pods" --perf-out "$TMP/perf-policies.json" \
    --meta "$RES/meta.json"
log "loading the cluster into the agents"
settle node-a "$mark"
# the agent may apply twice while the initial burst arrives: wait until it is quiet for 2 s
while :; do
    mark=$(applied_count node-a)
    sleep 2
    [ "$(applied_count node-a)" = "$mark" ] && break
done
last_applied node-a >"$RES/applied-line.txt"
log "node-a: $(cat "$RES/applied-line.txt")"

nft_counts() { ip netns exec "$A" nft -j list table inet routed-cni | "$PY" "$HARNESS" nft-counts; }

# ------------------------------------------------------------------ (1) event -> active, (2) counts
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
nft_counts >"$RES/nft-counts.json"
log "nft (200 policies): $(cat "$RES/nft-counts.json")"
log "latency: $EVENTS events, one at a time"
"$PY" "$HARNESS" latency --api "$APIDIR" --meta "$RES/meta.json" --agent-log "$TMP/node-a/agent.log" \
    --server-log "$TMP/apiserver.log" --server-pid "$SERVER_PID" --netns "$A" \
    --events "$EVENTS" --out "$RES/latency.json"

# ------------------------------------------------------------------ (4) CNI ADD on vs off
# Pod namespaces for the timed ADDs, made up front (namespace creation is never timed).
for i in 1 2 3 4 5; do netns_add "$PREFIX-t-$i"; done
printf '%s\n' "$PREFIX"-t-{1..5} >"$TMP/timed-netns"
# the agent's CPU time so far, in clock ticks (utime + stime): what it spends reacting to ADDs
agent_ticks() { awk '{print $14 + $15}' "/proc/${AGENT_PID[node-a]}/stat"; }
cni_block() { # MODE ROUND
    local ns t0
    for ns in nopol ns-01; do
        t0=$(agent_ticks)
        # 0.25 s between pods: the agent's reaction to one (100 ms settle, then a compile) is
        # over before the next ADD, so the figure is ADD's own cost, not CPU contention
        ip netns exec "$A" "$PY" "$HARNESS" cni-times --bin "$TMP/node-a/bin/routed-cni" \
            --conflist "$TMP/node-a/net.d/10-routed-cni.conflist" --netns-list "$TMP/timed-netns" \
            --namespace "$ns" --mode "$1" --tag "$1$2" --n "$CNI_N" --gap 0.25 --out "$RES/cni-$1$2-$ns.json"
        jq --argjson t "$(($(agent_ticks) - t0))" --argjson hz "$(getconf CLK_TCK)" '.agent_cpu_ms = $t * 1000 / $hz' \
            "$RES/cni-$1$2-$ns.json" >"$RES/.cni.tmp" && mv "$RES/.cni.tmp" "$RES/cni-$1$2-$ns.json"
    done
}
log "CNI ADD/DEL: enforcement on vs off, alternating blocks"
for round in 1 2; do
    cni_block on "$round"
    stop_agent node-a
    start_agent node-a false
    wait_until 30 "node-a's agent ready (policy off)" ready "$A"
    wait_until 10 "no table inet routed-cni with policy off" no_table node-a
    cni_block off "$round"
    stop_agent node-a
    mark=$(applied_count node-a)
    start_agent node-a true
    wait_until 30 "node-a's agent ready (policy on)" ready "$A"
    wait_until 30 "node-a's agent applied policy after the restart" applied_since node-a "$mark"
done

# ------------------------------------------------------------------ (3) throughput, conn rate
mv "$APIDIR/networkpolicies/world.json" "$TMP/world-policies.json" # 0 policies on the node
rm -f "$APIDIR"/networkpolicies/bench-event-*.json
mark=$(applied_count node-a)
settle node-a "$mark"
ip_of() { awk -v n="$1" '$1 == "perf" && $2 == n {print $3}' "$TMP/local-pods"; }
SERVER_IP=$(ip_of server)
OTHER_IP=$(awk '$1 == "ns-01" {print $3; exit}' "$TMP/local-pods")
OTHER_NS=$PREFIX-p-$(awk '$1 == "ns-01" {print $1 "-" $2; exit}' "$TMP/local-pods")
SERVER_NS=$PREFIX-p-perf-server
ip netns exec "$SERVER_NS" "$PY" "$HARNESS" serve --addr "$SERVER_IP" --port 8000 &
PIDS+=($!)
wait_until 5 "the connection-rate server" listening "$SERVER_NS" 8000
[ -n "$OTHER_IP" ] || die "no pod in ns-01"

STATE=0
set_state() { # 0 | full
    local mark
    if [ "$1" != "$STATE" ]; then
        mark=$(applied_count node-a)
        if [ "$1" = 0 ]; then rm "$APIDIR/networkpolicies/perf.json"; else cp "$TMP/perf-policies.json" "$APIDIR/networkpolicies/perf.json"; fi
        settle node-a "$mark"
        STATE=$1
    fi
    # enforcement is really on (or off): a pod of another namespace is denied (or allowed)
    if [ "$1" = 0 ]; then
        ip netns exec "$OTHER_NS" "$PY" "$HARNESS" probe --dst "$SERVER_IP" ||
            die "without policies, $OTHER_IP cannot reach the server"
    else
        ! ip netns exec "$OTHER_NS" "$PY" "$HARNESS" probe --dst "$SERVER_IP" ||
            die "with the 1,000 policies, $OTHER_IP still reaches the server"
    fi
}
iperf_gbps() { # CLIENT_NS -> Gbit/s received
    local out=$TMP/iperf-$RANDOM.json spid
    ip netns exec "$SERVER_NS" iperf3 -s -1 -B "$SERVER_IP" -J >/dev/null 2>&1 &
    spid=$!
    PIDS+=("$spid")
    wait_until 5 "iperf3 server" listening "$SERVER_NS" 5201
    ip netns exec "$1" iperf3 -c "$SERVER_IP" -t "$SECS" -J >"$out" 2>&1 ||
        die "iperf3 from $1 failed: $(jq -r '.error // empty' "$out" 2>/dev/null || cat "$out")"
    wait "$spid" || true
    jq '.end.sum_received.bits_per_second / 1e9' "$out"
}
conn_rate() { ip netns exec "$1" "$PY" "$HARNESS" connect --dst "$SERVER_IP" --seconds "$SECS" | jq '.rate'; }
for c in client-a client-b; do # no TIME_WAIT pile-up, many ports: connections/s is the figure
    ip netns exec "$PREFIX-p-perf-$c" sysctl -qw net.ipv4.ip_local_port_range="1024 65000"
done

log "throughput: $ROUNDS rounds x (0, 1,000 policies) x (same node, cross-node)"
: >"$RES/throughput-runs.jsonl"
for ((r = 0; r < ROUNDS; r++)); do
    states=(0 full)
    ((r % 2 == 0)) || states=(full 0)
    for st in "${states[@]}"; do
        set_state "$st"
        [ "$st" = full ] && [ ! -s "$RES/nft-counts-perf.json" ] && {
            nft_counts >"$RES/nft-counts-perf.json"
            last_applied node-a >"$RES/applied-line-perf.txt"
        }
        sg=$(iperf_gbps "$PREFIX-p-perf-client-a")
        cg=$(iperf_gbps "$PREFIX-p-perf-client-b")
        sc=$(conn_rate "$PREFIX-p-perf-client-a")
        cc=$(conn_rate "$PREFIX-p-perf-client-b")
        jq -nc --argjson r "$r" --arg st "$st" --argjson sg "$sg" --argjson cg "$cg" --argjson sc "$sc" --argjson cc "$cc" \
            '{round: $r, state: $st, same: {gbps: $sg, conn: $sc}, cross: {gbps: $cg, conn: $cc}}' >>"$RES/throughput-runs.jsonl"
        log "round $((r + 1)) policies=$st: same node $(printf %.2f "$sg") Gbit/s $(printf %.0f "$sc") conn/s; cross-node $(printf %.2f "$cg") Gbit/s $(printf %.0f "$cc") conn/s"
    done
done
jq -s --argjson rounds "$ROUNDS" --argjson s "$SECS" '{rounds: $rounds, iperf_seconds: $s, conn_seconds: $s, runs: .}' \
    "$RES/throughput-runs.jsonl" >"$RES/throughput.json"

# ------------------------------------------------------------------ report
jq -n --arg date "$(date -u '+%Y-%m-%d %H:%M UTC')" --arg rev "$REV" --arg kernel "$(uname -r)" \
    --arg cpus "$(nproc)" --arg iperf "$(iperf3 --version | head -1 | cut -d' ' -f1-2)" \
    --arg load "$LOAD_START" '{date: $date, rev: $rev, kernel: $kernel, cpus: $cpus, iperf: $iperf, load: $load}' >"$RES/env.json"
REPORT=$TMP/report.md
"$PY" "$HARNESS" report --results "$RES" --out "$REPORT"
cat "$REPORT"

# ------------------------------------------------------------------ docs
[ "${BENCH_POLICY_NO_DOC:-}" = 1 ] && exit 0
BEGIN='<!-- bench.sh --policy results: begin (generated by scripts/bench.sh --policy, do not edit by hand) -->'
END='<!-- bench.sh --policy results: end -->'
mkdir -p "$(dirname "$DOC")"
if [ ! -f "$DOC" ] || ! grep -qF "$BEGIN" "$DOC"; then
    # shellcheck disable=SC2016 # backquotes are markdown
    { [ -f "$DOC" ] && cat "$DOC" || printf '# Benchmarks\n'
      printf '\n## NetworkPolicy (`sudo scripts/bench.sh --policy`)\n\n%s\n%s\n' "$BEGIN" "$END"; } >"$DOC.new"
    mv "$DOC.new" "$DOC"
fi
"$PY" - "$DOC" "$REPORT" "$BEGIN" "$END" <<'EOF'
import sys
doc, report, begin, end = sys.argv[1:]
text, new = open(doc).read(), open(report).read()
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
open(doc, "w").write(f"{head}{begin}\n{new}{end}{tail}")
EOF
log "wrote $DOC"
