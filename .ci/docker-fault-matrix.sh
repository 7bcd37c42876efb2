#!/usr/bin/env bash
# Fault matrix on the 3-node Docker compose cluster (deploy/compose), with
# recorded client histories checked for linearizability.
#
# For each fault class: start the history recorder (`synapse bench
# --workload register|counter --record-history`) on the host against all 3
# nodes' published gRPC ports; require >= MIN_OPS_BEFORE successful ops
# before the fault (a run only counts if it did real work; a count, not a
# rate, so a slow shared host cannot fail it); inject; hold; heal; a
# final write through the CLI must then succeed (time from healing to it =
# recovery); the recorder stops and reads every key once more; then all 3
# nodes must be healthy voters with equal applied index and state hash, and
# `synapse check-history` must find the history linearizable (for counters:
# the final value accounts for every acknowledged increment).
#
# Classes: none (baseline), leader-kill, node-kill, pause (docker pause of
# the leader, longer than the 1 s election timeout), leader-isolation
# (docker network disconnect), partition-2-1 (the leader cut from both peers
# with iptables, still reachable by clients), lossy (netem loss 20% on every
# node), delay (netem delay 100 ms ± 30 on every node), clock-skew (the leader's clock moved
# past max_clock_offset through --debug-clock-skew-file), membership (remove
# a follower, wipe it, re-add it under a new id), rolling-restart (docker restart each node
# in turn). tc and iptables run inside each container's network namespace
# from the host (nsenter -t <pid> -n tc ...), so the image needs nothing. On
# kernels without sch_netem, lossy uses iptables' statistic match and delay a
# tbf rate limit (queueing delay up to 100 ms); the script says so.
#
# Env:
#   SYNAPSE_BIN      prebuilt binary for the image and the host-side recorder
#                    (otherwise cargo build --release)
#   SYNAPSE_IMAGE    image tag (default synapse:faults)
#   FAULTS_LONG=1    long tier: longer faults, FAULTS_REPS repetitions (3),
#                    both workloads for every class
#   FAULTS_CLASSES   space-separated subset of the classes above
#   FAULTS_PLANTED=stale-reads
#                    planted-bug mode: the two followers serve stale reads
#                    (--debug-unsafe-stale-reads); each run PASSES only if
#                    check-history reports the violation (default classes:
#                    none delay)
#   MIN_OPS_BEFORE   required successful ops before the fault (50)
#   FAULTS_OUT       keep histories and check outputs in this directory
#
# Skips (exit 0, loudly) when no Docker engine is reachable. Everything it
# starts it stops (trap); every wait is bounded in attempts and seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
t0=$(date +%s)
log_tag=fault-matrix
source "$repo/.ci/docker-lib.sh"

dc_require_docker "docker fault matrix"

# ------------------------------------------------------------------ host tools
need_pkgs=()
command -v tc >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v nsenter >/dev/null 2>&1 || need_pkgs+=(util-linux)
command -v iptables >/dev/null 2>&1 || need_pkgs+=(iptables)
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
if (( ${#need_pkgs[@]} )); then
    sudo=(); [[ $(id -u) == 0 ]] || sudo=(sudo -n)
    log "installing ${need_pkgs[*]}"
    timeout 300 "${sudo[@]}" apt-get update -qq >/dev/null || fail "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive timeout 300 "${sudo[@]}" apt-get install -y -qq "${need_pkgs[@]}" >/dev/null \
        || fail "cannot install ${need_pkgs[*]}"
fi
nsenter_cmd=(nsenter); [[ $(id -u) == 0 ]] || nsenter_cmd=(sudo -n nsenter)

export SYNAPSE_IMAGE=${SYNAPSE_IMAGE:-synapse:faults}
dc_setup synapse-faults

long=${FAULTS_LONG:-0}
planted=${FAULTS_PLANTED:-}
min_before=${MIN_OPS_BEFORE:-50}
all_classes="none leader-kill node-kill pause leader-isolation partition-2-1 lossy delay clock-skew membership rolling-restart"
if [[ -n "$planted" ]]; then
    [[ "$planted" == stale-reads ]] || fail "unknown FAULTS_PLANTED=$planted (stale-reads)"
    classes=${FAULTS_CLASSES:-"none delay"}
else
    classes=${FAULTS_CLASSES:-$all_classes}
fi
for c in $classes; do [[ " $all_classes " == *" $c "* ]] || fail "unknown class $c (known: $all_classes)"; done
if [[ "$long" == 1 ]]; then
    reps=${FAULTS_REPS:-3}; pre_s=5; hold_s=15; post_s=10; clients=16; workloads="register counter"
else
    reps=1; pre_s=4; hold_s=4; post_s=2; clients=16; workloads=""
fi
op_timeout=1s      # per operation; an answer later than this is "unknown"
out=${FAULTS_OUT:-$work/out}
mkdir -p "$out"

# ------------------------------------------------------------------ binary + image
if [[ -z "${SYNAPSE_BIN:-}" ]]; then
    log "cargo build --release --bin synapse"
    cargo build --release --locked --bin synapse
    SYNAPSE_BIN=${CARGO_TARGET_DIR:-$repo/target}/release/synapse
fi
bin=$(realpath "$SYNAPSE_BIN")
export SYNAPSE_BIN=$bin
[[ -x "$bin" ]] || fail "no binary at $bin"
dc_build_image
dc_keygen
dc_ports

# Per-node clock-skew files (read by the node every 200 ms), and for the
# planted-bug mode the unsafe flag on both followers: an override file.
override=$work/faults.override.yml
{
    echo 'version: "3.8"'
    echo 'services:'
    for i in 0 1 2; do
        mkdir -p "$work/skew/synapse-$i"; echo 0 >"$work/skew/synapse-$i/ms"
        chmod 0755 "$work/skew" "$work/skew/synapse-$i"; chmod 0644 "$work/skew/synapse-$i/ms"
        echo "  synapse-$i:"
        echo "    environment:"
        echo "      SYNAPSE_DEBUG_CLOCK_SKEW_FILE: /run/synapse-skew/ms"
        if [[ -n "$planted" && $i != 0 ]]; then
            echo '      SYNAPSE_DEBUG_UNSAFE: "1"'
            echo '      SYNAPSE_DEBUG_UNSAFE_STALE_READS: "true"'
        fi
        echo "    volumes:"
        echo "      - $work/skew/synapse-$i:/run/synapse-skew:ro"
    done
} >"$override"
dc_compose_extra=("$override")

rows=()          # summary rows
failures=0
failed_runs=()   # "tag: verdict" of each failed run, for the final message
print_table() {
    (( ${#rows[@]} )) || return 0
    echo
    echo "Fault matrix${planted:+ (PLANTED BUG: $planted)}: ops = recorded operations, ok / unknown = outcomes,"
    echo "ops/s = successful ops/s before the fault, recovery = healed → first acknowledged CLI write,"
    echo "gap = longest stretch with no acknowledged write, lost = acknowledged increments missing (counter)"
    printf '%-17s %-9s %7s %7s %8s %8s %9s %7s %5s  %s\n' class workload ops ok unknown "ops/s" "recovery" gap lost verdict
    local r
    for r in "${rows[@]}"; do
        IFS='|' read -r a b c d e f g h i j <<<"$r"
        printf '%-17s %-9s %7s %7s %8s %8s %9s %7s %5s  %s\n' "$a" "$b" "$c" "$d" "$e" "$f" "$g" "$h" "$i" "$j"
    done
    echo
}

nspid() { docker inspect -f '{{.State.Pid}}' "$(ctr "$1")"; }
ntc() { local p; p=$(nspid "$1"); shift; timeout 10 "${nsenter_cmd[@]}" -t "$p" -n tc "$@"; }
# The node's interface on the compose network: eth0 at first, another name
# after a `docker network disconnect` + `connect`.
nif() {
    local p; p=$(nspid "$1")
    timeout 10 "${nsenter_cmd[@]}" -t "$p" -n ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -v '^lo$' | head -1
}
nipt() { local p; p=$(nspid "$1"); shift; timeout 10 "${nsenter_cmd[@]}" -t "$p" -n iptables "$@"; }
clear_netem() { local s; for s in synapse-0 synapse-1 synapse-2; do ntc "$s" qdisc del dev "$(nif "$s")" root >/dev/null 2>&1 || true; done; }
dc_cleanup_hook() {
    clear_netem
    print_table
    [[ -z "${FAULTS_OUT:-}" ]] || log "histories kept in $out"
}

network=""
ip_of() { docker inspect -f "{{(index .NetworkSettings.Networks \"$network\").IPAddress}}" "$(ctr "$1")"; }
others() { local s; for s in synapse-0 synapse-1 synapse-2; do [[ $s == "$1" ]] || echo "$s"; done; }

# ------------------------------------------------------------------ up
log "starting compose project $project (${compose_bin[*]})"
compose up -d
cache_ctrs synapse-0 synapse-1 synapse-2
wait_until 120 "all 3 nodes healthy voters, a leader" all_ok
network=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$(ctr synapse-0)" | awk '{print $1}')
[[ -n "$network" ]] || fail "cannot find the compose network"
docker cp "$(ctr synapse-0):/var/lib/synapse/root.token" "$work/root.token" >/dev/null \
    || fail "cannot copy the root token out of synapse-0"
export SYNAPSE_TOKEN_FILE=$work/root.token
endpoints="http://127.0.0.1:${grpc_port[0]},http://127.0.0.1:${grpc_port[1]},http://127.0.0.1:${grpc_port[2]}"
# From here on, status goes through the published ports with the host's
# binary: a `docker exec` costs about a second on a loaded 2-core machine.
status_json() { timeout 10 "$bin" cluster status -w json --endpoint "http://127.0.0.1:${grpc_port[${1#synapse-}]}" 2>/dev/null; }

# Does this kernel have sch_netem? (Probed in a node's namespace.)
have_netem=0
if ntc synapse-0 qdisc add dev "$(nif synapse-0)" root netem delay 1ms >/dev/null 2>&1; then
    have_netem=1; ntc synapse-0 qdisc del dev "$(nif synapse-0)" root >/dev/null 2>&1 || true
else
    echo "NOTE: this kernel has no sch_netem: lossy uses iptables' statistic match, delay a tbf rate limit"
fi

converged() {   # same applied index and state hash on all three
    local a b c
    a=$(status_json synapse-0 | jq_py 'd["state_hash"]+" "+str(d["applied_index"])') || return 1
    b=$(status_json synapse-1 | jq_py 'd["state_hash"]+" "+str(d["applied_index"])') || return 1
    c=$(status_json synapse-2 | jq_py 'd["state_hash"]+" "+str(d["applied_index"])') || return 1
    [[ -n "$a" && "$a" == "$b" && "$b" == "$c" ]]
}

# ------------------------------------------------------------------ faults
# inject_<class> / heal_<class>; `victim` is set by inject.
victim=""
inject_none() { :; }
heal_none() { :; }
inject_leader-kill() { victim=$(leader_svc) || fail "no leader"; docker kill "$(ctr "$victim")" >/dev/null; }
heal_leader-kill() { docker start "$(ctr "$victim")" >/dev/null; }
inject_node-kill() { victim=synapse-$((RANDOM % 3)); docker kill "$(ctr "$victim")" >/dev/null; }
heal_node-kill() { docker start "$(ctr "$victim")" >/dev/null; }
inject_pause() { victim=$(leader_svc) || fail "no leader"; docker pause "$(ctr "$victim")" >/dev/null; }
heal_pause() { docker unpause "$(ctr "$victim")" >/dev/null; }
inject_leader-isolation() { victim=$(leader_svc) || fail "no leader"; docker network disconnect "$network" "$(ctr "$victim")"; }
heal_leader-isolation() { docker network connect --alias "$victim" "$network" "$(ctr "$victim")"; }
# iptables rules in the leader's namespace drop everything to and from both
# peers; its clients (through the published port) still reach it.
part_rules() {
    local op=$1 o ip
    for o in $(others "$victim"); do
        ip=$(ip_of "$o")
        nipt "$victim" "$op" INPUT -s "$ip" -j DROP
        nipt "$victim" "$op" OUTPUT -d "$ip" -j DROP
    done
}
inject_partition-2-1() { victim=$(leader_svc) || fail "no leader"; part_rules -I; }
heal_partition-2-1() { part_rules -D; }
netem_all() { local s; for s in synapse-0 synapse-1 synapse-2; do ntc "$s" qdisc add dev "$(nif "$s")" root netem "$@"; done; }
# Kernels without sch_netem (e.g. some microVMs): loss through iptables'
# statistic match; delay as a rate-limited link (tbf), whose queue delays
# packets by up to its latency bound under load. Said so in the log.
loss_rule() { local s; for s in synapse-0 synapse-1 synapse-2; do nipt "$s" "$1" OUTPUT -m statistic --mode random --probability 0.2 -j DROP; done; }
inject_lossy() {
    victim=all
    if (( have_netem )); then netem_all loss 20%; else log "  (no netem: iptables statistic drop 20%)"; loss_rule -I; fi
}
heal_lossy() { if (( have_netem )); then clear_netem; else loss_rule -D; fi; }
inject_delay() {
    victim=all
    if (( have_netem )); then netem_all delay 100ms 30ms; return; fi
    log "  (no netem: tbf rate 2mbit, up to 100 ms queueing delay)"
    local s; for s in synapse-0 synapse-1 synapse-2; do ntc "$s" qdisc add dev "$(nif "$s")" root tbf rate 2mbit burst 16kb latency 100ms; done
}
heal_delay() { clear_netem; }
inject_clock-skew() {
    # Beyond max_clock_offset_ms (500): the node must report itself
    # unhealthy and stop leading, without breaking linearizability.
    victim=$(leader_svc) || fail "no leader"
    echo 2000 >"$work/skew/$victim/ms"
}
heal_clock-skew() { echo 0 >"$work/skew/$victim/ms"; }
inject_membership() {
    # A follower other than synapse-0 (which would bootstrap a new cluster
    # on an empty volume) is removed, stopped and wiped while load runs.
    local l id vol
    l=$(leader_svc) || fail "no leader"
    victim=synapse-1; [[ $l != synapse-1 ]] || victim=synapse-2
    id=$(status_json "$victim" | jq_py 'd["node_id"]') || fail "no id for $victim"
    # An operator retries a refused removal (a voter may be briefly behind).
    local tries=0
    until sx "$l" cluster remove "$id" >/dev/null; do
        tries=$((tries + 1)); (( tries < 10 )) || fail "cluster remove $id refused $tries times"
        sleep 1
    done
    compose stop -t 5 "$victim" >/dev/null 2>&1
    compose rm -f "$victim" >/dev/null 2>&1
    forget_ctr "$victim"
    vol=$(docker volume ls -q --filter "label=com.docker.compose.project=$project" \
        --filter "label=com.docker.compose.volume=$victim-data")
    [[ -n "$vol" ]] || vol=$(docker volume ls -q | grep -E "^${project//-/}_?$victim-data$|^${project}_$victim-data$" | head -1)
    [[ -n "$vol" ]] && docker volume rm "$vol" >/dev/null
}
heal_membership() {
    # Re-added: the empty node's id was removed (tombstoned), so it is
    # admitted under a new id the leader allocates, as a learner, and is
    # promoted to voter once caught up. Ids are never reused.
    compose up -d --no-deps "$victim" >/dev/null 2>&1
    cache_ctrs "$victim"
}
inject_rolling-restart() {
    victim=all
    local s
    for s in synapse-0 synapse-1 synapse-2; do
        docker restart -t 10 "$(ctr "$s")" >/dev/null
        wait_until 90 "  rolling restart: $s healthy again" node_ok "$s"
    done
}
heal_rolling-restart() { :; }

# ------------------------------------------------------------------ one run
# probe_write: one acknowledged CLI write after healing, through any node.
probe_write() {
    local start=$SECONDS n=0 ep
    while (( SECONDS - start < 90 && n < 300 )); do
        ep=http://127.0.0.1:${grpc_port[$((n % 3))]}
        if timeout 5 "$bin" invoke counter/fault-probe incr --endpoint "$ep" -w json >/dev/null 2>&1; then
            return 0
        fi
        n=$((n + 1)); sleep 0.2
    done
    return 1
}

# analyze <history> <fault unix> <heal unix>: ops ok unknown ok_before rate_before gap
analyze() {
    python3 - "$1" "$2" "$3" <<'PY'
import json, sys
hist, t_fault, t_heal = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
meta = json.load(open(hist + ".meta.json"))
start = meta["start_unix_ns"] / 1e9
ops = [json.loads(l) for l in open(hist) if l.strip()]
ok = [o for o in ops if o["outcome"]["kind"] == "ok"]
unknown = sum(1 for o in ops if o["outcome"]["kind"] == "unknown")
fault_ns = (t_fault - start) * 1e9
before = [o for o in ok if o["complete_ns"] <= fault_ns]
rate = len(before) / max(fault_ns / 1e9, 1e-3)
writes = sorted(o["complete_ns"] for o in ok if o["call"]["kind"] != "read")
gaps = [b - a for a, b in zip(writes, writes[1:])]
gap = max(gaps) / 1e9 if gaps else float("nan")
print(len(ops), len(ok), unknown, len(before), f"{rate:.0f}", f"{gap:.2f}")
PY
}

run_class() {
    local class=$1 wl=$2 rep=$3 tag hist rec_pid stop t_fault t_heal t_probe recovery
    tag="$class-$wl-$rep"
    hist=$out/$tag.jsonl
    stop=$work/$tag.stop
    log "=== $class ($wl, run $rep)"
    "$bin" bench --workload "$wl" --record-history "$hist" --stop-file "$stop" \
        --endpoints "$endpoints" --clients "$clients" --clients-per-key 4 \
        --duration 300s --timeout "$op_timeout" --prefix "f$rep-$class-$wl" --quiet \
        >"$out/$tag.record.log" 2>&1 &
    rec_pid=$!
    sleep "$pre_s"
    kill -0 "$rec_pid" 2>/dev/null || { cat "$out/$tag.record.log" >&2; fail "$tag: the recorder died before the fault"; }
    t_fault=$(now)
    log "  inject $class"
    "inject_$class"
    log "  injected (victim ${victim:-none}); holding ${hold_s}s"
    [[ $class == rolling-restart ]] || sleep "$hold_s"
    "heal_$class"
    t_heal=$(now)
    log "  healed"
    if probe_write; then
        t_probe=$(now); recovery=$(since "$t_heal" "$t_probe")
    else
        recovery=FAILED
    fi
    sleep "$post_s"
    touch "$stop"
    # The recorder then reads every key once (bounded 60 s per key).
    local waited=0
    while kill -0 "$rec_pid" 2>/dev/null && (( waited < 400 )); do sleep 0.5; waited=$((waited + 1)); done
    if kill -0 "$rec_pid" 2>/dev/null; then kill "$rec_pid"; fi
    local rec_rc=0; wait "$rec_pid" || rec_rc=$?
    clear_netem
    wait_until 120 "  $tag: all 3 nodes healthy voters, a leader" all_ok
    wait_until 90 "  $tag: equal applied index and state hash on all nodes" converged
    local a ops ok unknown before rate gap chk_rc=0 verdict lost
    read -r ops ok unknown before rate gap < <(analyze "$hist" "$t_fault" "$t_heal")
    "$bin" check-history "$hist" --model "$wl" --json >"$out/$tag.check" 2>&1 || chk_rc=$?
    sed -n '1,/^verdict/p' "$out/$tag.check" | sed 's/^/    /'
    lost=$(grep -m1 '^{' "$out/$tag.check" | jq_py 'd["acked_lost"]' 2>/dev/null || echo "?")
    [[ $wl == counter ]] || lost=-
    a=$(grep -m1 '^verdict:' "$out/$tag.check" | awk '{print $2}'); a=${a:-ERROR}
    if [[ -n "$planted" ]]; then
        if [[ $a == VIOLATION ]]; then verdict="CAUGHT (planted bug found)"; else verdict="MISSED ($a)"; failures=$((failures + 1)); fi
    elif (( rec_rc != 0 )); then
        verdict="FAIL (recorder exit $rec_rc: $(tail -1 "$out/$tag.record.log"))"; failures=$((failures + 1))
    elif (( before < min_before )); then
        verdict="FAIL (only $before ok ops before the fault, need $min_before)"; failures=$((failures + 1))
    elif [[ $recovery == FAILED ]]; then
        verdict="FAIL (no write within 90 s of healing)"; failures=$((failures + 1))
    elif (( chk_rc != 0 )) || [[ $a != LINEARIZABLE ]]; then
        verdict="FAIL ($a)"; failures=$((failures + 1))
    else
        verdict=PASS
    fi
    rows+=("$class|$wl|$ops|$ok|$unknown|$rate|$recovery|$gap|$lost|$verdict")
    [[ $verdict == PASS || $verdict == CAUGHT* ]] || failed_runs+=("$tag: $verdict")
    log "  $tag: $verdict"
}

i=0
for rep in $(seq 1 "$reps"); do
    for class in $classes; do
        if [[ -n "$workloads" ]]; then wls=$workloads
        elif (( i % 2 == 0 )); then wls=register
        else wls=counter
        fi
        for wl in $wls; do run_class "$class" "$wl" "$rep"; done
        i=$((i + 1))
    done
done

print_table
rows=()   # printed; the exit hook must not print them again
if (( failures > 0 )); then
    fail "$failures run(s) failed: $(printf '%s; ' "${failed_runs[@]}")"
fi
log "PASS: every run${planted:+ caught the planted bug}; total $(( $(date +%s) - t0 ))s"
