#!/usr/bin/env bash
# What a node's live heap holds at its peak, by allocation site: one node
# under heaptrack, driven by `synapse bench` (puts of 256 B over 1 000
# instances, as in sustained.sh), with its heap gauge polled meanwhile.
#
#   cargo build --release --no-default-features --bin synapse   # system
#       # allocator: heaptrack intercepts malloc, not mimalloc
#   SYNAPSE_BIN=target/release/synapse OUT=/tmp/heap benches/heap-2026-12-04/run.sh
#
# Env: SYNAPSE_BIN (required), OUT [/tmp/heap], DUR [420] seconds of load,
# CLIENTS [64], PORT [52401] (gRPC; PORT+1 is HTTP), HEAPTRACK [1] (0: the
# node runs bare, e.g. a default mimalloc build, and only the gauge is
# polled). Needs heaptrack (Debian package heaptrack) unless HEAPTRACK=0.
# Bounded: the load stops after DUR seconds.
set -euo pipefail
B=${SYNAPSE_BIN:?set SYNAPSE_BIN to a build without the mimalloc feature}
OUT=${OUT:-/tmp/heap}
DUR=${DUR:-420}
CLIENTS=${CLIENTS:-64}
PORT=${PORT:-52401}
HTTP=$((PORT + 1))
HEAPTRACK=${HEAPTRACK:-1}
[ "$HEAPTRACK" = 0 ] || command -v heaptrack >/dev/null ||
    { echo "needs heaptrack (apt-get install heaptrack)" >&2; exit 1; }
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/heap-node.XXXXXX)
# The synapse process itself: under heaptrack, $NODE is heaptrack's script.
node_pid() { pgrep -f "serve --node-id 1 --data-dir $WORK/n1" | tail -1 || true; }
stop_node() {
    local p; p=$(node_pid)
    [ -z "$p" ] || kill -TERM "$p" 2>/dev/null || true
    # Bounded: a node that has not exited after 60 s (heaptrack writes its
    # data on exit) is killed.
    for _ in $(seq 1 120); do kill -0 "${NODE:-0}" 2>/dev/null || return 0; sleep 0.5; done
    p=$(node_pid); [ -z "$p" ] || kill -KILL "$p" 2>/dev/null || true
    kill -KILL "${NODE:-0}" 2>/dev/null || true
}
cleanup() { kill "${POLL:-}" 2>/dev/null || true; stop_node; rm -rf "$WORK"; }
trap cleanup EXIT
WRAP=()
[ "$HEAPTRACK" = 0 ] || WRAP=(heaptrack -o "$OUT/heaptrack")
"${WRAP[@]}" "$B" serve --node-id 1 --data-dir "$WORK/n1" \
    --listen "127.0.0.1:$PORT" --http-listen "127.0.0.1:$HTTP" --log warn >"$OUT/node.log" 2>&1 &
NODE=$!
EP=http://127.0.0.1:$PORT
ready=0
for _ in $(seq 1 120); do
    if [ -s "$WORK/n1/root.token" ] && "$B" invoke counter/warm incr --endpoint "$EP" \
        --token-file "$WORK/n1/root.token" >/dev/null 2>&1; then ready=1; break; fi
    sleep 0.5
done
[ "$ready" = 1 ] || { echo "the node did not serve within 60 s; its log:" >&2; cat "$OUT/node.log" >&2; exit 1; }
( set +e  # a missed scrape leaves an empty cell, not a dead poller
  start=$(date +%s); echo "elapsed_s,applied_index,heap_mib,rss_mib" >"$OUT/heap.csv"
  while :; do
      m=$(curl -s --max-time 2 "http://127.0.0.1:$HTTP/metrics")
      h=$(awk '/^synapse_heap_allocated_bytes /{printf "%.1f", $2/1048576}' <<<"$m")
      a=$(awk '/^synapse_raft_applied_index /{printf "%d", $2}' <<<"$m")
      p=$(node_pid)
      r=$(awk '/VmRSS/{printf "%.1f", $2/1024}' "/proc/${p:-0}/status" 2>/dev/null)
      echo "$(( $(date +%s) - start )),${a:-},${h:-},${r:-}" >>"$OUT/heap.csv"
      sleep 5
  done ) &
POLL=$!
"$B" bench --endpoints "$EP" --token-file "$WORK/n1/root.token" --clients "$CLIENTS" \
    --duration "${DUR}s" --warmup 0s --mix put=100 --json "$OUT/bench.json" --quiet
kill "$POLL" 2>/dev/null || true
stop_node
[ "$HEAPTRACK" = 0 ] && { echo "heap gauge: $OUT/heap.csv"; exit 0; }
f=$(ls -t "$OUT"/heaptrack*.zst "$OUT"/heaptrack*.gz 2>/dev/null | head -1 || true)
heaptrack_print -f "$f" --print-peaks 1 --print-allocators 0 --print-temporary 0 \
    --print-leaks 0 --peak-limit 25 >"$OUT/peaks.txt" 2>&1 || true
echo "heap gauge: $OUT/heap.csv; heaptrack data: $f; peak consumers: $OUT/peaks.txt"
