"""Servers and a reachability prober for the NetworkPolicy e2e (e2e/88-netpol.sh), after the
upstream model (kubernetes test/e2e/network/netpol: namespaces x, y, z; pods a, b, c; ports 80
and 81 over TCP, UDP and SCTP). Python 3 standard library only (run it with /usr/bin/python3).
One process does the work of many: it enters each pod's network namespace in turn (setns(2)
through libc; os.setns is Python 3.12+) to open its sockets there, and a socket stays in the
namespace it was opened in, so one event loop serves or probes every pod at once.

usage: netpol-probe.py serve --ready FILE NETNS...
           In each NETNS: TCP and UDP (and SCTP, when the kernel has it) on ports 80 and 81,
           IPv4 and IPv6 (dual-stack sockets). TCP and SCTP connections are accepted and
           closed; a UDP datagram is sent back to its sender. Writes "ready tcp udp[ sctp]" to
           FILE once every socket is open, then serves until killed.
       netpol-probe.py sctp
           Exit 0 when SCTP sockets can be opened here (the sctp module is loaded), else 1.
       netpol-probe.py probe --pods FILE --proto tcp|udp|sctp --port N [--family 4|6]
           [--timeout S] [--deadline S] [--expect "FROM TO V"]...
           FILE: {"x/a": {"netns": NAME, "ip4": ADDR, "ip6": ADDR}, ...}. Probes every ordered
           pair of pods but a pod and itself (connection from the client's namespace to the
           server's address, all at once, each with a TIMEOUT of its own: 1 s) and compares with
           the expected matrix: everything allowed, then each --expect rule in order sets the
           pairs whose client matches FROM and server matches TO (shell patterns on "ns/pod",
           e.g. "x/*", "*/a", "*") to V ("." allowed, "X" denied). Pairs that differ are probed
           again every second until they match or DEADLINE (10 s, as upstream) has passed since
           the first probe. Exits 0 when everything matched, else prints the expected matrix
           and the observed one (mismatches marked *) and exits 1.
       netpol-probe.py loop --target ADDR --port N --client NAME=NETNS... --stop FILE
           [--allowed NAME]... [--interval S] [--timeout S] [--linger S] [--max S] [--ready FILE]
           The no-window probe: from each client's namespace, a new TCP connection attempt to
           ADDR:PORT every INTERVAL (0.01 s), each with a TIMEOUT of its own (0.5 s: one SYN,
           no retransmission), however many are in flight, from before the server's pod has
           an address. Writes READY once running; stops when FILE exists, MAX (30 s) has
           passed, or LINGER (1 s) after every --allowed client has connected once. Prints one
           JSON object: {"start": T, "end": T, "clients": {NAME: {"attempts": N,
           "connected": N, "refused": N, "first": T or null, "last": T or null, "failed":
           {ERROR: N}}}}, T in CLOCK_REALTIME seconds (comparable with `date +%s.%N`);
           "refused" counts RSTs, which also mean a packet reached the pod.
"""

import argparse
import ctypes
import errno
import fnmatch
import json
import os
import selectors
import socket
import struct
import sys
import time

CLONE_NEWNET = 0x40000000
PORTS = (80, 81)
_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(name):
    """Moves this (single-threaded) process into the named network namespace."""
    fd = os.open("/run/netns/" + name, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, "setns %s: %s" % (name, os.strerror(e)))
    finally:
        os.close(fd)


def sctp_available():
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
        return True
    except OSError:
        return False


def dual_stack(kind, proto, port):
    s = socket.socket(socket.AF_INET6, kind, proto)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.setblocking(False)
    return s


def serve(args):
    sel = selectors.DefaultSelector()
    protos = ["tcp", "udp"] + (["sctp"] if sctp_available() else [])
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    for ns in args.netns:
        enter_netns(ns)
        for port in PORTS:
            t = dual_stack(socket.SOCK_STREAM, socket.IPPROTO_TCP, port)
            t.listen(128)
            sel.register(t, selectors.EVENT_READ, "accept")
            u = dual_stack(socket.SOCK_DGRAM, socket.IPPROTO_UDP, port)
            sel.register(u, selectors.EVENT_READ, "echo")
            if "sctp" in protos:
                s = dual_stack(socket.SOCK_STREAM, socket.IPPROTO_SCTP, port)
                s.listen(128)
                sel.register(s, selectors.EVENT_READ, "accept")
    _libc.setns(home, CLONE_NEWNET)
    with open(args.ready + ".tmp", "w") as f:
        f.write("ready " + " ".join(protos) + "\n")
    os.rename(args.ready + ".tmp", args.ready)
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            try:
                if key.data == "accept":
                    c, _ = s.accept()
                    c.close()
                else:
                    data, peer = s.recvfrom(2048)
                    s.sendto(data, peer)
            except OSError:
                pass  # a client gone before we answered: nothing to serve


class Probe:
    """One connection attempt from a client pod to a server pod."""

    def __init__(self, pair, proto, family, addr, port, timeout):
        self.pair = pair
        self.result = None  # True allowed, False denied
        self.deadline = time.monotonic() + timeout
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        kind, ipproto = {
            "tcp": (socket.SOCK_STREAM, socket.IPPROTO_TCP),
            "udp": (socket.SOCK_DGRAM, socket.IPPROTO_UDP),
            "sctp": (socket.SOCK_STREAM, socket.IPPROTO_SCTP),
        }[proto]
        self.udp = proto == "udp"
        self.sock = socket.socket(af, kind, ipproto)
        self.sock.setblocking(False)
        self.sent = 0
        self.next_send = 0.0
        self.token = ("%s %s" % pair).encode()
        rc = self.sock.connect_ex((addr, port))
        if self.udp:
            self.send()
        elif rc not in (0, errno.EINPROGRESS):
            self.finish(False)

    def send(self):
        # Three datagrams a third of the timeout apart: one lost to a neighbour table still
        # resolving must not read as "denied". A reply to any of them is enough.
        try:
            self.sock.send(self.token)
        except OSError:
            pass  # ICMP unreachable from an earlier datagram: the receive says so
        self.sent += 1
        self.next_send = time.monotonic() + (self.deadline - time.monotonic()) / (4 - self.sent)

    def events(self):
        return selectors.EVENT_READ if self.udp else selectors.EVENT_WRITE

    def ready(self):
        if self.udp:
            try:
                self.finish(self.sock.recv(2048) == self.token)
            except OSError:
                self.finish(False)  # port unreachable: nobody answers there
        else:
            self.finish(self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0)

    def finish(self, allowed):
        self.result = allowed
        self.sock.close()


def probe_round(pods, pairs, args):
    """-> {pair: allowed} for PAIRS, every probe in flight at once."""
    sel = selectors.DefaultSelector()
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    probes = []
    by_client = {}
    for pair in pairs:
        by_client.setdefault(pair[0], []).append(pair)
    try:
        for client, its in by_client.items():
            enter_netns(pods[client]["netns"])
            for pair in its:
                addr = pods[pair[1]]["ip%d" % args.family]
                p = Probe(pair, args.proto, args.family, addr, args.port, args.timeout)
                probes.append(p)
                if p.result is None:
                    sel.register(p.sock, p.events(), p)
    finally:
        _libc.setns(home, CLONE_NEWNET)
        os.close(home)
    pending = [p for p in probes if p.result is None]
    while pending:
        now = time.monotonic()
        wake = min(min(p.deadline, p.next_send if p.udp else p.deadline) for p in pending)
        for key, _ in sel.select(max(0.0, wake - now)):
            p = key.data
            sel.unregister(p.sock)
            p.ready()
        now = time.monotonic()
        for p in pending:
            if p.result is not None:
                continue
            if now >= p.deadline:
                sel.unregister(p.sock)
                p.finish(False)
            elif p.udp and now >= p.next_send and p.sent < 3:
                p.send()
        pending = [p for p in pending if p.result is None]
    return {p.pair: p.result for p in probes}


def expected_matrix(names, rules):
    want = {(a, b): True for a in names for b in names if a != b}
    for rule in rules:
        parts = rule.split()
        if len(parts) != 3 or parts[2] not in (".", "X"):
            sys.exit("bad --expect %r: want \"FROM TO .|X\"" % rule)
        src, dst, v = parts
        for a, b in want:
            if fnmatch.fnmatchcase(a, src) and fnmatch.fnmatchcase(b, dst):
                want[(a, b)] = v == "."
    return want


def table(names, cell):
    width = max(len(n) for n in names) + 1
    first = max(width, len("from\\to") + 1)
    lines = ["  " + "from\\to".ljust(first) + " ".join(n.ljust(width) for n in names)]
    for a in names:
        lines.append("  " + a.ljust(first) + " ".join(cell(a, b).ljust(width) for b in names))
    return "\n".join(lines)


def probe(args):
    with open(args.pods) as f:
        pods = json.load(f)
    names = sorted(pods)
    want = expected_matrix(names, args.expect)
    what = "%s/%d IPv%d" % (args.proto, args.port, args.family)
    got = {}
    start = time.monotonic()
    rounds = 0
    todo = list(want)
    while True:
        rounds += 1
        began = time.monotonic()
        got.update(probe_round(pods, todo, args))
        todo = [pair for pair in want if got[pair] != want[pair]]
        if not todo or time.monotonic() - start >= args.deadline:
            break
        time.sleep(max(0.0, 1.0 - (time.monotonic() - began)))
    took = time.monotonic() - start
    allowed = sum(want.values())
    if not todo:
        print("%s: all %d pairs as expected (%d allowed, %d denied), %.1f s, %d round%s" % (
            what, len(want), allowed, len(want) - allowed, took, rounds, "" if rounds == 1 else "s"))
        return 0
    mark = lambda v: "." if v else "X"  # noqa: E731
    print("%s: %d of %d pairs differ after %.1f s (%d rounds)" % (what, len(todo), len(want), took, rounds))
    print("expected (rows: from, columns: to; . allowed, X denied):")
    print(table(names, lambda a, b: "-" if a == b else mark(want[(a, b)])))
    print("observed (* = differs from expected):")
    print(table(names, lambda a, b: "-" if a == b else mark(got[(a, b)]) + ("*" if got[(a, b)] != want[(a, b)] else "")))
    return 1


def loop(args):
    clients = []
    for c in args.client:
        name, ns = c.split("=", 1)
        clients.append((name, os.open("/run/netns/" + ns, os.O_RDONLY)))
    unknown = set(args.allowed) - {name for name, _ in clients}
    if unknown:
        sys.exit("--allowed %s: not a --client" % ", ".join(sorted(unknown)))
    stats = {name: {"attempts": 0, "connected": 0, "refused": 0, "first": None, "last": None,
                    "failed": {}} for name, _ in clients}
    sel = selectors.DefaultSelector()
    deadlines = {}  # socket -> (client, monotonic deadline)

    def done(sock, name, err):
        st = stats[name]
        if err == 0:
            st["connected"] += 1
            now = time.time()
            st["first"] = st["first"] or now
            st["last"] = now
        elif err == errno.ECONNREFUSED:
            st["refused"] += 1
        else:
            key = errno.errorcode.get(err, str(err)) if isinstance(err, int) else err
            st["failed"][key] = st["failed"].get(key, 0) + 1
        # An RST instead of a FIN: no TIME_WAIT left behind by hundreds of attempts a second.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def attempt(name, fd):
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            sys.exit("setns for %s: %s" % (name, os.strerror(ctypes.get_errno())))
        s = socket.socket(socket.AF_INET6 if ":" in args.target else socket.AF_INET,
                          socket.SOCK_STREAM)
        s.setblocking(False)
        stats[name]["attempts"] += 1
        rc = s.connect_ex((args.target, args.port))
        if rc == errno.EINPROGRESS:
            sel.register(s, selectors.EVENT_WRITE, name)
            deadlines[s] = (name, time.monotonic() + args.timeout)
        else:
            done(s, name, rc)

    start = time.time()
    began = time.monotonic()
    next_at = began
    linger_until = None
    if args.ready:
        with open(args.ready, "w") as f:
            f.write("running\n")
    while True:
        now = time.monotonic()
        if now - began >= args.max or os.path.exists(args.stop):
            break
        if args.allowed and all(stats[a]["first"] for a in args.allowed):
            linger_until = linger_until or now + args.linger
            if now >= linger_until:
                break
        if now >= next_at:
            for name, fd in clients:
                attempt(name, fd)
            # No catching up after a stall: the rate stays at most one per INTERVAL.
            next_at = max(next_at + args.interval, now)
        wake = min([next_at] + [d for _, d in deadlines.values()])
        for key, _ in sel.select(max(0.0, wake - time.monotonic())):
            sel.unregister(key.fileobj)
            del deadlines[key.fileobj]
            done(key.fileobj, key.data, key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
        now = time.monotonic()
        for s, (name, d) in list(deadlines.items()):
            if now >= d:
                sel.unregister(s)
                del deadlines[s]
                done(s, name, "timeout")
    for s, (name, _) in list(deadlines.items()):
        sel.unregister(s)
        done(s, name, "unfinished")
    print(json.dumps({"start": start, "end": time.time(), "clients": stats}))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--ready", required=True)
    s.add_argument("netns", nargs="+")
    sub.add_parser("sctp")
    p = sub.add_parser("probe")
    p.add_argument("--pods", required=True)
    p.add_argument("--proto", choices=["tcp", "udp", "sctp"], required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--family", type=int, choices=[4, 6], default=4)
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--deadline", type=float, default=10.0)
    p.add_argument("--expect", action="append", default=[])
    w = sub.add_parser("loop")
    w.add_argument("--target", required=True)
    w.add_argument("--port", type=int, required=True)
    w.add_argument("--client", action="append", required=True, metavar="NAME=NETNS")
    w.add_argument("--allowed", action="append", default=[])
    w.add_argument("--stop", required=True)
    w.add_argument("--ready")
    w.add_argument("--interval", type=float, default=0.01)
    w.add_argument("--timeout", type=float, default=0.5)
    w.add_argument("--linger", type=float, default=1.0)
    w.add_argument("--max", type=float, default=30.0)
    args = ap.parse_args()
    if args.cmd == "serve":
        serve(args)
    elif args.cmd == "loop":
        return loop(args)
    elif args.cmd == "sctp":
        return 0 if sctp_available() else 1
    else:
        return probe(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
