#!/usr/bin/env bash
# Diagnostic: open loop against a fresh 3-node cluster; collect Ready timings.
set -euo pipefail
ROOT=/work/main
. "$ROOT/benches/lib.sh"
bench_init diag
SYNAPSE_BIN=${SYNAPSE_BIN:-/tmp/new}; synapse_bin
RATE=${RATE:-3000}; DUR=${DUR:-60s}; OUT=${OUT:-/work/diag/out}
mkdir -p "$OUT"
GRPC=(52301 52302 52303); HTTP=(52311 52312 52313)
start_synapse 3 GRPC HTTP
echo "leader $LEADER" | tee "$OUT/leader.txt"
EPS=$SYN_EPS
[ "${LEADER_ONLY:-0}" = 1 ] && EPS="http://127.0.0.1:${GRPC[$((LEADER-1))]}"
"$B" bench --endpoints "$EPS" --token-file "$SYN_TOKEN" --clients 256 --rate "$RATE" \
   --duration "$DUR" --warmup 0s --mix put=100 --value-size 256 --instances 1000 --quiet \
   --json "$OUT/bench.json" > "$OUT/bench.txt" 2>&1 || true
for i in 1 2 3; do
  curl -s "http://127.0.0.1:${HTTP[$((i-1))]}/metrics" | grep -E "raft_(persist|apply|ready)_seconds|slow_readys" > "$OUT/metrics-n$i.txt" || true
  grep -i "slow raft ready" "$WORK/n$i.log" > "$OUT/slow-n$i.txt" || true
  cp "$WORK/n$i.log" "$OUT/n$i.log"
done
cat "$OUT/bench.txt" | tail -15
