#!/usr/bin/env bash
# What this machine and this stack allow: for each issue-7 target that
# `compare-etcd.sh` measures, a floor (or ceiling) built from parts of
# Synapse measured in the same run, set against the bound the target needs.
# A target whose floor is past its bound cannot be met by work on the write
# path alone: it needs a cheaper part (client protocol, peer transport,
# state store) or another machine.
#
#   benches/floor.sh                      # 3 rounds, about 12 minutes
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
#   write1        1 client on the leader, `kv put` of 256 B (the target's
#                 1-client point)
#   read256       256 clients over the three members, `kv get`: the most
#                 the same front serves when no entry is replicated or
#                 applied
#   write256      256 clients, `kv put`, rings prefilled (the steady state
#                 compare-etcd's 256-client point runs in)
#   etcd256       a 3-member etcd, 256 clients, the same `put` workload
# plus the disk and loopback probes of compare-etcd.sh, and the criterion
# bench `checkpoint/store_apply_64x256B_steady` (one follower Ready's apply
# into sled, per entry) unless APPLY_US gives that figure.
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
    MIX=get=100 LEADER_ONLY=1 ab read1_lease 1
    MIX=get=100 LEADER_ONLY=1 ab read1_index 1 --config "$WORK/no-lease.toml"
    MIX=put=100 LEADER_ONLY=1 ab write1 1
    MIX=get=100 ab read256 256
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
verdict = lambda reachable: "within reach" if reachable else "OUT OF REACH on this stack and machine"

print(f"medians of {rounds} round(s); fdatasync p50 {fs:.0f} µs, loopback RTT p50 {rtt:.0f} µs, "
      f"sled apply {apply_us:.1f} µs per entry (criterion)")
print()
print("point        ops/s    p50 µs  node CPU µs/op  load generator µs/op")
for n in ["read1_lease", "read1_index", "write1", "read256", "write256"]:
    print(f"{n:<12} {ops(n):>7.0f} {p50(n):>8.0f} {node_cpu(n):>14.0f} {lg_cpu(n):>20.0f}")
etcd = ops("etcd256")
print(f"{'etcd256':<12} {etcd:>7.0f}")
print()

# 1 client: a write waits for at least what a ReadIndex read waits for (the
# client's round trip and one round of peer messages) plus one fdatasync.
bound = 2 * (fs + rtt)
floor = p50("read1_index") + fs
print(f"1-client p50 ≤ 2 × (fdatasync + RTT) = {bound:.0f} µs. Floor: ReadIndex read p50 "
      f"{p50('read1_index'):.0f} + fdatasync {fs:.0f} = {floor:.0f} µs ({floor / bound:.2f}× the bound; "
      f"with a raw-TCP peer round instead: lease read {p50('read1_lease'):.0f} + RTT {rtt:.0f} + "
      f"fdatasync {fs:.0f} = {p50('read1_lease') + rtt + fs:.0f} µs). Today: {p50('write1'):.0f} µs. "
      f"{verdict(floor <= bound)}")

# Throughput: CPU budget per write at twice etcd's rate against a floor of
# what a read costs plus one apply into sled on each of the three nodes. The
# generator's cost per op is taken from the write run; the read run's (lower:
# more replies per wake-up at its higher rate) gives the most generous budget,
# and what that would leave for the rest of a write is printed beside it.
need = 2 * etcd
lg_share = lg_cpu("write256") * need / 1e6
budget = (cores - lg_share) * 1e6 / need
generous = (cores - lg_cpu("read256") * need / 1e6) * 1e6 / need
floor = node_cpu("read256") + 3 * apply_us
rest_today = node_cpu("write256") - floor
print(f"throughput ≥ 2 × etcd = {need:.0f} writes/s: the load generator would take {lg_share:.2f} of "
      f"{cores} cores ({lg_cpu('write256'):.0f} µs/op), leaving {budget:.0f} µs of node CPU per write. "
      f"Floor: a read's {node_cpu('read256'):.0f} µs + 3 × {apply_us:.1f} µs apply = {floor:.0f} µs "
      f"({floor / budget:.2f}× the budget) before replication, persistence, forwarding and sealing, "
      f"which take the other {rest_today:.0f} µs of today's {node_cpu('write256'):.0f} µs. With the generator "
      f"at its read cost ({lg_cpu('read256'):.0f} µs/op) the budget would be {generous:.0f} µs, leaving "
      f"{generous - floor:.0f} µs for those. Today: {ops('write256') / etcd:.2f}× etcd. {verdict(floor <= budget)}")

# Batching: at 256 clients, writes cannot outrun the same front's reads, nor
# the machine's cores at the floor's CPU per write (plus the generator's).
ceiling = min(ops("read256"), cores * 1e6 / (floor + lg_cpu("write256")))
need = 30 * ops("write1")
print(f"batching ≥ 30× needs {need:.0f} writes/s at 256 clients (30 × today's {ops('write1'):.0f} at 1 client; "
      f"a faster single client raises it). Ceiling: the lesser of the front's {ops('read256'):.0f} reads/s and "
      f"{cores} cores / ({floor:.0f} + {lg_cpu('write256'):.0f} µs) = {ceiling:.0f} writes/s, "
      f"{ceiling / ops('write1'):.1f}× today's single client ("
      f"{min(ops('read256'), cores * 1e6 / (floor + lg_cpu('read256'))) / ops('write1'):.1f}× with the generator "
      f"at its read cost). Today: {ops('write256'):.0f} = "
      f"{ops('write256') / ops('write1'):.1f}×. {verdict(need <= ceiling)}")
json.dump({"fdatasync_p50_us": fs, "rtt_p50_us": rtt, "apply_us": apply_us, "etcd256_ops": etcd,
           **{n: {"ops": ops(n), "p50_us": p50(n), "node_cpu_us": node_cpu(n), "loadgen_cpu_us": lg_cpu(n)}
              for n in ["read1_lease", "read1_index", "write1", "read256", "write256"]}},
          open(f"{out}/floor.json", "w"), indent=1)
EOF
