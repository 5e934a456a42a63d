# podman (Debian 12: 4.3.1, CNI backend) confined to the e2e work dir and run inside the scratch
# node namespace. Source after world.sh. Sets PM (podman's private root), podman_setup NET,
# pm ARGS (podman in the node's network namespace), pm_cleanup (for the EXIT trap).
#
# Why nsenter and not `ip netns exec`: ip netns exec also unshares the mount namespace and
# remounts /sys, so runc finds no cgroup mount ("no cgroup mount found in mountinfo"), and the
# mounts podman makes (the container netns bound under /run/netns, the container's shm) would
# live in a mount namespace that the next command cannot see. nsenter --net switches only the
# network namespace: the plugin's host side (veth, /32 route, sysctls, iptables) lands in the
# node, and conmon and the `podman container cleanup` it starts on container exit inherit it.

PM=$WORK/podman
PM_ROOTFS=$PM/rootfs

podman_install() {
    local need=() c
    for c in podman conmon runc; do command -v "$c" >/dev/null || need+=("$c"); done
    # The rootfs needs a busybox that runs without a libc: the static build, not `busybox`.
    dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || need+=(busybox-static)
    [ -x /usr/lib/cni/portmap ] || need+=(containernetworking-plugins)
    for c in socat jq iptables; do command -v "$c" >/dev/null || need+=("$c"); done
    [ ${#need[@]} -eq 0 ] && return 0
    log "installing ${need[*]}"
    # podman Depends on `crun | runc`: name runc (containers.conf picks it) and the CNI plugins
    # (podman's container-network-stack) so apt does not choose crun or netavark.
    local apt=(apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=120)
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" "${need[@]}" >/dev/null ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${apt[@]}" "${need[@]}" >/dev/null; } ||
        die "could not install ${need[*]}"
}

# podman_setup NET_NAME CONFLIST_JSON: private containers.conf/storage.conf, plugin dir, network
# config dir and busybox rootfs under $PM; nothing under /etc is read or written.
podman_setup() {
    local net=$1 conflist=$2 a
    PM_NET=$net
    # What this machine has before podman runs, so that the cleanup removes only what we made.
    PM_NETNS_BEFORE=$(ls /run/netns 2>/dev/null | grep '^netns-' || true)
    PM_SHM_LOCK_EXISTED=$([ -e /dev/shm/libpod_lock ] && echo 1 || echo 0)
    PM_CGROUPS_BEFORE=$(ls -d /sys/fs/cgroup/*/libpod_parent 2>/dev/null || true)
    mkdir -p "$PM"/{net.d,cni-bin,storage,runroot,tmp} "$PM_ROOTFS"/{bin,etc,proc,sys,dev,tmp,www}
    # The plugins podman may run: ours (the binary under test) and portmap.
    ln -s "$BIN" "$PM/cni-bin/routed-cni"
    ln -s /usr/lib/cni/portmap "$PM/cni-bin/portmap"
    printf '%s\n' "$conflist" >"$PM/net.d/$net.conflist"
    # default_ulimits: podman asks runc for nofile/nproc 1048576; above this machine's hard limits
    # runc fails with "error setting rlimit type 7: operation not permitted".
    cat >"$PM/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[network]
network_backend = "cni"
cni_plugin_dirs = ["$PM/cni-bin"]
network_config_dir = "$PM/net.d"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$PM/events.log"
tmp_dir = "$PM/tmp"
volume_path = "$PM/storage/volumes"
EOF
    cat >"$PM/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$PM/storage"
runroot = "$PM/runroot"
EOF
    cp /bin/busybox "$PM_ROOTFS/bin/busybox"
    for a in $("$PM_ROOTFS/bin/busybox" --list); do
        [ "$a" == busybox ] || ln -s busybox "$PM_ROOTFS/bin/$a"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$PM_ROOTFS/etc/passwd"
    echo 'root:x:0:' >"$PM_ROOTFS/etc/group"
}

# podman in the node's network namespace with the private configuration. conmon gets
# CONTAINERS_CONF from podman's environment (the cleanup it starts needs cni_plugin_dirs, which
# is not among the flags podman hands it); storage reaches it as flags (--root, --runroot,
# --storage-driver).
pm() {
    timeout 60 nsenter --net="/run/netns/$NODE" \
        env CONTAINERS_CONF="$PM/containers.conf" CONTAINERS_STORAGE_CONF="$PM/storage.conf" podman "$@"
}

# Processes of ours that podman left running: conmon and the `podman container cleanup` it
# starts, both naming $PM on their command line.
pm_pids() {
    local p args
    for p in /proc/[0-9]*; do
        { mapfile -d '' -t args <"$p/cmdline"; } 2>/dev/null || continue
        case ${args[0]:-} in conmon | */conmon | podman | */podman) ;; *) continue ;; esac
        [[ "${args[*]}" == *"$PM/"* ]] && echo "${p#/proc/}"
    done
    return 0
}

# Waits up to N seconds (default 10) for podman's background processes of this run to exit.
pm_wait_idle() {
    local i
    for i in $(seq $((${1:-10} * 10))); do
        [ -z "$(pm_pids)" ] && return 0
        sleep 0.1
    done
    return 1
}

# netns-* namespaces podman made during this run and did not remove.
pm_new_netns() {
    comm -13 <(printf '%s\n' "$PM_NETNS_BEFORE" | sort) <(ls /run/netns 2>/dev/null | grep '^netns-' | sort)
}

pm_mounts() { awk -v w="$WORK/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo; }

pm_cleanup() {
    set +e
    [ -n "${PM_NET:-}" ] || return 0
    if command -v podman >/dev/null; then
        pm rm -af -t 0 >/dev/null 2>&1
        pm_wait_idle 10 || kill $(pm_pids) 2>/dev/null
    fi
    local m ns d
    for m in $(pm_mounts | sort -r); do umount -l "$m"; done
    for ns in $(pm_new_netns); do ip netns del "$ns"; done
    rm -f /var/lib/cni/results/"$PM_NET"-*
    for d in /sys/fs/cgroup/*/libpod_parent; do
        grep -qxF "$d" <<<"$PM_CGROUPS_BEFORE" && continue
        rmdir "$d/conmon" "$d" 2>/dev/null
    done
    [ "$PM_SHM_LOCK_EXISTED" == 0 ] && rm -f /dev/shm/libpod_lock
    return 0
}
