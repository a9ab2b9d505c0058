#!/usr/bin/env bash
# Instructions per request of the proxy, by callgrind: not disturbed by a noisy machine, so a
# change's cost is seen to the percent. Usage (root not needed; valgrind and nginx are):
#
#   scripts/callgrind.sh [PROXY_BINARY] hop|client|server
#
#   hop     one plaintext HTTP/1.1 hop (outbound, keep-alive) to nginx
#   hop-route   the same hop through a route with a 10 s timeout and 3 retries (as a state
#           before retry policies and connection pools could say)
#   hop-log the same hop with a JSON access log line per request (to a file)
#   hop-trace   the same hop traced: a CLIENT span per request, sampled at $SAMPLING% (100), exported over
#           OTLP/gRPC to a collector that is not there (the export fails and is dropped)
#   hop-policy  the same hop with a retry policy (3 attempts on 5xx, a 2 s per-try timeout, a
#           10 s route timeout) and a connection pool (limits it never reaches) on the route
#   client  the client sidecar of an mTLS pair (HTTP/1.1 in, HTTP/2 over mesh mTLS out)
#   server  the server sidecar of that pair (mesh mTLS HTTP/2 in, HTTP/1.1 to nginx, STRICT)
#
# The sidecar measured runs under valgrind with one worker; 2,000 requests warm it up, then
# the counters are zeroed and N requests (20,000 for a hop, 10,000 for the pair) counted over
# one keep-alive connection. Everything listens on 127.0.0.1 ports 18000-18221.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${CARGO_TARGET_DIR:-target}
BIN=${1:-$T/release/mesh-proxy}
WHAT=${2:-hop}
for tool in valgrind callgrind_control nginx curl python3; do
  command -v "$tool" >/dev/null || { echo "callgrind.sh needs $tool (apt-get install -y valgrind nginx curl python3)" >&2; exit 2; }
done
[ -x "$BIN" ] || { echo "no proxy binary at $BIN (cargo build --release -p mesh-proxy)" >&2; exit 2; }
CA=$T/release/mesh-ca
[ "$WHAT" = hop ] || [ -x "$CA" ] || CA=$T/debug/mesh-ca
[ "$WHAT" = hop ] || [ -x "$CA" ] || { echo "the pair needs mesh-ca (cargo build -p mesh-ca)" >&2; exit 2; }
# A proxy left over on one of these ports would answer instead of the one measured.
for port in 18012 18080 18099 18100 18101 18106 18120 18121 18200 18201 18206 18220 18221; do
  if (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port on 127.0.0.1 is taken (a proxy left over from an earlier run?): free it first" >&2
    exit 1
  fi
done
D=$(mktemp -d)
VG=
# The measured proxy is started in a command substitution, so it is not one of this shell's
# jobs: it is stopped by its pid.
stop() {
  kill ${VG:-} $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  # valgrind takes a moment to write its last dump and exit; its ports are free after that.
  for _ in $(seq 1 100); do [ -n "${VG:-}" ] && kill -0 "$VG" 2>/dev/null || break; sleep 0.1; done
  [ -n "${KEEP:-}" ] || rm -rf "$D"
}
trap stop EXIT
BP=18080
cat > "$D/nginx.conf" <<NG
worker_processes 1; daemon off; pid $D/nginx.pid; error_log $D/nginx.err warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$BP; location / { return 200 "ok"; } } }
NG
nginx -c "$D/nginx.conf" -e stderr &
common="--bind-address 127.0.0.1 --worker-threads 1 --drain-timeout-secs 0"
if [ -n "${TRAIN:-}" ]; then
  # scripts/pgo.sh: the same load on an instrumented proxy, no valgrind; its profile is
  # written when it exits.
  vg() { "$@" > "$D/measured.log" 2>&1 & echo $!; }
else
  vg() { valgrind --tool=callgrind --callgrind-out-file="$D/cg.out" "$@" > "$D/measured.log" 2>&1 & echo $!; }
fi
ready() { for _ in $(seq 1 600); do curl -fs -o /dev/null "http://127.0.0.1:$1/healthz/ready" && return; sleep 0.2; done; echo "port $1 never ready" >&2; exit 1; }
case "$WHAT" in
  hop|hop-route|hop-policy|hop-log|hop-trace)
    cat > "$D/state.yaml" <<ST
version: callgrind
services:
- hostname: backend.bench.svc.cluster.local
  namespace: bench
  addresses: [10.96.0.10]
  ports: [{port: 80, name: http, protocol: HTTP, targetPort: $BP}]
  endpoints: [{address: 127.0.0.1}]
ST
    if [ "$WHAT" = hop-route ]; then
      cat >> "$D/state.yaml" <<ST
  httpRoutes:
  - destinations: [{host: backend.bench.svc.cluster.local, weight: 100}]
    timeoutMs: 10000
    retries: 3
ST
    fi
    if [ "$WHAT" = hop-log ]; then
      cat >> "$D/state.yaml" <<ST
telemetry:
  accessLogs: [{provider: envoy, path: $D/access.log, client: true}]
ST
    fi
    if [ "$WHAT" = hop-trace ]; then
      cat >> "$D/state.yaml" <<ST
telemetry:
  tracing: {provider: otel, sampling: ${SAMPLING:-100}, host: 127.0.0.1, port: 18099, client: true}
ST
    fi
    if [ "$WHAT" = hop-policy ]; then
      cat >> "$D/state.yaml" <<ST
  trafficPolicy:
    connectionPool: {maxConnections: 100, http1MaxPendingRequests: 100, http2MaxRequests: 1000, maxRetries: 3}
  httpRoutes:
  - destinations: [{host: backend.bench.svc.cluster.local, weight: 100}]
    timeoutMs: 10000
    retries: 3
    retry: {attempts: 3, retryOn: [5xx], perTryTimeoutMs: 2000}
ST
    fi
    VG=$(vg "$BIN" run --state-file "$D/state.yaml" $common --outbound-port 18201 --inbound-port 18206 \
      --admin-port 18200 --readiness-port 18221 --metrics-port 18220 --outbound-original-dst 10.96.0.10:80)
    ready 18221
    N=20000 ;;
  client|server)
    "$CA" issue-token --tokens "$D/tokens.json" --namespace bench --service-account server > "$D/ts"
    "$CA" issue-token --tokens "$D/tokens.json" --namespace bench --service-account client > "$D/tc"
    "$CA" serve --dir "$D/ca" --listen 127.0.0.1:18012 --tokens "$D/tokens.json" > "$D/ca.log" 2>&1 &
    for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/18012) 2>/dev/null && break; sleep 0.1; done
    cat > "$D/b.yaml" <<ST
version: callgrind
inboundPorts: [{port: $BP, protocol: HTTP}]
peerAuthentication: {mode: STRICT}
ST
    cat > "$D/a.yaml" <<ST
version: callgrind
services:
- hostname: backend.bench.svc.cluster.local
  namespace: bench
  addresses: [10.96.0.10]
  ports: [{port: 80, name: http, protocol: HTTP, targetPort: 18106}]
  endpoints: [{address: 127.0.0.1, identity: "spiffe://cluster.local/ns/bench/sa/server", mesh: true}]
ST
    ca="--ca-address http://127.0.0.1:18012 --namespace bench"
    srv=("$BIN" run --state-file "$D/b.yaml" $common $ca --service-account server --bootstrap-token-file "$D/ts"
      --outbound-port 18101 --inbound-port 18106 --admin-port 18100 --readiness-port 18121 --metrics-port 18120
      --inbound-original-dst "10.0.0.9:$BP")
    cli=("$BIN" run --state-file "$D/a.yaml" $common $ca --service-account client --bootstrap-token-file "$D/tc"
      --outbound-port 18201 --inbound-port 18206 --admin-port 18200 --readiness-port 18221 --metrics-port 18220
      --outbound-original-dst 10.96.0.10:80)
    if [ "$WHAT" = server ]; then
      VG=$(vg "${srv[@]}"); "${cli[@]}" > "$D/other.log" 2>&1 &
    else
      "${srv[@]}" > "$D/other.log" 2>&1 & VG=$(vg "${cli[@]}")
    fi
    ready 18121; ready 18221
    N=10000 ;;
  *) echo "usage: scripts/callgrind.sh [PROXY_BINARY] hop|hop-route|hop-policy|client|server" >&2; exit 2 ;;
esac
python3 - "$VG" "$N" "${TRAIN:-}" <<'PY'
import http.client, subprocess, sys
pid, n, train = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = http.client.HTTPConnection("127.0.0.1", 18201)
def go(count, warm=False):
    for _ in range(count):
        c.request("GET", "/", headers={"Host": "backend.bench.svc.cluster.local"})
        r = c.getresponse(); body = r.read()
        # Under valgrind the first ClientHello can miss the peer's 100 ms detection window.
        assert warm or r.status == 200, (r.status, body)
go(200, warm=True)
go(1800)
if not train: subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
go(n)
if not train: subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
PY
if [ -n "${TRAIN:-}" ]; then
  echo "$WHAT: $N requests served by $BIN (training run)"
  exit 0
fi
DUMP=$(ls -t "$D"/cg.out.* | head -1)
TOTAL=$(grep -m1 "^summary:" "$DUMP" | awk '{print $2}')
if [ "$((TOTAL / N))" -lt 1000 ]; then
  echo "$WHAT: only $TOTAL instructions counted: the measured proxy did not serve the requests" >&2
  cat "$D/measured.log" >&2
  exit 1
fi
echo "$WHAT: $((TOTAL / N)) instructions per request ($N requests, $BIN)"
