#!/usr/bin/env bash
# Long-running memory and latency checks (issue #7), bounded in time and ops:
#
#   benches/sustained.sh sustained   # 3 nodes on loopback: closed-loop peak,
#                                    # then open loop at 70 % of it for
#                                    # SUSTAIN_SECONDS [600]
#   benches/sustained.sh instances   # 1 node: INSTANCES [1000000] distinct
#                                    # instances created one after another,
#                                    # with at most ACTIVE [10000] in memory
#
# Both sample every node's VmRSS (and the active-instance gauge) every
# SAMPLE_SECONDS [10] into OUT_DIR [target/sustained]/rss-<mode>.csv, keep the
# load generator's JSON (per-second p50/p99 timeline), and print a verdict:
#   sustained: RSS growth after WARM_SECONDS [120] (target < 5 %), and the
#              last minute's median p50/p99 over the first minute's (drift);
#   instances: RSS against instances created, and the configured bounds.
# Knobs: CLIENTS [64], FRACTION [0.7], MIX [put=100], INSTANCES_SECONDS [1200],
# SYNAPSE_BIN [built here, release], KEEP=1 keeps the data dirs.
# Everything it starts is stopped on exit (trap), whatever happens.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=${1:-sustained}
SUSTAIN_SECONDS=${SUSTAIN_SECONDS:-600}
WARM_SECONDS=${WARM_SECONDS:-120}
SAMPLE_SECONDS=${SAMPLE_SECONDS:-10}
CLIENTS=${CLIENTS:-64}
FRACTION=${FRACTION:-0.7}
MIX=${MIX:-put=100}
INSTANCES=${INSTANCES:-1000000}
ACTIVE=${ACTIVE:-10000}
INSTANCES_SECONDS=${INSTANCES_SECONDS:-1200}
OUT_DIR=${OUT_DIR:-$ROOT/target/sustained}
GRPC_PORTS=(51401 51402 51403)
HTTP_PORTS=(51501 51502 51503)

say() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
case "$MODE" in sustained | instances) ;; *) die "mode must be sustained or instances" ;; esac
command -v python3 >/dev/null || die "python3 is needed for the report"

WORK=$(mktemp -d -t synapse-sustained.XXXXXX)
PIDS=()
cleanup() {
    local pid
    touch "$WORK/stop-sampler" 2>/dev/null || true
    for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && wait "$pid" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$OUT_DIR"

B=${SYNAPSE_BIN:-}
if [ -z "$B" ]; then
    say "building synapse (release)"
    (cd "$ROOT" && cargo build --release --bin synapse >&2)
    B=$ROOT/target/release/synapse
fi

# start_nodes N [extra serve args...]: N nodes (a static cluster if N > 1).
NODE_PIDS=()
EPS=""
start_nodes() {
    local n=$1 i peers=""
    shift
    for i in $(seq 1 "$n"); do peers+="${peers:+,}$i=127.0.0.1:${GRPC_PORTS[$((i - 1))]}"; done
    for i in $(seq 1 "$n"); do
        local cluster=()
        [ "$n" -gt 1 ] && cluster=(--peers "$peers")
        "$B" serve --node-id "$i" --data-dir "$WORK/n$i" --listen "127.0.0.1:${GRPC_PORTS[$((i - 1))]}" \
            --http-listen "127.0.0.1:${HTTP_PORTS[$((i - 1))]}" "${cluster[@]}" --log warn "$@" \
            >"$WORK/n$i.log" 2>&1 &
        NODE_PIDS+=($!)
        PIDS+=($!)
        EPS+="${EPS:+,}http://127.0.0.1:${GRPC_PORTS[$((i - 1))]}"
    done
    local tries
    for tries in $(seq 1 120); do
        if [ -s "$WORK/n1/root.token" ] && "$B" invoke counter/warm incr --endpoint "http://127.0.0.1:${GRPC_PORTS[0]}" \
            --token-file "$WORK/n1/root.token" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.5
    done
    tail -20 "$WORK/n1.log" >&2
    die "the nodes did not serve a write within 60 s"
}

# sampler CSV: every SAMPLE_SECONDS, elapsed seconds, each node's VmRSS (KiB)
# and active-instance gauge, until stop-sampler appears (bounded: 1 day).
sampler() {
    local csv=$1 start i pid rss active line
    start=$(date +%s)
    echo "elapsed_s,$(for i in "${!NODE_PIDS[@]}"; do printf 'n%d_rss_kib,n%d_active,' $((i + 1)) $((i + 1)); done | sed 's/,$//')" >"$csv"
    for _ in $(seq 1 8640); do
        [ -e "$WORK/stop-sampler" ] && return 0
        line="$(($(date +%s) - start))"
        for i in "${!NODE_PIDS[@]}"; do
            pid=${NODE_PIDS[$i]}
            rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
            active=$(python3 -c 'import sys,urllib.request
try:
    body = urllib.request.urlopen(sys.argv[1], timeout=3).read().decode()
    print(next((l.split()[1] for l in body.splitlines() if l.startswith("synapse_active_instances ")), 0))
except Exception:
    print(0)' "http://127.0.0.1:${HTTP_PORTS[$i]}/metrics")
            line+=",${rss:-0},$active"
        done
        echo "$line" >>"$csv"
        sleep "$SAMPLE_SECONDS"
    done
}

machine() {
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%FT%TZ)"
}

if [ "$MODE" = sustained ]; then
    say "3-node cluster; closed-loop peak ($CLIENTS clients, 20 s, mix $MIX)"
    start_nodes 3
    "$B" bench --endpoints "$EPS" --token-file "$WORK/n1/root.token" --clients "$CLIENTS" --duration 20s \
        --warmup 3s --mix "$MIX" --json "$OUT_DIR/peak.json" --quiet >&2
    PEAK=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["runs"][0]["throughput_ops_s"])' "$OUT_DIR/peak.json")
    RATE=$(python3 -c "print(round($PEAK * $FRACTION))")
    say "peak $PEAK ops/s; open loop at $RATE ops/s ($FRACTION of peak) for ${SUSTAIN_SECONDS}s"
    sampler "$OUT_DIR/rss-sustained.csv" &
    PIDS+=($!)
    "$B" bench --endpoints "$EPS" --token-file "$WORK/n1/root.token" --clients "$CLIENTS" --rate "$RATE" \
        --duration "${SUSTAIN_SECONDS}s" --warmup 0s --timeout 5s --mix "$MIX" \
        --json "$OUT_DIR/sustained.json" --quiet >&2
    touch "$WORK/stop-sampler"
    machine
    python3 - "$OUT_DIR/sustained.json" "$OUT_DIR/rss-sustained.csv" "$WARM_SECONDS" "$PEAK" "$RATE" <<'PY'
import csv, json, statistics, sys
bench, rss_csv, warm, peak, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
run = json.load(open(bench))["runs"][0]
rows = list(csv.DictReader(open(rss_csv)))
print(f"peak {peak} ops/s, offered {rate} ops/s; achieved {run['throughput_ops_s']} ops/s, "
      f"ok {run['ok']}, errors {run['errors_total']}, missed schedule {run['missed_schedule']}")
lat = run["latency_us"]
print(f"whole run: p50 {lat['p50']/1000:.2f} ms, p99 {lat['p99']/1000:.2f} ms, p99.9 {lat['p999']/1000:.2f} ms, max {lat['max']/1000:.1f} ms")
minutes = {}
for s in run["timeline"]:
    minutes.setdefault(s["second"] // 60, []).append(s)
print("minute  ops/s   median p50 ms  median p99 ms  max ms")
for m, secs in sorted(minutes.items()):
    print(f"{m:>6}  {sum(s['ops'] for s in secs)/len(secs):>6.0f}  {statistics.median(s['p50_us'] for s in secs)/1000:>13.2f}"
          f"  {statistics.median(s['p99_us'] for s in secs)/1000:>13.2f}  {max(s['max_us'] for s in secs)/1000:>6.1f}")
full = [m for m, secs in sorted(minutes.items()) if len(secs) >= 50]
if len(full) >= 2:
    first, last = minutes[full[0]], minutes[full[-1]]
    for q in ("p50_us", "p99_us"):
        a, b = statistics.median(s[q] for s in first), statistics.median(s[q] for s in last)
        print(f"drift {q[:3]}: last full minute / first = {b/a:.2f}")
nodes = [k[:-8] for k in rows[0] if k.endswith("_rss_kib")]
warm_row = next((r for r in rows if int(r["elapsed_s"]) >= warm), rows[0])
end_row = rows[-1]
print(f"RSS (MiB) at {warm_row['elapsed_s']} s (after warm-up) and at {end_row['elapsed_s']} s (end):")
for n in nodes:
    a, b = int(warm_row[f"{n}_rss_kib"]), int(end_row[f"{n}_rss_kib"])
    print(f"  {n}: {a/1024:.0f} -> {b/1024:.0f} MiB, growth {100*(b-a)/max(a,1):+.1f} % (target < 5 %)")
PY
else
    say "1 node, max_active_instances $ACTIVE; creating $INSTANCES instances in sequence (bounded ${INSTANCES_SECONDS}s)"
    start_nodes 1 --max-active-instances "$ACTIVE"
    sampler "$OUT_DIR/rss-instances.csv" &
    PIDS+=($!)
    "$B" bench --endpoints "$EPS" --token-file "$WORK/n1/root.token" --clients "$CLIENTS" \
        --instance-order sequential --instances "$INSTANCES" --ops "$INSTANCES" --prefix inst \
        --duration "${INSTANCES_SECONDS}s" --warmup 0s --timeout 10s --mix incr=100 \
        --json "$OUT_DIR/instances.json" --quiet >&2
    sleep "$SAMPLE_SECONDS"
    touch "$WORK/stop-sampler"
    machine
    python3 - "$OUT_DIR/instances.json" "$OUT_DIR/rss-instances.csv" "$ACTIVE" <<'PY'
import csv, json, sys
bench, rss_csv, active = sys.argv[1], sys.argv[2], int(sys.argv[3])
run = json.load(open(bench))["runs"][0]
rows = list(csv.DictReader(open(rss_csv)))
created, t = [], 0
for s in run["timeline"]:
    t += s["ops"]
    created.append((s["second"], t))
def made_by(sec):
    return max((c for s, c in created if s <= sec), default=0)
print(f"instances created (acknowledged first writes): {run['ok']} in {run['elapsed_s']:.0f} s "
      f"({run['throughput_ops_s']} ops/s), errors {run['errors_total']}; max_active_instances {active}")
print("elapsed s  created   RSS MiB  active instances")
step = max(1, len(rows) // 15)
for r in rows[::step] + ([rows[-1]] if (len(rows) - 1) % step else []):
    print(f"{int(r['elapsed_s']):>9}  {made_by(int(r['elapsed_s'])):>7}  {int(r['n1_rss_kib'])/1024:>8.0f}  {r['n1_active']:>16}")
peak = max(int(r["n1_rss_kib"]) for r in rows)
print(f"peak RSS {peak/1024:.0f} MiB; max active instances seen {max(int(r['n1_active']) for r in rows)}")
PY
fi
