#!/usr/bin/env bash
# Long-running memory and latency checks (issue #7), bounded in time and ops:
#
#   benches/sustained.sh sustained   # 3 nodes on loopback: closed loop for
#                                    # PEAK_SECONDS, whose last
#                                    # PEAK_TAIL_SECONDS give the steady peak,
#                                    # then open loop at FRACTION of it for
#                                    # SUSTAIN_SECONDS
#   SYSTEM=etcd benches/sustained.sh sustained
#                                    # the same against a 3-member etcd (the
#                                    # reference: how much of a drift is the
#                                    # host's), same load generator and report;
#                                    # etcd compacts to its last
#                                    # ETCD_KEEP_REVISIONS, as Synapse keeps
#                                    # 100 versions of each of 1000 instances
#   benches/sustained.sh instances   # 1 node: INSTANCES distinct instances
#                                    # created one after another (one write
#                                    # each), at most ACTIVE in memory, idle
#                                    # ones passivated after IDLE_MS
#
# Both sample every node's VmRSS, RssAnon, live heap and active-instance
# gauges (synapse_heap_allocated_bytes, synapse_active_instances) and data-dir
# size every SAMPLE_SECONDS into OUT_DIR/rss-<mode>.csv, keep the load
# generator's JSON (per-second p50/p99 timeline), CPU ticks per node and thread
# name into OUT_DIR/rss-<mode>-threads.csv, and print a report:
#   sustained: RSS growth from WARM_SECONDS to the end (target < 5 %), and
#              per-minute throughput and p50/p99, last full minute over the
#              first (drift);
#   instances: RSS against instances created, bytes of RSS per instance
#              created over the second half, and the configured bounds; it
#              keeps sampling for SETTLE_SECONDS after the last write.
#
# Knobs [defaults]: SUSTAIN_SECONDS [600] WARM_SECONDS [120] PEAK_SECONDS [300]
#   PEAK_TAIL_SECONDS [60] (the peak is the mean of the closed loop's last
#   PEAK_TAIL_SECONDS: a fresh cluster has not filled its retention ring nor
#   started compacting its Raft log; until 2026-12-03 the peak came from the
#   first 20 s of a fresh cluster). RATE [from the peak run] skips the
#   closed loop: the open loop then starts on a fresh cluster
#   SYSTEM [synapse] (or etcd: sustained mode only; installs etcd if missing)
#   ETCD_KEEP_REVISIONS [100000] LEADER_ONLY [0] (1: every client on the
#   leader, no forwarding; synapse only)
#   SAMPLE_SECONDS [10] CLIENTS [64] FRACTION [0.7] MIX [put=100] INSTANCES [1000000] INSTANCES_SECONDS [1200] ACTIVE [10000]
#   IDLE_MS [30000] SETTLE_SECONDS [60] NODE_TOML [""] (extra lines for every
#   node's --config file, e.g. 'audit_max_records = 20000') PORT_BASE [51400] (uses PORT_BASE+1..3
#   for gRPC, PORT_BASE+101..103 for HTTP, PORT_BASE+201..203 and +211..213
#   for etcd's client and peer URLs) OUT_DIR [target/sustained]
#   SYNAPSE_BIN [built here, release] KEEP=1 keeps the data dirs.
# Everything it starts is stopped on exit (trap), whatever happens.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"

MODE=${1:-sustained}
SUSTAIN_SECONDS=${SUSTAIN_SECONDS:-600}
WARM_SECONDS=${WARM_SECONDS:-120}
PEAK_SECONDS=${PEAK_SECONDS:-300}
PEAK_TAIL_SECONDS=${PEAK_TAIL_SECONDS:-60}
SAMPLE_SECONDS=${SAMPLE_SECONDS:-10}
CLIENTS=${CLIENTS:-64}
FRACTION=${FRACTION:-0.7}
MIX=${MIX:-put=100}
INSTANCES=${INSTANCES:-1000000}
INSTANCES_SECONDS=${INSTANCES_SECONDS:-1200}
ACTIVE=${ACTIVE:-10000}
IDLE_MS=${IDLE_MS:-30000}
SETTLE_SECONDS=${SETTLE_SECONDS:-60}
PORT_BASE=${PORT_BASE:-51400}
OUT_DIR=${OUT_DIR:-$ROOT/target/sustained}
GRPC_PORTS=($((PORT_BASE + 1)) $((PORT_BASE + 2)) $((PORT_BASE + 3)))
HTTP_PORTS=($((PORT_BASE + 101)) $((PORT_BASE + 102)) $((PORT_BASE + 103)))
ETCD_CLIENT_PORTS=($((PORT_BASE + 201)) $((PORT_BASE + 202)) $((PORT_BASE + 203)))
ETCD_PEER_PORTS=($((PORT_BASE + 211)) $((PORT_BASE + 212)) $((PORT_BASE + 213)))
SYSTEM=${SYSTEM:-synapse}
ETCD_KEEP_REVISIONS=${ETCD_KEEP_REVISIONS:-100000}

case "$MODE" in sustained | instances) ;; *) die "mode must be sustained or instances" ;; esac
case "$SYSTEM" in synapse | etcd) ;; *) die "SYSTEM must be synapse or etcd" ;; esac
[ "$SYSTEM" = synapse ] || [ "$MODE" = sustained ] || die "SYSTEM=etcd needs mode sustained"
[ "$SYSTEM" = synapse ] || [ "${LEADER_ONLY:-0}" = 0 ] || die "LEADER_ONLY is for SYSTEM=synapse"
command -v python3 >/dev/null || die "python3 is needed for sampling and the report"
bench_init synapse-sustained
mkdir -p "$OUT_DIR"
synapse_bin

# sampler CSV: a background python process that appends one row every
# SAMPLE_SECONDS (elapsed s, 1-min load average, the machine's busy / iowait /
# steal CPU % and the median and worst 4 KiB write + fdatasync in the data
# dirs' filesystem over the interval (a probe every 200 ms), then per node
# VmRSS KiB, RssAnon KiB, live heap KiB and synapse_active_instances (-1
# when unknown: etcd, or a failed scrape), data-dir KiB) until
# $WORK/stop-sampler exists; bounded to one day of samples. The
# machine columns tell a slow host or disk from a slow system when a run
# falls behind. The nodes are SAMPLE_PIDS, with their metrics URLs in
# SAMPLE_URLS and data dirs in SAMPLE_DIRS. Its pid goes into PIDS.
sampler() {
    local csv=$1 i specs=()
    for i in "${!SAMPLE_PIDS[@]}"; do
        specs+=("n$((i + 1))=${SAMPLE_PIDS[$i]}=${SAMPLE_URLS[$i]}=${SAMPLE_DIRS[$i]}")
    done
    python3 - "$csv" "$SAMPLE_SECONDS" "$WORK/stop-sampler" "${specs[@]}" <<'PY' &
import os, statistics, sys, threading, time, urllib.request
csv, every, stop, specs = sys.argv[1], float(sys.argv[2]), sys.argv[3], [s.split("=", 3) for s in sys.argv[4:]]
fsync_us, fsync_lock = [], threading.Lock()
def fsync_probe():
    # 4 KiB rewritten in place and fdatasync'd every 200 ms until stop:
    # what one Raft barrier waits for, sampled beside the load.
    path = os.path.join(os.path.dirname(stop), "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    block = os.urandom(4096)
    for _ in range(int(86400 / 0.2)):
        if os.path.exists(stop):
            break
        t = time.monotonic()
        os.pwrite(fd, block, 0)
        os.fdatasync(fd)
        with fsync_lock:
            fsync_us.append((time.monotonic() - t) * 1e6)
        time.sleep(0.2)
    os.close(fd)
threading.Thread(target=fsync_probe, daemon=True).start()
def cpu_times():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return sum(f), f[3] + f[4], f[4], f[7]  # total, idle+iowait, iowait, steal
last_cpu = cpu_times()
def machine_cols():
    global last_cpu
    now = cpu_times()
    d = [b - a for a, b in zip(last_cpu, now)]
    last_cpu = now
    total = max(d[0], 1)
    with fsync_lock:
        lat = fsync_us[:]
        fsync_us.clear()
    return [f"{100*(total-d[1])/total:.0f}", f"{100*d[2]/total:.0f}", f"{100*d[3]/total:.0f}",
            f"{statistics.median(lat):.0f}" if lat else "0", f"{max(lat):.0f}" if lat else "0"]
def status(pid, key):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
def gauges(url):
    """Active instances and live heap (KiB) from a node's /metrics; -1 when
    unknown (no answer, or etcd, which has neither)."""
    try:
        body = urllib.request.urlopen(url, timeout=3).read().decode()
    except Exception:
        return -1, -1
    def gauge(name, scale=1):
        return next((int(float(l.split()[1]) / scale) for l in body.splitlines() if l.startswith(name + " ")), -1)
    return gauge("synapse_active_instances"), gauge("synapse_heap_allocated_bytes", 1024)
def thread_ticks(pid):
    """CPU ticks (user+system) per thread name: which thread saturates when."""
    ticks = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                raw = open(f"/proc/{pid}/task/{tid}/stat").read()
            except OSError:
                continue
            name = raw[raw.index("(") + 1:raw.rindex(")")].rstrip("0123456789-")
            fields = raw[raw.rindex(")") + 2:].split()
            ticks[name] = ticks.get(name, 0) + int(fields[11]) + int(fields[12])
    except OSError:
        pass
    return ticks
def du_kib(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try: total += os.stat(os.path.join(d, f)).st_blocks // 2
            except OSError: pass
    return total
threads = open(csv[:-4] + "-threads.csv", "w")
threads.write("elapsed_s,node,thread,cpu_ticks\n")
with open(csv, "w") as out:
    out.write("elapsed_s,load1,cpu_busy_pct,cpu_iowait_pct,cpu_steal_pct,fsync_p50_us,fsync_max_us," + ",".join(f"{n}_rss_kib,{n}_anon_kib,{n}_heap_kib,{n}_active,{n}_disk_kib" for n, *_ in specs) + "\n")
    start = time.monotonic()
    for k in range(int(86400 / every) + 1):
        if os.path.exists(stop):
            break
        row = [str(round(time.monotonic() - start)), open("/proc/loadavg").read().split()[0]] + machine_cols()
        for node, pid, url, data in specs:
            active, heap = gauges(url)
            row += [str(status(pid, "VmRSS")), str(status(pid, "RssAnon")), str(heap), str(active), str(du_kib(data))]
            for name, t in sorted(thread_ticks(pid).items()):
                threads.write(f"{row[0]},{node},{name},{t}\n")
        threads.flush()
        out.write(",".join(row) + "\n"); out.flush()
        # next sample on the grid, however long this one took
        time.sleep(max(0.0, start + (k + 1) * every - time.monotonic()))
PY
    PIDS+=($!)
}
bench_cleanup_hook() { touch "$WORK/stop-sampler" 2>/dev/null || true; }

machine() {
    echo "machine: $(nproc) × $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
    synapse_provenance
    [ "$SYSTEM" = synapse ] || echo "system: $ETCD_VERSION (3 members, keeping $ETCD_KEEP_REVISIONS revisions; synapse is the load generator only)"
    echo "load average $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) at $(date -u +%FT%TZ)"
}

# TARGET_ARGS: the target-specific part of a `synapse bench` command line;
# the workload flags are the same for both targets.
if [ "$MODE" = sustained ] && [ "$SYSTEM" = etcd ]; then
    ensure_etcd
    say "3-member etcd on client ports ${ETCD_CLIENT_PORTS[*]}"
    machine | tee "$OUT_DIR/machine-sustained.txt" >&2
    # Revision mode compacts every 5 minutes down to the last N revisions.
    start_etcd ETCD_CLIENT_PORTS ETCD_PEER_PORTS sustained \
        --auto-compaction-mode revision --auto-compaction-retention "$ETCD_KEEP_REVISIONS"
    TARGET_ARGS=(--target etcd --endpoints "$ETCD_EPS")
    SAMPLE_PIDS=("${ETCD_PIDS[@]}")
    SAMPLE_URLS=() SAMPLE_DIRS=()
    for i in 0 1 2; do
        SAMPLE_URLS+=("http://127.0.0.1:${ETCD_CLIENT_PORTS[$i]}/metrics")
        SAMPLE_DIRS+=("$WORK/etcd$((i + 1))")
    done
elif [ "$MODE" = sustained ]; then
    say "3-node cluster on ports ${GRPC_PORTS[*]}"
    machine | tee "$OUT_DIR/machine-sustained.txt" >&2
    [ -z "${NODE_TOML:-}" ] || echo "node config: ${NODE_TOML}" | tee -a "$OUT_DIR/machine-sustained.txt" >&2
    printf '%s\n' "${NODE_TOML:-}" >"$WORK/node.toml"
    start_synapse 3 GRPC_PORTS HTTP_PORTS --config "$WORK/node.toml"
    TARGET_ARGS=(--endpoints "$SYN_EPS" --token-file "$SYN_TOKEN")
    SAMPLE_PIDS=("${SYN_PIDS[@]}")
    SAMPLE_URLS=() SAMPLE_DIRS=()
    for i in 0 1 2; do
        SAMPLE_URLS+=("http://127.0.0.1:${HTTP_PORTS[$i]}/metrics")
        SAMPLE_DIRS+=("$WORK/n$((i + 1))")
    done
    if [ "${LEADER_ONLY:-0}" = 1 ]; then
        # Every client on the leader: no forwarding, followers serve no client.
        TARGET_ARGS=(--endpoints "http://127.0.0.1:${GRPC_PORTS[$((LEADER - 1))]}" --token-file "$SYN_TOKEN")
        echo "clients: the leader only (${TARGET_ARGS[1]})" | tee -a "$OUT_DIR/machine-sustained.txt" >&2
    fi
fi

if [ "$MODE" = sustained ]; then
    if [ -z "${RATE:-}" ]; then
        say "closed-loop peak: $CLIENTS clients, ${PEAK_SECONDS}s, the last ${PEAK_TAIL_SECONDS}s count, mix $MIX (load $(cut -d' ' -f1 /proc/loadavg))"
        "$B" bench "${TARGET_ARGS[@]}" --clients "$CLIENTS" --duration "${PEAK_SECONDS}s" \
            --warmup 3s --mix "$MIX" --json "$OUT_DIR/peak.json" --quiet >&2
        # The steady peak: the mean of the last PEAK_TAIL_SECONDS full
        # seconds; the first as many are printed beside it.
        PEAK_OUT=$(python3 - "$OUT_DIR/peak.json" "$PEAK_TAIL_SECONDS" <<'PY'
import json, sys
tl = [s["ops"] for s in json.load(open(sys.argv[1]))["runs"][0]["timeline"]][:-1]
if len(tl) < 2 or sum(tl) == 0:
    sys.exit("the closed loop recorded no throughput")
n = max(1, min(int(sys.argv[2]), len(tl) // 2))
print(round(sum(tl[-n:]) / n, 1))
print(f"closed loop: first {n}s {sum(tl[:n]) / n:.0f} ops/s, last {n}s {sum(tl[-n:]) / n:.0f} ops/s")
PY
) || die "no peak from $OUT_DIR/peak.json"
        PEAK=${PEAK_OUT%%$'\n'*}
        echo "${PEAK_OUT#*$'\n'}" | tee -a "$OUT_DIR/machine-sustained.txt" >&2
        RATE=$(python3 -c "print(max(1, round($PEAK * $FRACTION)))")
    else
        PEAK="(not measured: RATE given)"
    fi
    say "peak $PEAK ops/s; open loop at $RATE ops/s for ${SUSTAIN_SECONDS}s (load $(cut -d' ' -f1 /proc/loadavg))"
    sampler "$OUT_DIR/rss-sustained.csv"
    "$B" bench "${TARGET_ARGS[@]}" --clients "$CLIENTS" --rate "$RATE" \
        --duration "${SUSTAIN_SECONDS}s" --warmup 0s --timeout 5s --mix "$MIX" \
        --json "$OUT_DIR/sustained.json" --quiet >&2 || echo "(bench exited non-zero)" >&2
    touch "$WORK/stop-sampler"
    machine | tee -a "$OUT_DIR/machine-sustained.txt" >&2
    python3 - "$OUT_DIR/sustained.json" "$OUT_DIR/rss-sustained.csv" "$WARM_SECONDS" "$PEAK" "$RATE" <<'PY' | tee "$OUT_DIR/report-sustained.txt"
import csv, json, statistics, sys
bench, rss_csv, warm, peak, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
run = json.load(open(bench))["runs"][0]
rows = list(csv.DictReader(open(rss_csv)))
nodes = [k[:-8] for k in rows[0] if k.endswith("_rss_kib")]
print(f"peak {peak} ops/s (closed loop); offered {rate:.0f} ops/s; achieved {run['throughput_ops_s']} ops/s; "
      f"ok {run['ok']}, errors {run['errors_total']} {run['errors'] or ''}, missed schedule {run['missed_schedule']}")
lat = run["latency_us"]
print(f"whole run (from intended send time): p50 {lat['p50']/1000:.2f} ms, p99 {lat['p99']/1000:.2f} ms, "
      f"p99.9 {lat['p999']/1000:.2f} ms, max {lat['max']/1000:.1f} ms")
minutes = {}
for s in run["timeline"]:
    minutes.setdefault(s["second"] // 60, []).append(s)
print()
print("| minute | ops/s | median of per-second p50 (ms) | median of per-second p99 (ms) | worst second max (ms) | load1 | CPU busy % | steal % | iowait % | fdatasync p50 / max (ms) |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
def machine_in(m):
    # sample rows cover the SAMPLE_SECONDS before their elapsed_s
    rs = [r for r in rows if m * 60 < int(r["elapsed_s"]) <= (m + 1) * 60]
    if not rs:
        return "- | - | - | - | -"
    med = lambda k: statistics.median(float(r[k]) for r in rs)
    return (f"{med('load1'):.1f} | {med('cpu_busy_pct'):.0f} | {max(float(r['cpu_steal_pct']) for r in rs):.0f}"
            f" | {max(float(r['cpu_iowait_pct']) for r in rs):.0f}"
            f" | {med('fsync_p50_us')/1000:.2f} / {max(float(r['fsync_max_us']) for r in rs)/1000:.1f}")
for m, secs in sorted(minutes.items()):
    span = min(60, max(s["second"] for s in secs) - 60 * m + 1)  # a partial last minute
    print(f"| {m} | {sum(s['ops'] for s in secs)/span:.0f} | {statistics.median(s['p50_us'] for s in secs)/1000:.2f}"
          f" | {statistics.median(s['p99_us'] for s in secs)/1000:.2f} | {max(s['max_us'] for s in secs)/1000:.1f} | {machine_in(m)} |")
full = [m for m, secs in sorted(minutes.items()) if len(secs) >= 50]
print()
if len(full) >= 2:
    first, last = minutes[full[0]], minutes[full[-1]]
    for q in ("p50_us", "p99_us"):
        a, b = statistics.median(s[q] for s in first), statistics.median(s[q] for s in last)
        print(f"drift {q[:3]}: minute {full[-1]} / minute {full[0]} = {b/a:.2f}")
    a, b = sum(s["ops"] for s in first), sum(s["ops"] for s in last)
    print(f"throughput: minute {full[-1]} / minute {full[0]} = {b/max(a,1):.2f}")
print()
# heap: the live heap the node itself reports (allocated, not freed);
# RSS minus heap is the allocator's retention and metadata, size-class
# rounding, thread stacks and memory allocated outside Rust. A scrape that
# failed is -1: its cell shows "-" and the summary skips it.
heap_of = lambda r, n: int(r.get(f"{n}_heap_kib", -1))
has_heap = any(heap_of(r, n) >= 0 for r in rows for n in nodes)
mib = lambda r, n, k: "-" if int(r[f"{n}_{k}_kib"]) < 0 else f"{int(r[f'{n}_{k}_kib'])/1024:.0f}"
cols = ["rss", "anon"] + (["heap"] if has_heap else []) + ["disk"]
print("| elapsed s | load1 | " + " | ".join(f"{n} {k if k != 'rss' else 'RSS'} MiB" for n in nodes for k in cols) + " |")
print("|---:|---:|" + "---:|" * (len(cols) * len(nodes)))
for r in rows:
    if int(r["elapsed_s"]) % 60 < 10 or r is rows[-1]:
        print(f"| {r['elapsed_s']} | {r['load1']} | " + " | ".join(mib(r, n, k) for n in nodes for k in cols) + " |")
warm_row = next((r for r in rows if int(r["elapsed_s"]) >= warm), rows[0])
end_row = rows[-1]
print()
print(f"RSS growth from {warm_row['elapsed_s']} s (after warm-up) to {end_row['elapsed_s']} s (end), target < 5 %:")
for n in nodes:
    a, b = int(warm_row[f"{n}_rss_kib"]), int(end_row[f"{n}_rss_kib"])
    print(f"  {n}: {a/1024:.0f} -> {b/1024:.0f} MiB, {100*(b-a)/max(a,1):+.1f} %")
if has_heap:
    print(f"live heap over the same span (what the node holds; RSS minus it is the allocator's):")
    for n in nodes:
        span = [heap_of(r, n) for r in rows if int(r["elapsed_s"]) >= int(warm_row["elapsed_s"]) and heap_of(r, n) >= 0]
        if not span:
            print(f"  {n}: no heap sample")
            continue
        a, b = span[0], span[-1]
        print(f"  {n}: {a/1024:.0f} -> {b/1024:.0f} MiB, {100*(b-a)/max(a,1):+.1f} % "
              f"(min {min(span)/1024:.0f}, max {max(span)/1024:.0f} MiB; {len(span)} samples)")
PY
else
    say "1 node, max_active_instances $ACTIVE, idle_timeout_ms $IDLE_MS; $INSTANCES instances in sequence (bounded ${INSTANCES_SECONDS}s)"
    machine | tee "$OUT_DIR/machine-instances.txt" >&2
    [ -z "${NODE_TOML:-}" ] || echo "node config: ${NODE_TOML}" | tee -a "$OUT_DIR/machine-instances.txt" >&2
    printf 'idle_timeout_ms = %d\n%s\n' "$IDLE_MS" "${NODE_TOML:-}" >"$WORK/node.toml"
    start_synapse 1 GRPC_PORTS HTTP_PORTS --config "$WORK/node.toml" --max-active-instances "$ACTIVE"
    SAMPLE_PIDS=("${SYN_PIDS[0]}") SAMPLE_URLS=("http://127.0.0.1:${HTTP_PORTS[0]}/metrics") SAMPLE_DIRS=("$WORK/n1")
    sampler "$OUT_DIR/rss-instances.csv"
    "$B" bench --endpoints "$SYN_EPS" --token-file "$SYN_TOKEN" --clients "$CLIENTS" \
        --instance-order sequential --instances "$INSTANCES" --ops "$INSTANCES" --prefix inst \
        --duration "${INSTANCES_SECONDS}s" --warmup 0s --timeout 10s --mix incr=100 \
        --json "$OUT_DIR/instances.json" --quiet >&2 || echo "(bench exited non-zero)" >&2
    say "last write done; sampling for ${SETTLE_SECONDS}s more"
    sleep "$SETTLE_SECONDS"
    touch "$WORK/stop-sampler"
    machine | tee -a "$OUT_DIR/machine-instances.txt" >&2
    python3 - "$OUT_DIR/instances.json" "$OUT_DIR/rss-instances.csv" "$ACTIVE" "$IDLE_MS" <<'PY' | tee "$OUT_DIR/report-instances.txt"
import csv, json, sys
bench, rss_csv, active, idle = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
run = json.load(open(bench))["runs"][0]
rows = list(csv.DictReader(open(rss_csv)))
created, t = [], 0
for s in run["timeline"]:
    t += s["ops"]
    created.append((s["second"], t))
def made_by(sec):
    return max((c for s, c in created if s <= sec), default=0)
print(f"instances created (acknowledged first writes): {run['ok']} in {run['elapsed_s']:.0f} s "
      f"({run['throughput_ops_s']} ops/s), errors {run['errors_total']} {run['errors'] or ''}; "
      f"max_active_instances {active}, idle_timeout_ms {idle}")
print()
print("| elapsed s | load1 | instances created | RSS MiB | anon MiB | live heap MiB | active instances | data dir MiB |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|")
step = max(1, len(rows) // 20)
heap = lambda r: f"{int(r['n1_heap_kib'])/1024:.0f}" if int(r.get("n1_heap_kib", -1)) >= 0 else "-"
for r in rows[::step] + ([rows[-1]] if (len(rows) - 1) % step else []):
    print(f"| {r['elapsed_s']} | {r['load1']} | {made_by(int(r['elapsed_s']))} | {int(r['n1_rss_kib'])/1024:.0f}"
          f" | {int(r['n1_anon_kib'])/1024:.0f} | {heap(r)} | {r['n1_active']} | {int(r['n1_disk_kib'])/1024:.0f} |")
peak = max(int(r["n1_rss_kib"]) for r in rows)
print()
print(f"peak RSS {peak/1024:.0f} MiB; max active instances seen {max(int(r['n1_active']) for r in rows)}")
# RSS per instance over the second half of the creation phase: ~0 if bounded.
during = [(made_by(int(r["elapsed_s"])), int(r["n1_rss_kib"])) for r in rows if int(r["elapsed_s"]) <= run["elapsed_s"]]
half = [p for p in during if p[0] >= during[-1][0] / 2] if during else []
if len(half) >= 2 and half[-1][0] > half[0][0]:
    (c0, r0), (c1, r1) = half[0], half[-1]
    print(f"second half of creation: {c0} -> {c1} instances, RSS {r0/1024:.0f} -> {r1/1024:.0f} MiB: "
          f"{(r1-r0)*1024/(c1-c0):.0f} bytes of RSS per instance created")
PY
fi
