#!/usr/bin/env bash
# podman 4.3 (Debian) with its CNI backend drives routed-cni (+ portmap), run inside a scratch
# node namespace with private containers.conf/storage.conf, plugin dir and network config dir,
# and containers from a busybox-static rootfs:
#  (a) `podman run --rm`: the container's eth0 has a /32 from the pool, default via 169.254.1.1,
#      and the outside server sees the node's uplink address (masquerade); then nothing is left;
#  (b) `podman run -d -p`: podman inspect's address is the one in routed-cni's store (with
#      K8S_POD_NAME = the container name), conmon lives in the node namespace, the hostPort on
#      the node reaches the container from outside; `podman stop` + `podman rm` leave nothing;
#  (c) a detached container that exits by itself: DEL comes from `podman container cleanup`,
#      started by conmon without our shell, and still lands in the node namespace.
# Nothing lands in the host's own namespace: checked at the end.
set -euo pipefail
. "$(dirname "$0")/lib/world.sh"
. "$(dirname "$0")/lib/podman-world.sh"

NET=e2e-podman-$RUN_ID
SUBNET=10.206.0.0/24
STORE=$WORK/store
CLOG=$WORK/cni.log
trap 'pm_cleanup; cleanup_world' EXIT

podman_install
podman_setup "$NET" "$(
    cat <<JSON
{"cniVersion":"1.0.0","name":"$NET","plugins":[
 {"type":"routed-cni","ipam":{"subnet":"$SUBNET","dataDir":"$STORE"},"logFile":"$CLOG","logLevel":"debug"},
 {"type":"portmap","capabilities":{"portMappings":true},"snat":true}]}
JSON
)"
echo "hello-from-podman" >"$PM_ROOTFS/www/index.html"
make_node
serve_peer_addr "$OUTSIDE" 8080
log "podman $(podman --version | awk '{print $3}'), network $NET ($SUBNET), work dir $WORK"

in_subnet() { [[ $1 =~ ^10\.206\.0\.([0-9]+)$ ]] && [ "${BASH_REMATCH[1]}" -ge 1 ] && [ "${BASH_REMATCH[1]}" -le 254 ]; }
log_has() { grep -c "$1 ok network=$NET container=$2 " "$CLOG" || true; }
host_veth_of() { grep -o "deleted host veth rcni[0-9a-f]*" "$CLOG" | awk '{print $4}'; }
store_json() { on_node "$BIN" list --data-dir "$STORE" --json; }
inode() { stat -L -c %i "$1"; }

# ---------------------------------------------------------------- (a) podman run --rm
log "--- podman run --rm: address, routes, masquerade"
out=$(pm run --rm --name "rm-$RUN_ID" --cidfile "$PM/rm.cid" --network "$NET" --rootfs "$PM_ROOTFS" \
    /bin/sh -c 'ip -4 -o addr show dev eth0; ip route; echo "peer=$(echo | timeout 5 nc '$OUTSIDE_ADDR' 8080)"' 2>&1) ||
    fail "podman run --rm: $out"
printf '%s\n' "$out" | sed 's/^/    /'
cid=$(cat "$PM/rm.cid" 2>/dev/null || true)
addr=$(awk '$3 == "inet" {print $4}' <<<"$out")
in_subnet "${addr%/32}" && [[ $addr == */32 ]] && ok "eth0 has $addr, a /32 from $SUBNET" || fail "eth0 address: '$addr'"
expect_eq "default route" "$(grep '^default' <<<"$out" | xargs)" "default via 169.254.1.1 dev eth0"
expect_eq "gateway route" "$(grep '^169.254.1.1' <<<"$out" | xargs)" "169.254.1.1 dev eth0 scope link"
expect_eq "outside server sees the node (masquerade)" "$(sed -n 's/^peer=//p' <<<"$out" | tr -d '\r')" "$NODE_UPLINK"
# --rm: the removal (and DEL) may still be finishing in conmon's cleanup process.
pm_wait_idle 15 || fail "podman processes still running 15 s after podman run --rm"
expect_eq "ADD logged for the --rm container" "$(log_has ADD "$cid")" 1
expect_eq "DEL logged for the --rm container" "$(log_has DEL "$cid")" 1
expect_eq "podman ps -a after --rm" "$(pm ps -aq | wc -l)" 0
expect_clean_node "$STORE"

# ---------------------------------------------------------------- (b) podman run -d -p
log "--- podman run -d -p 18080:8000: inspect vs store, conmon's namespace, hostPort, stop + rm"
C=web-$RUN_ID
cid=$(pm run -d --name "$C" --network "$NET" -p 18080:8000 --rootfs "$PM_ROOTFS" \
    /bin/httpd -f -p 8000 -h /www) || die "podman run -d failed"
inspect=$(pm inspect "$C")
ip=$(jq -r --arg n "$NET" '.[0].NetworkSettings.Networks[$n].IPAddress' <<<"$inspect")
rec=$(store_json | jq -c --arg c "$cid" '[.[] | select(.record.containerId == $c)]')
expect_eq "allocations in the store for $C" "$(jq length <<<"$rec")" 1
expect_eq "podman inspect IP = routed-cni store IP" "$ip" "$(jq -r '.[0].record.ip' <<<"$rec")"
in_subnet "$ip" && ok "$ip is in $SUBNET" || fail "inspect IP '$ip' not in $SUBNET"
expect_eq "inspect prefix length" "$(jq -r --arg n "$NET" '.[0].NetworkSettings.Networks[$n].IPPrefixLen' <<<"$inspect")" 32
expect_eq "inspect gateway" "$(jq -r --arg n "$NET" '.[0].NetworkSettings.Networks[$n].Gateway' <<<"$inspect")" 169.254.1.1
expect_eq "store podName (K8S_POD_NAME from podman's CNI_ARGS)" "$(jq -r '.[0].record.podName' <<<"$rec")" "$C"
expect_eq "store says the host veth exists (in the node)" "$(jq -r '.[0].hostVethPresent' <<<"$rec")" true
veth=$(jq -r '.[0].record.hostVeth' <<<"$rec")
ip -n "$NODE" -o link show "$veth" >/dev/null 2>&1 && ok "host veth $veth is in the node" || fail "host veth $veth not in the node"
ip -o link show "$veth" >/dev/null 2>&1 && fail "host veth $veth is in the host's own namespace" || ok "host veth not in the host's namespace"
cache=/var/lib/cni/results/$NET-$cid-eth0
[ -f "$cache" ] && log "podman's CNI_ARGS (libcni cache): $(jq -r '[.cniArgs[] | join("=")] | join(";")' "$cache")"
conmon=$(jq -r '.[0].State.ConmonPid' <<<"$inspect")
expect_eq "conmon (pid $conmon) runs in the node's network namespace" "$(inode /proc/"$conmon"/ns/net)" "$(inode /run/netns/"$NODE")"
tr '\0' '\n' <"/proc/$conmon/environ" | grep -qx "CONTAINERS_CONF=$PM/containers.conf" &&
    ok "conmon got CONTAINERS_CONF from podman (its cleanup needs cni_plugin_dirs)" ||
    fail "conmon has no CONTAINERS_CONF: its cleanup would not find routed-cni"
log "conmon's CONTAINERS_* environment: $(tr '\0' '\n' <"/proc/$conmon/environ" | grep '^CONTAINERS_' | xargs);" \
    "its exit command: $(tr '\0' ' ' <"/proc/$conmon/cmdline" | grep -o -- '--exit-command .*' | sed 's/--exit-command-arg //g' | sed "s|$PM|\$PM|g")"
body=""
for _ in $(seq 30); do # httpd may need a moment to listen
    body=$(printf 'GET / HTTP/1.0\r\n\r\n' | ip netns exec "$OUTSIDE" timeout 5 socat -T3 - TCP:$NODE_UPLINK:18080 2>/dev/null | tail -1 | tr -d '\r') || true
    [ "$body" == hello-from-podman ] && break
    sleep 0.1
done
expect_eq "hostPort 18080 on the node from outside" "$body" hello-from-podman
expect_eq "container port 8000 by its address from the node" \
    "$(printf 'GET / HTTP/1.0\r\n\r\n' | on_node timeout 5 socat -T3 - TCP:"$ip":8000 2>/dev/null | tail -1 | tr -d '\r')" hello-from-podman
out=$(pm exec "$C" /bin/sh -c "echo | timeout 5 nc $OUTSIDE_ADDR 8080" 2>&1 | tr -d '\r') || true
expect_eq "podman exec: outside sees the node" "$out" "$NODE_UPLINK"
netns=$(jq -r '.[0].NetworkSettings.SandboxKey' <<<"$inspect")
pm stop -t 1 "$C" >/dev/null 2>&1 || fail "podman stop"
pm rm "$C" >/dev/null || fail "podman rm"
pm_wait_idle 15 || fail "podman processes still running 15 s after podman rm"
expect_eq "ADD logged for $C" "$(log_has ADD "$cid")" 1
expect_eq "DEL logged for $C" "$(log_has DEL "$cid")" 1
expect_eq "container netns $netns removed" "$(ls "$netns" 2>/dev/null | wc -l)" 0
expect_eq "portmap's DNAT chains removed" "$(on_node iptables-save -t nat | grep -c 'CNI-DN-' || true)" 0
expect_eq "libcni result cache removed" "$(ls /var/lib/cni/results/"$NET"-* 2>/dev/null | wc -l)" 0
expect_clean_node "$STORE"

# ---------------------------------------------------------------- (c) exits by itself
log "--- a detached container that exits: DEL from conmon's 'podman container cleanup'"
C=brief-$RUN_ID
cid=$(pm run -d --name "$C" --network "$NET" --rootfs "$PM_ROOTFS" /bin/sleep 1) || die "podman run -d failed"
gone=0
for _ in $(seq 100); do
    state=$(pm inspect "$C" --format '{{.State.Status}}' 2>/dev/null || true)
    if [ "$state" == exited ] && [ "$(log_has DEL "$cid")" == 1 ]; then gone=1 && break; fi
    sleep 0.1
done
[ $gone == 1 ] && ok "container exited and its network was torn down before podman rm" ||
    fail "no DEL after the container exited (state '$state')"
pm_wait_idle 15 || fail "podman container cleanup still running after 15 s"
expect_eq "the exited container still exists (only cleanup ran)" "$(pm ps -aq --filter name="$C" | wc -l)" 1
expect_clean_node "$STORE"
pm rm "$C" >/dev/null || fail "podman rm of the exited container"

# ---------------------------------------------------------------- leftovers anywhere
log "--- nothing left: podman, mounts, namespaces, the host's own network namespace"
expect_eq "podman ps -a" "$(pm ps -aq | wc -l)" 0
expect_eq "podman processes" "$(pm_pids | wc -l)" 0
expect_eq "mounts under the work dir" "$(pm_mounts | wc -l)" 0
expect_eq "container netns left in /run/netns" "$(pm_new_netns | xargs)" ""
expect_eq "ADD/DEL pairs in the plugin log" "$(grep -c ' ADD ok ' "$CLOG")/$(grep -c ' DEL ok ' "$CLOG")" 3/3
expect_eq "failed calls in the plugin log" "$(grep -c ' failed ' "$CLOG" || true)" 0
leaked=""
for v in $(host_veth_of); do ip -o link show "$v" >/dev/null 2>&1 && leaked+=" $v"; done
expect_eq "host veths of this run in the host's namespace" "$leaked" ""
expect_eq "routes to $SUBNET in the host's namespace" "$(ip route show | grep -c '^10\.206\.0\.' || true)" 0
expect_eq "NAT rules for $SUBNET in the host's namespace" "$(iptables-save -t nat 2>/dev/null | grep -c "$SUBNET" || true)" 0
log "plugin calls seen: $(awk '/ ok network=/ {print $4}' "$CLOG" | sort | uniq -c | xargs)"
finish
