#!/usr/bin/env bash
# Tests of the Helm chart (charts/agent-boundary), no cluster needed (about 2 min):
#   - the chart's CRDs are the generated crds/boundarypolicy.yaml and crds/clusterboundarypolicy.yaml
#   - helm lint --strict and helm template for each value combination, for Kubernetes 1.20 and a
#     recent version, with assertions on the rendered objects (tests/chart/check_chart.py), with
#     Helm 4 ($HELM) and with the oldest Helm supported ($HELM_OLDEST, 3.6.2); both render the
#     same objects (tests/chart/compare_renders.py says which comment and order differ)
#   - values.schema.json refuses typos and wrong types; helm package ships the same chart
#   - every rendered object passes kubernetes-validate (strict) for its Kubernetes version: the
#     1.20 renderings against 1.20's schemas, the recent ones against 1.37's and each of 1.29
#     through 1.35's (tests/chart/validate.py)
#   - the monitoring objects (values monitoring.*; the Prometheus Operator's CRDs are not in the
#     test cluster, so rendering is what is checked: tests/chart/monitoring.py), then promtool
#     (Debian's `prometheus`): `check rules` on the alerts and on every dashboard query, `test
#     rules` with tests/chart/rules-test.yaml (each alert fires and stays quiet)
# Tools: tests/scripts/chart-tools.sh (installed on first use). Rendered files stay in $OUT
# (default: a temporary directory, removed on exit).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export PYTHONDONTWRITEBYTECODE=1
# shellcheck source=tests/scripts/chart-tools.sh
. "$ROOT/tests/scripts/chart-tools.sh"
chart_tools_install

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
else
  OUT=$(mktemp -d); trap 'rm -rf "$OUT"' EXIT
fi

for crd in boundarypolicy.yaml clusterboundarypolicy.yaml; do
  if ! cmp -s "$ROOT/crds/$crd" "$ROOT/charts/agent-boundary/crds/$crd"; then
    echo "test-chart: charts/agent-boundary/crds/$crd differs from crds/$crd;" \
      "run: cargo run -p boundary-api --features kube --bin boundary-crdgen" >&2
    exit 1
  fi
done

mkdir -p "$OUT/oldest-helm"
"$KV_NEW_PY" "$ROOT/tests/chart/check_chart.py" "$HELM" "$ROOT" "$OUT" "$KV_NEW_K8S.0" \
  $(printf '%s.0 ' $KV_SCHEMAS)
"$KV_NEW_PY" "$ROOT/tests/chart/check_chart.py" "$HELM_OLDEST" "$ROOT" "$OUT/oldest-helm" "$KV_NEW_K8S.0"
"$KV_NEW_PY" "$ROOT/tests/chart/compare_renders.py" "$OUT/oldest-helm" "$OUT"
"$KV_OLD_PY" "$ROOT/tests/chart/validate.py" "$KV_OLD_K8S" "$OUT"/*-1.20.yaml
"$KV_NEW_PY" "$ROOT/tests/chart/validate.py" "$(echo "$KV_NEW_K8S" $KV_SCHEMAS | tr ' ' ,)" "$OUT"/*-recent.yaml
command -v promtool >/dev/null || {
  echo "test-chart: promtool not found: apt-get install prometheus (tests/scripts/setup.sh)" >&2
  exit 1
}
mkdir -p "$OUT/monitoring"
"$KV_NEW_PY" "$ROOT/tests/chart/monitoring.py" "$HELM" "$ROOT" "$OUT/monitoring"
cp "$ROOT/tests/chart/rules-test.yaml" "$OUT/monitoring/"
promtool check rules "$OUT/monitoring/rules.yaml" "$OUT/monitoring/dashboard-queries.yaml" >&2
(cd "$OUT/monitoring" && promtool test rules rules-test.yaml) >&2
echo "test-chart: passed" >&2
