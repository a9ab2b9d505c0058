#!/usr/bin/env bash
# The Kubernetes end-to-end run, for a machine with Docker, kind and kubectl (public CI): builds
# the images, creates a kind cluster, loads them, installs the demo profile with meshctl, labels
# the default namespace, deploys the seed's order application with the images it names, and
# checks that order reaches shipping over mTLS with the 90/10 split; then runs the end-to-end
# scenarios (e2e/tests/scenarios.rs, security.rs) through the harness's Kubernetes backend
# (MESH_E2E_BACKEND=kube, e2e/src/kubernetes.rs). These development machines have no Docker
# engine, so it has not run here; every path it uses that can be tested without a cluster is
# tested by `scripts/test.sh` against scripted API servers (e2e/tests/kube_backend.rs among
# them).
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${TAG:-0.1.0}
CLUSTER=${CLUSTER:-mesh-e2e}
for tool in docker kind kubectl cargo; do
  command -v "$tool" >/dev/null || { echo "kind-e2e needs $tool" >&2; exit 2; }
done

for target in proxy pilot echo; do
  docker build -f docker/Dockerfile --target "$target" -t "mesh/$target:$TAG" .
done
docker tag "mesh/echo:$TAG" mesh-echo:latest
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
for image in "mesh/proxy:$TAG" "mesh/pilot:$TAG" "mesh/echo:$TAG" mesh-echo:latest; do
  kind load docker-image --name "$CLUSTER" "$image"
done

cargo build --release --locked -p meshctl
MESHCTL=target/release/meshctl
$MESHCTL verify --pre
$MESHCTL install --profile demo --set "tag=$TAG"
kubectl label namespace default istio-injection=enabled --overwrite
kubectl apply -f manifests/samples/order-app/
# The sample names mesh-echo:latest, which Kubernetes would pull; it was loaded into kind.
for d in $(kubectl get deployments -n default -o name); do
  kubectl patch "$d" -n default --type json \
    -p '[{"op": "replace", "path": "/spec/template/spec/containers/0/imagePullPolicy", "value": "IfNotPresent"}]'
done
kubectl wait --for=condition=Available deployment --all -n default --timeout=300s
$MESHCTL verify

# The seed's scenario: 1,000 requests from order to shipping, all answered over mTLS, split
# 90/10 between v1 and v2 (within a few percent).
report=$(kubectl exec deploy/order-v1 -c order -- \
  mesh-echo load --url http://shipping-service:8080/ -n 1000 -c 4 -o json)
echo "$report"
python3 - "$report" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
assert r["ok"] == r["requests"] == 1000, r
v1 = r["by_version"].get("v1", 0)
assert 850 <= v1 <= 950, r["by_version"]
assert all(p.startswith("spiffe://") for p in r["by_peer"]), r["by_peer"]
print("kind-e2e: 1000 of 1000 over mTLS, v1", v1)
PY

# The scenarios, one at a time (the backend owns namespace default): the smoke test's pods go
# first, since each scenario applies what it needs and leaves the namespace empty.
kubectl delete -f manifests/samples/order-app/ --ignore-not-found --wait=true
# (kubectl wait fails when no pod is left to wait for, hence `|| true`.)
kubectl wait --for=delete pod --all -n default --timeout=120s || true
MESH_E2E_BACKEND=kube MESH_E2E_IMAGE="mesh/echo:$TAG" \
  cargo test --release --locked -p mesh-e2e --test scenarios --test security -- \
  --include-ignored --test-threads 1
