#!/usr/bin/env bash
# make bench-codec: Shoal's codec beside the swift-protobuf and protobuf-c anchors, in one run.
#
# usage: run.sh SHOAL_HARNESS [RUNS]     env: BUILD_DIR (anchor builds, corpus, results), SHARED, BENCH_SECONDS
# 1. The anchors' own run_all.sh builds their harnesses and the corpus (checked against corpus.sha256).
# 2. RUNS rounds (default 5), interleaved per message type (shoal, protobuf-c, swift-protobuf), so that the numbers
#    for one type are taken minutes apart at most, under the same load; every harness is pinned to the same core
#    (taskset, where present) so that none gains or loses from migrations.
# 3. The anchors' aggregate.py prints the table of medians; the last line is the smallest Shoal/protobuf-c ratio
#    (CPU-time MB/s medians) over every type and operation, `encode` being both sides' reused-buffer idiom.
set -euo pipefail
SHOAL="$1"
RUNS="${2:-5}"
SECS="${BENCH_SECONDS:-1.5}"
ANCHORS="${SHARED:?}/anchors/codec"
B="${BUILD_DIR:?}"
mkdir -p "$B"

echo "== building the anchor harnesses and the corpus (anchors' run_all.sh)" >&2
BUILD_DIR="$B" CODECS="swift c" BENCH_SECONDS=0.05 "$ANCHORS/run_all.sh" 1 >/dev/null
SWIFT_BIN="$(cd "$B/swift" && swift build -c release --show-bin-path)/CodecBenchSwift"

PIN=()
command -v taskset >/dev/null && PIN=(taskset -c 1)
R="$B/results/shoal-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$R"
for run in $(seq 1 "$RUNS"); do
  for type in events metrics batches; do
    for codec in shoal c swift; do
      echo "== run $run/$RUNS $type $codec (load: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
      case "$codec" in
        shoal) "${PIN[@]}" "$SHOAL" "$B/corpus" "$SECS" "$type" ;;
        c) "${PIN[@]}" "$B/bench_protobuf_c" "$B/corpus" "$SECS" "$type" ;;
        swift) "${PIN[@]}" "$SWIFT_BIN" "$B/corpus" "$SECS" "$type" ;;
      esac >>"$R/run$run-$codec.txt"
    done
  done
done

echo
python3 "$ANCHORS/aggregate.py" "$R"/run*.txt | tee "$R/table.md"
echo
python3 - "$R" <<'PY'
import glob, statistics, sys
from collections import defaultdict
mbs = defaultdict(list)
for path in glob.glob(sys.argv[1] + "/run*.txt"):
    for line in open(path):
        p = line.split()
        if p and p[0] == "RESULT":
            codec, typ, op = p[1:4]
            nbytes, reps, cpu = int(p[5]), int(p[6]), float(p[8])
            mbs[(codec, typ, op)].append(nbytes * reps / cpu / 1e6)
ratios = []
print("| type | op | shoal MB/s | protobuf-c MB/s | swift-protobuf MB/s | shoal / protobuf-c | shoal / swift-protobuf |")
print("|---|---|---:|---:|---:|---:|---:|")
for typ in ["events", "metrics", "batches"]:
    for op in ["decode", "encode"]:
        s, c = mbs.get(("shoal", typ, op)), mbs.get(("protobuf-c", typ, op))
        w = mbs.get(("swift-protobuf", typ, op))
        if not s or not c:
            continue
        s, c = statistics.median(s), statistics.median(c)
        w = statistics.median(w) if w else float("nan")
        ratios.append(s / c)
        print(f"| {typ} | {op} | {s:.1f} | {c:.1f} | {w:.1f} | {s / c:.2f} | {s / w:.2f} |")
print()
print(f"min ratio vs protobuf-c: {min(ratios):.2f}")
PY
