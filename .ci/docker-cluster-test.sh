#!/usr/bin/env bash
# Docker test of the deployment layer: build the image offline, start the
# 3-node compose cluster (deploy/compose), write through node 2, restart
# node 1 (synapse-0, the bootstrap node), and check that no acknowledged write
# is lost, writes resume, and all nodes converge to one state hash.
#
# Skips (exit 0, loudly) when no Docker engine is reachable. Every wait is
# bounded in attempts and seconds; the compose project is removed with its
# volumes on exit, whatever happens.
#
# Env: SYNAPSE_IMAGE (default synapse:ci), SYNAPSE_BIN (prebuilt binary for the
# image; otherwise cargo build --release), CLUSTER_TEST_WRITES (default 20).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
t0=$(date +%s)
log() { echo "[docker-test +$(( $(date +%s) - t0 ))s] $*"; }
fail() { echo "[docker-test +$(( $(date +%s) - t0 ))s] FAIL: $*" >&2; exit 1; }

if ! docker info >/dev/null 2>&1; then
    echo "################################################################"
    echo "SKIPPED: docker cluster test (no Docker engine)"
    echo "################################################################"
    exit 0
fi

if command -v docker-compose >/dev/null 2>&1; then
    compose_bin=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    compose_bin=(docker compose)
else
    fail "neither docker-compose nor 'docker compose' is available"
fi

export SYNAPSE_IMAGE=${SYNAPSE_IMAGE:-synapse:ci}
writes=${CLUSTER_TEST_WRITES:-20}
project=synapse-ci-$$
compose_file=$repo/deploy/compose/docker-compose.yml
work=$(mktemp -d "${TMPDIR:-/tmp}/synapse-ci.XXXXXX")
compose() { "${compose_bin[@]}" -p "$project" -f "$compose_file" "$@"; }

cleanup() {
    rc=$?
    set +e
    if [[ $rc != 0 ]]; then
        echo "---- cluster state at failure ----" >&2
        compose ps >&2
        compose logs --no-color --tail=60 >&2
    fi
    compose down -v --remove-orphans -t 10 >/dev/null 2>&1
    rm -rf "$work"
    left=$(docker ps -aq --filter "label=com.docker.compose.project=$project")
    [[ -z "$left" ]] || { echo "WARNING: containers left behind: $left" >&2; docker rm -f $left >/dev/null 2>&1; }
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ image
log "building image $SYNAPSE_IMAGE offline"
deploy/build-offline-image.sh "$SYNAPSE_IMAGE"

# ------------------------------------------------------------------ config
docker run --rm --network none "$SYNAPSE_IMAGE" keygen >"$work/root.key"
grep -Eq '^[0-9a-f]{32,}$' "$work/root.key" || fail "keygen printed no key"
chmod 0644 "$work/root.key"
export SYNAPSE_ROOT_KEY=$work/root.key
# Free host ports for the published ports (the test itself uses docker exec).
read -r -a ports < <(python3 -c '
import socket
ss=[socket.socket() for _ in range(6)]
[s.bind(("127.0.0.1",0)) for s in ss]
print(" ".join(str(s.getsockname()[1]) for s in ss))')
export SYNAPSE_BIND=127.0.0.1
export SYNAPSE_0_GRPC_PORT=${ports[0]} SYNAPSE_0_HTTP_PORT=${ports[1]}
export SYNAPSE_1_GRPC_PORT=${ports[2]} SYNAPSE_1_HTTP_PORT=${ports[3]}
export SYNAPSE_2_GRPC_PORT=${ports[4]} SYNAPSE_2_HTTP_PORT=${ports[5]}

# ------------------------------------------------------------------ helpers
declare -A ids=()
ctr() {                                                 # container id of a service (cached)
    [[ -n "${ids[$1]:-}" ]] || ids[$1]=$(compose ps -q "$1")
    [[ -n "${ids[$1]}" ]] || { echo "no container for $1" >&2; return 1; }
    echo "${ids[$1]}"
}
sx() { local c; c=$(ctr "$1"); shift; timeout 20 docker exec "$c" /usr/local/bin/synapse "$@"; }
status_json() { sx "$1" cluster status -w json 2>/dev/null; }
jq_py() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# wait_until <seconds> <description> <command...>: bounded poll, 1 s apart.
wait_until() {
    local limit=$1 what=$2; shift 2
    local start=$SECONDS n=0
    while (( SECONDS - start < limit && n < limit * 2 )); do
        if "$@" >/dev/null 2>&1; then
            log "$what after $(( SECONDS - start ))s"; return 0
        fi
        n=$((n + 1)); sleep 1
    done
    fail "$what: not within ${limit}s"
}

node_ok() {   # healthy, voters [1,2,3], a leader known
    local svc=$1 h s
    h=$(docker inspect -f '{{.State.Health.Status}}' "$(ctr "$svc")") || return 1
    [[ $h == healthy ]] || return 1
    s=$(status_json "$svc") || return 1
    [[ $(jq_py 'sorted(d["voters"])==[1,2,3] and not d["learners"] and d["leader_id"]!=0' <<<"$s") == True ]]
}
all_ok() { node_ok synapse-0 && node_ok synapse-1 && node_ok synapse-2; }

acked=0
# write <n>: one increment through node 2 (synapse-1) with an idempotency key;
# retried with the same key (bounded) until acknowledged.
write() {
    local i=$1 try out
    for try in $(seq 1 30); do
        if out=$(sx synapse-1 invoke counter/ci incr --request-id "ci-$i" -w json 2>&1); then
            acked=$((acked + 1)); return 0
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
    echo "$ha"
}

# ------------------------------------------------------------------ up
log "starting compose project $project (${compose_bin[*]})"
t_up=$SECONDS
compose up -d
for svc in synapse-0 synapse-1 synapse-2; do ctr "$svc" >/dev/null || fail "$svc has no container"; done
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
hash1=$(converged)

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
hash2=$(converged)
[[ "$hash1" != "$hash2" ]] || fail "state hash did not change after more writes"

# Idempotency across the restart: replaying an acknowledged request id is a no-op.
sx synapse-2 invoke counter/ci incr --request-id "ci-1" -w json | jq_py 'd["deduplicated"]' | grep -qx True \
    || fail "a retried request id was applied twice"
wait_until 30 "still converged after the duplicate retry" converged

log "PASS: cluster up and healthy ${startup_s}s after compose up, writes resumed ${resume_s}s after restart, $acked writes, state hash/applied ${hash2}"
