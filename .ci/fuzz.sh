#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ and runs each for a bounded time
# from the checked-in seed corpus; fails on any crash (panic, abort, OOM,
# timeout). New corpus entries go to a temp dir, never into fuzz/corpus/.
#
# The machine has a stable toolchain only: RUSTC_BOOTSTRAP=1 lets cargo-fuzz
# pass its -Z flags. No sanitizer (`-s none`): the code under test is safe
# Rust, what we hunt is panics; debug assertions and overflow checks are on.
#
#   FUZZ_SECONDS   per-target run time (default 15)
#   FUZZ_TARGETS   space-separated subset (default: all, from `cargo fuzz list`)
#   FUZZ_TARGET_DIR  cargo target dir (default: $CARGO_TARGET_DIR/fuzz or fuzz/target)
#   FUZZ_PROFILE   --dev (default) or -O (release: more executions per second)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1
seconds=${FUZZ_SECONDS:-15}
target_dir=${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/fuzz}}
target_dir=${target_dir:-target}
started=$(date +%s)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# --dev: a development build (no optimisation; overflow checks and debug
# assertions on) takes well under half the release build's time on 2
# cores, and for a bounded smoke run from the seed corpus what matters is
# reaching the decode paths, not the executions per second. FUZZ_PROFILE=-O
# for long campaigns.
flags=(${FUZZ_PROFILE:---dev} -a -s none --target-dir "$target_dir")
echo "=== build (cargo fuzz build ${flags[*]})"
cargo fuzz build "${flags[@]}"
echo "=== built in $(( $(date +%s) - started ))s"

targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for t in $targets; do
  mkdir -p "$work/$t" "corpus/$t"
  echo "=== fuzz $t for ${seconds}s"
  # -rss_limit_mb / -timeout: a decode that allocates without bound or
  # loops counts as a crash. -artifact_prefix keeps crash files in fuzz/artifacts/.
  mkdir -p "artifacts/$t"
  if ! cargo fuzz run "${flags[@]}" "$t" "$work/$t" "corpus/$t" -- \
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
