#!/usr/bin/env bash
# The project's one test command (README; .ci/run calls it). As root on Debian 12:
#   1. installs what is missing (tests/scripts/setup.sh; cached Kubernetes build)
#   2. cargo fmt --check, clippy -D warnings, the supply-chain checks (cargo deny; the CRDs'
#      compatibility with the previous release: tests/scripts/supply-chain.sh)
#   3. unit, golden and namespace tests of every crate, the Helm chart's lint/render/schema tests
#      (tests/scripts/test-chart.sh), and each fuzz target for a while
#   4. cluster tests against a real Kubernetes: the local v1.20.2 cluster with a real node
#      (started here and always torn down), or the cluster of $KUBECONFIG when it is set.
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
step "unit tests"
"${NEXTEST[@]}" --workspace --exclude boundary-cluster-tests
step "proxy tests as an unprivileged user"
tests/scripts/unprivileged-proxy-tests.sh
step "chart"
tests/scripts/test-chart.sh
step "fuzz targets"
tests/scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
step "cluster tests"
tests/local-cluster/with-cluster.sh --node -- tests/scripts/cluster-tests.sh "${NEXTEST[@]}"
step "all tests passed"
