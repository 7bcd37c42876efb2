#!/usr/bin/env bash
# Proves the README's gRPC claims from outside Rust: server reflection lists
# synapse.v1, grpc.health.v1 answers SERVING, and Invoke works with a token,
# using Python grpcio (PyPI) against a real `synapse serve` on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check "grpcio>=1.60" "grpcio-reflection>=1.60" "protobuf>=4"
cargo build --quiet --bin synapse
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
hport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"${CARGO_TARGET_DIR:-target}/debug/synapse" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" --http-listen "127.0.0.1:$hport" >"$dir/serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do [ -s "$dir/data/root.token" ] && break; sleep 0.1; done
python3 .ci/grpc_reflection_check.py "127.0.0.1:$port" "$dir/data/root.token"
