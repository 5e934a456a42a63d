#!/usr/bin/env bash
# routed-cni demo: build the plugin, wire two dual-stack pods (IPv4 + IPv6) on a
# "node" with the real binary, show that they reach each other, the node and the
# outside world over both families, then tear everything down and show that
# nothing is left behind.
#
# Everything happens in network namespaces created here (removed on exit):
#   NODE     the Kubernetes node; routed-cni runs inside it
#   OUTSIDE  "the internet": 198.51.100.2/24 and fd00:198:51:100::2/64, no route
#            back to the pod subnets
#   POD1/2   two empty pod sandboxes
# The host's own routes, sysctls and iptables are never touched.
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=$(realpath -m "${CARGO_TARGET_DIR:-target}")/release/routed-cni
SUBNET=10.244.1.0/24
SUBNET6=fd00:10:244:1::/64
NODE_IP=198.51.100.1
OUT_IP=198.51.100.2
NODE_IP6=fd00:198:51:100::1
OUT_IP6=fd00:198:51:100::2

bold="" norm=""
[ -t 1 ] && { bold=$(tput bold 2>/dev/null || true); norm=$(tput sgr0 2>/dev/null || true); }
section() { printf '\n%s== %s ==%s\n' "$bold" "$*" "$norm"; }
FAILED=0
ok() { echo "  [ok]   $*"; }
bad() { echo "  [FAIL] $*"; FAILED=$((FAILED + 1)); }
check() { # check DESCRIPTION COMMAND...: run quietly, report ok/FAIL
    local what=$1; shift
    if "$@" >/dev/null 2>&1; then ok "$what"; else bad "$what"; fi
}

[ "$(id -u)" = 0 ] || { echo "demo.sh: must run as root (it creates network namespaces)" >&2; exit 1; }
if ! command -v cargo >/dev/null; then
    echo "demo.sh: cargo not found. Install Rust with rustup (https://rustup.rs), then re-run." >&2
    exit 1
fi

section "Debian packages"
need=()
for pkg in iproute2 iptables iputils-ping socat jq python3; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
command -v cc >/dev/null || need+=(build-essential)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
else
    echo "all present"
fi

section "Build"
cargo build --release
ls -l "$BIN"

# ---------------------------------------------------------------- the world
ID=$$
NODE=demo-node-$ID OUTSIDE=demo-out-$ID POD1=demo-pod1-$ID POD2=demo-pod2-$ID
ALL_NS=("$NODE" "$OUTSIDE" "$POD1" "$POD2")
TMP=$(mktemp -d /tmp/routed-cni-demo.XXXXXX)
SERVER_PIDS=()
cleanup() {
    set +e
    for pid in "${SERVER_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for ns in "${ALL_NS[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

section "World: node, outside, two pods (namespaces *-$ID)"
for ns in "${ALL_NS[@]}"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip -n "$NODE" link add uplink type veth peer name wan netns "$OUTSIDE"
ip -n "$NODE" addr add $NODE_IP/24 dev uplink
ip -n "$NODE" link set uplink up
ip -n "$NODE" route add default via $OUT_IP
ip -n "$OUTSIDE" addr add $OUT_IP/24 dev wan
ip -n "$OUTSIDE" link set wan up
ip -n "$NODE" addr add $NODE_IP6/64 dev uplink nodad
ip -n "$OUTSIDE" addr add $OUT_IP6/64 dev wan nodad
ip -n "$NODE" -6 route add default via $OUT_IP6
echo "node uplink $NODE_IP/24 $NODE_IP6/64 <-> outside $OUT_IP/24 $OUT_IP6/64"
echo "(outside has no route to $SUBNET or $SUBNET6)"

cat >"$TMP/conf.json" <<EOF
{"cniVersion":"1.0.0","name":"demo","type":"routed-cni",
 "ipam":{"ranges":[[{"subnet":"$SUBNET"}],[{"subnet":"$SUBNET6"}]],"dataDir":"$TMP/store"},
 "masquerade":true,"nonMasqueradeCIDRs":["10.244.0.0/16","fd00:10:244::/48"],"mtu":1500,
 "logLevel":"debug","logFile":"$TMP/cni.log"}
EOF
echo "network config:"; jq . "$TMP/conf.json"

cni() { # cni COMMAND POD-NS -- runs the plugin inside the node, as kubelet's runtime would
    ip netns exec "$NODE" env CNI_COMMAND="$1" CNI_CONTAINERID="ctr-$2" \
        CNI_NETNS="/run/netns/$2" CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni \
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=$2" \
        "$BIN" <"$TMP/conf.json"
}
add_pod() { # add_pod POD-NS -> prints "IPv4 IPv6"; the result JSON goes to stderr
    local out
    if ! out=$(cni ADD "$1"); then
        echo "ADD $1 failed:" >&2; jq . <<<"$out" >&2 || echo "$out" >&2
        [ -f "$TMP/cni.log" ] && tail -20 "$TMP/cni.log" >&2
        exit 1
    fi
    jq . <<<"$out" >&2
    jq -r '[.ips[].address | split("/")[0]] | join(" ")' <<<"$out"
}

section "CNI ADD pod1"
read -r IP1 IP1_6 <<<"$(add_pod "$POD1")"
section "CNI ADD pod2"
read -r IP2 IP2_6 <<<"$(add_pod "$POD2")"
echo "pod1=$IP1 $IP1_6  pod2=$IP2 $IP2_6"

section "Ping, IPv4 and IPv6"
check "pod1 -> pod2 ($IP2)" ip netns exec "$POD1" ping -c1 -w3 "$IP2"
check "pod2 -> pod1 ($IP1)" ip netns exec "$POD2" ping -c1 -w3 "$IP1"
check "pod1 -> node ($NODE_IP)" ip netns exec "$POD1" ping -c1 -w3 $NODE_IP
check "pod1 -> outside ($OUT_IP)" ip netns exec "$POD1" ping -c1 -w3 $OUT_IP
check "pod1 -> pod2 ($IP2_6)" ip netns exec "$POD1" ping -6 -c1 -w3 "$IP2_6"
check "pod2 -> pod1 ($IP1_6)" ip netns exec "$POD2" ping -6 -c1 -w3 "$IP1_6"
check "pod1 -> node ($NODE_IP6)" ip netns exec "$POD1" ping -6 -c1 -w3 $NODE_IP6
check "pod1 -> outside ($OUT_IP6)" ip netns exec "$POD1" ping -6 -c1 -w3 $OUT_IP6

section "TCP: which source address does each server see?"
serve() { # serve NS PORT: a TCP server on both families that answers with the client's address
    ip netns exec "$1" socat TCP6-LISTEN:"$2",ipv6only=0,reuseaddr,fork SYSTEM:'echo $SOCAT_PEERADDR' &
    SERVER_PIDS+=($!)
    for _ in $(seq 50); do
        ip netns exec "$1" ss -Hltn "sport = :$2" | grep -q . && return 0
        sleep 0.1
    done
    bad "server in $1 did not start"
}
ask() { # ask ADDR PORT: the client address the server saw, in its short form
    local to="TCP4:$1:$2"
    [[ $1 == *:* ]] && to="TCP6:[$1]:$2"
    /usr/bin/python3 -c 'import ipaddress,sys; a = ipaddress.ip_address(sys.argv[1].strip("[]")); print(getattr(a, "ipv4_mapped", None) or a)' \
        "$(ip netns exec "$POD1" socat -t5 -T5 - "$to,connect-timeout=5" </dev/null 2>/dev/null)" 2>/dev/null || true
}
serve "$OUTSIDE" 8080
serve "$POD2" 8081
for pair in "$OUT_IP 8080 $NODE_IP outside" "$OUT_IP6 8080 $NODE_IP6 outside" \
    "$IP2 8081 $IP1 pod2" "$IP2_6 8081 $IP1_6 pod2"; do
    read -r to port want who <<<"$pair"
    seen=$(ask "$to" "$port")
    echo "  $who server at $to saw: ${seen:-<nothing>}"
    if [ "$who" = outside ]; then
        [ "$seen" = "$want" ] && ok "pod1 -> outside is masqueraded to $want" || bad "outside should see $want"
    else
        [ "$seen" = "$want" ] && ok "pod1 -> pod2 keeps the pod address $want" || bad "pod2 should see $want"
    fi
done

section "Pod1: ip addr / ip route / ip neigh (both families)"
ip -n "$POD1" addr show dev eth0
ip -n "$POD1" route
ip -n "$POD1" -6 route
ip -n "$POD1" neigh
ip -n "$POD1" -6 neigh
section "Node: ip route (both families)"
ip -n "$NODE" route
ip -n "$NODE" -6 route
section "Node: iptables -t nat -S, ip6tables -t nat -S"
ip netns exec "$NODE" iptables -t nat -S
ip netns exec "$NODE" ip6tables -t nat -S

section "CNI DEL both pods (and DEL pod1 once more: must be a no-op)"
cni DEL "$POD1" && ok "DEL pod1" || bad "DEL pod1"
cni DEL "$POD2" && ok "DEL pod2" || bad "DEL pod2"
out=$(cni DEL "$POD1") && [ -z "$out" ] && ok "second DEL pod1" || bad "second DEL pod1: $out"

section "Nothing left behind"
pool="$TMP/store/${SUBNET/\//-}"
pool6="$TMP/store/${SUBNET6/\//-}"
check "no rcni* veth in the node" bash -c "! ip -n $NODE -o link | grep -Eq '^[0-9]+: rcni'"
check "no /32 route to $IP1 or $IP2" bash -c "! ip -n $NODE route | grep -Eq '^($IP1|$IP2) '"
check "no /128 route to $IP1_6 or $IP2_6" bash -c "! ip -n $NODE -6 route | grep -Eq '^($IP1_6|$IP2_6) '"
for p in "$pool" "$pool6"; do
    check "no address allocated in $p" \
        bash -c "! ls -A '$p' | grep -Eq '^([0-9]+\.[0-9]+\.[0-9]+\.[0-9]+|[0-9a-f:]+:[0-9a-f:]+)$' && [ -z \"\$(ls -A '$p/keys' 2>/dev/null)\" ]"
done
check "no routed-cni NAT rule (iptables, ip6tables)" \
    bash -c "! ip netns exec $NODE sh -c 'iptables-save -t nat; ip6tables-save -t nat' | grep -Eq 'routed-cni|RCNI'"
check "routed-cni audit finds no leak" ip netns exec "$NODE" "$BIN" audit --data-dir "$TMP/store"
ls -A "$pool" "$pool6" | sed 's/^/  store: /'
ip netns exec "$NODE" iptables -t nat -S | sed 's/^/  nat: /'

section "Result"
if [ "$FAILED" -gt 0 ]; then
    echo "demo.sh: $FAILED check(s) FAILED"
    [ -f "$TMP/cni.log" ] && { echo "--- last lines of the plugin log:"; tail -30 "$TMP/cni.log"; }
    exit 1
fi
echo "demo.sh: all checks passed; cleaning up"
