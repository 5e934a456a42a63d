#!/usr/bin/env bash
# The container image and the installer: build the static binary on the host, build the image
# from Dockerfile's `prebuilt` stage with podman (no registry needed: FROM scratch), check its
# default command is `agent`, run `install` from it into a node's CNI dirs (host paths mounted
# into the container), and check:
# the image's nft (for NetworkPolicy) runs: `nft --version`, and with only CAP_NET_ADMIN in a
# scratch network namespace this script creates (never the machine's own ruleset): `nft list
# tables` sees exactly that namespace's tables, a JSON transaction shaped like the agent's is
# applied and listed back, and the agent itself, run from the image with
# ROUTED_CNI_NETWORK_POLICY=false, finds nft and removes table inet routed-cni there and the
# store's policy-namespaces file;
# the binary is the static one, the conflist is what the plugin accepts, the udev .link file is
# written where the node has its dir and the NetworkManager drop-in skipped where it has none,
# a second run changes nothing, an install killed before its rename leaves the previous files
# intact, and `uninstall` from the image removes what install wrote (and then finds nothing).
set -euo pipefail
. "$(dirname "$0")/lib/world.sh"
cd "$ROOT"

for p in podman file nft jq openssl; do
    command -v $p >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman file nftables jq openssl >/dev/null; }
done
static=$(bash scripts/build-static.sh | tail -1)
file "$static" | grep -q 'static' && ok "static binary: $(file -b "$static" | cut -d, -f1-3)" || fail "not static"

IMAGE=localhost/routed-cni-e2e:$RUN_ID
export CONTAINERS_CONF=$WORK/containers.conf CONTAINERS_STORAGE_CONF=$WORK/storage.conf
cat >"$CONTAINERS_CONF" <<CONF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$WORK/events.log"
CONF
cat >"$CONTAINERS_STORAGE_CONF" <<CONF
[storage]
driver = "vfs"
graphroot = "$WORK/storage"
runroot = "$WORK/runroot"
CONF
trap 'podman rm -f -t 0 "rcn-agent-$RUN_ID" >/dev/null 2>&1 || true; podman rmi -f "$IMAGE" >/dev/null 2>&1 || true; umount -R "$WORK/storage" 2>/dev/null || true; cleanup_world' EXIT

podman build -q --target prebuilt -t "$IMAGE" . >/dev/null && ok "image built from the prebuilt stage" || die "podman build failed"
size=$(podman image inspect "$IMAGE" --format '{{.Size}}')
expect_eq "image entrypoint and default command (the DaemonSet's agent)" \
    "$(podman image inspect "$IMAGE" --format '{{json .Config.Entrypoint}} {{json .Config.Cmd}}')" '["/routed-cni"] ["agent"]'
# The default command with no NODE_NAME: the agent refuses to start and says what it needs.
out=$(podman run --rm --network none "$IMAGE" 2>&1) && fail "agent started without NODE_NAME" ||
    { grep -q "NODE_NAME" <<<"$out" && ok "default command is the agent, asking for NODE_NAME" || fail "default command said: $out"; }
log "image size: $size bytes"

# --- nft in the image, for the agent's NetworkPolicy table ---------------------------------
nft_in_image() { # nft_in_image PODMAN_ARGS... -- NFT_ARGS...: the image's nft, CAP_NET_ADMIN only
    local args=()
    while [ "$1" != -- ]; do args+=("$1"); shift; done
    shift
    podman run --rm -i --cap-drop all --cap-add NET_ADMIN "${args[@]}" --entrypoint /usr/sbin/nft "$IMAGE" "$@"
}
out=$(nft_in_image --network none -- --version 2>&1) && grep -q '^nftables v' <<<"$out" &&
    ok "nft runs in the image: $out" || fail "nft --version in the image: $out"
NFT_NS=rcn-nft-$RUN_ID
netns_add "$NFT_NS"
in_ns=(--network "ns:/run/netns/$NFT_NS")
# A canary table made from outside: the container must see it, and nothing else (which would
# mean it is looking at some other namespace's ruleset).
ip netns exec "$NFT_NS" nft add table inet rcn-canary
out=$(nft_in_image "${in_ns[@]}" -- list tables 2>&1) || fail "nft list tables in the image exited non-zero"
expect_eq "nft list tables in the scratch namespace, CAP_NET_ADMIN only" "$out" "table inet rcn-canary"
# The agent's shapes (policy/nft/render.rs): address and interface sets, a forward-hook chain,
# protocols and ports as numbers (SCTP's 132 too), conntrack, one JSON transaction on stdin.
batch='{"nftables": [
 {"add": {"table": {"family": "inet", "name": "routed-cni"}}},
 {"add": {"set": {"family": "inet", "table": "routed-cni", "name": "peers4", "type": "ipv4_addr", "flags": ["interval"], "elem": [{"prefix": {"addr": "10.207.0.0", "len": 16}}]}}},
 {"add": {"set": {"family": "inet", "table": "routed-cni", "name": "pending", "type": "ifname"}}},
 {"add": {"chain": {"family": "inet", "table": "routed-cni", "name": "forward", "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}},
 {"add": {"rule": {"family": "inet", "table": "routed-cni", "chain": "forward", "expr": [
   {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}}},
 {"add": {"rule": {"family": "inet", "table": "routed-cni", "chain": "forward", "expr": [
   {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@pending"}}, {"drop": null}]}}},
 {"add": {"rule": {"family": "inet", "table": "routed-cni", "chain": "forward", "expr": [
   {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@peers4"}},
   {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": 132}},
   {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}}, "right": {"range": [75, 80]}}}, {"accept": null}]}}}
]}'
out=$(nft_in_image "${in_ns[@]}" -- -j -f - <<<"$batch" 2>&1) && ok "the image's nft applies a JSON transaction" ||
    fail "nft -j -f - in the image: $out"
rules=$(nft_in_image "${in_ns[@]}" -- -j list table inet routed-cni 2>&1 | jq '[.nftables[] | select(.rule)] | length' 2>&1)
expect_eq "rules listed back by the image's nft (-j)" "$rules" "3"
# The agent from the image, enforcement off: it must find the image's nft and remove its table
# (and the store's policy-namespaces, mounted where the DaemonSet mounts the node's store).
# No API server is needed for that; a throwaway CA lets its client start.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=rcn-e2e \
    -keyout "$WORK/ca.key" -out "$WORK/ca.crt" 2>/dev/null || die "openssl could not make a CA"
echo token >"$WORK/token"
mkdir -m 0700 "$WORK/agent-store" && echo x >"$WORK/agent-store/policy-namespaces"
AGENT_CT=rcn-agent-$RUN_ID
podman run -d --name "$AGENT_CT" --cap-drop all --cap-add NET_ADMIN "${in_ns[@]}" \
    -v "$WORK/ca.crt:/ca.crt:ro" -v "$WORK/token:/token:ro" -v "$WORK/agent-store:/run/routed-cni" \
    -e NODE_NAME=node-e2e -e ROUTED_CNI_API_SERVER=https://127.0.0.1:1 -e ROUTED_CNI_NETWORK_POLICY=false \
    "$IMAGE" agent --ca-file /ca.crt --token-file /token >/dev/null || die "podman run agent failed"
for _ in $(seq 50); do
    ip netns exec "$NFT_NS" nft list tables | grep -q routed-cni || break
    sleep 0.2
done
agent_log=$(podman logs "$AGENT_CT" 2>&1)
podman rm -f -t 0 "$AGENT_CT" >/dev/null
expect_eq "tables left after the image's agent ran with enforcement off" \
    "$(ip netns exec "$NFT_NS" nft list tables)" "table inet rcn-canary"
grep -q "table inet routed-cni removed" <<<"$agent_log" && ok "agent in the image: $(grep -o 'NetworkPolicy enforcement off: table.*' <<<"$agent_log")" ||
    fail "agent log does not say it removed the table: $agent_log"
[ ! -e "$WORK/agent-store/policy-namespaces" ] && ok "agent removed the store's policy-namespaces" ||
    fail "policy-namespaces still in the store"
rm -rf "$WORK/agent-store"
host=$WORK/host
# The node's /etc as the DaemonSet mounts it: this node has udev's .link dir but no
# NetworkManager, so install writes the .link file and skips the drop-in.
mkdir -p "$host/opt/cni/bin" "$host/etc/cni/net.d" "$host/etc/systemd/network"
run_install() {
    podman run --rm --network none -v "$host/opt/cni/bin:/host/opt/cni/bin" -v "$host/etc/cni/net.d:/host/etc/cni/net.d" \
        -v "$host/etc:/host/node-etc" \
        -e ROUTED_CNI_SYSTEMD_NETWORK_DIR=/host/node-etc/systemd/network \
        -e ROUTED_CNI_NETWORKMANAGER_CONF_DIR=/host/node-etc/NetworkManager/conf.d \
        -e ROUTED_CNI_POD_SUBNET=10.207.1.0/24 -e ROUTED_CNI_CLUSTER_CIDR=10.207.0.0/16 "$@" "$IMAGE" \
        install --bin-dir /host/opt/cni/bin --conf-dir /host/etc/cni/net.d
}
out=$(run_install) && ok "install from the image" || fail "install: $out"
grep -q "routed-cni installed" <<<"$out" && grep -q "conflist installed" <<<"$out" || fail "first install output: $out"
grep -q "10-routed-cni.link installed" <<<"$out" && grep -q "routed-cni.conf skipped" <<<"$out" ||
    fail "install must write the .link file and skip the absent NetworkManager dir: $out"
[ -f "$host/etc/systemd/network/10-routed-cni.link" ] && [ ! -e "$host/etc/NetworkManager" ] &&
    ok "install wrote the .link file and created no NetworkManager dir" || fail "node files: $(find "$host/etc")"
cmp -s "$static" "$host/opt/cni/bin/routed-cni" && ok "installed binary is the image's" || fail "installed binary differs"
conf=$host/etc/cni/net.d/10-routed-cni.conflist
expect_eq "conflist pod subnet" "$(jq -r '.plugins[0].ipam.subnet' "$conf")" "10.207.1.0/24"
expect_eq "conflist nonMasqueradeCIDRs" "$(jq -c '.plugins[0].nonMasqueradeCIDRs' "$conf")" '["10.207.0.0/16"]'
out=$(run_install)
expect_eq "second install changes nothing" "$(grep -c unchanged <<<"$out")" "3"

# The installed plugin works from the node's bin dir with the installed conflist.
make_node
make_pod rcn-img-$RUN_ID
jq '.plugins[0] + {name: .name, cniVersion: .cniVersion} | .ipam.dataDir = "'"$WORK"'/store"' "$conf" >"$WORK/plugin.json"
BIN=$host/opt/cni/bin/routed-cni
cni ADD img rcn-img-$RUN_ID "$WORK/plugin.json" >/dev/null && ok "installed plugin wires a pod" || fail "ADD with the installed plugin"
ip netns exec rcn-img-$RUN_ID ping -c1 -W2 $NODE_UPLINK >/dev/null && ok "pod reaches the node" || fail "pod ping"
cni DEL img rcn-img-$RUN_ID "$WORK/plugin.json" >/dev/null || fail "DEL"
expect_clean_node "$WORK/store"

# Killed before its rename: the old files stay whole, and the next install removes the temp file.
# (Run on this machine, so pointed at the scratch node's /etc, never the machine's own.)
node_dirs=(--systemd-network-dir "$host/etc/systemd/network" --networkmanager-conf-dir "$host/etc/NetworkManager/conf.d")
before=$(sha256sum "$conf")
rc=0
ROUTED_CNI_CRASH_AT=install:before-rename ROUTED_CNI_POD_SUBNET=10.207.9.0/24 \
    "$static" install --bin-dir "$host/opt/cni/bin" --conf-dir "$host/etc/cni/net.d" "${node_dirs[@]}" || rc=$?
expect_eq "install killed at install:before-rename" "$rc" "137"
expect_eq "conflist untouched by the killed install" "$(sha256sum "$conf")" "$before"
ROUTED_CNI_POD_SUBNET=10.207.9.0/24 "$static" install --bin-dir "$host/opt/cni/bin" --conf-dir "$host/etc/cni/net.d" "${node_dirs[@]}" >/dev/null
expect_eq "next install rewrites the conflist" "$(jq -r '.plugins[0].ipam.subnet' "$conf")" "10.207.9.0/24"
expect_eq "no temp files left" "$(find "$host" -name '.*.tmp.*' | wc -l)" "0"

# uninstall from the image removes the four files, and a second run finds nothing to do.
run_uninstall() {
    podman run --rm --network none -v "$host/opt/cni/bin:/host/opt/cni/bin" -v "$host/etc/cni/net.d:/host/etc/cni/net.d" \
        -v "$host/etc:/host/node-etc" \
        -e ROUTED_CNI_SYSTEMD_NETWORK_DIR=/host/node-etc/systemd/network \
        -e ROUTED_CNI_NETWORKMANAGER_CONF_DIR=/host/node-etc/NetworkManager/conf.d \
        "$IMAGE" uninstall --bin-dir /host/opt/cni/bin --conf-dir /host/etc/cni/net.d
}
out=$(run_uninstall) && ok "uninstall from the image" || fail "uninstall: $out"
expect_eq "uninstall removed binary, conflist and .link file" "$(grep -c ' removed$' <<<"$out")" "3"
expect_eq "nothing of ours left on the node" "$(find "$host" -type f | wc -l)" "0"
out=$(run_uninstall) && ok "uninstall again exits 0" || fail "second uninstall: $out"
expect_eq "second uninstall finds everything absent" "$(grep -c ' absent$' <<<"$out")" "4"
finish
