#!/usr/bin/env bash
# The project's one test command (README; .ci/run calls it). As root on Debian 12:
#   1. installs what is missing (tests/scripts/setup.sh; cached Kubernetes build)
#   2. cargo fmt --check, clippy -D warnings, the supply-chain checks (cargo deny; the CRDs'
#      compatibility with the previous release: tests/scripts/supply-chain.sh; the release's
#      SBOM logic and the chart released twice: tests/scripts/release-quick-test.sh)
#   3. unit, golden and namespace tests of every crate, the Helm chart's lint/render/schema tests
#      with Helm 4 and Helm 3.6.2 (tests/scripts/test-chart.sh), helm install/upgrade/uninstall on
#      an apiserver-only cluster of its own (tests/scripts/test-helm-releases.sh), the webhook's
#      planned pods against the 1.29-1.35 schemas (tests/scripts/test-webhook-pod-schemas.sh),
#      and each fuzz target for a while
#   4. cluster tests against a real Kubernetes: the local v1.20.2 cluster with a real containerd
#      node (started here and always torn down), or the cluster of $KUBECONFIG when it is set;
#      then the end-to-end cases that depend on the runtime again on a dockershim node.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
step() { printf '\n==== %s\n' "$*" >&2; }
NEXTEST=(cargo nextest run --locked --config-file "$ROOT/tests/nextest.toml")
[ "${CI:-}" = true ] && NEXTEST+=(--profile ci)

step "setup"
tests/scripts/setup.sh
step "format"
cargo fmt --all -- --check
step "clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
step "supply chain"
tests/scripts/supply-chain.sh
tests/scripts/advisories-test.sh
tests/scripts/release-quick-test.sh
step "unit tests"
"${NEXTEST[@]}" --workspace --exclude boundary-cluster-tests
step "proxy tests as an unprivileged user"
tests/scripts/unprivileged-proxy-tests.sh
step "chart"
tests/scripts/test-chart.sh
step "helm releases (Helm 4 and 3.6.2, kubectl 1.35)"
tests/scripts/test-helm-releases.sh
step "webhook pods against the Kubernetes 1.29-1.35 schemas"
tests/scripts/test-webhook-pod-schemas.sh "${NEXTEST[@]}"
step "fuzz targets"
tests/scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
step "cluster tests"
tests/local-cluster/with-cluster.sh --node -- tests/scripts/cluster-tests.sh "${NEXTEST[@]}"
if [ -z "${KUBECONFIG:-}" ]; then
  # The runtime's own cases (its seccomp profiles, its image store and registry client, killing
  # its containers) once more on dockerd; the rest is runtime-independent and ran above.
  step "end-to-end tests of the runtime's cases on a dockershim node"
  RUNTIME=docker E2E_FILTER='test(/seccomp|entrypoint|killed_sidecar|advisor/)' \
    tests/local-cluster/with-cluster.sh --node -- tests/scripts/cluster-tests.sh "${NEXTEST[@]}"
fi
step "all tests passed"
