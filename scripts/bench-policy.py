#!/usr/bin/env python3
"""The measuring half of `sudo scripts/bench.sh --policy` (scripts/bench-policy.sh builds the
world: two node namespaces, the stand-in API server, the agents, the real pods).

Subcommands (standard library only; run with /usr/bin/python3):
  gen        write the synthetic cluster into the stand-in's directories: namespaces, 1,000 Pod
             objects (the real local pods with the addresses their ADD returned, the rest on
             "other nodes": objects with addresses in podCIDRs no node here owns), 200
             NetworkPolicies of the kinds clusters have, and the 1,000 policies of the
             throughput test (written aside, moved in and out by bench-policy.sh)
  latency    change one object at a time (a local pod's label, a new policy, a deleted policy,
             a namespace's label, a remote pod's label), and time API event -> "policy applied"
  cni-times  CNI ADD/DEL wall time of the installed binary (runs inside node A's namespace)
  serve      TCP accept-and-close server (connection-rate test; runs in the server pod)
  connect    TCP connect/reset loop for N seconds, prints connections/s (runs in a client pod)
  probe      one TCP connect with a 1 s timeout: exit 0 when it connected
  nft-counts chains, sets and maps, rules and elements of table inet routed-cni (JSON on stdin)
  report     the markdown section from the results directory

Nothing here creates a namespace or touches a network: the shell script does, and runs the
subcommands that need a namespace with `ip netns exec`.
"""

import argparse
import datetime
import ipaddress
import json
import os
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time

LOCAL_NAMESPACES = 10  # ns-00 .. ns-09 hold the local pods (and most policies)
NAMESPACES = 50
TEAMS = ["red", "green", "blue", "gray"]
ENVS = ["prod", "staging", "dev"]
APPS = ["web", "api", "db", "worker", "cache"]


def log(msg):
    print("[bench --policy %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def write_json(path, obj):
    """Atomically, as the stand-in expects (a dot file renamed into place)."""
    d, base = os.path.split(path)
    tmp = os.path.join(d, "." + base + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.rename(tmp, path)


# ----------------------------------------------------------------------------- the cluster

def ns_name(k):
    return "ns-%02d" % k


def namespace(name, labels):
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": dict(labels, **{"kubernetes.io/metadata.name": name})},
            "status": {"phase": "Active"}}


def ns_labels(k):
    return {"team": TEAMS[k % len(TEAMS)], "env": ENVS[k % len(ENVS)]}


def pod(ns, name, node, ips, labels, ports):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": node, "containers": [
                {"name": "main", "image": "registry.k8s.io/pause:3.10",
                 "ports": [{"name": n, "containerPort": p, "protocol": proto} for n, p, proto in ports]}]},
            "status": {"phase": "Running", "podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips]}}


def app_ports(app, i):
    """Named ports whose numbers differ between pods of one app (a named port is resolved per pod)."""
    return {
        "web": [("http", 8080 + i % 3, "TCP"), ("metrics", 9090, "TCP")],
        "api": [("http", 8081, "TCP"), ("grpc", 50051 + i % 2, "TCP"), ("metrics", 9090, "TCP")],
        "db": [("db", 5432 if i % 2 else 3306, "TCP"), ("metrics", 9187, "TCP")],
        "worker": [("metrics", 9100, "TCP")],
        "cache": [("cache", 6379, "TCP"), ("cache-udp", 11211, "UDP")],
    }[app]


def policy(ns, name, spec):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def sel(**labels):
    return {"matchLabels": labels}


def world_policy(ns, i, t):
    """Template t of 12, the kinds of policy real clusters carry, varied by i."""
    team = TEAMS[i % len(TEAMS)]
    name = "p%03d-%s" % (i, ["deny-in", "web-from-ns", "api-from-web", "db-from-api-and-backup",
                              "metrics-from-prod", "tls-from-ipblock", "deny-out", "dns-out",
                              "api-to-db", "https-out", "range-from-teams", "db-from-clients"][t])
    tcp = lambda p, **kw: dict({"protocol": "TCP", "port": p}, **kw)  # noqa: E731
    spec = [
        {"podSelector": {}, "policyTypes": ["Ingress"]},
        {"podSelector": sel(app="web"), "ingress": [{"from": [{"podSelector": {}}], "ports": [tcp(8080 + i % 3)]}]},
        {"podSelector": sel(app="api"), "ingress": [{"from": [{"podSelector": sel(app="web")}], "ports": [tcp("http")]}]},
        {"podSelector": sel(app="db"), "ingress": [
            {"from": [{"podSelector": sel(app="api")},
                      {"namespaceSelector": sel(team=team), "podSelector": sel(app="worker")}],
             "ports": [tcp("db")]}]},
        {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": sel(env="prod")}], "ports": [tcp("metrics")]}]},
        {"podSelector": sel(app="web"), "ingress": [
            {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.244.%d.0/24" % (10 + i % 40)]}}],
             "ports": [tcp(443)]}]},
        {"podSelector": {}, "policyTypes": ["Egress"]},
        {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
            {"to": [{"namespaceSelector": sel(**{"kubernetes.io/metadata.name": "kube-system"}),
                     "podSelector": sel(**{"k8s-app": "kube-dns"})}],
             "ports": [{"protocol": "UDP", "port": 53}, tcp(53)]}]},
        {"podSelector": sel(app="api"), "policyTypes": ["Egress"], "egress": [
            {"to": [{"namespaceSelector": sel(team=team), "podSelector": sel(app="db")}], "ports": [tcp("db")]}]},
        {"podSelector": sel(app="web"), "policyTypes": ["Egress"], "egress": [
            {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32", "10.0.0.0/8"]}}],
             "ports": [tcp(443)]}]},
        {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]}]},
         "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
             {"key": "team", "operator": "NotIn", "values": [team]}]}}],
             "ports": [tcp(30000 + i, endPort=30100 + i)]}]},
        {"podSelector": sel(app="db"), "ingress": [
            {"from": [{"namespaceSelector": {}, "podSelector": sel(role="db-client")}], "ports": [tcp("db")]}]},
    ][t]
    return policy(ns, name, spec)


def cmd_gen(a):
    api = a.api
    for d in ("pods", "namespaces", "networkpolicies"):
        os.makedirs(os.path.join(api, d), exist_ok=True)
    local = [line.split() for line in open(a.local_pods) if line.strip()]  # ns name ip4 ip6 node
    # namespaces: one file each (the namespace-label event rewrites one)
    for k in range(NAMESPACES):
        write_json(os.path.join(api, "namespaces", ns_name(k) + ".json"), namespace(ns_name(k), ns_labels(k)))
    for name in ("kube-system", "perf", "nopol"):
        write_json(os.path.join(api, "namespaces", name + ".json"), namespace(name, {}))
    pods = []
    for ns, name, ip4, ip6, node in local:
        labels = {"pod": name}
        if ns.startswith("ns-"):
            app = name.rsplit("-", 1)[0]
            labels.update(app=app, version="v1")
            ports = app_ports(app, int(ns[3:]))
        else:  # the throughput pods
            labels.update(role="perf-server" if name == "server" else "perf-client")
            ports = [("iperf", 5201, "TCP"), ("conn", 8000, "TCP")]
        write_json(os.path.join(api, "pods", "local-%s-%s.json" % (ns, name)),
                   pod(ns, name, node, [ip4, ip6], labels, ports))
    # the rest of the 1,000 on 40 other nodes (10.244.10.0/24 ...), 2 of them DNS
    remote = a.pods - len(local)
    for j in range(remote):
        node = j % 40
        host = 2 + j // 40
        ips = ["10.244.%d.%d" % (10 + node, host), "fd00:10:244:%x::%x" % (10 + node, host)]
        if j < 2:
            pods.append(pod("kube-system", "coredns-%d" % j, "node-%02d" % node, ips,
                            {"k8s-app": "kube-dns"}, [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")]))
            continue
        ns = ns_name(j % NAMESPACES)
        app = APPS[j % len(APPS)]
        labels = {"app": app, "version": "v%d" % (1 + j % 2)}
        if j % 10 == 3:
            labels["role"] = "db-client"
        p = pod(ns, "%s-r%d" % (app, j), "node-%02d" % node, ips, labels, app_ports(app, j))
        if j == 20:  # the remote pod whose label the latency test toggles: a file of its own
            write_json(os.path.join(api, "pods", "toggle-remote.json"), p)
            a_toggle = (ns, p["metadata"]["name"])
            continue
        pods.append(p)
    write_json(os.path.join(api, "pods", "world.json"), {"kind": "List", "items": pods})
    # 200 policies: 12 in each namespace with local pods, the rest 2 a namespace elsewhere
    pols = []
    for i in range(a.policies):
        if i < 12 * LOCAL_NAMESPACES:
            ns, t = ns_name(i // 12), i % 12
        else:
            j = i - 12 * LOCAL_NAMESPACES
            ns, t = ns_name(LOCAL_NAMESPACES + j // 2 % (NAMESPACES - LOCAL_NAMESPACES)), (1, 4, 8, 11)[j % 4]
        pols.append(world_policy(ns, i, t))
    # the policy the pod-label event makes a pod fall under (one of the 200)
    pols[-1] = policy("ns-00", "isolated-from-blue", {
        "podSelector": sel(isolate="yes"), "ingress": [{"from": [{"namespaceSelector": sel(team="blue")}]}]})
    write_json(os.path.join(api, "networkpolicies", "world.json"), {"kind": "List", "items": pols})
    # the throughput test's 1,000, all selecting the server: 999 allow other peers, the last in
    # name order allows the clients (so a new connection passes every other rule first)
    perf = []
    for i in range(a.perf_policies - 1):
        frm = [{"podSelector": sel(role="peer-%d" % i)}] if i % 3 else \
            [{"ipBlock": {"cidr": "192.168.%d.%d/32" % (i // 250, i % 250)}}]
        if i % 3 == 2:
            frm = [{"namespaceSelector": sel(team=TEAMS[i % 4]), "podSelector": sel(role="peer-%d" % i)}]
        perf.append(policy("perf", "allow-%04d" % i, {
            "podSelector": sel(role="perf-server"),
            "ingress": [{"from": frm, "ports": [{"protocol": "TCP", "port": 10000 + i}]}]}))
    perf.append(policy("perf", "zz-allow-clients", {
        "podSelector": sel(role="perf-server"),
        "ingress": [{"from": [{"podSelector": sel(role="perf-client")}],
                     "ports": [{"protocol": "TCP", "port": 5201}, {"protocol": "TCP", "port": "conn"}]}]}))
    write_json(a.perf_out, {"kind": "List", "items": perf})
    json.dump({"toggle_remote": list(a_toggle), "local": local, "pods": a.pods,
               "policies": len(pols), "perf_policies": len(perf), "namespaces": NAMESPACES + 3},
              open(a.meta, "w"))
    log("cluster: %d pods (%d local), %d namespaces, %d policies; %d throughput policies aside"
        % (a.pods, len(local), NAMESPACES + 3, len(pols), len(perf)))


# ----------------------------------------------------------------------------- latency

TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z .*policy applied: (.*)$")
EVENT = re.compile(r"^event (\d+) (\w+) (\w+) (\S+) at ([0-9.]+)$")


def parse_ts(s):
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%f").replace(
        tzinfo=datetime.timezone.utc).timestamp()


class Tail:
    """New lines of a log file since the last look."""

    def __init__(self, path):
        self.f = open(path)
        self.f.seek(0, 2)

    def lines(self):
        return self.f.read().splitlines()


def nft_map(netns):
    out = subprocess.run(["ip", "netns", "exec", netns, "nft", "-j", "list", "map", "inet", "routed-cni", "ingress"],
                         capture_output=True, text=True).stdout
    return out


def wait_applied(tail, deadline):
    """-> (timestamp, rest of the line) of the next 'policy applied' line, or None."""
    while True:
        for line in tail.lines():
            m = TS.match(line)
            if m:
                return parse_ts(m.group(1)), m.group(2)
        if time.time() >= deadline:
            return None
        time.sleep(0.005)


def cmd_latency(a):
    meta = json.load(open(a.meta))
    api = a.api
    server_pid = int(a.server_pid)
    agent = Tail(a.agent_log)
    server = Tail(a.server_log)
    ns_rt, name_rt = meta["toggle_remote"]
    remote_file = os.path.join(api, "pods", "toggle-remote.json")
    remote_obj = json.load(open(remote_file))
    web = next(p for p in meta["local"] if p[0] == "ns-00" and p[1].startswith("web"))
    web_file = os.path.join(api, "pods", "local-ns-00-%s.json" % web[1])
    web_obj = json.load(open(web_file))
    ns_file = os.path.join(api, "namespaces", "ns-05.json")
    ns_obj = json.load(open(ns_file))
    state = {"iso": False, "blue": ns_obj["metadata"]["labels"]["team"] == "blue", "db": "role" in remote_obj["metadata"]["labels"], "added": None}
    samples = []
    kinds = ["pod-label", "policy-add", "ns-label", "policy-delete", "remote-pod-label"]
    for n in range(a.events):
        kind = kinds[n % len(kinds)]
        cross = kind in ("pod-label", "policy-add", "policy-delete")  # these change the ingress map
        before = nft_map(a.netns) if cross else None
        if kind == "pod-label":
            state["iso"] = not state["iso"]
            labels = web_obj["metadata"]["labels"]
            labels.pop("isolate", None)
            if state["iso"]:
                labels["isolate"] = "yes"
            path, obj, what = web_file, web_obj, "Pod ns-00/" + web[1]
        elif kind == "policy-add":
            name = "bench-event-%d" % n
            obj = policy("ns-03", name, {"podSelector": sel(app="api"), "ingress": [
                {"from": [{"podSelector": sel(app="web")}], "ports": [{"protocol": "TCP", "port": 7000 + n}]}]})
            path, what = os.path.join(api, "networkpolicies", name + ".json"), "NetworkPolicy ns-03/" + name
            state["added"] = (path, what)
        elif kind == "policy-delete":
            path, what = state["added"]
            obj = None
        elif kind == "ns-label":
            state["blue"] = not state["blue"]
            ns_obj["metadata"]["labels"]["team"] = "blue" if state["blue"] else "gray"
            path, obj, what = ns_file, ns_obj, "Namespace ns-05"
        else:
            state["db"] = not state["db"]
            labels = remote_obj["metadata"]["labels"]
            labels.pop("role", None)
            if state["db"]:
                labels["role"] = "db-client"
            path, obj, what = remote_file, remote_obj, "Pod %s/%s" % (ns_rt, name_rt)
        agent.lines()
        server.lines()
        t_write = time.time()
        if obj is None:
            os.unlink(path)
        else:
            write_json(path, obj)
        os.kill(server_pid, signal.SIGHUP)
        seen_nft = got = None
        end = t_write + 10
        while time.time() < end:
            if got is None:
                got = wait_applied(agent, 0)  # one look, no waiting
            if cross and seen_nft is None and nft_map(a.netns) != before:
                seen_nft = time.time()
            # with the line seen, give the map 1 s to show the change (one nft exec every 10 ms)
            if got is not None and (not cross or seen_nft is not None or time.time() > got[0] + 1):
                break
            time.sleep(0.01 if cross else 0.005)
        if got is None:
            raise SystemExit("latency: no 'policy applied' within 10 s of the %s event (%s)" % (kind, what))
        applied, detail = got
        t_event = None
        kind_name, obj_name = what.split(" ", 1)
        for line in server.lines():
            m = EVENT.match(line)
            if m and m.group(3) == kind_name and m.group(4) == obj_name:
                t_event = float(m.group(5))
        if t_event is None:
            raise SystemExit("latency: the stand-in logged no event for %s" % what)
        samples.append({"kind": kind, "event_to_applied_ms": (applied - t_event) * 1000,
                        "write_to_event_ms": (t_event - t_write) * 1000,
                        "nft_seen_minus_applied_ms": None if seen_nft is None else (seen_nft - applied) * 1000,
                        "detail": detail})
        time.sleep(a.gap)
    json.dump(samples, open(a.out, "w"), indent=1)
    ms = [s["event_to_applied_ms"] for s in samples]
    log("latency: %d events, median %.0f ms, p99 %.0f ms" % (len(ms), statistics.median(ms), pctl(ms, 99)))


def pctl(xs, q):
    """Nearest-rank percentile (p99 of 50 samples is the largest but none)."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, -(-q * len(s) // 100) - 1))
    return s[k]


# ----------------------------------------------------------------------------- CNI ADD time

def cmd_cni_times(a):
    conf = json.load(open(a.conflist))
    plugin = dict(conf["plugins"][0], name=conf["name"], cniVersion=conf["cniVersion"])
    data = json.dumps(plugin).encode()
    netns = [l.strip() for l in open(a.netns_list) if l.strip()]
    out = {"namespace": a.namespace, "mode": a.mode, "n": a.n, "add_ms": [], "del_ms": []}
    for n in range(a.n):
        pod_ns = netns[n % len(netns)]
        cid = "%s-%s-%d" % (a.tag, a.namespace, n)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_CONTAINERID": cid,
               "CNI_NETNS": "/run/netns/" + pod_ns, "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni",
               "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=t%d" % (a.namespace, n)}
        for cmd in ("ADD", "DEL"):
            t = time.perf_counter_ns()
            r = subprocess.run([a.bin], input=data, env=dict(env, CNI_COMMAND=cmd), capture_output=True)
            dt = (time.perf_counter_ns() - t) / 1e6
            if r.returncode != 0:
                raise SystemExit("%s %s failed: %s %s" % (cmd, cid, r.stdout.decode(), r.stderr.decode()))
            out["add_ms" if cmd == "ADD" else "del_ms"].append(dt)
        time.sleep(a.gap)
    json.dump(out, open(a.out, "w"))
    log("cni %s %s: ADD median %.1f ms, DEL median %.1f ms" % (
        a.tag, a.namespace, statistics.median(out["add_ms"]), statistics.median(out["del_ms"])))


# ----------------------------------------------------------------------------- connection rate

def cmd_serve(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((a.addr, a.port))
    s.listen(4096)
    while True:
        try:
            c, _ = s.accept()
            c.close()
        except OSError:
            pass


def cmd_connect(a):
    """Connections completed (three-way handshake) per second. The client resets each one
    (SO_LINGER 0) so no TIME_WAIT piles up on its ports; every connection is a new conntrack
    entry whose first packet goes through the policy chains."""
    linger = struct.pack("ii", 1, 0)
    end = time.perf_counter() + a.seconds
    n = fails = 0
    start = time.perf_counter()
    while time.perf_counter() < end:
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        c.settimeout(1)
        try:
            c.connect((a.dst, a.port))
            n += 1
        except OSError:
            fails += 1
        c.close()
    took = time.perf_counter() - start
    print(json.dumps({"connections": n, "failures": fails, "seconds": took, "rate": n / took}))


def cmd_probe(a):
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c.settimeout(1)
    try:
        c.connect((a.dst, a.port))
    except OSError:
        sys.exit(1)


# ----------------------------------------------------------------------------- nft counts

def cmd_nft_counts(_a):
    doc = json.load(sys.stdin)["nftables"]
    counts = {"chains": 0, "sets": 0, "maps": 0, "rules": 0, "elements": 0}
    for item in doc:
        if "chain" in item:
            counts["chains"] += 1
        elif "rule" in item:
            counts["rules"] += 1
        elif "set" in item:
            counts["sets"] += 1
            counts["elements"] += len(item["set"].get("elem", []))
        elif "map" in item:
            counts["maps"] += 1
            counts["elements"] += len(item["map"].get("elem", []))
    print(json.dumps(counts))


# ----------------------------------------------------------------------------- report

def med(xs):
    return statistics.median(xs) if xs else float("nan")


def cmd_report(a):
    r = a.results
    meta = json.load(open(os.path.join(r, "meta.json")))
    env = json.load(open(os.path.join(r, "env.json")))
    lat = json.load(open(os.path.join(r, "latency.json")))
    counts = json.load(open(os.path.join(r, "nft-counts.json")))
    perf_counts = json.load(open(os.path.join(r, "nft-counts-perf.json")))
    applied = open(os.path.join(r, "applied-line.txt")).read().strip()
    perf_applied = open(os.path.join(r, "applied-line-perf.txt")).read().strip()
    tp = json.load(open(os.path.join(r, "throughput.json")))
    cni = {f[:-5]: json.load(open(os.path.join(r, f))) for f in os.listdir(r) if f.startswith("cni-")}
    o = []
    w = o.append
    w("Run: %s | routed-cni %s | kernel %s | %s CPUs | %s | load average before the run %s" % (
        env["date"], env["rev"], env["kernel"], env["cpus"], env["iperf"], env["load"]))
    w("")
    w("Cluster: %d Pod objects (%d real pods on node A, %d on node B, the rest on 40 \"other nodes\"),"
      % (meta["pods"], sum(1 for p in meta["local"] if p[4] == "node-a"),
         sum(1 for p in meta["local"] if p[4] == "node-b")))
    w("%d namespaces, %d NetworkPolicies (12 kinds: default deny in and out, pod and namespace selectors"
      % (meta["namespaces"], meta["policies"]))
    w("alone and ANDed, matchExpressions, named ports, endPort ranges, ipBlocks with except, DNS egress).")
    w("")
    w("### API event → rules active (%d events, one at a time, with that cluster)" % len(lat))
    w("")
    w("From the stand-in API server's event timestamp to the timestamp of node A's agent's")
    w("`policy applied` log line (logged when `nft` has committed the transaction). Includes the")
    w("watch delivery, the agent's 100 ms settle window, the compile and the nft transaction.")
    w("")
    w("| event | n | median ms | p99 ms | max ms | nft map changed − log line, median ms |")
    w("|---|---|---|---|---|---|")
    kinds = []
    for s in lat:
        if s["kind"] not in kinds:
            kinds.append(s["kind"])
    label = {"pod-label": "local pod label (falls under / out of a policy)",
             "policy-add": "new policy (selects local pods)", "policy-delete": "policy deleted",
             "ns-label": "namespace label (namespaceSelector peers)",
             "remote-pod-label": "label of a pod on another node (podSelector peers)"}
    for k in kinds + ["all"]:
        xs = [s["event_to_applied_ms"] for s in lat if k in ("all", s["kind"])]
        cross = [s["nft_seen_minus_applied_ms"] for s in lat
                 if k in ("all", s["kind"]) and s["nft_seen_minus_applied_ms"] is not None]
        w("| %s | %d | %.0f | %.0f | %.0f | %s |" % (
            "**all**" if k == "all" else label[k], len(xs), med(xs), pctl(xs, 99), max(xs),
            "%+.0f" % med(cross) if cross else "–"))
    wr = [s["write_to_event_ms"] for s in lat]
    w("")
    w("Write of the file → stand-in event (not included above): median %.0f ms. The last column is the"
      % med(wr))
    w("cross-check: for events that change which chain a pod jumps to, the harness polls `nft -j list")
    w("map inet routed-cni ingress` every 10 ms; the new content shows up that long after the log line")
    w("(positive: polling granularity and the exec; it is never seen before the line).")
    w("")
    w("### nftables at that size (node A)")
    w("")
    w("| state | chains | sets | maps | rules | elements (all sets and maps) |")
    w("|---|---|---|---|---|---|")
    w("| the 200 policies above, %d local pods | %d | %d | %d | %d | %d |" % (
        sum(1 for p in meta["local"] if p[4] == "node-a"), counts["chains"], counts["sets"], counts["maps"],
        counts["rules"], counts["elements"]))
    w("| the throughput test's %d policies (one pod selected) | %d | %d | %d | %d | %d |" % (
        meta["perf_policies"], perf_counts["chains"], perf_counts["sets"], perf_counts["maps"],
        perf_counts["rules"], perf_counts["elements"]))
    w("")
    w("Counted from `nft -j list table inet routed-cni`. The agent's own lines:")
    w("`%s`; `%s`." % (applied, perf_applied))
    w("")
    w("### Pod → pod with 0 and with %d policies (same run)" % meta["perf_policies"])
    w("")
    w("The server pod (node A) is selected by all %d policies of namespace `perf`: %d allow other"
      % (meta["perf_policies"], meta["perf_policies"] - 1))
    w("peers (pod selectors, namespace+pod selectors, /32 ipBlocks, each its own port), the last in name")
    w("order allows the clients. The states alternate every round (%d rounds, order flipped each round);"
      % tp["rounds"])
    w("each switch waits for the agent's `policy applied`, then checks that a pod of another")
    w("namespace is denied (with policies) or allowed (without). iperf3: one TCP stream, %d s;"
      % tp["iperf_seconds"])
    w("connection rate: a Python client doing connect + reset in a loop for %d s (each connection new"
      % tp["conn_seconds"])
    w("to conntrack, so its first packet walks the policy chain). Ratio: median over rounds of")
    w("(with policies / without) in the same round.")
    w("")
    w("| path | metric | 0 policies (median) | %d policies (median) | ratio | target |" % meta["perf_policies"])
    w("|---|---|---|---|---|---|")
    for path, plabel in (("same", "same node"), ("cross", "cross-node (client on B)")):
        for metric, unit, fmt in (("gbps", "Gbit/s", "%.2f"), ("conn", "connections/s", "%.0f")):
            zero = [x[path][metric] for x in tp["runs"] if x["state"] == "0"]
            full = [x[path][metric] for x in tp["runs"] if x["state"] != "0"]
            ratios = []
            for rnd in range(tp["rounds"]):
                z = [x[path][metric] for x in tp["runs"] if x["round"] == rnd and x["state"] == "0"]
                f = [x[path][metric] for x in tp["runs"] if x["round"] == rnd and x["state"] != "0"]
                if z and f and z[0]:
                    ratios.append(f[0] / z[0])
                q = med(ratios)
            w("| %s | %s | %s | %s | %.2f | %s |" % (plabel, unit, fmt % med(zero), fmt % med(full), q,
                                                  "≥ 0.95: met" if q >= 0.95 else "≥ 0.95: **not met**"))
    w("")
    w("### CNI ADD with enforcement on vs off (node A)")
    w("")
    w("Wall time of the installed binary (spawn to exit), ADD then DEL of a pod, 0.25 s apart (the")
    w("agent's reaction to each, a 100 ms settle and a compile, is over before the next), %d of each"
      % cni[next(iter(cni))]["n"])
    w("per block;")
    w("the agent restarted with `--network-policy=true` / `=false` between blocks, blocks alternating")
    w("(on, off, on, off), the 1,000-pod / 200-policy cluster loaded. A namespace without policy")
    w("(`nopol`) is the case the target is about; ADD into a namespace with policies (`ns-01`) puts")
    w("the new veth in the `pending` set first (one `nft` exec) and is shown for information.")
    w("")
    w("| namespace | enforcement | ADD median ms | ADD p90 ms | DEL median ms | n | agent CPU per ADD+DEL, ms |")
    w("|---|---|---|---|---|---|---|")
    for ns in ("nopol", "ns-01"):
        for mode in ("on", "off"):
            blocks = [v for k, v in sorted(cni.items()) if v["namespace"] == ns and v["mode"] == mode]
            if not blocks:
                continue
            adds = [x for b in blocks for x in b["add_ms"]]
            dels = [x for b in blocks for x in b["del_ms"]]
            cpu = sum(b["agent_cpu_ms"] for b in blocks) / len(adds)
            w("| `%s` | %s | %.1f | %.1f | %.1f | %d | %.1f |" % (ns, mode, med(adds), pctl(adds, 90), med(dels), len(adds), cpu))
    on = [x for v in cni.values() if v["namespace"] == "nopol" and v["mode"] == "on" for x in v["add_ms"]]
    off = [x for v in cni.values() if v["namespace"] == "nopol" and v["mode"] == "off" for x in v["add_ms"]]
    w("")
    w("No policy namespace, on − off: %+.1f ms at the median (%+.0f%%). The last column is the agent's"
      % (med(on) - med(off), (med(on) / med(off) - 1) * 100))
    w("own CPU time (utime + stime from /proc) during the block, per pod: with enforcement on, every")
    w("ADD and DEL makes it rescan the store and recompile (the pod's rules may be due), which on a")
    w("busy node competes with the ADDs that follow.")
    open(a.out, "w").write("\n".join(o) + "\n")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--api", required=True)
    g.add_argument("--local-pods", required=True)
    g.add_argument("--pods", type=int, default=1000)
    g.add_argument("--policies", type=int, default=200)
    g.add_argument("--perf-policies", type=int, default=1000)
    g.add_argument("--perf-out", required=True)
    g.add_argument("--meta", required=True)
    g = sub.add_parser("latency")
    for f in ("--api", "--meta", "--agent-log", "--server-log", "--server-pid", "--netns", "--out"):
        g.add_argument(f, required=True)
    g.add_argument("--events", type=int, default=50)
    g.add_argument("--gap", type=float, default=0.2)
    g = sub.add_parser("cni-times")
    for f in ("--bin", "--conflist", "--netns-list", "--namespace", "--mode", "--tag", "--out"):
        g.add_argument(f, required=True)
    g.add_argument("--n", type=int, default=25)
    g.add_argument("--gap", type=float, default=0.05)
    g = sub.add_parser("serve")
    g.add_argument("--addr", required=True)
    g.add_argument("--port", type=int, default=8000)
    for name in ("connect", "probe"):
        g = sub.add_parser(name)
        g.add_argument("--dst", required=True)
        g.add_argument("--port", type=int, default=8000)
        g.add_argument("--seconds", type=float, default=3)
    sub.add_parser("nft-counts")
    g = sub.add_parser("report")
    g.add_argument("--results", required=True)
    g.add_argument("--out", required=True)
    a = p.parse_args()
    {"gen": cmd_gen, "latency": cmd_latency, "cni-times": cmd_cni_times, "serve": cmd_serve,
     "connect": cmd_connect, "probe": cmd_probe, "nft-counts": cmd_nft_counts, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
