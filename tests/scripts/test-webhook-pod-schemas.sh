#!/usr/bin/env bash
# The pods the webhook makes, validated offline against Kubernetes' own schemas (no apiserver
# of 1.29 or later can be built here, so this is what proves the native sidecar pods' shape):
# the golden tests of the planner (webhook/tests/golden.rs, real-platform pods: EKS Amazon Linux
# and Bottlerocket nodes, Fargate, ...) write every case's patched pod (GOLDEN_PODS_DIR), then
# tests/chart/validate_pods.py checks those planned for 1.29+ (native sidecar: an init container
# with restartPolicy Always) against the 1.29 through 1.35 schemas, those planned for older
# clusters (the sidecar a regular container) against 1.20's, and that 1.20's schema refuses the
# native sidecar (the reason the planner looks at the apiserver's version). About 30 s once the
# golden test is built (test-all.sh's unit tests built it).
#   test-webhook-pod-schemas.sh [CARGO_NEXTEST_RUN_COMMAND...]   (default: cargo nextest run)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
# shellcheck source=tests/scripts/chart-tools.sh
. "$ROOT/tests/scripts/chart-tools.sh"
chart_tools_install
[ $# -gt 0 ] || set -- cargo nextest run --locked --config-file "$ROOT/tests/nextest.toml"
PODS=$(mktemp -d)
trap 'rm -rf "$PODS"' EXIT
# --workspace as in test-all.sh's unit tests (the same features: nothing is rebuilt there).
GOLDEN_PODS_DIR="$PODS" "$@" --workspace --exclude boundary-cluster-tests \
  -E 'package(boundary-webhook) & binary(golden) & test(every_case_matches_its_golden_file)' >&2
export PYTHONDONTWRITEBYTECODE=1
"$KV_NEW_PY" "$ROOT/tests/chart/validate_pods.py" native "$(echo $KV_SCHEMAS | tr ' ' ,)" "$PODS"
"$KV_OLD_PY" "$ROOT/tests/chart/validate_pods.py" legacy "$KV_OLD_K8S" "$PODS"
echo "test-webhook-pod-schemas: passed" >&2
