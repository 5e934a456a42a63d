#!/usr/bin/env python3
"""Checks of routed-cni's Kubernetes manifests that a schema cannot make.

Usage: check-manifests.py FILE.yaml...   (all files together describe one deployment)

A JSON schema says a field is well-formed; these say the deployment is the one we mean:
least-privilege RBAC (read-only: nodes, and for NetworkPolicy pods, namespaces and
networkpolicies; the one write is patch on nodes/status, for the NetworkUnavailable condition), a host-network agent that is not privileged, lands on every node, mounts
only the CNI directories, the node's /etc (for the udev .link file and the NetworkManager
drop-in, without ever creating their directories) and the plugin's store at the node's own
path, runs `routed-cni agent`, is probed where the agent listens (startup and liveness on
/healthz, readiness on /readyz), says whether it enforces NetworkPolicy and has a
ROUTED_CNI_API_SERVER to set.
Exit 0 when every check passes, 1 with one line per failed check otherwise.
"""
import ipaddress
import sys

import yaml

HEALTH_PORT = 9465
METRICS_PORT = 9466  # the metrics-only listener (ROUTED_CNI_METRICS_ADDR), what Prometheus scrapes
# The agent's first pass at worst: the node list (60 s, connect included) plus install and the
# first route sync (60 s). The startupProbe must wait at least this long before liveness.
FIRST_PASS_SECONDS = 120
BIN_DIR = "/opt/cni/bin"
CONF_DIR = "/etc/cni/net.d"
# The node's /etc: install writes these two subdirectories of it, only where they exist.
NODE_ETC = "/etc"
NODE_ETC_DIRS = (("ROUTED_CNI_SYSTEMD_NETWORK_DIR", "systemd/network"),
                 ("ROUTED_CNI_NETWORKMANAGER_CONF_DIR", "NetworkManager/conf.d"))
# The plugin's store (its default ipam.dataDir, the agent's default --data-dir): the agent
# reads the records and writes policy-namespaces there, which CNI ADD on the node reads. The
# path must be the same inside the container as on the node, because install writes the
# agent's data dir into the conflist as ipam.dataDir when one is set.
STORE = "/run/routed-cni"
# Everything the ClusterRole may grant for reading, one rule per API group: (apiGroup,
# resources), verbs exactly get/list/watch.
RBAC_RULES = {
    "": {"nodes", "pods", "namespaces"},
    "networking.k8s.io": {"networkpolicies"},
}
READ_VERBS = ["get", "list", "watch"]
# The only writes: (apiGroup, subresource) -> verbs. The agent sets its own Node's
# NetworkUnavailable condition; the status subresource cannot touch spec, labels or taints.
WRITE_RULES = {("", "nodes/status"): ["patch"]}
# Taints a CNI DaemonSet must tolerate: a node is NotReady (and tainted) until its CNI config
# exists, and it is this DaemonSet that writes it. Plus taints nobody can predict.
TAINTS = [
    ("node.kubernetes.io/not-ready", "NoSchedule"),
    ("node.kubernetes.io/not-ready", "NoExecute"),
    ("node.kubernetes.io/unreachable", "NoExecute"),
    ("node.kubernetes.io/network-unavailable", "NoSchedule"),
    ("node.kubernetes.io/disk-pressure", "NoSchedule"),
    ("node.cloudprovider.kubernetes.io/uninitialized", "NoSchedule"),
    ("node-role.kubernetes.io/control-plane", "NoSchedule"),
    ("example.com/anything-else", "NoSchedule"),
    ("example.com/anything-else", "NoExecute"),
]

errors = []


def check(cond, msg):
    if not cond:
        errors.append(msg)
    return cond


def tolerates(tolerations, key, effect):
    """Kubernetes' matching rule (taint value left empty, so Equal needs an empty value)."""
    for t in tolerations or []:
        if t.get("effect") not in (None, "", effect):
            continue
        op = t.get("operator", "Equal")
        if op == "Exists" and t.get("key") in (None, "", key):
            return True
        if op == "Equal" and t.get("key") == key and t.get("value", "") == "":
            return True
    return False


def load(paths):
    docs = []
    for p in paths:
        with open(p) as f:
            docs += [d for d in yaml.safe_load_all(f) if d]
    return docs


def one(docs, kind, name):
    found = [d for d in docs if d.get("kind") == kind and d["metadata"]["name"] == name]
    check(len(found) == 1, f"expected exactly one {kind} {name}, found {len(found)}")
    return found[0] if found else None


def check_rbac(docs):
    sa = one(docs, "ServiceAccount", "routed-cni")
    if sa:
        check(sa["metadata"].get("namespace") == "kube-system", "ServiceAccount not in kube-system")
    for d in docs:
        if d.get("kind") in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"):
            check(d["metadata"]["name"] == "routed-cni", f"unexpected {d['kind']} {d['metadata']['name']}")
    role = one(docs, "ClusterRole", "routed-cni")
    if role:
        check("aggregationRule" not in role, "ClusterRole must not aggregate other roles")
        rules = role.get("rules") or []
        granted = {}
        writes = set()
        for r in rules:
            groups = r.get("apiGroups") or []
            resources = r.get("resources") or []
            if len(groups) == 1 and len(resources) == 1 and (groups[0], resources[0]) in WRITE_RULES:
                want = WRITE_RULES[(groups[0], resources[0])]
                check(sorted(r.get("verbs") or []) == want,
                      f"ClusterRole rule verbs {r.get('verbs')} on {resources[0]}, want exactly {want}")
                check(not r.get("resourceNames"), f"ClusterRole rule on {resources[0]} has resourceNames")
                writes.add((groups[0], resources[0]))
                continue
            # One group per rule, so a resource can never be read as belonging to another group
            # (["", "apps"] with ["pods"] would grant apps/pods too).
            if not check(len(groups) == 1 and groups[0] in RBAC_RULES,
                         f"ClusterRole rule apiGroups {groups}, want one of {sorted(RBAC_RULES)}"):
                continue
            allowed = RBAC_RULES[groups[0]]
            check(resources and set(resources) <= allowed,
                  f"ClusterRole rule resources {resources} in group {groups[0]!r}, allowed only {sorted(allowed)}"
                  " (no wildcards, no subresources, no secrets)")
            check(sorted(r.get("verbs") or []) == READ_VERBS,
                  f"ClusterRole rule verbs {r.get('verbs')}, want exactly get/list/watch (read-only)")
            check(not r.get("resourceNames"), "ClusterRole rule has resourceNames: the agent reads every object")
            check(not r.get("nonResourceURLs"), "ClusterRole rule grants nonResourceURLs")
            granted.setdefault(groups[0], set()).update(set(resources) & allowed)
        # Every resource the agent watches must be granted, or its watch is refused (403).
        check(granted == RBAC_RULES,
              f"ClusterRole grants {dict(sorted(granted.items()))}, want read access to exactly {RBAC_RULES}")
        # The condition patch is refused (403) without it.
        check(writes == set(WRITE_RULES),
              f"ClusterRole grants writes {sorted(writes)}, want exactly {sorted(WRITE_RULES)}")
    binding = one(docs, "ClusterRoleBinding", "routed-cni")
    if binding:
        check(binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                     "name": "routed-cni"}, f"ClusterRoleBinding roleRef {binding['roleRef']}")
        check(binding.get("subjects") == [{"kind": "ServiceAccount", "name": "routed-cni",
                                           "namespace": "kube-system"}],
              f"ClusterRoleBinding subjects {binding.get('subjects')}, want only the routed-cni ServiceAccount")


def check_daemonset(docs):
    ds = one(docs, "DaemonSet", "routed-cni")
    if not ds:
        return
    check(ds["metadata"].get("namespace") == "kube-system", "DaemonSet not in kube-system")
    upd = ds["spec"].get("updateStrategy", {})
    check(upd.get("type") == "RollingUpdate" and upd.get("rollingUpdate", {}).get("maxUnavailable") == 1,
          f"updateStrategy {upd}, want RollingUpdate with maxUnavailable 1")
    # The usual scrape annotations, pointing at the agent's metrics-only listener.
    notes = ds["spec"]["template"].get("metadata", {}).get("annotations") or {}
    want = {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT), "prometheus.io/path": "/metrics"}
    got = {k: notes.get(k) for k in want}
    check(got == want, f"pod template scrape annotations {got}, want {want}")
    pod = ds["spec"]["template"]["spec"]
    check(pod.get("hostNetwork") is True, "pod is not hostNetwork: it could not manage the node's routes")
    for f in ("hostPID", "hostIPC"):
        check(not pod.get(f), f"pod sets {f}")
    check(pod.get("serviceAccountName") == "routed-cni", "pod does not run as the routed-cni ServiceAccount")
    check(pod.get("automountServiceAccountToken", True) is True, "service account token not mounted")
    check(pod.get("priorityClassName") == "system-node-critical", "priorityClassName is not system-node-critical")
    for key, effect in TAINTS:
        check(tolerates(pod.get("tolerations"), key, effect), f"does not tolerate taint {key}:{effect}")
    check(not pod.get("affinity") and set(pod.get("nodeSelector", {})) <= {"kubernetes.io/os"},
          "pod has affinity or a nodeSelector beyond kubernetes.io/os: it must run on every node")
    check(not pod.get("securityContext", {}).get("sysctls"), "pod sets sysctls")

    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    host_paths = {}
    for name, v in volumes.items():
        if check("hostPath" in v, f"volume {name} is not a hostPath: nothing else is needed"):
            host_paths[name] = v["hostPath"]["path"].rstrip("/")
    check(sorted(host_paths.values()) == sorted([BIN_DIR, CONF_DIR, NODE_ETC, STORE]),
          f"hostPath volumes {sorted(host_paths.values())}, want exactly {BIN_DIR}, {CONF_DIR}, {NODE_ETC} and {STORE}")
    for name, path in host_paths.items():
        if path == NODE_ETC:
            # Directory: never created. "" and DirectoryOrCreate would make the kubelet or the
            # runtime create missing directories, which is what the /etc mount is there to avoid.
            check(volumes[name]["hostPath"].get("type") == "Directory",
                  f"volume {name} ({NODE_ETC}) has type {volumes[name]['hostPath'].get('type')!r}, want Directory")

    containers = pod.get("containers") or []
    check(len(containers) == 1, f"{len(containers)} containers, want one (the agent)")
    check(not pod.get("initContainers"), "init containers: the agent installs by itself")
    for c in containers + (pod.get("initContainers") or []):
        name = c["name"]
        argv = (c.get("command") or []) + (c.get("args") or [])
        check(argv == ["/routed-cni", "agent"], f"{name}: runs {argv}, want [/routed-cni, agent]")
        check(c.get("imagePullPolicy") in ("IfNotPresent", "Never") or "/" in c.get("image", ""),
              f"{name}: image {c.get('image')} has no registry, so it must not be pulled (IfNotPresent)")
        sc = c.get("securityContext") or {}
        check(sc.get("privileged") is not True, f"{name}: privileged")
        check(sc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation is not false")
        check(sc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem is not true")
        caps = sc.get("capabilities") or {}
        check("ALL" in (caps.get("drop") or []), f"{name}: capabilities do not drop ALL")
        check((caps.get("add") or []) == ["NET_ADMIN"], f"{name}: capabilities add {caps.get('add')}, want [NET_ADMIN]")
        check(not c.get("ports") or all(p.get("containerPort") == METRICS_PORT for p in c["ports"]),
              f"{name}: exposes ports other than metrics")
        check(any(p.get("containerPort") == METRICS_PORT and p.get("name") for p in c.get("ports") or []),
              f"{name}: the metrics port {METRICS_PORT} has no name (Prometheus and people find it by one)")

        env = {e["name"]: e for e in c.get("env") or []}
        node = env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        check(node == "spec.nodeName", f"{name}: NODE_NAME is not the fieldRef spec.nodeName")
        cidr = env.get("ROUTED_CNI_CLUSTER_CIDR", {}).get("value")
        try:
            ipaddress.IPv4Network(cidr)
        except (ValueError, TypeError):
            check(False, f"{name}: ROUTED_CNI_CLUSTER_CIDR {cidr!r} is not an IPv4 CIDR without host bits")

        # The installer writes where the env says, which must be the mount of the host dir.
        mounts = {m["name"]: m for m in c.get("volumeMounts") or []}
        check(set(mounts) <= set(volumes), f"{name}: mounts undeclared volumes")
        for var, host_dir in (("ROUTED_CNI_BIN_DIR", BIN_DIR), ("ROUTED_CNI_CONF_DIR", CONF_DIR)):
            want = env.get(var, {}).get("value", host_dir).rstrip("/")
            at = [m for n, m in mounts.items() if host_paths.get(n) == host_dir]
            if check(len(at) == 1, f"{name}: {host_dir} is not mounted (once)"):
                check(at[0]["mountPath"].rstrip("/") == want,
                      f"{name}: {host_dir} mounted at {at[0]['mountPath']} but {var} makes install write to {want}")
                check(not at[0].get("readOnly"), f"{name}: {host_dir} mounted read-only, install writes it")

        # The plugin's store at the node's own path (see STORE), writable (policy-namespaces),
        # and no data dir elsewhere: install would write it into the conflist for the plugin.
        store_at = [m for n, m in mounts.items() if host_paths.get(n) == STORE]
        if check(len(store_at) == 1, f"{name}: {STORE} (the plugin's store) is not mounted (once)"):
            check(store_at[0]["mountPath"].rstrip("/") == STORE,
                  f"{name}: {STORE} mounted at {store_at[0]['mountPath']}, want the same path as on the node")
            check(not store_at[0].get("readOnly"),
                  f"{name}: {STORE} mounted read-only, the agent writes policy-namespaces there")
        data_dir = env.get("ROUTED_CNI_DATA_DIR")
        check(data_dir is None or data_dir.get("value", "").rstrip("/") == STORE,
              f"{name}: ROUTED_CNI_DATA_DIR {data_dir}, want unset (the plugin's default {STORE})")
        # Enforcement is on or off by choice, written out for the operator to change.
        metrics = env.get("ROUTED_CNI_METRICS_ADDR", {}).get("value")
        check(metrics == f"0.0.0.0:{METRICS_PORT}",
              f"{name}: ROUTED_CNI_METRICS_ADDR {metrics}, want 0.0.0.0:{METRICS_PORT} (what the annotations point at)")
        health_addr = env.get("ROUTED_CNI_HEALTH_ADDR", {}).get("value", "127.0.0.1:9465")
        check(health_addr.startswith("127.0.0.1:"),
              f"{name}: ROUTED_CNI_HEALTH_ADDR {health_addr} opens /policy (the node's pods) to the network")
        policy = env.get("ROUTED_CNI_NETWORK_POLICY")
        check(policy is not None and policy.get("value") in ("true", "false"),
              f"{name}: ROUTED_CNI_NETWORK_POLICY {policy}, want an explicit \"true\" or \"false\"")

        # The udev and NetworkManager dirs install writes must be those of the node's /etc.
        etc_at = [m for n, m in mounts.items() if host_paths.get(n) == NODE_ETC]
        if check(len(etc_at) == 1, f"{name}: {NODE_ETC} is not mounted (once)"):
            base = etc_at[0]["mountPath"].rstrip("/")
            check(not etc_at[0].get("readOnly"), f"{name}: {NODE_ETC} mounted read-only, install writes it")
            for var, sub in NODE_ETC_DIRS:
                got = env.get(var, {}).get("value")
                check(got is not None and got.rstrip("/") == f"{base}/{sub}",
                      f"{name}: {var} is {got!r}, want {base}/{sub} (the node's /etc/{sub})")

        # The API endpoint that does not need kube-proxy: present for the operator to set,
        # empty (the Service fallback) or an https:// URL (the agent refuses anything else).
        api = env.get("ROUTED_CNI_API_SERVER")
        if check(api is not None and "valueFrom" not in api,
                 f"{name}: no ROUTED_CNI_API_SERVER value (the control-plane endpoint, empty for the Service)"):
            value = api.get("value", "")
            check(value == "" or value.startswith("https://"),
                  f"{name}: ROUTED_CNI_API_SERVER {value!r} is neither empty nor an https:// URL")

        # Liveness and startup on /healthz (the agent's own loop), never /readyz (the API
        # server's reachability): an API outage must not restart every agent at once.
        for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                            ("readinessProbe", "/readyz")):
            get = (c.get(probe) or {}).get("httpGet") or {}
            check(get.get("host") == "127.0.0.1" and get.get("port") == HEALTH_PORT and get.get("path") == path,
                  f"{name}: {probe} is not httpGet 127.0.0.1:{HEALTH_PORT}{path} ({get})")
        startup = c.get("startupProbe") or {}
        window = startup.get("failureThreshold", 3) * startup.get("periodSeconds", 10)
        check(window >= FIRST_PASS_SECONDS,
              f"{name}: startupProbe allows {window}s (failureThreshold x periodSeconds), the agent's first pass may take {FIRST_PASS_SECONDS}s")
        res = c.get("resources") or {}
        check("memory" in res.get("limits", {}) and {"cpu", "memory"} <= set(res.get("requests", {})),
              f"{name}: resources need cpu+memory requests and a memory limit")


def main(paths):
    docs = load(paths)
    check_rbac(docs)
    check_daemonset(docs)
    kinds = sorted(d["kind"] for d in docs)
    for e in errors:
        print(f"check-manifests: FAIL: {e}")
    if errors:
        return 1
    print(f"check-manifests: ok: {len(docs)} objects ({', '.join(kinds)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
