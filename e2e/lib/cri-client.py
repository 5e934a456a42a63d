"""A tiny CRI (runtime.v1) client that drives pod sandboxes the way kubelet does, for
e2e/70-containerd-cri.sh. Run it with Debian's /usr/bin/python3 (python3-grpcio,
python3-protobuf) and the api_pb2.py that e2e/lib/cri-prepare.sh generates with protoc from the
CRI api.proto in Debian's containerd source package.

usage: cri-client.py --socket SOCK --stubs DIR COMMAND [ARGS]

  ready [SECONDS]          wait until the runtime reports RuntimeReady and NetworkReady
  run NAME NAMESPACE UID LOGROOT CGROUP_PARENT [HOSTPORT:CONTAINERPORT[/tcp|/udp],...]
                           RunPodSandbox with a config shaped like kubelet's
                           generatePodSandboxConfig, then print the sandbox as `status` does;
                           the port mappings are those kubelet sends for a container's
                           hostPort (containerd passes them to CNI as portMappings)
  status ID                one JSON object: id, name, namespace, uid, state, ip, netns, pid
  stop ID                  StopPodSandbox (kubelet calls it again before removing)
  remove ID                RemovePodSandbox
  list                     a JSON array of `status` objects for every sandbox

A gRPC error exits 3 with "CRI error: CODE details" on stderr.
"""

import argparse
import json
import os
import sys
import time


class Runtime:
    """The runtime.v1 RuntimeService methods, with stubs built from the proto descriptor
    (so only protoc's --python_out is needed, no grpc_tools)."""

    def __init__(self, socket, stubs):
        sys.path.insert(0, stubs)
        import grpc
        import api_pb2

        self.grpc, self.pb = grpc, api_pb2
        self.channel = grpc.insecure_channel("unix://" + socket)
        self.service = api_pb2.DESCRIPTOR.services_by_name["RuntimeService"]

    def __getattr__(self, method):
        desc = self.service.methods_by_name.get(method)
        if desc is None:
            raise AttributeError(method)
        request = getattr(self.pb, desc.input_type.name)
        response = getattr(self.pb, desc.output_type.name)
        rpc = self.channel.unary_unary(
            "/%s/%s" % (self.service.full_name, method),
            request_serializer=request.SerializeToString,
            response_deserializer=response.FromString,
        )
        return lambda timeout=60, **fields: rpc(request(**fields), timeout=timeout)


def port_mappings(pb, spec):
    """`8080:80,5353:53/udp` -> PortMapping messages, as kubelet builds them from the
    containers' ports that have a hostPort (host_ip empty: every node address)."""
    out = []
    for item in filter(None, spec.split(",")):
        ports, _, proto = item.partition("/")
        host, _, container = ports.partition(":")
        out.append(pb.PortMapping(
            protocol=pb.Protocol.Value((proto or "tcp").upper()),
            container_port=int(container),
            host_port=int(host),
        ))
    return out


def sandbox_config(pb, name, namespace, uid, logroot, cgroup_parent, ports=""):
    """What kubelet (pkg/kubelet/kuberuntime/kuberuntime_sandbox.go) sends for a plain pod with
    the pod network: metadata, hostname, log directory, DNS, pod labels and annotations, the
    cgroup parent, a pod network namespace (PID per container, IPC per pod), and the port
    mappings of its hostPorts."""
    labels = {
        "io.kubernetes.pod.name": name,
        "io.kubernetes.pod.namespace": namespace,
        "io.kubernetes.pod.uid": uid,
    }
    log_directory = os.path.join(logroot, "%s_%s_%s" % (namespace, name, uid))
    os.makedirs(log_directory, exist_ok=True)
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace=namespace, uid=uid, attempt=0),
        hostname=name,
        log_directory=log_directory,
        dns_config=pb.DNSConfig(
            servers=["10.96.0.10"],
            searches=["%s.svc.cluster.local" % namespace, "svc.cluster.local", "cluster.local"],
            options=["ndots:5"],
        ),
        labels=labels,
        annotations={
            "kubernetes.io/config.source": "api",
            "kubernetes.io/config.seen": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        port_mappings=port_mappings(pb, ports),
        linux=pb.LinuxPodSandboxConfig(
            cgroup_parent=cgroup_parent,
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(
                    network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD
                ),
            ),
        ),
    )


def describe(rt, sandbox_id):
    """The facts a test needs about one sandbox, from a verbose PodSandboxStatus."""
    r = rt.PodSandboxStatus(pod_sandbox_id=sandbox_id, verbose=True)
    s = r.status
    info = json.loads(r.info.get("info", "{}") or "{}")
    netns = ""
    spec = info.get("runtimeSpec") or {}
    for ns in (spec.get("linux") or {}).get("namespaces") or []:
        if ns.get("type") == "network":
            netns = ns.get("path", "")
    return {
        "id": s.id,
        "name": s.metadata.name,
        "namespace": s.metadata.namespace,
        "uid": s.metadata.uid,
        "state": rt.pb.PodSandboxState.Name(s.state),
        "ip": s.network.ip,
        "netns": netns,
        "pid": info.get("pid", 0),
    }


def wait_ready(rt, seconds):
    deadline = time.monotonic() + seconds
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            conds = {c.type: c for c in rt.Status(timeout=2).status.conditions}
            missing = [t for t in ("RuntimeReady", "NetworkReady")
                       if t not in conds or not conds[t].status]
            if not missing:
                return
            last = "; ".join("%s: %s %s" % (t, conds[t].reason, conds[t].message)
                             if t in conds else t + " missing" for t in missing)
        except rt.grpc.RpcError as e:
            last = "%s %s" % (e.code(), e.details())
        time.sleep(0.1)
    sys.exit("runtime not ready after %ss: %s" % (seconds, last))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--socket", required=True)
    p.add_argument("--stubs", required=True)
    p.add_argument("command")
    p.add_argument("args", nargs="*")
    a = p.parse_args()
    rt = Runtime(a.socket, a.stubs)
    cmd, args = a.command, a.args
    want = {"ready": (0, 1), "run": (5, 6), "status": (1, 1), "stop": (1, 1), "remove": (1, 1), "list": (0, 0)}
    if cmd not in want or not want[cmd][0] <= len(args) <= want[cmd][1]:
        p.error("bad command or arguments: %s %s" % (cmd, " ".join(args)))
    try:
        if cmd == "ready":
            wait_ready(rt, float(args[0]) if args else 30)
        elif cmd == "run":
            config = sandbox_config(rt.pb, *args)
            # Creating the netns, running CNI ADD and starting the pause task can take a while.
            sandbox_id = rt.RunPodSandbox(config=config, runtime_handler="", timeout=120).pod_sandbox_id
            print(json.dumps(describe(rt, sandbox_id)))
        elif cmd == "status":
            print(json.dumps(describe(rt, args[0])))
        elif cmd == "stop":
            rt.StopPodSandbox(pod_sandbox_id=args[0], timeout=120)
        elif cmd == "remove":
            rt.RemovePodSandbox(pod_sandbox_id=args[0], timeout=120)
        elif cmd == "list":
            items = rt.ListPodSandbox().items
            print(json.dumps([describe(rt, s.id) for s in items]))
    except rt.grpc.RpcError as e:
        print("CRI error: %s %s" % (e.code(), e.details()), file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
