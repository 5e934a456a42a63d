#!/usr/bin/env bash
# routed-cni throughput benchmark (issue 16), run as `sudo scripts/bench.sh --encap`:
# TCP throughput with Debian's iperf3 over the same link, in one run:
#   (1) node -> node over the uplink (the reference: no CNI in the path),
#   (2) pod -> pod across the two nodes with `agent --encapsulation never` (direct routes),
#   (3) pod -> pod across the two nodes with `agent --encapsulation vxlan` (rcni.vxlan).
# Each path is measured BENCH_ENCAP_RUNS times (default 5) for BENCH_ENCAP_SECONDS each (default
# 5), one TCP stream; the paths take turns, the order rotated every round, so load drift on the
# machine hits all three alike. Reported: the median, the spread and the ratio to (1).
#
# The world: two simulated clusters of two nodes, one per encapsulation mode, built at once so
# that their runs can alternate. A cluster's nodes A and B are network namespaces joined by one
# veth pair (the uplink, MTU 1500, 100.64.0.1/24 and 100.64.0.2/24, fd00:64::1/2), each
# running the real `routed-cni agent` (built here) against the project's stand-in API server
# (e2e/lib/fake-apiserver.py, in A's namespace, Node objects from e2e/lib/fixtures). Pods are
# added with the binary and the conflist the agent installed, as a kubelet would.
#
# Isolation: every namespace, process and file is made here, with names unique to this run; the
# host's routes, sysctls and iptables are never touched and no packet leaves the namespaces.
# Everything is removed on exit, failure or Ctrl-C included.
#
# Called by scripts/bench.sh (which has installed the packages) with the doc to write as $1.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
DOC=${1:-$REPO/docs/benchmarks.md}
RUNS=${BENCH_ENCAP_RUNS:-5}
SECS=${BENCH_ENCAP_SECONDS:-5}
PY=/usr/bin/python3 # the stand-in API server needs only the standard library
FIXTURES=$REPO/e2e/lib/fixtures
CLUSTER_CIDRS=10.244.0.0/16,fd00:10:244::/48
A_IP=100.64.0.1 B_IP=100.64.0.2
API=https://$A_IP:6443
MODES=(never vxlan)

[ "$(id -u)" = 0 ] || { echo "bench.sh --encap: must run as root (it creates network namespaces)" >&2; exit 1; }
for tool in iperf3 openssl jq "$PY"; do
    command -v "$tool" >/dev/null || { echo "bench.sh --encap: $tool missing" >&2; exit 1; }
done

ID=$$-$RANDOM
PREFIX=rcbench-enc-$ID
TMP=
NETNS=()
PIDS=()

log() { printf '[bench --encap %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

cleanup() {
    set +e
    local pid ns
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    # anything still running in our namespaces (an iperf3 left by a failure or Ctrl-C)
    for ns in "${NETNS[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null; done
    done
    # deleting a node takes its uplink, its veths (and their pod ends), routes, rcni.vxlan and iptables
    for ns in "${NETNS[@]}"; do ip netns del "$ns" 2>/dev/null; done
    if [ -n "${BENCH_KEEP:-}" ] && [ -n "$TMP" ]; then   # raw iperf3 JSON, logs, conflists
        mkdir -p "$BENCH_KEEP" &&
            tar -C "$TMP" -cf - --exclude='*.key' --exclude=routed-cni --exclude=store . | tar -C "$BENCH_KEEP" -xf -
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

TMP=$(mktemp -d /tmp/routed-cni-bench-encap.XXXXXX)

# ------------------------------------------------------------------ build
# A private copy, as bench.sh does: a later `cargo build` must not swap the binary mid-run.
command -v cargo >/dev/null || die "cargo not found; install Rust (rustup), then re-run"
cargo build --release --quiet
BIN=$TMP/routed-cni
cp "$REPO/target/release/routed-cni" "$BIN"
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || REV="$REV+uncommitted changes"
# A build from before issue 16 (no --encapsulation) still gets paths (1) and (2), and says so.
ENCAP_FLAG=(--encapsulation)
if ! "$BIN" agent --help | grep -q -- '--encapsulation'; then
    log "this build's agent has no --encapsulation: measuring node -> node and direct pod -> pod only"
    MODES=(never)
    ENCAP_FLAG=()
fi

# ------------------------------------------------------------------ credentials
# One CA, one server certificate for A's address and one token: the same for both clusters.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=bench-kubernetes-ca -keyout "$TMP/ca.key" -out "$TMP/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=kube-apiserver \
    -keyout "$TMP/server.key" -out "$TMP/server.csr" 2>/dev/null
printf 'subjectAltName=IP:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' $A_IP >"$TMP/san.ext"
openssl x509 -req -in "$TMP/server.csr" -CA "$TMP/ca.crt" -CAkey "$TMP/ca.key" -CAcreateserial \
    -days 1 -extfile "$TMP/san.ext" -out "$TMP/server.crt" 2>/dev/null
head -c 24 /dev/urandom | base64 >"$TMP/token"

# ------------------------------------------------------------------ the clusters
# health NS PATH -> "CODE body" from the agent's health listener in NS (bash's /dev/tcp)
# shellcheck disable=SC2016 # $0 expands in the inner bash
health() {
    ip netns exec "$1" timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/9465 && printf "GET %s HTTP/1.0\r\n\r\n" "$0" >&3 && cat <&3' "$2" 2>/dev/null |
        tr -d '\r' | awk 'NR==1 {code=$2} body {print code, $0} /^$/ {body=1}' || true
}

# wait_until SECONDS WHAT COMMAND...
wait_until() {
    local secs=$1 what=$2 i
    shift 2
    for ((i = 0; i < secs * 5; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "$what (not within ${secs}s)"
}

listening() { ip netns exec "$1" ss -Hltn "sport = :$2" | grep -q .; }

# make_cluster MODE: nodes $PREFIX-MODE-a/-b on one veth pair, the stand-in API server in A,
# an agent on each with --encapsulation MODE.
make_cluster() {
    local mode=$1 a=$PREFIX-$1-a b=$PREFIX-$1-b dir=$TMP/$1 n
    netns_add "$a"
    netns_add "$b"
    ip link add uplink netns "$a" type veth peer name uplink netns "$b"
    ip -n "$a" addr add $A_IP/24 dev uplink
    ip -n "$b" addr add $B_IP/24 dev uplink
    ip -n "$a" addr add fd00:64::1/64 dev uplink nodad
    ip -n "$b" addr add fd00:64::2/64 dev uplink nodad
    for n in "$a" "$b"; do
        # as on a node up for a while: no link-local address still in DAD
        ip netns exec "$n" sysctl -qw net.ipv6.conf.uplink.accept_dad=0
        ip -n "$n" link set uplink up
    done
    # Each node's default route points at the other (there is no third host): the agent takes
    # the pods' MTU from the default-route interface in `never` mode.
    ip -n "$a" route add default via $B_IP
    ip -n "$b" route add default via $A_IP
    mkdir -p "$dir/nodes"
    cp "$FIXTURES/node-a.json" "$FIXTURES/node-b.json" "$dir/nodes/"
    ip netns exec "$a" "$PY" "$REPO/e2e/lib/fake-apiserver.py" --listen $A_IP:6443 \
        --cert "$TMP/server.crt" --key "$TMP/server.key" --token-file "$TMP/token" \
        --nodes "$dir/nodes" 2>>"$dir/apiserver.log" &
    PIDS+=($!)
    wait_until 10 "the stand-in API server in $a" listening "$a" 6443
    start_agent "$mode" "$a" node-a
    start_agent "$mode" "$b" node-b
}

# start_agent MODE NS NODE_NAME: the agent as the DaemonSet runs it, its dirs under $TMP/MODE/NODE
start_agent() {
    local mode=$1 ns=$2 name=$3 dir=$TMP/$1/$3
    mkdir -p "$dir"
    # No NetworkPolicy table: this measures the paths, not policy (ROUTED_CNI_NETWORK_POLICY is
    # ignored by builds that predate it).
    ip netns exec "$ns" env NODE_NAME="$name" ROUTED_CNI_CLUSTER_CIDR="$CLUSTER_CIDRS" ROUTED_CNI_NETWORK_POLICY=false "$BIN" agent \
        ${ENCAP_FLAG[@]+"${ENCAP_FLAG[@]}" "$mode"} --no-portmap \
        --api-server $API --token-file "$TMP/token" --ca-file "$TMP/ca.crt" \
        --bin-dir "$dir/bin" --conf-dir "$dir/net.d" --log-file "$dir/cni.log" \
        --systemd-network-dir "$dir/systemd/network" --networkmanager-conf-dir "$dir/NetworkManager/conf.d" \
        2>>"$dir/agent.log" &
    PIDS+=($!)
}

ready() { [[ "$(health "$1" /readyz)" == 200* ]]; }

# add_pod MODE NODE_NAME -> the pod's IPv4 address: the pod (namespace $PREFIX-MODE-a-pod for
# node-a, made first with netns_add: this runs in a $(...) subshell) is wired by the binary the
# agent installed, from the conflist it wrote (with a store and log of its own).
add_pod() {
    local mode=$1 name=$2 dir=$TMP/$1/$2 ns=$PREFIX-$1-${2#node-} pod=$PREFIX-$1-${2#node-}-pod out
    jq --arg d "$dir/store" '.plugins[0] + {name: .name, cniVersion: .cniVersion} | .ipam.dataDir = $d' \
        "$dir/net.d/10-routed-cni.conflist" >"$dir/plugin.json"
    out=$(ip netns exec "$ns" env CNI_COMMAND=ADD CNI_CONTAINERID="bench-$mode-$name" \
        CNI_NETNS="/run/netns/$pod" CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni \
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=$name" \
        "$dir/bin/routed-cni" <"$dir/plugin.json") || die "ADD of a pod on $mode/$name failed: $out"
    jq -r '[.ips[].address | select(test(":") | not)][0]' <<<"$out" | cut -d/ -f1
}

log "building two clusters (encapsulation ${MODES[*]}), namespaces $PREFIX-*, scratch $TMP"
for mode in "${MODES[@]}"; do make_cluster "$mode"; done
for mode in "${MODES[@]}"; do
    for n in a b; do
        wait_until 20 "the $mode agent on node-$n ready (/readyz 200)" ready "$PREFIX-$mode-$n"
    done
done
declare -A POD_A POD_B
for mode in "${MODES[@]}"; do
    netns_add "$PREFIX-$mode-a-pod"
    netns_add "$PREFIX-$mode-b-pod"
    POD_A[$mode]=$(add_pod "$mode" node-a)
    POD_B[$mode]=$(add_pod "$mode" node-b)
    log "$mode: pod a ${POD_A[$mode]}, pod b ${POD_B[$mode]}"
    if ! ip netns exec "$PREFIX-$mode-a-pod" ping -c1 -W2 -q "${POD_B[$mode]}" >/dev/null; then
        for n in a b; do   # what the agents made, to see which part is missing
            log "node $n: $(ip -n "$PREFIX-$mode-$n" -4 route show proto 77 | paste -sd';' -)"
            [ "$mode" = never ] && continue
            log "node $n: fdb: $(ip netns exec "$PREFIX-$mode-$n" bridge fdb show dev rcni.vxlan | paste -sd';' -)"
            log "node $n: neighbours: $(ip -n "$PREFIX-$mode-$n" neigh show dev rcni.vxlan | paste -sd';' -)"
        done
        die "$mode: pod a cannot ping pod b (${POD_B[$mode]})"
    fi
done

# The paths: name, client namespace, server namespace, server address, the source the server
# must see (pods keep their address: no masquerade between pods), the mode's cluster.
PATHS=(node direct)
[ ${#MODES[@]} = 1 ] || PATHS+=(vxlan)
declare -A CLIENT SERVER DST SRC CLUSTER LABEL
CLIENT[node]=$PREFIX-never-a SERVER[node]=$PREFIX-never-b DST[node]=$B_IP SRC[node]=$A_IP CLUSTER[node]=never
LABEL[node]="node → node over the uplink"
CLIENT[direct]=$PREFIX-never-a-pod SERVER[direct]=$PREFIX-never-b-pod DST[direct]=${POD_B[never]}
SRC[direct]=${POD_A[never]} CLUSTER[direct]=never
LABEL[direct]="pod → pod, \`--encapsulation never\` (direct route)"
CLIENT[vxlan]=$PREFIX-vxlan-a-pod SERVER[vxlan]=$PREFIX-vxlan-b-pod DST[vxlan]=${POD_B[vxlan]:-}
SRC[vxlan]=${POD_A[vxlan]:-} CLUSTER[vxlan]=vxlan
LABEL[vxlan]="pod → pod, \`--encapsulation vxlan\` (rcni.vxlan)"

# The route node A takes for each destination: proves which path was measured.
has_vxlan() { [ ${#MODES[@]} = 2 ]; }
declare -A VIA
for p in "${PATHS[@]}"; do
    VIA[$p]=$(ip -n "$PREFIX-${CLUSTER[$p]}-a" -4 route get "${DST[$p]}" | head -1 |
        sed -E 's/ (uid|cache).*//; s/  +/ /g; s/ $//')
done
[[ "${VIA[direct]}" == *"via $B_IP dev uplink"* ]] || die "direct path on A is not via B's uplink: ${VIA[direct]}"
! has_vxlan || [[ "${VIA[vxlan]}" == *"dev rcni.vxlan"* ]] || die "vxlan path on A is not over rcni.vxlan: ${VIA[vxlan]}"

mtu() { ip -n "$1" -o link show dev "$2" | sed -E 's/.* mtu ([0-9]+) .*/\1/'; }
declare -A MTU
MTU[node]=$(mtu "$PREFIX-never-a" uplink)
MTU[direct]=$(mtu "$PREFIX-never-a-pod" eth0)
VXLAN_DEV="not measured: this build's agent has no --encapsulation"
if has_vxlan; then
    MTU[vxlan]=$(mtu "$PREFIX-vxlan-a-pod" eth0)
    VXLAN_DEV=$(ip -n "$PREFIX-vxlan-a" -d -j link show dev rcni.vxlan | jq -r '.[0] | .linkinfo.info_data as $v
        | "VNI \($v.id), UDP port \($v.port), local \($v.local), learning \(if $v.learning then "on" else "off" end), MTU \(.mtu)"')
fi
log "routes on A: ${VIA[*]}; rcni.vxlan: $VXLAN_DEV"

# ------------------------------------------------------------------ measure
# iperf_run PATH SECONDS OUT: one iperf3 test; the server exits after it (-1) and writes its own
# JSON (it names the peer's address as seen there).
iperf_run() {
    local p=$1 secs=$2 out=$3 spid
    ip netns exec "${SERVER[$p]}" iperf3 -s -1 -B "${DST[$p]}" -J >"$out.server" 2>&1 &
    spid=$!
    PIDS+=("$spid")
    wait_until 5 "iperf3 server for $p" listening "${SERVER[$p]}" 5201
    ip netns exec "${CLIENT[$p]}" iperf3 -c "${DST[$p]}" -t "$secs" -J >"$out" 2>&1 ||
        die "iperf3 $p failed: $(jq -r '.error // empty' "$out" 2>/dev/null || cat "$out")"
    wait "$spid" || true
    local seen
    seen=$(jq -r '.start.connected[0].remote_host' "$out.server")
    [ "$seen" = "${SRC[$p]}" ] || die "$p: the server saw the connection from $seen, not ${SRC[$p]}"
}

vxlan_tx() { if has_vxlan; then ip -n "$PREFIX-vxlan-a" -s -j link show dev rcni.vxlan | jq '.[0].stats64.tx.bytes'; else echo 0; fi; }

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "warm-up: 1 s per path"
for p in "${PATHS[@]}"; do iperf_run "$p" 1 "$TMP/warmup-$p.json"; done
log "measuring: $RUNS rounds x ${#PATHS[@]} paths x ${SECS}s"
TX_BEFORE=$(vxlan_tx)
for ((r = 0; r < RUNS; r++)); do
    for ((i = 0; i < ${#PATHS[@]}; i++)); do
        p=${PATHS[(i + r) % ${#PATHS[@]}]}
        iperf_run "$p" "$SECS" "$TMP/run-$r-$p.json"
        log "round $((r + 1)) $p: $(jq -r '.end.sum_received.bits_per_second / 1e9 * 100 | round / 100' "$TMP/run-$r-$p.json") Gbit/s"
    done
done
TX_AFTER=$(vxlan_tx)
VXLAN_SENT=0
for ((r = 0; r < RUNS; r++)); do
    ! has_vxlan || VXLAN_SENT=$((VXLAN_SENT + $(jq '.end.sum_sent.bytes' "$TMP/run-$r-vxlan.json")))
done
# The vxlan runs' payload went out on rcni.vxlan (its counters also count headers and ACKs).
((TX_AFTER - TX_BEFORE >= VXLAN_SENT)) ||
    die "rcni.vxlan sent $((TX_AFTER - TX_BEFORE)) bytes during the runs, less than the vxlan runs' $VXLAN_SENT"

# ------------------------------------------------------------------ report
JQ_MED='def med: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;'
# stats PATH -> median, min and max Gbit/s, retransmits of all runs, median CPU % of the sender
# and of the receiver (tab-separated)
stats() {
    local p=$1 r
    for ((r = 0; r < RUNS; r++)); do cat "$TMP/run-$r-$p.json"; done |
        jq -rs "$JQ_MED"' 
                [.[].end.sum_received.bits_per_second / 1e9] as $g
                | [($g | med), ($g | min), ($g | max), ([.[].end.sum_sent.retransmits] | add),
                   ([.[].end.cpu_utilization_percent.host_total] | med),
                   ([.[].end.cpu_utilization_percent.remote_total] | med)] | @tsv'
}
# ratio PATH REF -> the median over the rounds of PATH's throughput / REF's in the same round:
# the machine's load drifts between rounds (other work shares it), far less within one.
ratio() {
    local r
    for ((r = 0; r < RUNS; r++)); do
        jq -s '.[0].end.sum_received.bits_per_second / .[1].end.sum_received.bits_per_second' \
            "$TMP/run-$r-$1.json" "$TMP/run-$r-$2.json"
    done | jq -s "$JQ_MED"' med'
}
declare -A ROW
for p in "${PATHS[@]}"; do
    IFS=$'\t' read -r med lo hi retr cpu_s cpu_r <<<"$(stats "$p")"
    ROW[$p]=$(awk -v m="$med" -v lo="$lo" -v hi="$hi" -v rt="$retr" -v cs="$cpu_s" -v cr="$cpu_r" -v q="$(ratio "$p" node)" \
        'BEGIN { printf "%.2f | %.2f-%.2f | %d | %.0f%% / %.0f%% | %.2f", m, lo, hi, rt, cs, cr, q }')
done

CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1 | awk '{print $1, $2}')
REPORT=$TMP/report.md
{
    echo "Run: $(date -u '+%Y-%m-%d %H:%M UTC') | routed-cni $REV | kernel $(uname -r) | $(nproc) CPUs | $CPU | $(iperf3 --version | head -1 | cut -d' ' -f1-2) | load average before the run $LOAD_START"
    echo
    echo "Two nodes (network namespaces) joined by one veth pair, the uplink (MTU ${MTU[node]}), each running"
    echo "\`routed-cni agent\` against the stand-in API server; pods added with the binary and conflist"
    echo "the agent installed. One such pair per mode, built side by side. iperf3, one TCP stream, client"
    echo "on node A or in a pod on A, server on node B or in a pod on B; $RUNS runs of ${SECS} s per path"
    echo "after a 1 s warm-up, the paths taking turns (order rotated each round). Throughput is what the"
    echo "receiver got; the server checked each connection's source (pods keep their addresses)."
    echo "rcni.vxlan on A: $VXLAN_DEV."
    echo
    echo "| path | MTU (sender's interface) | route on node A | median Gbit/s | min-max | retransmits (all runs) | CPU sender / receiver (median) | ratio to node → node (median of the rounds' ratios) |"
    echo "|---|---|---|---|---|---|---|---|"
    for p in "${PATHS[@]}"; do
        echo "| ${LABEL[$p]} | ${MTU[$p]} | \`${VIA[$p]}\` | ${ROW[$p]} |"
    done
    echo
    if has_vxlan; then
        echo "VXLAN / direct pod → pod, median of the rounds' ratios: $(printf %.2f "$(ratio vxlan direct)")."
    else
        echo "VXLAN pod → pod: not measured (this build's agent has no \`--encapsulation\`)."
    fi
    echo "CPU figures are iperf3's own (its process time over wall time). Over veths the whole path,"
    echo "both ends and every hop's softirq, runs on this machine's $(nproc) CPUs: the ratios are each"
    echo "path's per-packet cost on one host, not a NIC's line rate."
} >"$REPORT"
cat "$REPORT"

# ------------------------------------------------------------------ docs
[ "${BENCH_ENCAP_NO_DOC:-}" = 1 ] && exit 0
BEGIN='<!-- bench.sh --encap results: begin (generated by scripts/bench.sh --encap, do not edit by hand) -->'
END='<!-- bench.sh --encap results: end -->'
mkdir -p "$(dirname "$DOC")"
if [ ! -f "$DOC" ] || ! grep -qF "$BEGIN" "$DOC"; then
    # shellcheck disable=SC2016 # backquotes are markdown
    { [ -f "$DOC" ] && cat "$DOC" || printf '# Benchmarks\n'
      printf '\n## Throughput: direct routes vs VXLAN (`sudo scripts/bench.sh --encap`)\n\n%s\n%s\n' "$BEGIN" "$END"; } >"$DOC.new"
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
