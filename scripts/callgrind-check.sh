#!/usr/bin/env bash
# The instruction-count regression check of the request path, run by scripts/test.sh after the
# tests. It builds the proxy in release, counts instructions per request with
# scripts/callgrind.sh for one plaintext hop and for each sidecar of the mTLS pair, and fails
# when a case costs more than 3% above its figure in scripts/callgrind-baseline.txt.
#
#   scripts/callgrind-check.sh            check (needs mesh-ca built: the tests build it)
#   scripts/callgrind-check.sh --update   measure and rewrite the baseline (commit it with the
#                                         change that moved the figures, and say why)
#
# Counts are instructions, not time: the same build gives the same figure to within 0.1% on a
# busy machine. The build must be the same kind of build as the baseline's: the proxy alone,
# since building it together with other crates of the workspace unifies their dependencies'
# features into it (rustls's TLS 1.2, tokio's multi-thread runtime, ...) and changes its code:
# the client sidecar costs 4% more built beside mesh-ca.
set -euo pipefail
cd "$(dirname "$0")/.."
BASELINE=scripts/callgrind-baseline.txt
LIMIT_PCT=3
T=${CARGO_TARGET_DIR:-target}
update=
case "${1:-}" in
  --update) update=1 ;;
  "") ;;
  *) echo "usage: scripts/callgrind-check.sh [--update]" >&2; exit 2 ;;
esac

[ -x "$T/release/mesh-ca" ] || [ -x "$T/debug/mesh-ca" ] || {
  echo "callgrind check: the pair needs mesh-ca for its certificates: cargo build -p mesh-ca" >&2
  exit 2
}
cargo build --release --locked -p mesh-proxy
BIN=$T/release/mesh-proxy

# Counts follow the code paths the CPU's features select (valgrind shows the program what it
# can emulate of the host's); the baseline names the CPU it was measured on.
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
cases=(hop client server)
declare -A measured
for c in "${cases[@]}"; do
  line=$(scripts/callgrind.sh "$BIN" "$c" | tail -1)
  n=$(sed -n 's/^[a-z-]*: \([0-9]*\) instructions per request.*/\1/p' <<< "$line")
  [ -n "$n" ] || { echo "callgrind check: no count for $c in: $line" >&2; exit 1; }
  measured[$c]=$n
done

if [ -n "$update" ]; then
  {
    echo "# Instructions per request, counted by scripts/callgrind.sh on a release build of"
    echo "# mesh-proxy built alone (toolchain of rust-toolchain.toml, Cargo.lock of this commit)."
    echo "# scripts/callgrind-check.sh fails when a case costs more than ${LIMIT_PCT}% above its figure;"
    echo "# scripts/callgrind-check.sh --update rewrites this file."
    echo "# Measured on: $cpu"
    for c in "${cases[@]}"; do echo "$c ${measured[$c]}"; done
  } > "$BASELINE"
  echo "callgrind check: baseline written to $BASELINE"
  cat "$BASELINE"
  exit 0
fi

echo "callgrind check on: $cpu ($(sed -n 's/^# Measured on: //p' "$BASELINE" | sed 's/^/baseline: /'))"
failed=0
for c in "${cases[@]}"; do
  base=$(awk -v c="$c" '$1 == c { print $2 }' "$BASELINE")
  [ -n "$base" ] || { echo "callgrind check: $BASELINE has no figure for $c" >&2; exit 1; }
  n=${measured[$c]}
  # Per mille, in integers: 1000 * (n - base) / base.
  permille=$(( (n - base) * 1000 / base ))
  abs=$(( permille < 0 ? -permille : permille ))
  pct=$(printf '%s%d.%d%%' "$( ((permille < 0)) && echo - || echo +)" $((abs / 10)) $((abs % 10)))
  if (( permille > LIMIT_PCT * 10 )); then
    echo "callgrind check: FAILED: $c costs $n instructions per request, $pct over the baseline's $base (limit +${LIMIT_PCT}%)."
    echo "  Find what the change added (KEEP=1 scripts/callgrind.sh $BIN $c keeps the profile for"
    echo "  callgrind_annotate), or, if the cost is meant, say so in the commit and run"
    echo "  scripts/callgrind-check.sh --update."
    failed=1
  elif (( permille < -LIMIT_PCT * 10 )); then
    echo "callgrind check: $c: $n instructions per request, $pct against the baseline's $base: cheaper;"
    echo "  scripts/callgrind-check.sh --update keeps the gain from being given back unnoticed."
  else
    echo "callgrind check: $c: $n instructions per request, $pct against the baseline's $base: ok"
  fi
done
exit $failed
