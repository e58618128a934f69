#!/usr/bin/env bash
# Builds every fuzz target in fuzz/ and runs each for a few seconds on its
# corpus (default 10 s; `scripts/fuzz.sh 240` for a real session). Fails on
# the first crash, leaving the input under fuzz/artifacts/<target>/.
#
# CI runs it briefly; the corpora in fuzz/corpus/ are only read here (new
# inputs go to a scratch directory), so the repository stays as it is. To
# grow a corpus, run `cargo fuzz run <target>` in fuzz/ and then
# `cargo fuzz cmin <target>`.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
start=$(date +%s)

# cargo-fuzz, pinned. Its flags are nightly-only (-Z); on a stable toolchain
# RUSTC_BOOTSTRAP lets rustc take them.
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
export RUSTC_BOOTSTRAP=1

# The fuzz crate is its own workspace with its own Cargo.lock: refuse a
# stale one (cargo-fuzz does not pass --locked itself).
cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null

# A debug build: quick to compile, debug assertions and overflow checks on;
# no sanitizer (the targets run safe Rust, and ASan would rebuild the
# dependencies for little), so a panic is what fails a run.
flags=(--dev --sanitizer none)
cd fuzz
cargo fuzz build "${flags[@]}"
built=$(date +%s)

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo fuzz list); do
  mkdir -p "$scratch/$target" "corpus/$target"
  echo "=== $target (${secs}s)"
  # grep hides the fuzzer's chatter; the fuzzer's own status decides.
  set +e
  cargo fuzz run "${flags[@]}" "$target" "$scratch/$target" "corpus/$target" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
    | grep -E '^(Done|stat::number_of_executed_units|INFO: seed corpus)|panicked|ERROR|SUMMARY|crash-|Reproduce'
  status=${PIPESTATUS[0]}
  set -e
  if [ "$status" -ne 0 ]; then
    echo "fuzz target $target failed: see fuzz/artifacts/$target/"
    exit 1
  fi
done
echo "fuzz: build $((built - start))s, runs $(( $(date +%s) - built ))s"
