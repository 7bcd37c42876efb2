#!/usr/bin/env bash
# Docker test of the deployment layer: build the image offline, start the
# 3-node compose cluster (deploy/compose), write through node 2, restart
# node 1 (synapse-0, the bootstrap node), and check that no acknowledged write
# is lost, writes resume, and all nodes converge to one state hash.
#
# Then the fault tests, each under a bounded client workload (unique request
# ids, retried with the same id on a rotating node until acknowledged):
#   (a) docker kill the leader, docker start it again;
#   (b) docker pause the leader past the election timeout, unpause;
#   (c) docker network disconnect the leader, reconnect it;
#   (d) rolling restart: docker restart each node, waiting until healthy.
# After each: final counter == number of distinct acknowledged ids (no
# acknowledged write lost, none applied twice), all nodes converge to one
# applied index and state hash, and the time from the fault to the first
# acknowledged write is recorded; a table of them is printed at the end.
#
# Skips (exit 0, loudly) when no Docker engine is reachable. Every wait is
# bounded in attempts and seconds; the compose project is removed with its
# volumes on exit, whatever happens.
#
# Env: SYNAPSE_IMAGE (default synapse:ci), SYNAPSE_BIN (prebuilt binary for the
# image; otherwise cargo build --release), CLUSTER_TEST_WRITES (default 20),
# FAULT_WRITES (writes per fault phase, default 10), FAULT_PHASE_SECONDS (time
# bound of a phase, default 45), FAULT_ATTEMPT_TIMEOUT (one attempt, default
# 5 s), FAULT_PAUSE_SECONDS (pause / disconnect length, default 4).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
t0=$(date +%s)
log_tag=docker-test
# Shared setup: image, key, ports, compose project, cleanup trap, helpers.
source "$repo/.ci/docker-lib.sh"

dc_require_docker "docker cluster test"
dc_setup synapse-ci
writes=${CLUSTER_TEST_WRITES:-20}

# ------------------------------------------------------------------ image
dc_build_image

# ------------------------------------------------------------------ config
dc_keygen
# Free host ports for the published ports (the test itself uses docker exec).
dc_ports

# ------------------------------------------------------------------ helpers
acked=0
acked_file=$work/acked-ids        # every acknowledged request id, one a line
: >"$acked_file"
record_ack() { echo "$1" >>"$acked_file"; acked=$(sort -u "$acked_file" | wc -l); }
# write <n>: one increment through node 2 (synapse-1) with an idempotency key;
# retried with the same key (bounded) until acknowledged.
write() {
    local i=$1 try out
    for try in $(seq 1 30); do
        if out=$(sx synapse-1 invoke counter/ci incr --request-id "ci-$i" -w json 2>&1); then
            record_ack "ci-$i"; return 0
        fi
        sleep 0.5
    done
    fail "write $i not acknowledged after 30 attempts: $out"
}

converged() {   # same applied index and state hash on all three, counter == acked
    local a b c
    a=$(status_json synapse-0) && b=$(status_json synapse-1) && c=$(status_json synapse-2) || return 1
    local ha hb hc
    ha=$(jq_py 'd["state_hash"]+" "+str(d["applied_index"])' <<<"$a")
    hb=$(jq_py 'd["state_hash"]+" "+str(d["applied_index"])' <<<"$b")
    hc=$(jq_py 'd["state_hash"]+" "+str(d["applied_index"])' <<<"$c")
    [[ -n "$ha" && "$ha" == "$hb" && "$hb" == "$hc" ]] || return 1
    local svc v
    for svc in synapse-0 synapse-1 synapse-2; do
        v=$(sx "$svc" invoke counter/ci get -w json 2>/dev/null | jq_py 'd["reply"]["value"]') || return 1
        [[ "$v" == "$acked" ]] || return 1
    done
    conv_hash=$ha    # read by callers after a successful wait_until
    echo "$ha"
}
conv_hash=""

# ------------------------------------------------------------------ up
log "starting compose project $project (${compose_bin[*]})"
t_up=$SECONDS
compose up -d
cache_ctrs synapse-0 synapse-1 synapse-2
wait_until 90 "all 3 nodes healthy with voters [1,2,3]" all_ok
startup_s=$(( SECONDS - t_up ))
for svc in synapse-0 synapse-1 synapse-2; do
    log "$svc: $(status_json "$svc" | jq_py '"node %d role %s leader %d voters %s" % (d["node_id"], d["role"], d["leader_id"], d["voters"])')"
done

# The published ports work: /readyz and /metrics of node 1 from the host.
python3 - "$SYNAPSE_0_HTTP_PORT" <<'PY' || fail "published HTTP port of synapse-0 does not answer /readyz and /metrics"
import sys, urllib.request
port = sys.argv[1]
for path in ("/readyz", "/metrics"):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        assert r.status == 200, (path, r.status)
PY
log "published ports answer: http://127.0.0.1:$SYNAPSE_0_HTTP_PORT/readyz and /metrics"

# ------------------------------------------------------------------ writes
t_w=$SECONDS
for i in $(seq 1 "$writes"); do write "$i"; done
log "$acked writes acknowledged through synapse-1 in $(( SECONDS - t_w ))s"
wait_until 30 "all nodes converged (value $acked)" converged
hash1=$conv_hash

# ------------------------------------------------------------------ restart node 1
log "docker restart synapse-0 (node 1)"
t_r=$(date +%s.%N)
docker restart -t 10 "$(ctr synapse-0)" >/dev/null
# The first write after the restart; measures how long until writes resume.
write $((writes + 1))
resume_s=$(python3 -c "import time; print(round(time.time() - $t_r, 2))")
log "first write after restart acknowledged ${resume_s}s after 'docker restart' began"
for i in $(seq $((writes + 2)) $((2 * writes))); do write "$i"; done
log "$acked writes acknowledged in total"
wait_until 90 "synapse-0 back: healthy, voters [1,2,3]" all_ok
wait_until 30 "all nodes converged after restart (value $acked)" converged
hash2=$conv_hash
[[ "$hash1" != "$hash2" ]] || fail "state hash did not change after more writes"

# Idempotency across the restart: replaying an acknowledged request id is a no-op.
sx synapse-2 invoke counter/ci incr --request-id "ci-1" -w json | jq_py 'd["deduplicated"]' | grep -qx True \
    || fail "a retried request id was applied twice"
wait_until 30 "still converged after the duplicate retry" converged

log "restart test passed: cluster up and healthy ${startup_s}s after compose up, writes resumed ${resume_s}s after restart, $acked writes, state hash/applied ${hash2}"

# ================================================================== fault tests
# Each fault runs a bounded client workload: FAULT_WRITES increments per phase,
# each with a unique request id, sent with `docker exec` (traffic stays on the
# compose network) to a rotating node; a failed or timed-out attempt is retried
# with the SAME request id on the next node until acknowledged or the phase's
# time bound (FAULT_PHASE_SECONDS) hits. An id still unacknowledged then is
# retried after the fault is healed (bounded), so the set of acknowledged ids
# is exact and the final counter must equal its size.
fault_writes=${FAULT_WRITES:-10}
phase_limit=${FAULT_PHASE_SECONDS:-45}
attempt_timeout=${FAULT_ATTEMPT_TIMEOUT:-5}
pause_s=${FAULT_PAUSE_SECONDS:-4}
svcs=(synapse-0 synapse-1 synapse-2)
network=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$(ctr synapse-0)" | awk '{print $1}')
[[ -n "$network" ]] || fail "cannot find the compose network of synapse-0"
rr=0
pending=()            # ids whose time bound hit before an acknowledgement
first_ack_at=""
summary=()            # rows: fault|recovery|acked|converge


# try_write <id>: one attempt on the next node in rotation.
try_write() {
    local svc=${svcs[$((rr % 3))]} c
    rr=$((rr + 1))
    c=$(ctr "$svc") || return 1
    timeout "$attempt_timeout" docker exec "$c" /usr/local/bin/synapse \
        invoke counter/ci incr --request-id "$1" -w json >/dev/null 2>&1
}

# load <tag> <count>: bounded workload; sets first_ack_at on its first ack.
load() {
    local tag=$1 count=$2 i id start=$SECONDS n=0
    for ((i = 1; i <= count; i++)); do
        id="$tag-$i"
        until try_write "$id"; do
            if (( SECONDS - start >= phase_limit )); then
                log "  $tag: time bound ${phase_limit}s hit, $id unacknowledged (retried after healing)"
                pending+=("$id"); return 0
            fi
            sleep 0.2
        done
        record_ack "$id"; n=$((n + 1))
        [[ -n "$first_ack_at" ]] || first_ack_at=$(now)
    done
    log "  $tag: $n/$count writes acknowledged in $(( SECONDS - start ))s"
}

# settle_pending: retry every unacknowledged id (same id) until acknowledged.
settle_pending() {
    local id start=$SECONDS
    for id in "${pending[@]}"; do
        until try_write "$id"; do
            (( SECONDS - start < 60 )) || fail "request id $id never acknowledged (60 s after healing)"
            sleep 0.5
        done
        record_ack "$id"
    done
    pending=()
}

# after_fault <name> <fault start>: heal already done; wait for the cluster,
# check no acknowledged write is lost and all nodes converge; record the row.
after_fault() {
    local name=$1 t_f=$2 rec conv t_h
    [[ -n "$first_ack_at" ]] || fail "$name: no write acknowledged at all"
    rec=$(since "$t_f" "$first_ack_at")
    settle_pending
    t_h=$SECONDS
    wait_until 90 "$name: all 3 nodes healthy, voters [1,2,3], leader known" all_ok
    wait_until 60 "$name: converged, counter == $acked distinct acknowledged ids" converged
    conv=$(( SECONDS - t_h ))
    log "$name: PASS (first write acknowledged ${rec}s after the fault, $acked ids, $conv_hash)"
    summary+=("$name|$rec|$acked|$conv")
}

# ---------------------------------------------------------- (a) kill the leader
victim=$(leader_svc) || fail "no leader known before the kill test"
log "FAULT (a): docker kill $victim (the leader)"
first_ack_at=""; t_f=$(now)
docker kill "$(ctr "$victim")" >/dev/null
load kill-a "$fault_writes"
log "  docker start $victim"
docker start "$(ctr "$victim")" >/dev/null
load kill-b "$fault_writes"
after_fault "kill leader ($victim)" "$t_f"

# ---------------------------------------------------------- (b) pause the leader
victim=$(leader_svc) || fail "no leader known before the pause test"
log "FAULT (b): docker pause $victim (the leader) for ${pause_s}s"
first_ack_at=""; t_f=$(now)
docker pause "$(ctr "$victim")" >/dev/null
( sleep "$pause_s"; docker unpause "$(ctr "$victim")" >/dev/null ) &
unpauser=$!
load pause-a "$fault_writes"
wait "$unpauser" || fail "docker unpause $victim failed"
[[ $(docker inspect -f '{{.State.Paused}}' "$(ctr "$victim")") == false ]] || fail "$victim still paused"
log "  $victim unpaused"
load pause-b "$fault_writes"
after_fault "pause leader ${pause_s}s ($victim)" "$t_f"

# ---------------------------------------------------------- (c) partition the leader
victim=$(leader_svc) || fail "no leader known before the network test"
log "FAULT (c): docker network disconnect $network $victim (the leader)"
first_ack_at=""; t_f=$(now); t_dc=$SECONDS
docker network disconnect "$network" "$(ctr "$victim")"
load net-a "$fault_writes"
while (( SECONDS - t_dc < pause_s )); do sleep 0.5; done   # cut off past the election timeout
log "  docker network connect $network $victim (alias $victim)"
docker network connect --alias "$victim" "$network" "$(ctr "$victim")"
load net-b "$fault_writes"
after_fault "disconnect leader ($victim)" "$t_f"

# ---------------------------------------------------------- (d) rolling restart
for svc in "${svcs[@]}"; do
    role=follower; [[ "$(leader_svc)" == "$svc" ]] && role=leader
    log "FAULT (d): rolling restart: docker restart $svc ($role)"
    first_ack_at=""; t_f=$(now)
    # The workload runs while `docker restart` (graceful stop, then start) is
    # under way, so the recovery time is the write outage, not the restart.
    docker restart -t 10 "$(ctr "$svc")" >/dev/null &
    restarter=$!
    load "roll-$svc" "$fault_writes"
    wait "$restarter" || fail "docker restart $svc failed"
    after_fault "rolling restart $svc ($role)" "$t_f"
done

# ---------------------------------------------------------- summary
wait_until 60 "final convergence check" converged
final=$conv_hash
echo
echo "Recovery times (fault → first acknowledged write; converge = healed → all nodes healthy and equal):"
printf '%-36s %14s %12s %13s\n' "fault" "recovery (s)" "acked ids" "converge (s)"
for row in "${summary[@]}"; do
    IFS='|' read -r f r a c <<<"$row"
    printf '%-36s %14s %12s %13s\n' "$f" "$r" "$a" "$c"
done
echo
log "PASS: restart + 4 fault tests, $acked acknowledged writes, none lost; final state hash/applied $final; total $(( $(date +%s) - t0 ))s"
