#!/usr/bin/env bash
# Removes what the end-to-end tests (tests/cluster/tests/e2e.rs) installed: the Helm release, its
# namespace, the operator's Secrets in it, and the webhook configuration.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=/dev/null
. "$ROOT/tests/scripts/chart-tools.sh"
KUBECTL=${KUBECTL:-kubectl}
"$HELM" uninstall agent-boundary --namespace agent-boundary-e2e --timeout 2m 2>&1 || true
"$KUBECTL" delete namespace agent-boundary-e2e --ignore-not-found --wait=true --timeout=120s
