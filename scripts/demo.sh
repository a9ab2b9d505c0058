#!/usr/bin/env bash
# The local demo on a fresh machine: installs what the mesh needs from the OS, builds meshctl,
# the sidecar and mesh-echo (release), then runs `meshctl demo` — a mesh in network namespaces
# on this machine, the order application, 1,000 requests from order to shipping, and a table
# of what happened. Arguments go to `meshctl demo` (`--keep`, `--output json`, `--dir DIR`).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "the local mesh needs root: it creates network namespaces, links and capture rules." >&2
  echo "run: sudo $0 $*" >&2
  exit 1
fi

need_packages=()
command -v ip >/dev/null 2>&1 || need_packages+=(iproute2)
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || need_packages+=(iptables)
if ((${#need_packages[@]})); then
  echo "installing ${need_packages[*]}" >&2
  apt-get update -qq && apt-get install -y -qq "${need_packages[@]}"
fi

cargo build --release --locked -p meshctl -p mesh-proxy -p mesh-e2e --bins
exec target/release/meshctl demo "$@"
