#!/usr/bin/env bash
# Alternates two builds through run.sh (one node, closed loop, 64 clients,
# puts of 256 B), ROUNDS times each, A first, and prints each run's
# throughput and the medians: whether a change moved throughput, with the
# host's drift spread over both.
#
#   benches/heap-2026-12-04/ab.sh OUT A_BIN B_BIN     # ROUNDS [3] DUR [60]
set -euo pipefail
OUT=${1:?OUT dir}; A=${2:?A binary}; B=${3:?B binary}
ROUNDS=${ROUNDS:-3}; DUR=${DUR:-60}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
for r in $(seq 1 "$ROUNDS"); do
    for side in A B; do
        bin=$A; [ "$side" = B ] && bin=$B
        HEAPTRACK=0 SYNAPSE_BIN=$bin OUT="$OUT/$side-$r" DUR=$DUR "$HERE/run.sh" >"$OUT/$side-$r.log" 2>&1
        echo "$side $r $(python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['runs'][0]; print(round(r['throughput_ops_s']))" "$OUT/$side-$r/bench.json")" | tee -a "$OUT/summary.txt"
    done
done
python3 - "$OUT/summary.txt" <<'PY'
import statistics, sys
runs = [l.split() for l in open(sys.argv[1])]
med = {s: statistics.median(float(v) for side, _, v in runs if side == s) for s in "AB"}
print(f"median ops/s: A {med['A']:.0f}, B {med['B']:.0f}, B/A {med['B'] / med['A']:.3f}")
PY
