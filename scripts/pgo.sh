#!/usr/bin/env bash
# A profile-guided build of the proxy (the `dist` profile: fat LTO, one codegen unit), trained
# on the request paths scripts/callgrind.sh drives: one plaintext HTTP/1.1 hop, and each
# sidecar of the mTLS pair (HTTP/1.1 in, HTTP/2 over mesh mTLS between them).
#
#   scripts/pgo.sh     ->  $CARGO_TARGET_DIR/pgo/use/dist/mesh-proxy (target/ by default)
#
# Two builds of the proxy with fat LTO (about 10 minutes each on 2 cores), so it is not part of
# the demo's or the tests' build. Needs llvm-profdata of the toolchain's LLVM
# (`rustup component add llvm-tools`) and what callgrind.sh needs (nginx, curl, python3, and
# mesh-ca built for the pair's certificates).
set -euo pipefail
cd "$(dirname "$0")/.."
T=${CARGO_TARGET_DIR:-target}
case "$T" in /*) ;; *) T=$PWD/$T ;; esac
host=$(rustc -vV | sed -n 's/^host: //p')
PROFDATA=$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata
[ -x "$PROFDATA" ] || { echo "pgo.sh needs llvm-profdata of this toolchain: rustup component add llvm-tools" >&2; exit 2; }
[ -x "$T/release/mesh-ca" ] || [ -x "$T/debug/mesh-ca" ] || { echo "pgo.sh: the pair needs mesh-ca: cargo build -p mesh-ca" >&2; exit 2; }

DATA=$T/pgo/profiles
rm -rf "$DATA" && mkdir -p "$DATA"
echo "== pgo: building an instrumented proxy"
RUSTFLAGS="-Cprofile-generate=$DATA" cargo build --profile dist --locked -p mesh-proxy --target-dir "$T/pgo/gen"
echo "== pgo: training on a hop and on each sidecar of the pair"
for what in hop client server; do
  TRAIN=1 scripts/callgrind.sh "$T/pgo/gen/dist/mesh-proxy" "$what"
done
ls "$DATA"/*.profraw > /dev/null || { echo "pgo.sh: no profile was written by the training runs" >&2; exit 1; }
"$PROFDATA" merge -o "$T/pgo/merged.profdata" "$DATA"
echo "== pgo: building the proxy with the profile"
RUSTFLAGS="-Cprofile-use=$T/pgo/merged.profdata -Cllvm-args=-pgo-warn-missing-function" \
  cargo build --profile dist --locked -p mesh-proxy --target-dir "$T/pgo/use"
echo "pgo: $T/pgo/use/dist/mesh-proxy"
