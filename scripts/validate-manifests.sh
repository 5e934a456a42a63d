#!/usr/bin/env bash
# Offline validation of the Kubernetes manifests under conf/ (no cluster, no kubectl):
#  1. every *.yaml under conf/ against the Kubernetes OpenAPI schemas bundled in the PyPI
#     package kubernetes-validate, in strict mode (unknown fields are errors, as with
#     `kubectl apply --validate=strict`), for each version in KUBE_VERSIONS;
#  2. scripts/check-manifests.py: what a schema cannot say (RBAC is read-only: get/list/watch
#     on nodes, pods, namespaces and networking.k8s.io networkpolicies, nothing more; the
#     DaemonSet is host-network, not privileged, tolerates every taint, mounts only the CNI
#     directories, the node's /etc (type Directory, for the udev and NetworkManager files) and
#     the plugin's store /run/routed-cni at the same path, runs `routed-cni agent`, probes the
#     agent's health port: startup and liveness on /healthz, readiness on /readyz, a startup
#     window for the first sync; names that port and has the prometheus.io scrape annotations
#     for its /metrics; says ROUTED_CNI_NETWORK_POLICY; has a ROUTED_CNI_API_SERVER
#     that is empty or https://);
#  3. negative controls: broken copies of the manifest (a typo'd field, a wrong type, and one
#     copy per policy rule) must each be rejected, or this script fails.
# Needs /usr/bin/python3 with venv (Debian: python3-venv) and PyPI on first run; the venv is
# kept in target/ and reused.
set -euo pipefail
cd "$(dirname "$0")/.."

KV_VERSION=1.37.0                                 # kubernetes-validate, pinned
KUBE_VERSIONS=${KUBE_VERSIONS:-"1.30.0 1.37.0"}   # oldest we claim, newest the package knows
VENV=${MANIFESTS_VENV:-$(realpath -m "${CARGO_TARGET_DIR:-target}")/manifests-venv}
MANIFEST=conf/kubernetes/routed-cni.yaml

# The venv must come from Debian's python, not whatever python3 is first on PATH.
if [ ! -x "$VENV/bin/python" ]; then
    /usr/bin/python3 -m venv "$VENV"
fi
if [ "$("$VENV/bin/python" -m pip show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p')" != "$KV_VERSION" ]; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
fi
KV=$VENV/bin/kubernetes-validate
PY=$VENV/bin/python   # has PyYAML: kubernetes-validate depends on it

mapfile -t files < <(find conf -name '*.yaml' -o -name '*.yml' | sort)
[ ${#files[@]} -gt 0 ] || { echo "validate-manifests: no manifests under conf/" >&2; exit 1; }
echo "validate-manifests: kubernetes-validate $KV_VERSION, Kubernetes ${KUBE_VERSIONS// /, }, ${#files[@]} file(s)"

for v in $KUBE_VERSIONS; do
    "$KV" --strict --quiet -k "$v" "${files[@]}"
    echo "ok: schema (strict) for Kubernetes $v: ${files[*]}"
done
mapfile -t k8s < <(find conf/kubernetes -name '*.yaml' | sort)
"$PY" scripts/check-manifests.py "${k8s[@]}"

# --- negative controls: each broken copy must be rejected ----------------------------------
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bad=0
# mutate NAME SED_EXPR: a copy of the manifest with one change (which must really apply).
mutate() {
    sed "$2" "$MANIFEST" >"$tmp/$1.yaml"
    if cmp -s "$MANIFEST" "$tmp/$1.yaml"; then
        echo "validate-manifests: negative control '$1' did not change the manifest (stale sed?)" >&2
        exit 1
    fi
}
expect_schema_reject() { # NAME SED_EXPR
    mutate "$1" "$2"
    local out
    if out=$("$KV" --strict --quiet -k "${KUBE_VERSIONS%% *}" "$tmp/$1.yaml" 2>&1); then
        echo "FAIL: schema accepted the broken copy '$1'"; bad=1
    else
        echo "ok: schema rejects '$1': $(grep -o "did not validate.*" <<<"$out" | head -1 | cut -c1-160)"
    fi
}
expect_policy_reject() { # NAME SED_EXPR
    mutate "$1" "$2"
    local out
    if out=$("$PY" scripts/check-manifests.py "$tmp/$1.yaml" 2>&1); then
        echo "FAIL: check-manifests accepted the broken copy '$1'"; bad=1
    else
        echo "ok: check-manifests rejects '$1': $(head -1 <<<"$out" | sed 's/^check-manifests: FAIL: //')"
    fi
}
expect_schema_reject typo-field 's/hostNetwork: true/hostNetwrok: true/'
expect_schema_reject wrong-type 's/terminationGracePeriodSeconds: 10/terminationGracePeriodSeconds: ten/'
expect_policy_reject privileged 's/privileged: false/privileged: true/'
expect_policy_reject write-verb '/resources: \["nodes"\]/{n;s/"watch"\]/"watch", "patch"]/}'
expect_policy_reject pods-write-verb '/resources: \["pods", "namespaces"\]/{n;s/"watch"\]/"watch", "delete"]/}'
expect_policy_reject status-update '/resources: \["nodes\/status"\]/{n;s/\["patch"\]/["patch", "update"]/}'
expect_policy_reject no-status-patch 's/resources: \["nodes\/status"\]/resources: ["nodes\/proxy"]/'
expect_policy_reject nodes-patch 's/resources: \["nodes\/status"\]/resources: ["nodes"]/'
expect_policy_reject secrets 's/resources: \["nodes"\]/resources: ["nodes", "secrets"]/'
expect_policy_reject pods-exec 's/resources: \["pods", "namespaces"\]/resources: ["pods", "pods\/exec", "namespaces"]/'
expect_policy_reject wildcard-resource '/apiGroups: \["networking.k8s.io"\]/{n;s/\["networkpolicies"\]/["*"]/}'
expect_policy_reject wildcard-group 's/apiGroups: \["networking.k8s.io"\]/apiGroups: ["*"]/'
expect_policy_reject two-groups 's/apiGroups: \["networking.k8s.io"\]/apiGroups: ["networking.k8s.io", "apps"]/'
expect_policy_reject no-namespaces 's/resources: \["pods", "namespaces"\]/resources: ["pods"]/'
expect_policy_reject pod-network 's/hostNetwork: true/hostNetwork: false/'
expect_policy_reject no-noexecute 's/effect: NoExecute/effect: NoSchedule/'
expect_policy_reject wide-mount 's|path: /etc$|path: /|'
expect_policy_reject extra-cap 's/add: \["NET_ADMIN"\]/add: ["NET_ADMIN", "SYS_ADMIN"]/'
expect_policy_reject install-cmd 's|command: \["/routed-cni", "agent"\]|command: ["/routed-cni", "install"]|'
expect_policy_reject bin-dir-env 's|value: /host/opt/cni/bin|value: /opt/cni/bin|'
expect_policy_reject probe-port 's/port: 9465/port: 9466/'
expect_policy_reject scrape-path 's|prometheus.io/path: /metrics|prometheus.io/path: /metric|'
expect_policy_reject scrape-port 's|prometheus.io/port: "9466"|prometheus.io/port: "9465"|'
expect_policy_reject health-open 's|value: "127.0.0.1:9465"|value: "0.0.0.0:9465"|'
expect_policy_reject no-metrics-addr 's|value: "0.0.0.0:9466"|value: ""|'
expect_policy_reject unnamed-port 's/- name: metrics$/- name: ""/'
expect_policy_reject etc-created 's/type: Directory$/type: DirectoryOrCreate/'
expect_policy_reject nm-dir-env 's|value: /host/node-etc/NetworkManager/conf.d|value: /etc/NetworkManager/conf.d|'
expect_policy_reject liveness-on-readyz '/livenessProbe:/,/failureThreshold/ s|path: /healthz|path: /readyz|'
expect_policy_reject startup-on-readyz '/startupProbe:/,/failureThreshold/ s|path: /healthz|path: /readyz|'
expect_policy_reject short-startup '/startupProbe:/,/failureThreshold/ s/failureThreshold: 30/failureThreshold: 6/'
expect_policy_reject no-startup 's/^\( *\)startupProbe:/\1# startupProbe:/; /# startupProbe:/,/failureThreshold/ s/^\( *\)\([a-z]\)/\1# \2/'
expect_policy_reject store-elsewhere 's|mountPath: /run/routed-cni|mountPath: /host/run/routed-cni|'
expect_policy_reject store-read-only 's|^\( *\)mountPath: /run/routed-cni|&\n\1readOnly: true|'
expect_policy_reject no-store 's|path: /run/routed-cni|path: /var/lib/routed-cni|'
expect_policy_reject data-dir-env 's|^\( *\)- name: ROUTED_CNI_NETWORK_POLICY|\1- name: ROUTED_CNI_DATA_DIR\n\1  value: /host/run/routed-cni\n&|'
expect_policy_reject policy-not-bool '/name: ROUTED_CNI_NETWORK_POLICY/{n;s/value: "true"/value: "yes"/}'
expect_policy_reject api-server-http '/name: ROUTED_CNI_API_SERVER/{n;s|value: ""|value: "http://10.0.0.1:6443"|}'
expect_policy_reject no-api-server 's/name: ROUTED_CNI_API_SERVER/name: ROUTED_CNI_API_SERVR/'
[ $bad = 0 ] || exit 1
echo "validate-manifests: all checks passed"
