#!/usr/bin/env bash
# IPv6 and dual-stack pods, as a runtime would wire them: dual-stack pods and an IPv6-only pod
# on one scratch node reach each other, the node and the outside over both families; the
# outside server sees the node's address per family (masquerade), a pod sees the other pod's
# own address; CHECK names broken IPv6 pieces; a full IPv6 pool fails the ADD and gives the
# IPv4 address back; GC frees both families of a dead pod; DEL leaves nothing in either family.
set -euo pipefail
. "$(dirname "$0")/lib/world.sh"

[ -x "$BIN" ] || die "no plugin binary at $BIN (cargo build --release)"
make_node

STORE=$WORK/store
POD_A=rcn-6a-$RUN_ID
POD_B=rcn-6b-$RUN_ID
POD_C=rcn-6c-$RUN_ID
POD_D=rcn-6d-$RUN_ID
GW6=fe80::ecee:eeff:feee:eeee

# Dual-stack: one range set per family, exceptions for both cluster CIDRs.
cat >"$WORK/dual.conf" <<EOF
{"cniVersion":"1.0.0","name":"dual","type":"routed-cni",
 "ipam":{"ranges":[[{"subnet":"fd00:10:244:1::/64"}],[{"subnet":"10.244.1.0/24"}]],"dataDir":"$STORE"},
 "nonMasqueradeCIDRs":["10.244.0.0/16","fd00:10:244::/48"]}
EOF
# IPv6 only, its own pool, in the old result format (ips[].version).
cat >"$WORK/v6only.conf" <<EOF
{"cniVersion":"0.3.1","name":"v6only","type":"routed-cni",
 "ipam":{"subnet":"fd00:10:244:2::/64","dataDir":"$STORE"},
 "nonMasqueradeCIDRs":["fd00:10:244::/48"]}
EOF
# Dual-stack whose IPv6 range holds two addresses: the third ADD must fail whole.
cat >"$WORK/tiny6.conf" <<EOF
{"cniVersion":"1.0.0","name":"tiny6","type":"routed-cni",
 "ipam":{"ranges":[[{"subnet":"10.244.3.0/24"}],[{"subnet":"fd00:10:244:3::/126"}]],"dataDir":"$STORE"}}
EOF

# socat prints [0000:…:0001]; IPv4 clients of an IPv6 socket appear as ::ffff:a.b.c.d.
norm() {
    /usr/bin/python3 -c 'import ipaddress,sys; a = ipaddress.ip_address(sys.argv[1].strip("[]")); print(getattr(a, "ipv4_mapped", None) or a)' "$1" 2>/dev/null || echo "$1"
}
pod_ip6() { ip -n "$1" -6 -o addr show dev eth0 scope global | awk '{print $4}' | cut -d/ -f1; }
ping6_ok() { ip netns exec "$1" ping -6 -c1 -W2 "$2" >/dev/null 2>&1; }
ping4_ok() { ip netns exec "$1" ping -4 -c1 -W2 "$2" >/dev/null 2>&1; }

# A server in NS on PORT (both families) answering each connection with the peer's address.
serve6() {
    local ns=$1 port=$2 i
    ip netns exec "$ns" timeout 300 socat -T5 TCP6-LISTEN:"$port",reuseaddr,fork,ipv6only=0 \
        SYSTEM:'echo $SOCAT_PEERADDR' &
    BACKGROUND_PIDS+=($!)
    for i in $(seq 50); do
        ip netns exec "$ns" ss -ltn "sport = :$port" | grep -q LISTEN && return 0
        sleep 0.1
    done
    die "server on $ns:$port did not start"
}
seen6() { # seen6 CLIENT_NS ADDR PORT: the client's address as that server saw it
    local to="TCP4:$2:$3"
    [[ $2 == *:* ]] && to="TCP6:[$2]:$3"
    norm "$(ip netns exec "$1" timeout 5 socat -T3 - "$to" </dev/null 2>/dev/null | tr -d '\r\n')"
}

log "dual-stack ADD: one address per family, both default routes, in the result"
make_pod "$POD_A"
make_pod "$POD_B"
res_a=$(cni ADD a "$POD_A" "$WORK/dual.conf")
res_b=$(cni ADD b "$POD_B" "$WORK/dual.conf")
expect_eq "pod A result ips" "$(jq -c '[.ips[].address]' <<<"$res_a")" '["10.244.1.1/32","fd00:10:244:1::1/128"]'
expect_eq "pod A result routes" "$(jq -c '[.routes[] | .dst + " via " + .gw]' <<<"$res_a")" \
    "[\"0.0.0.0/0 via 169.254.1.1\",\"::/0 via $GW6\"]"
A4=$(pod_ip "$POD_A")
A6=$(pod_ip6 "$POD_A")
B6=$(pod_ip6 "$POD_B")
expect_eq "pod A IPv4 on eth0" "$A4" 10.244.1.1
expect_eq "pod A IPv6 on eth0" "$A6" fd00:10:244:1::1
expect_eq "pod B IPv6 on eth0" "$B6" fd00:10:244:1::2
tentative=$(ip -n "$POD_A" -6 addr show dev eth0 | grep -c tentative || true)
expect_eq "tentative IPv6 addresses in pod A (DAD off)" "$tentative" 0
expect_eq "pod A IPv6 default route" "$(ip -n "$POD_A" -6 route show default | awk '{print $3, $5}')" "$GW6 eth0"
veth_a=$(jq -r '.interfaces[0].name' <<<"$res_a")
expect_eq "host veth holds the IPv6 gateway" \
    "$(ip -n "$NODE" -6 -o addr show dev "$veth_a" | grep -c "$GW6/64")" 1
expect_eq "node /128 to pod A" "$(ip -n "$NODE" -6 route show "$A6/128" | awk '{print $3}')" "$veth_a"
expect_eq "proxy_ndp on $veth_a" "$(on_node sysctl -n net.ipv6.conf."$veth_a".proxy_ndp)" 1
expect_eq "IPv6 forwarding on the node" "$(on_node sysctl -n net.ipv6.conf.all.forwarding)" 1

log "IPv6-only ADD with cniVersion 0.3.1"
make_pod "$POD_C"
res_c=$(cni ADD c "$POD_C" "$WORK/v6only.conf")
expect_eq "pod C result" "$(jq -c '[.ips[] | .version + " " + .address]' <<<"$res_c")" '["6 fd00:10:244:2::1/128"]'
C6=$(pod_ip6 "$POD_C")
expect_eq "pod C has no IPv4 address" "$(pod_ip "$POD_C")" ""
expect_eq "pod C has no IPv4 default route" "$(ip -n "$POD_C" -4 route show | wc -l)" 0

log "traffic: the first packet after ADD goes through (no DAD wait), both families, every direction"
for pair in "$POD_A $B6" "$POD_B $A6" "$POD_A $C6" "$POD_C $A6" "$POD_C $NODE_UPLINK6" \
    "$POD_A $NODE_UPLINK6" "$POD_A $OUTSIDE_ADDR6" "$POD_C $OUTSIDE_ADDR6"; do
    set -- $pair
    ping6_ok "$1" "$2" && ok "ping -6 $1 -> $2" || fail "ping -6 $1 -> $2"
done
ping4_ok "$POD_A" 10.244.1.2 && ok "ping -4 pod A -> pod B" || fail "ping -4 pod A -> pod B"
ping4_ok "$POD_A" "$OUTSIDE_ADDR" && ok "ping -4 pod A -> outside" || fail "ping -4 pod A -> outside"
ip netns exec "$NODE" ping -6 -c1 -W2 "$A6" >/dev/null && ok "node -> pod A over IPv6" || fail "node -> pod A over IPv6"

log "masquerade per family: the outside sees the node, a pod sees the other pod"
serve6 "$OUTSIDE" 8080
serve6 "$POD_B" 8080
expect_eq "outside sees pod A over IPv6 as" "$(seen6 "$POD_A" "$OUTSIDE_ADDR6" 8080)" "$NODE_UPLINK6"
expect_eq "outside sees pod C (IPv6-only) as" "$(seen6 "$POD_C" "$OUTSIDE_ADDR6" 8080)" "$NODE_UPLINK6"
expect_eq "outside sees pod A over IPv4 as" "$(seen6 "$POD_A" "$OUTSIDE_ADDR" 8080)" "$NODE_UPLINK"
expect_eq "pod B sees pod A over IPv6 as" "$(seen6 "$POD_A" "$B6" 8080)" "$A6"
expect_eq "pod B sees pod C over IPv6 as" "$(seen6 "$POD_C" "$B6" 8080)" "$C6"
expect_eq "pod B sees pod A over IPv4 as" "$(seen6 "$POD_A" 10.244.1.2 8080)" "$A4"
rules6=$(on_node ip6tables -t nat -S | grep -c 'routed-cni pool fd00:10:244:' || true)
expect_eq "ip6tables jumps (one per IPv6 pool)" "$rules6" 2
rules4=$(on_node iptables -t nat -S | grep -c 'routed-cni pool' || true)
expect_eq "iptables jumps (one per IPv4 pool)" "$rules4" 1

log "CHECK: passes, then names each broken IPv6 piece"
check_a() { # check_a -> prints "ok" or the error message
    local out
    if out=$(cni CHECK a "$POD_A" <(jq --argjson p "$res_a" '. + {prevResult: $p}' "$WORK/dual.conf") 2>/dev/null); then
        echo ok
    else
        jq -r .msg <<<"$out"
    fi
}
expect_eq "CHECK of a healthy dual-stack pod" "$(check_a)" ok
ip -n "$POD_A" -6 route del default
msg=$(check_a)
[[ $msg == *"IPv6 default route via $GW6"* ]] && ok "CHECK names the missing IPv6 default route" || fail "CHECK said: $msg"
ip -n "$POD_A" -6 route add default via "$GW6" dev eth0
on_node sysctl -qw net.ipv6.conf.all.forwarding=0
msg=$(check_a)
[[ $msg == *net.ipv6.conf.all.forwarding* ]] && ok "CHECK names IPv6 forwarding off" || fail "CHECK said: $msg"
ping6_ok "$POD_A" "$OUTSIDE_ADDR6" && fail "pod A reached the outside with IPv6 forwarding off" ||
    ok "with IPv6 forwarding off pod A cannot reach the outside (what CHECK reported)"
on_node sysctl -qw net.ipv6.conf.all.forwarding=1
# proxy_ndp is set as calico does, but nothing needs it: CHECK does not fail a pod that works.
on_node sysctl -qw net.ipv6.conf."$veth_a".proxy_ndp=0
expect_eq "CHECK with proxy_ndp=0 (pod A still reaches the outside)" "$(check_a)" ok
ping6_ok "$POD_A" "$OUTSIDE_ADDR6" && ok "ping -6 pod A -> outside with proxy_ndp=0" || fail "ping -6 with proxy_ndp=0"
on_node sysctl -qw net.ipv6.conf."$veth_a".proxy_ndp=1
ip -n "$NODE" -6 route del "$A6/128"
msg=$(check_a)
[[ $msg == *"no route $A6/128"* ]] && ok "CHECK names the missing /128" || fail "CHECK said: $msg"
ip -n "$NODE" -6 route add "$A6/128" dev "$veth_a"
jump=$(on_node ip6tables -t nat -S POSTROUTING | grep 'routed-cni pool fd00:10:244:1::/64' | sed 's/^-A //')
eval "on_node ip6tables -t nat -D $jump"
msg=$(check_a)
[[ $msg == *ip6tables* ]] && ok "CHECK names the missing ip6tables jump" || fail "CHECK said: $msg"
eval "on_node ip6tables -t nat -A $jump"
expect_eq "CHECK after every repair" "$(check_a)" ok

log "a full IPv6 pool fails a dual-stack ADD whole: the IPv4 address goes back"
make_pod "$POD_D"
make_pod "$POD_D-1"
make_pod "$POD_D-2"
cni ADD t1 "$POD_D-1" "$WORK/tiny6.conf" >/dev/null
cni ADD t2 "$POD_D-2" "$WORK/tiny6.conf" >/dev/null
if out=$(cni ADD t3 "$POD_D" "$WORK/tiny6.conf"); then
    fail "third ADD into a 2-address IPv6 range succeeded: $out"
else
    expect_eq "error code of the third ADD" "$(jq .code <<<"$out")" 100
fi
expect_eq "IPv4 records in the tiny pool after the failed ADD" "$(ls "$STORE/10.244.3.0-24" | grep -c '^10\.' || true)" 2
expect_eq "interfaces left in pod D" "$(ip -n "$POD_D" -o link show | grep -vc ' lo:' || true)" 0
cni DEL t1 "$POD_D-1" "$WORK/tiny6.conf"
cni DEL t2 "$POD_D-2" "$WORK/tiny6.conf"

log "STATUS and GC (cniVersion 1.1.0): pod B dies without DEL; GC frees both of its addresses"
gc_conf() { jq --argjson v "$1" '.cniVersion = "1.1.0" | . + {"cni.dev/valid-attachments": $v}' "$WORK/dual.conf"; }
on_node env CNI_COMMAND=STATUS "$BIN" < <(gc_conf '[]') && ok "STATUS ok" || fail "STATUS failed"
ip netns del "$POD_B"
on_node env CNI_COMMAND=GC CNI_PATH=/usr/lib/cni "$BIN" < <(gc_conf '[{"containerID":"a","ifname":"eth0"}]') \
    && ok "GC ok" || fail "GC failed"
expect_eq "records of pod B left" "$(grep -rl '"containerId": "b"' "$STORE" 2>/dev/null | wc -l)" 0
expect_eq "pod A records kept" "$(grep -rl '"containerId": "a"' "$STORE" | wc -l)" 2
expect_eq "routes to pod B left" "$( (ip -n "$NODE" -6 route show "$B6/128"; ip -n "$NODE" route show 10.244.1.2/32) | wc -l)" 0

log "DEL leaves nothing in either family"
cni DEL a "$POD_A" "$WORK/dual.conf"
cni DEL c "$POD_C" "$WORK/v6only.conf"
cni DEL b "" "$WORK/dual.conf"
cni DEL a "$POD_A" "$WORK/dual.conf" && ok "second DEL of pod A succeeds"
expect_clean_node "$STORE"
finish
