#!/usr/bin/env bash
# Builds every libFuzzer target in fuzz/ and runs each for a bounded time
# from the checked-in seed corpus; fails on any crash (panic, abort, OOM,
# timeout). New corpus entries go to a temp dir, never into fuzz/corpus/.
#
# It builds the targets with plain cargo and the instrumentation flags
# cargo-fuzz would pass (all stable rustc flags: SanitizerCoverage passes,
# `--cfg fuzzing`, debug assertions and overflow checks), so a fresh machine
# does not spend a minute or more compiling cargo-fuzz first; `cargo fuzz
# run <target>` works on the same crate for interactive use. No sanitizer:
# the code under test is safe Rust, what we hunt is panics.
#
#   FUZZ_SECONDS     per-target run time (default 15)
#   FUZZ_TARGETS     space-separated subset (default: every [[bin]] in fuzz/Cargo.toml)
#   FUZZ_TARGET_DIR  cargo target dir (default: $CARGO_TARGET_DIR/fuzz or fuzz/target)
#   FUZZ_PROFILE     dev (default) or release (more executions per second)
#   FUZZ_BUILD_ONLY  1: build the targets and stop (CI builds them early, in
#                    the background)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${FUZZ_SECONDS:-15}
target_dir=${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/fuzz}}
target_dir=${target_dir:-target}
started=$(date +%s)

triple=$(rustc -vV | sed -n 's/^host: //p')
# --target: instrument the fuzz targets and what they link, not build
# scripts or proc macros (cargo applies RUSTFLAGS to host code otherwise).
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
  -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
  -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares \
  -Cllvm-args=-sanitizer-coverage-stack-depth \
  -Cdebug-assertions -Coverflow-checks"
# dev: a development build takes well under half the release build's time
# on 2 cores, and for a bounded smoke run from the seed corpus what matters
# is reaching the decode paths, not the executions per second.
profile=${FUZZ_PROFILE:-dev}
case "$profile" in
  dev) profile_flag=(); out=debug ;;
  release) profile_flag=(--release); out=release ;;
  *) echo "FUZZ_PROFILE must be dev or release" >&2; exit 2 ;;
esac
echo "=== build (cargo build --bins --target $triple, $profile, SanitizerCoverage)"
cargo build --bins --target "$triple" --target-dir "$target_dir" "${profile_flag[@]}"
echo "=== built in $(( $(date +%s) - started ))s"
[ "${FUZZ_BUILD_ONLY:-0}" = 1 ] && exit 0

targets=${FUZZ_TARGETS:-$(awk '/^\[\[bin\]\]/ { bin = 1; next } bin && /^name/ { gsub(/"/, "", $3); print $3; bin = 0 }' Cargo.toml)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for t in $targets; do
  mkdir -p "$work/$t" "corpus/$t"
  echo "=== fuzz $t for ${seconds}s"
  # -rss_limit_mb / -timeout: a decode that allocates without bound or
  # loops counts as a crash. -artifact_prefix keeps crash files in fuzz/artifacts/.
  mkdir -p "artifacts/$t"
  if ! "$target_dir/$triple/$out/$t" "$work/$t" "corpus/$t" \
      -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
      -artifact_prefix="artifacts/$t/" -print_final_stats=1 2>"$work/$t.log"; then
    failed+=("$t")
    tail -n 60 "$work/$t.log"
  fi
  grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|^#[0-9]+ +DONE" "$work/$t.log" | sed "s/^/  $t: /" || true
done
echo "=== fuzzing done in $(( $(date +%s) - started ))s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED targets (crash inputs under fuzz/artifacts/): ${failed[*]}"
  exit 1
fi
