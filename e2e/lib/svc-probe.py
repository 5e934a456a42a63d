"""Fast TCP verdict probes for e2e/89-netpol-services.sh. Python 3 standard library only (run it
with /usr/bin/python3, inside the client pod's namespace: `ip netns exec POD python3 ...`).
A probe is one TCP connect with a short timeout: connected = "allowed"; anything else (the
policy table drops, so a denied SYN just goes unanswered) = "denied". Each probe is a new
socket with a single SYN: the timeout (0.15 s) is shorter than the kernel's first SYN
retransmission (1 s), so no probe rides on an earlier one.

usage: svc-probe.py flip ADDR PORT --want allowed|denied --ready FILE [--deadline S]
           Probes until the first probe has the opposite verdict of WANT (else exits 2: there
           would be no flip to time), then writes FILE and keeps probing until a probe answers
           WANT (a denial confirmed by the next probe); prints the wall-clock time (epoch milliseconds) at which that probe sent its
           SYN (the flip happened after the previous probe's, at most 0.15 s earlier) and
           exits 0, or exits 1 after DEADLINE (10 s) seconds.
       svc-probe.py watch ADDR PORT --stop FILE
           Probes back to back until FILE exists; prints "allowed N denied M".
"""

import argparse
import os
import socket
import sys
import time

TIMEOUT = 0.15


def probe(addr, port):
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    try:
        s.connect((addr, port))
        return "allowed"
    except OSError:
        return "denied"
    finally:
        s.close()


def pace(started):
    # A denied probe took TIMEOUT; an allowed one almost nothing: keep both at one per TIMEOUT
    # so an allowed stretch does not flood the server.
    left = TIMEOUT - (time.monotonic() - started)
    if left > 0:
        time.sleep(left)


def now_ms():
    return int(time.time() * 1000)


def flip(a):
    first = probe(a.addr, a.port)
    if first == a.want:
        print("already %s before the change" % first, file=sys.stderr)
        return 2
    with open(a.ready, "w") as f:
        f.write("%s\n" % first)
    end = time.monotonic() + a.deadline
    while time.monotonic() < end:
        started, sent = time.monotonic(), now_ms()
        # An unanswered SYN on a loaded machine is not yet a denial: a second one must agree
        # (a connection that succeeds needs no such confirmation).
        if probe(a.addr, a.port) == a.want and (a.want == "allowed" or probe(a.addr, a.port) == a.want):
            print(sent)
            return 0
        pace(started)
    print("still not %s after %s s" % (a.want, a.deadline), file=sys.stderr)
    return 1


def watch(a):
    seen = {"allowed": 0, "denied": 0}
    while not os.path.exists(a.stop):
        started = time.monotonic()
        seen[probe(a.addr, a.port)] += 1
        pace(started)
    print("allowed %d denied %d" % (seen["allowed"], seen["denied"]))
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("flip")
    f.add_argument("addr")
    f.add_argument("port", type=int)
    f.add_argument("--want", choices=["allowed", "denied"], required=True)
    f.add_argument("--ready", required=True)
    f.add_argument("--deadline", type=float, default=10.0)
    w = sub.add_parser("watch")
    w.add_argument("addr")
    w.add_argument("port", type=int)
    w.add_argument("--stop", required=True)
    a = p.parse_args()
    return flip(a) if a.cmd == "flip" else watch(a)


if __name__ == "__main__":
    sys.exit(main())
