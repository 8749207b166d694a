#!/usr/bin/env bash
# Runs the cluster tests (called by test-all.sh inside with-cluster.sh). On the local cluster the
# images are built into its Docker first; on another cluster they must already be pullable there
# as $BOUNDARY_IMAGE_REPO/<name>:$BOUNDARY_IMAGE_TAG.
#   cluster-tests.sh NEXTEST_COMMAND...
# E2E_FILTER=EXPR runs only the end-to-end tests matching the nextest filter EXPR (test-all.sh
# runs the runtime's own cases again on a dockershim node that way).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
if [ "${KUBECONFIG:-}" = "${STATE:-/tmp/agent-boundary-cluster}/kubeconfig" ]; then
  "$ROOT/tests/scripts/build-images.sh" >/dev/null
  if [ -z "${E2E_FILTER:-}" ]; then
    # The previous release for the end-to-end upgrade test, built from its commit in RELEASES (cached).
    # (Assigned first: a failure inside `eval "$(...)"` would not stop the script.)
    previous=$("$ROOT/tests/scripts/previous-release.sh")
    eval "$previous"
    export BOUNDARY_PREVIOUS_RELEASE BOUNDARY_PREVIOUS_CHART
  fi
fi
# shellcheck source=/dev/null
. "$ROOT/tests/scripts/chart-tools.sh"
chart_tools_install
# Helm 4 (the end-to-end tests install, upgrade and uninstall the chart with it).
export HELM
if [ -n "${E2E_FILTER:-}" ]; then
  status=0
  "$@" -p boundary-cluster-tests --test e2e -E "$E2E_FILTER" || status=$?
  "$ROOT/tests/scripts/e2e-uninstall.sh" || true
  exit "$status"
fi
# The end-to-end tests install the Helm chart (its webhook mutates opted-in namespaces, its
# operator reconciles every policy): they run after the others, then the release goes.
# The outage test stops the apiserver every other test uses: it runs alone, last.
"$@" -p boundary-cluster-tests -E 'not binary(outage) and not binary(e2e)'
status=0
"$@" -p boundary-cluster-tests --test e2e || status=$?
"$ROOT/tests/scripts/e2e-uninstall.sh" || true
[ "$status" = 0 ] || exit "$status"
"$@" -p boundary-cluster-tests --test outage
