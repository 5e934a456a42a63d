#!/usr/bin/env bash
# The path kubelet really takes: kubelet never runs a CNI plugin, it asks the runtime over CRI,
# and containerd's CRI plugin runs the plugins from its bin dir with the conflist from its conf
# dir. This script is kubelet. It runs Debian's containerd (1.6, CRI built in) + runc with a
# private root, state, socket and CNI dirs, INSIDE a scratch node network namespace (so the
# plugin's veths, routes, sysctls and iptables land on the scratch node), imports a locally built
# pause image, and talks CRI gRPC to it from Python (e2e/lib/cri-client.py; Debian has no crictl):
#   * RunPodSandbox x3 -> each pod: eth0 = PodSandboxStatus IP, in the pool, the routes of the
#     README, lo up, pause in that netns; pod<->pod, pod->node, pod->outside masqueraded;
#     the store records the K8S_POD_NAMESPACE/NAME containerd passed in CNI_ARGS.
#   * StopPodSandbox, StopPodSandbox, RemovePodSandbox per pod (kubelet kills the pod, then its
#     GC stops again and removes): every DEL containerd sends succeeds (one with the netns, the
#     later ones with CNI_NETNS empty), and nothing is left on the node or in the store.
#   * the conflist is the one `routed-cni install` writes (routed-cni, then portmap); install
#     warns while portmap is missing from the bin dir.
#   * hostPort: a sandbox with PortMapping 18080 -> 8000/TCP is reached on the node's address
#     from outside (the pod sees the client) and by the pod itself (hairpin, masqueraded); its
#     DEL leaves no portmap rule for it in iptables-nft or iptables-legacy, IPv4 or IPv6.
#   * crash: a 4th pod's pause is SIGKILLed and containerd is SIGKILLed and started again; Stop
#     and Remove through the new containerd still remove the pod's veth and address.
# Fully offline except Debian's archive (packages and the containerd source for the CRI proto,
# see e2e/lib/cri-prepare.sh). Everything is torn down on exit, also on failure.
set -euo pipefail
. "$(dirname "$0")/lib/world.sh"

LIB=$(cd "$(dirname "$0")/lib" && pwd)
PY=/usr/bin/python3 # Debian's: python3-grpcio and python3-protobuf live in its dist-packages
STUBS=$(bash "$LIB/cri-prepare.sh" | tail -1)
for tool in containerd containerd-shim-runc-v2 runc ctr nsenter gcc jq socat; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
[ -x /usr/lib/cni/loopback ] || die "/usr/lib/cni/loopback not found (containernetworking-plugins)"

SUBNET=10.205.0.0/24
NET=e2e-cri-$RUN_ID                  # network name; libcni caches results under it
K8S_NS=e2e-cri                       # the pods' Kubernetes namespace
CGROUP_PARENT=/rcni-e2e-cri-$RUN_ID  # kubelet's would be /kubepods/...; ours is removed at exit
PAUSE_IMAGE=localhost/routed-cni-e2e/pause:3.9
SOCK=$WORK/containerd.sock
STORE=$WORK/store
CNI_LOG=$WORK/cni.log
CTRD_LOG=$WORK/containerd.log
CTRD_PID=""
SANDBOX_IDS=()    # every sandbox this run created: for the shim sockets and libcni cache
SANDBOX_NETNS=()  # their netns paths (/var/run/netns/cni-*): removed at exit if still there
[ -d /run/containerd ] && HAD_RUN_CONTAINERD=1 || HAD_RUN_CONTAINERD=0

# A process that still runs: not gone and not a zombie (this VM's init reaps them late).
alive() { local st; st=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) && [ -n "$st" ] && [ "$st" != Z ]; }
cri() { $PY "$LIB/cri-client.py" --socket "$SOCK" --stubs "$STUBS" "$@"; }
in_pod() { local netns=$1; shift; nsenter --net="$netns" "$@"; }

# containerd in the node's network namespace, but in the host's mount namespace (nsenter, not
# `ip netns exec`, which would give it a private mount namespace): the netns bind mounts and
# rootfs mounts it makes are then visible to this script and to the next containerd after a
# restart, as on a real node. A clean environment, like a service manager gives it.
start_containerd() {
    nsenter --net="/run/netns/$NODE" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        containerd --config "$WORK/containerd.toml" >>"$CTRD_LOG" 2>&1 </dev/null &
    CTRD_PID=$!
    disown "$CTRD_PID" # no "Killed" job notice when the crash test SIGKILLs it
    if ! cri ready 30; then
        tail -20 "$CTRD_LOG" >&2
        die "containerd (pid $CTRD_PID) did not become ready"
    fi
}

kill_containerd() { # kill_containerd SIGNAL
    [ -n "$CTRD_PID" ] || return 0
    kill "-$1" "$CTRD_PID" 2>/dev/null || true
    local i
    for i in $(seq 100); do alive "$CTRD_PID" || break; sleep 0.1; done
    kill -KILL "$CTRD_PID" 2>/dev/null || true
    for i in $(seq 50); do alive "$CTRD_PID" || break; sleep 0.1; done
    CTRD_PID=""
}

remember() { # remember SANDBOX_JSON
    SANDBOX_IDS+=("$(jq -r .id <<<"$1")")
    local netns
    netns=$(jq -r .netns <<<"$1")
    [ -n "$netns" ] && SANDBOX_NETNS+=("$netns")
    return 0
}

# Shims of OUR containerd (their command line names our socket), by PID.
our_shims() {
    local d cmd
    for d in /proc/[0-9]*; do
        cmd=$(tr '\0' ' ' 2>/dev/null <"$d/cmdline") || continue
        case "$cmd" in *containerd-shim*" -address $SOCK "* | *containerd-shim*" -address $SOCK") echo "${d#/proc/}" ;; esac
    done
}

# Sandboxes that have a task bundle in our state dir, also when containerd is not answering:
# "ID NETNS" per line, from the bundle's OCI spec.
bundled_sandboxes() {
    local spec
    for spec in "$WORK"/state/io.containerd.runtime.v2.task/k8s.io/*/config.json; do
        [ -f "$spec" ] || continue
        jq -r --arg id "$(basename "$(dirname "$spec")")" \
            '$id + " " + ([.linux.namespaces[]? | select(.type == "network") | .path][0] // "")' "$spec" 2>/dev/null
    done
}

cri_teardown() {
    local rc=$? id netns pid pids=() m d
    set +e
    if [ "$rc" != 0 ] || [ "$FAILURES" != 0 ]; then
        log "plugin log (last 40 lines):"
        tail -40 "$CNI_LOG" 2>/dev/null
        log "containerd log (errors, last 40):"
        grep -E 'level=(error|fatal)' "$CTRD_LOG" 2>/dev/null | tail -40
    fi
    if [ -n "${CRI_E2E_KEEP_LOGS:-}" ]; then
        mkdir -p "$CRI_E2E_KEEP_LOGS" && cp "$CNI_LOG" "$CTRD_LOG" "$CRI_E2E_KEEP_LOGS/" 2>/dev/null
    fi
    if [ -n "$CTRD_PID" ] && alive "$CTRD_PID"; then
        # What kubelet would do for every pod still there: stop and remove it (DELs to our plugin).
        while read -r id netns; do
            [ -n "$id" ] && SANDBOX_IDS+=("$id") && SANDBOX_NETNS+=("$netns")
        done < <(timeout 20 "$PY" "$LIB/cri-client.py" --socket "$SOCK" --stubs "$STUBS" list 2>/dev/null |
            jq -r '.[] | .id + " " + .netns' 2>/dev/null)
        for id in $(printf '%s\n' "${SANDBOX_IDS[@]}" | sort -u); do
            timeout 20 "$PY" "$LIB/cri-client.py" --socket "$SOCK" --stubs "$STUBS" stop "$id" >/dev/null 2>&1
            timeout 20 "$PY" "$LIB/cri-client.py" --socket "$SOCK" --stubs "$STUBS" remove "$id" >/dev/null 2>&1
        done
    fi
    kill_containerd TERM
    for pid in $(our_shims); do
        pids+=("$pid" $(cat "/proc/$pid/task/$pid/children" 2>/dev/null))
    done
    [ ${#pids[@]} -gt 0 ] && kill -KILL "${pids[@]}" 2>/dev/null
    for pid in "${pids[@]}"; do
        for _ in $(seq 30); do alive "$pid" || break; sleep 0.1; done
    done
    # Sandboxes containerd could not remove any more (it was dead or the run was cut short).
    while read -r id netns; do
        [ -n "$id" ] && SANDBOX_IDS+=("$id") && SANDBOX_NETNS+=("$netns")
    done < <(bundled_sandboxes)
    # Pod netns containerd made and did not remove: only those of our sandboxes.
    for netns in "${SANDBOX_NETNS[@]}"; do
        case $netns in /var/run/netns/cni-* | /run/netns/cni-*) ;; *) continue ;; esac
        [ -e "$netns" ] || continue
        umount "$netns" 2>/dev/null || umount -l "$netns" 2>/dev/null
        rm -f "$netns"
    done
    # Rootfs overlays, shm and anything else mounted under the work dir, deepest first.
    for m in $(awk -v w="$WORK/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done
    for id in "${SANDBOX_IDS[@]}"; do
        # containerd 1.6 puts shim sockets under /run/containerd/s/ whatever its state dir is.
        rm -f "/run/containerd/s/$(printf '%s' "$SOCK/k8s.io/$id" | sha256sum | cut -c1-64)"
        rm -f "/var/lib/cni/results/cni-loopback-$id-lo"
    done
    rm -f /var/lib/cni/results/"$NET"-* # libcni's result cache for our network (name is per run)
    # /run/containerd (shim sockets only, here) if this run made it and no containerd uses it now.
    if [ "$HAD_RUN_CONTAINERD" = 0 ] &&
        ! ps -eo stat=,comm= | awk '$1 !~ /^Z/ && $2 ~ /^containerd/ { found = 1 } END { exit !found }'; then
        rmdir /run/containerd/s /run/containerd 2>/dev/null
    fi
    for d in /sys/fs/cgroup/*"$CGROUP_PARENT" /sys/fs/cgroup"$CGROUP_PARENT"; do
        [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    cleanup_world
}
trap cri_teardown EXIT
# A signal ends the script through the EXIT trap, but only after the CRI call in flight has
# returned, so a sandbox being created is known to the teardown.
trap 'exit 143' TERM
trap 'exit 130' INT

log "--- $(containerd --version | awk '{print $1, $3}'), $(runc --version | head -1)"

# ---- the pause image: a static binary in an OCI layout, imported with ctr (no registry)
gcc -Os -static -s -o "$WORK/pause" "$LIB/cri-pause.c"
$PY "$LIB/cri-image.py" "$WORK/pause" "$PAUSE_IMAGE" "$WORK/pause-oci.tar" >/dev/null

# ---- CNI: the bin dir and conflist `routed-cni install` writes (as the agent does on a node),
# with loopback (containerd always runs it itself) and portmap from containernetworking-plugins.
# install runs first without portmap in the bin dir: it must say that the conflist names a
# plugin the runtime cannot find.
mkdir -p "$WORK/cni-bin" "$WORK/net.d" "$WORK/staging" "$WORK/pod-logs"
ln -s /usr/lib/cni/loopback "$WORK/cni-bin/loopback"
install_cni() { # the install flags a DaemonSet would give, pointed at this run's dirs
    env -u ROUTED_CNI_NO_PORTMAP "$BIN" install --bin-dir "$WORK/cni-bin" --conf-dir "$WORK/staging" \
        --pod-subnet $SUBNET --cluster-cidr 10.205.0.0/16 --network-name "$NET" --log-file "$CNI_LOG" \
        --systemd-network-dir "$WORK/absent" --networkmanager-conf-dir "$WORK/absent" "$@"
}
said=$(install_cni 2>&1) || die "routed-cni install failed: $said"
grep -q 'portmap.*missing\|missing.*portmap' <<<"$said" && ok "install warns that portmap is not in the bin dir" ||
    fail "install did not warn about the missing portmap: $said"
ln -s /usr/lib/cni/portmap "$WORK/cni-bin/portmap"
said=$(install_cni 2>&1) || die "routed-cni install failed: $said"
grep -qi 'missing' <<<"$said" && fail "install still warns with portmap present: $said" ||
    ok "no warning once portmap is there"
expect_eq "conflist chain" "$(jq -c '[.plugins[] | [.type, .capabilities.portMappings // false, .snat // false]]' "$WORK/staging/10-routed-cni.conflist")" \
    '[["routed-cni",false,false],["portmap",true,true]]'
# This run's store and debug log; the rest is install's. containerd watches conf_dir: only a
# complete file may ever appear there.
jq --arg store "$STORE" '.plugins[0].ipam.dataDir = $store | .plugins[0].logLevel = "debug"' \
    "$WORK/staging/10-routed-cni.conflist" >"$WORK/net.d/.10-routed-cni.conflist"
mv "$WORK/net.d/.10-routed-cni.conflist" "$WORK/net.d/10-routed-cni.conflist"

cat >"$WORK/containerd.toml" <<TOML
version = 2
root = "$WORK/root"
state = "$WORK/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$WORK/opt"            # not /opt/containerd

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # The sandbox asks for oom_score_adj -998; lowering it needs CAP_SYS_RESOURCE, which some
  # machines (this CI VM) do not have. This clamps it to containerd's own value.
  restrict_oom_score_adj = true
  disable_apparmor = true
  # Pod netns stay where kubelet's containerd puts them: /var/run/netns/cni-<uuid>.
  netns_mounts_under_state_dir = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$WORK/cni-bin"
    conf_dir = "$WORK/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$WORK/state/runc"
TOML

make_node
serve_peer_addr "$OUTSIDE" 8080
start_containerd
ctr -a "$SOCK" -n k8s.io images import "$WORK/pause-oci.tar" >/dev/null || die "ctr images import failed"
ok "containerd up in the node namespace (pid $CTRD_PID), pause image imported"

# ---- RunPodSandbox: what kubelet does when a pod is scheduled here
declare -A SB=() # pod name -> sandbox JSON (id, state, ip, netns, pid)
PODS=(web-1 web-2 web-3)
uid_of() { printf '%08x-0000-4000-8000-%012x' "$RUN_ID" "$1"; }

check_pod() { # check_pod NAME
    local name=$1 sb=${SB[$1]} ip netns pid got veth
    ip=$(jq -r .ip <<<"$sb")
    netns=$(jq -r .netns <<<"$sb")
    pid=$(jq -r .pid <<<"$sb")
    expect_eq "$name: sandbox state" "$(jq -r .state <<<"$sb")" SANDBOX_READY
    case $netns in
        /var/run/netns/cni-* | /run/netns/cni-*) ok "$name: netns $netns" ;;
        *) fail "$name: netns path '$netns' is not containerd's /var/run/netns/cni-*"; return ;;
    esac
    expect_eq "$name: pause runs in the sandbox netns" "$(readlink "/proc/$pid/ns/net")" "net:[$(stat -L -c %i "$netns")]"
    expect_eq "$name: eth0 address = PodSandboxStatus IP" "$(in_pod "$netns" ip -4 -o addr show dev eth0 | awk '{print $4}')" "$ip/32"
    case $ip in 10.205.0.*) ok "$name: $ip is in $SUBNET" ;; *) fail "$name: $ip is not in $SUBNET" ;; esac
    expect_eq "$name: pod routes (dst gateway dev scope)" \
        "$(in_pod "$netns" ip -4 -j route show | jq -r 'map("\(.dst) \(.gateway // "-") \(.dev) \(.scope // "global")") | sort | join(", ")')" \
        "169.254.1.1 - eth0 link, default 169.254.1.1 eth0 global"
    # The host end (README: rcni + 11 hex of sha256(containerID/ifname)) is on the scratch node,
    # where containerd runs, and not on the machine itself.
    veth=rcni$(printf '%s/eth0' "$(jq -r .id <<<"$sb")" | sha256sum | cut -c1-11)
    expect_eq "$name: host veth $veth on the node / on the real host" \
        "$(ip -n "$NODE" -o link show "$veth" 2>/dev/null | wc -l) / $(ip -o link show "$veth" 2>/dev/null | wc -l)" "1 / 0"
    got=$(in_pod "$netns" ip -o link show lo | grep -c 'UP' || true)
    expect_eq "$name: lo is up (containerd's loopback plugin)" "$got" 1
    in_pod "$netns" ping -c1 -W2 "$NODE_UPLINK" >/dev/null && ok "$name: pod -> node $NODE_UPLINK" ||
        fail "$name: pod cannot ping the node's uplink $NODE_UPLINK"
    # seen_by takes a netns name: containerd's pod netns are named mounts in /var/run/netns.
    expect_eq "$name: outside sees the node's uplink (masquerade)" "$(seen_by "$(basename "$netns")" $OUTSIDE_ADDR 8080)" "$NODE_UPLINK"
}

i=0
for name in "${PODS[@]}"; do
    i=$((i + 1))
    log "--- RunPodSandbox $K8S_NS/$name"
    sb=$(cri run "$name" "$K8S_NS" "$(uid_of $i)" "$WORK/pod-logs" "$CGROUP_PARENT/pod$(uid_of $i)") ||
        die "RunPodSandbox $name failed (CRI error above)"
    remember "$sb"
    SB[$name]=$sb
    check_pod "$name"
done

log "--- pod <-> pod, store"
for a in 0 1 2; do
    from=${PODS[$a]} to=${PODS[$(((a + 1) % 3))]}
    to_ip=$(jq -r .ip <<<"${SB[$to]}")
    in_pod "$(jq -r .netns <<<"${SB[$from]}")" ping -c1 -W2 "$to_ip" >/dev/null && ok "$from -> $to ($to_ip)" ||
        fail "$from cannot ping $to ($to_ip)"
done
listing=$(on_node "$BIN" list --data-dir "$STORE" --json)
for name in "${PODS[@]}"; do
    ip=$(jq -r .ip <<<"${SB[$name]}")
    expect_eq "$name: store record (container, pod, ifname, host veth present)" \
        "$(jq -c --arg ip "$ip" '[.[] | select(.record.ip == $ip) | [.record.containerId, .record.podNamespace, .record.podName, .record.ifname, .hostVethPresent]]' <<<"$listing")" \
        "$(jq -c --arg ns "$K8S_NS" --arg name "$name" '[[.id, $ns, $name, "eth0", true]]' <<<"${SB[$name]}")"
done
expect_eq "ADDs logged ok, one per pod" "$(grep -c ' ADD ok network='"$NET"' ' "$CNI_LOG" || true)" 3

# ---- kubelet kills the pods (StopPodSandbox), later its GC stops again and removes them
dels_of() { grep -E " DEL (ok|failed) network=$NET container=$1 " "$CNI_LOG" || true; }
for name in "${PODS[@]}"; do
    log "--- StopPodSandbox, StopPodSandbox, RemovePodSandbox $K8S_NS/$name"
    id=$(jq -r .id <<<"${SB[$name]}")
    netns=$(jq -r .netns <<<"${SB[$name]}")
    veth=$(jq -r --arg id "$id" '.[] | select(.record.containerId == $id) | .record.hostVeth' <<<"$listing")
    cri stop "$id" || fail "$name: StopPodSandbox failed"
    expect_eq "$name: host veth $veth gone after StopPodSandbox" "$(ip -n "$NODE" -o link show "$veth" 2>/dev/null | wc -l)" 0
    [ ! -e "$netns" ] && ok "$name: containerd removed $netns" || fail "$name: $netns still there after StopPodSandbox"
    cri stop "$id" || fail "$name: second StopPodSandbox failed"
    cri remove "$id" || fail "$name: RemovePodSandbox failed"
    dels=$(dels_of "$id")
    log "$name: containerd sent $(wc -l <<<"$dels") DEL(s)"
    expect_eq "$name: DELs that failed" "$(grep -c ' DEL failed ' <<<"$dels" || true)" 0
    expect_eq "$name: DEL with the pod's netns" "$(grep -c " netns=$netns " <<<"$dels" || true)" 1
    expect_eq "$name: DELs with CNI_NETNS empty (second Stop, Remove)" "$(grep -c ' netns= ' <<<"$dels" || true)" 2
done
expect_eq "no sandbox listed" "$(cri list | jq -c 'map(.id)')" "[]"
expect_clean_node "$STORE"
expect_eq "no failed call in the plugin log" "$(grep -c ' failed network=' "$CNI_LOG" || true)" 0
expect_eq "libcni result cache emptied" "$(ls /var/lib/cni/results/ 2>/dev/null | grep -c "^$NET-" || true)" 0

# ---- hostPort: kubelet sends the pod's hostPorts as PortMappings, containerd passes them to the
# conflist's plugins that declare the portMappings capability (portmap), portmap DNATs the node's
# port to the pod. DEL (StopPodSandbox) must take its per-pod chain away in both backends.
portmap_rules() { # every portmap chain and rule in the node namespace, both backends, both families
    local save
    for save in iptables-nft-save ip6tables-nft-save iptables-legacy-save ip6tables-legacy-save; do
        # Without -t: legacy-save then lists only tables that exist, and never creates one.
        on_node "$save" 2>/dev/null | grep -E '^(:|-A )CNI-(DN|HOSTPORT)-|-j CNI-(DN|HOSTPORT)-' | sed "s/^/$save: /"
    done
    return 0
}
log "--- hostPort: RunPodSandbox with PortMapping 18080 -> 8000/TCP"
name=web-hp
sb=$(cri run "$name" "$K8S_NS" "$(uid_of 5)" "$WORK/pod-logs" "$CGROUP_PARENT/pod$(uid_of 5)" 18080:8000/tcp) ||
    die "RunPodSandbox $name failed (CRI error above)"
remember "$sb"
id=$(jq -r .id <<<"$sb") ip=$(jq -r .ip <<<"$sb") netns=$(jq -r .netns <<<"$sb")
# The pause image has no server: one in the sandbox's netns stands in for the pod's container.
ip netns exec "$(basename "$netns")" timeout 120 socat -T5 TCP-LISTEN:8000,reuseaddr,fork SYSTEM:'echo $SOCAT_PEERADDR' &
hp_server=$!
BACKGROUND_PIDS+=($hp_server)
for _ in $(seq 50); do in_pod "$netns" ss -ltn 'sport = :8000' | grep -q LISTEN && break; sleep 0.1; done
expect_eq "$name: outside -> node $NODE_UPLINK:18080 reaches the pod (which sees the client)" \
    "$(seen_by "$OUTSIDE" $NODE_UPLINK 18080)" "$OUTSIDE_ADDR"
# snat: the pod reaching its own hostPort gets the reply from the node, not from itself.
got=$(seen_by "$(basename "$netns")" $NODE_UPLINK 18080) || true
[ "$got" = "$NODE_UPLINK" ] && [ "$got" != "$ip" ] && ok "$name: hairpin pod -> node:18080 -> pod, masqueraded to the node's $got" ||
    fail "$name: hairpin through its own hostPort: got '$got'"
expect_eq "$name: portmap's per-pod chain while it runs" \
    "$(portmap_rules | grep -c '^iptables-nft-save: :CNI-DN-' || true)" 1
kill "$hp_server" 2>/dev/null; wait "$hp_server" 2>/dev/null || true
cri stop "$id" || fail "$name: StopPodSandbox failed"
cri stop "$id" || fail "$name: second StopPodSandbox failed"
cri remove "$id" || fail "$name: RemovePodSandbox failed"
expect_eq "$name: DELs that failed" "$(dels_of "$id" | grep -c ' DEL failed ' || true)" 0
# portmap's DEL removes the pod's CNI-DN-<hash> chain and its jump; the shared CNI-HOSTPORT-*
# chains (and their jumps from PREROUTING, OUTPUT, POSTROUTING, and the mark and masquerade
# rules) are portmap's for every pod and stay, as portmap never removes them.
left=$(portmap_rules | grep -E 'CNI-DN-|^[^:]*: -A CNI-HOSTPORT-DNAT ' || true)
[ -z "$left" ] && ok "$name: no portmap rule for the pod left (nft and legacy, IPv4 and IPv6)" ||
    fail "$name: portmap rules left: $left"
expect_eq "$name: outside -> node:18080 after the pod is gone" "$(seen_by "$OUTSIDE" $NODE_UPLINK 18080)" ""
expect_clean_node "$STORE"

# ---- crash: the pod's pause dies and containerd dies; a new containerd must still clean up
log "--- crash: SIGKILL the pause process and containerd, start containerd again"
name=crash-4
sb=$(cri run "$name" "$K8S_NS" "$(uid_of 4)" "$WORK/pod-logs" "$CGROUP_PARENT/pod$(uid_of 4)") ||
    die "RunPodSandbox $name failed (CRI error above)"
remember "$sb"
id=$(jq -r .id <<<"$sb") ip=$(jq -r .ip <<<"$sb") netns=$(jq -r .netns <<<"$sb") pid=$(jq -r .pid <<<"$sb")
expect_eq "$name: eth0 address = PodSandboxStatus IP" "$(in_pod "$netns" ip -4 -o addr show dev eth0 | awk '{print $4}')" "$ip/32"
record=$(on_node "$BIN" list --data-dir "$STORE" --json | jq -c --arg id "$id" '[.[] | select(.record.containerId == $id)]')
expect_eq "$name: store record (ip, pod)" "$(jq -c 'map([.record.ip, .record.podName])' <<<"$record")" "[[\"$ip\",\"$name\"]]"
veth=$(jq -r '.[0].record.hostVeth' <<<"$record")
kill -KILL "$pid"
kill_containerd KILL
for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
alive "$pid" && fail "$name: pause $pid survived SIGKILL" || ok "$name: pause $pid killed, containerd killed"
expect_eq "$name: host veth $veth still there (the netns outlives the pause)" "$(ip -n "$NODE" -o link show "$veth" 2>/dev/null | wc -l)" 1
start_containerd
ok "containerd restarted (pid $CTRD_PID)"
expect_eq "$name: sandbox state after the restart" "$(cri status "$id" | jq -r .state)" SANDBOX_NOTREADY
cri stop "$id" || fail "$name: StopPodSandbox after the crash failed"
cri stop "$id" || fail "$name: second StopPodSandbox after the crash failed"
cri remove "$id" || fail "$name: RemovePodSandbox after the crash failed"
expect_eq "$name: host veth $veth gone" "$(ip -n "$NODE" -o link show "$veth" 2>/dev/null | wc -l)" 0
[ ! -e "$netns" ] && ok "$name: containerd removed $netns" || fail "$name: $netns still there"
dels=$(dels_of "$id")
log "$name: containerd sent $(wc -l <<<"$dels") DEL(s)"
expect_eq "$name: DELs that failed" "$(grep -c ' DEL failed ' <<<"$dels" || true)" 0
expect_eq "$name: DEL with the pod's netns" "$(grep -c " netns=$netns " <<<"$dels" || true)" 1
expect_eq "$name: DELs with CNI_NETNS empty (second Stop, Remove)" "$(grep -c ' netns= ' <<<"$dels" || true)" 2
expect_eq "no sandbox listed" "$(cri list | jq -c 'map(.id)')" "[]"
expect_clean_node "$STORE"
expect_eq "no failed call in the plugin log" "$(grep -c ' failed network=' "$CNI_LOG" || true)" 0
finish
