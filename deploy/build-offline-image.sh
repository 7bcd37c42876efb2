#!/usr/bin/env bash
# Build the synapse container image WITHOUT pulling anything.
#
#   deploy/build-offline-image.sh [image-tag]      (default: synapse:local)
#
# 1. cargo build --release (host toolchain)
# 2. assemble a minimal root filesystem: the binary, the shared libraries
#    `ldd` lists plus the dynamic loader, /etc/passwd + /etc/group with a
#    non-root user (uid 10001), /tmp and a data dir owned by that user
# 3. `docker import` it with the image metadata (user, entrypoint, ports,
#    volume, env) applied through --change.
#
# Idempotent: re-running rebuilds the rootfs from scratch and re-tags the image.
# Environment: CARGO_TARGET_DIR (default: <repo>/target), SYNAPSE_BIN (use
# this prebuilt binary and skip cargo), KEEP_ROOTFS=1 (leave the staging dir).
set -euo pipefail

die() { echo "build-offline-image: ERROR: $*" >&2; exit 1; }
log() { echo "build-offline-image: $*" >&2; }

repo=$(cd "$(dirname "$0")/.." && pwd)
tag=${1:-synapse:local}
uid=10001
gid=10001

command -v docker >/dev/null || die "docker CLI not found"
docker info >/dev/null 2>&1 || die "cannot reach the Docker engine (docker info failed)"
command -v ldd >/dev/null || die "ldd not found"

# ------------------------------------------------------------------ binary
if [[ -n "${SYNAPSE_BIN:-}" ]]; then
    bin=$SYNAPSE_BIN
    log "using prebuilt binary $bin"
else
    target_dir=${CARGO_TARGET_DIR:-$repo/target}
    log "cargo build --release --bin synapse (target dir $target_dir)"
    (cd "$repo" && CARGO_TARGET_DIR="$target_dir" cargo build --release --locked --bin synapse) \
        || die "cargo build failed"
    bin=$target_dir/release/synapse
fi
[[ -x "$bin" ]] || die "no executable at $bin"
"$bin" --version >/dev/null || die "$bin does not run on this host"

# ------------------------------------------------------------------ rootfs
stage=$(mktemp -d "${TMPDIR:-/tmp}/synapse-rootfs.XXXXXX")
cleanup() { [[ "${KEEP_ROOTFS:-0}" == 1 ]] && log "rootfs kept in $stage" || rm -rf "$stage"; }
trap cleanup EXIT
root=$stage/rootfs
mkdir -p "$root"/{usr/local/bin,etc,tmp,var/lib/synapse}
chmod 1777 "$root/tmp"
install -m 0755 "$bin" "$root/usr/local/bin/synapse"

# Shared libraries and the loader, copied (dereferenced) to the same paths
# the binary's ELF headers and the loader will look them up at.
ldd_out=$(ldd "$bin") || die "ldd $bin failed (static binary? then nothing to copy)"
libs=$(awk '
    $2 == "=>" && $3 ~ /^\// { print $3; next }   # libfoo.so => /path (0x...)
    $1 ~ /^\// { print $1 }                         # /lib64/ld-linux-x86-64.so.2 (0x...)
' <<<"$ldd_out" | sort -u)
[[ -n "$libs" ]] || die "ldd listed no libraries:\n$ldd_out"
if grep -q "not found" <<<"$ldd_out"; then die "unresolved libraries:\n$ldd_out"; fi
for lib in $libs; do
    [[ -e "$lib" ]] || die "library $lib listed by ldd does not exist"
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
    # The loader may be requested through a symlinked dir (e.g. /lib64 → usr/lib64).
done
# Also provide the loader at the path in the ELF interpreter field.
interp=$(readelf -l "$bin" 2>/dev/null | sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p' || true)
if [[ -n "$interp" && ! -e "$root$interp" ]]; then
    mkdir -p "$root$(dirname "$interp")"
    cp -L "$interp" "$root$interp"
fi
[[ -z "$interp" || -e "$root$interp" ]] || die "dynamic loader $interp missing from rootfs"

cat >"$root/etc/passwd" <<PASSWD
root:x:0:0:root:/root:/sbin/nologin
synapse:x:$uid:$gid:synapse:/var/lib/synapse:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
PASSWD
cat >"$root/etc/group" <<GROUP
root:x:0:
synapse:x:$gid:
nogroup:x:65534:
GROUP
# glibc >= 2.34 has files+dns built into libc; say so explicitly anyway.
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
chown "$uid:$gid" "$root/var/lib/synapse"
chmod 0750 "$root/var/lib/synapse"

# Smoke-test the rootfs with the host's chroot when we can (root only).
if [[ $(id -u) == 0 ]] && command -v chroot >/dev/null; then
    chroot "$root" /usr/local/bin/synapse --version >/dev/null \
        || die "the binary does not start inside the assembled rootfs"
fi

# ------------------------------------------------------------------ import
version=$("$bin" --version | awk '{print $2}')
log "importing rootfs as $tag (synapse $version, $(du -sh "$root" | cut -f1))"
old_id=$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
tar --numeric-owner -C "$root" -c . | docker import \
    --change "USER $uid:$gid" \
    --change 'WORKDIR /var/lib/synapse' \
    --change 'ENV SYNAPSE_DATA_DIR=/var/lib/synapse SYNAPSE_LISTEN=0.0.0.0:50051 SYNAPSE_HTTP_LISTEN=0.0.0.0:50052 SYNAPSE_TOKEN_FILE=/var/lib/synapse/root.token' \
    --change 'VOLUME ["/var/lib/synapse"]' \
    --change 'EXPOSE 50051 50052' \
    --change 'ENTRYPOINT ["/usr/local/bin/synapse"]' \
    --change 'CMD ["serve"]' \
    --change "LABEL org.opencontainers.image.title=synapse org.opencontainers.image.version=$version" \
    - "$tag" >/dev/null || die "docker import failed"
new_id=$(docker image inspect --format '{{.Id}}' "$tag") || die "image $tag not found after import"
if [[ -n "$old_id" && "$old_id" != "$new_id" ]]; then
    docker image rm "$old_id" >/dev/null 2>&1 || true   # drop the now-dangling previous build
fi

# The image must actually run.
docker run --rm "$tag" --version >/dev/null || die "image $tag does not run"
log "built $tag ($new_id)"
