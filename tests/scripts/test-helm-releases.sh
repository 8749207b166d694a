#!/usr/bin/env bash
# helm install / upgrade (changed values) / uninstall of the chart with Helm 4 ($HELM) and with
# the oldest Helm the chart supports ($HELM_OLDEST, 3.6.2), and a release made by the oldest Helm
# upgraded and removed by Helm 4, against a real kube-apiserver: its own apiserver-only v1.20.2
# cluster (tests/local-cluster, ports 36443/32379, never $KUBECONFIG's cluster), always torn down.
# With no node no pod runs: what is proven is what Helm and the apiserver do (objects created,
# changed, pruned and deleted, release records, CRDs kept), not that the components start (the
# end-to-end tests, tests/cluster/tests/e2e.rs, install with $HELM on a real node).
# kubectl 1.35.2 ($KUBECTL_CURRENT) is used as a user would: the example policies applied
# (client- and server-side), listed with their columns, explained, a wrong one refused.
# About 1 minute (the cluster's start included).
#   test-helm-releases.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=tests/scripts/chart-tools.sh
. "$ROOT/tests/scripts/chart-tools.sh"

if [ -z "${HELM_RELEASES_CLUSTER_UP:-}" ]; then
  chart_tools_install
  unset KUBECONFIG
  export STATE=${HELM_RELEASES_STATE:-/tmp/agent-boundary-helm-releases} PORT=36443 EPORT=32379
  HELM_RELEASES_CLUSTER_UP=1 exec "$ROOT/tests/local-cluster/with-cluster.sh" -- "$0" "$@"
fi

CHART="$ROOT/charts/agent-boundary"
K=("$KUBECTL_CURRENT" --kubeconfig "$KUBECONFIG")
failures=0 checks=0
check() { # check DESCRIPTION WANT GOT
  checks=$((checks + 1))
  if [ "$2" != "$3" ]; then
    failures=$((failures + 1))
    echo "FAIL $1: want '$2', got '$3'" >&2
  fi
}
say() { echo "[helm-releases] $*" >&2; }
helm_of() { "$1" --kubeconfig "$KUBECONFIG" "${@:2}"; }
# A release's objects, by the chart's instance label (namespaced ones in NS, cluster-scoped ones).
namespaced() {
  "${K[@]}" get deployments,daemonsets,services,serviceaccounts,configmaps,roles,rolebindings,poddisruptionbudgets \
    -n "$2" -l "app.kubernetes.io/instance=$1" -o name | sort | tr '\n' ' '
}
cluster_scoped() {
  "${K[@]}" get clusterroles,clusterrolebindings,mutatingwebhookconfigurations \
    -l "app.kubernetes.io/instance=$1" -o name | sort | tr '\n' ' '
}
# The objects of the kinds listed above that helm template renders for these values, as kubectl
# -o name prints them.
rendered() { # rendered HELM RELEASE NS [--set ...]
  helm_of "$1" template "$2" "$CHART" -n "$3" --kube-version 1.20.2 "${@:4}" |
    "$KV_NEW_PY" -c '
import sys, yaml
group = {"Deployment": "apps", "DaemonSet": "apps", "PodDisruptionBudget": "policy", "ClusterRole": "rbac.authorization.k8s.io",
         "ClusterRoleBinding": "rbac.authorization.k8s.io", "Role": "rbac.authorization.k8s.io",
         "RoleBinding": "rbac.authorization.k8s.io", "MutatingWebhookConfiguration": "admissionregistration.k8s.io"}
cluster = {"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"}
listed = set(group) | {"Service", "ServiceAccount", "ConfigMap"}
want = sys.argv[1]
names = []
for d in yaml.safe_load_all(sys.stdin):
    # Hooks (the post-delete clean-up) are not installed with the release.
    if not d or "helm.sh/hook" in d["metadata"].get("annotations", {}):
        continue
    if d["kind"] not in listed or (d["kind"] in cluster) != (want == "cluster"):
        continue
    g = group.get(d["kind"])
    names.append(d["kind"].lower() + ("." + g if g else "") + "/" + d["metadata"]["name"])
print(" ".join(sorted(names)) + (" " if names else ""), end="")
' "${RENDER_SCOPE:-namespaced}"
}
status_of() { # status_of HELM RELEASE NS: "STATUS REVISION"
  helm_of "$1" status "$2" -n "$3" -o json |
    "$KV_NEW_PY" -c 'import json, sys; r = json.load(sys.stdin); print(r["info"]["status"], r["version"])'
}
upgraded_values=(--set webhook.replicas=3 --set webhook.failurePolicy=Ignore --set nodeAgent.enabled=false)

# lifecycle INSTALLER UPGRADER RELEASE NS: install, upgrade with changed values, uninstall.
lifecycle() {
  local installer=$1 upgrader=$2 release=$3 ns=$4 who
  who="$("$installer" version --short) then $("$upgrader" version --short)"
  say "$who: install, upgrade, uninstall of release $release in $ns"
  helm_of "$installer" install "$release" "$CHART" -n "$ns" --create-namespace >/dev/null
  check "[$who] installed" "deployed 1" "$(status_of "$installer" "$release" "$ns")"
  check "[$who] the installed objects are the rendered ones" \
    "$(rendered "$installer" "$release" "$ns")" "$(namespaced "$release" "$ns")"
  check "[$who] the installed cluster-scoped objects are the rendered ones" \
    "$(RENDER_SCOPE=cluster rendered "$installer" "$release" "$ns")" "$(cluster_scoped "$release")"
  # Helm 4 installs with server-side apply (field manager "helm", operation Apply) and upgrades
  # a release made by Helm 3 with a patch (operation Update); Helm 3.6.2 patches under its HTTP
  # client's name, not "helm".
  check "[$who] helm's field manager operation" "$([ "$installer" = "$HELM" ] && echo Apply)" \
    "$("${K[@]}" get deployment -n "$ns" "$release-agent-boundary-webhook" \
      -o jsonpath='{.metadata.managedFields[?(@.manager=="helm")].operation}')"
  check "[$who] the node agent's DaemonSet runs by default" "1" \
    "$("${K[@]}" get daemonsets -n "$ns" -l "app.kubernetes.io/instance=$release" -o name | wc -l)"
  check "[$who] the CRDs came with the chart" "2" \
    "$("${K[@]}" get crd boundarypolicies.agentboundary.dev clusterboundarypolicies.agentboundary.dev -o name | wc -l)"

  # The operator puts the caBundle into the webhook configuration (a strategic merge patch of
  # its own, operator/src/certs): an upgrade must keep it (the chart never renders one).
  local webhooks patch
  webhooks=$("${K[@]}" get mutatingwebhookconfigurations -l "app.kubernetes.io/instance=$release" -o name)
  patch=$("${K[@]}" get "$webhooks" -o json | "$KV_NEW_PY" -c '
import json, sys
print(json.dumps({"webhooks": [{"name": w["name"], "clientConfig": {"caBundle": "Y2E="}}
                               for w in json.load(sys.stdin)["webhooks"]]}))')
  "${K[@]}" patch "$webhooks" --type strategic --field-manager boundary-operator -p "$patch" >/dev/null

  helm_of "$upgrader" upgrade "$release" "$CHART" -n "$ns" "${upgraded_values[@]}" >/dev/null
  check "[$who] upgrade: the operator's caBundle is kept in every webhook" "Y2E=" \
    "$("${K[@]}" get "$webhooks" -o jsonpath='{range .webhooks[*]}{.clientConfig.caBundle}{"\n"}{end}' | sort -u)"
  check "[$who] upgraded" "deployed 2" "$(status_of "$upgrader" "$release" "$ns")"
  check "[$who] upgrade: helm's field manager operation" \
    "$([ "$upgrader" = "$HELM" ] && { [ "$installer" = "$HELM" ] && echo Apply || echo Update; })" \
    "$("${K[@]}" get deployment -n "$ns" "$release-agent-boundary-webhook" \
      -o jsonpath='{.metadata.managedFields[?(@.manager=="helm")].operation}')"
  check "[$who] upgrade: webhook replicas" "3" \
    "$("${K[@]}" get deployment -n "$ns" "$release-agent-boundary-webhook" -o jsonpath='{.spec.replicas}')"
  # webhook.failurePolicy sets the opt-in webhooks' policy; the others stay Fail.
  check "[$who] upgrade: the webhooks' failurePolicy is the rendered one" \
    "$(helm_of "$upgrader" template "$release" "$CHART" -n "$ns" --kube-version 1.20.2 "${upgraded_values[@]}" |
      "$KV_NEW_PY" -c '
import sys, yaml
for d in yaml.safe_load_all(sys.stdin):
    if d and d["kind"] == "MutatingWebhookConfiguration":
        print(" ".join(sorted(w["name"] + "=" + w["failurePolicy"] for w in d["webhooks"])))')" \
    "$("${K[@]}" get mutatingwebhookconfigurations -l "app.kubernetes.io/instance=$release" \
      -o jsonpath='{range .items[*].webhooks[*]}{.name}={.failurePolicy}{"\n"}{end}' | sort | paste -sd' ')"
  check "[$who] upgrade: some webhook is Ignore now" "yes" \
    "$("${K[@]}" get mutatingwebhookconfigurations -l "app.kubernetes.io/instance=$release" -o yaml |
      grep -q 'failurePolicy: Ignore' && echo yes || echo no)"
  check "[$who] upgrade: the node agent's DaemonSet is gone" "0" \
    "$("${K[@]}" get daemonsets -n "$ns" -l "app.kubernetes.io/instance=$release" -o name | wc -l)"
  check "[$who] upgrade: the objects are the rendered ones" \
    "$(rendered "$upgrader" "$release" "$ns" "${upgraded_values[@]}")" "$(namespaced "$release" "$ns")"
  check "[$who] upgrade: the release keeps the changed values" "3 Ignore" \
    "$(helm_of "$upgrader" get values "$release" -n "$ns" -o json |
      "$KV_NEW_PY" -c 'import json, sys; v = json.load(sys.stdin)["webhook"]; print(v["replicas"], v["failurePolicy"])')"

  # No kubelet runs the post-delete clean-up Job on this apiserver-only cluster: the hooks are
  # skipped here; the end-to-end upgrade test runs them on the real node.
  helm_of "$upgrader" uninstall "$release" -n "$ns" --no-hooks >/dev/null
  check "[$who] uninstall: no release listed" "" "$(helm_of "$upgrader" list -n "$ns" -q)"
  check "[$who] uninstall: no release record" "not found" \
    "$(helm_of "$upgrader" status "$release" -n "$ns" 2>&1 | grep -o 'not found' || true)"
  check "[$who] uninstall: no namespaced object left" "" "$(namespaced "$release" "$ns")"
  check "[$who] uninstall: no cluster-scoped object left" "" "$(cluster_scoped "$release")"
  # Helm never deletes the CRDs of crds/ (the policies would go with them).
  check "[$who] uninstall: the CRDs stay" "2" \
    "$("${K[@]}" get crd boundarypolicies.agentboundary.dev clusterboundarypolicies.agentboundary.dev -o name | wc -l)"
  "${K[@]}" delete namespace "$ns" --wait=false >/dev/null
}

lifecycle "$HELM_OLDEST" "$HELM_OLDEST" ab-oldest ab-helm-oldest
lifecycle "$HELM" "$HELM" ab-current ab-helm-current
# Users who move to Helm 4 upgrade releases an older Helm made.
lifecycle "$HELM_OLDEST" "$HELM" ab-moved ab-helm-moved

say "kubectl $KUBECTL_CURRENT_VERSION against the v1.20.2 apiserver: the example policies"
"${K[@]}" create namespace agents >/dev/null
"${K[@]}" label namespace agents agentboundary.dev/inject=enabled >/dev/null
applied=$("${K[@]}" apply -n agents -f "$ROOT/crds/examples/" -o name | sort | tr '\n' ' ')
expected=$("$KV_NEW_PY" -c '
import sys, yaml
docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]
print(" ".join(sorted(d["kind"].lower() + ".agentboundary.dev/" + d["metadata"]["name"] for d in docs)) + " ", end="")
' "$ROOT"/crds/examples/*.yaml)
check "kubectl apply: every example policy is accepted" "$expected" "$applied"
check "kubectl apply --server-side: an example policy" \
  "boundarypolicy.agentboundary.dev/coding-agent serverside-applied" \
  "$("${K[@]}" apply --server-side --force-conflicts -n agents -f "$ROOT/crds/examples/coding-agent.yaml")"
check "kubectl diff: the applied policy has no difference" "0" \
  "$("${K[@]}" diff -n agents -f "$ROOT/crds/examples/coding-agent.yaml" >/dev/null; echo $?)"
check "kubectl get boundarypolicies: the CRD's columns" "NAME MODE RULES READY ENFORCED AGE" \
  "$("${K[@]}" get boundarypolicies -n agents | head -1 | tr -s ' ')"
# kubectl explain asks for /openapi/v3 (404 before 1.23's apiserver) and falls back to v2.
explained=$("${K[@]}" explain boundarypolicy.spec.allow)
check "kubectl explain boundarypolicy.spec.allow: the CRD's doc" "yes" \
  "$(grep -q "Allow rules in Coder's grammar" <<<"$explained" && echo yes || echo "no: $explained")"
refused=$(printf '%s\n' "apiVersion: agentboundary.dev/v1alpha1" "kind: BoundaryPolicy" \
  "metadata: {name: wrong-mode}" "spec: {podSelector: {}, mode: Sometimes}" |
  "${K[@]}" apply -n agents -f - 2>&1 || true)
check "kubectl apply: a wrong mode is refused naming the field" "yes" \
  "$(grep -q 'spec.mode' <<<"$refused" && echo yes || echo "no: $refused")"
"${K[@]}" delete -n agents -f "$ROOT/crds/examples/" >/dev/null 2>&1

say "$checks checks, $failures failed"
[ "$failures" = 0 ]
