"""Self-test of the stand-in API server (fake-apiserver.py): starts it on 127.0.0.1 with a CA and
certificate made here (openssl CLI), drives it over HTTPS and checks what the real API server
would answer. Python 3 standard library only. Exits non-zero on failure.

usage: /usr/bin/python3 e2e/lib/fake-apiserver-test.py          the checks (about 10 s)
       /usr/bin/python3 e2e/lib/fake-apiserver-test.py --bench  polling cost at 1,000 and
                                                                 10,000 pod files
"""

import copy
import http.client
import importlib.util
import json
import os
import queue
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "fake-apiserver.py")
FIXTURES = os.path.join(HERE, "fixtures")
FAILURES = []


def ok(what):
    print("ok   " + what)


def check(cond, what, detail=""):
    if cond:
        ok(what)
    else:
        FAILURES.append(what)
        print("FAIL " + what + (": " + str(detail) if detail != "" else ""))


def load_module():
    spec = importlib.util.spec_from_file_location("fake_apiserver", SERVER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write(path, obj):
    """Atomically, as a test should (a dot-file renamed into place)."""
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def pod(ns, name, node, labels, ports=()):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": ns, "name": name, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "agnhost", "ports": [
                {"name": "serve-%d-tcp" % p, "containerPort": p, "protocol": "TCP"} for p in ports]}]},
            "status": {"phase": "Running", "podIP": "10.244.1.%d" % (len(name) + ord(name[0]) % 50)}}


def namespace(name, labels=None):
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}


def policy(ns, name):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": ns, "name": name},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}


class Client:
    def __init__(self, port, ca, token):
        self.port = port
        self.ctx = ssl.create_default_context(cafile=ca)
        self.token = token

    def request(self, method, path, body=None, ctype=None, token=True):
        c = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=10)
        headers = {"Authorization": "Bearer " + self.token} if token else {}
        if ctype:
            headers["Content-Type"] = ctype
        c.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, json.loads(data) if data else None

    def get(self, path, **query):
        q = urllib.parse.urlencode(query)
        return self.request("GET", path + ("?" + q if q else ""))

    def watch(self, path, **query):
        return Watch(self, path, query)


class Watch:
    """A watch read on a thread of its own; events arrive in a queue."""

    def __init__(self, client, path, query):
        query.setdefault("timeoutSeconds", "20")
        self.q = queue.Queue()
        self.conn = http.client.HTTPSConnection("127.0.0.1", client.port, context=client.ctx,
                                                timeout=30)
        self.conn.request("GET", path + "?watch=1&" + urllib.parse.urlencode(query),
                          headers={"Authorization": "Bearer " + client.token})
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for line in self.resp:
                if line.strip():
                    self.q.put(json.loads(line))
        except Exception:  # noqa: BLE001 (close() shut the socket under the reader)
            pass
        self.q.put(None)  # the stream ended

    def next(self, timeout=5.0, skip_bookmarks=True):
        end = time.monotonic() + timeout
        while True:
            try:
                ev = self.q.get(timeout=max(end - time.monotonic(), 0.01))
            except queue.Empty:
                return "timeout"
            if ev is None:
                return "end"
            if skip_bookmarks and ev["type"] == "BOOKMARK":
                continue
            return ev

    def quiet(self, secs=0.6):
        """-> the events (bookmarks aside) that arrive within secs (none expected)."""
        out = []
        while True:
            ev = self.next(secs)
            if ev in ("timeout", "end"):
                return out
            out.append(ev)

    def close(self):
        # Shutting the socket down ends the reader's blocked read; close() alone would wait
        # for it (the response's buffer lock) until the server's timeout.
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass


def desc(ev):
    if not isinstance(ev, dict):
        return ev
    m = ev["object"].get("metadata", {})
    return "%s %s %s/%s rv %s" % (ev["type"], ev["object"].get("kind"), m.get("namespace", ""),
                                  m.get("name"), m.get("resourceVersion"))


def make_certs(d):
    def run(*args):
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "1", "-subj", "/CN=test-ca", "-keyout", d + "/ca.key", "-out", d + "/ca.crt")
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-subj", "/CN=kube-apiserver", "-keyout", d + "/server.key", "-out", d + "/server.csr")
    with open(d + "/san.ext", "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    run("openssl", "x509", "-req", "-in", d + "/server.csr", "-CA", d + "/ca.crt", "-CAkey",
        d + "/ca.key", "-CAcreateserial", "-days", "1", "-extfile", d + "/san.ext",
        "-out", d + "/server.crt")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(d, port):
    log = open(d + "/server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, SERVER, "--listen", "127.0.0.1:%d" % port, "--cert", d + "/server.crt",
         "--key", d + "/server.key", "--token-file", d + "/token", "--poll-interval", "0.1"]
        + sum((["--" + k, d + "/" + k] for k in ("nodes", "pods", "namespaces", "networkpolicies")), []),
        stderr=log)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("the server did not start: " + open(d + "/server.log").read())


def rv_of(obj):
    return int(obj["metadata"]["resourceVersion"])


def names(items):
    return sorted("%s/%s" % (i["metadata"].get("namespace", ""), i["metadata"]["name"]) for i in items)


def checks(d, c, proc):
    def poke():  # SIGHUP: poll now rather than within --poll-interval
        proc.send_signal(signal.SIGHUP)

    # ---- auth and errors --------------------------------------------------------------------
    code, body = c.request("GET", "/api/v1/pods", token=False)
    check(code == 401 and body["reason"] == "Unauthorized", "no token: 401 Unauthorized Status", (code, body))
    code, body = c.get("/api/v1/namespaces/x/pods/nope")
    check(code == 404 and body["reason"] == "NotFound" and body["message"] == 'pods "nope" not found',
          "an unknown pod: 404 NotFound naming it", body)
    code, body = c.get("/apis/networking.k8s.io/v1/namespaces/x/networkpolicies/nope")
    check(code == 404 and body["message"] == 'networkpolicies.networking.k8s.io "nope" not found',
          "an unknown policy: 404 with the group-qualified resource", body)
    for path in ("/api/v1/pods/a", "/api/v1/services", "/apis/networking.k8s.io/v1/pods",
                 "/api/v1/namespaces/x/nodes", "/api/v1/nodes/node-a/proxy"):
        code, body = c.get(path)
        check(code == 404 and body["kind"] == "Status", "GET %s: 404 Status" % path, (code, body))
    code, body = c.request("POST", "/api/v1/namespaces/x/pods", body=pod("x", "z", "node-a", {}))
    check(code == 405 and body["reason"] == "MethodNotAllowed", "POST: 405 MethodNotAllowed", (code, body))
    code, body = c.request("PATCH", "/api/v1/nodes/node-a", body={}, ctype="application/merge-patch+json")
    check(code == 405, "PATCH of a node (not its status): 405", code)

    # ---- lists --------------------------------------------------------------------------------
    lists = {}
    for path, kind, api, want in [
            ("/api/v1/nodes", "NodeList", "v1", ["/node-a", "/node-b"]),
            ("/api/v1/namespaces", "NamespaceList", "v1", ["/x", "/y"]),
            ("/api/v1/pods", "PodList", "v1", ["x/a", "x/b", "y/a"]),
            ("/apis/networking.k8s.io/v1/networkpolicies", "NetworkPolicyList",
             "networking.k8s.io/v1", ["x/deny"])]:
        code, body = c.get(path)
        lists[kind] = body
        check(code == 200 and body["kind"] == kind and body["apiVersion"] == api
              and "continue" not in body["metadata"] and names(body["items"]) == want,
              "GET %s: %s of %s" % (path, kind, want), (code, body.get("kind"), names(body.get("items", []))))
        check(all("kind" not in i and "apiVersion" not in i for i in body["items"]),
              "... items carry no kind/apiVersion (as the real server's lists)")
    code, body = c.get("/api/v1/namespaces/x/pods", limit="1", resourceVersionMatch="NotOlderThan",
                       resourceVersion="0", pretty="true", bogus="1")
    check(code == 200 and names(body["items"]) == ["x/a", "x/b"],
          "one namespace's pods; limit, resourceVersionMatch and unknown parameters ignored",
          (code, body))
    code, body = c.get("/apis/networking.k8s.io/v1/namespaces/y/networkpolicies")
    check(code == 200 and body["items"] == [], "a namespace without policies: empty list", body)
    code, body = c.get("/api/v1/namespaces/x/pods/a")
    check(code == 200 and body["kind"] == "Pod" and body["apiVersion"] == "v1" and body["metadata"]["uid"]
          and body["metadata"]["creationTimestamp"], "GET one pod: kind, apiVersion, uid, creationTimestamp", body)
    code, body = c.get("/api/v1/namespaces/x")
    check(body["metadata"]["labels"].get("kubernetes.io/metadata.name") == "x" and body["metadata"]["labels"]["team"] == "x"
          and body["status"]["phase"] == "Active", "a namespace gets kubernetes.io/metadata.name, as the real server sets", body)
    code, body = c.get("/api/v1/nodes/node-a/status")
    check(code == 200 and body["metadata"]["name"] == "node-a", "GET node status subresource", code)

    # ---- one resourceVersion for every kind ------------------------------------------------------
    rvs = [rv_of(i) for l in lists.values() for i in l["items"]]
    list_rvs = {int(l["metadata"]["resourceVersion"]) for l in lists.values()}
    check(len(set(rvs)) == len(rvs) and len(list_rvs) == 1 and max(rvs) <= min(list_rvs),
          "objects of all kinds have distinct versions, none above the lists' one shared version",
          (rvs, list_rvs))
    start_rv = list_rvs.pop()

    # ---- selectors on lists ---------------------------------------------------------------------
    for q, want in [({"fieldSelector": "spec.nodeName=node-a"}, ["x/a", "y/a"]),
                    ({"fieldSelector": "spec.nodeName==node-a,metadata.namespace!=y"}, ["x/a"]),
                    ({"fieldSelector": "metadata.name=b"}, ["x/b"]),
                    ({"fieldSelector": "status.phase=Running"}, ["x/a", "x/b", "y/a"]),
                    ({"labelSelector": "pod=a"}, ["x/a", "y/a"]),
                    ({"labelSelector": "pod in (a,b),tier!=db"}, ["x/a", "x/b"]),
                    ({"labelSelector": "pod notin (a)"}, ["x/b"]),
                    ({"labelSelector": "tier"}, ["y/a"]),
                    ({"labelSelector": "!tier,pod"}, ["x/a", "x/b"]),
                    ({"labelSelector": "rank>1"}, ["x/b"]),
                    ({"labelSelector": "pod=a", "fieldSelector": "metadata.namespace=x"}, ["x/a"])]:
        code, body = c.get("/api/v1/pods", **q)
        check(code == 200 and names(body["items"]) == want, "pods %s -> %s" % (q, want),
              (code, names(body.get("items", [])) if code == 200 else body))
    code, body = c.get("/api/v1/nodes", fieldSelector="metadata.name=node-b")
    check(names(body["items"]) == ["/node-b"], "nodes fieldSelector metadata.name", body)
    code, body = c.get("/api/v1/pods", fieldSelector="spec.nope=1")
    check(code == 400 and "field label not supported" in body["message"], "unknown field label: 400", body)
    code, body = c.get("/api/v1/pods", labelSelector="pod in a,b)")
    check(code == 400 and body["reason"] == "BadRequest", "unparseable label selector: 400", body)

    # ---- watches ------------------------------------------------------------------------------------
    wp = c.watch("/api/v1/pods", resourceVersion=str(start_rv), allowWatchBookmarks="true")
    ev = wp.next(skip_bookmarks=False)
    check(isinstance(ev, dict) and ev["type"] == "BOOKMARK" and ev["object"]["kind"] == "Pod"
          and rv_of(ev["object"]) == start_rv and list(ev["object"]["metadata"]) == ["resourceVersion"],
          "a watch from the list's version: a BOOKMARK (kind Pod, resourceVersion only) after the empty backlog",
          ev)
    wns = c.watch("/api/v1/namespaces", resourceVersion=str(start_rv))
    wsel = c.watch("/api/v1/pods", resourceVersion=str(start_rv), labelSelector="pod=a")
    wnode = c.watch("/api/v1/pods", resourceVersion=str(start_rv), fieldSelector="spec.nodeName=node-b")
    # A namespace first, then a pod: two events, in that order, of two kinds.
    ns = {"kind": "List", "apiVersion": "v1", "items": [namespace("x", {"team": "x"}), namespace("y", {"team": "y2"})]}
    write(d + "/namespaces/all.json", ns)
    poke()
    e_ns = wns.next()
    p = pod("x", "a", "node-a", {"pod": "a"}, [80])
    p["metadata"]["annotations"] = {"touched": "1"}
    write(d + "/pods/x-a.json", p)
    poke()
    e_pod = wp.next()
    check(isinstance(e_ns, dict) and e_ns["type"] == "MODIFIED" and e_ns["object"]["metadata"]["name"] == "y",
          "namespace y relabelled: MODIFIED on the namespace watch", desc(e_ns))
    check(isinstance(e_pod, dict) and e_pod["type"] == "MODIFIED" and e_pod["object"]["kind"] == "Pod"
          and e_pod["object"]["metadata"]["name"] == "a",
          "pod x/a changed: MODIFIED on the pod watch (kind and apiVersion set)", desc(e_pod))
    if isinstance(e_ns, dict) and isinstance(e_pod, dict):
        check(start_rv < rv_of(e_ns["object"]) < rv_of(e_pod["object"]),
              "versions grow across kinds in the order of the changes", (start_rv, desc(e_ns), desc(e_pod)))
    check(wp.quiet() == [], "the pod watch got no namespace event")
    e = wsel.next()
    check(isinstance(e, dict) and e["type"] == "MODIFIED", "labelSelector watch: x/a still matches: MODIFIED", desc(e))

    # Relabel x/b to pod=a: it starts matching (ADDED), then back: it stops (DELETED).
    write(d + "/pods/x-b.json", pod("x", "b", "node-b", {"pod": "a", "rank": "2"}))
    poke()
    e = wsel.next()
    check(isinstance(e, dict) and e["type"] == "ADDED" and e["object"]["metadata"]["name"] == "b",
          "labelSelector pod=a: x/b relabelled pod=a arrives as ADDED", desc(e))
    e = wnode.next()
    check(isinstance(e, dict) and e["type"] == "MODIFIED" and e["object"]["metadata"]["name"] == "b",
          "fieldSelector spec.nodeName=node-b: x/b's change is MODIFIED", desc(e))
    write(d + "/pods/x-b.json", pod("x", "b", "node-b", {"pod": "b", "rank": "2"}))
    poke()
    wnode.next()  # the same change, MODIFIED for the node's watch
    e = wsel.next()
    check(isinstance(e, dict) and e["type"] == "DELETED" and e["object"]["metadata"]["labels"]["pod"] == "a",
          "... relabelled back: DELETED, with its last matching state", desc(e))
    code, cur = c.get("/api/v1/namespaces/x/pods/b")
    if isinstance(e, dict):
        check(rv_of(e["object"]) == rv_of(cur), "... at the new resourceVersion", (desc(e), rv_of(cur)))
    # A pending pod bound to node-b: ADDED for the node's watch.
    write(d + "/pods/x-c.json", pod("x", "c", "", {"pod": "c"}))
    poke()
    check(wnode.quiet() == [], "an unscheduled pod: nothing on the spec.nodeName=node-b watch")
    write(d + "/pods/x-c.json", pod("x", "c", "node-b", {"pod": "c"}))
    poke()
    e = wnode.next()
    check(isinstance(e, dict) and e["type"] == "ADDED" and e["object"]["metadata"]["name"] == "c",
          "... bound to node-b: ADDED", desc(e))
    os.unlink(d + "/pods/x-c.json")
    poke()
    e = wnode.next()
    check(isinstance(e, dict) and e["type"] == "DELETED" and e["object"]["metadata"]["name"] == "c",
          "its file removed: DELETED", desc(e))
    e = wp.next()
    events = [e] + wp.quiet()
    check([x["type"] for x in events if isinstance(x, dict)] == ["MODIFIED", "MODIFIED", "ADDED", "MODIFIED", "DELETED"],
          "the unfiltered pod watch saw every pod change once, in order", [desc(x) for x in events])
    for w in (wp, wns, wsel, wnode):
        w.close()

    # From version 0: the current state as ADDED, then a bookmark. sendInitialEvents: annotated.
    w = c.watch("/api/v1/namespaces/x/pods", resourceVersion="0", allowWatchBookmarks="true", timeoutSeconds="3")
    evs = [w.next(skip_bookmarks=False) for _ in range(3)]
    check([x["type"] for x in evs if isinstance(x, dict)] == ["ADDED", "ADDED", "BOOKMARK"]
          and names([x["object"] for x in evs[:2]]) == ["x/a", "x/b"],
          "watch from 0: the namespace's pods as ADDED, then BOOKMARK", [desc(x) for x in evs])
    w.close()
    w = c.watch("/api/v1/nodes", sendInitialEvents="true", resourceVersionMatch="NotOlderThan",
                allowWatchBookmarks="true", timeoutSeconds="3")
    evs = [w.next(skip_bookmarks=False) for _ in range(3)]
    check([x["type"] for x in evs if isinstance(x, dict)] == ["ADDED", "ADDED", "BOOKMARK"]
          and evs[2]["object"]["metadata"].get("annotations") == {"k8s.io/initial-events-end": "true"},
          "sendInitialEvents: nodes, then a bookmark annotated k8s.io/initial-events-end", [desc(x) for x in evs])
    w.close()
    # timeoutSeconds ends the stream, with a bookmark 2 s before the end.
    started = time.monotonic()
    _, body = c.get("/apis/networking.k8s.io/v1/networkpolicies")
    w = c.watch("/apis/networking.k8s.io/v1/networkpolicies", resourceVersion=body["metadata"]["resourceVersion"],
                allowWatchBookmarks="true", timeoutSeconds="3")
    evs = []
    while True:
        ev = w.next(6, skip_bookmarks=False)
        if not isinstance(ev, dict):
            break
        evs.append(ev["type"])
    took = time.monotonic() - started
    check(ev == "end" and evs == ["BOOKMARK", "BOOKMARK"] and 2.5 < took < 4.5,
          "timeoutSeconds=3: the stream ends after %.1f s, bookmarks at the start and 2 s before the end" % took, (ev, evs))
    # Policies: one added and one deleted, on the policy watch.
    w = c.watch("/apis/networking.k8s.io/v1/networkpolicies", resourceVersion=body["metadata"]["resourceVersion"])
    write(d + "/networkpolicies/y-allow.json", policy("y", "allow"))
    os.unlink(d + "/networkpolicies/x-deny.json")
    poke()
    evs = [w.next(), w.next()]
    check(sorted(desc(x).split(" rv")[0] for x in evs) == ["ADDED NetworkPolicy y/allow", "DELETED NetworkPolicy x/deny"],
          "policies: a new file ADDED, a removed one DELETED", [desc(x) for x in evs])
    w.close()

    # ---- PATCH node status ---------------------------------------------------------------------------
    wn = c.watch("/api/v1/nodes", resourceVersion=c.get("/api/v1/nodes")[1]["metadata"]["resourceVersion"])
    cond = {"type": "NetworkUnavailable", "status": "False", "reason": "RoutedCniIsUp",
            "message": "routed-cni agent is running", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    code, node = c.request("PATCH", "/api/v1/nodes/node-a/status", ctype="application/strategic-merge-patch+json",
                           body={"status": {"conditions": [cond]}, "spec": {"podCIDR": "10.9.9.0/24"}})
    types = [x["type"] for x in node["status"]["conditions"]] if code == 200 else []
    check(code == 200 and "Ready" in types and "NetworkUnavailable" in types,
          "strategic merge PATCH of status: NetworkUnavailable added, Ready kept", (code, types))
    check(code == 200 and node["spec"]["podCIDR"] == "10.244.1.0/24", "... spec untouched through /status",
          node.get("spec") if code == 200 else None)
    e = wn.next()
    check(isinstance(e, dict) and e["type"] == "MODIFIED" and code == 200
          and rv_of(e["object"]) == rv_of(node), "... the node watch sees MODIFIED at the response's version", desc(e))
    with open(d + "/nodes/node-a.json") as f:
        on_disk = json.load(f)
    check([x["type"] for x in on_disk["status"]["conditions"]] == types, "... recorded in node-a's file")
    cond2 = dict(cond, status="True", reason="NoRoutes")
    code, node = c.request("PATCH", "/api/v1/nodes/node-a/status", ctype="application/strategic-merge-patch+json",
                           body={"status": {"conditions": [cond2]}})
    mine = [x for x in node["status"]["conditions"] if x["type"] == "NetworkUnavailable"]
    check(len(mine) == 1 and mine[0]["reason"] == "NoRoutes" and len(node["status"]["conditions"]) == len(types),
          "a second strategic PATCH replaces the condition of that type in place", node["status"]["conditions"])
    code, node = c.request("PATCH", "/api/v1/nodes/node-a/status", ctype="application/strategic-merge-patch+json",
                           body={"status": {"conditions": [cond2]}})
    check(wn.next() != "timeout" and wn.quiet() == [], "an unchanged PATCH: no event (same version)")
    code, node = c.request("PATCH", "/api/v1/nodes/node-b/status", ctype="application/merge-patch+json",
                           body={"status": {"conditions": [cond]}})
    check(code == 200 and [x["type"] for x in node["status"]["conditions"]] == ["NetworkUnavailable"],
          "merge-patch (RFC 7386) replaces the whole conditions list, as the real server does",
          node["status"]["conditions"] if code == 200 else (code, node))
    code, body = c.request("PATCH", "/api/v1/nodes/node-z/status", ctype="application/merge-patch+json", body={})
    check(code == 404, "PATCH of an unknown node: 404", code)
    code, body = c.request("PATCH", "/api/v1/nodes/node-a/status", ctype="application/json-patch+json", body=[])
    check(code == 415 and body["reason"] == "UnsupportedMediaType", "json-patch: 415", (code, body))
    wn.close()

    # ---- compaction: 410 for older versions, relist works ---------------------------------------
    code, body = c.get("/api/v1/pods")
    old = body["metadata"]["resourceVersion"]
    w = c.watch("/api/v1/pods", resourceVersion=old, timeoutSeconds="30")
    time.sleep(0.2)
    proc.send_signal(signal.SIGUSR1)
    check(w.next(3) == "end", "SIGUSR1 ends the open watches")
    w = c.watch("/api/v1/pods", resourceVersion=old)
    e = w.next(skip_bookmarks=False)
    check(isinstance(e, dict) and e["type"] == "ERROR" and e["object"]["code"] == 410
          and e["object"]["reason"] == "Expired", "a watch from before the compaction: ERROR 410 Expired", e)
    check(w.next() == "end", "... and the stream ends")
    code, body = c.get("/api/v1/pods")
    w = c.watch("/api/v1/pods", resourceVersion=body["metadata"]["resourceVersion"], allowWatchBookmarks="true")
    e = w.next(skip_bookmarks=False)
    check(isinstance(e, dict) and e["type"] == "BOOKMARK", "after a relist the watch works", e)
    w.close()


def racy_check(mod, d):
    """A file rewritten in place within one coarse clock tick keeps its size, inode, mtime and
    ctime: stat cannot tell, the racy-file rule must. Kernels with multigrain timestamps (6.13+)
    never show it, older ones do, so the collision is made here: after the rewrite the store's
    remembered signature is set to the file's new one, as a same-tick rewrite leaves it."""
    os.makedirs(d + "/racy")
    path = d + "/racy/p.json"
    with open(path, "w") as f:
        json.dump(pod("x", "a", "node-a", {"v": "01"}), f)
    store = mod.Store({"pods": d + "/racy"})
    with open(path, "w") as f:
        json.dump(pod("x", "a", "node-a", {"v": "02"}), f)
    st = os.stat(path)
    store.files["pods"][path].sig = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    store.scan()
    got = store.objects["pods"][("x", "a")][0]["metadata"]["labels"]["v"]
    check(got == "02", "a rewrite that leaves the stat signature unchanged is still seen (racy files re-read)",
          "still " + got)
    time.sleep(mod.RACY_NS / 1e9 + 0.05)
    store.scan()  # re-read once more: now old enough to trust
    entry = store.files["pods"][path]
    check(not entry.racy, "... and once old enough, trusted (a poll costs only the stat)")


def bench(mod):
    for n in (1000, 10000):
        d = tempfile.mkdtemp(prefix="fake-apiserver-bench-")
        try:
            os.makedirs(d + "/pods")
            t = time.monotonic()
            for i in range(n):
                write(d + "/pods/p%d.json" % i, pod("ns%d" % (i % 10), "p%d" % i, "node-%d" % (i % 50),
                                                    {"pod": "p%d" % i, "app": "a%d" % (i % 20)}, [80, 81]))
            wrote = time.monotonic() - t
            time.sleep(0.2)  # past the racy window: polls trust the stat cache
            t = time.monotonic()
            store = mod.Store({"pods": d + "/pods"})
            load = time.monotonic() - t
            t = time.monotonic()
            for _ in range(10):
                store.scan()
            idle = (time.monotonic() - t) / 10
            p = pod("ns1", "p1", "node-1", {"pod": "p1", "touched": "yes"}, [80])
            write(d + "/pods/p1.json", p)
            t = time.monotonic()
            store.scan()
            one = time.monotonic() - t
            for i in range(n):
                p = pod("ns%d" % (i % 10), "p%d" % i, "node-%d" % (i % 50), {"pod": "p%d" % i, "gen": "2"}, [80])
                write(d + "/pods/p%d.json" % i, p)
            t = time.monotonic()
            store.scan()
            every = time.monotonic() - t
            doc = {"kind": "List", "apiVersion": "v1",
                   "items": [pod("ns%d" % (i % 10), "p%d" % i, "node-%d" % (i % 50), {"pod": "p%d" % i}, [80])
                             for i in range(n)]}
            os.makedirs(d + "/list")
            write(d + "/list/all.json", doc)
            t = time.monotonic()
            mod.Store({"pods": d + "/list"})
            listload = time.monotonic() - t
            print("%6d pod files: written in %.2f s; initial load %.0f ms; poll, nothing changed %.1f ms; "
                  "one file changed %.1f ms; all changed %.0f ms; one List file of %d pods loads in %.0f ms"
                  % (n, wrote, load * 1000, idle * 1000, one * 1000, every * 1000, n, listload * 1000))
        finally:
            shutil.rmtree(d)


def main():
    mod = load_module()
    mod.log = lambda msg: None  # the in-process stores' event lines would drown the results
    if "--bench" in sys.argv:
        bench(mod)
        return
    d = tempfile.mkdtemp(prefix="fake-apiserver-test-")
    proc = None
    try:
        make_certs(d)
        with open(d + "/token", "w") as f:
            f.write("test-token\n")
        for k in ("nodes", "pods", "namespaces", "networkpolicies"):
            os.makedirs(d + "/" + k)
        for n in ("node-a", "node-b"):
            shutil.copy(os.path.join(FIXTURES, n + ".json"), d + "/nodes/")
        write(d + "/namespaces/all.json", {"kind": "List", "apiVersion": "v1", "items": [
            namespace("x", {"team": "x"}), namespace("y", {"team": "y"})]})
        write(d + "/pods/x-a.json", pod("x", "a", "node-a", {"pod": "a"}, [80]))
        write(d + "/pods/x-b.json", pod("x", "b", "node-b", {"pod": "b", "rank": "2"}))
        ya = pod("y", "a", "node-a", {"pod": "a", "tier": "db"})
        del ya["kind"], ya["apiVersion"]  # optional in the files
        write(d + "/pods/y-a.json", ya)
        write(d + "/networkpolicies/x-deny.json", policy("x", "deny"))
        port = free_port()
        proc = start(d, port)
        checks(d, Client(port, d + "/ca.crt", "test-token"), proc)
        racy_check(mod, d)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
        if FAILURES:
            print("---- server log (tail)")
            with open(d + "/server.log") as f:
                print("".join(f.readlines()[-30:]))
        if os.environ.get("KEEP"):
            print("kept " + d)
        else:
            shutil.rmtree(d)
    if FAILURES:
        print("%d FAILED: %s" % (len(FAILURES), "; ".join(FAILURES)))
        sys.exit(1)
    print("all passed")


if __name__ == "__main__":
    main()
