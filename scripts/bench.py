#!/usr/bin/env python3
"""The measuring half of scripts/bench.sh: routed-cni vs ptp + host-local, same run, same node.

bench.sh creates the scratch node namespaces and the pod namespaces, then runs this file *inside*
the main node namespace (`ip netns exec NODE python3 bench.py ...`), so every plugin, `ip` and
`iptables` started from here acts on that node only (the scaling test enters its own nodes with
setns). Pod namespaces are pre-created: nothing here creates or deletes a namespace, so
namespace creation is never inside a timed part.

Every timed figure is the wall time of one process from spawn to exit, measured by this harness
(`time.perf_counter_ns` around `subprocess.run`); both plugins pay the same spawn cost, and the
harness floor (spawning /bin/true) is reported so it can be subtracted by eye.
"""

import argparse
import collections
import concurrent.futures
import contextlib
import ctypes
import datetime
import hashlib
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CNI_PATH = "/usr/lib/cni"
RESULTS = {}  # everything measured, dumped as JSON next to the report for later digging
LEVELS = (1, 100, 250)  # pods of one plugin on the node, for the scaling test


# ----------------------------------------------------------------------------- plugins

class Plugin:
    """One CNI plugin under test: a binary and a network config."""

    def __init__(self, label, binary, conf, ifname="eth0"):
        self.label, self.binary, self.conf, self.ifname = label, binary, conf, ifname
        self.conf_bytes = json.dumps(conf).encode()

    def with_conf(self, label, conf):
        return Plugin(label, self.binary, conf, self.ifname)

    def env(self, cmd, cid, pod):
        return {
            "PATH": PATH,
            "CNI_COMMAND": cmd,
            "CNI_CONTAINERID": cid,
            "CNI_NETNS": f"/run/netns/{pod}",
            "CNI_IFNAME": self.ifname,
            "CNI_PATH": CNI_PATH,
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={cid}",
        }

    def run(self, cmd, cid, pod, wrap=()):
        """Runs one invocation; returns its wall time in ms. A failure stops the benchmark."""
        argv = [*wrap, self.binary]
        t0 = time.perf_counter_ns()
        p = subprocess.run(argv, input=self.conf_bytes, env=self.env(cmd, cid, pod),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        ms = (time.perf_counter_ns() - t0) / 1e6
        if p.returncode != 0:
            raise RuntimeError(
                f"{self.label} {cmd} {cid} in {pod} failed (exit {p.returncode}):\n"
                f"  stdout: {p.stdout.decode(errors='replace').strip()}\n"
                f"  stderr: {p.stderr.decode(errors='replace').strip()}")
        return ms

    def spawn(self, cmd, cid, pod):
        """Starts one invocation without waiting; the caller feeds stdin."""
        return subprocess.Popen([self.binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=self.env(cmd, cid, pod))


class Pods:
    """The pre-created pod namespaces, handed out least-recently-used first."""

    def __init__(self, names):
        self.free = collections.deque(names)

    def take(self, n=None):
        if n is None:
            return self.free.popleft()
        if n > len(self.free):
            raise RuntimeError(f"need {n} free pod namespaces, have {len(self.free)}")
        return [self.free.popleft() for _ in range(n)]

    def give(self, *pods):
        self.free.extend(pods)


class Attached:
    """Pods a plugin has ADDed and not yet DELed: (cid, pod) pairs."""

    def __init__(self, plugin, pods):
        self.plugin, self.pods, self.items, self.n = plugin, pods, [], 0

    def add(self, tag, timed=None):
        self.n += 1
        cid = f"{self.plugin.label}-{tag}-{self.n}"
        pod = self.pods.take()
        ms = self.plugin.run("ADD", cid, pod)
        self.items.append((cid, pod))
        if timed is not None:
            timed.append(ms)
        return cid, pod

    def delete(self, cid, pod, timed=None):
        ms = self.plugin.run("DEL", cid, pod)
        self.items.remove((cid, pod))
        self.pods.give(pod)
        if timed is not None:
            timed.append(ms)

    def fill(self, n, tag, workers=4, netns=None):
        """ADDs n pods (untimed, a few at a time to save wall time), in `netns` if given."""
        jobs = []
        for _ in range(n):
            self.n += 1
            jobs.append((f"{self.plugin.label}-{tag}-{self.n}", self.pods.take()))
        init = (enter_netns, (netns,)) if netns else (None, ())
        with concurrent.futures.ThreadPoolExecutor(workers, initializer=init[0], initargs=init[1]) as ex:
            list(ex.map(lambda j: self.plugin.run("ADD", *j), jobs))
        self.items.extend(jobs)

    def drain(self, keep=0, workers=4):
        """DELs all but the first `keep` pods (untimed)."""
        gone, self.items = self.items[keep:], self.items[:keep]
        with concurrent.futures.ThreadPoolExecutor(workers) as ex:
            list(ex.map(lambda j: self.plugin.run("DEL", *j), gone))
        self.pods.give(*[pod for _, pod in gone])


# ----------------------------------------------------------------------------- statistics

def pct(samples, q):
    """q-th percentile (0-100), linear interpolation between closest ranks."""
    s = sorted(samples)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def med(samples):
    return statistics.median(samples)


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed_cmd(argv):
    t0 = time.perf_counter_ns()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return (time.perf_counter_ns() - t0) / 1e6


# ----------------------------------------------------------------------------- measurements

def latency(pair, pods, n):
    """ADD then DEL of fresh pods, the two plugins alternating (order flipped every round)."""
    out = {p.label: {"ADD": [], "DEL": []} for p in pair}
    for i in range(n):
        order = pair if i % 2 == 0 else pair[::-1]
        live = []
        for p in order:
            cid, pod = f"{p.label}-lat-{i}", pods.take()
            out[p.label]["ADD"].append(p.run("ADD", cid, pod))
            live.append((p, cid, pod))
        for p, cid, pod in live:
            out[p.label]["DEL"].append(p.run("DEL", cid, pod))
            pods.give(pod)
    return out


def parallel(plugin, pods, n, tag):
    """n ADDs started at once, then n DELs started at once: wall time of each wave (ms)."""
    batch = pods.take(n)
    cids = [f"{plugin.label}-{tag}-{i}" for i in range(n)]
    walls = {}
    for cmd in ("ADD", "DEL"):
        t0 = time.perf_counter_ns()
        procs = []
        for cid, pod in zip(cids, batch):
            p = plugin.spawn(cmd, cid, pod)
            procs.append(p)
        for p in procs:  # feed configs only once every process exists
            p.stdin.write(plugin.conf_bytes)
            p.stdin.close()
        failed = []
        for p, cid in zip(procs, cids):
            out, err = p.stdout.read(), p.stderr.read()
            if p.wait() != 0:
                failed.append(f"{cid}: exit {p.returncode}: {out.decode().strip()} {err.decode().strip()}")
        walls[cmd] = (time.perf_counter_ns() - t0) / 1e6
        if failed:
            raise RuntimeError(f"{plugin.label}: {len(failed)} of {n} parallel {cmd}s failed, e.g.\n  "
                               + "\n  ".join(failed[:3]))
    pods.give(*batch)
    return walls


def parallel_rounds(pair, pods, n, rounds):
    out = {p.label: [] for p in pair}
    for r in range(rounds):
        for p in (pair if r % 2 == 0 else pair[::-1]):
            w = parallel(p, pods, n, f"par{r}-{p.conf['ipam']['subnet'].split('/')[0]}")
            out[p.label].append(w)
            log(f"  {p.label}: ADD {fmt_ms(w['ADD'])}, DEL {fmt_ms(w['DEL'])}")
    return out


def churn(plugin, pods, n, tag):
    """n pods, one at a time: ADD then DEL, then the next. Total wall time (ms)."""
    t0 = time.perf_counter_ns()
    for i in range(n):
        pod = pods.take()
        plugin.run("ADD", f"{plugin.label}-{tag}-{i}", pod)
        plugin.run("DEL", f"{plugin.label}-{tag}-{i}", pod)
        pods.give(pod)
    return (time.perf_counter_ns() - t0) / 1e6


def probe(att, n, tag):
    """ADD + DEL of one extra pod, n times, on top of what `att` already holds."""
    adds, dels = [], []
    for _ in range(n):
        cid, pod = att.add(tag, adds)
        att.delete(cid, pod, dels)
    return adds, dels


def scaling(pair, pods, nodes, levels, probes, tmp):
    """ADD/DEL latency with `level` pods of one plugin already on the node.

    Each (plugin, level) gets a node namespace of its own, all filled at once; the probes then
    go round all of them in turn, so drift in the machine's load hits every level and both
    plugins alike, and no plugin sees the other's rules or veths."""
    cells = []  # (plugin label, level, Attached, node path)
    for p in pair:
        for level in levels:
            node = f"/run/netns/{nodes[(p.label, level)]}"
            conf = {**p.conf, "ipam": {**p.conf["ipam"], "dataDir": f"{tmp}/scale-{p.label}-{level}"}}
            att = Attached(p.with_conf(p.label, conf), pods)
            att.fill(level, f"scale{level}", netns=node)
            cells.append((p.label, level, att, node))
            log(f"  {p.label}: node with {level} pods ready")
    res = {p.label: {lv: {"ADD": [], "DEL": [], "veth_add": [], "veth_del": []} for lv in levels}
           for p in pair}
    for i in range(probes):
        for label, level, att, node in (cells if i % 2 == 0 else cells[::-1]):
            r = res[label][level]
            with in_netns(node):
                cid, pod = att.add(f"probe{level}", r["ADD"])
                att.delete(cid, pod, r["DEL"])
                if i < 5:
                    vadd, vdel = veth_floor(pods, 1, tag=i)
                    r["veth_add"] += vadd
                    r["veth_del"] += vdel
    return res


# setns(2) for this harness: a plugin started while the calling thread is in a namespace
# runs in it, with no wrapper process in the timed path.
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(target):
    """Moves the calling thread into a network namespace (a path or an open fd)."""
    fd = os.open(target, os.O_RDONLY) if isinstance(target, str) else target
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {target}")
    finally:
        if isinstance(target, str):
            os.close(fd)


@contextlib.contextmanager
def in_netns(path):
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        enter_netns(path)
        yield
    finally:
        enter_netns(orig)
        os.close(orig)


def prefill_routed(conf, n, network):
    """n allocation records in routed-cni's on-disk store layout, without any veth."""
    subnet = conf["ipam"]["subnet"]
    net, prefix = subnet.split("/")
    d = os.path.join(conf["ipam"]["dataDir"], f"{net}-{prefix}")
    os.makedirs(os.path.join(d, "keys"), exist_ok=True)
    base = ip_to_int(net)
    ip = None
    for i in range(1, n + 1):
        ip, cid = int_to_ip(base + i), f"fill-{i}"
        rec = {"ip": ip, "containerId": cid, "ifname": "eth0", "hostVeth": "",
               "network": network, "netns": "", "created": 0}
        with open(os.path.join(d, ip), "w") as f:
            json.dump(rec, f)
        key = hashlib.sha256(f"{cid}/eth0".encode()).hexdigest()
        with open(os.path.join(d, "keys", key), "w") as f:
            f.write(ip)
    with open(os.path.join(d, "last_reserved"), "w") as f:
        f.write(ip)


def prefill_host_local(conf, n):
    """n allocation records in host-local's disk store layout (<dataDir>/<network>/<ip>)."""
    subnet = conf["ipam"]["subnet"]
    d = os.path.join(conf["ipam"]["dataDir"], conf["name"])
    os.makedirs(d, exist_ok=True)
    base = ip_to_int(subnet.split("/")[0])
    ip = None
    for i in range(2, n + 2):  # .1 is ptp's gateway
        ip = int_to_ip(base + i)
        with open(os.path.join(d, ip), "w") as f:
            f.write(f"fill-{i}\r\neth0")
    with open(os.path.join(d, "last_reserved_ip.0"), "w") as f:
        f.write(ip)


def ip_to_int(s):
    a, b, c, d = (int(x) for x in s.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


def int_to_ip(v):
    return ".".join(str((v >> s) & 255) for s in (24, 16, 8, 0))


def veth_floor(pods, n, tag=""):
    """The kernel's cost, via `ip`: create a veth pair with its peer in a pod namespace, and
    delete it again from the node side (which takes the peer with it)."""
    adds, dels = [], []
    for i in range(n):
        pod = pods.take()
        adds.append(timed_cmd(["ip", "link", "add", f"vfloor{tag}{i}", "mtu", "1500", "type", "veth",
                               "peer", "name", "eth0", "netns", pod]))
        dels.append(timed_cmd(["ip", "link", "del", f"vfloor{tag}{i}"]))
        pods.give(pod)
    return adds, dels


def components(routed, pods, tmp, n=30):
    """What the pieces of an ADD cost on their own, measured without any tracer (ms)."""
    out = {}
    version = json.dumps({"cniVersion": "1.0.0"}).encode()

    def t(argv, env=None, inp=b""):
        xs = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            subprocess.run(argv, input=inp, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=True)
            xs.append((time.perf_counter_ns() - t0) / 1e6)
        return med(xs)

    rss_true = subprocess.run(["/usr/bin/time", "-f", "%M", "/bin/true"], capture_output=True,
                              text=True).stderr.split()[-1]
    out["(memory) peak RSS of /bin/true, a do-nothing glibc program"] = f"{int(rss_true) / 1024:.1f} MiB"
    for b in (routed.binary, f"{CNI_PATH}/ptp", f"{CNI_PATH}/host-local"):
        out[f"{os.path.basename(b)} start+exit (CNI_COMMAND=VERSION)"] = t(
            [b], env={"CNI_COMMAND": "VERSION", "PATH": PATH}, inp=version)
    jump = next(line for line in subprocess.run(
        ["iptables", "-t", "nat", "-S", "POSTROUTING"], capture_output=True, text=True,
        check=True).stdout.splitlines() if "routed-cni pool" in line)
    check = ["iptables", "-t", "nat", "-C"] + shlex.split(jump)[1:]
    out["one `iptables -t nat -C` (routed-cni's steady-state ADD runs 1 iptables-restore of -C lines)"] = t(check)
    out["one `iptables --version` (ptp runs it before its rules)"] = t(["iptables", "--version"])
    xs = []
    for i in range(n):
        path = os.path.join(tmp, f"fsync-probe-{i}")
        t0 = time.perf_counter_ns()
        with open(path + ".tmp", "w") as f:
            f.write("10.244.1.1")
            f.flush()
            os.fsync(f.fileno())
        os.rename(path + ".tmp", path)
        xs.append((time.perf_counter_ns() - t0) / 1e6)
        os.remove(path)
    out["write + fsync + rename of a small file in the store dir (routed-cni: 2 per ADD)"] = med(xs)
    return out


def spawn_floor(n):
    return [timed_cmd(["/bin/true"]) for _ in range(n)]


def parallel_spawn_floor(n):
    """The harness's own cost for the parallel test: n /bin/true started the same way."""
    t0 = time.perf_counter_ns()
    procs = [subprocess.Popen(["/bin/true"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(n)]
    for p in procs:
        p.stdin.close()
        p.stdout.read(), p.stderr.read(), p.wait()
    return (time.perf_counter_ns() - t0) / 1e6


# --------------------------------------------------------------- process-level measurements

def execs(plugin, cmd, cid, pod, tmp):
    """Processes a plugin invocation starts, counted by strace: {basename: count}."""
    trace = os.path.join(tmp, f"execs-{cid}-{cmd}.txt")
    plugin.run(cmd, cid, pod, wrap=("strace", "-f", "-qq", "-e", "trace=execve", "-o", trace))
    counts = collections.Counter()
    for _, _, call in strace_calls(trace):
        m = re.match(r'execve\("([^"]+)".*\)\s+= 0\b', call)
        if m:
            counts[os.path.basename(m.group(1))] += 1
    counts[os.path.basename(plugin.binary)] -= 1  # the plugin itself
    return {k: v for k, v in counts.items() if v}


def strace_calls(path):
    """(pid, timestamp or None, call) per syscall of an `strace -f` log, with calls that other
    threads interrupted ("<unfinished ...>" ... "<... x resumed>") joined up again."""
    pending = {}
    for line in open(path).read().splitlines():
        m = re.match(r"(\d+)\s+(?:(\d+\.\d+) )?(.*)", line)
        if not m:
            continue
        pid, ts, call = int(m.group(1)), m.group(2) and float(m.group(2)), m.group(3)
        if call.endswith("<unfinished ...>"):
            pending[pid] = (ts, call[:-len("<unfinished ...>")])
            continue
        if call.startswith("<..."):  # "<... sendto resumed>) = 40 <0.000123>"
            ts, head = pending.pop(pid, (ts, ""))
            call = head + call.split("resumed>", 1)[-1]
        yield pid, ts, call


def process_tree_rss(plugin, cmd, cid, pod):
    """Peak RSS (VmHWM, KiB) of every process of one invocation, each on its own.

    /usr/bin/time (and wait4) only give the largest process of a tree, so each process is
    held for 0.3 s at its exit_group by strace (`inject=...:delay_enter`), while its VmHWM (peak
    RSS) and RssAnon (private memory, no file pages) are read from /proc.
    Returns [(name, VmHWM KiB, RssAnon KiB), ...]."""
    argv = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=exit_group",
            "-e", "inject=exit_group:delay_enter=300000", plugin.binary]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=plugin.env(cmd, cid, pod))
    p.stdin.write(plugin.conf_bytes)
    p.stdin.close()
    seen = {}  # (pid, name) -> (VmHWM, RssAnon) in KiB; a vfork child is the parent until exec
    while p.poll() is None:
        for pid in descendants(p.pid):
            try:
                with open(f"/proc/{pid}/status") as f:
                    st = dict(line.split(":", 1) for line in f if ":" in line)
                name = st["Name"].strip()
                hwm, anon = (int(st.get(k, "0 kB").split()[0]) for k in ("VmHWM", "RssAnon"))
            except (OSError, KeyError, ValueError):
                continue
            old = seen.get((pid, name), (0, 0))
            seen[(pid, name)] = (max(old[0], hwm), max(old[1], anon))
        time.sleep(0.01)
    if p.returncode != 0:
        raise RuntimeError(f"{plugin.label} {cmd} under strace failed: {p.stderr.read().decode()}")
    # drop the pre-exec vfork phase of children (same pid, the parent's name)
    names = collections.Counter(pid for pid, _ in seen)
    return [(name, hwm, anon) for (pid, name), (hwm, anon) in sorted(seen.items())
            if names[pid] == 1 or name != os.path.basename(plugin.binary)[:15]]


def descendants(root):
    children = collections.defaultdict(list)
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children[ppid].append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def gnu_time_rss(plugin, cmd, cid, pod, tmp):
    """`/usr/bin/time -f %M`: the largest single process of the tree (KiB)."""
    out = os.path.join(tmp, "time.out")
    plugin.run(cmd, cid, pod, wrap=("/usr/bin/time", "-f", "%M", "-o", out))
    with open(out) as f:
        return int(f.read().split()[-1])


# ----------------------------------------------------------------------------- profile

# Only these syscalls stop the tracee (--seccomp-bpf), which keeps strace's distortion small.
PROFILE_SYSCALLS = "execve,exit_group,fsync,fdatasync,sendto,sendmsg"
# strace names rtnetlink messages only for sockets of its own netns
RTM = {0x10: "RTM_NEWLINK", 0x11: "RTM_DELLINK", 0x12: "RTM_GETLINK", 0x13: "RTM_SETLINK",
       0x14: "RTM_NEWADDR", 0x15: "RTM_DELADDR", 0x16: "RTM_GETADDR", 0x18: "RTM_NEWROUTE",
       0x19: "RTM_DELROUTE", 0x1a: "RTM_GETROUTE", 0x1c: "RTM_NEWNEIGH", 0x1d: "RTM_DELNEIGH"}


def profile(plugin, cmd, cid, pod, tmp):
    """One invocation under `strace -f -ttt -T`, summed up by where the wall time went.

    strace slows every traced syscall down, so absolute figures are inflated; the split is what
    matters. Returns a list of (what, ms), the total, and a timeline [(t ms, event, took ms)]."""
    trace = os.path.join(tmp, f"profile-{plugin.label}-{cmd}.txt")
    plugin.run(cmd, cid, pod, wrap=("strace", "-f", "--seccomp-bpf", "-ttt", "-T", "-qq",
                                    "-o", trace, "-e", f"trace={PROFILE_SYSCALLS}"))
    first_ts = last_ts = None
    child_span = {}      # pid of a child process -> [first ts, last ts, name]
    root_pid = None
    buckets = collections.Counter()
    counts = collections.Counter()
    events = []          # (ts, event, duration s) for a timeline
    for pid, ts, rest in strace_calls(trace):
        if root_pid is None:
            root_pid = pid
        first_ts = ts if first_ts is None else first_ts
        dur = re.search(r"<(\d+\.\d+)>$", rest)
        dur = float(dur.group(1)) if dur else 0.0
        last_ts = max(last_ts or ts, ts + dur)
        m_exec = re.match(r'execve\("([^"]+)".*= 0 <', rest)
        if m_exec and pid != root_pid:
            child_span[pid] = [ts, ts, os.path.basename(m_exec.group(1))]
            events.append((ts, f"exec {child_span[pid][2]}", None))
        if pid in child_span:  # a child process's own syscalls: its lifetime covers them
            child_span[pid][1] = max(child_span[pid][1], ts + dur)
            if rest.startswith("exit_group"):
                events.append((ts, f"{child_span[pid][2]} exits", ts - child_span[pid][0]))
            continue
        if m_exec:
            events.append((ts, f"exec {os.path.basename(m_exec.group(1))}", dur))
        elif rest.startswith("exit_group"):
            events.append((ts, "exit", None))
        # the plugin itself (any of its threads)
        name = rest.split("(", 1)[0]
        if name in ("fsync", "fdatasync"):
            buckets["fsync"] += dur
            counts["fsync"] += 1
            events.append((ts, "fsync", dur))
        elif name in ("sendto", "sendmsg") and "nlmsg_type=" in rest:
            t = re.search(r"nlmsg_type=(0x[0-9a-f]+|[A-Z_]+)", rest)
            t = t.group(1) if t else "?"
            key = f"netlink {RTM.get(int(t, 16), t) if t.startswith('0x') else t}"
            buckets[key] += dur
            counts[key] += 1
            events.append((ts, key, dur))
    for pid, (t0, t1, nm) in child_span.items():
        buckets[f"child {nm}"] += t1 - t0
        counts[f"child {nm}"] += 1
    total = (last_ts - first_ts) * 1000
    rows = [(f"{k} ({counts[k]}x)", v * 1000) for k, v in buckets.most_common()]
    rows.append(("the rest: the plugin's own work, process start and exit included",
                 total - sum(v for _, v in rows)))
    timeline = [((ts - first_ts) * 1000, ev, None if d is None else d * 1000)
                for ts, ev, d in sorted(events, key=lambda e: e[0])]
    return rows, total, timeline


# ----------------------------------------------------------------------------- report

def fmt_ms(v):
    return f"{v:.1f} ms" if v < 1000 else f"{v / 1000:.2f} s"


def fmt_kib(v):
    return f"{v / 1024:.1f} MiB"


def ratio(a, b):
    return f"{a / b:.2f}" if b else "-"


def table(rows, header=("metric", "routed-cni", "ptp+host-local", "ratio")):
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *map(line, rows)])


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "kernel": platform.release(),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "iptables": subprocess.run(["iptables", "--version"], capture_output=True, text=True).stdout.strip(),
    }


# ----------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="routed-cni binary")
    ap.add_argument("--tmp", required=True, help="scratch directory (stores, traces)")
    ap.add_argument("--pods", required=True, help="file with one pre-created pod netns per line")
    ap.add_argument("--out", required=True, help="write the markdown report here")
    ap.add_argument("--rev", default="?", help="the routed-cni source revision benchmarked")
    ap.add_argument("--shm", required=True, help="scratch directory on tmpfs, for the tmpfs-store run")
    ap.add_argument("--runs", type=int, default=100, help="ADD/DEL latency samples per plugin")
    ap.add_argument("--parallel", type=int, default=100)
    ap.add_argument("--churn", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the parallel and churn tests")
    ap.add_argument("--probes", type=int, default=30, help="ADDs per level in the scaling test")
    ap.add_argument("--scale-nodes", required=True,
                    help=f"file with {2 * len(LEVELS)} more empty node namespaces, one a line")
    ap.add_argument("--fill", type=int, default=5000, help="records in the /16 store test")
    ap.add_argument("--only-cold", action="store_true",
                    help="measure only the cold-pool rows (first ADD into an empty pool, last DEL)")
    a = ap.parse_args()

    pods = Pods(open(a.pods).read().split())
    tmp = a.tmp
    routed = Plugin("routed-cni", a.bin, {
        "cniVersion": "1.0.0", "name": "bench", "type": "routed-cni",
        "ipam": {"subnet": "10.244.1.0/24", "dataDir": f"{tmp}/store"},
        "nonMasqueradeCIDRs": ["10.244.0.0/16"], "mtu": 1500, "logLevel": "error"})
    ptp = Plugin("ptp", f"{CNI_PATH}/ptp", {
        "cniVersion": "1.0.0", "name": "benchref", "type": "ptp", "ipMasq": True, "mtu": 1500,
        "ipam": {"type": "host-local", "subnet": "10.245.1.0/24", "dataDir": f"{tmp}/hl"}})
    pair = (routed, ptp)
    R = RESULTS
    R["machine"] = machine()
    fstype = lambda d: subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", d],
                                      capture_output=True, text=True).stdout.split()[0]
    R["loadavg_start"] = open("/proc/loadavg").read().split()[:3]
    R["store_fs"], R["shm_fs"] = fstype(tmp), fstype(a.shm)

    # -- warm-up (page cache, first-use costs), then the first pod of each pool, counted
    log("warm-up")
    for p in pair:
        pod = pods.take()
        p.run("ADD", f"{p.label}-warm", pod)
        p.run("DEL", f"{p.label}-warm", pod)
        pods.give(pod)
    if a.only_cold:
        cold_pool(a, routed, ptp, pods)
        report = "| metric | routed-cni | ptp+host-local | ratio |\n|---|---|---|---|\n" + "".join(
            f"| {m} | {r} | {p} | {q} |\n" for m, r, p, q in cold_rows())
        with open(a.out, "w") as f:
            f.write(report)
        print(report)
        return
    R["execs"] = {p.label: {} for p in pair}
    resident = {}
    for p in pair:
        att = Attached(p, pods)
        att.n += 1
        cid, pod = f"{p.label}-resident", pods.take()
        R["execs"][p.label]["ADD, first pod of the pool"] = execs(p, "ADD", cid, pod, tmp)
        att.items.append((cid, pod))
        resident[p.label] = att
        # one more, counted as the steady state, and its DEL
        cid2, pod2 = f"{p.label}-count", pods.take()
        R["execs"][p.label]["ADD, steady state"] = execs(p, "ADD", cid2, pod2, tmp)
        R["execs"][p.label]["DEL, steady state"] = execs(p, "DEL", cid2, pod2, tmp)
        pods.give(pod2)
    # From here on each plugin keeps one resident pod, so a pool never empties: the figures
    # are for a node that already runs pods (routed-cni installs its pool NAT once per pool).

    log("component costs (no tracer)")
    R["components"] = components(routed, pods, tmp)
    # routed-cni's own log says how long it spent between reading its config and answering
    logfile = f"{tmp}/routed-cni.log"
    logged = routed.with_conf("routed-cni", {**routed.conf, "logLevel": "info", "logFile": logfile})
    walls = latency((logged,), pods, 20)["routed-cni"]
    took = {"ADD": [], "DEL": []}
    for line in open(logfile):
        m = re.search(r" (ADD|DEL) ok .* took=([\d.]+)ms", line)
        if m:
            took[m.group(1)].append(float(m.group(2)))
    for cmd in ("ADD", "DEL"):
        R["components"][f"routed-cni {cmd}: time inside the process (its log's `took=`) / wall, "
                        f"median of {len(took[cmd])}"] = f"{fmt_ms(med(took[cmd]))} / {fmt_ms(med(walls[cmd]))}"

    log(f"floors: process spawn, veth create/delete (x50)")
    R["spawn_floor"] = spawn_floor(50)
    R["parallel_spawn_floor"] = [parallel_spawn_floor(a.parallel) for _ in range(a.rounds)]
    R["veth_add_floor"], R["veth_del_floor"] = veth_floor(pods, 50)

    log(f"ADD/DEL latency, {a.runs} runs each, plugins alternating")
    R["latency"] = latency(pair, pods, a.runs)

    # Dual-stack: one IPv4 and one IPv6 address per pod, both plugins, with the IPv4-only
    # routed-cni in the same rounds as the yardstick for what the second family costs.
    n_dual = max(10, a.runs // 2)
    log(f"dual-stack ADD/DEL latency, {n_dual} runs each")
    dual = (routed.with_conf("routed-cni-dual", {**routed.conf, "ipam": {
                "ranges": [[{"subnet": "10.244.4.0/24"}], [{"subnet": "fd00:10:244:4::/64"}]],
                "dataDir": f"{tmp}/store"}, "nonMasqueradeCIDRs": ["10.244.0.0/16", "fd00:10:244::/48"]}),
            ptp.with_conf("ptp-dual", {**ptp.conf, "ipam": {
                "type": "host-local", "dataDir": f"{tmp}/hl",
                "ranges": [[{"subnet": "10.245.4.0/24"}], [{"subnet": "fd00:10:245:4::/64"}]]}}))
    dual_residents = [Attached(p, pods) for p in dual]
    for att in dual_residents:
        att.add("dual-resident")
    R["latency_dual"] = latency((*dual, routed), pods, n_dual)
    for att in dual_residents:
        att.drain()

    log(f"{a.parallel} pods in parallel, {a.rounds} rounds")
    R["parallel"] = parallel_rounds(pair, pods, a.parallel, a.rounds)

    # The same with both stores on tmpfs, as /run is on a real node (routed-cni's default
    # dataDir is /run/routed-cni): there an fsync costs next to nothing.
    n_shm = max(10, a.runs // 2)
    log(f"ADD/DEL latency and {a.parallel} parallel pods, both stores on tmpfs ({a.shm})")
    on_shm = (routed.with_conf("routed-cni", {**routed.conf, "ipam": {
                  "subnet": "10.244.2.0/24", "dataDir": f"{a.shm}/store"}}),
              ptp.with_conf("ptp", {**ptp.conf, "ipam": {
                  "type": "host-local", "subnet": "10.245.2.0/24", "dataDir": f"{a.shm}/hl"}}))
    shm_residents = [Attached(p, pods) for p in on_shm]
    for att in shm_residents:
        att.add("shm-resident")
    R["latency_shm"] = latency(on_shm, pods, n_shm)
    R["parallel_shm"] = parallel_rounds(on_shm, pods, a.parallel, a.rounds)
    for att in shm_residents:
        att.drain()

    cold_pool(a, routed, ptp, pods)

    log(f"{a.churn} pods sequential churn, {a.rounds} rounds")
    R["churn"] = {p.label: [] for p in pair}
    for r in range(a.rounds):
        for p in (pair if r % 2 == 0 else pair[::-1]):
            R["churn"][p.label].append(churn(p, pods, a.churn, f"churn{r}"))

    log("peak RSS of one ADD")
    R["rss"] = {p.label: {"tree": [], "procs": []} for p in pair}
    for i in range(3):
        for p in pair:
            pod = pods.take()
            R["rss"][p.label]["procs"].append(process_tree_rss(p, "ADD", f"{p.label}-rss{i}", pod))
            p.run("DEL", f"{p.label}-rss{i}", pod)
            R["rss"][p.label]["tree"].append(gnu_time_rss(p, "ADD", f"{p.label}-rsst{i}", pod, tmp))
            p.run("DEL", f"{p.label}-rsst{i}", pod)
            pods.give(pod)

    log(f"ADD latency vs pods on the node (1, 100, 250 in a /24), {a.probes} probes per level")
    names = iter(open(a.scale_nodes).read().split())
    nodes = {(p.label, lv): next(names) for p in pair for lv in LEVELS}
    R["scaling"] = scaling(pair, pods, nodes, LEVELS, a.probes, tmp)

    log(f"ADD latency with {a.fill} records in a /16 store")
    r16 = routed.with_conf("routed-cni16", {**routed.conf, "ipam": {
        "subnet": "10.246.0.0/16", "dataDir": f"{tmp}/store16"}, "nonMasqueradeCIDRs": ["10.246.0.0/16"]})
    p16 = ptp.with_conf("ptp16", {**ptp.conf, "ipam": {
        "type": "host-local", "subnet": "10.247.0.0/16", "dataDir": f"{tmp}/hl16"}})
    prefill_routed(r16.conf, a.fill, r16.conf["name"])
    prefill_host_local(p16.conf, a.fill)
    R["store16"] = {"routed-cni": {"ADD": [], "DEL": []}, "ptp": {"ADD": [], "DEL": []}}
    atts = [(Attached(r16, pods), "routed-cni"), (Attached(p16, pods), "ptp")]
    for att, _ in atts:
        probe(att, 2, "warm16")  # first ADD of the pool installs NAT: not the steady state
    for i in range(a.probes):  # alternating
        for att, label in (atts if i % 2 == 0 else atts[::-1]):
            adds, dels = probe(att, 1, "probe16")
            R["store16"][label]["ADD"] += adds
            R["store16"][label]["DEL"] += dels

    log("profile one routed-cni ADD and DEL (and ptp's) under strace")
    R["profile"] = {}
    for p in pair:  # 5 of each; keep the one with the median total, as the typical one
        runs = {"ADD": [], "DEL": []}
        for i in range(5):
            pod = pods.take()
            for cmd in ("ADD", "DEL"):
                runs[cmd].append(profile(p, cmd, f"{p.label}-prof{i}", pod, tmp))
            pods.give(pod)
        R["profile"][p.label] = {cmd: sorted(rs, key=lambda r: r[1])[2] for cmd, rs in runs.items()}

    # the residents go last: their DEL empties each pool
    for p in pair:
        cid, pod = resident[p.label].items[0]
        R["execs"][p.label]["DEL, last pod of the pool"] = execs(p, "DEL", cid, pod, tmp)

    report = render(a, routed, ptp)
    with open(a.out, "w") as f:
        f.write(report)
    with open(os.path.join(tmp, "results.json"), "w") as f:
        json.dump(RESULTS, f, indent=1, default=str)
    print(report)


def cold_pool(a, routed, ptp, pods):
    """The first ADD into an empty pool and the DEL of its last pod: routed-cni installs its
    per-pool forward and masquerade rules there (one iptables-save and one iptables-restore,
    on a thread beside the netlink work) and removes them (one blind iptables-restore while
    the veth is deleted), ptp its per-pod rules as always. Stores on tmpfs, as on a node;
    no resident pod in these pools, so every ADD is a first and every DEL a last."""
    n = max(10, a.runs // 2)
    log(f"cold pool: first ADD / last DEL, {n} runs each, stores on tmpfs ({a.shm})")
    cold = (routed.with_conf("routed-cni", {**routed.conf, "ipam": {
                "subnet": "10.244.3.0/24", "dataDir": f"{a.shm}/cold"}}),
            ptp.with_conf("ptp", {**ptp.conf, "ipam": {
                "type": "host-local", "subnet": "10.245.3.0/24", "dataDir": f"{a.shm}/hlcold"}}))
    RESULTS["latency_cold"] = latency(cold, pods, n)


def cold_rows():
    cold = RESULTS["latency_cold"]
    L, P = "routed-cni", "ptp"
    return [(f"{what} median, cold pool: {desc}, stores on {RESULTS['shm_fs']} (n={len(cold[L][cmd])})",
             fmt_ms(med(cold[L][cmd])), fmt_ms(med(cold[P][cmd])),
             ratio(med(cold[L][cmd]), med(cold[P][cmd])))
            for cmd, what, desc in (("ADD", "ADD", "first pod of an empty pool"),
                                    ("DEL", "DEL", "last pod of the pool"))]


def render(a, routed, ptp):
    R = RESULTS
    L, P = "routed-cni", "ptp"
    lat = R["latency"]
    rows = []

    def add_row(metric, r, p, fmt=fmt_ms):
        rows.append((metric, fmt(r), fmt(p), ratio(r, p)))

    for cmd in ("ADD", "DEL"):
        for name, q in (("median", 50), ("p90", 90), ("p99", 99)):
            add_row(f"{cmd} latency {name} (n={a.runs})", pct(lat[L][cmd], q), pct(lat[P][cmd], q))
    shm = R["latency_shm"]
    for cmd in ("ADD", "DEL"):
        add_row(f"{cmd} latency median, stores on {R['shm_fs']} (n={len(shm[L][cmd])})",
                med(shm[L][cmd]), med(shm[P][cmd]))
    rows.extend(cold_rows())
    dual = R["latency_dual"]
    n_dual = len(dual[f"{L}-dual"]["ADD"])
    for cmd in ("ADD", "DEL"):
        add_row(f"{cmd} latency median, dual-stack pod: IPv4 + IPv6 (n={n_dual})",
                med(dual[f"{L}-dual"][cmd]), med(dual[f"{P}-dual"][cmd]))
    rows.append((f"routed-cni ADD median, dual-stack / IPv4-only, same rounds (n={n_dual})",
                 f"{fmt_ms(med(dual[f'{L}-dual']['ADD']))} / {fmt_ms(med(dual[L]['ADD']))}",
                 "-", ratio(med(dual[f"{L}-dual"]["ADD"]), med(dual[L]["ADD"]))))
    par = R["parallel"]
    for cmd in ("ADD", "DEL"):
        add_row(f"{a.parallel} pods {cmd} in parallel, wall (median of {a.rounds})",
                med([x[cmd] for x in par[L]]), med([x[cmd] for x in par[P]]))
    for cmd in ("ADD", "DEL"):
        add_row(f"{a.parallel} pods {cmd} in parallel, stores on {R['shm_fs']} (median of {a.rounds})",
                med([x[cmd] for x in R["parallel_shm"][L]]), med([x[cmd] for x in R["parallel_shm"][P]]))
    add_row(f"{a.churn} pods sequential ADD+DEL churn, wall (median of {a.rounds})",
            med(R["churn"][L]), med(R["churn"][P]))

    # RSS: each process on its own; ptp and host-local are alive at the same time
    def rss(label, names, field=1):
        runs = R["rss"][label]["procs"]
        return med([max([p[field] for p in run if p[0] in names] or [0]) for run in runs])

    IPT = {"iptables", "xtables-nft-multi"}
    r_self, p_self, hl = rss(L, {"routed-cni"}), rss(P, {"ptp"}), rss(P, {"host-local"})
    add_row("peak RSS (VmHWM) of one ADD: plugin process", r_self, p_self, fmt_kib)
    rows.append(("peak RSS of one ADD: IPAM process (host-local)", "- (built in)", fmt_kib(hl), "-"))
    add_row("peak RSS of one ADD: plugin + IPAM (alive together)", r_self, p_self + hl, fmt_kib)
    add_row("private memory (RssAnon) of one ADD: plugin (+ IPAM)",
            rss(L, {"routed-cni"}, 2), rss(P, {"ptp"}, 2) + rss(P, {"host-local"}, 2), fmt_kib)
    add_row("peak RSS of one ADD: each iptables child", rss(L, IPT), rss(P, IPT), fmt_kib)
    add_row("`/usr/bin/time %M` of ADD (largest process in the tree)",
            med(R["rss"][L]["tree"]), med(R["rss"][P]["tree"]), fmt_kib)

    r_size = os.path.getsize(routed.binary)
    p_size = os.path.getsize(ptp.binary) + os.path.getsize(f"{CNI_PATH}/host-local")
    add_row("binary size (ptp + host-local for the reference)", r_size, p_size,
            lambda b: f"{b / 1e6:.2f} MB")

    sc = R["scaling"]
    for level in (1, 100, 250):
        add_row(f"ADD median, {level} pod(s) of the plugin on the node (/24, n={len(sc[L][level]['ADD'])})",
                med(sc[L][level]["ADD"]), med(sc[P][level]["ADD"]))
    for level in (1, 250):
        add_row(f"DEL median, {level} pod(s) of the plugin on the node (/24, n={len(sc[L][level]['DEL'])})",
                med(sc[L][level]["DEL"]), med(sc[P][level]["DEL"]))
    s16 = R["store16"]
    add_row(f"ADD median, {a.fill} records in a /16 store (n={a.probes})",
            med(s16[L]["ADD"]), med(s16[P]["ADD"]))
    add_row(f"DEL median, {a.fill} records in a /16 store (n={a.probes})",
            med(s16[L]["DEL"]), med(s16[P]["DEL"]))
    g = lambda lab: med(sc[lab][250]["ADD"]) / med(sc[lab][1]["ADD"])
    rows.append(("ADD median at 250 pods / at 1 pod", f"{g(L):.2f}x", f"{g(P):.2f}x", "-"))

    def execs_cell(label, what):
        c = R["execs"][label].get(what, {})
        ipt = sum(v for k, v in c.items() if k.startswith("iptables"))
        other = [f"{v} {k}" for k, v in sorted(c.items()) if not k.startswith("iptables")]
        return f"{ipt}" + (f" (+{', '.join(other)})" if other else "")

    for what in ("ADD, first pod of the pool", "ADD, steady state", "DEL, steady state",
                 "DEL, last pod of the pool"):
        rows.append((f"iptables execs per {what}", execs_cell(L, what), execs_cell(P, what), "-"))

    m = R["machine"]
    floors = [(what, v if isinstance(v, str) else fmt_ms(v)) for what, v in R["components"].items()] + [
        ("process spawn floor (harness runs /bin/true)", fmt_ms(med(R["spawn_floor"]))),
        (f"parallel spawn floor: {a.parallel} x /bin/true started at once, wall",
         fmt_ms(med(R["parallel_spawn_floor"]))),
        ("veth create floor: `ip link add` pair, peer in a pod netns (median of 50)",
         fmt_ms(med(R["veth_add_floor"]))),
        ("veth teardown floor: `ip link del`, peer in a pod netns (median of 50)",
         fmt_ms(med(R["veth_del_floor"]))),
        ("veth teardown floor p90", fmt_ms(pct(R["veth_del_floor"], 90))),
    ] + [(f"veth create / teardown floor with {level} {label} pods on the node "
          f"(n={len(sc[label][level]['veth_add'])})",
          f"{fmt_ms(med(sc[label][level]['veth_add']))} / {fmt_ms(med(sc[label][level]['veth_del']))}")
         for label in (L, P) for level in (1, 100, 250)]

    # the targets, as ratios from this same run
    rl, pl = lat[L], lat[P]
    goals = [
        ("ADD median <= 1/4 of ptp+host-local", f"{med(rl['ADD']) / med(pl['ADD']):.2f}", med(rl['ADD']) * 4 <= med(pl['ADD'])),
        (f"same, stores on {R['shm_fs']}", f"{med(shm[L]['ADD']) / med(shm[P]['ADD']):.2f}",
         med(shm[L]['ADD']) * 4 <= med(shm[P]['ADD'])),
        ("DEL median <= 1/2 of ptp+host-local", f"{med(rl['DEL']) / med(pl['DEL']):.2f}", med(rl['DEL']) * 2 <= med(pl['DEL'])),
        (f"{a.parallel} parallel ADDs >= 4x faster",
         f"{med([x['ADD'] for x in par[P]]) / med([x['ADD'] for x in par[L]]):.2f}x faster",
         med([x['ADD'] for x in par[P]]) >= 4 * med([x['ADD'] for x in par[L]])),
        (f"same, stores on {R['shm_fs']}",
         f"{med([x['ADD'] for x in R['parallel_shm'][P]]) / med([x['ADD'] for x in R['parallel_shm'][L]]):.2f}x faster",
         med([x['ADD'] for x in R['parallel_shm'][P]]) >= 4 * med([x['ADD'] for x in R['parallel_shm'][L]])),
        ("peak RSS <= 1/4 (plugin vs ptp + host-local, VmHWM)", f"{r_self / (p_self + hl):.2f}", r_self * 4 <= p_self + hl),
        ("ADD at 250 pods within 1.2x of ADD at 1 pod", f"{g(L):.2f}x", g(L) <= 1.2),
    ]

    prof_lines = []
    for label in (L, P):
        for cmd in ("ADD", "DEL"):
            prows, total, timeline = R["profile"][label][cmd]
            prof_lines.append(f"\n{label} {cmd}, the median of 5 steady-state invocations under "
                              f"`strace -f --seccomp-bpf -ttt -T` (total {total:.1f} ms traced):\n")
            prof_lines.append(table([(w, f"{ms:.1f} ms", f"{100 * ms / total:.0f}%") for w, ms in prows],
                                    header=("where", "time", "share")))
            if label == L:
                prof_lines.append(f"\nTimeline of that {label} {cmd} (t = ms since exec):\n")
                prof_lines.append(table([(f"{t:.2f}", ev, "" if d is None else f"{d:.2f} ms")
                                         for t, ev, d in timeline], header=("t", "event", "took")))
            prof_lines.append("")

    out = [
        f"Run: {m['date']} | routed-cni {a.rev} | kernel {m['kernel']} | {m['nproc']} CPUs | {m['cpu']} | "
        f"{m['iptables']} | stores on {R['store_fs']} | load average before the run "
        f"{' '.join(R['loadavg_start'])}",
        "",
        "Both plugins in one scratch node namespace, same run, alternating; each keeps one resident "
        "pod on the node throughout (so a pool is never empty); the rows with 1/100/250 pods use a "
        "node of their own per plugin and pod count. "
        "Times are wall time from spawn to exit of the plugin process, measured by the harness; "
        "ratio = routed-cni / ptp+host-local (below 1: routed-cni is smaller or faster).",
        "",
        table(rows),
        "",
        "Reference floors and component costs, each measured on its own without a tracer "
        "(same run):",
        "",
        table(floors, header=("floor", "median")),
        "",
        "The issue's targets, as ratios from this run (timings on this machine are noisy; "
        "read these as indications, not verdicts):",
        "",
        table([(t, v, "met" if ok else "NOT met") for t, v, ok in goals],
              header=("target", "measured", "")),
        "",
        "Where the time goes: only exec, exit, fsync and netlink sends are traced (`--seccomp-bpf`), "
        "which keeps strace's distortion small but not nil (attaching to each child costs too); "
        "`child X` is the lifetime of a child process, a netlink row is the kernel doing the "
        "request inside sendto, and the rest is the plugin's own work between those calls:",
        *prof_lines,
    ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
