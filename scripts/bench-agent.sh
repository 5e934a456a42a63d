#!/usr/bin/env bash
# routed-cni agent at cluster scale (issue 18), run as `sudo scripts/bench.sh agent`:
#   the real `routed-cni agent` on one node (namespace A) against the project's stand-in API server
#   (e2e/lib/fake-apiserver.py, in a namespace of its own, so every byte the agent receives from
#   the API crosses one veth and is counted there) serving a synthetic cluster of 5,000 Nodes,
#   and with policy on 150,000 Pods in 1,000 namespaces and 2,000 NetworkPolicies, objects the
#   size real ones are. Three starts of the agent on the loaded cluster, each from a clean node:
#     never  / policy off   routes only, every node on A's link
#     vxlan  / policy off   every other node through the VXLAN device (route + FDB + neighbour)
#     crosssubnet / off     the default: a route lookup per node decides (all direct here)
#     vxlan  / policy on    the same plus the Pods, Namespaces, NetworkPolicies watches and nft
#   For each: time to the first complete sync (from exec to the agent's log line saying so),
#   peak and settled RSS, CPU, bytes received from the API server, routes/FDB/neighbour entries
#   and nft sizes on the node. Then, on the last one, a steady churn (nodes joining and leaving,
#   status-only node updates, pods created, made Running and deleted) for CHURN_SECONDS: CPU per
#   1,000 events and event -> programmed (median, p99; the stand-in's event time to the agent's
#   log line for the sync that included it). A plain client's fetch of the same lists shows what
#   the stand-in alone costs. The measuring is in scripts/bench-agent.py.
#
# Isolation: every namespace, process and file is made here with names unique to this run; the
# host's routes, sysctls, iptables and nftables are never touched, no packet leaves the
# namespaces, and the agent runs with --kernel-tables report (neighbour gc thresholds are one
# table for the whole host: it must not raise them here). Everything is removed on exit.
#
# Called by scripts/bench.sh (which has installed the packages) with the doc to write as $1.
# BENCH_AGENT_NODES / _NAMESPACES / _PER_NS / CHURN_SECONDS scale it down for a quick look;
# BENCH_AGENT_BIN runs another build of the binary.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
DOC=${1:-$REPO/docs/benchmarks.md}
NODES=${BENCH_AGENT_NODES:-5000}
NAMESPACES=${BENCH_AGENT_NAMESPACES:-1000}
PER_NS=${BENCH_AGENT_PER_NS:-150}
CHURN_SECONDS=${BENCH_AGENT_CHURN_SECONDS:-60}
PY=/usr/bin/python3
HARNESS=$REPO/scripts/bench-agent.py
A_IP=100.64.0.1 API_IP=172.30.0.2 API_PEER=172.30.0.1
API=https://$API_IP:6443
CLUSTER_CIDR=10.64.0.0/11

[ "$(id -u)" = 0 ] || { echo "bench.sh agent: must run as root (it creates network namespaces)" >&2; exit 1; }
for tool in openssl jq nft "$PY"; do
    command -v "$tool" >/dev/null || { echo "bench.sh agent: $tool missing" >&2; exit 1; }
done

ID=$$-$RANDOM
PREFIX=rcbench-agt-$ID
A=$PREFIX-a APINS=$PREFIX-api
TMP=
NETNS=()
PIDS=()
AGENT=

log() { printf '[bench agent %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

cleanup() {
    set +e
    local pid ns
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    for ns in "${NETNS[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null; done
    done
    for ns in "${NETNS[@]}"; do ip netns del "$ns" 2>/dev/null; done
    if [ -n "${BENCH_KEEP:-}" ] && [ -n "$TMP" ]; then
        mkdir -p "$BENCH_KEEP" &&
            tar -C "$TMP" -cf - --exclude='*.key' --exclude=routed-cni --exclude=store --exclude=bin --exclude=api . |
            tar -C "$BENCH_KEEP" -xf -
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

TMP=$(mktemp -d /tmp/routed-cni-bench-agent.XXXXXX)
RES=$TMP/results
APIDIR=$TMP/api
mkdir -p "$RES" "$APIDIR"/{nodes,pods,namespaces,networkpolicies}

# ------------------------------------------------------------------ build
command -v cargo >/dev/null || die "cargo not found; install Rust (rustup), then re-run"
BIN=$TMP/routed-cni
if [ -n "${BENCH_AGENT_BIN:-}" ]; then # another build (an older commit, an unstripped one for perf)
    cp "$BENCH_AGENT_BIN" "$BIN"
else
    cargo build --release --quiet
    cp "$REPO/target/release/routed-cni" "$BIN"
fi
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || REV="$REV+uncommitted changes"
KERNEL_TABLES=()
"$BIN" agent --help | grep -q -- '--kernel-tables' && KERNEL_TABLES=(--kernel-tables report)

# ------------------------------------------------------------------ credentials
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=bench-kubernetes-ca -keyout "$TMP/ca.key" -out "$TMP/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=kube-apiserver \
    -keyout "$TMP/server.key" -out "$TMP/server.csr" 2>/dev/null
printf 'subjectAltName=IP:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' $API_IP >"$TMP/san.ext"
openssl x509 -req -in "$TMP/server.csr" -CA "$TMP/ca.crt" -CAkey "$TMP/ca.key" -CAcreateserial \
    -days 1 -extfile "$TMP/san.ext" -out "$TMP/server.crt" 2>/dev/null
head -c 24 /dev/urandom | base64 >"$TMP/token"

# ------------------------------------------------------------------ helpers
# shellcheck disable=SC2016 # $0 expands in the inner bash
health() {
    ip netns exec "$A" timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/9465 && printf "GET %s HTTP/1.0\r\n\r\n" "$0" >&3 && cat <&3' "$1" 2>/dev/null |
        tr -d '\r' | awk 'NR==1 {code=$2} body {print code, $0} /^$/ {body=1}' || true
}
ready() { [[ "$(health /readyz)" == 200* ]]; }
wait_until() { # SECONDS WHAT COMMAND...
    local secs=$1 what=$2 i
    shift 2
    for ((i = 0; i < secs * 10; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "$what (not within ${secs}s)"
}
listening() { ip netns exec "$1" ss -Hltn "sport = :$2" | grep -q .; }
logged() { grep -q "$1" "$TMP/agent.log"; }

start_server() {
    ip netns exec "$APINS" "$PY" "$REPO/e2e/lib/fake-apiserver.py" --listen $API_IP:6443 \
        --cert "$TMP/server.crt" --key "$TMP/server.key" --token-file "$TMP/token" \
        --nodes "$APIDIR/nodes" --pods "$APIDIR/pods" --namespaces "$APIDIR/namespaces" \
        --networkpolicies "$APIDIR/networkpolicies" --poll-interval 0.1 2>>"$TMP/apiserver.log" &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    wait_until 600 "the stand-in API server listening" listening "$APINS" 6443
}
stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
}

# start_agent ENCAPSULATION POLICY(true|false); resync rare so none lands inside a measurement
start_agent() {
    : >"$TMP/agent.log"
    date +%s.%N >"$TMP/agent.start"
    ip netns exec "$A" env NODE_NAME=node-a "$BIN" agent --encapsulation "$1" --network-policy "$2" \
        "${KERNEL_TABLES[@]}" --no-portmap --resync-seconds 600 --cluster-cidr $CLUSTER_CIDR \
        --api-server $API --token-file "$TMP/token" --ca-file "$TMP/ca.crt" --data-dir "$TMP/store" \
        --bin-dir "$TMP/bin" --conf-dir "$TMP/net.d" --log-file "$TMP/cni.log" \
        --systemd-network-dir "$TMP/systemd/network" --networkmanager-conf-dir "$TMP/NetworkManager/conf.d" \
        2>>"$TMP/agent.log" &
    AGENT=$!
    PIDS+=("$AGENT")
}
stop_agent() {
    kill -TERM "$AGENT" 2>/dev/null || die "the agent had exited: $(tail -3 "$TMP/agent.log")"
    wait "$AGENT" || die "the agent exited non-zero on SIGTERM: $(tail -3 "$TMP/agent.log")"
}
# a clean node: no routes, VXLAN device or nft table of ours (the store and pods stay)
clean_node() {
    ip -n "$A" route flush proto 77 2>/dev/null || true
    ip -n "$A" link del rcni.vxlan 2>/dev/null || true
    ip netns exec "$A" nft delete table inet routed-cni 2>/dev/null || true
}
rx_bytes() { ip -n "$A" -j -s link show apilink | jq '.[0].stats64.rx.bytes'; }
proc_field() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$AGENT/status"; }
# the agent's CPU time and that of the children it has waited for (nft), in clock ticks
cpu_ticks() { awk '{print $14 + $15 + $16 + $17}' "/proc/$AGENT/stat"; }

# add_pod NS NAME: a pod namespace and CNI ADD with the installed binary and conflist; prints
# "NS NAME IPv4" for the generator
add_pod() {
    local ns=$1 name=$2 netns=$PREFIX-p-$1-$2 out
    netns_add "$netns"
    out=$(ip netns exec "$A" env CNI_COMMAND=ADD CNI_CONTAINERID="$ns-$name" \
        CNI_NETNS="/run/netns/$netns" CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni \
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=$ns;K8S_POD_NAME=$name" \
        "$TMP/bin/routed-cni" <"$TMP/plugin.json") || die "ADD $ns/$name: $out"
    jq -r --arg ns "$ns" --arg n "$name" '[$ns, $n, ([.ips[].address | select(contains(".")) | split("/")[0]][0])] | join(" ")' <<<"$out"
}

# ------------------------------------------------------------------ the world
log "node $A, API server $APINS, scratch $TMP"
netns_add "$A"
netns_add "$APINS"
ip link add apilink netns "$A" type veth peer name apilink netns "$APINS"
ip -n "$A" addr add $API_PEER/30 dev apilink
ip -n "$APINS" addr add $API_IP/30 dev apilink
ip -n "$A" link set apilink up
ip -n "$APINS" link set apilink up
# node A's uplink: every other node's InternalIP is on this link (its other end, in the API
# server's namespace, has no address: nothing is answered there, and nothing is sent)
ip link add uplink netns "$A" type veth peer name nodes netns "$APINS"
ip -n "$A" addr add $A_IP/16 dev uplink
ip -n "$A" link set uplink up
ip -n "$APINS" link set nodes up

# 1. node A alone, to install the plugin and ADD its pods for real
"$PY" "$HARNESS" gen --nodes 1 --api "$APIDIR" --meta "$RES/meta-node-a.json"
start_server
start_agent never false
wait_until 60 "the agent ready on the one-node cluster" ready
jq '.plugins[0] + {name: .name, cniVersion: .cniVersion}' "$TMP/net.d/10-routed-cni.conflist" >"$TMP/plugin.json"
: >"$TMP/local-pods"
if [ "$NAMESPACES" -gt 0 ]; then
    while read -r ns name; do add_pod "$ns" "$name" >>"$TMP/local-pods"; done \
        < <("$PY" "$HARNESS" local --nodes "$NODES" --namespaces "$NAMESPACES" --per-ns "$PER_NS")
fi
log "node A: $(wc -l <"$TMP/local-pods") pods added"
stop_agent
stop_server

# 2. the cluster
rm -f "$APIDIR"/nodes/*.json
GEN=(--nodes "$NODES" --namespaces "$NAMESPACES" --per-ns "$PER_NS" --api "$APIDIR" --meta "$RES/meta.json")
[ "$NAMESPACES" -gt 0 ] && GEN+=(--pods --local-pods "$TMP/local-pods")
"$PY" "$HARNESS" gen "${GEN[@]}"
start_server
log "stand-in: $(grep -o 'loaded .*' "$TMP/apiserver.log" | tail -1)"
# what the stand-in alone costs to serve the lists (and its list cache warmed for the agent)
PATHS=(/api/v1/nodes)
[ "$NAMESPACES" -gt 0 ] && PATHS+=(/api/v1/pods /api/v1/namespaces /apis/networking.k8s.io/v1/networkpolicies)
fetch() { # PATH...: one plain client (curl) GET each, as the agent lists; prints JSON lines
    local p out
    for p in "$@"; do
        out=$(ip netns exec "$A" curl -sS --cacert "$TMP/ca.crt" -H "Authorization: Bearer $(cat "$TMP/token")" \
            -o /dev/null -w '%{size_download} %{time_total}' "$API$p") || die "curl $p failed"
        jq -nc --arg p "$p" --argjson b "${out% *}" --argjson s "${out#* }" '{path: $p, bytes: $b, seconds: $s}'
    done
}
fetch "${PATHS[@]}" >/dev/null # the stand-in serializes each object once, at its first list
fetch "${PATHS[@]}" >"$RES/fetch.jsonl"
while read -r line; do log "stand-in alone (curl): $(jq -r '"\(.path): \(.bytes / 1e6 | floor) MB in \(.seconds) s"' <<<"$line")"; done <"$RES/fetch.jsonl"

# 3. the agent's first sync, three ways
first_sync() { # NAME ENCAPSULATION POLICY
    local name=$1 rx0 done_re
    clean_node
    rx0=$(rx_bytes)
    start_agent "$2" "$3"
    done_re='routes synced: .* to [0-9]* other node'
    wait_until 120 "$name: the agent's routes synced" logged "$done_re"
    [ "$3" = true ] && wait_until 300 "$name: the agent applied policy" logged 'policy applied'
    wait_until 120 "$name: the agent ready" ready
    sleep 3 # settled: what it keeps, not what the sync needed
    {
        echo "name=$name"
        echo "start=$(cat "$TMP/agent.start")"
        echo "hwm_kib=$(proc_field VmHWM)"
        echo "rss_kib=$(proc_field VmRSS)"
        echo "cpu_ticks=$(cpu_ticks)"
        echo "hz=$(getconf CLK_TCK)"
        echo "rx_bytes=$(($(rx_bytes) - rx0))"
        echo "routes=$(ip -n "$A" route show proto 77 | wc -l)"
        echo "fdb=$(bridge -n "$A" fdb show dev rcni.vxlan 2>/dev/null | grep -c permanent || true)"
        echo "neigh=$(ip -n "$A" neigh show dev rcni.vxlan 2>/dev/null | grep -c PERMANENT || true)"
    } >"$RES/sync-$name.env"
    cp "$TMP/agent.log" "$RES/agent-$name.log"
    [ "$3" = true ] && ip netns exec "$A" nft -j list table inet routed-cni >"$RES/nft-$name.json"
    log "$name: $(tr '\n' ' ' <"$RES/sync-$name.env")"
}
first_sync never-nopolicy never false
stop_agent
first_sync vxlan-nopolicy vxlan false
stop_agent
first_sync crosssubnet-nopolicy crosssubnet false
stop_agent
if [ "$NAMESPACES" -gt 0 ]; then
    first_sync vxlan-policy vxlan true
else
    first_sync vxlan-policy vxlan false # the churn below still runs, on nodes only
fi

# 4. steady churn on the last agent
log "churn: ${CHURN_SECONDS}s"
cpu0=$(cpu_ticks)
rx0=$(rx_bytes)
events0=$(grep -c '^event ' "$TMP/apiserver.log" || true)
"$PY" "$HARNESS" churn --nodes "$NODES" --namespaces "$NAMESPACES" --per-ns "$PER_NS" --api "$APIDIR" \
    --local-pods "$TMP/local-pods" --seconds "$CHURN_SECONDS" --out "$RES/churn.json"
sleep 3 # the last changes programmed
{
    echo "cpu_ticks=$(($(cpu_ticks) - cpu0))"
    echo "hz=$(getconf CLK_TCK)"
    echo "rx_bytes=$(($(rx_bytes) - rx0))"
    echo "events=$(($(grep -c '^event ' "$TMP/apiserver.log" || true) - events0))"
    echo "hwm_kib=$(proc_field VmHWM)"
    echo "rss_kib=$(proc_field VmRSS)"
    echo "routes=$(ip -n "$A" route show proto 77 | wc -l)"
} >"$RES/churn.env"
cp "$TMP/agent.log" "$RES/agent-churn.log"
cp "$TMP/apiserver.log" "$RES/apiserver.log"
"$PY" "$HARNESS" latency --nodes "$NODES" --churn "$RES/churn.json" --server-log "$TMP/apiserver.log" \
    --agent-log "$TMP/agent.log" --out "$RES/latency.json"
log "churn: $(tr '\n' ' ' <"$RES/churn.env")"
ready || die "the agent is not ready after the churn: $(health /readyz)"
stop_agent

# ------------------------------------------------------------------ report
jq -n --arg date "$(date -u '+%Y-%m-%d %H:%M UTC')" --arg rev "$REV" --arg kernel "$(uname -r)" \
    --arg cpus "$(nproc)" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" \
    '{date: $date, rev: $rev, kernel: $kernel, cpus: $cpus, load: $load}' >"$RES/env.json"
REPORT=$TMP/report.md
"$PY" "$HARNESS" report --results "$RES" --out "$REPORT"
cat "$REPORT"
[ "${BENCH_AGENT_NO_DOC:-}" = 1 ] && exit 0
BEGIN='<!-- bench.sh agent results: begin (generated by scripts/bench.sh agent, do not edit by hand) -->'
END='<!-- bench.sh agent results: end -->'
mkdir -p "$(dirname "$DOC")"
if [ ! -f "$DOC" ] || ! grep -qF "$BEGIN" "$DOC"; then
    # shellcheck disable=SC2016 # backquotes are markdown
    { [ -f "$DOC" ] && cat "$DOC" || printf '# Benchmarks\n'
      printf '\n## The agent at cluster scale (`sudo scripts/bench.sh agent`)\n\n%s\n%s\n' "$BEGIN" "$END"; } >"$DOC.new"
    mv "$DOC.new" "$DOC"
fi
"$PY" - "$DOC" "$REPORT" "$BEGIN" "$END" <<'PYEOF'
import sys
doc, report, begin, end = sys.argv[1:]
text, new = open(doc).read(), open(report).read()
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
open(doc, "w").write(f"{head}{begin}\n{new}{end}{tail}")
PYEOF
log "wrote $DOC"
