#!/usr/bin/env bash
# Diagnostic: open loop against a fresh 3-node cluster while every node's
# Invoke-stage and Ready histograms are scraped once a second.
# Env: SYNAPSE_BIN, RATE (3000; 0 = closed loop), CLIENTS (256), DUR (60s),
# OUT, LEADER_ONLY (0).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
. "$ROOT/benches/lib.sh"
bench_init diag
SYNAPSE_BIN=${SYNAPSE_BIN:-/tmp/new}; synapse_bin
RATE=${RATE:-3000}; CLIENTS=${CLIENTS:-256}; DUR=${DUR:-60s}; OUT=${OUT:-/work/diag/out}
mkdir -p "$OUT"
GRPC=(52301 52302 52303); HTTP=(52311 52312 52313)
start_synapse 3 GRPC HTTP
echo "leader $LEADER" | tee "$OUT/leader.txt"
EPS=$SYN_EPS
[ "${LEADER_ONLY:-0}" = 1 ] && EPS="http://127.0.0.1:${GRPC[$((LEADER-1))]}"
python3 "$HERE/scrape.py" "$OUT/scrape.jsonl" $(( ${DUR%s} + 5 )) "${HTTP[@]}" &
SCRAPER=$!
RATE_ARG="--rate $RATE"; [ "$RATE" = 0 ] && RATE_ARG=""
date +%s.%N > "$OUT/bench-start.txt"
cpu_ticks() {  # machine busy and idle ticks, then each node's utime+stime
  awk '/^cpu /{print "busy", $2+$3+$4+$7+$8+$9, "idle", $5+$6}' /proc/stat
  for p in "${SYN_PIDS[@]}"; do awk -v p="$p" '{print "node_pid", p, $14+$15}' "/proc/$p/stat"; done
}
cpu_ticks > "$OUT/cpu-before.txt"
/usr/bin/time -f "bench_client_cpu_s %U %S" -o "$OUT/client-cpu.txt" "$B" bench --endpoints "$EPS" --token-file "$SYN_TOKEN" --clients "$CLIENTS" $RATE_ARG \
   --duration "$DUR" --warmup 0s --mix put=100 --value-size 256 --instances 1000 --quiet \
   --json "$OUT/bench.json" > "$OUT/bench.txt" 2>&1 || true
cpu_ticks > "$OUT/cpu-after.txt"
wait "$SCRAPER" || true
for i in 1 2 3; do
  curl -s "http://127.0.0.1:${HTTP[$((i-1))]}/metrics" | grep -E "_seconds_|slow_readys" > "$OUT/metrics-n$i.txt" || true
  cp "$WORK/n$i.log" "$OUT/n$i.log"
done
tail -15 "$OUT/bench.txt"
