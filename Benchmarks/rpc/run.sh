#!/usr/bin/env bash
# make bench-rpc: Shoal's echo server beside the grpc-swift-2 and gRPC C++ anchor servers, under the anchors' h2load load.
#
# usage: run.sh SHOAL_ECHO_SERVER          env: BUILD_DIR, SHARED, ROUNDS (3), DURATION (10), WARMUP (2),
#                                               SCENARIOS ("a b c s"), CHURN (the RPCChurn binary), CHURN_CALLS,
#                                               BASELINE (an EchoServer built from an earlier commit: before/after
#                                               in the same run), CPP (0: skip the gRPC C++ anchor)
# 1. Builds the anchor servers under BUILD_DIR: ../shared/anchors/rpc/swift-server (grpc-swift-2, release) and
#    ../shared/anchors/rpc/cpp-server (gRPC C++ from Debian's libgrpc++, with its build.sh; CPP=0 skips it).
# 2. ROUNDS rounds; each starts every server in turn (order rotating) and drives it with the anchors' load.sh,
#    recording the server's CPU time (utime+stime from /proc) over each scenario and its RSS.
# 3. With CHURN set, 100,000 calls of mixed outcomes against a Shoal server process, its RSS every 10,000.
# 4. Prints medians side by side and ends with `min rps ratio vs grpc-swift-2: X.XX` and
#    `min rps ratio vs grpc-c++: X.XX` over scenarios a, b and c.
set -euo pipefail
SHOAL="$1"
SHARED="${SHARED:?}"
B="${BUILD_DIR:?}"
ROUNDS="${ROUNDS:-3}"
SCENARIOS="${SCENARIOS:-a b c s}"
export DURATION="${DURATION:-10}" WARMUP="${WARMUP:-2}"
ANCHORS="$SHARED/anchors/rpc"
R="$B/results/rpc-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$R"
RAW="$R/raw.tsv"
: > "$RAW"

echo "== building the grpc-swift-2 anchor server (release; the first build takes minutes)" >&2
swift build -c release --package-path "$ANCHORS/swift-server" --scratch-path "$B/rpc-swift" 2>&1 | tail -1 >&2
ANCHOR="$B/rpc-swift/release/EchoServer"
servers=(shoal grpc-swift-2)
if [ "${CPP:-1}" != 0 ]; then
  echo "== building the gRPC C++ anchor server (Debian's libgrpc++)" >&2
  [ -x "$B/rpc-cpp/echo_server" ] || bash "$ANCHORS/cpp-server/build.sh" "$B/rpc-cpp" >&2
  CPP_ANCHOR="$B/rpc-cpp/echo_server"
  servers+=(grpc-c++)
fi

[ -n "${BASELINE:-}" ] && servers+=(shoal-before)

declare -A PORT=([shoal]=50081 [grpc-swift-2]=50082 [grpc-c++]=50084 [shoal-before]=50085)
PID=""
stop() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill "$PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
  PID=""
}
trap stop EXIT INT TERM

start() { # name
  local port=${PORT[$1]}
  case $1 in
    shoal) "$SHOAL" "$port" 127.0.0.1 >"$R/server-$1.log" 2>&1 & ;;
    grpc-swift-2) "$ANCHOR" "$port" 127.0.0.1 >"$R/server-$1.log" 2>&1 & ;;
    grpc-c++) "$CPP_ANCHOR" "$port" 127.0.0.1 >"$R/server-$1.log" 2>&1 & ;;
    shoal-before) "$BASELINE" "$port" 127.0.0.1 >"$R/server-$1.log" 2>&1 & ;;
  esac
  PID=$!
  for _ in $(seq 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    kill -0 "$PID" 2>/dev/null || { echo "server $1 exited; see $R/server-$1.log" >&2; exit 1; }
    sleep 0.05
  done
  echo "server $1 did not listen on $port" >&2; exit 1
}

HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
rss_kb() { awk '/^VmRSS:/{print $2}' "/proc/$PID/status"; }
emit() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$RAW"; }

for round in $(seq "$ROUNDS"); do
  # Each round starts with the next server, so no server always runs first (or last) on a warming machine.
  order=()
  for i in $(seq 0 $((${#servers[@]} - 1))); do order+=("${servers[$(((round - 1 + i) % ${#servers[@]}))]}"); done
  for name in "${order[@]}"; do
    echo "== round $round/$ROUNDS: $name (load: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    start "$name"
    emit "$round" "$name" rss_idle_kb "$(rss_kb)"
    for scenario in $SCENARIOS; do
      out="$R/load-$name-$round-$scenario.txt"
      t0=$(date +%s.%N); c0=$(ticks)
      "$ANCHORS/load.sh" "127.0.0.1:${PORT[$name]}" "$scenario" > "$out" 2>&1 || { echo "load.sh failed for $name $scenario; see $out" >&2; exit 1; }
      t1=$(date +%s.%N); c1=$(ticks)
      emit "$round" "$name" "$scenario.cpu_pct" "$(awk -v a="$c0" -v b="$c1" -v t0="$t0" -v t1="$t1" -v hz="$HZ" 'BEGIN{printf "%.1f", (b-a)/hz/(t1-t0)*100}')"
      grep '^RESULT ' "$out" | while read -r _ scen kvs; do
        for kv in $kvs; do emit "$round" "$name" "$scen.${kv%%=*}" "${kv#*=}"; done
      done
      [ "$scenario" = b ] && emit "$round" "$name" rss_after_b_kb "$(rss_kb)"
    done
    emit "$round" "$name" rss_end_kb "$(rss_kb)"
    stop
  done
done

if [ -n "${CHURN:-}" ]; then
  echo "== churn: ${CHURN_CALLS:-100000} calls (70 % ok, 10 % error status, 10 % cancelled, 10 % deadline exceeded)"
  "$CHURN" server 50083 > "$R/churn-server.log" 2>&1 &
  PID=$!
  for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/50083) 2>/dev/null && break; sleep 0.05; done
  "$CHURN" client 50083 "$PID" "${CHURN_CALLS:-100000}" | tee "$R/churn.txt"
  stop
  echo
fi

python3 - "$RAW" <<'PY' | tee "$R/table.md"
import sys, statistics, collections
rows = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    r, s, k, v = line.rstrip("\n").split("\t")
    try: rows[(r, s)][k] = float(v)
    except ValueError: pass
for row in rows.values():
    for sc in "abc":
        if row.get(sc + ".rps") and sc + ".cpu_pct" in row:
            row[sc + ".cpu_us"] = row[sc + ".cpu_pct"] * 1e4 / row[sc + ".rps"]
    if row.get("s.msgs_per_s") and "s.cpu_pct" in row:
        row["s.cpu_us"] = row["s.cpu_pct"] * 1e4 / row["s.msgs_per_s"]
d = collections.defaultdict(list)
for (r, s), row in rows.items():
    for k, v in row.items(): d[(s, k)].append(v)
med = lambda s, k: statistics.median(d[(s, k)]) if d.get((s, k)) else float("nan")
rounds = len({r for r, _ in rows})
names = {"a": "a: 1 conn x 100 streams, 100 B", "b": "b: 16 conn x 16 streams, 100 B", "c": "c: 4 conn x 16 streams, 16 KiB"}
print(f"Medians of {rounds} round(s). Latency in ms (h2load --log-file); CPU = server CPU time per request.")
def compare(anchor):
    """Shoal beside `anchor`, scenario by scenario; returns the req/s ratios."""
    print(f"\n| scenario | shoal req/s | {anchor} req/s | ratio | shoal p50 / p99 | {anchor} p50 / p99 | p99 ratio | shoal CPU us/req | {anchor} CPU us/req | CPU ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    out = []
    for sc in "abc":
        if not d.get(("shoal", sc + ".rps")) or not d.get((anchor, sc + ".rps")): continue
        a, g = med("shoal", sc + ".rps"), med(anchor, sc + ".rps")
        out.append(a / g)
        print(f"| {names[sc]} | {a:.0f} | {g:.0f} | {a / g:.2f} | {med('shoal', sc+'.p50_ms'):.2f} / {med('shoal', sc+'.p99_ms'):.2f} | "
              f"{med(anchor, sc+'.p50_ms'):.2f} / {med(anchor, sc+'.p99_ms'):.2f} | "
              f"{med('shoal', sc+'.p99_ms') / med(anchor, sc+'.p99_ms'):.2f} | "
              f"{med('shoal', sc+'.cpu_us'):.1f} | {med(anchor, sc+'.cpu_us'):.1f} | "
              f"{med('shoal', sc+'.cpu_us') / med(anchor, sc+'.cpu_us'):.2f} |")
    return out
ratios = compare("grpc-swift-2")
cpp_ratios = compare("grpc-c++") if d.get(("grpc-c++", "a.rps")) else []
if d.get(("shoal-before", "a.rps")):
    print("\n| scenario | shoal before req/s | shoal req/s | after/before | before CPU us/req | CPU us/req |")
    print("|---|---:|---:|---:|---:|---:|")
    for sc in "abc":
        if not d.get(("shoal-before", sc + ".rps")): continue
        b, a = med("shoal-before", sc + ".rps"), med("shoal", sc + ".rps")
        print(f"| {names[sc]} | {b:.0f} | {a:.0f} | {a / b:.2f} | {med('shoal-before', sc+'.cpu_us'):.1f} | {med('shoal', sc+'.cpu_us'):.1f} |")
if d.get(("shoal", "s.msgs_per_s")):
    print(f"\n| stream (s) | shoal | grpc-swift-2 |\n|---|---:|---:|")
    print(f"| msgs/s | {med('shoal', 's.msgs_per_s'):.0f} | {med('grpc-swift-2', 's.msgs_per_s'):.0f} |")
    print(f"| server CPU us/msg | {med('shoal', 's.cpu_us'):.2f} | {med('grpc-swift-2', 's.cpu_us'):.2f} |")
print(f"\n| RSS (MiB) | shoal | grpc-swift-2 |\n|---|---:|---:|")
for key, label in (("rss_idle_kb", "idle"), ("rss_after_b_kb", "after b"), ("rss_end_kb", "end")):
    print(f"| {label} | {med('shoal', key)/1024:.1f} | {med('grpc-swift-2', key)/1024:.1f} |")
if ratios:
    print(f"\nmin rps ratio vs grpc-swift-2: {min(ratios):.2f}")
if cpp_ratios:
    print(f"min rps ratio vs grpc-c++: {min(cpp_ratios):.2f}")
PY
echo "raw results: $R" >&2
