#!/usr/bin/env bash
# Runs the cluster tests (called by test-all.sh inside with-cluster.sh). On the local cluster the
# images are built into its Docker first; on another cluster they must already be pullable there
# as $BOUNDARY_IMAGE_REPO/<name>:$BOUNDARY_IMAGE_TAG.
#   cluster-tests.sh NEXTEST_COMMAND...
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
if [ "${KUBECONFIG:-}" = "${STATE:-/tmp/agent-boundary-cluster}/kubeconfig" ]; then
  "$ROOT/tests/scripts/build-images.sh" >/dev/null
fi
# The outage test stops the apiserver every other test uses: it runs alone, last.
"$@" -p boundary-cluster-tests -E 'not binary(outage)'
"$@" -p boundary-cluster-tests --test outage
