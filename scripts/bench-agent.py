#!/usr/bin/env python3
"""The measuring half of `sudo scripts/bench.sh agent` (scripts/bench-agent.sh builds the world:
node A's namespace, the stand-in API server in a namespace of its own, the agent, the real pods).

Subcommands (standard library only; run with /usr/bin/python3):
  local      which pods of the synthetic cluster run on node A (namespace name per line), so
             the shell can ADD them for real before the cluster is written
  gen        write the synthetic cluster into the stand-in's directories as List files: Nodes
             (node A's own object plus NODES-1 others, each with a podCIDR and an InternalIP on
             node A's link), and with --pods: Namespaces, Pods (node A's with the addresses
             their ADD returned) and NetworkPolicies; objects are the size real ones are
             (status, images, conditions, owner references, container specs)
  churn      a steady churn for N seconds: nodes joining and leaving, status-only node updates,
             pods created, made Running and deleted; one small file per change; records what it
             wrote (event times come from the stand-in's log)
  latency    event -> programmed from the stand-in's event log, the kernel's route monitor
             (routes of joining/leaving nodes) and nft's monitor (set elements of pods' addresses)
  report     the markdown section from the results directory (first syncs, churn)

Nothing here creates a namespace or touches a network: the shell script does.
"""

import argparse
import datetime
import ipaddress
import json
import os
import random
import re
import statistics
import sys
import time

NODE_A = "node-a"
NODE_A_IP = "100.64.0.1"
POD_CIDR_BASE = int(ipaddress.IPv4Address("10.64.0.0"))  # node i owns 10.64.0.0/24 + i
NODE_IP_BASE = int(ipaddress.IPv4Address("100.64.0.1"))  # node i is 100.64.0.1 + i
STATUS_CHURN_NODES = 100  # nodes 1..100: the ones whose status the churn updates
TEAMS = 100  # namespaces share a team label in groups of NAMESPACES / TEAMS
ENVS = ["prod", "staging", "dev"]
TIERS = ["web", "api", "db"]
IMAGES = [("registry.k8s.io/pause", "3.10", 320000), ("docker.io/library/nginx", "1.27.3", 72000000),
          ("quay.io/prometheus/node-exporter", "v1.8.2", 11200000),
          ("registry.k8s.io/kube-proxy", "v1.31.4", 30200000),
          ("docker.io/library/redis", "7.4.1", 45800000), ("docker.io/library/postgres", "16.6", 151000000),
          ("ghcr.io/example/api", "2.14.0", 88000000), ("ghcr.io/example/web", "5.3.1", 64000000),
          ("registry.k8s.io/coredns/coredns", "v1.11.3", 18500000),
          ("docker.io/grafana/promtail", "3.3.0", 92000000)]


def log(msg):
    print("[bench agent %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def write_json(path, obj):
    """Atomically, as the stand-in expects (a dot file renamed into place)."""
    d, base = os.path.split(path)
    tmp = os.path.join(d, "." + base + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
    os.rename(tmp, path)


def node_name(i):
    return NODE_A if i == 0 else "node-%05d" % i


def node_cidr(i):
    return "%s/24" % ipaddress.IPv4Address(POD_CIDR_BASE + (i << 8))


def node_ip(i):
    return str(ipaddress.IPv4Address(NODE_IP_BASE + i))


def ns_name(n):
    return "ns-%04d" % n


def stamp(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def node_object(i, cidr=None):
    """A Node as kubelet and the controllers leave it (~5 kB: images, conditions, nodeInfo)."""
    name = node_name(i)
    uid = "%08x-0000-4000-8000-%012x" % (i, i)
    now = stamp(time.time())
    return {
        "metadata": {
            "name": name, "uid": uid, "creationTimestamp": "2026-11-20T09:14:02Z",
            "labels": {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name,
                       "kubernetes.io/os": "linux", "node.kubernetes.io/instance-type": "m6i.2xlarge",
                       "topology.kubernetes.io/region": "eu-west-1",
                       "topology.kubernetes.io/zone": "eu-west-1%s" % "abc"[i % 3]},
            "annotations": {"kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock",
                            "node.alpha.kubernetes.io/ttl": "0",
                            "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
        },
        "spec": {"podCIDR": cidr or node_cidr(i), "podCIDRs": [cidr or node_cidr(i)],
                 "providerID": "aws:///eu-west-1a/i-%017x" % i},
        "status": {
            "addresses": [{"type": "InternalIP", "address": node_ip(i)},
                          {"type": "Hostname", "address": name},
                          {"type": "InternalDNS", "address": "ip-%s.eu-west-1.compute.internal"
                           % node_ip(i).replace(".", "-")}],
            "allocatable": {"cpu": "7910m", "ephemeral-storage": "95491281146", "hugepages-1Gi": "0",
                            "hugepages-2Mi": "0", "memory": "31619112Ki", "pods": "110"},
            "capacity": {"cpu": "8", "ephemeral-storage": "104845292Ki", "hugepages-1Gi": "0",
                         "hugepages-2Mi": "0", "memory": "32636968Ki", "pods": "110"},
            "conditions": [
                {"type": t, "status": s, "reason": r, "message": m,
                 "lastHeartbeatTime": now, "lastTransitionTime": "2026-11-20T09:14:31Z"}
                for t, s, r, m in [
                    ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                    ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                    ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                    ("Ready", "True", "KubeletReady", "kubelet is posting ready status")]],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "images": [{"names": ["%s@sha256:%064x" % (img, i * 31 + k), "%s:%s" % (img, tag)],
                        "sizeBytes": size} for k, (img, tag, size) in enumerate(IMAGES)],
            "nodeInfo": {"architecture": "amd64", "bootID": uid, "containerRuntimeVersion": "containerd://1.7.24",
                         "kernelVersion": "6.1.0-28-amd64", "kubeProxyVersion": "v1.31.4",
                         "kubeletVersion": "v1.31.4", "machineID": "%032x" % i, "operatingSystem": "linux",
                         "osImage": "Debian GNU/Linux 12 (bookworm)", "systemUUID": uid},
        },
    }


class Shape:
    """Who runs where: NODES nodes, NAMESPACES namespaces of PER_NS pods; pod k (global index)
    runs on node k % NODES, so node A (0) gets every NODES-th pod."""

    def __init__(self, nodes, namespaces, per_ns):
        self.nodes, self.namespaces, self.per_ns = nodes, namespaces, per_ns

    def pods(self):
        for n in range(self.namespaces):
            for j in range(self.per_ns):
                k = n * self.per_ns + j
                yield k, n, j, k % self.nodes

    def pod_name(self, j):
        return "%s-%05d" % (TIERS[j % 3], j)

    def pod_ip(self, k):
        node = k % self.nodes
        slot = k // self.nodes  # node-local index: 0 .. pods per node
        return str(ipaddress.IPv4Address(POD_CIDR_BASE + (node << 8) + 2 + slot))


def pod_object(shape, k, n, j, node, ip, t):
    ns, name = ns_name(n), shape.pod_name(j)
    tier = TIERS[j % 3]
    app = "app-%d" % (j % 10)
    return {
        "metadata": {
            "name": name, "namespace": ns, "uid": "%08x-1111-4000-8000-%012x" % (n, k),
            "creationTimestamp": "2026-11-21T10:00:00Z", "generateName": "%s-7d9f8c6b5-" % app,
            "labels": {"app": app, "tier": tier, "pod-template-hash": "7d9f8c6b5",
                       "app.kubernetes.io/part-of": "shop-%d" % (n % 7)},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-21T10:00:00Z"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "%s-7d9f8c6b5" % app,
                                 "uid": "%08x-2222-4000-8000-%012x" % (n, j % 10),
                                 "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": {
            "nodeName": node_name(node), "serviceAccountName": "default", "restartPolicy": "Always",
            "schedulerName": "default-scheduler", "dnsPolicy": "ClusterFirst",
            "terminationGracePeriodSeconds": 30, "priority": 0, "enableServiceLinks": True,
            "containers": [{
                "name": tier, "image": "ghcr.io/example/%s:2.14.0" % tier, "imagePullPolicy": "IfNotPresent",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                          {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
                "env": [{"name": "APP", "value": app}, {"name": "TIER", "value": tier}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http", "scheme": "HTTP"},
                                   "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1,
                                   "failureThreshold": 3},
                "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                                  "readOnly": True}],
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
            }],
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                             "tolerationSeconds": 300},
                            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
                             "tolerationSeconds": 300}],
            "volumes": [{"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
        },
        "status": {
            "phase": "Running", "qosClass": "Burstable", "hostIP": node_ip(node),
            "hostIPs": [{"ip": node_ip(node)}], "podIP": ip, "podIPs": [{"ip": ip}],
            "startTime": stamp(t),
            "conditions": [{"type": c, "status": "True", "lastProbeTime": None,
                            "lastTransitionTime": stamp(t)}
                           for c in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady",
                                     "PodScheduled")],
            "containerStatuses": [{"name": tier, "ready": True, "restartCount": 0, "started": True,
                                   "image": "ghcr.io/example/%s:2.14.0" % tier,
                                   "imageID": "ghcr.io/example/%s@sha256:%064x" % (tier, j % 3),
                                   "containerID": "containerd://%064x" % k,
                                   "state": {"running": {"startedAt": stamp(t)}}}],
        },
    }


def namespace_object(n):
    return {"metadata": {"name": ns_name(n), "uid": "%08x-3333-4000-8000-000000000000" % n,
                         "labels": {"team": "team-%02d" % (n % TEAMS), "env": ENVS[n % 3]}}}


def policy_objects(n):
    """Two per namespace, of the kinds clusters have: deny by default in both directions with
    DNS let out, and the web tier open to its namespace and its team's namespaces on a named
    port, talking to the api tier."""
    ns = ns_name(n)
    dns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
           "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
    return [
        {"metadata": {"name": "default-deny", "namespace": ns},
         "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                  "egress": [{"to": [dns], "ports": [{"protocol": "UDP", "port": 53},
                                                      {"protocol": "TCP", "port": 53}]}]}},
        {"metadata": {"name": "web", "namespace": ns},
         "spec": {"podSelector": {"matchLabels": {"tier": "web"}}, "policyTypes": ["Ingress", "Egress"],
                  "ingress": [{"from": [{"podSelector": {}},
                                        {"namespaceSelector": {"matchLabels": {"team": "team-%02d" % (n % TEAMS)}},
                                         "podSelector": {"matchLabels": {"tier": "web"}}}],
                               "ports": [{"protocol": "TCP", "port": "http"}, {"protocol": "TCP", "port": 8443}]}],
                  "egress": [{"to": [{"podSelector": {"matchLabels": {"tier": "api"}}}],
                              "ports": [{"protocol": "TCP", "port": 8080}]}]}},
    ]


def kube_system():
    """kube-system with its two DNS pods (on nodes 1 and 2), which every namespace's egress allows."""
    ns = {"metadata": {"name": "kube-system"}}
    pods = []
    for i in (1, 2):
        ip = str(ipaddress.IPv4Address(POD_CIDR_BASE + (i << 8) + 250))
        pods.append({"metadata": {"name": "coredns-%d" % i, "namespace": "kube-system",
                                  "labels": {"k8s-app": "kube-dns"}},
                     "spec": {"nodeName": node_name(i), "containers": [{"name": "coredns", "ports": [
                         {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
                     "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
    return ns, pods


def cmd_local(a):
    shape = Shape(a.nodes, a.namespaces, a.per_ns)
    for k, n, j, node in shape.pods():
        if node == 0:
            print(ns_name(n), shape.pod_name(j))


def cmd_gen(a):
    shape = Shape(a.nodes, a.namespaces, a.per_ns)
    t = time.time()
    nodes = [node_object(i, a.node_a_cidr if i == 0 else None) for i in range(a.nodes)]
    # Node A (whose status the agent patches) and the nodes whose status the churn updates in
    # files of their own, so neither rewrites the file of thousands.
    for i in range(min(a.nodes, 1 + STATUS_CHURN_NODES)):
        write_json(os.path.join(a.api, "nodes", "%s.json" % node_name(i)), nodes[i])
    write_json(os.path.join(a.api, "nodes", "all.json"),
               {"kind": "List", "items": nodes[1 + STATUS_CHURN_NODES:]})
    meta = {"nodes": a.nodes}
    if a.pods:
        local = {}
        with open(a.local_pods) as f:
            for line in f:
                ns, name, ip = line.split()[:3]
                local[(ns, name)] = ip
        sys_ns, dns_pods = kube_system()
        write_json(os.path.join(a.api, "namespaces", "all.json"),
                   {"kind": "List", "items": [sys_ns] + [namespace_object(n) for n in range(a.namespaces)]})
        # One file per 50 namespaces: the churn rewrites only the file of the namespace it changes.
        chunk, count = [], 0
        for k, n, j, node in shape.pods():
            ip = local.get((ns_name(n), shape.pod_name(j))) if node == 0 else shape.pod_ip(k)
            if ip is None:
                sys.exit("bench-agent.py gen: local pod %s/%s was not added" % (ns_name(n), shape.pod_name(j)))
            chunk.append(pod_object(shape, k, n, j, node, ip, t))
            count += 1
            if j == shape.per_ns - 1 and (n % 50 == 49 or n == shape.namespaces - 1):
                write_json(os.path.join(a.api, "pods", "pods-%04d.json" % (n // 50)), {"kind": "List", "items": chunk})
                chunk = []
        write_json(os.path.join(a.api, "pods", "kube-system.json"), {"kind": "List", "items": dns_pods})
        policies = [p for n in range(a.namespaces) for p in policy_objects(n)]
        write_json(os.path.join(a.api, "networkpolicies", "all.json"), {"kind": "List", "items": policies})
        meta.update(pods=count + len(dns_pods), namespaces=a.namespaces + 1, policies=len(policies),
                    local_pods=len(local))
    sizes = {}
    for kind in ("nodes", "pods", "namespaces", "networkpolicies"):
        d = os.path.join(a.api, kind)
        sizes[kind] = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)) if os.path.isdir(d) else 0
    meta["file_bytes"] = sizes
    with open(a.meta, "w") as f:
        json.dump(meta, f)
    log("wrote %s in %.1f s" % (", ".join("%s %s" % (v, k) for k, v in meta.items() if k != "file_bytes"),
                                time.time() - t))


def cmd_churn(a):
    """A steady churn, one tick every 0.2 s: per second --node-joins new nodes (each leaving
    again after --node-life seconds), --status-updates status-only node updates (kubelet's
    five-minute status report of a 5,000-node cluster is ~17/s), --pod-creates pods created
    Pending on another node, given an address and Running one second later, deleted after
    --pod-life seconds. Half of the pods go into namespaces where node A has a web pod, whose
    ingress set they join (they need programming); the rest go anywhere. Every action is one
    small file written or removed; the stand-in's log has the event times."""
    shape = Shape(a.nodes, a.namespaces, a.per_ns)
    local_web_ns = []
    with open(a.local_pods) as f:
        for line in f:
            ns, name = line.split()[:2]
            if name.startswith("web-"):
                local_web_ns.append(ns)
    rng = random.Random(7)
    tick = 0.2
    start = time.time()
    end = start + a.seconds
    joined, pods, actions = [], [], []
    next_node, next_pod = a.nodes, 0
    credit = {"join": 0.0, "status": 0.0, "pod": 0.0}
    status_i = 0

    def act(kind, **kw):
        actions.append(dict(t=time.time(), kind=kind, **kw))

    while time.time() < end:
        t_tick = time.time()
        credit["join"] += a.node_joins * tick
        credit["status"] += a.status_updates * tick
        credit["pod"] += a.pod_creates * tick if a.namespaces else 0
        while credit["join"] >= 1:
            credit["join"] -= 1
            i = next_node
            next_node += 1
            write_json(os.path.join(a.api, "nodes", "churn-%s.json" % node_name(i)), node_object(i))
            joined.append((t_tick, i))
            act("node-join", name=node_name(i))
        while joined and joined[0][0] + a.node_life <= t_tick:
            _, i = joined.pop(0)
            os.unlink(os.path.join(a.api, "nodes", "churn-%s.json" % node_name(i)))
            act("node-leave", name=node_name(i))
        while credit["status"] >= 1:
            credit["status"] -= 1
            i = 1 + status_i % STATUS_CHURN_NODES
            status_i += 1
            write_json(os.path.join(a.api, "nodes", "%s.json" % node_name(i)), node_object(i))
            act("node-status", name=node_name(i))
        while credit["pod"] >= 1:
            credit["pod"] -= 1
            k = next_pod
            next_pod += 1
            relevant = bool(local_web_ns) and k % 2 == 0
            ns_i = int(rng.choice(local_web_ns)[3:]) if relevant else rng.randrange(a.namespaces)
            node = 1 + k % (a.nodes - 1)
            ip = str(ipaddress.IPv4Address(POD_CIDR_BASE + (node << 8) + 200 + (k // (a.nodes - 1)) % 50))
            obj = pod_object(shape, 10 ** 7 + k, ns_i, 3 * k, node, ip, t_tick)  # j = 3k: tier web
            obj["metadata"]["name"] = "churn-%06d" % k
            pending = json.loads(json.dumps(obj))
            pending["status"] = {"phase": "Pending", "qosClass": "Burstable"}
            path = os.path.join(a.api, "pods", "churn-%06d.json" % k)
            write_json(path, pending)
            pods.append({"k": k, "path": path, "obj": obj, "born": t_tick, "running": False})
            act("pod-create", name="%s/churn-%06d" % (ns_name(ns_i), k), relevant=relevant)
        for p in pods:
            if not p["running"] and p["born"] + 1.0 <= t_tick:
                write_json(p["path"], p["obj"])
                p["running"] = True
                act("pod-running", name="%s/%s" % (p["obj"]["metadata"]["namespace"], p["obj"]["metadata"]["name"]))
        while pods and pods[0]["born"] + a.pod_life <= t_tick:
            p = pods.pop(0)
            os.unlink(p["path"])
            act("pod-delete", name="%s/%s" % (p["obj"]["metadata"]["namespace"], p["obj"]["metadata"]["name"]))
        time.sleep(max(0.0, tick - (time.time() - t_tick)))
    with open(a.out, "w") as f:
        json.dump({"start": start, "end": time.time(), "actions": actions}, f)
    counts = {}
    for x in actions:
        counts[x["kind"]] = counts.get(x["kind"], 0) + 1
    log("churn: %s in %.0f s" % (", ".join("%d %s" % (v, k) for k, v in sorted(counts.items())), a.seconds))


EVENT_RE = re.compile(r"event (\d+) (ADDED|MODIFIED|DELETED) (\w+) (\S+) at ([\d.]+)")
AGENT_TIME_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z")


def agent_time(line):
    m = AGENT_TIME_RE.match(line)
    if not m:
        return None
    return datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def percentile(xs, q):
    xs = sorted(xs)
    if not xs:
        return None
    i = min(len(xs) - 1, max(0, int(round(q * (len(xs) - 1)))))
    return xs[i]


def cmd_latency(a):
    """Event -> programmed for the churn: pods that join or leave a set of node A (Running with
    an address, deleted) from the stand-in's event time to the first "policy applied" line whose
    "through resourceVersion" includes the event; nodes joining and leaving from the event to
    the agent's "route added/removed" line naming the node."""
    churn = json.load(open(a.churn))
    relevant = {x["name"] for x in churn["actions"] if x["kind"] == "pod-create" and x.get("relevant")}
    events = []  # (rv, type, kind, name, t)
    with open(a.server_log) as f:
        for line in f:
            m = EVENT_RE.search(line)
            if m and float(m.group(5)) >= churn["start"] - 0.5:
                events.append((int(m.group(1)), m.group(2), m.group(3), m.group(4), float(m.group(5))))
    applied, routes = [], {}
    with open(a.agent_log) as f:
        for line in f:
            t = agent_time(line)
            if t is None:
                continue
            m = re.search(r"policy applied: .*through resourceVersion (\d+)", line)
            if m:
                applied.append((t, int(m.group(1))))
            m = re.search(r"route (added|removed): .*\(node ([^\s,)]+)", line)
            if m:
                routes.setdefault((m.group(1), m.group(2)), t)
    pod_lat, node_lat, missed = [], [], 0
    for rv, typ, kind, name, t in events:
        if kind == "Pod" and name in relevant and typ in ("MODIFIED", "DELETED"):
            done = next((ta for ta, through in applied if through >= rv and ta >= t - 0.01), None)
            if done is None:
                missed += 1
            else:
                pod_lat.append(done - t)
        elif kind == "Node" and name.startswith("node-") and typ in ("ADDED", "DELETED"):
            key = ("added" if typ == "ADDED" else "removed", name)
            done = routes.get(key)
            if done is None or done < t - 0.01:
                if int(name[5:]) >= a.nodes:  # a churn node: its route must come and go
                    missed += 1
                continue
            node_lat.append(done - t)
    ms = lambda x: None if x is None else round(x * 1000, 1)
    out = {
        "events": len(events),
        "pod": {"n": len(pod_lat), "median_ms": ms(percentile(pod_lat, 0.5)), "p99_ms": ms(percentile(pod_lat, 0.99)),
                "max_ms": ms(max(pod_lat) if pod_lat else None)},
        "node": {"n": len(node_lat), "median_ms": ms(percentile(node_lat, 0.5)),
                 "p99_ms": ms(percentile(node_lat, 0.99)), "max_ms": ms(max(node_lat) if node_lat else None)},
        "missed": missed,
        "applies": sum(1 for t, _ in applied if churn["start"] <= t <= churn["end"] + 2),
    }
    with open(a.out, "w") as f:
        json.dump(out, f)
    log("latency: %s" % json.dumps(out))


def read_env(path):
    out = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.strip().partition("=")
            out[k] = v
    return out


def first_line_time(log_path, pattern):
    with open(log_path) as f:
        for line in f:
            if re.search(pattern, line):
                return agent_time(line)
    return None


def nft_counts(path):
    objs = json.load(open(path))["nftables"]
    c = {"chains": 0, "sets": 0, "rules": 0, "elements": 0}
    for o in objs:
        if "chain" in o:
            c["chains"] += 1
        elif "rule" in o:
            c["rules"] += 1
        elif "set" in o or "map" in o:
            c["sets"] += 1
            c["elements"] += len((o.get("set") or o.get("map")).get("elem") or [])
    return c


def cmd_report(a):
    r = a.results
    meta = json.load(open(os.path.join(r, "meta.json")))
    env = json.load(open(os.path.join(r, "env.json")))
    mib = lambda kib: float(kib) / 1024
    out = []
    w = out.append
    w("Run %s, %s, kernel %s, %s CPUs, load at start %s.\n" % (env["date"], env["rev"], env["kernel"], env["cpus"], env["load"]))
    w("Cluster served by the stand-in: %d Nodes%s. JSON as served: Nodes %.1f MB%s.\n" % (
        meta["nodes"],
        ", %d Pods in %d namespaces, %d NetworkPolicies, %d of the pods on node A (real, ADDed)" % (
            meta["pods"], meta["namespaces"], meta["policies"], meta["local_pods"]) if "pods" in meta else "",
        meta["file_bytes"]["nodes"] / 1e6,
        ", Pods %.0f MB" % (meta["file_bytes"]["pods"] / 1e6) if meta["file_bytes"].get("pods") else ""))
    w("### First complete sync, from a clean node\n")
    w("| agent | routes synced | policy applied | peak RSS | RSS after | CPU (agent + nft) | received from the API | routes | FDB | neighbours |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    names = {"never-nopolicy": "`--encapsulation never`, policy off", "vxlan-nopolicy": "`vxlan`, policy off",
             "crosssubnet-nopolicy": "`crosssubnet` (all on-link), policy off", "vxlan-policy": "`vxlan`, policy on"}
    for name in ("never-nopolicy", "vxlan-nopolicy", "crosssubnet-nopolicy", "vxlan-policy"):
        path = os.path.join(r, "sync-%s.env" % name)
        if not os.path.exists(path):
            continue
        e = read_env(path)
        start = float(e["start"])
        log_path = os.path.join(r, "agent-%s.log" % name)
        routes_t = first_line_time(log_path, r"routes synced: .* to \d+ other node")
        policy_t = first_line_time(log_path, r"policy applied")
        w("| %s | %.2f s | %s | %.1f MiB | %.1f MiB | %.2f s | %.1f MB | %s | %s | %s |" % (
            names[name], routes_t - start, "%.2f s" % (policy_t - start) if policy_t else "-",
            mib(e["hwm_kib"]), mib(e["rss_kib"]), int(e["cpu_ticks"]) / int(e["hz"]),
            int(e["rx_bytes"]) / 1e6, e["routes"], e["fdb"], e["neigh"]))
    w("")
    fetch = [json.loads(l) for l in open(os.path.join(r, "fetch.jsonl"))]
    w("The stand-in alone, the same lists fetched by curl from node A just before: %s. The agent's "
      "first sync includes that transfer (the stand-in is single-threaded Python)." % "; ".join(
          "%s %.1f MB in %.2f s" % (f["path"], f["bytes"] / 1e6, f["seconds"]) for f in fetch))
    nft = os.path.join(r, "nft-vxlan-policy.json")
    if os.path.exists(nft):
        c = nft_counts(nft)
        w("\nnftables on node A with policy on: %d chains, %d sets and maps, %d rules, %d elements." % (
            c["chains"], c["sets"], c["rules"], c["elements"]))
    ch = read_env(os.path.join(r, "churn.env"))
    churn = json.load(open(os.path.join(r, "churn.json")))
    lat = json.load(open(os.path.join(r, "latency.json")))
    kinds = {}
    for x in churn["actions"]:
        kinds[x["kind"]] = kinds.get(x["kind"], 0) + 1
    secs = churn["end"] - churn["start"]
    events = int(ch["events"])
    cpu_ms = int(ch["cpu_ticks"]) * 1000 / int(ch["hz"])
    w("\n### Steady churn (`vxlan`, policy %s), %.0f s\n" % ("on" if "pods" in meta else "off", secs))
    w("Changes written: %s; %d API events (%.0f/s)." % (
        ", ".join("%d %s" % (v, k) for k, v in sorted(kinds.items())), events, events / secs))
    w("")
    w("| measure | value |")
    w("|---|---|")
    w("| agent CPU (with its nft children) per 1,000 events | %.0f ms (%.1f%% of one core over the run) |" % (
        cpu_ms * 1000 / max(events, 1), cpu_ms / 10 / secs))
    w("| received from the API server | %.1f MB (%.1f kB per event) |" % (int(ch["rx_bytes"]) / 1e6, int(ch["rx_bytes"]) / 1e3 / max(events, 1)))
    for k, label in (("pod", "pod event → set programmed (Running with an address, deleted)"),
                     ("node", "node join/leave → route added/removed")):
        d = lat[k]
        if d["n"]:
            w("| %s, n=%d | median %.0f ms, p99 %.0f ms, max %.0f ms |" % (label, d["n"], d["median_ms"], d["p99_ms"], d["max_ms"]))
    w("| events whose programming was not found | %d |" % lat["missed"])
    w("| policy applies during the churn | %d |" % lat["applies"])
    w("| RSS after the churn (peak over the whole run) | %.1f MiB (%.1f MiB) |" % (mib(ch["rss_kib"]), mib(ch["hwm_kib"])))
    w("")
    with open(a.out, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("local", "gen"):
        s = sub.add_parser(name)
        s.add_argument("--nodes", type=int, default=5000)
        s.add_argument("--namespaces", type=int, default=1000)
        s.add_argument("--per-ns", type=int, default=150)
    s = sub.choices["gen"]
    s.add_argument("--api", required=True)
    s.add_argument("--pods", action="store_true")
    s.add_argument("--local-pods")
    s.add_argument("--node-a-cidr")
    s.add_argument("--meta", required=True)
    s = sub.add_parser("churn")
    s.add_argument("--nodes", type=int, default=5000)
    s.add_argument("--namespaces", type=int, default=1000)
    s.add_argument("--per-ns", type=int, default=150)
    s.add_argument("--api", required=True)
    s.add_argument("--local-pods", required=True)
    s.add_argument("--seconds", type=float, default=60)
    s.add_argument("--node-joins", type=float, default=1)
    s.add_argument("--node-life", type=float, default=10)
    s.add_argument("--status-updates", type=float, default=17)
    s.add_argument("--pod-creates", type=float, default=20)
    s.add_argument("--pod-life", type=float, default=10)
    s.add_argument("--out", required=True)
    s = sub.add_parser("latency")
    s.add_argument("--nodes", type=int, default=5000)
    s.add_argument("--churn", required=True)
    s.add_argument("--server-log", required=True)
    s.add_argument("--agent-log", required=True)
    s.add_argument("--out", required=True)
    s = sub.add_parser("report")
    s.add_argument("--results", required=True)
    s.add_argument("--out", required=True)
    a = p.parse_args()
    {"local": cmd_local, "gen": cmd_gen, "churn": cmd_churn, "latency": cmd_latency,
     "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
