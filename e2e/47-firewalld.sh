#!/usr/bin/env bash
# firewalld with its nftables backend (issue 14, item 1): the real daemon (Debian's firewalld
# package), run inside the node's network namespace only, with its default zones. Shows:
#   - pod -> outside fails (firewalld's default zone rejects forwarded packets, and no
#     iptables rule of routed-cni can undo that), and `routed-cni doctor --to` names the
#     firewalld step, exits 1 and prints the firewall-cmd commands that fix it;
#   - those exact commands, run with firewall-cmd, make the pod work (both families) and
#     doctor pass; a connection opened from outside to the pod is still rejected (the
#     trusted zone is about traffic entering from the veths), as README says;
#   - README's policy for outside -> pod works; the `firewall-cmd --reload` it needs flushes
#     every iptables table (firewalld does so on each start and reload), routed-cni's chains
#     included, and the pool's next ADD puts them back;
#   - cleanup leaves no rule, link or allocation, and nothing of firewalld on the machine.
# Confinement: firewalld talks D-Bus, so a private dbus-daemon (system-bus type, its own
# socket under WORK, no service activation) carries it and firewall-cmd
# (DBUS_SYSTEM_BUS_ADDRESS). firewalld runs under `ip netns exec NODE` (its nftables table and
# its iptables flushes land in the node namespace) and in a private mount namespace where a
# copy of /etc/firewalld is bound over /etc/firewalld and a tmpfs over /run/firewalld; it logs
# to the console (WORK). The script checks that the machine's own nftables tables and
# /etc/firewalld are the same afterwards. Without polkit on the bus firewalld authorizes uid 0.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/world.sh
. "$(dirname "$0")/lib/world.sh"
# shellcheck source-path=SCRIPTDIR source=lib/peer.sh
. "$(dirname "$0")/lib/peer.sh"

[ -x "$BIN" ] || die "no plugin binary at $BIN (cargo build --release, or set ROUTED_CNI_BIN)"
for tool in firewalld firewall-cmd dbus-daemon nft socat unshare; do
    command -v "$tool" >/dev/null || die "$tool is not installed (scripts/test.sh installs firewalld)"
done

PORT=7070
POOL4=10.244.1.0/24
POOL6=fd00:10:244:1::/64
STORE=$WORK/store
CONF=$WORK/fw.conf
BUS=$WORK/bus
export DBUS_SYSTEM_BUS_ADDRESS=unix:path=$BUS
MADE_RUN_DIR=no

cleanup_firewalld() {
    local pid
    # firewalld first (it cleans its table on exit), then its bus; world.sh kills the rest.
    for pid in "${FW_PID:-}" "${BUS_PID:-}"; do
        [ -n "$pid" ] || continue
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    done
    # The mount point for the tmpfs, when this script had to create it (firewalld's package
    # does not ship it); the tmpfs itself was only ever mounted in the private namespace.
    if [ "$MADE_RUN_DIR" = yes ]; then rmdir /run/firewalld 2>/dev/null || true; fi
}
trap 'cleanup_firewalld; cleanup_world' EXIT

host_tables() { nft list tables 2>/dev/null | sort; }
host_etc() { (cd /etc/firewalld && find . -type f -exec sha256sum {} + | sort); }
fw() { firewall-cmd "$@" 2>&1 | sed 's/^/    firewall-cmd: /'; return "${PIPESTATUS[0]}"; }
indent() { while IFS= read -r line; do echo "    $line"; done <<<"$1"; }

# doctor_json CONTAINER [TO]: `routed-cni doctor --json --to TO` (default: the outside's IPv4
# address); its exit code in DOCTOR_RC.
doctor_json() {
    DOCTOR_RC=0
    DOCTOR_OUT=$(on_node "$BIN" doctor --data-dir "$STORE" --container "$1" --to "${2:-$OUTSIDE_ADDR}" --json) ||
        DOCTOR_RC=$?
}
# firewalld_steps: "status<TAB>saw" of each walk's firewalld step, then "fix<TAB>command"
# for each distinct fix command, from DOCTOR_OUT.
firewalld_steps() {
    python3 -c '
import json, sys
doc = json.loads(sys.stdin.read())
reports = doc if isinstance(doc, list) else doc.get("pods", doc.get("reports", [doc]))
fixes = []
def walk(v):
    if isinstance(v, dict):
        if v.get("id") == "firewalld":
            print(v.get("status"), v.get("saw"), sep="\t")
            fixes.extend(f for f in v.get("fix", []) if f not in fixes)
        else:
            for x in v.values():
                walk(x)
    elif isinstance(v, list):
        for x in v:
            walk(x)
walk(reports)
for f in fixes:
    print("fix", f, sep="\t")
' <<<"$DOCTOR_OUT"
}

# ---- the node, firewalld on it ---------------------------------------------------------------

host_tables_before=$(host_tables)
host_etc_before=$(host_etc)
if nft list table inet firewalld >/dev/null 2>&1; then
    die "the machine itself runs firewalld (table inet firewalld): not testing next to it"
fi

make_node
# The fabric routes the pool to the node, so the outside can open connections to pods.
ip -n "$OUTSIDE" route add "$POOL4" via "$NODE_UPLINK"
ip -n "$OUTSIDE" -6 route add "$POOL6" via "$NODE_UPLINK6"

cp -a /etc/firewalld "$WORK/etc-firewalld"
cat >"$WORK/bus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=$BUS</listen>
  <auth>EXTERNAL</auth>
  <policy user="root">
    <allow own="org.fedoraproject.FirewallD1"/>
    <allow own="org.fedoraproject.FirewallD1.config"/>
  </policy>
  <policy context="default">
    <allow user="root"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
EOF
BUS_PID=$(dbus-daemon --config-file="$WORK/bus.conf" --fork --print-pid=1)
if [ ! -d /run/firewalld ]; then
    mkdir /run/firewalld
    MADE_RUN_DIR=yes
fi
# shellcheck disable=SC2016 # $0 and $1 are the inner shell's
ip netns exec "$NODE" unshare -m --propagation private sh -c '
    mount -t tmpfs tmpfs /run/firewalld &&
    mount --bind "$0" /etc/firewalld &&
    exec firewalld --nofork --nopid --log-target console
' "$WORK/etc-firewalld" >"$WORK/firewalld.log" 2>&1 &
FW_PID=$!
started=$(date +%s)
until [ "$(firewall-cmd --state 2>/dev/null)" = running ]; do
    kill -0 "$FW_PID" 2>/dev/null || { cat "$WORK/firewalld.log"; die "firewalld exited"; }
    [ $(($(date +%s) - started)) -lt 30 ] || { cat "$WORK/firewalld.log"; die "firewalld not running after 30 s"; }
    sleep 0.2
done
log "firewalld $(firewall-cmd --version) is running in $NODE (default zone $(firewall-cmd --get-default-zone)) after $(($(date +%s) - started)) s"
expect_eq "table inet firewalld in the node" "$(on_node nft list tables | grep -c 'inet firewalld')" 1
expect_eq "the machine's own nftables tables" "$(host_tables)" "$host_tables_before"

# ---- a dual-stack pod behind firewalld's default zones ---------------------------------------

cat >"$CONF" <<EOF
{"cniVersion":"1.0.0","name":"fw-firewalld","type":"routed-cni",
 "ipam":{"ranges":[[{"subnet":"$POOL4"}],[{"subnet":"$POOL6"}]],"dataDir":"$STORE"},
 "nonMasqueradeCIDRs":["10.244.0.0/16","fd00:10:244::/48"]}
EOF
make_pod "rcn-fwd-a-$RUN_ID"
POD_A=rcn-fwd-a-$RUN_ID
res=$(cni ADD a "$POD_A" "$CONF") || die "ADD pod A: $res"
A4=$(pod_ip "$POD_A")
A6=$(pod_ip6 "$POD_A")
log "pod a: $A4 $A6"
serve "$OUTSIDE"
serve "$POD_A"

expect_eq "firewalld's default zone: pod A -> outside (IPv4)" "$(seen "$POD_A" "$OUTSIDE_ADDR")" ""
expect_eq "firewalld's default zone: pod A -> outside (IPv6)" "$(seen "$POD_A" "$OUTSIDE_ADDR6")" ""

doctor_json a
expect_eq "doctor --to $OUTSIDE_ADDR exit code, firewalld rejecting" "$DOCTOR_RC" 1
steps=$(firewalld_steps)
log "doctor's firewalld steps:"
indent "$steps"
expect_eq "firewalld steps that fail (one per family)" "$(grep -c '^fail' <<<"$steps" || true)" 2
if grep -q '^fail.*filter_FWD_public.*reject' <<<"$steps"; then
    ok "doctor names the zone chain that rejects"
else
    fail "doctor does not name filter_FWD_public's reject"
fi
mapfile -t fixes < <(sed -n 's/^fix\t//p' <<<"$steps")
expect_eq "doctor's firewalld fix" "${fixes[*]}" \
    "firewall-cmd --zone=trusted --add-interface=rcni+ firewall-cmd --permanent --zone=trusted --add-interface=rcni+"

# ---- doctor's fix, exactly as printed --------------------------------------------------------

for f in "${fixes[@]}"; do
    [[ $f == firewall-cmd\ * ]] || { fail "not a firewall-cmd command: $f"; continue; }
    log "running doctor's fix: $f"
    read -ra argv <<<"$f"
    fw "${argv[@]:1}" || fail "$f"
done
expect_eq "after the fix: outside sees pod A (IPv4) as the node" "$(seen "$POD_A" "$OUTSIDE_ADDR")" "$NODE_UPLINK"
expect_eq "after the fix: outside sees pod A (IPv6) as the node" "$(seen "$POD_A" "$OUTSIDE_ADDR6")" "$NODE_UPLINK6"
# Once per family as the destination: a walk without a --to of its family looks at "any
# address outside the pool", and firewalld's reject of IPv4-mapped and 6to4 destinations
# (filter_FORWARD) is a "may drop" for some of them.
for to in "$OUTSIDE_ADDR" "[$OUTSIDE_ADDR6]:$PORT"; do
    doctor_json a "$to"
    expect_eq "doctor --to $to exit code after the fix" "$DOCTOR_RC" 0
    steps=$(firewalld_steps)
    indent "$steps"
    expect_eq "doctor --to $to: firewalld steps that fail" "$(grep -c '^fail' <<<"$steps" || true)" 0
    if grep -q '^ok.*accepted by filter_FWD_trusted' <<<"$steps"; then
        ok "doctor --to $to: firewalld accepts by the trusted zone"
    else
        fail "doctor --to $to: no firewalld step accepted by the trusted zone"
    fi
done
# The trusted zone holds the veths: traffic entering from them. A connection opened from
# outside enters on the uplink (default zone): still rejected.
expect_eq "trusted zone only: outside -> pod A (IPv4, new connection)" "$(seen "$OUTSIDE" "$A4")" ""

# ---- README's policy for connections from outside; the reload it needs -----------------------

fw --permanent --new-policy=rcni-to-pods || fail "firewall-cmd --permanent --new-policy=rcni-to-pods"
fw --permanent --policy=rcni-to-pods --add-ingress-zone=ANY || fail "firewall-cmd --permanent --policy=rcni-to-pods --add-ingress-zone=ANY"
fw --permanent --policy=rcni-to-pods --add-egress-zone=trusted || fail "firewall-cmd --permanent --policy=rcni-to-pods --add-egress-zone=trusted"
fw --permanent --policy=rcni-to-pods --set-target=ACCEPT || fail "firewall-cmd --permanent --policy=rcni-to-pods --set-target=ACCEPT"
ours_before=$( (on_node iptables-save; on_node ip6tables-save) | grep -c 'RCNI-' || true)
fw --reload || fail "firewall-cmd --reload"
ours_after=$( (on_node iptables-save; on_node ip6tables-save) | grep -c 'RCNI-' || true)
log "routed-cni's iptables lines: $ours_before before firewall-cmd --reload, $ours_after after"
if [ "$ours_before" -gt 0 ] && [ "$ours_after" -eq 0 ]; then
    ok "firewall-cmd --reload flushed routed-cni's chains"
else
    fail "expected --reload to flush routed-cni's iptables chains ($ours_before -> $ours_after)"
fi
expect_eq "after --reload, the permanent trusted binding" "$(firewall-cmd --zone=trusted --list-interfaces)" "rcni+"
# The pool's next ADD finds its jumps missing and installs them again.
make_pod "rcn-fwd-b-$RUN_ID"
POD_B=rcn-fwd-b-$RUN_ID
res=$(cni ADD b "$POD_B" "$CONF") || fail "ADD pod B: $res"
expect_eq "routed-cni's iptables lines after the pool's next ADD" \
    "$( (on_node iptables-save; on_node ip6tables-save) | grep -c 'RCNI-' || true)" "$ours_before"
expect_eq "policy rcni-to-pods: pod A sees the outside (IPv4) as" "$(seen "$OUTSIDE" "$A4")" "$OUTSIDE_ADDR"
expect_eq "policy rcni-to-pods: pod A sees the outside (IPv6) as" "$(seen "$OUTSIDE" "$A6")" "$OUTSIDE_ADDR6"
expect_eq "and outside sees pod A (IPv4) as the node" "$(seen "$POD_A" "$OUTSIDE_ADDR")" "$NODE_UPLINK"
doctor_json a
expect_eq "doctor --to $OUTSIDE_ADDR exit code at the end" "$DOCTOR_RC" 0

# ---- cleanup ---------------------------------------------------------------------------------

cni DEL a "$POD_A" "$CONF" || fail "DEL pod A"
cni DEL b "$POD_B" "$CONF" || fail "DEL pod B"
expect_eq "rules of routed-cni left in the node" \
    "$( (on_node iptables-save; on_node ip6tables-save) | grep -cE 'RCNI|routed-cni' || true)" 0
expect_clean_node "$STORE"
cleanup_firewalld
FW_PID=
BUS_PID=
expect_eq "firewalld's table after it stopped" "$(on_node nft list tables | grep -c 'inet firewalld' || true)" 0
expect_eq "the machine's own nftables tables at the end" "$(host_tables)" "$host_tables_before"
expect_eq "the machine's /etc/firewalld at the end" "$(host_etc)" "$host_etc_before"
finish
