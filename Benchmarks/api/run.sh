#!/usr/bin/env bash
# make bench-api: wrk against the aggregator of a running cluster (shoal-local, release build, agents completing
# events at once): GET /v2/reserved_ips/{ip} — one call to the orchestrator, one to Harpoon for the embedded droplet —
# then the time from an assign request to its action completed.
set -euo pipefail
BIN=${BIN:-.build/release}
SECONDS_GET=${SECONDS_GET:-10}
CONNECTIONS=${CONNECTIONS:-16}
ASSIGNS=${ASSIGNS:-200}
TOKEN=bench-token
DATA=$(mktemp -d)
LOG=$DATA/launcher.log
# OBSERVED=1: every request logged at the edge (info) and traced, spans exported to OTLP (a closed port here: each
# batch is built and its export fails at once, counted as dropped); otherwise warnings only and no spans.
OBSERVABILITY=(--log-level warning)
if [ "${OBSERVED:-0}" = 1 ]; then OBSERVABILITY=(--log-level info --otlp-endpoint 127.0.0.1:9); fi
# Or exactly these flags (to weigh one part: OBSERVABILITY_FLAGS="--log-level info").
if [ -n "${OBSERVABILITY_FLAGS:-}" ]; then read -ra OBSERVABILITY <<< "$OBSERVABILITY_FLAGS"; fi
"$BIN/shoal-local" --bin "$BIN" --data-dir "$DATA" --api-port 0 --agents-per-region 5 --event-milliseconds 0 \
  --token "$TOKEN=bench" --requests-per-hour 1000000000 --burst-per-minute 1000000000 "${OBSERVABILITY[@]}" > "$LOG" 2>&1 &
LAUNCHER=$!
trap 'kill -TERM $LAUNCHER 2>/dev/null; wait $LAUNCHER 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 1 600); do grep -q "cluster ready" "$LOG" && break; kill -0 $LAUNCHER 2>/dev/null || { cat "$LOG"; exit 1; }; sleep 0.1; done
API=$(sed -n 's/^API: //p' "$LOG")
call() { curl -sf -X "$1" -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" ${3:+-d "$3"} "$API$2"; }
json() { python3 -c "import sys, json; print($1)"; }
wait_action() { for _ in $(seq 1 1000); do s=$(call GET "/v2/actions/$1" | json 'json.load(sys.stdin)["action"]["status"]'); [ "$s" != in-progress ] && return; sleep 0.01; done; }
A=$(call POST /v2/droplets '{"name":"bench-a","region":"nyc1","size":"s-1vcpu-1gb","image":"ubuntu"}' | json 'json.load(sys.stdin)["droplet"]["id"]')
B=$(call POST /v2/droplets '{"name":"bench-b","region":"nyc1","size":"s-1vcpu-1gb","image":"ubuntu"}' | json 'json.load(sys.stdin)["droplet"]["id"]')
for d in $A $B; do for _ in $(seq 1 500); do [ "$(call GET /v2/droplets/$d | json 'json.load(sys.stdin)["droplet"]["status"]')" = active ] && break; sleep 0.01; done; done
IP=$(call POST /v2/reserved_ips '{"region":"nyc1"}' | json 'json.load(sys.stdin)["reserved_ip"]["ip"]')
wait_action "$(call POST "/v2/reserved_ips/$IP/actions" "{\"type\":\"assign\",\"droplet_id\":$A}" | json 'json.load(sys.stdin)["action"]["id"]')"
call GET "/v2/reserved_ips/$IP" | json 'json.load(sys.stdin)["reserved_ip"]["droplet"]["id"]' > /dev/null  # the droplet is embedded

echo "== GET /v2/reserved_ips/$IP: wrk, 2 threads, $CONNECTIONS connections, ${SECONDS_GET} s (after 2 s of warm-up)"
wrk -t2 -c"$CONNECTIONS" -d2s -H "Authorization: Bearer $TOKEN" "$API/v2/reserved_ips/$IP" > /dev/null
OUT=$(wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_GET}s" --latency -H "Authorization: Bearer $TOKEN" "$API/v2/reserved_ips/$IP")
echo "$OUT" | tail -n +2
echo "$OUT" | grep -E "Non-2xx|Socket errors" || true
to_ms() { python3 -c "import sys; v=sys.argv[1]; print(round(float(v[:-2])/1000,2) if v.endswith('us') else round(float(v[:-2]),2) if v.endswith('ms') else round(float(v[:-1])*1000,2))" "$1"; }
RPS=$(echo "$OUT" | awk '/Requests\/sec/ {print int($2)}')
P50=$(to_ms "$(echo "$OUT" | awk '$1=="50%" {print $2}')")
P99=$(to_ms "$(echo "$OUT" | awk '$1=="99%" {print $2}')")
echo "== assign: $ASSIGNS moves of one IP between two droplets, request to completed (polling /v2/actions/{id} every 1 ms)"
python3 Benchmarks/api/assign_latency.py "$API" "$TOKEN" "$IP" "$A" "$B" "$ASSIGNS" | tee "$DATA/assign.txt"
echo "get p50 ms: $P50"
echo "get rps: $RPS"
echo "get p99 ms: $P99"
grep "assign p99 ms" "$DATA/assign.txt"
