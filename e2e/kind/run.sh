#!/usr/bin/env bash
# routed-cni on a real Kubernetes cluster made by kind (one control plane, two workers, kind's
# default CNI disabled). NOT run by scripts/test.sh and never run on the project's CI machine,
# which has no Docker: see e2e/kind/README.md for what it needs and how to run it.
#
# Needs kind >= v0.23.0 (checked at start: the first release whose node images are Kubernetes
# 1.30, the oldest version conf/kubernetes/ is validated for), Docker, kubectl, jq, cargo.
#
# Steps: build the static binary and the image (Dockerfile, `prebuilt` stage), create the
# cluster, `kind load` the image, apply conf/kubernetes/ with ROUTED_CNI_API_SERVER set to the
# control-plane container (https://<cluster>-control-plane:6443 on kind's Docker network, the
# endpoint kind itself gives kindnet, so the agents do not wait for kube-proxy), wait for the
# DaemonSet, the nodes and CoreDNS, then check what a user of the cluster would:
#   - every node's conflist holds its own spec.podCIDR, and its routes reach the other nodes'
#     podCIDRs via their InternalIPs; the agent answers /healthz and /readyz on 127.0.0.1:9465
#     and uses the control-plane endpoint;
#   - pod -> pod across nodes (pods pinned to the two workers), and the server sees the
#     client's pod IP as the source (no masquerade inside the cluster);
#   - pod -> Service by ClusterIP and by DNS name (CoreDNS), source still the pod IP;
#   - hairpin: a pod reaches itself through a Service that selects only itself;
#   - pod -> another node's InternalIP;
#   - pod -> the internet, only when this machine itself reaches it (else skipped);
#   - optionally (--conformance) the upstream "[sig-network] Networking Granular Checks: Pods"
#     (e2e.test from dl.k8s.io for the server's version, or E2E_TEST=/path/to/e2e.test).
# Setup steps that leave nothing to test (cluster, image, DaemonSet, nodes Ready) stop the run;
# every check after that counts as ok or FAIL and the run goes on. A summary of the failed
# checks ends the output; the exit status is non-zero if any check failed or the run stopped.
# The cluster is deleted on exit unless --keep; on failure kind's logs are exported first.
#
# Usage: e2e/kind/run.sh [--keep] [--no-build] [--conformance] [--name CLUSTER]
#        [--node-image kindest/node:vX.Y.Z]
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLUSTER=routed-cni-e2e
NODE_IMAGE=""
KEEP=0
BUILD=1
CONFORMANCE=0
IMAGE=routed-cni:dev # what conf/kubernetes/routed-cni.yaml runs (imagePullPolicy IfNotPresent)
KIND_MIN=0.23.0      # node images for Kubernetes 1.30+ came with kind v0.23.0
AGNHOST=${AGNHOST_IMAGE:-registry.k8s.io/e2e-test-images/agnhost:2.53}
NS=rcni-e2e
POD_SUBNET=10.244.0.0/16 # = ROUTED_CNI_CLUSTER_CIDR in the manifest
ARTIFACTS=${ARTIFACTS:-$ROOT/target/kind-e2e}

while [ $# -gt 0 ]; do
    case $1 in
    --keep) KEEP=1 ;;
    --no-build) BUILD=0 ;;
    --conformance) CONFORMANCE=1 ;;
    --name) CLUSTER=$2; shift ;;
    --node-image) NODE_IMAGE=$2; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

FAILURES=0
PASSED=0
FAILED=()
STOPPED="" # why the run stopped early, if it did
log() { printf '[kind-e2e %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
ok() { log "ok: $*"; PASSED=$((PASSED + 1)); }
fail() { log "FAIL: $*"; FAILURES=$((FAILURES + 1)); FAILED+=("$*"); }
die() { log "FATAL: $*"; STOPPED=$*; exit 1; }
# A command that fails outside a check stops the run (set -e); say which one, and count it.
trap 'rc=$?; [ -n "$STOPPED" ] || STOPPED="line $LINENO: \"$BASH_COMMAND\" failed (exit $rc)"' ERR
check() { # NAME COMMAND...: ok when COMMAND succeeds (its stdin is ours, its output hidden)
    local name=$1
    shift
    if "$@" >/dev/null 2>&1; then ok "$name"; else fail "$name"; fi
}
expect_eq() { # NAME GOT WANT
    if [ "$2" = "$3" ]; then ok "$1"; else fail "$1: got '$2', want '$3'"; fi
}

# version_ge A B: A >= B, both X.Y.Z
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }
summary() {
    log "summary: $PASSED check(s) passed, $FAILURES failed${STOPPED:+, run stopped early}"
    local f
    for f in "${FAILED[@]}"; do log "  FAILED: $f"; done
    [ -z "$STOPPED" ] || log "  STOPPED: $STOPPED"
}

for tool in docker kind kubectl jq cargo curl; do
    command -v "$tool" >/dev/null || die "$tool not found (see e2e/kind/README.md)"
done
kind_version=$(kind version 2>/dev/null | grep -o 'v[0-9][0-9.]*' | head -1 || true)
version_ge "${kind_version#v}" "$KIND_MIN" ||
    die "kind ${kind_version:-of unknown version} is older than v$KIND_MIN, the first with Kubernetes 1.30 node images (see e2e/kind/README.md)"
docker info >/dev/null 2>&1 || die "docker is not running or not usable by $(id -un)"

mkdir -p "$ARTIFACTS"
WORK=$(mktemp -d)
CREATED=0
KUBECONFIG=$WORK/kubeconfig
export KUBECONFIG
cleanup() {
    local rc=$?
    summary
    if [ "$CREATED" = 1 ]; then
        if [ "$rc" != 0 ] || [ "$FAILURES" != 0 ]; then
            kind export logs "$ARTIFACTS/logs" --name "$CLUSTER" >/dev/null 2>&1 &&
                log "cluster logs in $ARTIFACTS/logs"
        fi
        if [ "$KEEP" = 1 ]; then
            cp "$KUBECONFIG" "$ARTIFACTS/kubeconfig"
            log "kept cluster $CLUSTER (KUBECONFIG=$ARTIFACTS/kubeconfig; delete: kind delete cluster --name $CLUSTER)"
        else
            kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
        fi
    fi
    rm -rf "$WORK"
    if [ "$rc" = 0 ] && [ "$FAILURES" != 0 ]; then exit 1; fi
}
trap cleanup EXIT

# --- image -------------------------------------------------------------------------------
cd "$ROOT"
if [ "$BUILD" = 1 ]; then
    log "building the static binary and $IMAGE"
    bash scripts/build-static.sh >/dev/null || die "scripts/build-static.sh failed"
    # `prebuilt` is the Dockerfile's first stage: the legacy builder builds nothing else.
    docker build -q --target prebuilt -t "$IMAGE" . >/dev/null || die "docker build --target prebuilt failed"
fi
docker image inspect "$IMAGE" >/dev/null 2>&1 || die "no image $IMAGE (drop --no-build)"

# --- cluster -----------------------------------------------------------------------------
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    die "a kind cluster named $CLUSTER already exists; delete it or pass --name"
fi
cat >"$WORK/kind.yaml" <<EOF
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  # No kindnet: routed-cni is the cluster's CNI. Nodes stay NotReady until it runs.
  disableDefaultCNI: true
  podSubnet: $POD_SUBNET
nodes:
  - role: control-plane
  - role: worker
  - role: worker
EOF
log "creating kind cluster $CLUSTER"
CREATED=1
# --wait 0: without a CNI the nodes cannot become Ready until our DaemonSet runs.
kind create cluster --name "$CLUSTER" --config "$WORK/kind.yaml" --kubeconfig "$KUBECONFIG" \
    ${NODE_IMAGE:+--image "$NODE_IMAGE"} --wait 0s || die "kind create cluster failed"
kind load docker-image "$IMAGE" --name "$CLUSTER" || die "kind load docker-image $IMAGE failed"

# The agents reach the API server at the control-plane container, by its name on kind's
# Docker network (its certificate has that name: kind makes it kubeadm's
# controlPlaneEndpoint), not through the kubernetes Service and so not through kube-proxy.
API_SERVER=https://$CLUSTER-control-plane:6443
log "applying conf/kubernetes/ with ROUTED_CNI_API_SERVER=$API_SERVER"
mkdir -p "$WORK/manifests"
for f in conf/kubernetes/*.yaml; do
    sed '/name: ROUTED_CNI_API_SERVER$/{n;s|value: ""|value: "'"$API_SERVER"'"|}' "$f" >"$WORK/manifests/${f##*/}"
done
grep -q "value: \"$API_SERVER\"" "$WORK"/manifests/*.yaml ||
    die "could not set ROUTED_CNI_API_SERVER in conf/kubernetes/ (is its value still \"\"?)"
kubectl apply -f "$WORK/manifests/" || die "kubectl apply failed"
kubectl -n kube-system rollout status daemonset/routed-cni --timeout=180s ||
    { kubectl -n kube-system describe pods -l app.kubernetes.io/name=routed-cni; die "DaemonSet not rolled out"; }
kubectl wait --for=condition=Ready nodes --all --timeout=180s || die "nodes not Ready"
kubectl -n kube-system wait --for=condition=Ready pods -l k8s-app=kube-dns --timeout=180s ||
    die "CoreDNS not Ready"
ok "DaemonSet rolled out, nodes Ready, CoreDNS Ready"

# --- the nodes ---------------------------------------------------------------------------
# name podCIDR InternalIP, one node a line
kubectl get nodes -o json | jq -r '.items[] | [.metadata.name, .spec.podCIDR,
    (.status.addresses[] | select(.type == "InternalIP") | .address)] | @tsv' >"$WORK/nodes" ||
    die "cannot read the nodes"
[ "$(wc -l <"$WORK/nodes")" = 3 ] || die "expected 3 nodes: $(cat "$WORK/nodes")"
agent_logs=$(kubectl -n kube-system logs -l app.kubernetes.io/name=routed-cni --prefix --tail=-1 2>&1 || true)
expect_eq "every agent uses $API_SERVER" "$(grep -c "agent starting: .*API server $API_SERVER," <<<"$agent_logs")" 3
while read -r node cidr ip; do
    # </dev/null: docker exec must not eat the rest of the node list.
    if conf=$(docker exec "$node" cat /etc/cni/net.d/10-routed-cni.conflist </dev/null 2>&1); then
        expect_eq "$node: conflist subnet is its podCIDR" "$(jq -r '.plugins[0].ipam.subnet' <<<"$conf" 2>&1)" "$cidr"
        expect_eq "$node: nonMasqueradeCIDRs" "$(jq -c '.plugins[0].nonMasqueradeCIDRs' <<<"$conf" 2>&1)" "[\"$POD_SUBNET\"]"
    else
        fail "$node: no /etc/cni/net.d/10-routed-cni.conflist: $conf"
    fi
    check "$node: /opt/cni/bin/routed-cni installed" docker exec "$node" test -x /opt/cni/bin/routed-cni </dev/null
    for probe in healthz readyz; do
        body=$(docker exec "$node" curl -s -w ' [%{http_code}]' http://127.0.0.1:9465/$probe </dev/null 2>&1 || true)
        if [[ $body == *"[200]" ]]; then ok "$node: agent /$probe: $body"; else fail "$node: agent /$probe: $body"; fi
    done
    while read -r other ocidr oip; do
        [ "$other" = "$node" ] && continue
        route=$(docker exec "$node" ip -4 route show "$ocidr" </dev/null 2>&1 || true)
        check "$node: route $ocidr via $oip ($other) [have: $route]" grep -q "via $oip " <<<"$route "
    done <"$WORK/nodes"
    log "$node $cidr $ip"
done <"$WORK/nodes"

# --- workloads ---------------------------------------------------------------------------
mapfile -t WORKERS < <(kubectl get nodes -l '!node-role.kubernetes.io/control-plane' \
    -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
[ ${#WORKERS[@]} = 2 ] || die "expected 2 workers, got: ${WORKERS[*]}"
kubectl create namespace "$NS" >/dev/null || die "cannot create namespace $NS"
# Pods are refused until the namespace's default ServiceAccount exists (made asynchronously).
for _ in $(seq 30); do kubectl -n "$NS" get serviceaccount default >/dev/null 2>&1 && break; sleep 1; done
# agnhost netexec answers /hostname and /clientip (the source address it sees) on :8080;
# the image also has curl, dig, nc and ping.
kubectl -n "$NS" apply -f - >/dev/null <<EOF || die "cannot create the test pods"
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  nodeSelector: {kubernetes.io/hostname: ${WORKERS[0]}}
  containers:
    - {name: c, image: $AGNHOST, args: [netexec, --http-port=8080]}
---
apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: server}}
spec:
  nodeSelector: {kubernetes.io/hostname: ${WORKERS[1]}}
  containers:
    - {name: c, image: $AGNHOST, args: [netexec, --http-port=8080]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers:
        - {name: c, image: $AGNHOST, args: [netexec, --http-port=8080]}
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080}]
---
# Selects only the server pod: the server calling it is hairpin traffic.
apiVersion: v1
kind: Service
metadata: {name: self}
spec:
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080}]
EOF
kubectl -n "$NS" wait --for=condition=Ready pod --all --timeout=180s || {
    kubectl -n "$NS" describe pods
    die "test pods not Ready"
}
check "Deployment echo rolled out" kubectl -n "$NS" rollout status deployment/echo --timeout=60s
pod_ip() { kubectl -n "$NS" get pod "$1" -o jsonpath='{.status.podIP}' || true; }
CLIENT_IP=$(pod_ip client)
SERVER_IP=$(pod_ip server)
in_client() { kubectl -n "$NS" exec client -- "$@"; }
get() { # FROM_POD URL -> body
    kubectl -n "$NS" exec "$1" -- curl -sS --max-time 5 "$2"
}
log "client $CLIENT_IP on ${WORKERS[0]}, server $SERVER_IP on ${WORKERS[1]}"
for ip in "$CLIENT_IP" "$SERVER_IP"; do
    [[ $ip == "${POD_SUBNET%.0.0/16}".* ]] || fail "pod IP '$ip' is not in $POD_SUBNET"
done

# pod -> pod across nodes, and the source address the server sees
expect_eq "pod -> pod across nodes (HTTP)" "$(get client "http://$SERVER_IP:8080/hostname")" server
check "pod -> pod across nodes (ping)" in_client ping -c 2 -W 2 "$SERVER_IP"
expect_eq "server sees the client's pod IP" "$(get client "http://$SERVER_IP:8080/clientip" | cut -d: -f1)" "$CLIENT_IP"
expect_eq "pod -> pod, the other way; client sees the server's pod IP" \
    "$(get server "http://$CLIENT_IP:8080/clientip" | cut -d: -f1)" "$SERVER_IP"

# pod -> Service
ECHO_IP=$(kubectl -n "$NS" get service echo -o jsonpath='{.spec.clusterIP}' || true)
mapfile -t ECHO_PODS < <(kubectl -n "$NS" get pods -l app=echo -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
[ ${#ECHO_PODS[@]} = 2 ] || fail "echo Deployment has ${#ECHO_PODS[@]} pods, want 2"
# Several tries: the answers must all come from the Service's pods.
seen=$(for _ in 1 2 3 4 5 6; do get client "http://$ECHO_IP/hostname" || echo "(no answer)"; echo; done | sort -u)
if [ -n "$seen" ] && ! grep -qvx -e "${ECHO_PODS[0]}" -e "${ECHO_PODS[1]}" <<<"$seen"; then
    ok "pod -> Service ClusterIP $ECHO_IP (answered by: $(tr '\n' ' ' <<<"$seen"))"
else
    fail "pod -> Service ClusterIP $ECHO_IP: got '$seen'"
fi
expect_eq "DNS: echo.$NS.svc.cluster.local" \
    "$(in_client dig +short +time=3 "echo.$NS.svc.cluster.local")" "$ECHO_IP"
body=$(get client "http://echo.$NS.svc.cluster.local/hostname" || true)
check "pod -> Service by DNS name (answered by: $body)" grep -qx -e "${ECHO_PODS[0]}" -e "${ECHO_PODS[1]}" <<<"$body"
expect_eq "Service backend sees the client's pod IP" \
    "$(get client "http://$ECHO_IP/clientip" | cut -d: -f1)" "$CLIENT_IP"

# hairpin: the server through a Service that has only itself behind it
expect_eq "hairpin: pod -> its own Service" "$(get server "http://self.$NS.svc.cluster.local/hostname")" server

# pod -> another node's address (the host network)
other_ip=$(awk -v w="${WORKERS[0]}" '$1 != w {print $3; exit}' "$WORK/nodes")
check "pod -> another node $other_ip:10250 (kubelet)" in_client nc -z -w 3 "$other_ip" 10250

# pod -> outside, masqueraded: only if this machine is online
if curl -s -o /dev/null --max-time 5 https://registry.k8s.io/; then
    code=$(in_client curl -s -o /dev/null --max-time 10 -w '%{http_code}' https://registry.k8s.io/ || true)
    if [[ $code =~ ^[23] ]]; then ok "pod -> internet (https://registry.k8s.io/: $code)"; else fail "pod -> internet: '$code'"; fi
else
    log "skip: pod -> internet (this machine is offline)"
fi

# --- upstream conformance subset ---------------------------------------------------------
if [ "$CONFORMANCE" = 1 ]; then
    # e2e.test from the Kubernetes release that matches the server, run directly (no
    # sonobuoy/hydrophone needed). The focus selects the four [Conformance] specs of
    # test/e2e/common/network/networking.go, the core of what a CNI must do (each starts a
    # netserver pod per node plus a test pod, then polls every netserver):
    #   [sig-network] Networking Granular Checks: Pods should function for
    #     intra-pod communication: http | intra-pod communication: udp   (pod -> pod, all nodes)
    #     node-pod communication: http [LinuxOnly] | node-pod communication: udp [LinuxOnly]
    # The skip drops their SCTP siblings ([Feature:SCTPConnectivity]) and anything marked
    # Disruptive, Serial or Slow. "Granular Checks: Services" is left out: it tests kube-proxy,
    # which the checks above already cover for this cluster.
    # Duration: an estimate, not measured here (no Docker): about 30-60 s per spec on a warm
    # kind cluster, mostly pod start-up, so 2-5 minutes in all, plus the download (~1 GB
    # tarball; set E2E_TEST to reuse a binary).
    ver=$(kubectl version -o json 2>/dev/null | jq -r .serverVersion.gitVersion || true)
    e2e=${E2E_TEST:-$WORK/kubernetes/test/bin/e2e.test}
    if [ -z "${E2E_TEST:-}" ]; then
        log "fetching e2e.test $ver"
        # A custom --node-image (a version built from source, e.g. v1.31.0-alpha.1.5+abc) has
        # no release tarball: that is a failed check, not the end of the run.
        curl -fsSL "https://dl.k8s.io/$ver/kubernetes-test-linux-amd64.tar.gz" 2>"$WORK/curl.err" |
            tar -xz -C "$WORK" kubernetes/test/bin/e2e.test 2>>"$WORK/curl.err" || true
    fi
    if [ ! -x "$e2e" ]; then
        fail "conformance: no e2e.test for server version '$ver' ($(tr '\n' ' ' <"$WORK/curl.err" 2>/dev/null)); set E2E_TEST=/path/to/e2e.test for a custom node image"
    elif "$e2e" --kubeconfig "$KUBECONFIG" --provider local \
        --report-dir "$ARTIFACTS/conformance" \
        --ginkgo.focus '\[sig-network\] Networking Granular Checks: Pods' \
        --ginkgo.skip '\[Feature:|\[Disruptive\]|\[Serial\]|\[Slow\]'; then
        ok "conformance: [sig-network] Networking Granular Checks: Pods"
    else
        fail "conformance: [sig-network] Networking Granular Checks: Pods (report in $ARTIFACTS/conformance)"
    fi
fi

# The summary and the exit status (non-zero after any FAIL) come from the EXIT trap (cleanup).
if [ "$FAILURES" = 0 ]; then log "all checks passed"; fi
