# Shared setup for the Docker cluster scripts (.ci/docker-cluster-test.sh,
# .ci/docker-fault-matrix.sh). Sourced, not run. It builds the offline image,
# writes a root key, picks free host ports, starts/stops the 3-node compose
# project (deploy/compose) and offers bounded helpers to inspect it.
#
#   log_tag=my-test; source .ci/docker-lib.sh
#   dc_require_docker "my test"      # SKIPPED banner + exit 0 without an engine
#   dc_setup synapse-mytest          # compose binary, project, work dir, traps
#   dc_build_image; dc_keygen; dc_ports
#   compose up -d; wait_until 90 "healthy" all_ok
#
# Callers may set dc_compose_extra (more -f files) before compose calls, and
# define dc_cleanup_hook (run first on exit, e.g. to remove netem qdiscs).
# Every wait is bounded in attempts and seconds; the compose project is
# removed with its volumes on exit, whatever happens.

t0=${t0:-$(date +%s)}
log_tag=${log_tag:-docker}
log() { echo "[$log_tag +$(( $(date +%s) - t0 ))s] $*"; }
# The reason is kept and printed again after the cluster's logs at exit: a
# CI log is often read from its tail, and 60 lines per node bury it.
fail_reason=""
fail() {
    fail_reason="$*"
    echo "[$log_tag +$(( $(date +%s) - t0 ))s] FAIL: $*" >&2
    exit 1
}

# dc_require_docker <what>: a missing engine is a loud skip, not a failure.
dc_require_docker() {
    if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
        echo "################################################################"
        echo "SKIPPED: $1 (no Docker engine)"
        echo "################################################################"
        exit 0
    fi
}

# dc_setup <project prefix>: globals compose_bin, project, compose_file,
# work, SYNAPSE_IMAGE; installs the cleanup traps.
dc_setup() {
    if command -v docker-compose >/dev/null 2>&1; then
        compose_bin=(docker-compose)
    elif docker compose version >/dev/null 2>&1; then
        compose_bin=(docker compose)
    else
        fail "neither docker-compose nor 'docker compose' is available"
    fi
    export SYNAPSE_IMAGE=${SYNAPSE_IMAGE:-synapse:ci}
    project=$1-$$
    compose_file=$repo/deploy/compose/docker-compose.yml
    work=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    dc_compose_extra=()
    trap dc_cleanup EXIT
    trap 'exit 130' INT TERM
}

compose() {
    local files=(-f "$compose_file") f
    for f in "${dc_compose_extra[@]}"; do files+=(-f "$f"); done
    "${compose_bin[@]}" -p "$project" "${files[@]}" "$@"
}

dc_cleanup() {
    local rc=$? left
    set +e
    if [[ $rc != 0 ]]; then
        echo "---- cluster state at failure ----" >&2
        compose ps >&2
        compose logs --no-color --tail=60 >&2
    fi
    # After the logs, so that a summary it prints is near the end.
    if declare -F dc_cleanup_hook >/dev/null; then dc_cleanup_hook; fi
    if [[ $rc != 0 ]]; then
        echo "==== $log_tag FAILED (exit $rc) after $(( $(date +%s) - t0 ))s: ${fail_reason:-no reason recorded; see above} ====" >&2
    fi
    compose down -v --remove-orphans -t 10 >/dev/null 2>&1
    rm -rf "$work"
    left=$(docker ps -aq --filter "label=com.docker.compose.project=$project")
    [[ -z "$left" ]] || { echo "WARNING: containers left behind: $left" >&2; docker rm -f $left >/dev/null 2>&1; }
    exit $rc
}

dc_build_image() {
    log "building image $SYNAPSE_IMAGE offline"
    "$repo/deploy/build-offline-image.sh" "$SYNAPSE_IMAGE"
}

# dc_keygen: a fresh root key in $work, mounted into every node.
dc_keygen() {
    docker run --rm --network none "$SYNAPSE_IMAGE" keygen >"$work/root.key"
    grep -Eq '^[0-9a-f]{32,}$' "$work/root.key" || fail "keygen printed no key"
    chmod 0644 "$work/root.key"
    export SYNAPSE_ROOT_KEY=$work/root.key
}

# dc_ports: free loopback host ports for the published ports; node i's gRPC
# port is grpc_port[i].
dc_ports() {
    local ports
    read -r -a ports < <(python3 -c '
import socket
ss=[socket.socket() for _ in range(6)]
[s.bind(("127.0.0.1",0)) for s in ss]
print(" ".join(str(s.getsockname()[1]) for s in ss))')
    export SYNAPSE_BIND=127.0.0.1
    export SYNAPSE_0_GRPC_PORT=${ports[0]} SYNAPSE_0_HTTP_PORT=${ports[1]}
    export SYNAPSE_1_GRPC_PORT=${ports[2]} SYNAPSE_1_HTTP_PORT=${ports[3]}
    export SYNAPSE_2_GRPC_PORT=${ports[4]} SYNAPSE_2_HTTP_PORT=${ports[5]}
    grpc_port=("${ports[0]}" "${ports[2]}" "${ports[4]}")
}

declare -A ids=()
ctr() {                                                 # container id of a service (cached)
    [[ -n "${ids[$1]:-}" ]] || ids[$1]=$(compose ps -q "$1")
    [[ -n "${ids[$1]}" ]] || { echo "no container for $1" >&2; return 1; }
    echo "${ids[$1]}"
}
# `ctr` runs in $(...) subshells, where a cache miss cannot be kept, and a
# `compose ps` costs seconds on a loaded machine: fill the cache here, in
# the main shell, after `compose up` and whenever a container is recreated.
cache_ctrs() {
    local svc
    for svc in "$@"; do
        ids[$svc]=$(compose ps -q "$svc")
        [[ -n "${ids[$svc]}" ]] || fail "$svc has no container"
    done
}
forget_ctr() { unset "ids[$1]"; }                       # after the container is removed
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
    # Each node's state says which part of the check was never true.
    fail "$what: not within ${limit}s (now: $(state_summary))"
}

# One line per node (health, id, role, leader, voters, applied index, state
# hash), for a failure message.
state_summary() {
    local svc h s out=""
    for svc in synapse-0 synapse-1 synapse-2; do
        h=$(docker inspect -f '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$(ctr "$svc")" 2>/dev/null) || h=gone
        s=$(status_json "$svc" 2>/dev/null | jq_py '"id=%s role=%s leader=%s voters=%s learners=%s applied=%s hash=%s" % (d["node_id"], d.get("role"), d["leader_id"], d["voters"], d["learners"], d["applied_index"], str(d.get("state_hash"))[:12])' 2>/dev/null) || s="no status"
        out+="$svc $h $s; "
    done
    echo "${out%; }"
}

# Raft ids are not ordinals: a member removed and wiped rejoins under a
# new id (ids are never reused), so nodes are matched by the id they report.
node_ok() {   # healthy, a voter among 3 voters, no learners, a leader known
    local svc=$1 h s
    h=$(docker inspect -f '{{.State.Health.Status}}' "$(ctr "$svc")") || return 1
    [[ $h == healthy ]] || return 1
    s=$(status_json "$svc") || return 1
    [[ $(jq_py 'len(d["voters"])==3 and d["node_id"] in d["voters"] and not d["learners"] and d["leader_id"]!=0' <<<"$s") == True ]]
}
all_ok() { node_ok synapse-0 && node_ok synapse-1 && node_ok synapse-2; }

svc_of_id() {   # the service whose node reports Raft id $1
    local svc
    for svc in synapse-0 synapse-1 synapse-2; do
        if [[ $(status_json "$svc" | jq_py 'd["node_id"]' 2>/dev/null) == "$1" ]]; then
            echo "$svc"; return 0
        fi
    done
    return 1
}

leader_svc() {   # service name of the current leader, as a live node sees it
    local svc id
    for svc in synapse-0 synapse-1 synapse-2; do
        id=$(status_json "$svc" | jq_py 'd["leader_id"]' 2>/dev/null) || continue
        if [[ "$id" =~ ^[1-9][0-9]*$ ]]; then svc_of_id "$id" && return 0; fi
    done
    return 1
}

now() { date +%s.%N; }
since() { python3 -c "print(f'{$2 - $1:.2f}')"; }
