#!/usr/bin/env bash
# The container image and the installer: build the static binary on the host, build the image
# from Dockerfile's `prebuilt` stage with podman (no registry needed: FROM scratch), check its
# default command is `agent`, run `install` from it into a node's CNI dirs (host paths mounted
# into the container), and check:
# the binary is the static one, the conflist is what the plugin accepts, the udev .link file is
# written where the node has its dir and the NetworkManager drop-in skipped where it has none,
# a second run changes nothing, an install killed before its rename leaves the previous files
# intact, and `uninstall` from the image removes what install wrote (and then finds nothing).
set -euo pipefail
. "$(dirname "$0")/lib/world.sh"
cd "$ROOT"

for p in podman file; do
    command -v $p >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman file >/dev/null; }
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
trap 'podman rmi -f "$IMAGE" >/dev/null 2>&1 || true; umount -R "$WORK/storage" 2>/dev/null || true; cleanup_world' EXIT

podman build -q --target prebuilt -t "$IMAGE" . >/dev/null && ok "image built from the prebuilt stage" || die "podman build failed"
size=$(podman image inspect "$IMAGE" --format '{{.Size}}')
expect_eq "image entrypoint and default command (the DaemonSet's agent)" \
    "$(podman image inspect "$IMAGE" --format '{{json .Config.Entrypoint}} {{json .Config.Cmd}}')" '["/routed-cni"] ["agent"]'
# The default command with no NODE_NAME: the agent refuses to start and says what it needs.
out=$(podman run --rm --network none "$IMAGE" 2>&1) && fail "agent started without NODE_NAME" ||
    { grep -q "NODE_NAME" <<<"$out" && ok "default command is the agent, asking for NODE_NAME" || fail "default command said: $out"; }
log "image size: $size bytes"
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
