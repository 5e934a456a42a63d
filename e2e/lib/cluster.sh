# A two-node cluster in network namespaces, on top of world.sh (source this instead of it).
# Nothing here touches the real host's routes, sysctls or iptables: every address below lives
# only inside namespaces this file creates, and world.sh's trap deletes them on exit.
#
#                       outside 203.0.113.2  ("the internet": routes only to 100.64.0.0/24)
#                          | wan
#   underlay (a router): 203.0.113.1 / br0 100.64.0.254   (no route to any pod subnet)
#                 pa /                 \ pb          (br0 = the switch both nodes sit on)
#   node A  uplink 100.64.0.1              node B  uplink 100.64.0.2
#     pods 10.244.1.0/24                     pods 10.244.2.0/24
#     10.244.2.0/24 via 100.64.0.2           10.244.1.0/24 via 100.64.0.1   (what kindnet/BGP install)
#     default via 100.64.0.254               default via 100.64.0.254
#
# Each node runs routed-cni with its own dataDir and nonMasqueradeCIDRs = the cluster CIDR.
# kube_proxy_sync emulates kube-proxy's iptables mode on a node.
#
# CLUSTER_ROUTES=static (the default) has make_cluster add the routes between pod subnets by
# hand; CLUSTER_ROUTES=none leaves them to the test (e2e/85-agent.sh: routed-cni agent).
# A third node: make_cluster_node "$NODE_C" pc $NODE_C_IP.

. "$(dirname "${BASH_SOURCE[0]}")/world.sh"

CLUSTER_CIDR=10.244.0.0/16
UNDERLAY=rcn-ul-$RUN_ID
NODE_A=rcn-na-$RUN_ID
NODE_B=rcn-nb-$RUN_ID
ROUTER_IP=100.64.0.254
NODE_A_IP=100.64.0.1
NODE_B_IP=100.64.0.2
ROUTER_OUT=203.0.113.1
OUTSIDE_ADDR=203.0.113.2
POD_CIDR_A=10.244.1.0/24
POD_CIDR_B=10.244.2.0/24
NODE_C=rcn-nc-$RUN_ID
NODE_C_IP=100.64.0.3
POD_CIDR_C=10.244.3.0/24
CLUSTER_ROUTES=${CLUSTER_ROUTES:-static}

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# The switch/router, the internet behind it, and both nodes wired to the switch.
make_cluster() {
    netns_add "$UNDERLAY"
    netns_add "$OUTSIDE"
    in_ns "$UNDERLAY" sysctl -qw net.ipv4.ip_forward=1
    ip -n "$UNDERLAY" link add br0 type bridge
    ip -n "$UNDERLAY" addr add $ROUTER_IP/24 dev br0
    ip -n "$UNDERLAY" link set br0 up
    ip link add wan-$RUN_ID netns "$UNDERLAY" type veth peer name eth-$RUN_ID netns "$OUTSIDE"
    ip -n "$UNDERLAY" link set wan-$RUN_ID name wan
    ip -n "$OUTSIDE" link set eth-$RUN_ID name eth0
    ip -n "$UNDERLAY" addr add $ROUTER_OUT/24 dev wan
    ip -n "$OUTSIDE" addr add $OUTSIDE_ADDR/24 dev eth0
    ip -n "$UNDERLAY" link set wan up
    ip -n "$OUTSIDE" link set eth0 up
    # The internet knows the nodes' public side, never the pod subnets or Service IPs.
    ip -n "$OUTSIDE" route add 100.64.0.0/24 via $ROUTER_OUT
    if [ "$CLUSTER_ROUTES" == static ]; then
        make_cluster_node "$NODE_A" pa $NODE_A_IP $POD_CIDR_B $NODE_B_IP
        make_cluster_node "$NODE_B" pb $NODE_B_IP $POD_CIDR_A $NODE_A_IP
    else
        make_cluster_node "$NODE_A" pa $NODE_A_IP
        make_cluster_node "$NODE_B" pb $NODE_B_IP
    fi
}

# make_cluster_node NODE SWITCH_PORT ADDRESS [OTHER_POD_CIDR OTHER_NODE_ADDRESS]
make_cluster_node() {
    local node=$1 port=$2 addr=$3 other_cidr=${4:-} other_addr=${5:-}
    netns_add "$node"
    ip link add up-$port-$RUN_ID netns "$node" type veth peer name $port-$RUN_ID netns "$UNDERLAY"
    ip -n "$node" link set up-$port-$RUN_ID name uplink
    ip -n "$UNDERLAY" link set $port-$RUN_ID name $port
    ip -n "$UNDERLAY" link set $port master br0 up
    ip -n "$node" addr add "$addr"/24 dev uplink
    # A real node's uplink finished duplicate address detection long ago; a fresh one would
    # keep its link-local address tentative for a second or two, and the node cannot send
    # neighbour solicitations for forwarded IPv6 packets from it until then.
    in_ns "$node" sysctl -qw net.ipv6.conf.uplink.accept_dad=0
    ip -n "$node" link set uplink up
    ip -n "$node" route add default via $ROUTER_IP
    if [ -n "$other_cidr" ]; then ip -n "$node" route add "$other_cidr" via "$other_addr"; fi
}

# node_conf NODE POD_CIDR -> path of the node's routed-cni config (its own dataDir and log)
node_conf() {
    local node=$1 cidr=$2 conf=$WORK/$1.json
    cat >"$conf" <<JSON
{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"routed-cni",
 "ipam":{"subnet":"$cidr","dataDir":"$WORK/store-$node"},
 "nonMasqueradeCIDRs":["$CLUSTER_CIDR"],
 "logFile":"$WORK/cni-$node.log","logLevel":"debug"}
JSON
    echo "$conf"
}

# pod_add NODE CONF POD CONTAINER_ID -> the pod's address (dies when ADD fails). Runs in a
# command substitution: create POD with make_pod first, so that cleanup knows it.
pod_add() {
    local node=$1 conf=$2 pod=$3 cid=$4 out
    # die's message would vanish into the caller's $(...): say it on stderr.
    out=$(NODE=$node cni ADD "$cid" "$pod" "$conf") || die "ADD $pod on $node failed: $out" >&2
    jq -r '.ips[0].address' <<<"$out" | cut -d/ -f1
}

# pod_del NODE CONF POD CONTAINER_ID
pod_del() {
    local out
    out=$(NODE=$1 cni DEL "$4" "$3" "$2") || fail "DEL $3 on $1: $out"
}

# serve_name NS PORT NAME: a TCP server answering every connection with "NAME <peer address>"
# and holding it until the client closes its side (so a client can keep it open).
serve_name() {
    local ns=$1 port=$2 name=$3 i
    ip netns exec "$ns" timeout 300 socat -T5 TCP-LISTEN:"$port",reuseaddr,fork \
        SYSTEM:"echo $name \$SOCAT_PEERADDR; cat >/dev/null" &
    BACKGROUND_PIDS+=($!)
    for i in $(seq 50); do
        in_ns "$ns" ss -Hltn "sport = :$port" | grep -q . && return 0
        sleep 0.1
    done
    die "server $name in $ns:$port did not start"
}

# ask NS ADDR PORT -> the server's one-line answer, empty when the connection failed
ask() {
    in_ns "$1" timeout 6 socat -t3 -T3 - TCP:"$2":"$3",connect-timeout=2 </dev/null 2>/dev/null |
        tr -d '\r' | head -1 || true
}

# can_ping NS ADDR
can_ping() { in_ns "$1" ping -c1 -W2 -q "$2" >/dev/null 2>&1; }

# set_rp_filter NODE VALUE: all, default and every existing interface of the node
set_rp_filter() {
    in_ns "$1" sh -c 'for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo '"$2"' >"$f"; done'
}

# ---- kube-proxy, iptables mode ----------------------------------------------------------------
# The chains kube-proxy (v1.28+) writes, with the same matches, marks and order. Chain names are
# KUBE-SVC-/KUBE-SEP-/KUBE-EXT- + 16 characters of sha256 (kube-proxy uses base32 of the same
# hash; hex here so the script needs no extra tool).
kp_hash() { printf '%s' "$1" | sha256sum | cut -c1-16 | tr a-f A-F; }

# kube_proxy_rules SERVICE... -> iptables-restore input. SERVICE is
#   "NAME CLUSTER_IP PORT NODE_PORT|- HAIRPIN_MASQ(yes|no) ENDPOINT_IP:PORT[,ENDPOINT_IP:PORT...]"
# HAIRPIN_MASQ=no leaves out kube-proxy's "-s <endpoint> -j KUBE-MARK-MASQ" in the KUBE-SEP chain
# (kube-proxy always writes it; "no" exists only to show what it is for).
kube_proxy_rules() {
    local decl=() rules=() spec name cip port np hp eps svc ext sep ep n i prob cmt
    decl+=(":KUBE-SERVICES - [0:0]" ":KUBE-NODEPORTS - [0:0]" ":KUBE-POSTROUTING - [0:0]"
        ":KUBE-MARK-MASQ - [0:0]")
    rules+=('-I PREROUTING 1 -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
        '-I OUTPUT 1 -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
        '-I POSTROUTING 1 -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING'
        '-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000'
        '-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN'
        '-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000'
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully')
    for spec in "$@"; do
        read -r name cip port np hp eps <<<"$spec"
        cmt="e2e/$name:http"
        svc=KUBE-SVC-$(kp_hash "$cmt/tcp")
        decl+=(":$svc - [0:0]")
        rules+=("-A KUBE-SERVICES -d $cip/32 -p tcp -m comment --comment \"$cmt cluster IP\" -m tcp --dport $port -j $svc")
        rules+=("-A $svc ! -s $CLUSTER_CIDR -d $cip/32 -p tcp -m comment --comment \"$cmt cluster IP\" -m tcp --dport $port -j KUBE-MARK-MASQ")
        IFS=, read -r -a eps <<<"$eps"
        n=${#eps[@]}
        for ((i = 0; i < n; i++)); do
            ep=${eps[i]}
            sep=KUBE-SEP-$(kp_hash "$cmt/tcp/$ep")
            decl+=(":$sep - [0:0]")
            # Rule i catches 1/(n-i) of what rules 0..i-1 left: every endpoint gets 1/n.
            if ((n - i > 1)); then
                prob=$(awk -v r=$((n - i)) 'BEGIN { printf "%0.10f", 1 / r }')
                rules+=("-A $svc -m comment --comment \"$cmt -> $ep\" -m statistic --mode random --probability $prob -j $sep")
            else
                rules+=("-A $svc -m comment --comment \"$cmt -> $ep\" -j $sep")
            fi
            if [ "$hp" == yes ]; then
                rules+=("-A $sep -s ${ep%:*}/32 -m comment --comment \"$cmt\" -j KUBE-MARK-MASQ")
            fi
            rules+=("-A $sep -p tcp -m comment --comment \"$cmt\" -m tcp -j DNAT --to-destination $ep")
        done
        if [ "$np" != - ]; then
            ext=KUBE-EXT-$(kp_hash "$cmt/tcp")
            decl+=(":$ext - [0:0]")
            rules+=("-A KUBE-NODEPORTS -p tcp -m comment --comment \"$cmt\" -m tcp --dport $np -j $ext"
                "-A $ext -m comment --comment \"masquerade traffic for $cmt external destinations\" -j KUBE-MARK-MASQ"
                "-A $ext -j $svc")
        fi
    done
    rules+=('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')
    printf '*nat\n'
    printf '%s\n' "${decl[@]}" "${rules[@]}"
    printf 'COMMIT\n'
    cat <<'EOF'
*filter
:KUBE-FORWARD - [0:0]
-I FORWARD 1 -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
EOF
}

# kube_proxy_clear NODE: removes every KUBE-* jump and chain (nat and filter), nothing else.
kube_proxy_clear() {
    local node=$1 t rule chains c
    for t in nat filter; do
        while read -r rule; do
            [ -n "$rule" ] && eval "in_ns \"\$node\" iptables -w -t $t ${rule/#-A/-D}"
        done < <(in_ns "$node" iptables-save -t $t | grep -E '^-A [A-Z]+ .*-j KUBE-' | grep -v '^-A KUBE-' || true)
        chains=$(in_ns "$node" iptables-save -t $t | sed -n 's/^:\(KUBE-[^ ]*\) .*/\1/p')
        for c in $chains; do in_ns "$node" iptables -w -t $t -F "$c"; done
        for c in $chains; do in_ns "$node" iptables -w -t $t -X "$c"; done
    done
}

# kube_proxy_sync NODE RULES_FILE: replaces the node's KUBE-* rules by RULES_FILE, as a
# kube-proxy full resync does.
kube_proxy_sync() {
    kube_proxy_clear "$1"
    in_ns "$1" iptables-restore -w --noflush <"$2" || die "iptables-restore on $1 failed"
}

# expect_same WHAT GOT WANT: like expect_eq, for multi-line values (shows a diff on failure)
expect_same() {
    if [ "$2" == "$3" ]; then ok "$1"; else fail "$1:"; diff <(echo "$3") <(echo "$2") | sed 's/^/    /' || true; fi
}

# kube_rules NODE -> the node's KUBE-* rules (nat and filter), for before/after comparisons
kube_rules() { { in_ns "$1" iptables-save -t nat; in_ns "$1" iptables-save -t filter; } | grep -E '^(-A|:)' | grep KUBE- | sed 's/ \[[0-9]*:[0-9]*\]$//'; }
