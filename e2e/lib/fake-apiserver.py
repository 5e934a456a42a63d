"""A stand-in for the Kubernetes API server, just the part `routed-cni agent` uses, for
e2e/85-agent.sh. Python 3 standard library only (run it with /usr/bin/python3).

usage: fake-apiserver.py --listen ADDR:PORT --cert FILE --key FILE --token-file FILE --nodes DIR

Serves HTTPS with the given certificate and answers only requests that carry
"Authorization: Bearer <contents of --token-file>" (else 401 with a Status body, as the real
server does). The Node objects are the *.json files of --nodes (one `kubectl get node -o json`
document each); the directory is polled, and every change becomes a watch event with a new
resourceVersion: a new file ADDED, a changed file MODIFIED, a removed file DELETED.

  GET /api/v1/nodes                      NodeList with metadata.resourceVersion
  GET /api/v1/nodes/NAME                 one Node, or 404
  GET /api/v1/nodes?watch=1&resourceVersion=RV&timeoutSeconds=N[&allowWatchBookmarks=true]
                                         chunked stream of newline-delimited events after RV,
                                         a BOOKMARK once the backlog is sent (when allowed),
                                         then live events until N seconds have passed

SIGUSR1 compacts the event history (as etcd compaction does) and ends the open watches (as an
API server restart does): a watch from an older resourceVersion then gets an ERROR event with
code 410, which tells the client to relist.
Each request is logged on stderr: "CLIENT_ADDRESS METHOD PATH -> STATUS".
"""

import argparse
import copy
import json
import os
import signal
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Store:
    """Node objects by name, a resourceVersion counter and the event history."""

    def __init__(self, directory):
        self.directory = directory
        self.cond = threading.Condition()
        self.rv = 100
        self.oldest = 0  # watches from a version below this get 410
        self.generation = 0  # bumped by compact(): open watches end
        self.nodes = {}  # name -> (file content, object)
        self.events = []  # (rv, type, object)
        self.scan()

    def scan(self):
        """Turns the directory's current state into events."""
        seen = {}
        for entry in sorted(os.listdir(self.directory)):
            if not entry.endswith(".json"):
                continue
            path = os.path.join(self.directory, entry)
            try:
                with open(path) as f:
                    text = f.read()
                obj = json.loads(text)
            except (OSError, ValueError):
                continue  # half-written by the test: the next scan sees it whole
            seen[obj["metadata"]["name"]] = (text, obj)
        with self.cond:
            changed = False
            for name, (text, obj) in seen.items():
                old = self.nodes.get(name)
                if old is not None and old[0] == text:
                    continue
                self.rv += 1
                obj = copy.deepcopy(obj)
                obj["metadata"]["resourceVersion"] = str(self.rv)
                self.nodes[name] = (text, obj)
                self.events.append((self.rv, "ADDED" if old is None else "MODIFIED", obj))
                changed = True
            for name in [n for n in self.nodes if n not in seen]:
                _, obj = self.nodes.pop(name)
                self.rv += 1
                obj = copy.deepcopy(obj)
                obj["metadata"]["resourceVersion"] = str(self.rv)
                self.events.append((self.rv, "DELETED", obj))
                changed = True
            if changed:
                self.cond.notify_all()

    def compact(self):
        with self.cond:
            self.rv += 1
            self.oldest = self.rv
            self.events = []
            self.generation += 1
            self.cond.notify_all()
        print("compacted: watches from before resourceVersion %d get 410" % self.oldest,
              file=sys.stderr, flush=True)

    def poll(self):
        while True:
            time.sleep(0.2)
            self.scan()


def status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    store = None
    token = None

    def log_message(self, fmt, *args):
        pass

    def log(self, code):
        print("%s %s %s -> %d" % (self.client_address[0], self.command, self.path, code),
              file=sys.stderr, flush=True)

    def send_json(self, code, obj):
        body = json.dumps(obj).encode()
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

    def do_GET(self):
        with open(self.token) as f:
            want = "Bearer " + f.read().strip()
        if self.headers.get("Authorization") != want:
            self.send_json(401, status(401, "Unauthorized", "Unauthorized"))
            return
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        store = self.store
        if url.path == "/api/v1/nodes" and query.get("watch") in ("1", "true"):
            self.watch(query)
        elif url.path == "/api/v1/nodes":
            with store.cond:
                items = [obj for _, obj in store.nodes.values()]
                rv = store.rv
            self.send_json(200, {"kind": "NodeList", "apiVersion": "v1",
                                 "metadata": {"resourceVersion": str(rv)}, "items": items})
        elif url.path.startswith("/api/v1/nodes/"):
            name = url.path.rsplit("/", 1)[1]
            with store.cond:
                node = store.nodes.get(name)
            if node is None:
                self.send_json(404, status(404, "NotFound", 'nodes "%s" not found' % name))
            else:
                self.send_json(200, node[1])
        else:
            self.send_json(404, status(404, "NotFound", "the server could not find the requested resource"))

    def watch(self, query):
        store = self.store
        try:
            since = int(query.get("resourceVersion") or 0)
        except ValueError:
            self.send_json(400, status(400, "BadRequest", "invalid resourceVersion"))
            return
        deadline = time.monotonic() + float(query.get("timeoutSeconds", 1800))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.log(200)
        try:
            if since < store.oldest:
                # The real server answers 200 and then one ERROR event.
                self.chunk({"type": "ERROR", "object": status(
                    410, "Expired", "too old resource version: %d (%d)" % (since, store.oldest))})
            else:
                sent = since
                first = True
                generation = store.generation
                while True:
                    with store.cond:
                        pending = [e for e in store.events if e[0] > sent]
                        if not pending and not first:
                            left = deadline - time.monotonic()
                            if left <= 0 or store.generation != generation:
                                break
                            store.cond.wait(min(left, 0.5))
                            continue
                        rv = store.rv
                    for erv, kind, obj in pending:
                        self.chunk({"type": kind, "object": obj})
                        sent = erv
                    if first and query.get("allowWatchBookmarks") == "true":
                        self.chunk({"type": "BOOKMARK", "object": {
                            "kind": "Node", "apiVersion": "v1",
                            "metadata": {"resourceVersion": str(max(sent, rv))}}})
                        sent = max(sent, rv)
                    first = False
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass
        self.close_connection = True


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--nodes", required=True)
    a = p.parse_args()
    host, port = a.listen.rsplit(":", 1)
    Handler.store = Store(a.nodes)
    Handler.token = a.token_file
    signal.signal(signal.SIGUSR1, lambda *_: Handler.store.compact())
    threading.Thread(target=Handler.store.poll, daemon=True).start()
    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print("listening on https://%s" % a.listen, file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
