#!/usr/bin/env bash
# routed-cni agent's /metrics and --log-format json, against the stand-in API server
# (e2e/lib/fake-apiserver.py), on the two-node world of lib/cluster.sh. Checks, as a Prometheus
# server and a log pipeline would see them:
#   - GET /metrics answers Content-Type text/plain; version=0.0.4, and Prometheus' own text
#     parser (python3-prometheus-client's text_string_to_metric_families) reads all of it;
#   - routed_cni_ipam_pool_size is each installed pool's range, and
#     routed_cni_ipam_pool_addresses_in_use what `routed-cni list` shows per pool: before any
#     pod, after three ADDs and after a DEL;
#   - routed_cni_routes{path="direct"} is the number of proto 77 routes on the node, also after
#     a node joins; routed_cni_nodes counts it; the join is a counted watch event;
#   - the route sync and policy histograms have observations, their buckets are cumulative and
#     end at +Inf = _count; a finished watch is counted as a rewatch;
#   - an agent with a wrong token counts its 401s in routed_cni_api_errors_total;
#   - every line either agent wrote on stderr is one JSON object with time (RFC 3339, UTC,
#     fractional seconds), level, message and fields (thread, component, node).
# Nothing outside the namespaces this script creates is touched.
set -euo pipefail
# shellcheck disable=SC2034 # read by lib/cluster.sh: the agent makes the routes between nodes
CLUSTER_ROUTES=none
. "$(dirname "$0")/lib/cluster.sh"
[ -x "$BIN" ] || die "no routed-cni binary at $BIN (build it, or set ROUTED_CNI_BIN)"
command -v openssl >/dev/null || die "openssl is needed (apt-get install openssl)"
PY=/usr/bin/python3 # Debian's python3, where python3-prometheus-client installs
$PY -c 'import prometheus_client.parser' 2>/dev/null ||
    die "Prometheus' text parser is needed (apt-get install python3-prometheus-client)"
RESYNC=2
CLUSTER_CIDR6=fd00:10:244::/48
API=https://$ROUTER_IP:6443
NODES=$WORK/nodes
mkdir -p "$NODES"

now_ms() { echo $(($(date +%s%N) / 1000000)); }
wait_for() { # wait_for SECONDS WHAT COMMAND...
    local secs=$1 what=$2 start end
    shift 2
    start=$(now_ms)
    end=$((start + secs * 1000))
    until "$@" >/dev/null 2>&1; do
        if (($(now_ms) > end)); then
            fail "$what (not within ${secs}s)"
            return 0
        fi
        sleep 0.2
    done
    ok "$what ($(($(now_ms) - start)) ms)"
}

# scrape NS -> {"content_type": ..., "samples": {"name{k=v,...}": value}} from the agent's
# /metrics in NS, parsed by Prometheus' own parser (which raises on anything malformed); also
# checks every histogram's buckets are cumulative and end at +Inf = _count.
cat >"$WORK/scrape.py" <<'PY'
import json, sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
r = urllib.request.urlopen("http://127.0.0.1:9465/metrics", timeout=5)
text = r.read().decode()
samples, problems = {}, []
for fam in text_string_to_metric_families(text):
    buckets = {}
    for s in fam.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        samples[f"{s.name}{{{labels}}}"] = s.value
        if fam.type == "histogram" and s.name.endswith("_bucket"):
            rest = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            buckets.setdefault(rest, []).append((float(s.labels["le"]), s.value))
    for rest, bs in buckets.items():
        counts = [v for _, v in bs]
        if counts != sorted(counts) or bs[-1][0] != float("inf"):
            problems.append(f"{fam.name}{rest}: buckets {bs}")
        labels = ",".join(f"{k}={v}" for k, v in rest)
        if samples.get(f"{fam.name}_count{{{labels}}}") != bs[-1][1]:
            problems.append(f"{fam.name}{rest}: +Inf bucket is not _count")
print(json.dumps({"content_type": r.headers["Content-Type"], "samples": samples,
                  "problems": problems}))
PY
scrape() { ip netns exec "$1" $PY "$WORK/scrape.py"; }
# metric NS KEY -> the value of one sample ("null" when absent)
metric() { scrape "$1" | jq -r --arg k "$2" '.samples[$k]'; }
# metric_is NS KEY WANT: the sample is exactly WANT (compared as numbers)
metric_is() { [ "$(metric "$1" "$2")" != null ] && jq -en --argjson a "$(metric "$1" "$2")" --argjson b "$3" '$a == $b' >/dev/null; }

# in_use_by_list NODE POOL -> the pool's allocations as `routed-cni list` shows them
in_use_by_list() {
    ip netns exec "$NODE_A" "$BIN" list --json --data-dir "$WORK/$1/store" |
        jq --arg p "$2" '[.[] | select(.pool == $p)] | length'
}
# pools_match NODE NS: every pool's in-use metric is what `routed-cni list` says
pools_match() {
    local p want
    for p in 10.244.1.0/24 fd00:10:244:1::/64; do
        want=$(in_use_by_list "$1" "$p")
        metric_is "$2" "routed_cni_ipam_pool_addresses_in_use{pool=$p}" "$want" || return 1
    done
}
count_ours() { echo $(($(ip -n "$1" -4 route show proto 77 | wc -l) + $(ip -n "$1" -6 route show proto 77 | wc -l))); }
routes_are() { [ "$(count_ours "$1")" -eq "$2" ]; }
# wait_metric SECONDS WHAT NS KEY MIN: polls until the sample is at least MIN; a failure shows
# the last answer (the sample, or why the scrape failed).
wait_metric() {
    local secs=$1 what=$2 ns=$3 key=$4 min=$5 end got
    end=$(($(now_ms) + secs * 1000))
    while :; do
        got=$(metric "$ns" "$key" 2>&1) || true
        if jq -en --argjson v "$got" --argjson min "$min" '$v != null and $v >= $min' >/dev/null 2>&1; then
            ok "$what ($key = $got)"
            return 0
        fi
        if (($(now_ms) > end)); then
            fail "$what (not within ${secs}s; last: $got)"
            return 0
        fi
        sleep 0.2
    done
}

start_agent() { # start_agent NS NODE_NAME [TOKEN_FILE]
    local ns=$1 name=$2 token=${3:-$WORK/token} dir=$WORK/$2
    mkdir -p "$dir"
    ip netns exec "$ns" env NODE_NAME="$name" ROUTED_CNI_CLUSTER_CIDR="$CLUSTER_CIDR,$CLUSTER_CIDR6" \
        ROUTED_CNI_LOG_FORMAT=json ROUTED_CNI_METRICS_ADDR=0.0.0.0:9466 "$BIN" agent \
        --api-server $API --token-file "$token" --ca-file "$WORK/ca.crt" \
        --resync-seconds $RESYNC --encapsulation never \
        --bin-dir "$dir/bin" --conf-dir "$dir/net.d" --data-dir "$dir/store" --log-file "$dir/cni.log" \
        --systemd-network-dir "$dir/systemd/network" --networkmanager-conf-dir "$dir/NetworkManager/conf.d" \
        2>>"$dir/agent.log" &
    BACKGROUND_PIDS+=($!)
}

# ---- the world --------------------------------------------------------------------------------
make_cluster
ip -n "$NODE_A" addr add fd00:64::1/64 dev uplink nodad
ip -n "$NODE_B" addr add fd00:64::2/64 dev uplink nodad
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=e2e-kubernetes-ca -keyout "$WORK/ca.key" -out "$WORK/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=kube-apiserver \
    -keyout "$WORK/server.key" -out "$WORK/server.csr" 2>/dev/null
printf 'subjectAltName=IP:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' $ROUTER_IP >"$WORK/san.ext"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" -CAcreateserial \
    -days 1 -extfile "$WORK/san.ext" -out "$WORK/server.crt" 2>/dev/null
head -c 24 /dev/urandom | base64 >"$WORK/token"
echo "not-the-token" >"$WORK/wrong-token"
cp "$ROOT/e2e/lib/fixtures/node-a.json" "$ROOT/e2e/lib/fixtures/node-b.json" "$NODES/"
ip netns exec "$UNDERLAY" $PY "$ROOT/e2e/lib/fake-apiserver.py" --listen $ROUTER_IP:6443 \
    --cert "$WORK/server.crt" --key "$WORK/server.key" --token-file "$WORK/token" \
    --nodes "$NODES" 2>>"$WORK/apiserver.log" &
BACKGROUND_PIDS+=($!)
for _ in $(seq 50); do
    ip netns exec "$UNDERLAY" ss -Hltn "sport = :6443" | grep -q . && break
    sleep 0.1
done

# ---- node A's agent, JSON logs ----------------------------------------------------------------
start_agent "$NODE_A" node-a
# B's agent has the wrong token: it never gets in, and counts why.
start_agent "$NODE_B" node-b "$WORK/wrong-token"
CONFLIST=$WORK/node-a/net.d/10-routed-cni.conflist
wait_for 15 "A installs its conflist" test -s "$CONFLIST"
wait_for 10 "A routes B's podCIDRs (proto 77)" routes_are "$NODE_A" 2
wait_for 10 "A's first route sync is counted" metric_is "$NODE_A" "routed_cni_routes{path=direct}" 2

# The metrics-only listener (what the DaemonSet's scrape annotations point at): reached from
# node B over the link, /metrics and nothing else.
http_code() { ip netns exec "$NODE_B" curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://$NODE_A_IP:9466$1"; }
expect_eq "/metrics on the metrics listener, from another node" "$(http_code /metrics)" 200
expect_eq "the same scrape parses" "$(ip netns exec "$NODE_B" curl -s --max-time 5 "http://$NODE_A_IP:9466/metrics" |
    $PY -c 'import sys; from prometheus_client.parser import text_string_to_metric_families as p; print(any(f.name == "routed_cni_routes" for f in p(sys.stdin.read())))')" True
expect_eq "/policy is not on the metrics listener" "$(http_code /policy)" 404
expect_eq "/readyz is not on the metrics listener" "$(http_code /readyz)" 404

out=$(scrape "$NODE_A")
expect_eq "Content-Type of /metrics" "$(jq -r .content_type <<<"$out")" "text/plain; version=0.0.4; charset=utf-8"
expect_eq "histograms: cumulative buckets, +Inf = _count" "$(jq -c .problems <<<"$out")" "[]"
expect_eq "agent_info" "$(jq -r '.samples | to_entries[] | select(.key | startswith("routed_cni_agent_info{")) | "\(.key) \(.value)"' <<<"$out")" \
    "routed_cni_agent_info{encapsulation=never,network_policy=true,node=node-a,version=$("$BIN" --version | awk '{print $2}')} 1"

# Pool sizes: the installed ranges, as the plugin reads them (first and last address of the
# subnet never handed out, unless rangeStart/rangeEnd say otherwise).
sizes=$($PY -c '
import ipaddress, json, sys
ipam = json.load(open(sys.argv[1]))["plugins"][0]["ipam"]
got = {k: v for k, v in json.loads(sys.argv[2])["samples"].items() if k.startswith("routed_cni_ipam_pool_size{")}
want = {}
for r in [x for rs in ipam.get("ranges", []) for x in rs] or [ipam]:
    net = ipaddress.ip_network(r["subnet"])
    first = int(ipaddress.ip_address(r.get("rangeStart", net.network_address + 1)))
    last = int(ipaddress.ip_address(r.get("rangeEnd", net.broadcast_address - 1)))
    want[f"routed_cni_ipam_pool_size{{pool={net}}}"] = float(last - first + 1)
print("ok" if got == want else f"metrics {got}, conflist {want}")
' "$CONFLIST" "$out")
[ "$sizes" == ok ] && ok "routed_cni_ipam_pool_size per pool = the conflist's ranges" || fail "pool sizes: $sizes"
pools_match node-a "$NODE_A" && ok "in use before any pod: as routed-cni list says (0)" ||
    fail "in use before any pod: $(scrape "$NODE_A" | jq -c '.samples | with_entries(select(.key | contains("in_use")))')"

# ---- pods come and go ---------------------------------------------------------------------------
CONF=$WORK/node-a/plugin.json
jq --arg d "$WORK/node-a/store" '.plugins[0] + {name: .name, cniVersion: .cniVersion} | .ipam.dataDir = $d' "$CONFLIST" >"$CONF"
for i in 1 2 3; do
    make_pod "rcn-m$i-$RUN_ID"
    BIN=$WORK/node-a/bin/routed-cni pod_add "$NODE_A" "$CONF" "rcn-m$i-$RUN_ID" "m$i" >/dev/null
done
expect_eq "routed-cni list: 3 in 10.244.1.0/24" "$(in_use_by_list node-a 10.244.1.0/24)" 3
pools_match node-a "$NODE_A" && ok "in use after 3 ADDs = routed-cni list, per pool" ||
    fail "in use after 3 ADDs: $(scrape "$NODE_A" | jq -c '.samples | with_entries(select(.key | contains("in_use")))')"
BIN=$WORK/node-a/bin/routed-cni pod_del "$NODE_A" "$CONF" "rcn-m2-$RUN_ID" m2
metric_is "$NODE_A" "routed_cni_ipam_pool_addresses_in_use{pool=10.244.1.0/24}" 2 && pools_match node-a "$NODE_A" &&
    ok "in use after a DEL: 2 = routed-cni list, per pool" || fail "in use after a DEL: $(scrape "$NODE_A" | jq -c '.samples | with_entries(select(.key | contains("in_use")))')"

# ---- a node joins -------------------------------------------------------------------------------
make_cluster_node "$NODE_C" pc $NODE_C_IP
cp "$ROOT/e2e/lib/fixtures/node-c.json" "$NODES/"
wait_for 10 "C joins: A has 4 routes of ours" routes_are "$NODE_A" 4
wait_for 5 "routed_cni_routes{path=direct} = the node's proto 77 routes (4)" metric_is "$NODE_A" "routed_cni_routes{path=direct}" "$(count_ours "$NODE_A")"
out=$(scrape "$NODE_A")
s() { jq -r --arg k "$1" '.samples[$k]' <<<"$out"; }
expect_eq "routed_cni_routes{path=vxlan}" "$(s 'routed_cni_routes{path=vxlan}')" 0
expect_eq "routed_cni_nodes" "$(s 'routed_cni_nodes{}')" 3
jq -en --argjson v "$(s 'routed_cni_watch_events_total{resource=node,type=added}')" '$v >= 1' >/dev/null &&
    ok "C's ADDED event counted: $(s 'routed_cni_watch_events_total{resource=node,type=added}')" || fail "node ADDED events: $(s 'routed_cni_watch_events_total{resource=node,type=added}')"
expect_eq "one node list so far" "$(s 'routed_cni_lists_total{resource=node}')" 1
for h in routed_cni_route_sync_duration_seconds routed_cni_policy_sync_duration_seconds; do
    jq -en --argjson v "$(s "${h}_count{}")" '$v > 0' >/dev/null && ok "$h: $(s "${h}_count{}") observation(s), $(s "${h}_sum{}") s" ||
        fail "$h: no observations ($(s "${h}_count{}"))"
done
chains=$(ip netns exec "$NODE_A" nft list table inet routed-cni | grep -c '^[[:space:]]*chain ')
expect_eq "routed_cni_policy_objects{kind=chain} = the chains of table inet routed-cni" "$(s 'routed_cni_policy_objects{kind=chain}')" "$chains"
jq -en --argjson v "$(s 'routed_cni_last_successful_sync_timestamp_seconds{sync=routes}')" --argjson now "$(date +%s)" '$now - $v < 10' >/dev/null &&
    ok "last successful route sync within 10 s" || fail "last route sync: $(s 'routed_cni_last_successful_sync_timestamp_seconds{sync=routes}')"
# Each watch lasts a resync period (2 s) here; by now at least one has ended and started again.
wait_metric 10 "a finished node watch counted as a rewatch" "$NODE_A" 'routed_cni_watch_restarts_total{action=rewatch,resource=node}' 1
wait_metric 10 "B's 401s counted in routed_cni_api_errors_total" "$NODE_B" 'routed_cni_api_errors_total{reason=http_401,resource=node}' 1

# ---- the logs -----------------------------------------------------------------------------------
for n in node-a node-b; do
    bad=$($PY - "$WORK/$n/agent.log" "$n" <<'PY'
import json, re, sys
rfc3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$")
lines, bad, threads = 0, [], set()
for line in open(sys.argv[1]):
    lines += 1
    try:
        o = json.loads(line)
        f = o["fields"]
        assert set(o) == {"time", "level", "message", "fields"}, sorted(o)
        assert rfc3339.match(o["time"]), o["time"]
        assert o["level"] in ("error", "warn", "info", "debug"), o["level"]
        assert isinstance(o["message"], str) and o["message"]
        assert f["component"] == "agent" and f["node"] == sys.argv[2] and f["thread"], f
        threads.add(f["thread"])
    except Exception as e:
        bad.append(f"{e!r}: {line.strip()}")
if lines == 0:
    bad.append("no log lines")
print("\n".join(bad) if bad else f"ok {lines} {','.join(sorted(threads))}")
PY
)
    [[ "$bad" == ok* ]] && ok "$n: every stderr line is a JSON object with time, level, message, fields (lines, threads: ${bad#ok })" ||
        fail "$n: not JSON lines: $bad"
done
grep -q '"level":"error","message":"API: GET https://[^"]*HTTP 401' "$WORK/node-b/agent.log" && ok "B's 401 logged as a JSON error" ||
    fail "B's 401 not logged as a JSON error: $(head -3 "$WORK/node-b/agent.log")"
finish
