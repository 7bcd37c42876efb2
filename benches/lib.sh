# Shared by the bench scripts (sourced, not run): messages, a scratch dir and
# cleanup of every process started, the synapse binary, and a Synapse cluster
# on loopback.
#
#   ROOT=...; . "$ROOT/benches/lib.sh"
#   bench_init <name>             # WORK=$(mktemp -d), PIDS=(), trap on EXIT
#   synapse_bin                   # B=$SYNAPSE_BIN, or a release build here
#   start_synapse <n> <grpc-ports-array> <http-ports-array> [serve args...]
#                                 # SYN_PIDS, SYN_EPS, SYN_TOKEN, LEADER
#   ensure_etcd                   # etcd + etcdctl, from Debian if missing
#   start_etcd <client-ports-array> <peer-ports-array> <token> [etcd flags...]
#                                 # 3 members: ETCD_PIDS, ETCD_EPS
#   probe_fdatasync <dir>         # JSON: 4 KiB pwrite + fdatasync latency in dir
#   probe_rtt                     # JSON: loopback TCP ping-pong latency
#
# Anything started in the background must be appended to PIDS; the EXIT trap
# kills and reaps them, then removes WORK unless KEEP=1. A script may define
# `bench_cleanup_hook` to run first.

say() { printf '\n== %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

stop_pids() { # stop the given pids (ours) and wait for them
    local pid
    for pid in "$@"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
    for pid in "$@"; do [ -n "$pid" ] && wait "$pid" 2>/dev/null || true; done
}

_bench_cleanup() {
    if declare -F bench_cleanup_hook >/dev/null; then bench_cleanup_hook || true; fi
    stop_pids "${PIDS[@]:-}"
    if [ "${KEEP:-0}" = 1 ]; then
        echo "kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}

bench_init() {
    WORK=$(mktemp -d -t "$1.XXXXXX")
    PIDS=()
    trap _bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

synapse_bin() {
    if [ -z "${SYNAPSE_BIN:-}" ]; then
        say "building synapse (release)"
        (cd "$ROOT" && cargo build --release --bin synapse --quiet)
        SYNAPSE_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/synapse
        SYNAPSE_BUILT_HERE=1
    fi
    B=$SYNAPSE_BIN
    [ -x "$B" ] || die "no synapse binary at $B"
}

# synapse_provenance: one line naming the binary under test. A binary the
# script built comes from this checkout; one passed in SYNAPSE_BIN may not,
# so it is named by path and content hash, never by the checkout's commit.
synapse_provenance() {
    local version; version=$("$B" --version 2>/dev/null || echo '?')
    if [ -n "${SYNAPSE_BUILT_HERE:-}" ]; then
        echo "synapse: $version built from $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD 2>/dev/null || echo ' + local changes')"
    else
        echo "synapse: $version from SYNAPSE_BIN=$B (sha256 $(sha256sum "$B" | cut -c1-16); not built by this script)"
    fi
}

# start_synapse N GRPC_PORTS HTTP_PORTS [serve args...]: N nodes in $WORK/n<i>
# (a static cluster when N > 1, else a single node), logs in $WORK/n<i>.log.
# Returns once node 1 reports a leader and a write through it succeeded
# (bounded: 60 s). The port arguments are the names of bash arrays.
start_synapse() {
    local n=$1 i peers="" tries
    local -n _grpc=$2 _http=$3
    shift 3
    SYN_PIDS=()
    SYN_EPS=""
    for i in $(seq 1 "$n"); do peers+="${peers:+,}$i=127.0.0.1:${_grpc[$((i - 1))]}"; done
    for i in $(seq 1 "$n"); do
        local cluster=()
        [ "$n" -gt 1 ] && cluster=(--peers "$peers")
        "$B" serve --node-id "$i" --data-dir "$WORK/n$i" --listen "127.0.0.1:${_grpc[$((i - 1))]}" \
            --http-listen "127.0.0.1:${_http[$((i - 1))]}" "${cluster[@]}" --log warn "$@" \
            >"$WORK/n$i.log" 2>&1 &
        SYN_PIDS+=($!)
        PIDS+=($!)
        SYN_EPS+="${SYN_EPS:+,}http://127.0.0.1:${_grpc[$((i - 1))]}"
    done
    SYN_TOKEN=$WORK/n1/root.token
    LEADER=0
    for tries in $(seq 1 120); do
        if [ -s "$SYN_TOKEN" ]; then
            LEADER=$("$B" cluster status -w json --endpoint "http://127.0.0.1:${_grpc[0]}" \
                --token-file "$SYN_TOKEN" 2>/dev/null |
                python3 -c 'import json,sys; print(json.load(sys.stdin).get("leader_id",0))' 2>/dev/null || echo 0)
            [ "${LEADER:-0}" != 0 ] && "$B" invoke counter/warm incr --endpoint "http://127.0.0.1:${_grpc[0]}" \
                --token-file "$SYN_TOKEN" >/dev/null 2>&1 && break
        fi
        sleep 0.5
    done
    if [ "${LEADER:-0}" = 0 ]; then
        tail -20 "$WORK/n1.log" >&2
        die "synapse did not elect a leader and serve a write within 60 s (after $tries tries)"
    fi
    # A quorum serves writes with a node down: make sure every node is up
    # and answering, or the figures are those of a smaller cluster.
    for i in $(seq 1 "$n"); do
        for tries in $(seq 1 40); do
            "$B" cluster status --endpoint "http://127.0.0.1:${_grpc[$((i - 1))]}" \
                --token-file "$SYN_TOKEN" >/dev/null 2>&1 && break
            if ! kill -0 "${SYN_PIDS[$((i - 1))]}" 2>/dev/null || [ "$tries" = 40 ]; then
                tail -20 "$WORK/n$i.log" >&2
                die "synapse node $i is not serving (port ${_grpc[$((i - 1))]}): see its log above"
            fi
            sleep 0.5
        done
    done
}

# ensure_etcd: etcd and etcdctl on PATH, installed from Debian's etcd-server
# and etcd-client if missing; ETCD_VERSION says which.
ensure_etcd() {
    if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
        say "installing etcd (Debian packages etcd-server, etcd-client)"
        local sudo=""
        [ "$(id -u)" = 0 ] || sudo=sudo
        $sudo apt-get update -qq || true
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq etcd-server etcd-client >/dev/null \
            || die "could not install etcd-server/etcd-client"
    fi
    # `head` may close the pipe before etcd finishes writing: SIGPIPE must not
    # end the script under `set -o pipefail`.
    ETCD_VERSION=$(etcd --version 2>/dev/null | head -1 || true)
}

# start_etcd CLIENT_PORTS PEER_PORTS TOKEN [FLAGS...]: a 3-member etcd on
# loopback with fsync on (its default), data in $WORK/etcd<i>, logs in
# $WORK/etcd<i>.log, FLAGS added to every member's command line. Returns once
# every member is healthy (bounded: 30 s). The port arguments are the names
# of bash arrays.
start_etcd() {
    local -n _client=$1 _peer=$2
    local token=$3 i n cluster=""
    shift 3
    for i in 0 1 2; do cluster+="${cluster:+,}e$((i + 1))=http://127.0.0.1:${_peer[$i]}"; done
    ETCD_PIDS=()
    ETCD_EPS=""
    for i in 0 1 2; do
        n=$((i + 1))
        etcd --name "e$n" --data-dir "$WORK/etcd$n" \
            --listen-client-urls "http://127.0.0.1:${_client[$i]}" \
            --advertise-client-urls "http://127.0.0.1:${_client[$i]}" \
            --listen-peer-urls "http://127.0.0.1:${_peer[$i]}" \
            --initial-advertise-peer-urls "http://127.0.0.1:${_peer[$i]}" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token "$token" --logger zap --log-outputs stderr "$@" \
            >"$WORK/etcd$n.log" 2>&1 &
        ETCD_PIDS+=($!)
        PIDS+=($!)
        ETCD_EPS+="${ETCD_EPS:+,}http://127.0.0.1:${_client[$i]}"
    done
    for _ in $(seq 1 60); do
        ETCDCTL_API=3 etcdctl --endpoints "$ETCD_EPS" endpoint health >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    ETCDCTL_API=3 etcdctl --endpoints "$ETCD_EPS" endpoint health >&2 || {
        tail -20 "$WORK"/etcd1.log >&2
        die "etcd did not become healthy within 30 s"
    }
}

# probe_fdatasync DIR: prints JSON (p50_us, p90_us, p99_us, max_us, mean_us)
# of 1000 × (4 KiB pwrite in place + fdatasync) in a scratch file in DIR:
# the disk's part of the latency floor the targets are stated against.
probe_fdatasync() {
    python3 - "$1" <<'EOF'
import os, sys, time, json
path = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
buf = b"\0" * 4096
lat = []
for i in range(1000):
    t = time.perf_counter()
    os.pwrite(fd, buf, (i % 64) * 4096)
    os.fdatasync(fd)
    lat.append((time.perf_counter() - t) * 1e6)
os.close(fd); os.unlink(path)
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
print(json.dumps({"p50_us": q(0.5), "p90_us": q(0.9), "p99_us": q(0.99), "max_us": lat[-1], "mean_us": sum(lat) / len(lat)}))
EOF
}

# probe_rtt: prints JSON (p50_us, p90_us, p99_us) of a 64-byte TCP ping-pong
# between two processes on loopback (5000 rounds, the first 500 dropped).
probe_rtt() {
    python3 <<'EOF'
import socket, os, time, json
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(1)
port = ls.getsockname()[1]
if os.fork() == 0:
    c, _ = ls.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        d = c.recv(64)
        if not d: os._exit(0)
        c.sendall(d)
ls.close()
s = socket.create_connection(("127.0.0.1", port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
msg = b"x" * 64
lat = []
for i in range(5000):
    t = time.perf_counter(); s.sendall(msg)
    got = 0
    while got < 64: got += len(s.recv(64 - got))
    lat.append((time.perf_counter() - t) * 1e6)
s.close(); os.wait()
lat = lat[500:]; lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
print(json.dumps({"p50_us": q(0.5), "p90_us": q(0.9), "p99_us": q(0.99)}))
EOF
}
