#!/usr/bin/env bash
# Runs every check CI runs, on a fresh machine too: formatting, lints, the dependency rules and
# the whole test suite. Installs what the suite needs from the OS first.
set -euo pipefail
cd "$(dirname "$0")/.."

# A one-off build gains nothing from incremental state: without it the build is faster and
# about half the size on disk.
export CARGO_INCREMENTAL=0

# OS packages the suite needs beyond the Rust toolchain (pinned in rust-toolchain.toml): the
# capture tests create network namespaces (iproute2), write rules in them (iptables) and run
# the proxy as uid 1337 (setpriv, from util-linux); mesh-bench's plot test draws its labels
# with DejaVu Sans; the Kubernetes tests drive kubectl; the dashboard test drives Chromium.
need_packages=()
command -v ip >/dev/null 2>&1 || need_packages+=(iproute2)
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || need_packages+=(iptables)
command -v setpriv >/dev/null 2>&1 || need_packages+=(util-linux)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_packages+=(fonts-dejavu-core)
# The real kubectl runs the docs' Kubernetes commands against a scripted API server.
command -v kubectl >/dev/null 2>&1 || need_packages+=(kubernetes-client)
# `meshctl dashboard` is checked in a headless browser.
command -v chromium >/dev/null 2>&1 || [ -n "${MESH_CHROMIUM:-}" ] || need_packages+=(chromium)
# The instruction-count check counts with valgrind, behind nginx, driven by curl and Python.
command -v valgrind >/dev/null 2>&1 || need_packages+=(valgrind)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_packages+=(nginx)
command -v curl >/dev/null 2>&1 || need_packages+=(curl)
if ((${#need_packages[@]})); then
  apt-get update -qq && apt-get install -y -qq "${need_packages[@]}"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== dependency rules (deny.toml: banned crates, one version each, licences, sources)"
if ! cargo deny --version >/dev/null 2>&1; then
  cargo install cargo-deny --locked
fi
# Advisories need the advisory database from the network, which CI does not reach.
cargo deny --locked check bans licenses sources
echo "== tests"
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
# nextest runs every test binary in parallel and closes with one summary line. Tests that need
# root, shared testdata or an installed package are `#[ignore = "needs ..."]` so a plain
# `cargo test` elsewhere lists them as not run; here they all run, and fail with the reason
# when what they need is missing.
cargo nextest run --workspace --locked --no-fail-fast --run-ignored all
echo "== callgrind: instructions per request of one hop and of each sidecar of the mTLS pair, within 3% of scripts/callgrind-baseline.txt"
scripts/callgrind-check.sh
echo "== fuzz: a short pass over every target (the corpus and every crash found are replayed by the tests above)"
scripts/fuzz.sh --seconds 10
