#!/usr/bin/env bash
# The main job, on a fresh Debian 12 machine (as root): set everything up, start the local
# one-node Kubernetes, install the BoundaryPolicy API and example policies, and show what the
# cluster now knows. The cluster keeps running afterwards so you can look around.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
STATE=${STATE:-/tmp/agent-boundary-cluster}
say() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }

say "1/5 installing what is missing (Debian packages, cargo-nextest, Kubernetes v1.20.2 build, cached)"
tests/scripts/setup.sh

say "2/5 starting a local one-node Kubernetes v1.20.2 (etcd, apiserver, dockerd, kubelet, ...)"
STATE=$STATE NODE=1 tests/local-cluster/up.sh >/dev/null
# shellcheck source=/dev/null
. "$STATE/env"
k() { echo "+ kubectl $*" >&2; "$KUBECTL" "$@"; }
k get nodes -o wide

say "3/5 building the images locally (FROM scratch + static binaries)"
tests/scripts/build-images.sh

say "4/5 installing the BoundaryPolicy CRD and the example policies"
k apply -f crds/boundarypolicy.yaml
k wait --for condition=established --timeout=60s crd/boundarypolicies.agentboundary.dev
k create namespace agents --dry-run=client -o yaml | "$KUBECTL" apply -f -
k label namespace agents agentboundary.dev/inject=enabled --overwrite
k apply -n agents -f crds/examples/
k get boundarypolicies -n agents
k get bp coding-agent -n agents -o yaml

say "5/5 the apiserver validates policies itself: an unknown mode is rejected"
if printf 'apiVersion: agentboundary.dev/v1alpha1\nkind: BoundaryPolicy\nmetadata: {name: bad}\nspec: {podSelector: {}, mode: Block}\n' |
   "$KUBECTL" apply -n agents -f - ; then
  echo "unexpected: the invalid policy was accepted" >&2; exit 1
fi
for _ in $(seq 1 50); do
  "$KUBECTL" explain boundarypolicy.spec.mode >/dev/null 2>&1 && break; sleep 0.2
done
k explain boundarypolicy.spec.mode

cat >&2 <<MSG

Done. The cluster is still running. Look around with:
  export KUBECONFIG=$KUBECONFIG
  $KUBECTL get bp -A
  $KUBECTL explain boundarypolicy.spec --recursive
Tear it down with:
  tests/local-cluster/down.sh
MSG
