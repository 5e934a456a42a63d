#!/usr/bin/env bash
# NetworkPolicy enforcement by `routed-cni agent` (issue 17), on the upstream e2e model
# (kubernetes test/e2e/network/netpol): namespaces x, y, z; pods a, b, c in each, a and c on
# node A, b on node B (lib/cluster.sh: two nodes on one switch, routes made by the agents);
# every pod serves TCP and UDP on 80 and 81 (and SCTP when the kernel has it), with container
# ports named serve-80-tcp ... serve-81-sctp in its Pod object. The stand-in API server
# (e2e/lib/fake-apiserver.py) serves Nodes, Pods, Namespaces and NetworkPolicies from
# directories this script writes, as kubectl apply would change them.
# For every case, the full 9x9 matrix (loopback pairs ignored) is probed at once from inside the
# pods (lib/netpol-probe.py: TCP connect, UDP request/response, 1 s each) and compared with the
# expected one, re-probing mismatched pairs for up to 10 s as upstream does; on a mismatch the
# expected and observed truth tables are printed. Cases (TCP 80 unless stated):
#   - no policy: everything allowed (TCP, UDP, IPv4 and IPv6);
#   - default-deny-ingress in x (IPv4, IPv6, UDP); default-deny-all in x (ingress + egress);
#   - x/a from pod=b only (matchLabels, matchExpressions); from namespace y only (IPv4, IPv6);
#     deny-all in x plus allow-all into x/a; from every namespace; x from its own namespace
#     only; one peer with namespace NotIn [x] AND pod=b; two peers (NotIn [x]) OR (pod=b);
#   - x/a from y on TCP 81 only (80 and UDP closed); a second policy stacked on it opens 80;
#   - named port serve-81-tcp into x; x/a from y on serve-80-tcp; endPort 75-80 from y;
#   - egress: x/a denied everything; x/a only to TCP 80; x only to named port serve-80-tcp;
#     ingress and egress rules in one policy; policyTypes absent with egress rules (both
#     directions isolated); denied at the client although the server allows it; ipBlock
#     y/b /32 and /128 (IPv4 and IPv6); ipBlock cluster CIDR except x/b (IPv6 denied: no IPv6
#     peer), then x/b allowed by a second policy;
#   - protocols: ports [{protocol: TCP}] leaves UDP closed; a UDP-only rule leaves TCP closed;
#     an SCTP-only rule leaves TCP closed (whether or not the kernel has SCTP);
#   - labels: x/b gains pod2=updated and becomes allowed; namespace y gains ns2=updated;
#     x/a gains target=isolated and becomes isolated;
#   - allow-all in x updated in place to deny-all; then deleted: everything allowed again;
#   - agents restarted with --network-policy=false under a deny-all policy: no table
#     `inet routed-cni` on either node, everything allowed.
# Nothing outside the namespaces this script creates is touched.
set -euo pipefail
# shellcheck disable=SC2034 # read by lib/cluster.sh: the agents make the routes between nodes
CLUSTER_ROUTES=none
. "$(dirname "$0")/lib/cluster.sh"
[ -x "$BIN" ] || die "no routed-cni binary at $BIN (build it, or set ROUTED_CNI_BIN)"
for tool in openssl nft jq; do
    command -v $tool >/dev/null || die "$tool is needed (see the packages in scripts/test.sh)"
done
PY=/usr/bin/python3 # not pyenv's python3 from PATH: the helpers need only the stdlib
[ -x $PY ] || die "$PY is needed (apt-get install python3)"
PROBE=$ROOT/e2e/lib/netpol-probe.py
# How long a mismatched pair is probed again before the case fails (upstream: 10 s).
DEADLINE=${NETPOL_DEADLINE:-10}
DUMPED=
RESYNC=5
CLUSTER_CIDR6=fd00:10:244::/48
API=https://$ROUTER_IP:6443
FIXTURES=$ROOT/e2e/lib/fixtures
NODES=$WORK/nodes PODS=$WORK/pods NAMESPACES=$WORK/namespaces NETPOLS=$WORK/networkpolicies
mkdir -p "$NODES" "$PODS" "$NAMESPACES" "$NETPOLS"
declare -A AGENT_PID NODE_NS POD_NODE POD_IP4 POD_IP6 POD_VETH
NODE_NS=([node-a]=$NODE_A [node-b]=$NODE_B)
SERVER_PID=

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# wait_for SECONDS WHAT COMMAND...: polls COMMAND until it succeeds; ok/fail says how long.
wait_for() {
    local secs=$1 what=$2 start end
    shift 2
    start=$(now_ms)
    end=$((start + secs * 1000))
    until "$@" >/dev/null 2>&1; do
        if (($(now_ms) > end)); then
            fail "$what (not within ${secs}s)"
            return 0
        fi
        sleep 0.2
    done
    ok "$what ($(($(now_ms) - start)) ms)"
}

start_server() {
    ip netns exec "$UNDERLAY" $PY "$ROOT/e2e/lib/fake-apiserver.py" --listen $ROUTER_IP:6443 \
        --cert "$WORK/server.crt" --key "$WORK/server.key" --token-file "$WORK/token" \
        --nodes "$NODES" --pods "$PODS" --namespaces "$NAMESPACES" --networkpolicies "$NETPOLS" \
        2>>"$WORK/apiserver.log" &
    SERVER_PID=$!
    BACKGROUND_PIDS+=("$SERVER_PID")
    for _ in $(seq 50); do
        ip netns exec "$UNDERLAY" ss -Hltn "sport = :6443" | grep -q . && return 0
        sleep 0.1
    done
    die "the stand-in API server did not start: $(cat "$WORK/apiserver.log")"
}

# start_agent NODE_NAME [ARG...]: the agent as the DaemonSet runs it, with the node's own CNI
# dirs and IPAM store under $WORK/NODE_NAME; ARGs go to the agent (--network-policy false).
start_agent() {
    local name=$1 dir=$WORK/$1
    shift
    mkdir -p "$dir"
    ip netns exec "${NODE_NS[$name]}" env NODE_NAME="$name" ROUTED_CNI_CLUSTER_CIDR="$CLUSTER_CIDR,$CLUSTER_CIDR6" "$BIN" agent \
        --api-server $API --token-file "$WORK/token" --ca-file "$WORK/ca.crt" \
        --resync-seconds $RESYNC --encapsulation never --data-dir "$dir/store" \
        --bin-dir "$dir/bin" --conf-dir "$dir/net.d" --log-file "$dir/cni.log" \
        --systemd-network-dir "$dir/systemd/network" --networkmanager-conf-dir "$dir/NetworkManager/conf.d" \
        "$@" 2>>"$dir/agent.log" &
    AGENT_PID[$name]=$!
    BACKGROUND_PIDS+=($!)
}
# stop_agent NODE_NAME: SIGTERM, and the exit status must be 0
stop_agent() {
    local rc=0
    if ! kill -TERM "${AGENT_PID[$1]}" 2>/dev/null; then
        wait "${AGENT_PID[$1]}" || rc=$?
        fail "$1's agent had already exited (status $rc): $(tail -3 "$WORK/$1/agent.log")"
        return 0
    fi
    wait "${AGENT_PID[$1]}" || rc=$?
    expect_eq "$1's agent exits on SIGTERM with status" "$rc" 0
}

# ready NODE_NAME: the agent's /readyz answers 200 (bash's /dev/tcp: no HTTP client needed)
ready() {
    ip netns exec "${NODE_NS[$1]}" timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/9465 &&
        printf "GET /readyz HTTP/1.0\r\n\r\n" >&3 && head -1 <&3' 2>/dev/null | grep -q ' 200 '
}
# check WHAT COMMAND...: ok when COMMAND succeeds now (no waiting), else fail
check() {
    local what=$1
    shift
    if "$@" >/dev/null 2>&1; then ok "$what"; else fail "$what"; fi
}

conflist() { echo "$WORK/$1/net.d/10-routed-cni.conflist"; }
has_conflist() { [ -s "$(conflist "$1")" ]; }

# ---- pods, as the kubelet makes them --------------------------------------------------------
# add_pod NS POD NODE_NAME: a pod namespace, CNI ADD by the binary and conflist the agent
# installed (CNI_ARGS naming the pod, as the kubelet passes them), and its Pod object with the
# addresses the ADD returned in status.podIPs, as the kubelet posts them.
add_pod() {
    make_pod "rcn-$1$2-$RUN_ID"
    cni_add "$@"
    write_pod "$1" "$2"
}
# cni_add NS POD NODE_NAME: the ADD alone, into the existing namespace rcn-NSPOD-RUN_ID
cni_add() {
    local ns=$1 pod=$2 node=$3 netns=rcn-$1$2-$RUN_ID conf=$WORK/$3/plugin.json out
    jq '.plugins[0] + {name: .name, cniVersion: .cniVersion}' "$(conflist "$node")" >"$conf"
    out=$(ip netns exec "${NODE_NS[$node]}" env CNI_COMMAND=ADD CNI_CONTAINERID="$ns-$pod" \
        CNI_NETNS=/run/netns/$netns CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni \
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=$ns;K8S_POD_NAME=$pod" \
        "$WORK/$node/bin/routed-cni" <"$conf") || die "ADD $ns/$pod on $node: $out"
    POD_NODE[$ns/$pod]=$node
    POD_IP4[$ns/$pod]=$(jq -r '[.ips[].address | select(contains(".")) | split("/")[0]][0] // empty' <<<"$out")
    POD_IP6[$ns/$pod]=$(jq -r '[.ips[].address | select(contains(":")) | split("/")[0]][0] // empty' <<<"$out")
    POD_VETH[$ns/$pod]=$(jq -r '[.interfaces[] | select(.sandbox == null) | .name][0] // empty' <<<"$out")
    [ -n "${POD_IP4[$ns/$pod]}" ] && [ -n "${POD_IP6[$ns/$pod]}" ] || die "ADD $ns/$pod: no IPv4 and IPv6 address in $out"
}

# write_pod NS POD [JQ_FILTER]: the Pod object (one container per port and protocol, as the
# upstream model has), edited by JQ_FILTER (e.g. a label), written atomically
write_pod() {
    local ns=$1 pod=$2 f=$PODS/$1-$2.json
    jq -n --arg ns "$ns" --arg pod "$pod" --arg node "${POD_NODE[$ns/$pod]}" \
        --arg ip4 "${POD_IP4[$ns/$pod]}" --arg ip6 "${POD_IP6[$ns/$pod]}" '
        {apiVersion: "v1", kind: "Pod",
         metadata: {name: $pod, namespace: $ns, labels: {pod: $pod}},
         spec: {nodeName: $node, containers: [
            (80, 81) as $port | ("TCP", "UDP", "SCTP") as $proto |
            ("serve-\($port)-\($proto | ascii_downcase)") as $name |
            {name: "cont-\($port)-\($proto | ascii_downcase)", image: "registry.k8s.io/e2e-test-images/agnhost:2.53",
             ports: [{name: $name, containerPort: $port, protocol: $proto}]}]},
         status: {phase: "Running", podIP: $ip4, podIPs: [{ip: $ip4}, {ip: $ip6}]}}' |
        jq "${3:-.}" >"$PODS/.$ns-$pod.tmp"
    mv "$PODS/.$ns-$pod.tmp" "$f"
}

# write_namespace NS [JQ_FILTER]
write_namespace() {
    jq -n --arg ns "$1" '{apiVersion: "v1", kind: "Namespace",
        metadata: {name: $ns, labels: {"kubernetes.io/metadata.name": $ns, ns: $ns}},
        status: {phase: "Active"}}' | jq "${2:-.}" >"$NAMESPACES/.$1.tmp"
    mv "$NAMESPACES/.$1.tmp" "$NAMESPACES/$1.json"
}

# in_pod_ifs NODE_NAME VETH: the agent has programmed the pod (its host veth is in pod-ifs)
in_pod_ifs() {
    ip netns exec "${NODE_NS[$1]}" nft -j list set inet routed-cni pod-ifs 2>/dev/null |
        jq -e --arg v "$2" '[.nftables[] | select(.set) | .set.elem // [] | .[]] | index($v) != null' >/dev/null
}
# (nft's whole output first: grep -q quitting early would fail the pipeline under pipefail)
has_table() { grep -qx 'table inet routed-cni' <<<"$(ip netns exec "${NODE_NS[$1]}" nft list tables)"; }
no_table() { ! has_table "$1"; }

# ---- policies and probes --------------------------------------------------------------------
APPLIED_MARK=0
applied_count() { cat "$WORK"/node-a/agent.log "$WORK"/node-b/agent.log | grep -c 'policy applied' || true; }
# netpol NAME NS SPEC_JSON: a NetworkPolicy object written as kubectl apply would
netpol() {
    jq -n --arg name "$1" --arg ns "$2" --argjson spec "$3" '{apiVersion: "networking.k8s.io/v1",
        kind: "NetworkPolicy", metadata: {name: $name, namespace: $ns}, spec: $spec}' >"$NETPOLS/.$2-$1.tmp" ||
        die "policy $2/$1: bad spec $3"
    mv "$NETPOLS/.$2-$1.tmp" "$NETPOLS/$2-$1.json"
}
clear_policies() { rm -f "$NETPOLS"/*.json; }
# change: call before editing objects; settle: after. settle has the stand-in poll at once and
# waits (up to 5 s, quietly) for an agent to log "policy applied" after the change; the probes'
# own retries (10 s) cover the agent that applies later.
change() { APPLIED_MARK=$(applied_count); }
settle() {
    local end=$(($(now_ms) + 5000))
    kill -HUP "$SERVER_PID"
    until (($(applied_count) > APPLIED_MARK)); do
        if (($(now_ms) > end)); then
            log "note: no agent logged 'policy applied' within 5 s of the change"
            return 0
        fi
        sleep 0.1
    done
}

# matrix WHAT PROTO/PORT[/6] [RULE...]: probe all 72 pairs, compare with everything allowed
# edited by RULEs ("FROM TO ." or "FROM TO X", shell patterns on ns/pod, applied in order).
matrix() {
    local what=$1 spec=$2 proto port fam=4 out rc=0 args=()
    shift 2
    IFS=/ read -r proto port fam <<<"$spec"
    fam=${fam:-4}
    if [ "$proto" == sctp ] && [ -z "$SCTP" ]; then
        log "skip: $what ($spec): the kernel has no SCTP"
        return 0
    fi
    for r in "$@"; do args+=(--expect "$r"); done
    out=$($PY "$PROBE" probe --pods "$WORK/pods.json" --proto "$proto" --port "$port" --family "$fam" \
        --deadline "$DEADLINE" "${args[@]}") || rc=$?
    if [ $rc -eq 0 ]; then
        ok "$what: $out"
        return 0
    fi
    fail "$what: ${out%%$'\n'*}"
    tail -n +2 <<<"$out"
    log "policies: $(cat "$NETPOLS"/*.json 2>/dev/null | jq -c '{name: "\(.metadata.namespace)/\(.metadata.name)"} + .spec' | tr '\n' ' ')"
    if [ -z "$DUMPED" ]; then # the first failure's tables, for a bug report
        DUMPED=yes
        for n in node-a node-b; do
            log "---- table inet routed-cni on $n"
            ip netns exec "${NODE_NS[$n]}" nft list table inet routed-cni 2>&1 | sed 's/^/    /' || true
        done
    fi
}

# ---- the world --------------------------------------------------------------------------------
"$BIN" agent --help | grep -q -- '--network-policy' || die "this routed-cni agent has no --network-policy flag"
make_cluster
ip -n "$NODE_A" addr add fd00:64::1/64 dev uplink nodad
ip -n "$NODE_B" addr add fd00:64::2/64 dev uplink nodad
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=e2e-kubernetes-ca -keyout "$WORK/ca.key" -out "$WORK/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=kube-apiserver \
    -keyout "$WORK/server.key" -out "$WORK/server.csr" 2>/dev/null
printf 'subjectAltName=IP:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' $ROUTER_IP >"$WORK/san.ext"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" -CAcreateserial \
    -days 1 -extfile "$WORK/san.ext" -out "$WORK/server.crt" 2>/dev/null
head -c 24 /dev/urandom | base64 >"$WORK/token"
cp "$FIXTURES/node-a.json" "$FIXTURES/node-b.json" "$NODES/"
for ns in x y z; do write_namespace $ns; done
start_server
ok "stand-in API server on $API (Nodes, Pods, Namespaces, NetworkPolicies)"
start_agent node-a
start_agent node-b
wait_for 15 "node-a's agent installs its conflist" has_conflist node-a
wait_for 15 "node-b's agent installs its conflist" has_conflist node-b
wait_for 15 "node A's agent is ready" ready node-a
wait_for 15 "node B's agent is ready" ready node-b
jq -e --arg d "$WORK/node-a/store" '.plugins[0].ipam.dataDir == $d' "$(conflist node-a)" >/dev/null &&
    ok "the installed conflist's ipam.dataDir is the agent's --data-dir" ||
    fail "node-a's conflist ipam.dataDir: $(jq -c '.plugins[0].ipam.dataDir' "$(conflist node-a)")"

# ---- nine pods, their servers ----------------------------------------------------------------
SCTP=
$PY "$PROBE" sctp && SCTP=yes
[ -n "$SCTP" ] || log "note: SCTP sockets cannot be opened here (no sctp module): SCTP probes are skipped"
ALL=()
for ns in x y z; do
    for pod in a b c; do
        node="node-a"
        [ $pod == b ] && node="node-b"
        add_pod $ns $pod $node
        ALL+=("$ns/$pod")
    done
done
for p in "${ALL[@]}"; do
    jq -n --arg p "$p" --arg netns "rcn-${p%/*}${p#*/}-$RUN_ID" --arg ip4 "${POD_IP4[$p]}" --arg ip6 "${POD_IP6[$p]}" \
        '{($p): {netns: $netns, ip4: $ip4, ip6: $ip6}}'
done | jq -s add >"$WORK/pods.json"
log "pods: $(jq -r 'to_entries | map("\(.key)=\(.value.ip4)") | join(" ")' "$WORK/pods.json")"
kill -HUP "$SERVER_PID"
# shellcheck disable=SC2046 # one netns name per pod
ip netns exec "$UNDERLAY" $PY "$PROBE" serve --ready "$WORK/servers.ready" $(jq -r '.[].netns' "$WORK/pods.json") \
    2>>"$WORK/servers.log" &
BACKGROUND_PIDS+=($!)
wait_for 10 "servers on TCP/UDP 80 and 81 in all nine pods" test -s "$WORK/servers.ready"
for p in "${ALL[@]}"; do
    wait_for 10 "$p programmed on ${POD_NODE[$p]} (${POD_VETH[$p]} in set pod-ifs)" in_pod_ifs "${POD_NODE[$p]}" "${POD_VETH[$p]}"
done

# ---- cases ----------------------------------------------------------------------------------
# Selectors and peers used below, as JSON.
A='{"matchLabels":{"pod":"a"}}'
NS_Y='{"namespaceSelector":{"matchLabels":{"ns":"y"}}}'
NOT_X='{"matchExpressions":[{"key":"ns","operator":"NotIn","values":["x"]}]}'
POD_B='{"matchLabels":{"pod":"b"}}'
# x/a isolated for ingress, allowing the ingress rules RULES (a JSON list)
ingress_a() { echo "{\"podSelector\":$A,\"policyTypes\":[\"Ingress\"],\"ingress\":$1}"; }
# x/a isolated for egress, allowing the egress rules RULES
egress_a() { echo "{\"podSelector\":$A,\"policyTypes\":[\"Egress\"],\"egress\":$1}"; }
# policies [NAME NS SPEC]...: every policy replaced by these, in one change
policies() {
    change
    clear_policies
    while (($# >= 3)); do
        netpol "$1" "$2" "$3"
        shift 3
    done
    settle
}

matrix "no policy" tcp/80
matrix "no policy" udp/81
matrix "no policy, IPv6" tcp/80/6
matrix "no policy" sctp/80

policies deny-ingress x '{"podSelector":{},"policyTypes":["Ingress"]}'
matrix "default-deny-ingress in x" tcp/80 '* x/* X'
matrix "default-deny-ingress in x, IPv6" tcp/80/6 '* x/* X'
matrix "default-deny-ingress in x, UDP" udp/80 '* x/* X'
matrix "default-deny-ingress in x, SCTP" sctp/80 '* x/* X'

policies deny-all x '{"podSelector":{},"policyTypes":["Ingress","Egress"]}'
matrix "default-deny-all in x" tcp/80 '* x/* X' 'x/* * X'
matrix "default-deny-all in x, UDP over IPv6" udp/81/6 '* x/* X' 'x/* * X'

policies allow-b x "$(ingress_a "[{\"from\":[{\"podSelector\":$POD_B}]}]")"
matrix "x/a from pod=b (podSelector)" tcp/80 '* x/a X' 'x/b x/a .'
policies allow-b x "$(ingress_a '[{"from":[{"podSelector":{"matchExpressions":[{"key":"pod","operator":"In","values":["b"]}]}}]}]')"
matrix "x/a from pod In [b] (matchExpressions)" tcp/80 '* x/a X' 'x/b x/a .'

policies allow-y x "$(ingress_a "[{\"from\":[$NS_Y]}]")"
matrix "x/a from namespace y (namespaceSelector)" tcp/80 '* x/a X' 'y/* x/a .'
matrix "x/a from namespace y, IPv6" tcp/80/6 '* x/a X' 'y/* x/a .'

policies deny-all x '{"podSelector":{},"policyTypes":["Ingress"]}' allow-to-a x "$(ingress_a '[{"from":[{"podSelector":{},"namespaceSelector":{}}]}]')"
matrix "deny-all in x plus allow-all into x/a" tcp/80 '* x/* X' '* x/a .'

policies allow-all-ns x "$(ingress_a '[{"from":[{"namespaceSelector":{}}]}]')"
matrix "x/a from namespaceSelector {} (every namespace)" tcp/80

policies same-ns x '{"podSelector":{},"policyTypes":["Ingress"],"ingress":[{"from":[{"podSelector":{}}]}]}'
matrix "x from podSelector {} only (its own namespace)" tcp/80 '* x/* X' 'x/* x/* .'

policies and x "$(ingress_a "[{\"from\":[{\"namespaceSelector\":$NOT_X,\"podSelector\":$POD_B}]}]")"
matrix "x/a from one peer: namespace NotIn [x] AND pod=b" tcp/80 '* x/a X' 'y/b x/a .' 'z/b x/a .'

policies or x "$(ingress_a "[{\"from\":[{\"namespaceSelector\":$NOT_X},{\"podSelector\":$POD_B}]}]")"
matrix "x/a from two peers: namespace NotIn [x] OR pod=b" tcp/80 '* x/a X' 'y/* x/a .' 'z/* x/a .' 'x/b x/a .'

policies port-81 x "$(ingress_a "[{\"from\":[$NS_Y],\"ports\":[{\"protocol\":\"TCP\",\"port\":81}]}]")"
matrix "x/a from y on TCP 81 only: 81" tcp/81 '* x/a X' 'y/* x/a .'
matrix "x/a from y on TCP 81 only: 80 closed" tcp/80 '* x/a X'
matrix "x/a from y on TCP 81 only: UDP 81 closed" udp/81 '* x/a X'
change
netpol port-80 x "$(ingress_a "[{\"from\":[$NS_Y],\"ports\":[{\"protocol\":\"TCP\",\"port\":80}]}]")"
settle
matrix "stacked: a second policy opens TCP 80 from y" tcp/80 '* x/a X' 'y/* x/a .'
matrix "stacked: 81 from y still open" tcp/81 '* x/a X' 'y/* x/a .'

policies named x '{"podSelector":{},"policyTypes":["Ingress"],"ingress":[{"ports":[{"port":"serve-81-tcp"}]}]}'
matrix "named port serve-81-tcp into x: 81" tcp/81
matrix "named port serve-81-tcp into x: 80 closed" tcp/80 '* x/* X'
matrix "named port serve-81-tcp into x: UDP 81 closed" udp/81 '* x/* X'

policies named-from-y x "$(ingress_a "[{\"from\":[$NS_Y],\"ports\":[{\"port\":\"serve-80-tcp\"}]}]")"
matrix "x/a from y on named port serve-80-tcp: 80" tcp/80 '* x/a X' 'y/* x/a .'
matrix "x/a from y on named port serve-80-tcp: 81 closed" tcp/81 '* x/a X'

policies end-port x "$(ingress_a "[{\"from\":[$NS_Y],\"ports\":[{\"protocol\":\"TCP\",\"port\":75,\"endPort\":80}]}]")"
matrix "x/a from y on TCP 75-80 (endPort): 80" tcp/80 '* x/a X' 'y/* x/a .'
matrix "x/a from y on TCP 75-80 (endPort): 81 closed" tcp/81 '* x/a X'

policies deny-egress x "$(egress_a '[]')"
matrix "egress of x/a denied" tcp/80 'x/a * X'
matrix "egress of x/a denied, UDP" udp/81 'x/a * X'

policies egress-80 x "$(egress_a '[{"ports":[{"protocol":"TCP","port":80}]}]')"
matrix "x/a egress only to TCP 80: 80" tcp/80
matrix "x/a egress only to TCP 80: 81 closed" tcp/81 'x/a * X'
matrix "x/a egress only to TCP 80: UDP 80 closed" udp/80 'x/a * X'

policies egress-named x '{"podSelector":{},"policyTypes":["Egress"],"egress":[{"ports":[{"port":"serve-80-tcp"}]}]}'
matrix "x egress only to named port serve-80-tcp: 80" tcp/80
matrix "x egress only to named port serve-80-tcp: 81 closed" tcp/81 'x/* * X'

policies both x "{\"podSelector\":$A,\"policyTypes\":[\"Ingress\",\"Egress\"],\"ingress\":[{\"from\":[{\"podSelector\":$POD_B}]}],\"egress\":[{\"ports\":[{\"protocol\":\"TCP\",\"port\":80}]}]}"
matrix "x/a: ingress from pod=b, egress only to TCP 80 (one policy): 80" tcp/80 '* x/a X' 'x/b x/a .'
matrix "x/a: ingress from pod=b, egress only to TCP 80 (one policy): 81" tcp/81 '* x/a X' 'x/b x/a .' 'x/a * X'

# As stored by a client that skipped the API server's defaulting: Ingress always, Egress
# because there are egress rules (the agent must infer both).
policies no-types x "{\"podSelector\":$A,\"egress\":[{\"ports\":[{\"protocol\":\"TCP\",\"port\":80}]}]}"
matrix "x/a, policyTypes absent with egress rules: ingress isolated, egress to 80" tcp/80 '* x/a X'
matrix "x/a, policyTypes absent with egress rules: 81" tcp/81 '* x/a X' 'x/a * X'

policies deny-egress x "$(egress_a '[]')" allow-all y '{"podSelector":{},"policyTypes":["Ingress"],"ingress":[{}]}'
matrix "denied at the client (x/a egress) although y allows all ingress" tcp/80 'x/a * X'

policies to-yb x "$(egress_a "[{\"to\":[{\"ipBlock\":{\"cidr\":\"${POD_IP4[y/b]}/32\"}},{\"ipBlock\":{\"cidr\":\"${POD_IP6[y/b]}/128\"}}]}]")"
matrix "x/a egress only to ipBlock y/b/32" tcp/80 'x/a * X' 'x/a y/b .'
matrix "x/a egress only to ipBlock y/b/128, IPv6" tcp/80/6 'x/a * X' 'x/a y/b .'

EXCEPT="{\"to\":[{\"ipBlock\":{\"cidr\":\"$CLUSTER_CIDR\",\"except\":[\"${POD_IP4[x/b]}/32\"]}}]}"
policies except x "$(egress_a "[$EXCEPT]")"
matrix "x/a egress to $CLUSTER_CIDR except x/b" tcp/80 'x/a x/b X'
matrix "x/a egress to $CLUSTER_CIDR except x/b: no IPv6 peer" tcp/80/6 'x/a * X'
change
netpol xb x "$(egress_a "[{\"to\":[{\"ipBlock\":{\"cidr\":\"${POD_IP4[x/b]}/32\"}}]}]")"
settle
matrix "an address excepted by one peer and allowed by another policy is allowed" tcp/80

policies tcp-only x "$(ingress_a '[{"ports":[{"protocol":"TCP"}]}]')"
matrix "x/a ingress on protocol TCP (any port): 81" tcp/81
matrix "x/a ingress on protocol TCP (any port): UDP closed" udp/80 '* x/a X'

policies udp-only x "$(ingress_a '[{"ports":[{"protocol":"UDP","port":81}]}]')"
matrix "x/a ingress on UDP 81 only: UDP 81" udp/81
matrix "x/a ingress on UDP 81 only: TCP 81 closed" tcp/81 '* x/a X'

policies sctp-only x "$(ingress_a '[{"ports":[{"protocol":"SCTP","port":80}]}]')"
matrix "x/a ingress on SCTP 80 only: TCP 80 closed (SCTP is not TCP)" tcp/80 '* x/a X'
matrix "x/a ingress on SCTP 80 only: UDP 80 closed" udp/80 '* x/a X'
matrix "x/a ingress on SCTP 80 only: SCTP 80" sctp/80

policies updated-pod x "$(ingress_a '[{"from":[{"podSelector":{"matchLabels":{"pod":"b","pod2":"updated"}}}]}]')"
matrix "x/a from pod=b,pod2=updated: nobody has it yet" tcp/80 '* x/a X'
change
write_pod x b '.metadata.labels.pod2 = "updated"'
settle
matrix "x/b (node B) labelled pod2=updated: allowed into x/a (node A)" tcp/80 '* x/a X' 'x/b x/a .'
change
write_pod x b
settle

policies updated-ns x "$(ingress_a '[{"from":[{"namespaceSelector":{"matchLabels":{"ns2":"updated"}}}]}]')"
matrix "x/a from namespaces ns2=updated: none yet" tcp/80 '* x/a X'
change
write_namespace y '.metadata.labels.ns2 = "updated"'
settle
matrix "namespace y labelled ns2=updated: y allowed into x/a" tcp/80 '* x/a X' 'y/* x/a .'
change
write_namespace y
settle

policies isolate x '{"podSelector":{"matchLabels":{"target":"isolated"}},"policyTypes":["Ingress"]}'
matrix "policy selecting target=isolated: nobody has it yet" tcp/80
change
write_pod x a '.metadata.labels.target = "isolated"'
settle
matrix "x/a labelled target=isolated: isolated" tcp/80 '* x/a X'
change
write_pod x a
settle

policies allow-all x '{"podSelector":{},"policyTypes":["Ingress"],"ingress":[{}]}'
matrix "allow-all ingress in x" tcp/81
change
netpol allow-all x '{"podSelector":{},"policyTypes":["Ingress"],"ingress":[]}'
settle
matrix "the same policy updated to deny-all" tcp/81 '* x/* X'
policies
matrix "policy deleted: everything allowed again" tcp/81
matrix "policy deleted: everything allowed again, IPv6" tcp/81/6

# ---- no window for a new pod ------------------------------------------------------------------
# ADD of a pod whose namespace has policies (listed in <dataDir>/policy-namespaces, which the
# agent keeps) puts its host veth in set `pending` of table inet routed-cni before allocating its
# address; the agent lifts the hold in the transaction that installs the pod's rules (puts the
# veth in `pod-ifs`), on the pod's host route appearing. New pods come on node A as the kubelet
# makes them: Pod object first (labels, no address), then the ADD, then status.podIPs. A probe
# loop (lib/netpol-probe.py loop: a TCP connect every 10 ms from each client, each waiting
# 0.5 s) targets the pod's address-to-be from before the ADD, and the pod's server listens on the
# wildcard address before its eth0 exists, so any packet that gets through connects. Where the
# veth is: sampled from the table as fast as nft answers; when the pod was programmed: the time
# of the agent's "policy applied" line for it (nft 1.0.6's `nft monitor` loses element events
# after a transaction re-adds the set, as every apply does).
NEW=(x/n1 x/n2 x/n3 z/n1 x/n4 z/n4 x/n5)
POOL_A=$WORK/node-a/store/${POD_CIDR_A/\//-}
APPLIED_BEFORE=0 PROG_MISSED='' ADD_START='' ADD_DONE='' AFTER_ADD='' PREDICTED='' HELD='' LEAKED='' LOOP='' LOOP_OUT=''
netns_of() { echo "rcn-${1%/*}${1#*/}-$RUN_ID"; }
now_s() { echo "${EPOCHREALTIME/,/.}"; }
# ms T0 T1: milliseconds from T0 to T1 (seconds, as $EPOCHREALTIME and the loop print them)
ms() { jq -n "(($2) - ($1)) * 1000 | round + 0"; }
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
# next_ip: the address node A's next ADD takes (ipam/store.rs: round robin after last_reserved)
next_ip() {
    local last n
    last=$(cat "$POOL_A/last_reserved") || return 1
    n=${last##*.}
    while n=$((n + 1)) && [ -e "$POOL_A/${last%.*}.$n" ]; do :; done
    echo "${last%.*}.$n"
}
# set_elems SET: the elements of node A's SET, one a line
set_elems() {
    ip netns exec "$NODE_A" nft -j list set inet routed-cni "$1" 2>/dev/null | jq -r '.nftables[] | select(.set) | .set.elem // [] | .[]'
}
# where_is VETH: which of node A's sets pending and pod-ifs hold VETH, from one listing of the
# table (nft reads it at one generation): "pending", "pod-ifs", "pending+pod-ifs" or "none"
where_is() {
    ip netns exec "$NODE_A" nft -j list table inet routed-cni 2>/dev/null | jq -r --arg v "$1" '
        [.nftables[] | select(.set) | .set | select(.name == "pending" or .name == "pod-ifs")
         | select((.elem // []) | index($v) != null) | .name] | sort | join("+") |
        if . == "" then "none" else . end' || echo "none"
}
# applied_since N: the time (seconds) of node A's agent's "policy applied" line number N+1, the
# first after N of them (empty when there is none)
applied_lines() { grep -c 'policy applied' "$WORK/node-a/agent.log" || true; }
applied_since() {
    local ts
    ts=$(grep 'policy applied' "$WORK/node-a/agent.log" | sed -n "$(($1 + 1))p" | cut -d' ' -f1)
    [ -z "$ts" ] || date -d "$ts" +%s.%N
}

# new_pod NS/POD CLIENT...: the probe loop from CLIENTs (NS/POD, the allowed ones as +NS/POD)
# against the address node A hands out next, then the ADD of NS/POD on node A; AFTER_ADD is
# where its veth is as the ADD returns, then status.podIPs is posted as the kubelet does.
new_pod() {
    local p=$1 args=() c
    shift
    for c in "$@"; do
        args+=(--client "${c#+}=$(netns_of "${c#+}")")
        [ "${c:0:1}" != + ] || args+=(--allowed "${c#+}")
    done
    PREDICTED=$(next_ip) || die "no last_reserved in $POOL_A"
    LOOP_OUT=$WORK/loop-${p/\//-}.json
    rm -f "$WORK/loop.ready"
    $PY "$PROBE" loop --target "$PREDICTED" --port 80 --stop "$WORK/loop.never" --ready "$WORK/loop.ready" \
        --max 20 "${args[@]}" >"$LOOP_OUT" 2>>"$WORK/loop.log" &
    LOOP=$!
    BACKGROUND_PIDS+=("$LOOP")
    until [ -e "$WORK/loop.ready" ]; do sleep 0.02; done
    sleep 0.2 # attempts in flight, some timed out, before the pod exists
    APPLIED_BEFORE=$(applied_lines)
    ADD_START=$(now_s)
    cni_add "${p%/*}" "${p#*/}" node-a
    ADD_DONE=$(now_s)
    AFTER_ADD=$(where_is "${POD_VETH[$p]}")
    write_pod "${p%/*}" "${p#*/}"
    kill -HUP "$SERVER_PID"
    [ "${POD_IP4[$p]}" == "$PREDICTED" ] ||
        fail "$p got ${POD_IP4[$p]}, not $PREDICTED: the probe loop aimed at the wrong address"
    log "$p: ADD took $(ms "$ADD_START" "$ADD_DONE") ms, ${POD_IP4[$p]} on ${POD_VETH[$p]}, right after it: $AFTER_ADD"
}
# watch_veth NS/POD SECONDS: samples where the pod's veth is until it is in pod-ifs or SECONDS
# have passed. HELD: seen in pending; LEAKED: seen in neither set before being programmed;
# PROG_MISSED: never seen in pod-ifs.
watch_veth() {
    local veth=${POD_VETH[$1]} end=$(($(now_ms) + $2 * 1000)) w=$AFTER_ADD
    HELD='' LEAKED='' PROG_MISSED=''
    while :; do
        case $w in
        pending) HELD=yes ;;
        none) LEAKED=yes ;;
        *pod-ifs) return 0 ;;
        esac
        if (($(now_ms) > end)); then
            PROG_MISSED=yes
            return 0
        fi
        w=$(where_is "$veth")
    done
}
# loop_done: waits for the probe loop (it stops a second after every allowed client connected)
loop_done() {
    wait "$LOOP" || fail "the probe loop failed: $(tail -3 "$WORK/loop.log")"
    jq -e .clients "$LOOP_OUT" >/dev/null || die "no result from the probe loop: $(cat "$LOOP_OUT")"
}
# loop_stat CLIENT FILTER: FILTER over the client's counts in the loop's result ($t0: ADD_DONE)
loop_stat() { jq -r --arg c "$1" --argjson t0 "$ADD_DONE" ".clients[\$c] | $2" "$LOOP_OUT"; }
counts() { loop_stat "$1" '"\(.attempts) attempts, \(.connected) connected, \(.refused) refused, failed: \(.failed | tostring)"'; }
# never_reached CLIENT WHAT: no connection and no RST from the pod, over the whole loop
never_reached() {
    if [ "$(loop_stat "$1" '.connected + .refused')" == 0 ]; then
        ok "$2: $1 never reached it ($(counts "$1"))"
    else
        fail "$2: $1 reached it ($(counts "$1"), first at $(loop_stat "$1" 'if .first then "\((.first - $t0) * 1000 | round) ms after ADD returned" else "?" end'))"
    fi
}
# first_ms CLIENT: ADD returned -> the client's first connection (ms), or empty
first_ms() { loop_stat "$1" 'if .first then (.first - $t0) * 1000 | round else empty end'; }

policies deny-ingress x '{"podSelector":{},"policyTypes":["Ingress"]}' \
    from-b x "{\"podSelector\":{},\"policyTypes\":[\"Ingress\"],\"ingress\":[{\"from\":[{\"podSelector\":$POD_B}]}]}"
wait_for 10 "node A's policy-namespaces lists x (and not z)" \
    bash -c '[ "$(cat "$1")" == x ]' _ "$WORK/node-a/store/policy-namespaces"
# The new pods' namespaces, their servers, and their Pod objects (as the API has them before
# the kubelet runs CNI: labels and node, no address yet)
for p in "${NEW[@]}"; do
    make_pod "$(netns_of "$p")"
    POD_NODE[$p]="node-a" POD_IP4[$p]="" POD_IP6[$p]=""
    write_pod "${p%/*}" "${p#*/}" '.status = {phase: "Pending"}'
done
kill -HUP "$SERVER_PID"
# shellcheck disable=SC2046 # one netns name per pod
ip netns exec "$UNDERLAY" $PY "$PROBE" serve --ready "$WORK/new-servers.ready" $(for p in "${NEW[@]}"; do netns_of "$p"; done) \
    2>>"$WORK/servers.log" &
BACKGROUND_PIDS+=($!)
wait_for 10 "servers listening in the new pods' namespaces before their ADD" test -s "$WORK/new-servers.ready"

# 1. x has policies: held back from the ADD until programmed; denied clients never get through.
PROGS=() FIRSTS=()
for p in x/n1 x/n2 x/n3; do
    new_pod $p +x/b y/a x/c y/b
    case $AFTER_ADD in
    pending) ok "$p: its veth is in pending as the ADD returns" ;;
    pod-ifs) ok "$p: its veth is in pod-ifs as the ADD returns (the agent already lifted the hold)" ;;
    *) fail "$p: its veth is in '$AFTER_ADD' as the ADD returns, not in pending (nor pod-ifs)" ;;
    esac
    watch_veth $p 10
    [ -z "$LEAKED" ] && ok "$p: its veth was in pending or pod-ifs at every look until programmed" ||
        fail "$p: its veth was in neither pending nor pod-ifs after the ADD (not held back)"
    loop_done
    for c in y/a x/c y/b; do never_reached $c "$p (x: deny-ingress, from pod=b only)"; done
    first=$(first_ms x/b)
    if [ -n "$first" ]; then
        ok "$p: the allowed client x/b connects, first $first ms after the ADD returned ($(counts x/b))"
        FIRSTS+=("$first")
    else
        fail "$p: the allowed client x/b never connected ($(counts x/b))"
    fi
    prog_at=$(applied_since "$APPLIED_BEFORE")
    if [ -n "$prog_at" ] && [ -z "$PROG_MISSED" ]; then
        PROGS+=("$(ms "$ADD_DONE" "$prog_at")")
        log "$p: programmed (agent's policy applied) $(ms "$ADD_START" "$prog_at") ms after the ADD started, ${PROGS[-1]} ms after it returned"
    else
        fail "$p: not programmed (in pod-ifs) within 10 s of its ADD"
    fi
done
((${#PROGS[@]} == 0)) || log "timing: ADD returned -> programmed: median $(median "${PROGS[@]}") ms (${PROGS[*]}; negative: before it returned)"
((${#FIRSTS[@]} == 0)) || log "timing: ADD returned -> first allowed connection: median $(median "${FIRSTS[@]}") ms (${FIRSTS[*]})"

# 2. z has no policy: never held back, reachable at once.
new_pod z/n1 +y/a +x/b
watch_veth z/n1 5
loop_done
[ -z "$HELD" ] && ok "z/n1 (no policy in z): its veth never in pending (right after the ADD: $AFTER_ADD)" ||
    fail "z/n1 (no policy in z): its veth was held in pending"
for c in y/a x/b; do
    first=$(first_ms $c)
    if [ -n "$first" ] && ((first <= 500)); then
        ok "z/n1: $c connects, first $first ms after the ADD returned ($(counts $c))"
    else
        fail "z/n1: $c connects ${first:-never} (ms after the ADD returned), not within 500 ms ($(counts $c))"
    fi
done

# 3. Node A's agent down while pods are added: the x pod stays held back (even from x/b) until
# the agent is back; the z pod is reachable at once.
stop_agent node-a
new_pod x/n4 +x/b y/a
[ "$AFTER_ADD" == pending ] && ok "agent down: x/n4's veth is in pending after its ADD" ||
    fail "agent down: x/n4's veth is in '$AFTER_ADD' after its ADD, not in pending"
X_LOOP=$LOOP X_OUT=$LOOP_OUT X_ADD_START=$ADD_START X_ADD_DONE=$ADD_DONE
# the x/n4 loop goes on through the z pod's ADD and the agent's restart
new_pod z/n4 +y/a +x/b
loop_done
[ "$AFTER_ADD" == none ] && ok "agent down: z/n4's veth is in neither set after its ADD" ||
    fail "agent down: z/n4's veth is in '$AFTER_ADD' after its ADD"
# Not held: reachable before the held x/n4 (still held at the check below, >= 2 s). Usually
# before its ADD returns; one CI run of many saw the first connection only ~960 ms after it
# (the cause not found: a lost first ARP would look like that, its retry comes after 1 s), so
# past 500 ms the node's neighbour and conntrack entries for the pod are logged, and past
# 1500 ms it fails.
for c in y/a x/b; do
    first=$(first_ms $c)
    if [ -n "$first" ] && ((first <= 500)); then
        ok "agent down: z/n4 reachable from $c, first $first ms after its ADD returned"
    elif [ -n "$first" ] && ((first <= 1500)); then
        ok "agent down: z/n4 reachable from $c, first $first ms after its ADD returned (slow: see the entries below)"
        log "node A neighbours on ${POD_VETH[z/n4]}: $(ip -n "$NODE_A" neigh show dev "${POD_VETH[z/n4]}" | xargs)"
        log "node A conntrack for ${POD_IP4[z/n4]}: $(ip netns exec "$NODE_A" grep -F "dst=${POD_IP4[z/n4]} " /proc/net/nf_conntrack 2>/dev/null | head -5 | xargs)"
    else
        fail "agent down: z/n4 reachable from $c ${first:-never} (ms after its ADD), not within 1500 ms ($(counts $c))"
    fi
done
w=$(where_is "${POD_VETH[x/n4]}")
[ "$w" == pending ] && ok "agent down: x/n4 still held back $(ms "$X_ADD_DONE" "$(now_s)") ms after its ADD" ||
    fail "agent down: x/n4's veth is in '$w', not pending"
LOOP=$X_LOOP LOOP_OUT=$X_OUT ADD_START=$X_ADD_START
APPLIED_BEFORE=$(applied_lines)
RESTART=$(now_s)
start_agent node-a
ADD_DONE=$RESTART AFTER_ADD=$w
watch_veth x/n4 15
loop_done
[ -z "$LEAKED" ] || fail "agent back: x/n4's veth was in neither pending nor pod-ifs before being programmed"
prog_at=$(applied_since "$APPLIED_BEFORE")
if [ -n "$prog_at" ] && [ -z "$PROG_MISSED" ]; then
    ok "agent back: x/n4 programmed $(ms "$RESTART" "$prog_at") ms after the agent started (its first policy applied)"
else
    fail "agent back: x/n4 not programmed (pod-ifs) within 15 s of the agent's start"
fi
never_reached y/a "x/n4 (held while the agent was down, then deny-ingress)"
first=$(first_ms x/b)
if [ -z "$first" ]; then
    fail "agent back: x/b never connected to x/n4 ($(counts x/b))"
elif ((first < 0)); then
    fail "x/n4: x/b connected while node A's agent was down, $((-first)) ms before its restart"
else
    ok "agent back: x/b connects to x/n4, first $first ms after the agent started, never while it was down ($(counts x/b))"
fi
wait_for 15 "node A's agent is ready again" ready node-a

# 4. The hold comes before the address: an ADD whose allocation fails (node A's IPv4 pool
# directory made group-writable: the store refuses it, code 103) has held its veth back all the
# same, and took no address.
before=$(set_elems pending | sort)
records=$(find "$POOL_A" -maxdepth 1 -type f | wc -l)
chmod g+w "$POOL_A"
conf=$WORK/node-a/plugin.json
if out=$(ip netns exec "$NODE_A" env CNI_COMMAND=ADD CNI_CONTAINERID=x-n5 CNI_NETNS=/run/netns/"$(netns_of x/n5)" \
    CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=n5" \
    "$WORK/node-a/bin/routed-cni" <"$conf"); then
    fail "ADD with a group-writable pool directory succeeded: $out"
fi
chmod g-w "$POOL_A"
held=$(comm -13 <(echo "$before") <(set_elems pending | sort) | tr '\n' ' ')
expect_eq "ADD refused by the store: its error code" "$(jq -r .code <<<"$out")" 103
[ -n "$held" ] && ok "ADD refused by the store had already held its veth back: $held" ||
    fail "ADD refused by the store held nothing back (pending: $(set_elems pending | tr '\n' ' ')): the hold comes after the allocation"
expect_eq "ADD refused by the store: files in the pool" "$(find "$POOL_A" -maxdepth 1 -type f | wc -l)" "$records"
# The runtime's DEL after a failed ADD lifts the hold: nothing is left in the set for good.
out=$(ip netns exec "$NODE_A" env CNI_COMMAND=DEL CNI_CONTAINERID=x-n5 CNI_NETNS=/run/netns/"$(netns_of x/n5)" \
    CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=n5" \
    "$WORK/node-a/bin/routed-cni" <"$conf") || fail "DEL after the refused ADD: $out"
left=$(comm -12 <(echo "$held" | tr ' ' '\n' | grep . | sort) <(set_elems pending | sort) | tr '\n' ' ')
[ -z "$left" ] && ok "DEL after the refused ADD lifted its hold" || fail "DEL left $left in pending"

# ---- --network-policy=false -----------------------------------------------------------------
policies deny-all x '{"podSelector":{},"policyTypes":["Ingress","Egress"]}'
matrix "default-deny-all in x before the restart" tcp/80 '* x/* X' 'x/* * X'
check "table inet routed-cni on node A before the restart" has_table node-a
check "table inet routed-cni on node B before the restart" has_table node-b
stop_agent node-a
stop_agent node-b
start_agent node-a --network-policy false
start_agent node-b --network-policy false
wait_for 15 "node A's agent with --network-policy=false is ready" ready node-a
wait_for 15 "node B's agent with --network-policy=false is ready" ready node-b
wait_for 10 "--network-policy=false: no table inet routed-cni on node A" no_table node-a
wait_for 10 "--network-policy=false: no table inet routed-cni on node B" no_table node-b
matrix "--network-policy=false under deny-all in x: everything allowed" tcp/80
matrix "--network-policy=false under deny-all in x: everything allowed, UDP over IPv6" udp/80/6

if [ "$FAILURES" -ne 0 ]; then
    for n in node-a node-b; do
        log "---- $n agent log (tail)"
        tail -30 "$WORK/$n/agent.log" || true
    done
fi
finish
