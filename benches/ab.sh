#!/usr/bin/env bash
# One closed-loop point on a fresh 3-node Synapse cluster, reported with what
# an A/B comparison needs besides throughput: per-node CPU, cluster CPU per
# write (less sensitive to a noisy host than ops/s), RSS and bytes written.
# Run two binaries alternately, several rounds, and compare the medians:
#
#   for r in 1 2; do for b in old new; do
#       LOADGEN=/tmp/old benches/ab.sh /tmp/$b 256 25
#   done; done
#
#   benches/ab.sh BINARY CLIENTS SECONDS [serve args...]
#
# Environment knobs:
#   LOADGEN [BINARY]   the `synapse bench` binary (keep it fixed across an A/B)
#   LEADER_ONLY [0]    1 = every client connects to the leader (no forwarding)
#   FOLLOWER_ONLY [0]  1 = every client connects to one follower (every write
#                      forwarded)
#   PROFILE [none]     all = `perf record -a` for 5 s from second 5 into
#                      $WORK/all.data (use KEEP=1); syscalls = per-node
#                      syscall counts for 5 s (`perf stat` tracepoints)
#   INSTANCES [1000]   instances the writes spread over; with 100, each one
#                      passes the default retention (100 versions) within the
#                      warm-up, so the run measures the steady state (every
#                      write also prunes) rather than the growth phase
#   RATE [none]        open loop at this many ops/s: CPU per write at a load
#                      the cluster serves, less noisy than at saturation
#   PREFILL [none]     this many writes (64 clients, same mix and instances)
#                      before the measured run, outside its CPU figures: with
#                      INSTANCES=1000, 150000 fills every instance's ring of
#                      100 versions, so the run sees the steady state (slots
#                      overwritten) instead of the growth phase (new keys,
#                      sled leaf splits)
#   PREFILL_MIX [MIX]  the prefill's mix (put=100 gives reads stored state)
#   THREADS [0]        1 = CPU per write of each node's threads, by thread
#                      name, over the run (what a fixed cost per write is)
#   RESULT_JSON [none] also write the run's figures (the load generator's
#                      JSON plus node and generator CPU per op) to this file
#   MIX [put=100]  PORT_BASE [52100]  KEEP=1 keeps the data dirs
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"

[ $# -ge 3 ] || die "usage: benches/ab.sh BINARY CLIENTS SECONDS [serve args...]"
SYNAPSE_BIN=$1
CLIENTS=$2
SECONDS_RUN=$3
shift 3
PORT_BASE=${PORT_BASE:-52100}
bench_init ab
synapse_bin
GRPC=($((PORT_BASE + 1)) $((PORT_BASE + 2)) $((PORT_BASE + 3)))
HTTP=($((PORT_BASE + 11)) $((PORT_BASE + 12)) $((PORT_BASE + 13)))
start_synapse 3 GRPC HTTP "$@"

cpu_ticks() { for p in "${SYN_PIDS[@]}"; do awk '{print $14+$15}' "/proc/$p/stat"; done | paste -sd' '; }
# "node thread-name ticks" for every thread of every node (names have no
# spaces in /proc/*/task/*/comm for our threads; others are joined with _).
thread_ticks() {
    local i=0
    for p in "${SYN_PIDS[@]}"; do
        i=$((i + 1))
        for t in /proc/"$p"/task/*; do
            name=$(tr ' ' '_' <"$t/comm" 2>/dev/null) || continue
            # Fields after the ")" that closes the name: utime is the 12th.
            ticks=$(sed 's/.*) //' "$t/stat" 2>/dev/null | awk '{print $12+$13}') || continue
            echo "n$i $name $ticks"
        done
    done
}
endpoints=$SYN_EPS
if [ "${LEADER_ONLY:-0}" = 1 ]; then endpoints="http://127.0.0.1:${GRPC[$((LEADER - 1))]}"; fi
if [ "${FOLLOWER_ONLY:-0}" = 1 ]; then endpoints="http://127.0.0.1:${GRPC[$((LEADER % 3))]}"; fi

if [ -n "${PREFILL:-}" ]; then
    "${LOADGEN:-$B}" bench --endpoints "$endpoints" --token-file "$SYN_TOKEN" --clients 64 \
        --ops "$PREFILL" --duration 120s --warmup 0s --mix "${PREFILL_MIX:-${MIX:-put=100}}" \
        --instances "${INSTANCES:-1000}" --quiet \
        >"$WORK/prefill.out" 2>&1 || die "prefill failed: $(tail -3 "$WORK/prefill.out")"
fi
before=$(cpu_ticks)
[ "${THREADS:-0}" = 1 ] && thread_ticks >"$WORK/threads-before.txt"
# The generator's own CPU (user + sys) goes to bench.time through `time`.
TIMEFORMAT='%U %S'
{ time "${LOADGEN:-$B}" bench --endpoints "$endpoints" --token-file "$SYN_TOKEN" --clients "$CLIENTS" \
    --duration "${SECONDS_RUN}s" --warmup 2s --mix "${MIX:-put=100}" --instances "${INSTANCES:-1000}" --quiet \
    ${RATE:+--rate "$RATE"} \
    --json "$WORK/result.json" >"$WORK/bench.out" 2>&1; } 2>"$WORK/bench.time" &
bench_pid=$!
PIDS+=("$bench_pid")
case "${PROFILE:-none}" in
    all)
        sleep 5
        perf record -a -F 299 -g --call-graph dwarf,8192 -o "$WORK/all.data" -- sleep 5 >/dev/null 2>&1 ||
            echo "perf record failed" >&2
        ;;
    syscalls)
        sleep 5
        events=syscalls:sys_enter_fdatasync,syscalls:sys_enter_sync_file_range,syscalls:sys_enter_pwrite64
        events+=,syscalls:sys_enter_futex,syscalls:sys_enter_writev,syscalls:sys_enter_recvfrom,context-switches
        events+=,syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_sendto,syscalls:sys_enter_sendmsg
        events+=,syscalls:sys_enter_epoll_wait
        stats=()
        for i in 0 1 2; do
            perf stat -e "$events" -p "${SYN_PIDS[$i]}" -o "$WORK/syscalls-n$((i + 1)).txt" -- sleep 5 &
            stats+=($!)
        done
        wait "${stats[@]}"
        for i in 1 2 3; do echo "n$i: $(awk '/syscalls|context/{printf "%s %s  ", $1, $2}' "$WORK/syscalls-n$i.txt")"; done
        ;;
esac
wait "$bench_pid" || die "bench failed: $(tail -3 "$WORK/bench.out")"
after=$(cpu_ticks)
[ "${THREADS:-0}" = 1 ] && thread_ticks >"$WORK/threads-after.txt"
rss=$(for p in "${SYN_PIDS[@]}"; do awk '/VmRSS/{print $2}' "/proc/$p/status"; done | paste -sd' ')
written=$(for p in "${SYN_PIDS[@]}"; do awk '/^wchar/{print $2}' "/proc/$p/io"; done | paste -sd' ')
# Mean durable write of a Ready (append + fdatasync) per node, since start.
persist=$(for h in "${HTTP[@]}"; do
    curl -s "http://127.0.0.1:$h/metrics" | awk '
        /^synapse_raft_persist_seconds_sum/ {s=$2} /^synapse_raft_persist_seconds_count/ {c=$2}
        END {if (c > 0) printf "%.3f\n", s * 1000 / c; else print "-"}'
done | paste -sd' ')
echo "mean persist ms per node [$persist]"
# Reads served under a leader's lease, all nodes, since start.
lease_reads=$(for h in "${HTTP[@]}"; do
    curl -s "http://127.0.0.1:$h/metrics" | awk '/^synapse_lease_reads_total/ {print $2}'
done | awk '{s += $1} END {print s + 0}')

python3 - "$WORK/result.json" "$before" "$after" "$rss" "$written" "$LEADER" "$(getconf CLK_TCK)" \
    "$(tail -1 "$WORK/bench.time")" "${RESULT_JSON:-}" "$lease_reads" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
run = run["runs"][0] if "runs" in run else run
tick_ms = 1000 / int(sys.argv[7])
cpu_ms = [(b - a) * tick_ms for a, b in zip(map(int, sys.argv[2].split()), map(int, sys.argv[3].split()))]
rss = [int(x) // 1024 for x in sys.argv[4].split()]
written = [int(x) for x in sys.argv[5].split()]
ops = run["ok"] + run.get("warmup_ops", 0)
lat = run["latency_us"]
try:
    loadgen_cpu_s = sum(map(float, sys.argv[8].split()))
except ValueError:
    loadgen_cpu_s = float("nan")
print(f"ops/s {run['throughput_ops_s']:.0f}  p50 {lat['p50']/1000:.1f} ms  p99 {lat['p99']/1000:.1f} ms  "
      f"max {lat['max']/1000:.1f} ms  errors {run['errors_total']}")
print(f"cpu ms per node {[round(c) for c in cpu_ms]} (leader n{sys.argv[6]})  "
      f"cluster cpu per write {sum(cpu_ms) * 1000 / max(ops, 1):.0f} us  "
      f"load generator {loadgen_cpu_s * 1e6 / max(ops, 1):.0f} us per op")
print(f"rss MiB {rss}  written per write per node {[round(w / max(ops, 1)) for w in written]} B")
if sys.argv[9]:
    run["node_cpu_ms"] = cpu_ms
    run["cluster_cpu_us_per_op"] = sum(cpu_ms) * 1000 / max(ops, 1)
    run["loadgen_cpu_us_per_op"] = loadgen_cpu_s * 1e6 / max(ops, 1)
    run["leader"] = int(sys.argv[6])
    run["lease_reads"] = int(float(sys.argv[10]))
    json.dump(run, open(sys.argv[9], "w"), indent=1)
PY
if [ "${THREADS:-0}" = 1 ]; then
    python3 - "$WORK/threads-before.txt" "$WORK/threads-after.txt" "$WORK/result.json" "$(getconf CLK_TCK)" <<'PY'
import collections, json, sys
def load(path):
    out = collections.Counter()
    for line in open(path):
        node, name, ticks = line.split()
        # Worker pools number their threads; one row per pool.
        out[(node, name.rstrip("0123456789-_"))] += int(ticks)
    return out
before, after = load(sys.argv[1]), load(sys.argv[2])
run = json.load(open(sys.argv[3]))
run = run["runs"][0] if "runs" in run else run
ops = max(run["ok"] + run.get("warmup_ops", 0), 1)
tick_us = 1e6 / int(sys.argv[4])
rows = sorted(((after[k] - before.get(k, 0)) * tick_us / ops, k) for k in after)
print("cpu us per write by node and thread (top 12):")
for us, (node, name) in reversed(rows[-12:]):
    print(f"  {node} {name:<24} {us:7.1f}")
PY
fi
