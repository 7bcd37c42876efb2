#!/usr/bin/env bash
# What this machine and this stack allow: for each issue-7 target that
# `compare-etcd.sh` measures, a floor (or ceiling) built from parts of
# Synapse measured in the same run, set against the bound the target needs.
# A target whose floor is past its bound cannot be met by work on the write
# path alone: it needs a cheaper part (client protocol, peer transport,
# state store) or another machine.
#
#   benches/floor.sh                      # 3 rounds, about 15 minutes
#   ROUNDS=1 SECONDS_RUN=5 benches/floor.sh   # quicker, noisier
#
# Points, each on a fresh 3-node cluster (benches/ab.sh), alternated over
# ROUNDS rounds; medians are reported:
#   read1_lease   1 client on the leader, linearizable `kv get` served under
#                 the leader's read lease: the client's gRPC round trip, the
#                 guard and the actor, no Raft message and no disk
#   read1_index   the same with `raft_lease_reads = false`: every read waits
#                 for a ReadIndex round to the followers, the message
#                 pattern of a write without its disk and apply
#   write1        1 client on the leader, `kv put` of 256 B (compare-etcd's
#                 1-client point connects to node 1, the leader or not)
#   read256       256 clients over the three members, `kv get`: the same
#                 front, guard, actor and forwarding (a follower forwards
#                 every call to the leader) with no entry replicated or
#                 applied
#   write256      256 clients, `kv put`, rings prefilled (the steady state
#                 compare-etcd's 256-client point runs in)
#   etcd256       a 3-member etcd, 256 clients, the same `put` workload
# The read points and write256 run after PREFILL puts, so every instance
# has stored state. Plus the disk and loopback probes of compare-etcd.sh
# (the RTT probe is Python, so it overstates a native round trip), and the
# criterion bench `checkpoint/store_apply_64x256B_steady` (one follower
# Ready's apply into sled, per entry) unless APPLY_US gives that figure.
# The report refuses a run whose lease-off point served reads under a lease.
#
# Environment knobs: ROUNDS [3]  SECONDS_RUN [10]  OUT_DIR [target/floor]
#   SYNAPSE_BIN [built here]  APPLY_US [criterion run here]
#   PREFILL [150000: fills every ring of 100 versions over 1 000 instances]
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-3}
SECONDS_RUN=${SECONDS_RUN:-10}
PREFILL=${PREFILL:-150000}
OUT_DIR=${OUT_DIR:-$ROOT/target/floor}
ETCD_CLIENT_PORTS=(23891 23892 23893)
ETCD_PEER_PORTS=(23901 23902 23903)

# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
bench_init floor
mkdir -p "$OUT_DIR/runs"
command -v python3 >/dev/null || die "python3 is needed (measurements and the report)"
ensure_etcd
synapse_bin

{
    echo "cpu: $(nproc) × $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "etcd: $ETCD_VERSION"
    synapse_provenance
    echo "load: $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) before the run"
} | tee "$OUT_DIR/machine.txt" >&2

say "disk and loopback probes"
probe_fdatasync "$WORK" >"$OUT_DIR/fsync.json"
probe_rtt >"$OUT_DIR/rtt.json"

if [ -z "${APPLY_US:-}" ]; then
    say "criterion: checkpoint/store_apply_64x256B_steady (one Ready's apply into sled)"
    (cd "$ROOT" && cargo bench --quiet --bench core -- 'checkpoint/store_apply_64x256B_steady$' \
        >"$OUT_DIR/criterion-apply.txt" 2>&1) || die "criterion run failed: $(tail -5 "$OUT_DIR/criterion-apply.txt")"
    est=${CARGO_TARGET_DIR:-$ROOT/target}/criterion/checkpoint/store_apply_64x256B_steady/new/estimates.json
    # 64 puts per iteration (APPLY_BATCH_PUTS in benches/core.rs).
    APPLY_US=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["median"]["point_estimate"] / 1000 / 64)' "$est")
fi
echo "$APPLY_US" >"$OUT_DIR/apply_us.txt"

printf 'raft_lease_reads = false\n' >"$WORK/no-lease.toml"
etcd_point() {
    start_etcd ETCD_CLIENT_PORTS ETCD_PEER_PORTS floor
    "$B" bench --target etcd --endpoints "$ETCD_EPS" --clients 256 --duration "${SECONDS_RUN}s" \
        --warmup 2s --mix put=100 --value-size 256 --instances 1000 --quiet --json "$1" \
        >"$WORK/etcd-bench.out" 2>&1 || die "etcd bench failed: $(tail -3 "$WORK/etcd-bench.out")"
    stop_pids "${ETCD_PIDS[@]}"
    rm -rf "$WORK"/etcd[123]
}
ab() { # ab NAME CLIENTS [serve args...]; knobs through the environment
    local name=$1 clients=$2
    shift 2
    RESULT_JSON="$OUT_DIR/runs/$name-r$round.json" LOADGEN="$B" \
        "$ROOT/benches/ab.sh" "$B" "$clients" "$SECONDS_RUN" "$@" >"$OUT_DIR/runs/$name-r$round.txt" 2>&1 ||
        die "$name failed: $(tail -3 "$OUT_DIR/runs/$name-r$round.txt")"
    echo "  $name: $(grep '^ops/s' "$OUT_DIR/runs/$name-r$round.txt")" >&2
}
for round in $(seq 1 "$ROUNDS"); do
    say "round $round of $ROUNDS"
    # Reads of instances with stored state: the actor loads and checks it,
    # as a write's does.
    MIX=get=100 PREFILL=$PREFILL PREFILL_MIX=put=100 LEADER_ONLY=1 ab read1_lease 1
    MIX=get=100 PREFILL=$PREFILL PREFILL_MIX=put=100 LEADER_ONLY=1 ab read1_index 1 --config "$WORK/no-lease.toml"
    MIX=put=100 LEADER_ONLY=1 ab write1 1
    MIX=get=100 PREFILL=$PREFILL PREFILL_MIX=put=100 ab read256 256
    MIX=put=100 PREFILL=$PREFILL ab write256 256
    etcd_point "$OUT_DIR/runs/etcd256-r$round.json"
    echo "  etcd256: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d=d["runs"][0] if "runs" in d else d; print("%.0f ops/s" % d["throughput_ops_s"])' "$OUT_DIR/runs/etcd256-r$round.json")" >&2
done

python3 - "$OUT_DIR" "$ROUNDS" "$(nproc)" <<'EOF' | tee "$OUT_DIR/report.txt"
import json, statistics, sys
out, rounds, cores = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def load(name):
    runs = []
    for r in range(1, rounds + 1):
        d = json.load(open(f"{out}/runs/{name}-r{r}.json"))
        runs.append(d["runs"][0] if "runs" in d else d)
    return runs
med = statistics.median
def m(name, f):
    return med(f(r) for r in load(name))
fs = json.load(open(f"{out}/fsync.json"))["p50_us"]
rtt = json.load(open(f"{out}/rtt.json"))["p50_us"]
apply_us = float(open(f"{out}/apply_us.txt").read())
p50 = lambda n: m(n, lambda r: r["latency_us"]["p50"])
ops = lambda n: m(n, lambda r: r["throughput_ops_s"])
node_cpu = lambda n: m(n, lambda r: r["cluster_cpu_us_per_op"])
lg_cpu = lambda n: m(n, lambda r: r["loadgen_cpu_us_per_op"])
# The lease-off point must not have used the lease, the lease point must have.
if any(r.get("lease_reads", 0) > 0 for r in load("read1_index")):
    sys.exit("read1_index served reads under a lease: raft_lease_reads = false did not apply")
if not all(r.get("lease_reads", 0) > 0 for r in load("read1_lease")):
    sys.exit("read1_lease served no read under the lease")

print(f"medians of {rounds} round(s); fdatasync p50 {fs:.0f} µs, loopback RTT p50 {rtt:.0f} µs (Python), "
      f"sled apply {apply_us:.1f} µs per entry (criterion)")
print()
print("point        ops/s    p50 µs  node CPU µs/op  load generator µs/op")
for n in ["read1_lease", "read1_index", "write1", "read256", "write256"]:
    print(f"{n:<12} {ops(n):>7.0f} {p50(n):>8.0f} {node_cpu(n):>14.0f} {lg_cpu(n):>20.0f}")
etcd = ops("etcd256")
print(f"{'etcd256':<12} {etcd:>7.0f}")
print()

# 1 client: a write waits for at least what a ReadIndex read waits for (the
# client's round trip and one round of peer messages) plus one fdatasync on
# a follower between receiving the entry and acknowledging it.
bound = 2 * (fs + rtt)
floor = p50("read1_index") + fs
raw = p50("read1_lease") + rtt + fs
print(f"1-client p50 ≤ 2 × (fdatasync + RTT) = {bound:.0f} µs. Floor with this front and peer transport: "
      f"ReadIndex read p50 {p50('read1_index'):.0f} + fdatasync {fs:.0f} = {floor:.0f} µs ({floor / bound:.2f}× "
      f"the bound). With a peer round as cheap as the probe's Python ping-pong: lease read "
      f"{p50('read1_lease'):.0f} + {rtt:.0f} + {fs:.0f} = {raw:.0f} µs ({raw / bound:.2f}×). "
      f"Today: {p50('write1'):.0f} µs. "
      + ("OUT OF REACH with the current front and peer transport" if floor > bound else "within reach"))

# Throughput: node CPU budget per write at twice etcd's rate, against a floor
# of what a read through the same front costs (gRPC, guard, actor,
# forwarding) plus one apply into sled on each of the three nodes. The
# generator's cost per op falls with the rate it runs at (more replies per
# wake-up), so the budget is given for its cost in the write run and in the
# read run (the faster one).
need = 2 * etcd
budget = lambda lg: (cores - lg * need / 1e6) * 1e6 / need
hi, lo = budget(lg_cpu("read256")), budget(lg_cpu("write256"))
floor = node_cpu("read256") + 3 * apply_us
rest = node_cpu("write256") - floor
print(f"throughput ≥ 2 × etcd = {need:.0f} writes/s leaves {lo:.0f}–{hi:.0f} µs of node CPU per write "
      f"({cores} cores less the load generator at {lg_cpu('write256'):.0f}–{lg_cpu('read256'):.0f} µs/op). "
      f"Floor: a read's {node_cpu('read256'):.0f} µs + 3 × {apply_us:.1f} µs apply = {floor:.0f} µs, "
      f"{floor / hi:.2f}–{floor / lo:.2f}× the budget, before replication, persistence and sealing, which "
      f"take the other {rest:.0f} µs of today's {node_cpu('write256'):.0f} and would have to fit in "
      f"{max(0, lo - floor):.0f}–{max(0, hi - floor):.0f}. Today: {ops('write256') / etcd:.2f}× etcd. "
      + ("OUT OF REACH on this stack and machine" if floor > hi else
         f"out of reach unless those {rest:.0f} µs shrink to {max(0, hi - floor):.0f}"))

# Batching: at the floor's CPU per write, the cores carry at most this many
# writes a second, even with a load generator that costs nothing.
need = 30 * ops("write1")
free = cores * 1e6 / floor
with_lg = cores * 1e6 / (floor + lg_cpu("read256"))
print(f"batching ≥ 30× today's single client ({ops('write1'):.0f} writes/s) needs {need:.0f} writes/s at 256 "
      f"clients (a faster single client raises it). At the floor's {floor:.0f} µs per write the cores carry "
      f"{with_lg:.0f} writes/s with the generator at {lg_cpu('read256'):.0f} µs/op ({with_lg / ops('write1'):.1f}×), "
      f"{free:.0f} with a generator that cost nothing ({free / ops('write1'):.1f}×). "
      f"Today: {ops('write256'):.0f} = {ops('write256') / ops('write1'):.1f}×. "
      + ("OUT OF REACH on this stack and machine" if need > free else "within reach"))
json.dump({"fdatasync_p50_us": fs, "rtt_p50_us": rtt, "apply_us": apply_us, "etcd256_ops": etcd,
           **{n: {"ops": ops(n), "p50_us": p50(n), "node_cpu_us": node_cpu(n), "loadgen_cpu_us": lg_cpu(n)}
              for n in ["read1_lease", "read1_index", "write1", "read256", "write256"]}},
          open(f"{out}/floor.json", "w"), indent=1)
EOF
