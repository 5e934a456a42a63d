"""A stand-in for the Kubernetes API server, just the part `routed-cni agent` uses (Nodes for
routes, Pods, Namespaces and NetworkPolicies for policy), for the e2e scripts and benchmarks.
Python 3 standard library only (run it with /usr/bin/python3). Self-test:
`/usr/bin/python3 e2e/lib/fake-apiserver-test.py` (exits non-zero on failure).

usage: fake-apiserver.py --listen ADDR:PORT --cert FILE --key FILE --token-file FILE
           [--nodes DIR] [--pods DIR] [--namespaces DIR] [--networkpolicies DIR]
           [--poll-interval SECONDS]

Serves HTTPS with the given certificate and answers only requests that carry
"Authorization: Bearer <contents of --token-file>" (else 401 with a Status body, as the real
server does). Each directory holds the objects of one kind, one JSON document per *.json file
(`kubectl get pod -o json`; kind and apiVersion may be left out; file names are free, files
whose name starts with "." are ignored, so a test can write ".x.tmp" and rename it into place).
A file may also hold many objects as {"kind": "List", "items": [...]} (`kubectl get pods -o
json`): the fast way to apply many changes at once (one write, one read, one scan). The object's
metadata.namespace (namespaced kinds; "default" when absent) and metadata.name identify it. A
kind without a directory is served as empty, as in a cluster that has none.

The directories are polled every --poll-interval seconds (default 0.2); SIGHUP polls at once.
Every change becomes a watch event with a new resourceVersion: a new object ADDED, a changed
one MODIFIED, a removed one DELETED. A poll stats every file and re-reads only those whose
(inode, size, mtime, ctime) changed, or whose mtime was too recent to trust (a file rewritten
within one coarse kernel clock tick keeps its mtime: such files are re-read once more at the
next poll, as git does with "racily clean" index entries). Each poll that found changes logs
"scan: N events (resourceVersion A..B) in T ms"; after the initial load each event is logged
as "event RV TYPE Kind NS/NAME at UNIX_TIME" (the API-side timestamp for latency benchmarks).

  Paths (core group /api/v1, networking.k8s.io under /apis/networking.k8s.io/v1):
  GET /api/v1/nodes, /api/v1/nodes/NAME
  GET /api/v1/namespaces, /api/v1/namespaces/NAME
  GET /api/v1/pods (all namespaces), /api/v1/namespaces/NS/pods, /api/v1/namespaces/NS/pods/NAME
  GET /apis/networking.k8s.io/v1/networkpolicies, .../namespaces/NS/networkpolicies[/NAME]
  GET .../NAME/status                   the object (the status subresource reads the whole object)
  PATCH /api/v1/nodes/NAME/status       application/strategic-merge-patch+json (lists with a
                                        merge key, status.conditions and status.addresses by
                                        "type", merge element-wise; `$patch: delete` removes
                                        one) or application/merge-patch+json (RFC 7386: lists
                                        are replaced whole, exactly as the real server does;
                                        a client that sends one condition that way drops the
                                        others). Only status changes; the result is written
                                        back to the node's file, so watches see MODIFIED.

  Collections answer a List (kind NodeList, PodList, NamespaceList, NetworkPolicyList) with
  metadata.resourceVersion, items ordered by namespace/name, no metadata.continue. As the real
  server does for built-in kinds, list items carry no kind/apiVersion (the List does); single
  GETs and watch event objects carry them.
  ?watch=1&resourceVersion=RV&timeoutSeconds=N&allowWatchBookmarks=true
      chunked stream of newline-delimited {"type", "object"} events after RV, of that kind
      (and namespace, and selectors) only; resourceVersion absent or "0": the current objects
      as ADDED first (the real "any version" start), then live events. A BOOKMARK (object of
      the watched kind, only metadata.resourceVersion) when the backlog is sent, then every
      60 s and 2 s before the timeout (the real cacher's schedule), when allowed.
      sendInitialEvents=true: the current objects as ADDED, then a BOOKMARK annotated
      k8s.io/initial-events-end=true (the streaming-list protocol).
  fieldSelector   metadata.name, metadata.namespace (namespaced kinds), and per kind what the
                  real server supports: pods spec.nodeName, spec.restartPolicy,
                  spec.schedulerName, spec.serviceAccountName, spec.hostNetwork, status.phase,
                  status.podIP, status.nominatedNodeName; nodes spec.unschedulable; namespaces
                  status.phase. Operators =, ==, !=, comma-separated (AND). Other fields: 400.
  labelSelector   k=v, k==v, k!=v, k in (a,b), k notin (a,b), k, !k, k>N, k<N (AND). 400 if
                  unparseable.
  A watch with selectors sends what the real watch cache sends: ADDED when an object starts
  matching (a label change, a pod bound to the node), DELETED (the last matching state, at the
  new resourceVersion) when it stops matching, MODIFIED while it keeps matching.
  limit, continue, resourceVersionMatch, pretty and unknown parameters are ignored (the whole
  list is one page, which the API allows).

  Errors are Status objects as the real server sends them: 401 Unauthorized, 404 NotFound (an
  unknown object or path), 400 BadRequest (a bad selector or resourceVersion), 405
  MethodNotAllowed (every other method and path), 415 UnsupportedMediaType (PATCH with
  json-patch or apply-patch, which the stand-in does not implement).

Deviations from the real API server, on purpose: the whole event history is kept (no 5-minute
window) until SIGUSR1; a watch from a resourceVersion above the current one waits instead of
failing after 3 s ("Too large resource version"); the first bookmark comes right after the
backlog (allowed: bookmarks may come at any time); JSON only, no protobuf or Table; no
pagination; a list's ?resourceVersion is ignored (the current state is always new enough,
except for a version from the future). Item GETs answer the object even with ?watch (to watch
one object, use fieldSelector=metadata.name=NAME on the collection, as client-go does). Every
object gets a uid and creationTimestamp when its file has none, and every
Namespace the kubernetes.io/metadata.name label, as the real server sets them.

SIGUSR1 compacts the event history (as etcd compaction does) and ends the open watches (as an
API server restart does): a watch from an older resourceVersion then gets an ERROR event with
code 410, which tells the client to relist.

One resourceVersion counter serves every kind (etcd's revision is global), so versions compare
across kinds.

Cost (`fake-apiserver-test.py --bench`, 2 shared cores under load): a poll that finds nothing
changed stats every file, 4-12 us a file (1,000 pod files: 4-12 ms; 10,000: about 45 ms); a
changed file costs its read, parse and event, about 0.1 ms (all 1,000 rewritten: about 90 ms;
the initial load of 1,000: about 100-200 ms). 150,000 pod files would cost about a second a
poll: at that size use fewer, larger List files (one per node: 5,000 files, a change re-reads
one node's pods) and a longer --poll-interval with SIGHUP after each change. Memory is the
parsed objects plus the event history (kept until SIGUSR1).
Each request is logged on stderr: "CLIENT_ADDRESS METHOD PATH -> STATUS".
"""

import argparse
import bisect
import copy
import hashlib
import json
import os
import re
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# A file whose mtime is within this of the poll that read it may be rewritten later in the same
# coarse clock tick (1-10 ms) with the same mtime: it is read again at the next poll.
RACY_NS = 100_000_000
BOOKMARK_EVERY = 60.0  # the real cacher's bookmark frequency, about a minute
BOOKMARK_BEFORE_END = 2.0  # and one 2 s before the watch's deadline

NETWORKING = "/apis/networking.k8s.io/v1"


def _get(obj, *path):
    for p in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(p)
    return obj


def _text(v):
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _field(*path):
    return lambda obj: _text(_get(obj, *path))


class Kind:
    def __init__(self, resource, kind, api_version, prefix, namespaced, fields):
        self.resource = resource
        self.kind = kind
        self.api_version = api_version
        self.prefix = prefix
        self.namespaced = namespaced
        self.fields = {"metadata.name": _field("metadata", "name")}
        if namespaced:
            self.fields["metadata.namespace"] = _field("metadata", "namespace")
        self.fields.update({f: _field(*f.split(".")) for f in fields})
        group = api_version.split("/")[0] if "/" in api_version else ""
        self.qualified = resource + ("." + group if group else "")


KINDS = {k.resource: k for k in [
    Kind("nodes", "Node", "v1", "/api/v1", False, ["spec.unschedulable"]),
    Kind("namespaces", "Namespace", "v1", "/api/v1", False, ["status.phase"]),
    Kind("pods", "Pod", "v1", "/api/v1", True, [
        "spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
        "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName"]),
    Kind("networkpolicies", "NetworkPolicy", "networking.k8s.io/v1", NETWORKING, True, []),
]}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---- selectors ----------------------------------------------------------------------------------

class BadRequest(Exception):
    pass


def parse_field_selector(kind, text):
    """-> predicate(obj). Terms k=v, k==v, k!=v joined by commas (AND)."""
    terms = []
    for term in filter(None, (t.strip() for t in (text or "").split(","))):
        m = re.fullmatch(r"([^=!]+?)\s*(==|=|!=)\s*(.*)", term)
        if not m:
            raise BadRequest("invalid field selector: %r" % term)
        key, op, value = m.groups()
        get = kind.fields.get(key)
        if get is None:
            raise BadRequest('field label not supported: %s' % key)
        terms.append((get, op == "!=", value))
    return lambda obj: all((get(obj) == value) != negate for get, negate, value in terms)


_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"


def _split_top(text):
    """Splits at commas outside parentheses: "a in (x,y),b" -> ["a in (x,y)", "b"]."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_label_selector(text):
    """-> predicate(labels dict), the syntax of k8s.io/apimachinery/pkg/labels.Parse."""
    reqs = []
    for term in _split_top(text or ""):
        m = re.fullmatch(r"!\s*(%s)" % _KEY, term)
        if m:
            k = m.group(1)
            reqs.append(lambda l, k=k: k not in l)
            continue
        m = re.fullmatch(r"(%s)" % _KEY, term)
        if m:
            k = m.group(1)
            reqs.append(lambda l, k=k: k in l)
            continue
        m = re.fullmatch(r"(%s)\s+(in|notin)\s*\(([^()]*)\)" % _KEY, term)
        if m:
            k, op, vals = m.group(1), m.group(3), m.group(4)
            values = {v.strip() for v in vals.split(",")}
            if not all(re.fullmatch(_VALUE, v) for v in values):
                raise BadRequest("unable to parse requirement: %r" % term)
            if op == "in":
                reqs.append(lambda l, k=k, vs=values: k in l and l[k] in vs)
            else:
                reqs.append(lambda l, k=k, vs=values: k not in l or l[k] not in vs)
            continue
        m = re.fullmatch(r"(%s)\s*(==|=|!=)\s*(%s)" % (_KEY, _VALUE), term)
        if m:
            k, op, v = m.group(1), m.group(3), m.group(4)
            if op == "!=":
                reqs.append(lambda l, k=k, v=v: l.get(k) != v)
            else:
                reqs.append(lambda l, k=k, v=v: l.get(k) == v)
            continue
        m = re.fullmatch(r"(%s)\s*([<>])\s*(-?[0-9]+)" % _KEY, term)
        if m:
            k, op, n = m.group(1), m.group(3), int(m.group(4))

            def cmp(l, k=k, op=op, n=n):
                try:
                    have = int(l[k])
                except (KeyError, ValueError):
                    return False
                return have > n if op == ">" else have < n
            reqs.append(cmp)
            continue
        raise BadRequest("unable to parse requirement: %r" % term)
    return lambda labels: all(r(labels) for r in reqs)


def make_filter(kind, namespace, query):
    fields = parse_field_selector(kind, query.get("fieldSelector"))
    labels = parse_label_selector(query.get("labelSelector"))

    def match(obj):
        if namespace is not None and _get(obj, "metadata", "namespace") != namespace:
            return False
        return fields(obj) and labels(_get(obj, "metadata", "labels") or {})
    return match


# ---- the store ----------------------------------------------------------------------------------

class FileEntry:
    """What one file held when last read: its stat signature and objects by key."""

    def __init__(self, sig, racy, objs):
        self.sig = sig
        self.racy = racy
        self.objs = objs  # key -> (raw object as in the file, digest)


def _digest(obj):
    return hashlib.blake2b(json.dumps(obj, sort_keys=True).encode(), digest_size=16).digest()


class Store:
    """Objects of every kind, one resourceVersion counter, the event history."""

    def __init__(self, dirs):
        self.dirs = dirs  # resource -> directory (kinds without one stay empty)
        self.cond = threading.Condition()
        self.scan_lock = threading.Lock()  # one scan (or PATCH write-back) at a time
        self.wake = threading.Event()
        self.rv = 100
        self.oldest = 0  # watches from a version below this get 410
        self.generation = 0  # bumped by compact(): open watches end
        self.objects = {r: {} for r in KINDS}  # resource -> key -> (served object, digest)
        # resource -> key -> the object as a list item, serialized once (a list of 150,000 pods
        # would otherwise cost seconds of json.dumps per request: the stand-in, not the client,
        # would be what a benchmark measures); dropped when the object changes
        self.item_json = {r: {} for r in KINDS}
        self.files = {r: {} for r in KINDS}  # resource -> path -> FileEntry
        self.claims = {r: {} for r in KINDS}  # resource -> key -> sorted paths holding it
        self.bad = {}  # path -> sig already complained about
        self.events = []  # (rv, type, resource, object, previous object or None)
        self.event_rvs = []  # the events' rvs, for bisect
        self.loaded = False
        self.scan()
        self.loaded = True

    # -- reading the directories --

    def _parse(self, kind, path, text):
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        items = doc.get("items") if doc.get("kind") == "List" else [doc]
        if not isinstance(items, list):
            raise ValueError("a List without items")
        objs = {}
        for obj in items:
            name = _get(obj, "metadata", "name")
            if not isinstance(name, str) or not name:
                raise ValueError("an object without metadata.name")
            if obj.get("kind") not in (None, kind.kind):
                raise ValueError("a %s in the %s directory" % (obj.get("kind"), kind.resource))
            ns = (_get(obj, "metadata", "namespace") or "default") if kind.namespaced else ""
            objs[(ns, name)] = (obj, _digest(obj))
        return objs

    def scan(self):
        with self.scan_lock:
            self._scan()

    def _scan(self):
        started = time.monotonic()
        first = self.rv
        for resource, directory in self.dirs.items():
            self._scan_kind(KINDS[resource], directory)
        if self.rv != first:
            log("scan: %d events (resourceVersion %d..%d) in %.1f ms" % (
                self.rv - first, first + 1, self.rv, (time.monotonic() - started) * 1000))

    def _scan_kind(self, kind, directory):
        files = self.files[kind.resource]
        now = time.time_ns()
        seen = set()
        changed = {}  # path -> new FileEntry, or None when removed
        with os.scandir(directory) as it:
            for e in it:
                if e.name.startswith(".") or not e.name.endswith(".json"):
                    continue
                try:
                    st = e.stat()
                except OSError:
                    continue  # removed between listing and stat
                seen.add(e.path)
                sig = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                old = files.get(e.path)
                if old is not None and old.sig == sig and not old.racy:
                    continue
                try:
                    with open(e.path) as f:
                        objs = self._parse(kind, e.path, f.read())
                except (OSError, ValueError) as err:
                    # Half-written by the test (the next poll sees it whole) or wrong: keep
                    # what the file held before, say so once.
                    if self.bad.get(e.path) != sig:
                        self.bad[e.path] = sig
                        log("skipping %s: %s" % (e.path, err))
                    continue
                self.bad.pop(e.path, None)
                entry = FileEntry(sig, st.st_mtime_ns >= now - RACY_NS, objs)
                if old is not None and {k: d for k, (_, d) in old.objs.items()} == \
                        {k: d for k, (_, d) in objs.items()}:
                    files[e.path] = entry  # touched, same objects
                    continue
                changed[e.path] = entry
        for path in files:
            if path not in seen:
                changed[path] = None
        if not changed:
            return
        claims = self.claims[kind.resource]
        keys = set()
        for path, entry in changed.items():
            old = files.pop(path, None)
            for key in (old.objs if old else ()):
                claims[key].remove(path)
                if not claims[key]:
                    del claims[key]
                keys.add(key)
            if entry is not None:
                files[path] = entry
                for key in entry.objs:
                    paths = claims.setdefault(key, [])
                    bisect.insort(paths, path)
                    if len(paths) > 1:
                        log("%s %s is in %s: the first file wins" % (
                            kind.kind, "/".join(filter(None, key)), ", ".join(paths)))
                    keys.add(key)
        with self.cond:
            for key in sorted(keys):
                paths = claims.get(key)
                self._set(kind, key, files[paths[0]].objs[key] if paths else None)
            self.cond.notify_all()

    # -- changing objects (callers hold self.cond) --

    def _set(self, kind, key, raw):
        """Makes the object at key what raw says (None: deleted), with an event if it changed."""
        objects = self.objects[kind.resource]
        cur = objects.get(key)
        if raw is None:
            if cur is None:
                return
            del objects[key]
            self.item_json[kind.resource].pop(key, None)
            self.rv += 1
            obj = copy.deepcopy(cur[0])
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self._event("DELETED", kind, obj, cur[0])
            return
        obj, digest = raw
        if cur is not None and cur[1] == digest:
            return
        self.rv += 1
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        obj["kind"] = kind.kind
        obj["apiVersion"] = kind.api_version
        # Moved to the front, as the real server orders them (readability of dumps only).
        obj = {"kind": obj.pop("kind"), "apiVersion": obj.pop("apiVersion"), **obj}
        if kind.namespaced:
            meta["namespace"] = key[0]
        else:
            meta.pop("namespace", None)
        old_meta = cur[0]["metadata"] if cur else {}
        meta.setdefault("uid", old_meta.get("uid") or str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", old_meta.get("creationTimestamp")
                        or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        if kind.resource == "namespaces":
            # Set by the real server on every namespace since 1.21; policies select on it.
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = key[1]
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj.setdefault("status", {"phase": "Active"})
        meta["resourceVersion"] = str(self.rv)
        objects[key] = (obj, digest)
        self.item_json[kind.resource].pop(key, None)
        self._event("ADDED" if cur is None else "MODIFIED", kind, obj, cur[0] if cur else None)

    def _event(self, kind_of_event, kind, obj, prev):
        self.events.append((self.rv, kind_of_event, kind.resource, obj, prev))
        self.event_rvs.append(self.rv)
        if self.loaded:
            meta = obj["metadata"]
            log("event %d %s %s %s at %.3f" % (
                self.rv, kind_of_event, kind.kind,
                "/".join(filter(None, [meta.get("namespace"), meta["name"]])), time.time()))

    def patch_node_status(self, name, patch, strategic):
        """Applies a PATCH to a node's status, writes it back to the node's file (the next
        poll would see it anyway; doing it here gives the response its new resourceVersion)."""
        key = ("", name)
        with self.scan_lock:
            paths = self.claims["nodes"].get(key)
            with self.cond:
                if self.objects["nodes"].get(key) is None or not paths:
                    return None
            path = paths[0]
            # A test may rename a new version of the file into place meanwhile: the patch is
            # applied to the version read and written back only if that is still the file
            # (else read again), so the test's edit is never lost.
            for _ in range(20):
                before = os.stat(path)
                with open(path) as f:
                    doc = json.load(f)
                items = doc["items"] if doc.get("kind") == "List" else [doc]
                for i, raw in enumerate(items):
                    if _get(raw, "metadata", "name") == name:
                        merged = (strategic_merge if strategic else merge_patch)(copy.deepcopy(raw), patch)
                        raw = dict(raw)
                        if isinstance(merged, dict) and merged.get("status") is not None:
                            raw["status"] = merged["status"]
                        else:
                            raw.pop("status", None)
                        items[i] = raw
                if doc.get("kind") != "List":
                    doc = items[0]
                tmp = os.path.join(os.path.dirname(path), ".%s.tmp-%d" % (
                    os.path.basename(path), os.getpid()))
                with open(tmp, "w") as f:
                    json.dump(doc, f, indent=4)
                    f.write("\n")
                now = os.stat(path)
                if (now.st_ino, now.st_mtime_ns, now.st_size) == \
                        (before.st_ino, before.st_mtime_ns, before.st_size):
                    os.replace(tmp, path)
                    break
                os.unlink(tmp)
            self._scan()  # the write becomes MODIFIED now, not at the next poll
            with self.cond:
                return self.objects["nodes"][key][0]

    def compact(self):
        with self.cond:
            self.rv += 1
            self.oldest = self.rv
            self.events = []
            self.event_rvs = []
            self.generation += 1
            self.cond.notify_all()
        log("compacted: watches from before resourceVersion %d get 410" % self.oldest)

    def poll(self, interval):
        while True:
            self.wake.wait(interval)
            self.wake.clear()
            try:
                self.scan()
            except OSError as e:
                log("scan failed: %s" % e)  # a directory removed under us: try again later


# ---- patches --------------------------------------------------------------------------------------

def merge_patch(target, patch):
    """RFC 7386 JSON merge patch: objects merge, null deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        else:
            target[k] = merge_patch(target.get(k), v)
    return target


# The lists of the Node type that carry patchStrategy=merge (and their merge key), by path.
MERGE_KEYS = {
    ("status", "conditions"): "type",
    ("status", "addresses"): "type",
    ("metadata", "ownerReferences"): "uid",
    ("metadata", "finalizers"): None,  # a merged list of scalars
}


def strategic_merge(target, patch, path=()):
    """The subset of Kubernetes' strategic merge patch that Node status needs: maps merge
    (null deletes), the lists in MERGE_KEYS merge element-wise by their key, honouring
    `$patch: delete`; every other list is replaced; other `$` directives are dropped."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    for k, v in patch.items():
        if k.startswith("$"):
            continue
        sub = path + (k,)
        if v is None:
            target.pop(k, None)
        elif isinstance(v, list) and sub in MERGE_KEYS:
            target[k] = _merge_list(target.get(k) or [], v, MERGE_KEYS[sub])
        elif isinstance(v, dict):
            target[k] = strategic_merge(target.get(k), v, sub)
        else:
            target[k] = copy.deepcopy(v)
    return target


def _merge_list(have, patch, key):
    out = copy.deepcopy(have) if isinstance(have, list) else []
    for item in patch:
        if key is None:
            if item not in out:
                out.append(copy.deepcopy(item))
            continue
        if not isinstance(item, dict) or key not in item:
            raise BadRequest("map: %r does not contain declared merge key: %s" % (item, key))
        at = next((i for i, h in enumerate(out) if isinstance(h, dict) and h.get(key) == item[key]),
                  None)
        if item.get("$patch") == "delete":
            if at is not None:
                del out[at]
        elif at is None:
            out.append(strategic_merge({}, item))
        else:
            out[at] = strategic_merge(out[at], item)
    return out


# ---- HTTP ---------------------------------------------------------------------------------------

def status(code, reason, message, details=None):
    s = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
         "message": message, "reason": reason, "code": code}
    if details is not None:
        s["details"] = details
    return s


def not_found(kind, name):
    details = {"name": name, "kind": kind.resource}
    if kind.prefix != "/api/v1":
        details["group"] = kind.qualified.split(".", 1)[1]
    return status(404, "NotFound", '%s "%s" not found' % (kind.qualified, name), details)


NO_SUCH_PATH = status(404, "NotFound", "the server could not find the requested resource", {})


def route(path):
    """-> (Kind, namespace or None, name or None, subresource or None), or None."""
    for prefix in ("/api/v1", NETWORKING):
        if path == prefix or path.startswith(prefix + "/"):
            rest = [p for p in path[len(prefix):].split("/") if p]
            break
    else:
        return None
    mine = {r: k for r, k in KINDS.items() if k.prefix == prefix}
    ns = None
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] in mine and mine[rest[2]].namespaced:
        ns, rest = rest[1], rest[2:]
    if not rest or rest[0] not in mine or len(rest) > 3:
        return None
    kind = mine[rest[0]]
    name = rest[1] if len(rest) > 1 else None
    if name is not None and kind.namespaced and ns is None:
        return None  # /api/v1/pods/NAME does not exist
    return kind, ns, name, rest[2] if len(rest) > 2 else None


def _without_type(obj):
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    store = None
    token = None

    def log_message(self, fmt, *args):
        pass

    def log(self, code):
        log("%s %s %s -> %d" % (self.client_address[0], self.command, self.path, code))

    def send_json(self, code, obj):
        self.send_body(code, json.dumps(obj).encode())

    def send_body(self, code, body):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.log(code)

    def chunk(self, obj):
        data = json.dumps(obj).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def authorized(self):
        with open(self.token) as f:
            want = "Bearer " + f.read().strip()
        if self.headers.get("Authorization") != want:
            self.send_json(401, status(401, "Unauthorized", "Unauthorized"))
            return False
        return True

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def other(self):
        body = self.body()  # read, so the connection stays usable
        if not self.authorized():
            return
        url = urllib.parse.urlsplit(self.path)
        r = route(url.path)
        if self.command == "PATCH" and r and r[0].resource == "nodes" and r[2] and r[3] == "status":
            self.patch_status(r[2], body)
            return
        self.send_json(405, status(405, "MethodNotAllowed",
                                   "the server does not allow this method on the requested resource",
                                   {}))

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = other

    def patch_status(self, name, body):
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype not in ("application/strategic-merge-patch+json", "application/merge-patch+json"):
            self.send_json(415, status(
                415, "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types "
                "(of this stand-in) include: application/merge-patch+json, "
                "application/strategic-merge-patch+json"))
            return
        try:
            patch = json.loads(body)
            if not isinstance(patch, dict):
                raise ValueError("the patch is not a JSON object")
            node = self.store.patch_node_status(
                name, patch, ctype == "application/strategic-merge-patch+json")
        except (ValueError, BadRequest) as e:
            self.send_json(400, status(400, "BadRequest", str(e)))
            return
        if node is None:
            self.send_json(404, not_found(KINDS["nodes"], name))
        else:
            self.send_json(200, node)

    def do_GET(self):
        if not self.authorized():
            return
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        r = route(url.path)
        if r is None or (r[3] is not None and r[3] != "status"):
            self.send_json(404, NO_SUCH_PATH)
            return
        kind, ns, name, _ = r
        store = self.store
        if name is not None:
            with store.cond:
                found = store.objects[kind.resource].get((ns or "", name))
            if found is None:
                self.send_json(404, not_found(kind, name))
            else:
                self.send_json(200, found[0])
            return
        try:
            match = make_filter(kind, ns, query)
        except BadRequest as e:
            self.send_json(400, status(400, "BadRequest", str(e)))
            return
        if query.get("watch") in ("1", "true"):
            self.watch(kind, match, query)
            return
        with store.cond:
            cached = store.item_json[kind.resource]
            items = []
            for key, (o, _) in sorted(store.objects[kind.resource].items()):
                if match(o):
                    item = cached.get(key)
                    if item is None:
                        item = cached[key] = json.dumps(_without_type(o)).encode()
                    items.append(item)
            rv = store.rv
        head = json.dumps({"kind": kind.kind + "List", "apiVersion": kind.api_version,
                           "metadata": {"resourceVersion": str(rv)}})
        self.send_body(200, b"%s,\"items\":[%s]}" % (head[:-1].encode(), b",".join(items)))

    def watch(self, kind, match, query):
        store = self.store
        given = query.get("resourceVersion") or "0"
        try:
            since = int(given)
        except ValueError:
            self.send_json(400, status(400, "BadRequest", "invalid resourceVersion: %r" % given))
            return
        initial = query.get("sendInitialEvents") == "true" or since == 0
        bookmarks = query.get("allowWatchBookmarks") == "true"
        try:
            timeout = float(query.get("timeoutSeconds", 1800))
        except ValueError:
            timeout = 1800.0
        deadline = time.monotonic() + timeout
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.log(200)

        def bookmark(rv, end_of_initial=False):
            meta = {"resourceVersion": str(rv)}
            if end_of_initial:
                meta["annotations"] = {"k8s.io/initial-events-end": "true"}
            self.chunk({"type": "BOOKMARK", "object": {
                "kind": kind.kind, "apiVersion": kind.api_version, "metadata": meta}})

        state = []
        try:
            with store.cond:
                generation = store.generation
                expired = not initial and since < store.oldest
                oldest = store.oldest
                if initial:
                    state = [o for _, (o, _) in sorted(store.objects[kind.resource].items())
                             if match(o)]
                    since = store.rv
            if expired:
                # The real server answers 200 and then one ERROR event.
                self.chunk({"type": "ERROR", "object": status(
                    410, "Expired", "too old resource version: %d (%d)" % (since, oldest))})
            else:
                for obj in state:
                    self.chunk({"type": "ADDED", "object": obj})
                self.stream(kind, match, since, generation, deadline, bookmarks, bookmark,
                            query.get("sendInitialEvents") == "true")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            # The client went away mid-stream: nothing more can be said on this connection.
            self.close_connection = True
        # A watch that ran its course leaves the connection open for the next request, as the
        # real server does over HTTP/1.1 (clients pool it: closing it here made the agent's next
        # request fail on a dead pooled connection).

    def stream(self, kind, match, sent, generation, deadline, bookmarks, bookmark, initial_end):
        store = self.store
        first = True
        next_bookmark = min(time.monotonic() + BOOKMARK_EVERY, deadline - BOOKMARK_BEFORE_END)
        while True:
            with store.cond:
                i = bisect.bisect_right(store.event_rvs, sent)
                pending = store.events[i:]
                now_rv = store.rv
                if not pending and not first:
                    now = time.monotonic()
                    if now >= deadline or store.generation != generation:
                        return
                    if not (bookmarks and now >= next_bookmark):
                        until = min(deadline, next_bookmark) if bookmarks else deadline
                        store.cond.wait(min(until - now, 0.5))
                        continue
            for erv, type_, resource, obj, prev in pending:
                if resource != kind.resource:
                    continue
                out = convert(type_, obj, prev, match)
                if out is not None:
                    self.chunk({"type": out[0], "object": out[1]})
            if generation != store.generation:
                return
            sent = now_rv
            if bookmarks and (first or time.monotonic() >= next_bookmark):
                bookmark(sent, first and initial_end)
                now = time.monotonic()
                next_bookmark = min(now + BOOKMARK_EVERY, deadline - BOOKMARK_BEFORE_END)
                if next_bookmark <= now:
                    next_bookmark = deadline + 1  # the one before the deadline is sent
            first = False


def convert(type_, obj, prev, match):
    """The event a watcher with a filter gets (the real cacher's convertToWatchEvent)."""
    now = type_ != "DELETED" and match(obj)
    before = prev is not None and match(prev)
    if now and not before:
        return "ADDED", obj
    if now and before:
        return "MODIFIED", obj
    if before:
        if type_ == "DELETED":
            return "DELETED", obj
        # The last state that matched, at the event's resourceVersion.
        gone = copy.deepcopy(prev)
        gone["metadata"]["resourceVersion"] = obj["metadata"]["resourceVersion"]
        return "DELETED", gone
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--listen", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--token-file", required=True)
    for r in KINDS:
        p.add_argument("--" + r, metavar="DIR", help="the %s objects" % KINDS[r].kind)
    p.add_argument("--poll-interval", type=float, default=0.2, metavar="SECONDS")
    a = p.parse_args()
    host, port = a.listen.rsplit(":", 1)
    dirs = {r: getattr(a, r) for r in KINDS if getattr(a, r)}
    started = time.monotonic()
    store = Store(dirs)
    log("loaded %s in %.0f ms (resourceVersion %d)" % (
        ", ".join("%d %s" % (len(store.objects[r]), r) for r in KINDS),
        (time.monotonic() - started) * 1000, store.rv))
    Handler.store = store
    Handler.token = a.token_file
    signal.signal(signal.SIGUSR1, lambda *_: store.compact())
    signal.signal(signal.SIGHUP, lambda *_: store.wake.set())
    threading.Thread(target=store.poll, args=(a.poll_interval,), daemon=True).start()
    if ":" in host:
        ThreadingHTTPServer.address_family = socket.AF_INET6
    server = ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    log("listening on https://%s" % a.listen)
    server.serve_forever()


if __name__ == "__main__":
    main()
