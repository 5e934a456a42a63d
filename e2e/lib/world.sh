# Shared helpers for e2e scripts: a scratch node namespace with an "outside" namespace behind
# its uplink, pod namespaces, assertions, and cleanup of everything on exit.
# Source it; it sets up a trap. Nothing here touches the real host's routes, sysctls or iptables.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${ROUTED_CNI_BIN:-$ROOT/target/release/routed-cni}
RUN_ID=${RUN_ID:-$$}
WORK=$(mktemp -d "/tmp/rcni-e2e-$RUN_ID.XXXX")
NODE=rcn-node-$RUN_ID
OUTSIDE=rcn-out-$RUN_ID
NODE_UPLINK=198.51.100.1
OUTSIDE_ADDR=198.51.100.2
NODE_UPLINK6=fd00:198:51:100::1
OUTSIDE_ADDR6=fd00:198:51:100::2
CREATED_NETNS=()
BACKGROUND_PIDS=()
FAILURES=0

log() { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
fail() { log "FAIL: $*"; FAILURES=$((FAILURES + 1)); }
ok() { log "ok: $*"; }
die() { log "FATAL: $*"; exit 1; }

cleanup_world() {
    local pid ns
    for pid in "${BACKGROUND_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for ns in "${CREATED_NETNS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    [ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"
}
# KEEP_WORK=1 keeps the scratch directory (agent and plugin logs) for a look after the run.
trap cleanup_world EXIT

netns_add() {
    ip netns add "$1"
    CREATED_NETNS+=("$1")
    ip -n "$1" link set lo up
}

# The node: its own sysctls, routes and iptables; an uplink to "outside" (the internet), which
# has no route back to pod subnets, so pod->outside works only when masqueraded.
make_node() {
    netns_add "$NODE"
    netns_add "$OUTSIDE"
    ip link add up-$RUN_ID netns "$NODE" type veth peer name dn-$RUN_ID netns "$OUTSIDE"
    ip -n "$NODE" link set up-$RUN_ID name uplink
    ip -n "$OUTSIDE" link set dn-$RUN_ID name eth0
    ip -n "$NODE" addr add $NODE_UPLINK/24 dev uplink
    # As on a node that has been up a while: no link-local address still in DAD on the uplink.
    ip netns exec "$NODE" sysctl -qw net.ipv6.conf.uplink.accept_dad=0
    ip -n "$OUTSIDE" addr add $OUTSIDE_ADDR/24 dev eth0
    ip -n "$NODE" link set uplink up
    ip -n "$OUTSIDE" link set eth0 up
    ip -n "$NODE" route add default via $OUTSIDE_ADDR
    # IPv6 too (nodad: usable at once); the outside has no route back to IPv6 pod subnets either.
    ip -n "$NODE" addr add $NODE_UPLINK6/64 dev uplink nodad
    ip -n "$OUTSIDE" addr add $OUTSIDE_ADDR6/64 dev eth0 nodad
    ip -n "$NODE" -6 route add default via $OUTSIDE_ADDR6
}

make_pod() { netns_add "$1"; }

on_node() { ip netns exec "$NODE" "$@"; }

# cni VERB CONTAINER_ID NETNS_NAME_OR_EMPTY CONFIG_FILE [IFNAME] -> stdout of the plugin
cni() {
    local verb=$1 cid=$2 ns=$3 conf=$4 ifname=${5:-eth0} path=""
    [ -n "$ns" ] && path=/run/netns/$ns
    ip netns exec "$NODE" env CNI_COMMAND="$verb" CNI_CONTAINERID="$cid" CNI_NETNS="$path" \
        CNI_IFNAME="$ifname" CNI_PATH=/usr/lib/cni \
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=e2e;K8S_POD_NAME=$cid" "$BIN" <"$conf"
}

pod_ip() { ip -n "$1" -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1; }

# A TCP server in NS on PORT that answers each connection with the peer's address.
serve_peer_addr() {
    local ns=$1 port=$2
    ip netns exec "$ns" timeout 300 socat -T5 TCP-LISTEN:"$port",reuseaddr,fork SYSTEM:'echo $SOCAT_PEERADDR' &
    BACKGROUND_PIDS+=($!)
    local i
    for i in $(seq 50); do
        ip netns exec "$ns" ss -ltn "sport = :$port" | grep -q LISTEN && return 0
        sleep 0.1
    done
    die "server on $ns:$port did not start"
}

# seen_by NS ADDR PORT: the source address that server saw when NS connected.
seen_by() { ip netns exec "$1" timeout 5 socat -T3 - TCP:"$2":"$3" </dev/null 2>/dev/null | tr -d '\r\n'; }

expect_eq() { # expect_eq WHAT GOT WANT
    if [ "$2" == "$3" ]; then ok "$1 = $3"; else fail "$1: got '$2', want '$3'"; fi
}

# Nothing of routed-cni left on the node: no host veth, no /32 route into one, no NAT rule,
# no allocation record in STORE (a dataDir).
expect_clean_node() {
    local store=$1 leftovers
    leftovers=$(ip -n "$NODE" -o link show | grep -o 'rcni[0-9a-f]*' || true)
    [ -z "$leftovers" ] && ok "no host veth left" || fail "host veths left: $leftovers"
    leftovers=$( (ip -n "$NODE" -4 route show; ip -n "$NODE" -6 route show) | grep rcni || true)
    [ -z "$leftovers" ] && ok "no pod route left" || fail "routes left: $leftovers"
    leftovers=$( (on_node iptables-save -t nat; on_node ip6tables-save -t nat) | grep -Ei 'routed-cni|RCNI-' || true)
    [ -z "$leftovers" ] && ok "no routed-cni NAT rule left" || fail "NAT rules left: $leftovers"
    # Record files are named by their address: a.b.c.d, or IPv6 (with colons).
    leftovers=$(find "$store" -regextype posix-extended -regex '.*/([0-9]+(\.[0-9]+){3}|[0-9a-f:]*:[0-9a-f:]*)$' 2>/dev/null || true)
    [ -z "$leftovers" ] && ok "no allocation left" || fail "allocations left: $leftovers"
    leftovers=$(on_node "$BIN" audit --data-dir "$store") && ok "routed-cni audit finds no leak" ||
        fail "routed-cni audit: $leftovers"
}

finish() {
    if [ "$FAILURES" -eq 0 ]; then
        log "PASS: $(basename "$0")"
        exit 0
    fi
    log "$FAILURES check(s) failed in $(basename "$0")"
    exit 1
}
