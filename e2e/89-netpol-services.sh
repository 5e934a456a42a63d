#!/usr/bin/env bash
# NetworkPolicy and Services (issue 17): why a policy never needs to mention a Service IP.
# Two nodes (lib/cluster.sh, routes made by the agents), `routed-cni agent` on each with
# NetworkPolicy enforcement on (the default) against the stand-in API server, and kube-proxy's
# iptables mode emulated rule for rule on both nodes (as e2e/90 does). kube-proxy rewrites a
# ClusterIP or NodePort to a backend pod in PREROUTING, before the forward hook where the
# policy table looks, so a policy is always checked against the backend pod.
# Pods: srv/web-a (node A) and srv/web-b (node B) serve TCP 8080 (container port "http") and
# 9090, answering "<name> <peer address>"; clients good/client-a, bad/client-a (node A) and
# good/client-b, bad/client-b (node B). Service web: ClusterIP 10.96.0.10:80 and NodePort
# 30080 -> both backends' port 8080. Policy srv/allow-good: app=web isolated for ingress,
# allowed from namespace good on the named port http. Checks:
#   1. no policy: everyone reaches the Service; then, the policy written, a client in good
#      reaches the Service (both backends answer, over several tries, each seeing the client's
#      own address) and the backend pods on 8080, not on 9090; a client in bad is denied via
#      the ClusterIP exactly as via either backend's pod IP;
#   2. NodePort from outside: denied (the source is the outside, or the entry node after
#      kube-proxy's masquerade, never namespace good); an ipBlock for the outside opens the
#      backend on the entry node only, one for the nodes' addresses the other node's too;
#   3. an egress ipBlock naming the ClusterIP has no effect (the client is denied: the forward
#      hook sees the backend's address after DNAT); one naming node A's pod CIDR lets the
#      Service answer from web-a only; the cluster CIDR from both;
#   4. both agents SIGTERMed with the policy in force: the table stays as it was, bad stays
#      denied (a probe loop runs through the whole stop/restart) and good stays allowed; the
#      policy changed while they are down (allow-good replaced by deny-all) does nothing until
#      they start again, then takes effect within a few seconds (the agents' first list);
#   5. kube-proxy's IPVS mode is not emulated: it is unsupported (logged).
# Each time a policy file is written, probe loops (lib/svc-probe.py, one SYN every 0.15 s) from
# a client to each backend pod time the verdict's flip on each node; the medians are logged.
# Nothing outside the namespaces this script creates is touched.
set -euo pipefail
# shellcheck disable=SC2034 # read by lib/cluster.sh: the agents make the routes between nodes
CLUSTER_ROUTES=none
. "$(dirname "$0")/lib/cluster.sh"
[ -x "$BIN" ] || die "no routed-cni binary at $BIN (build it, or set ROUTED_CNI_BIN)"
for tool in openssl nft jq socat; do
    command -v $tool >/dev/null || die "$tool is needed (see the packages in scripts/test.sh)"
done
PY=/usr/bin/python3 # not pyenv's python3 from PATH: the helpers need only the stdlib
[ -x $PY ] || die "$PY is needed (apt-get install python3)"
"$BIN" agent --help | grep -q -- '--network-policy' || die "this routed-cni agent has no --network-policy flag"
SVCPROBE=$ROOT/e2e/lib/svc-probe.py
RESYNC=5
CLUSTER_CIDR6=fd00:10:244::/48
API=https://$ROUTER_IP:6443
FIXTURES=$ROOT/e2e/lib/fixtures
SVC_IP=10.96.0.10
NODE_PORT=30080
NODES=$WORK/nodes PODS=$WORK/pods NAMESPACES=$WORK/namespaces NETPOLS=$WORK/networkpolicies
mkdir -p "$NODES" "$PODS" "$NAMESPACES" "$NETPOLS"
declare -A AGENT_PID NODE_NS POD_NODE POD_IP4 POD_IP6 POD_LABEL
NODE_NS=([node-a]=$NODE_A [node-b]=$NODE_B)
SERVER_PID=
FLIPS=$WORK/flips # one line per timed flip: WANT NODE MS

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

# check WHAT COMMAND...: ok when COMMAND succeeds now (no waiting), else fail
check() {
    local what=$1
    shift
    if "$@" >/dev/null 2>&1; then ok "$what"; else fail "$what"; fi
}

# ---- the stand-in API server and the agents (as e2e/88-netpol.sh runs them) -----------------
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

# start_agent NODE_NAME: the agent as the DaemonSet runs it, with the node's own CNI dirs and
# IPAM store under $WORK/NODE_NAME
start_agent() {
    local name=$1 dir=$WORK/$1
    mkdir -p "$dir"
    ip netns exec "${NODE_NS[$name]}" env NODE_NAME="$name" ROUTED_CNI_CLUSTER_CIDR="$CLUSTER_CIDR,$CLUSTER_CIDR6" "$BIN" agent \
        --api-server $API --token-file "$WORK/token" --ca-file "$WORK/ca.crt" \
        --resync-seconds $RESYNC --encapsulation never --data-dir "$dir/store" \
        --bin-dir "$dir/bin" --conf-dir "$dir/net.d" --log-file "$dir/cni.log" \
        --systemd-network-dir "$dir/systemd/network" --networkmanager-conf-dir "$dir/NetworkManager/conf.d" \
        2>>"$dir/agent.log" &
    AGENT_PID[$name]=$!
    BACKGROUND_PIDS+=($!)
}
start_agents() { start_agent node-a && start_agent node-b; }

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
conflist() { echo "$WORK/$1/net.d/10-routed-cni.conflist"; }
has_conflist() { [ -s "$(conflist "$1")" ]; }
# (nft's whole output first: grep -q quitting early would fail the pipeline under pipefail)
has_table() { grep -qx 'table inet routed-cni' <<<"$(ip netns exec "${NODE_NS[$1]}" nft list tables)"; }
# table_rules NODE_NAME: the table without counters (nft -s), to compare before and after
table_rules() { ip netns exec "${NODE_NS[$1]}" nft -s list table inet routed-cni 2>&1; }

# ---- pods and API objects ---------------------------------------------------------------------
netns_of() { echo "rcn-${1/\//-}-$RUN_ID"; }

# add_pod NS/POD NODE_NAME APP: a pod namespace, CNI ADD by the binary and conflist the agent
# installed (CNI_ARGS naming the pod, as the kubelet passes them), and its Pod object with the
# addresses the ADD returned in status.podIPs, as the kubelet posts them.
add_pod() {
    local p=$1 node=$2 netns conf=$WORK/$2/plugin.json out
    netns=$(netns_of "$p")
    make_pod "$netns"
    jq '.plugins[0] + {name: .name, cniVersion: .cniVersion}' "$(conflist "$node")" >"$conf"
    out=$(ip netns exec "${NODE_NS[$node]}" env CNI_COMMAND=ADD CNI_CONTAINERID="${p/\//-}" \
        CNI_NETNS=/run/netns/"$netns" CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni \
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=${p%/*};K8S_POD_NAME=${p#*/}" \
        "$WORK/$node/bin/routed-cni" <"$conf") || die "ADD $p on $node: $out"
    POD_NODE[$p]=$node
    POD_LABEL[$p]=$3
    POD_IP4[$p]=$(jq -r '[.ips[].address | select(contains(".")) | split("/")[0]][0] // empty' <<<"$out")
    POD_IP6[$p]=$(jq -r '[.ips[].address | select(contains(":")) | split("/")[0]][0] // empty' <<<"$out")
    [ -n "${POD_IP4[$p]}" ] || die "ADD $p: no IPv4 address in $out"
    write_pod "$p"
}

# write_pod NS/POD: the Pod object; its container names port 8080 "http" (the policy's port)
write_pod() {
    local p=$1 ns=${1%/*} pod=${1#*/}
    jq -n --arg ns "$ns" --arg pod "$pod" --arg node "${POD_NODE[$p]}" --arg app "${POD_LABEL[$p]}" \
        --arg ip4 "${POD_IP4[$p]}" --arg ip6 "${POD_IP6[$p]}" '
        {apiVersion: "v1", kind: "Pod",
         metadata: {name: $pod, namespace: $ns, labels: {app: $app}},
         spec: {nodeName: $node, containers: [{name: "main", image: "registry.k8s.io/e2e-test-images/agnhost:2.53",
            ports: [{name: "http", containerPort: 8080, protocol: "TCP"},
                    {name: "other", containerPort: 9090, protocol: "TCP"}]}]},
         status: {phase: "Running", podIP: $ip4,
                  podIPs: ([{ip: $ip4}] + (if $ip6 == "" then [] else [{ip: $ip6}] end))}}' \
        >"$PODS/.$ns-$pod.tmp"
    mv "$PODS/.$ns-$pod.tmp" "$PODS/$ns-$pod.json"
}

# write_namespace NS
write_namespace() {
    jq -n --arg ns "$1" '{apiVersion: "v1", kind: "Namespace",
        metadata: {name: $ns, labels: {"kubernetes.io/metadata.name": $ns}}, status: {phase: "Active"}}' \
        >"$NAMESPACES/.$1.tmp"
    mv "$NAMESPACES/.$1.tmp" "$NAMESPACES/$1.json"
}

# netpol NAME NS SPEC_JSON: a NetworkPolicy object written as kubectl apply would
netpol() {
    jq -n --arg name "$1" --arg ns "$2" --argjson spec "$3" '{apiVersion: "networking.k8s.io/v1",
        kind: "NetworkPolicy", metadata: {name: $name, namespace: $ns}, spec: $spec}' >"$NETPOLS/.$2-$1.tmp" ||
        die "policy $2/$1: bad spec $3"
    mv "$NETPOLS/.$2-$1.tmp" "$NETPOLS/$2-$1.json"
}
unnetpol() { rm -f "$NETPOLS/$2-$1.json"; }

# change: call before editing objects; settle: after. settle has the stand-in poll at once and
# waits (up to 5 s) until each agent has logged one more "policy applied" line.
applied() { grep -c 'policy applied' "$WORK/$1/agent.log" || true; }
change() { MARK_A=$(applied node-a) MARK_B=$(applied node-b); }
settle() {
    local end=$(($(now_ms) + 5000))
    kill -HUP "$SERVER_PID"
    until (($(applied node-a) > MARK_A && $(applied node-b) > MARK_B)); do
        if (($(now_ms) > end)); then
            log "note: not both agents logged 'policy applied' within 5 s of the change"
            return 0
        fi
        sleep 0.1
    done
}

# ---- probes -----------------------------------------------------------------------------------
# tries CLIENT ADDR PORT N: N connections at once from CLIENT (ns/pod) -> the answers of those
# that were answered ("<server> <peer it saw>"), one a line; a denied one just times out (1 s).
tries() {
    local netns i pids=()
    netns=$(netns_of "$1")
    for i in $(seq "$4"); do
        (in_ns "$netns" timeout 4 socat -t2 -T2 - TCP:"$2":"$3",connect-timeout=1 </dev/null 2>/dev/null |
            tr -d '\r' | head -1 >"$WORK/try.$i") &
        pids+=($!)
    done
    wait "${pids[@]}" || true
    for i in $(seq "$4"); do grep . "$WORK/try.$i" || true; done
}

# service_allowed CLIENT WHAT: 12 connections to the ClusterIP, all answered, by both backends,
# each seeing the client's own pod address (no SNAT on the way)
service_allowed() {
    local c=$1 what=$2 answers
    answers=$(tries "$c" $SVC_IP 80 12)
    log "$what: 12 connections $c -> $SVC_IP:80: $(awk '{print $1}' <<<"$answers" | sort | uniq -c | xargs)"
    expect_eq "$what: $c -> $SVC_IP:80 answered" "$(grep -c . <<<"$answers" || true)" 12
    expect_eq "$what: $c -> $SVC_IP:80 reached" "$(awk '{print $1}' <<<"$answers" | sort -u | xargs)" "web-a web-b"
    expect_eq "$what: $c -> $SVC_IP:80: the backends saw" "$(awk '{print $2}' <<<"$answers" | sort -u | xargs)" "${POD_IP4[$c]}"
}
# service_denied CLIENT WHAT: 12 connections to the ClusterIP, none answered
service_denied() {
    expect_eq "$2: $1 -> $SVC_IP:80 (12 tries), answered" "$(tries "$1" $SVC_IP 80 12 | grep -c . || true)" 0
}
# pod_verdict CLIENT SERVER PORT WANT(allowed|denied) WHAT: one connection to the pod's address
pod_verdict() {
    local got=denied answer
    answer=$(tries "$1" "${POD_IP4[$2]}" "$3" 1)
    [ -n "$answer" ] && got=allowed
    expect_eq "$5: $1 -> $2 ${POD_IP4[$2]}:$3" "$got" "$4"
}

# flip WANT CLIENT COMMAND...: probe loops from CLIENT to web-a (node A) and web-b (node B) on
# 8080; once both see the old verdict, COMMAND makes the change and the stand-in polls at once;
# logs how long after COMMAND each backend's verdict became WANT and keeps the times.
flip() {
    local want=$1 client=$2 netns t0 i b=(srv/web-a srv/web-b) got=() pids=() what
    shift 2
    what="${*:1:3}" # the command and the policy's name, not its spec
    netns=$(netns_of "$client")
    for i in 0 1; do
        rm -f "$WORK/flip.$i.ready"
        in_ns "$netns" $PY "$SVCPROBE" flip "${POD_IP4[${b[i]}]}" 8080 --want "$want" \
            --ready "$WORK/flip.$i.ready" >"$WORK/flip.$i.out" 2>&1 &
        pids+=($!)
        BACKGROUND_PIDS+=($!)
    done
    for _ in $(seq 50); do
        [ -e "$WORK/flip.0.ready" ] && [ -e "$WORK/flip.1.ready" ] && break
        sleep 0.1
    done
    "$@"
    t0=$(now_ms)
    kill -HUP "$SERVER_PID"
    for i in 0 1; do
        if wait "${pids[i]}" && [[ $(cat "$WORK/flip.$i.out") =~ ^[0-9]+$ ]]; then
            got+=($(($(cat "$WORK/flip.$i.out") - t0)))
        else
            got+=(-)
            fail "flip to $want ($what): probe $client -> backend $i: $(cat "$WORK/flip.$i.out")"
        fi
    done
    log "verdict $client -> web-a / web-b became $want ${got[0]} ms / ${got[1]} ms after: $what"
    [ "${got[0]}" == - ] || echo "${FLIP_KIND:-$want} node-a ${got[0]}" >>"$FLIPS"
    [ "${got[1]}" == - ] || echo "${FLIP_KIND:-$want} node-b ${got[1]}" >>"$FLIPS"
}
# flips WANT NODE_PATTERN -> "N flips: T1 T2 ... ms, median M ms"
flips() {
    awk -v w="$1" -v n="$2" '$1 == w && $2 ~ n {print $3}' "$FLIPS" 2>/dev/null | sort -n |
        awk '{v[NR] = $1; s = s " " $1} END {if (NR) printf "%d flips:%s ms, median %d ms", NR, s, v[int((NR + 1) / 2)]; else print "none"}'
}

# ---- the world --------------------------------------------------------------------------------
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
for ns in srv good bad; do write_namespace $ns; done
start_server
start_agents
wait_for 15 "node-a's agent installs its conflist" has_conflist node-a
wait_for 15 "node-b's agent installs its conflist" has_conflist node-b
wait_for 15 "node A's agent is ready" ready node-a
wait_for 15 "node B's agent is ready" ready node-b

add_pod srv/web-a node-a web
add_pod srv/web-b node-b web
for ns in good bad; do
    add_pod $ns/client-a node-a client
    add_pod $ns/client-b node-b client
done
log "pods: $(for p in "${!POD_IP4[@]}"; do echo "$p=${POD_IP4[$p]}(${POD_NODE[$p]})"; done | sort | xargs)"
kill -HUP "$SERVER_PID"
for b in web-a web-b; do
    serve_name "$(netns_of srv/$b)" 8080 $b
    serve_name "$(netns_of srv/$b)" 9090 $b
done
kube_proxy_rules "web $SVC_IP 80 $NODE_PORT yes ${POD_IP4[srv/web-a]}:8080,${POD_IP4[srv/web-b]}:8080" >"$WORK/kube-proxy.rules"
kube_proxy_sync "$NODE_A" "$WORK/kube-proxy.rules"
kube_proxy_sync "$NODE_B" "$WORK/kube-proxy.rules"
ok "kube-proxy (iptables mode) on both nodes: $SVC_IP:80 and NodePort $NODE_PORT -> web-a, web-b :8080"
log "note: kube-proxy's IPVS mode is not emulated and not supported: IPVS hands Service traffic to the backend from the INPUT/OUTPUT path of the node (its kube-ipvs0 address), around the forward hook where the policy table looks; the README says so"

# Every client's first connections: routes between the nodes and the neighbours on the way
# (a pod's first SYN can wait for ARP) in place before anything is counted.
reaches_backends() { [ -n "$(tries "$1" "${POD_IP4[srv/web-a]}" 8080 1)" ] && [ -n "$(tries "$1" "${POD_IP4[srv/web-b]}" 8080 1)" ]; }
for c in good/client-a good/client-b bad/client-a bad/client-b; do
    wait_for 10 "$c reaches web-a and web-b on their pod addresses (no policy yet)" reaches_backends $c
done

# ---- 1. ClusterIP ---------------------------------------------------------------------------
log "--- 1. ClusterIP: policy srv/allow-good (ingress to app=web from namespace good on port http)"
service_allowed bad/client-a "no policy"
service_allowed bad/client-b "no policy"
ALLOW_GOOD='{"podSelector":{"matchLabels":{"app":"web"}},"policyTypes":["Ingress"],
  "ingress":[{"from":[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"good"}}}],
              "ports":[{"protocol":"TCP","port":"http"}]}]}'
flip denied bad/client-a netpol allow-good srv "$ALLOW_GOOD"
for c in good/client-a good/client-b; do
    service_allowed $c "allow-good"
    pod_verdict $c srv/web-a 8080 allowed "allow-good"
    pod_verdict $c srv/web-b 8080 allowed "allow-good"
    pod_verdict $c srv/web-a 9090 denied "allow-good, port 9090 is not http"
done
for c in bad/client-a bad/client-b; do
    service_denied $c "allow-good"
    pod_verdict $c srv/web-a 8080 denied "allow-good, as via the ClusterIP"
    pod_verdict $c srv/web-b 8080 denied "allow-good, as via the ClusterIP"
done
# More flips for the timing medians: deleted, written again, twice.
flip allowed bad/client-a unnetpol allow-good srv
flip denied bad/client-b netpol allow-good srv "$ALLOW_GOOD"
flip allowed bad/client-b unnetpol allow-good srv
flip denied bad/client-a netpol allow-good srv "$ALLOW_GOOD"
service_denied bad/client-b "allow-good written again"
service_allowed good/client-b "allow-good written again"

# ---- 2. NodePort ----------------------------------------------------------------------------
log "--- 2. NodePort $NODE_PORT from outside ($OUTSIDE_ADDR) under allow-good"
# nodeport ROUND NODE(A|B): 10 connections from outside to the node's NodePort -> the backends
# that answered ("web-a web-b")
nodeport() {
    local round=$1 node=$2 addr answers seen
    addr=NODE_${node}_IP
    addr=${!addr}
    answers=$(for i in $(seq 10); do
        (in_ns "$OUTSIDE" timeout 4 socat -t2 -T2 - TCP:"$addr":$NODE_PORT,connect-timeout=1 </dev/null 2>/dev/null |
            tr -d '\r' | head -1) &
    done; wait)
    seen=$(grep . <<<"$answers" | sort | uniq -c | xargs || true)
    log "$round: 10 connections outside -> node $node $addr:$NODE_PORT: ${seen:-none answered}" >&2
    awk 'NF {print $1}' <<<"$answers" | sort -u | xargs
}
expect_eq "allow-good: NodePort on node A answered by" "$(nodeport allow-good A)" ""
expect_eq "allow-good: NodePort on node B answered by" "$(nodeport allow-good B)" ""
log "the policy sees the outside client (entry node's own backend) or, after kube-proxy's masquerade, the entry node's address (other node's backend): neither is namespace good"
OUT_PEER="{\"ipBlock\":{\"cidr\":\"$OUTSIDE_ADDR/32\"}}"
NODES_PEER='{"ipBlock":{"cidr":"100.64.0.0/24"}}'
with_peers() { jq -c --argjson p "[$1]" '.ingress[0].from += $p' <<<"$ALLOW_GOOD"; }
change
netpol allow-good srv "$(with_peers "$OUT_PEER")"
settle
expect_eq "allow-good + ipBlock $OUTSIDE_ADDR/32: NodePort on node A answered by (its own backend only)" "$(nodeport "+outside" A)" "web-a"
expect_eq "allow-good + ipBlock $OUTSIDE_ADDR/32: NodePort on node B answered by (its own backend only)" "$(nodeport "+outside" B)" "web-b"
log "a backend on the entry node is checked before the masquerade (POSTROUTING): it sees the client; one on the other node sees the entry node"
change
netpol allow-good srv "$(with_peers "$OUT_PEER,$NODES_PEER")"
settle
expect_eq "allow-good + ipBlocks outside and 100.64.0.0/24 (nodes): NodePort on node A answered by" "$(nodeport "+nodes" A)" "web-a web-b"
expect_eq "allow-good + ipBlocks outside and 100.64.0.0/24 (nodes): NodePort on node B answered by" "$(nodeport "+nodes" B)" "web-a web-b"
change
netpol allow-good srv "$ALLOW_GOOD"
settle

# ---- 3. egress ipBlock: ClusterIP vs backend CIDR ---------------------------------------------
log "--- 3. egress of namespace good limited by ipBlock (allow-good still in srv)"
egress_to() { echo "{\"podSelector\":{},\"policyTypes\":[\"Egress\"],\"egress\":[{\"to\":[{\"ipBlock\":{\"cidr\":\"$1\"}}]}]}"; }
change
netpol egress good "$(egress_to $SVC_IP/32)"
settle
service_denied good/client-a "egress only to ipBlock $SVC_IP/32 (the ClusterIP)"
service_denied good/client-b "egress only to ipBlock $SVC_IP/32 (the ClusterIP)"
pod_verdict good/client-a srv/web-b 8080 denied "egress only to ipBlock $SVC_IP/32"
log "an ipBlock naming the ClusterIP has no effect: kube-proxy's DNAT (PREROUTING) has made the destination a backend pod before the forward hook, and that address is not in $SVC_IP/32"
change
netpol egress good "$(egress_to "$POD_CIDR_A")"
settle
answers=$(tries good/client-b $SVC_IP 80 12)
log "egress only to $POD_CIDR_A (node A's pods): 12 connections good/client-b -> $SVC_IP:80: $(awk '{print $1}' <<<"$answers" | sort | uniq -c | xargs)"
expect_eq "egress only to ipBlock $POD_CIDR_A: $SVC_IP:80 answered only by" "$(awk '{print $1}' <<<"$answers" | sort -u | xargs)" "web-a"
log "the egress check happens per connection after DNAT: the backend kube-proxy picked decides"
change
netpol egress good "$(egress_to "$CLUSTER_CIDR")"
settle
service_allowed good/client-a "egress only to ipBlock $CLUSTER_CIDR (the backends' CIDR)"
service_allowed good/client-b "egress only to ipBlock $CLUSTER_CIDR (the backends' CIDR)"
change
unnetpol egress good
settle

# ---- 4. agents restarted with policy in force -------------------------------------------------
log "--- 4. both agents SIGTERMed with allow-good in force"
BEFORE_A=$(table_rules node-a)
BEFORE_B=$(table_rules node-b)
rm -f "$WORK/watch.stop"
in_ns "$(netns_of bad/client-b)" $PY "$SVCPROBE" watch $SVC_IP 80 --stop "$WORK/watch.stop" >"$WORK/watch.out" 2>&1 &
WATCH=$!
BACKGROUND_PIDS+=("$WATCH")
stop_agent node-a
stop_agent node-b
expect_same "node A: table inet routed-cni unchanged with the agent down" "$(table_rules node-a)" "$BEFORE_A"
expect_same "node B: table inet routed-cni unchanged with the agent down" "$(table_rules node-b)" "$BEFORE_B"
service_allowed good/client-b "agents down"
service_denied bad/client-a "agents down"
log "while the agents are down: allow-good replaced by deny-all in srv"
unnetpol allow-good srv
netpol deny-all srv '{"podSelector":{},"policyTypes":["Ingress"]}'
kill -HUP "$SERVER_PID"
sleep 1
service_allowed good/client-a "agents down, deny-all written (nobody applies it yet)"
FLIP_KIND=restart flip denied good/client-a start_agents
wait_for 15 "node A's agent is ready again" ready node-a
wait_for 15 "node B's agent is ready again" ready node-b
touch "$WORK/watch.stop"
wait "$WATCH" || true
log "probe loop bad/client-b -> $SVC_IP:80 through stop, downtime and restart: $(cat "$WORK/watch.out")"
expect_eq "bad/client-b -> $SVC_IP:80 never answered through the restart" "$(awk '{print $2}' "$WORK/watch.out")" 0
service_denied good/client-b "deny-all after the restart"
service_denied bad/client-a "deny-all after the restart"
flip allowed good/client-b unnetpol deny-all srv
service_allowed bad/client-a "no policy after the restart"

# ---- timings and the end ----------------------------------------------------------------------
log "verdict flips, from the policy file written (the stand-in told to poll at once, SIGHUP) to the first probe SYN with the new verdict (probes every 0.15 s):"
for w in denied allowed; do
    log "  to $w: node A $(flips $w node-a); node B $(flips $w node-b); both $(flips $w .)"
done
log "  policy changed while the agents were down, from their start: $(flips restart .)"
if [ "$FAILURES" -ne 0 ]; then
    for n in node-a node-b; do
        log "---- $n agent log (tail)"
        tail -20 "$WORK/$n/agent.log" || true
        log "---- table inet routed-cni on $n"
        table_rules $n | sed 's/^/    /'
    done
fi
log "elapsed: $SECONDS s"
finish
