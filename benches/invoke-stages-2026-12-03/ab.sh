#!/usr/bin/env bash
# Alternated A/B of two binaries: 1 client closed loop (25 s), then the open
# loop at RATE (60 s), ROUNDS times, then one summary line per run.
# Usage: ab.sh OUT_DIR BIN_A BIN_B   (SUMMARY_ONLY=1 ab.sh OUT_DIR - -: summary only)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$1; A=$2; B=$3; ROUNDS=${ROUNDS:-2}
[ "${SUMMARY_ONLY:-0}" = 1 ] && ROUNDS=0
for r in $(seq 1 "$ROUNDS"); do
  for side in a b; do
    bin=$A; [ "$side" = b ] && bin=$B
    SYNAPSE_BIN=$bin RATE=0 CLIENTS=1 DUR=25s OUT="$OUT/c1-$side$r" "$HERE/run.sh" >/dev/null 2>&1 || echo "c1-$side$r failed"
    SYNAPSE_BIN=$bin RATE=${RATE:-3000} DUR=60s OUT="$OUT/ol-$side$r" "$HERE/run.sh" >/dev/null 2>&1 || echo "ol-$side$r failed"
  done
done
for d in "$OUT"/c1-* "$OUT"/ol-*; do
  python3 "$HERE/analyze.py" "$d" | grep -E "client p50|CPU|^  n[123]: " | sed "s|^|$(basename "$d") |" | cut -c1-400
done
