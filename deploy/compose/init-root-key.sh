#!/usr/bin/env bash
# Write a new cluster root key to deploy/compose/root.key unless one exists.
# The key signs every capability token: keep it secret, never commit it.
#   deploy/compose/init-root-key.sh            (uses ./synapse if on PATH,
#                                                else the image)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
key=$here/root.key
image=${SYNAPSE_IMAGE:-synapse:local}
if [[ -s "$key" ]]; then
    echo "init-root-key: $key exists; keeping it" >&2
    exit 0
fi
if command -v synapse >/dev/null 2>&1; then
    hex=$(synapse keygen)
else
    hex=$(docker run --rm --network none "$image" keygen) \
        || { echo "init-root-key: ERROR: neither 'synapse' on PATH nor image $image can run keygen" >&2; exit 1; }
fi
[[ "$hex" =~ ^[0-9a-f]{32,}$ ]] || { echo "init-root-key: ERROR: keygen printed an unexpected key" >&2; exit 1; }
tmp=$(mktemp "$here/.root.key.XXXXXX")
printf '%s\n' "$hex" >"$tmp"
# The containers run as uid/gid 10001 and mount the key read-only.
if [[ $(id -u) == 0 ]]; then
    chown 0:10001 "$tmp" && chmod 0640 "$tmp"
else
    chmod 0644 "$tmp"   # readable by the container user; keep the directory private
fi
mv "$tmp" "$key"
echo "init-root-key: wrote $key" >&2
