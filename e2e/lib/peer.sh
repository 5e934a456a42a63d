# shellcheck shell=bash
# Shared by e2e scripts that check who a server sees: a TCP server in a namespace that answers
# each connection with the peer's address, and a client that prints what it was told.
# Needs world.sh (die, BACKGROUND_PIDS) and PORT set by the script.

# socat prints [0000:…:0001]; IPv4 clients of an IPv6 socket appear as ::ffff:a.b.c.d.
norm() {
    /usr/bin/python3 -c 'import ipaddress,sys; a = ipaddress.ip_address(sys.argv[1].strip("[]")); print(getattr(a, "ipv4_mapped", None) or a)' "$1" 2>/dev/null || echo "$1"
}
pod_ip6() { ip -n "$1" -6 -o addr show dev eth0 scope global | awk '{print $4}' | cut -d/ -f1; }

# serve NS: a server on NS:$PORT (both families) answering each connection with the peer's
# address; stopped with the script's other background processes.
serve() {
    local ns=$1 _
    # shellcheck disable=SC2016 # $SOCAT_PEERADDR is for the shell socat starts
    ip netns exec "$ns" timeout 600 socat -T5 TCP6-LISTEN:"$PORT",reuseaddr,fork,ipv6only=0 \
        SYSTEM:'echo $SOCAT_PEERADDR' &
    BACKGROUND_PIDS+=($!)
    for _ in $(seq 50); do
        ip netns exec "$ns" ss -ltn "sport = :$PORT" | grep -q LISTEN && return 0
        sleep 0.1
    done
    die "server on $ns:$PORT did not start"
}
# seen CLIENT_NS ADDR: the client's address as the server at ADDR saw it; empty when the
# connection failed (a dropped SYN gives up after 2 s).
seen() {
    local to="TCP4:$2:$PORT,connect-timeout=2" got
    [[ $2 == *:* ]] && to="TCP6:[$2]:$PORT,connect-timeout=2"
    got=$(ip netns exec "$1" timeout 4 socat -T3 - "$to" </dev/null 2>/dev/null | tr -d '\r\n' || true)
    [ -n "$got" ] && norm "$got"
}
