#!/usr/bin/env bash
# Side-by-side: a 3-node Synapse cluster vs a 3-member etcd, both on loopback,
# both fsyncing, driven by the same load generator (`synapse bench`) with the
# same workload shape and concurrency model.
#
#   benches/compare-etcd.sh                 # full run, about 5 minutes
#   DURATION=5s SWEEP=1,64 benches/compare-etcd.sh   # quicker
#
# Steps: install etcd if missing (Debian etcd-server/etcd-client), build
# synapse (release), measure fdatasync latency and loopback RTT, then for each
# system in turn: start 3 members (fresh data dirs under a mktemp dir), run the
# client sweep (closed loop), run one open-loop run at a common offered rate,
# stop the members. Prints both systems' figures and the ratios. Everything it
# starts is stopped on exit (trap), whatever happens.
#
# Environment knobs (defaults in brackets):
#   SWEEP [1,8,64,256]  DURATION [10s]  WARMUP [2s]  VALUE_SIZE [256]
#   MIX [put=100]  INSTANCES [1000]  OPEN_CLIENTS [256]
#   OPEN_RATE [0.8 × etcd's best closed-loop throughput]
#   SYNAPSE_BIN [built here]  OUT_DIR [target/compare-etcd]  KEEP=1 keeps data dirs
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SWEEP=${SWEEP:-1,8,64,256}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
VALUE_SIZE=${VALUE_SIZE:-256}
MIX=${MIX:-put=100}
INSTANCES=${INSTANCES:-1000}
OPEN_CLIENTS=${OPEN_CLIENTS:-256}
OUT_DIR=${OUT_DIR:-$ROOT/target/compare-etcd}
ETCD_CLIENT_PORTS=(23791 23792 23793)
ETCD_PEER_PORTS=(23801 23802 23803)
# Below the kernel's ephemeral range (32768-60999 by default), so an
# outgoing connection of an earlier step cannot hold one of them.
SYN_GRPC_PORTS=(31101 31102 31103)
SYN_HTTP_PORTS=(31201 31202 31203)

# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
bench_init compare-etcd

mkdir -p "$OUT_DIR"
command -v python3 >/dev/null || die "python3 is needed (measurements and the report)"

# ---------------------------------------------------------------- etcd
ensure_etcd

# ---------------------------------------------------------------- synapse
synapse_bin

# ---------------------------------------------------------------- machine
say "machine"
{
    echo "cpu: $(nproc) × $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "memory: $(free -m | awk '/Mem:/ {print $2" MiB"}')"
    echo "kernel: $(uname -r)"
    echo "filesystem of the data dirs: $(df -hT "$WORK" | awk 'NR==2 {print $2" on "$1}')"
    echo "etcd: $ETCD_VERSION"
    synapse_provenance
    echo "load: $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) before the run"
} | tee "$OUT_DIR/machine.txt" >&2

say "disk: 4 KiB write + fdatasync, 1000 times, in the data-dir filesystem"
probe_fdatasync "$WORK" >"$OUT_DIR/fsync.json"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("fdatasync: p50 %.0f µs, p90 %.0f µs, p99 %.0f µs, max %.0f µs" % (d["p50_us"], d["p90_us"], d["p99_us"], d["max_us"]))' "$OUT_DIR/fsync.json" >&2

say "loopback TCP round trip (64 B ping-pong between two processes, 5000 times)"
probe_rtt >"$OUT_DIR/rtt.json"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("loopback RTT (python, incl. interpreter): p50 %.0f µs, p90 %.0f µs, p99 %.0f µs" % (d["p50_us"], d["p90_us"], d["p99_us"]))' "$OUT_DIR/rtt.json" >&2

# ---------------------------------------------------------------- helpers
CLK_TCK=$(getconf CLK_TCK)
# Snapshot per-thread CPU ticks of the given pids: "pid tid comm ticks" lines.
cpu_snap() {
    python3 - "$@" <<'EOF'
import os, sys
for pid in sys.argv[1:]:
    try: tids = os.listdir(f"/proc/{pid}/task")
    except OSError: continue
    for tid in tids:
        try: s = open(f"/proc/{pid}/task/{tid}/stat").read()
        except OSError: continue
        comm = s[s.index("(") + 1:s.rindex(")")].replace(" ", "_") or "?"
        f = s[s.rindex(")") + 2:].split()
        print(pid, tid, comm, int(f[11]) + int(f[12]))
EOF
}
# Report CPU use between two snapshots: per process, and its busiest threads.
cpu_report() { # before after seconds names...
    python3 - "$@" "$CLK_TCK" <<'EOF'
import sys, collections
before, after, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
names = dict(a.split("=", 1) for a in sys.argv[4:-1]); tck = float(sys.argv[-1])
def load(p):
    d = {}
    for line in open(p):
        pid, tid, comm, ticks = line.split()
        d[(pid, tid)] = (comm, int(ticks))
    return d
b, a = load(before), load(after)
per = collections.defaultdict(list)
for k, (comm, t) in a.items():
    dt = t - b.get(k, (comm, 0))[1]
    per[k[0]].append((dt, comm, k[1]))
cores = 0.0
for pid, ts in per.items():
    total = sum(x[0] for x in ts) / tck / secs * 100
    cores += total / 100
    ts.sort(reverse=True)
    top = ", ".join("%s %.0f%%" % (c, d / tck / secs * 100) for d, c, _ in ts[:3] if d > 0)
    print("    cpu %-10s %5.0f%% of one core   busiest threads: %s" % (names.get(pid, pid), total, top or "-"))
# The members together, in cores, for the report's CPU-per-operation table.
open(before + ".cores", "w").write("%.4f\n" % cores)
EOF
}
secs_of() { python3 -c 'import sys,re; s=sys.argv[1]; m=re.match(r"([0-9.]+)(ms|s|m)?$", s); v=float(m.group(1)); u=m.group(2) or "s"; print(v/1000 if u=="ms" else v*60 if u=="m" else v)' "$1"; }
RUN_SECS=$(python3 -c "print($(secs_of "$WARMUP") + $(secs_of "$DURATION"))")

# bench NAME PIDS-VAR-NAMES... -- ARGS: one `synapse bench` run with CPU accounting.
# Usage: run_bench <system> <json-out> <pid-label-list> -- <bench args>
run_bench() {
    local system=$1 json=$2 labels=$3; shift 4
    local pids=() l
    for l in $labels; do pids+=("${l#*=}"); done
    cpu_snap "${pids[@]}" >"$WORK/cpu.before"
    local t0; t0=$(date +%s.%N)
    local TIMEFORMAT='%U %S'
    { time "$B" bench --target "$system" --json "$json" \
        --duration "$DURATION" --warmup "$WARMUP" --value-size "$VALUE_SIZE" \
        --mix "$MIX" --instances "$INSTANCES" "$@" ; } 2>"$WORK/bench.time" \
        || echo "    (bench exited non-zero)"
    local t1; t1=$(date +%s.%N)
    cpu_snap "${pids[@]}" >"$WORK/cpu.after"
    local secs; secs=$(python3 -c "print($t1 - $t0)")
    local rev=(); for l in $labels; do rev+=("${l#*=}=${l%%=*}"); done
    cpu_report "$WORK/cpu.before" "$WORK/cpu.after" "$secs" "${rev[@]}"
    # The generator's own CPU (user + sys from `time`; its stderr went there too).
    grep -E 'error|warning' "$WORK/bench.time" >&2 || true
    local ut; ut=$(tail -1 "$WORK/bench.time")
    python3 -c 'import sys; u,s=map(float,sys.argv[1].split()); print("    cpu %-10s %5.0f%% of one core" % ("bench", (u+s)/float(sys.argv[2])*100))' "$ut" "$secs"
    # The members' CPU goes into the run's JSON: the report divides it by
    # the throughput, which tells CPU efficiency apart from waiting.
    python3 - "$json" "$(cat "$WORK/cpu.before.cores")" <<'EOF' || true
import json, sys
d = json.load(open(sys.argv[1]))
for r in d.get("runs", [d]):
    r["members_cpu_cores"] = float(sys.argv[2])
json.dump(d, open(sys.argv[1], "w"), indent=1)
EOF
}

# ---------------------------------------------------------------- etcd run
say "starting a 3-member etcd on loopback (fsync on, as by default)"
start_etcd ETCD_CLIENT_PORTS ETCD_PEER_PORTS compare-etcd
ETCD_LABELS="e1=${ETCD_PIDS[0]} e2=${ETCD_PIDS[1]} e3=${ETCD_PIDS[2]}"

say "etcd: closed-loop sweep, clients $SWEEP"
IFS=, read -r -a COUNTS <<<"$SWEEP"
for c in "${COUNTS[@]}"; do
    run_bench etcd "$WORK/etcd-c$c.json" "$ETCD_LABELS" -- --endpoints "$ETCD_EPS" --clients "$c" --label etcd --quiet
done
python3 - "$WORK" etcd "${COUNTS[@]}" >"$OUT_DIR/etcd.json" <<'EOF'
import json, sys
work, name, counts = sys.argv[1], sys.argv[2], sys.argv[3:]
docs = [json.load(open(f"{work}/{name}-c{c}.json")) for c in counts]
d = docs[0]; d["runs"] = [r for x in docs for r in x["runs"]]
print(json.dumps(d, indent=1))
EOF
if [ -z "${OPEN_RATE:-}" ]; then
    OPEN_RATE=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(int(0.8*max(r["throughput_ops_s"] for r in d["runs"])) or 100)' "$OUT_DIR/etcd.json")
fi
say "etcd: open loop, $OPEN_CLIENTS clients at $OPEN_RATE ops/s"
run_bench etcd "$OUT_DIR/etcd-open.json" "$ETCD_LABELS" -- --endpoints "$ETCD_EPS" --clients "$OPEN_CLIENTS" --rate "$OPEN_RATE" --label etcd-open --quiet --plot "$OUT_DIR/etcd-open-latency.svg"
say "stopping etcd"
stop_pids "${ETCD_PIDS[@]}"

# ---------------------------------------------------------------- synapse run
say "starting a 3-node Synapse cluster on loopback (fdatasync per Raft Ready)"
start_synapse 3 SYN_GRPC_PORTS SYN_HTTP_PORTS
echo "leader: node $LEADER" >&2
SYN_LABELS="n1=${SYN_PIDS[0]} n2=${SYN_PIDS[1]} n3=${SYN_PIDS[2]}"
metrics() {
    python3 -c 'import sys,urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
        "http://127.0.0.1:${SYN_HTTP_PORTS[$((LEADER-1))]}/metrics" 2>/dev/null || true
}

say "synapse: closed-loop sweep, clients $SWEEP"
for c in "${COUNTS[@]}"; do
    metrics >"$WORK/m.before"
    run_bench synapse "$WORK/synapse-c$c.json" "$SYN_LABELS" -- --endpoints "$SYN_EPS" \
        --token-file "$SYN_TOKEN" --clients "$c" --label synapse --quiet
    metrics >"$WORK/m.after"
    python3 - "$WORK/m.before" "$WORK/m.after" <<'EOF' || true
import sys, re
def load(p):
    d = {}
    for line in open(p):
        if line.startswith("#") or not line.strip(): continue
        k, _, v = line.rpartition(" ")
        try: d[k] = float(v)
        except ValueError: pass
    return d
b, a = load(sys.argv[1]), load(sys.argv[2])
keep = re.compile(r"commit_index|sync|ready|batch|invokes|proposal|append")
out = ["%s +%g" % (k, a[k] - b.get(k, 0)) for k in sorted(a) if keep.search(k) and a[k] != b.get(k, 0)]
if out: print("    leader metrics delta: " + "; ".join(out[:8]))
EOF
done
python3 - "$WORK" synapse "${COUNTS[@]}" >"$OUT_DIR/synapse.json" <<'EOF'
import json, sys
work, name, counts = sys.argv[1], sys.argv[2], sys.argv[3:]
docs = [json.load(open(f"{work}/{name}-c{c}.json")) for c in counts]
d = docs[0]; d["runs"] = [r for x in docs for r in x["runs"]]
print(json.dumps(d, indent=1))
EOF
say "synapse: open loop, $OPEN_CLIENTS clients at $OPEN_RATE ops/s"
run_bench synapse "$OUT_DIR/synapse-open.json" "$SYN_LABELS" -- --endpoints "$SYN_EPS" \
    --token-file "$SYN_TOKEN" --clients "$OPEN_CLIENTS" --rate "$OPEN_RATE" --label synapse-open --quiet \
    --plot "$OUT_DIR/synapse-open-latency.svg"
say "stopping synapse"
stop_pids "${SYN_PIDS[@]}"

"$B" bench --plot-from "$OUT_DIR/synapse.json,$OUT_DIR/etcd.json" --plot "$OUT_DIR/compare.svg" 2>/dev/null || true

# ---------------------------------------------------------------- report
say "comparison"
python3 - "$OUT_DIR" "$MIX" "$VALUE_SIZE" <<'EOF' | tee "$OUT_DIR/report.txt"
import json, sys
out, mix, vs = sys.argv[1], sys.argv[2], sys.argv[3]
S = json.load(open(f"{out}/synapse.json")); E = json.load(open(f"{out}/etcd.json"))
so = json.load(open(f"{out}/synapse-open.json"))["runs"][0]; eo = json.load(open(f"{out}/etcd-open.json"))["runs"][0]
fs = json.load(open(f"{out}/fsync.json")); rtt = json.load(open(f"{out}/rtt.json"))
def ms(us): return "%.2f" % (us / 1000.0)
def ratio(a, b): return "%.2f×" % (a / b) if b else "n/a"
print(f"workload: mix {mix}, {vs}-byte values, {S['instances']} keys/instances, {S['duration_s']:.0f} s per point after {S['warmup_s']:.0f} s warm-up")
print(f"disk fdatasync p50 {fs['p50_us']:.0f} µs (p99 {fs['p99_us']:.0f} µs); loopback RTT p50 {rtt['p50_us']:.0f} µs (python)")
print()
hdr = ("clients", "synapse ops/s", "etcd ops/s", "thr S/E", "syn p50 ms", "etcd p50 ms", "p50 S/E", "syn p99 ms", "etcd p99 ms", "p99 S/E", "err S/E")
print("| " + " | ".join(hdr) + " |"); print("|" + "---|" * len(hdr))
er = {r["clients"]: r for r in E["runs"]}
for s in S["runs"]:
    e = er.get(s["clients"])
    if not e: continue
    sl, el = s["latency_us"], e["latency_us"]
    print("| %d | %.0f | %.0f | %s | %s | %s | %s | %s | %s | %s | %d/%d |" % (s["clients"], s["throughput_ops_s"], e["throughput_ops_s"],
        ratio(s["throughput_ops_s"], e["throughput_ops_s"]), ms(sl["p50"]), ms(el["p50"]), ratio(sl["p50"], el["p50"]),
        ms(sl["p99"]), ms(el["p99"]), ratio(sl["p99"], el["p99"]), s["errors_total"], e["errors_total"]))
print()
def cpu_us(r):
    c = r.get("members_cpu_cores") if r else None
    return c * 1e6 / r["throughput_ops_s"] if c is not None and r["throughput_ops_s"] else None
print("CPU of the three members per operation (all their threads, over the run")
print("including its warm-up, divided by the measured throughput):")
print()
print("| clients | synapse µs/op | etcd µs/op | S/E |"); print("|---|---|---|---|")
for s in S["runs"]:
    a, b = cpu_us(s), cpu_us(er.get(s["clients"]))
    if a is None or b is None: continue
    print("| %d | %.0f | %.0f | %s |" % (s["clients"], a, b, ratio(a, b)))
print()
print("| open loop | offered ops/s | achieved ops/s | p50 ms | p99 ms | p99.9 ms | max ms | errors |")
print("|---|---|---|---|---|---|---|---|")
for name, r, d in (("synapse", so, "synapse-open"), ("etcd", eo, "etcd-open")):
    rate = json.load(open(f"{out}/{d}.json"))["rate"]
    l = r["latency_us"]
    print(f"| {name} ({r['clients']} clients) | {rate:.0f} | {r['throughput_ops_s']:.0f} | {ms(l['p50'])} | {ms(l['p99'])} | {ms(l['p999'])} | {ms(l['max'])} | {r['errors_total']} |")
print()
sr = {r["clients"]: r for r in S["runs"]}
def verdict(ok): return "met" if ok else "NOT met"
lines = []
if 256 in sr and 256 in er:
    x = sr[256]["throughput_ops_s"] / max(er[256]["throughput_ops_s"], 1e-9)
    lines.append(f"throughput at 256 clients: synapse/etcd = {x:.2f}× (target ≥ 2.0×: {verdict(x >= 2.0)})")
if so["latency_us"]["p99"] and eo["latency_us"]["p99"]:
    x = so["latency_us"]["p99"] / eo["latency_us"]["p99"]
    lines.append(f"open-loop p99 at the same offered rate: synapse/etcd = {x:.2f}× (target ≤ 0.5×: {verdict(x <= 0.5)})")
if 1 in sr:
    floor = fs["p50_us"] + rtt["p50_us"]
    x = sr[1]["latency_us"]["p50"] / floor
    lines.append(f"1 client p50 = {sr[1]['latency_us']['p50']/1000:.2f} ms = {x:.2f}× (fdatasync p50 + RTT = {floor/1000:.2f} ms) (target ≤ 2×: {verdict(x <= 2.0)})")
if 1 in sr and 256 in sr:
    x = sr[256]["throughput_ops_s"] / max(sr[1]["throughput_ops_s"], 1e-9)
    y = er[256]["throughput_ops_s"] / max(er[1]["throughput_ops_s"], 1e-9) if 1 in er and 256 in er else 0
    lines.append(f"batching gain 256/1 clients: synapse {x:.1f}× (target ≥ 30×: {verdict(x >= 30)}); etcd {y:.1f}×")
for l in lines: print("- " + l)
EOF
echo >&2
echo "results: $OUT_DIR (synapse.json, etcd.json, *-open.json, compare.svg, report.txt)" >&2
