#!/usr/bin/env bash
# Runs the cargo-fuzz (libFuzzer) targets in fuzz/ for a bounded time each, starting from the
# committed corpus (fuzz/corpus/TARGET, which this never writes to: what a run finds stays in
# fuzz/target/). A crash, timeout or out-of-memory input is copied to fuzz/regressions/TARGET/,
# where proxy/tests/fuzz_corpus.rs replays it as an ordinary test from then on, and the run
# fails naming it.
#
#   scripts/fuzz.sh [--seconds N] [--asan] [TARGET...]
#
# --seconds: per target (default 60; the test script runs 10). --asan: AddressSanitizer too
# (needs a nightly toolchain); by default only libFuzzer's coverage, which is what finds
# panics, hangs and unbounded memory in safe Rust, on any toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=60
sanitizer=none
targets=()
while (($#)); do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --asan) sanitizer=address; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if ((${#targets[@]} == 0)); then
  targets=(sniff http1 config state jwt csr)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
# libFuzzer's instrumentation uses compiler flags the stable toolchain accepts only when told
# to; a nightly one, when installed, is used as is (MESH_FUZZ_STABLE=1: the pinned one anyway).
cargo_fuzz=(cargo fuzz)
if [ "${MESH_FUZZ_STABLE:-}" != 1 ] && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  cargo_fuzz=(cargo +nightly fuzz)
elif [ "$sanitizer" != none ]; then
  echo "fuzz: --asan needs a nightly toolchain (rustup toolchain install nightly)" >&2
  exit 2
else
  export RUSTC_BOOTSTRAP=1
fi

echo "== fuzz: building ${targets[*]} (sanitizer: $sanitizer)"
"${cargo_fuzz[@]}" build --sanitizer "$sanitizer"

failed=()
for t in "${targets[@]}"; do
  work="fuzz/target/corpus/$t"
  mkdir -p "$work" "fuzz/artifacts/$t"
  rm -f fuzz/artifacts/"$t"/{crash,timeout,oom,leak}-*
  log="fuzz/target/$t.log"
  status=0
  "${cargo_fuzz[@]}" run --sanitizer "$sanitizer" "$t" "$work" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  runs=$(grep -o 'Done [0-9]* runs' "$log" | grep -o '[0-9]*' || echo "?")
  kept=()
  for f in fuzz/artifacts/"$t"/{crash,timeout,oom,leak}-*; do
    [ -e "$f" ] || continue
    mkdir -p "fuzz/regressions/$t"
    cp "$f" "fuzz/regressions/$t/"
    kept+=("fuzz/regressions/$t/$(basename "$f")")
  done
  if ((${#kept[@]})) || ((status != 0)); then
    echo "fuzz $t: FAILED after $runs runs (exit $status): ${kept[*]:-see $log}"
    tail -n 30 "$log"
    failed+=("$t")
  else
    echo "fuzz $t: $runs runs in ${seconds}s, nothing found"
  fi
done
if ((${#failed[@]})); then
  echo "fuzz: ${failed[*]} failed; the inputs are in fuzz/regressions/ (a test replays them): fix the code, keep the files" >&2
  exit 1
fi
