#!/usr/bin/env bash
# routed-cni benchmark: routed-cni vs the reference pair ptp + host-local
# (Debian's containernetworking-plugins), in the same run on the same machine.
#
# Measures, side by side: ADD/DEL latency (median, p90, p99), 100 pods ADDed and
# DELed in parallel, 100 pods of sequential churn, peak RSS, binary size, ADD
# latency with 1/100/250 pods on the node and with 5,000 records in a /16
# store, iptables execs per ADD/DEL, the kernel's veth create/teardown floor,
# and a strace breakdown of one ADD and one DEL. Prints a table and rewrites
# the generated section of docs/benchmarks.md.
#
# Isolation: both plugins run inside a scratch "node" network namespace made
# here, against pod namespaces made here (unique names per run); the host's own
# routes, sysctls and iptables are never touched, and no packet is sent
# anywhere. Everything is removed on exit, failure or Ctrl-C included.
#
# Usage: sudo scripts/bench.sh [--quick]     (--quick: fewer samples, ~1 min)
#        sudo scripts/bench.sh --cold       only the cold-pool rows (first ADD into an empty
#                                            pool, last DEL); prints them, leaves the docs alone
#        sudo scripts/bench.sh --encap      pod -> pod throughput (iperf3) direct vs VXLAN vs
#                                            node -> node, in scripts/bench-encap.sh; writes its
#                                            own section of the docs (separate markers), ~2 min
#        sudo scripts/bench.sh --policy     NetworkPolicy: API event -> rules active, nft sizes,
#                                            throughput and connection rate with 0 vs 1,000
#                                            policies, ADD with enforcement on vs off; in
#                                            scripts/bench-policy.sh, its own section, ~3-4 min
#        sudo scripts/bench.sh agent        the agent at cluster scale: 5,000 Nodes, 150,000 Pods,
#                                            2,000 NetworkPolicies from the stand-in; first sync,
#                                            RSS, CPU per 1,000 events, event -> programmed under
#                                            churn; in scripts/bench-agent.sh, its own section,
#                                            ~6 min and ~5 GB of RAM (the stand-in's)
#        BENCH_KEEP=dir keeps the raw results (JSON) and strace profiles there
#        BENCH_DOC=file writes the report there instead of docs/benchmarks.md
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
DOC=${BENCH_DOC:-$REPO/docs/benchmarks.md}
ARGS=()
[ "${1:-}" = "--quick" ] && ARGS=(--runs 20 --parallel 50 --churn 30 --rounds 1 --probes 8 --fill 2000)
[ "${1:-}" = "--cold" ] && ARGS=(--only-cold)

[ "$(id -u)" = 0 ] || { echo "bench.sh: must run as root (it creates network namespaces)" >&2; exit 1; }
command -v cargo >/dev/null || { echo "bench.sh: cargo not found; install Rust (rustup), then re-run" >&2; exit 1; }

# ------------------------------------------------------------------ packages
need=()
pkgs=(containernetworking-plugins time strace python3 iproute2 iptables)
[ "${1:-}" = "--encap" ] && pkgs=(iperf3 python3 iproute2 iptables openssl jq)
[ "${1:-}" = "--policy" ] && pkgs=(iperf3 python3 iproute2 iptables nftables openssl jq)
[ "${1:-}" = "agent" ] && pkgs=(python3 iproute2 iptables nftables openssl jq curl bc)
for pkg in "${pkgs[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "bench.sh: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ "${1:-}" = "--encap" ] && exec "$REPO/scripts/bench-encap.sh" "$DOC"
[ "${1:-}" = "--policy" ] && exec "$REPO/scripts/bench-policy.sh" "$DOC"
[ "${1:-}" = "agent" ] && exec "$REPO/scripts/bench-agent.sh" "$DOC"
for f in /usr/lib/cni/ptp /usr/lib/cni/host-local /usr/bin/time; do
    [ -x "$f" ] || { echo "bench.sh: $f missing after install" >&2; exit 1; }
done
PY=/usr/bin/python3

# ------------------------------------------------------------------ the world
ID=$$-$RANDOM
NODE=rcbench-node-$ID
NPODS=720                       # 1+100+250 per plugin for the scaling test, plus probes
TMP='' SHM='' PODS_FILE=/dev/null NODES_FILE=/dev/null HARNESS=''

cleanup() {
    set +e
    if [ -n "$HARNESS" ]; then kill "$HARNESS" 2>/dev/null; wait "$HARNESS" 2>/dev/null; fi
    # plugins still running after a failure or Ctrl-C live in the node namespace
    for ns in "$NODE" $(cat "$NODES_FILE"); do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null; done
    done
    # deleting a node takes its veths (and with them their pod ends), routes and iptables
    { echo "netns del $NODE"; sed 's/^/netns del /' "$NODES_FILE" "$PODS_FILE"; } |
        ip -force -batch - 2>/dev/null
    if [ -n "${BENCH_KEEP:-}" ] && [ -n "$TMP" ]; then   # keep raw results and traces
        mkdir -p "$BENCH_KEEP" && cp "$TMP"/*.json "$TMP"/*.md "$TMP"/*.txt "$BENCH_KEEP"/ 2>/dev/null
    fi
    [ -n "$TMP" ] && rm -rf "$TMP"
    [ -n "$SHM" ] && rm -rf "$SHM"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

TMP=$(mktemp -d /tmp/routed-cni-bench.XXXXXX)          # stores (on disk here), traces
SHM=$(mktemp -d /dev/shm/routed-cni-bench.XXXXXX)      # stores on tmpfs, like /run on a node
for i in $(seq -w 1 $NPODS); do echo "rcbench-pod-$ID-$i"; done >"$TMP/pods"
PODS_FILE=$TMP/pods
# one more node per plugin and pod count for the scaling test (a plugin never sees the other)
for n in routed-1 routed-100 routed-250 ptp-1 ptp-100 ptp-250; do echo "$NODE-$n"; done >"$TMP/nodes"
NODES_FILE=$TMP/nodes

# ------------------------------------------------------------------ build
# Benchmark a private copy: a later `cargo build` in the repo must not swap the binary mid-run.
cargo build --release --quiet
BIN=$TMP/routed-cni
cp "$REPO/target/release/routed-cni" "$BIN"
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || REV="$REV+uncommitted changes"
ls -l "$BIN"

echo "bench.sh: node namespaces $NODE(-*), $NPODS pod namespaces rcbench-pod-$ID-*, scratch $TMP"
{ echo "netns add $NODE"; sed 's/^/netns add /' "$NODES_FILE" "$PODS_FILE"; } | ip -batch -
for ns in "$NODE" $(cat "$NODES_FILE"); do ip -n "$ns" link set lo up; done
# both plugins program the nat table of the node namespace: make sure it works there
if ! ip netns exec "$NODE" iptables -t nat -S >/dev/null 2>&1; then
    echo "bench.sh: 'iptables -t nat' does not work in a fresh network namespace here:" >&2
    ip netns exec "$NODE" iptables -t nat -S >&2 || true
    exit 1
fi

# ------------------------------------------------------------------ measure
# The harness runs inside the node namespace, so everything it starts acts there only. It runs
# in the background so that a signal reaches our trap at once (which then stops it).
ip netns exec "$NODE" "$PY" "$REPO/scripts/bench.py" \
    --bin "$BIN" --tmp "$TMP" --shm "$SHM" --pods "$PODS_FILE" --scale-nodes "$NODES_FILE" \
    --rev "$REV" --out "$TMP/report.md" "${ARGS[@]}" &
HARNESS=$!
wait "$HARNESS"
HARNESS=

# ------------------------------------------------------------------ docs
[ "${1:-}" = "--cold" ] && exit 0
BEGIN='<!-- bench.sh results: begin (generated by scripts/bench.sh, do not edit by hand) -->'
END='<!-- bench.sh results: end -->'
mkdir -p "$(dirname "$DOC")"
if [ ! -f "$DOC" ] || ! grep -qF "$BEGIN" "$DOC"; then
    { [ -f "$DOC" ] && cat "$DOC" || printf '# Benchmarks\n\nGenerated by `sudo scripts/bench.sh`.\n'
      printf '\n## Latest run\n\n%s\n%s\n' "$BEGIN" "$END"; } >"$DOC.new"
    mv "$DOC.new" "$DOC"
fi
# replace what is between the markers by the new report
"$PY" - "$DOC" "$TMP/report.md" "$BEGIN" "$END" <<'EOF'
import sys
doc, report, begin, end = sys.argv[1:]
text, new = open(doc).read(), open(report).read()
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
open(doc, "w").write(f"{head}{begin}\n{new}{end}{tail}")
EOF
echo "bench.sh: wrote $DOC"
