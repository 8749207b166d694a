#!/usr/bin/env bash
# The main job, on a fresh Debian 12 machine (as root): set everything up, start the local
# one-node Kubernetes, build the images, `helm install` the chart, apply a BoundaryPolicy, start an
# agent pod, and show what happened: the allowed request succeeding, the denied one getting 403,
# the audit lines, and the tier and securityContext the webhook chose. The cluster keeps running
# afterwards so you can look around.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
STATE=${STATE:-/tmp/agent-boundary-cluster}
NS=agents
say() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }

say "1/7 installing what is missing (Debian packages, cargo-nextest, helm, Kubernetes v1.20.2 build, cached)"
tests/scripts/setup.sh

say "2/7 starting a local one-node Kubernetes v1.20.2 (etcd, apiserver, containerd, kubelet, ...)"
STATE=$STATE NODE=1 tests/local-cluster/up.sh >/dev/null
# shellcheck source=/dev/null
. "$STATE/env"
# shellcheck source=/dev/null
. tests/scripts/chart-tools.sh
k() { echo "+ kubectl $*" >&2; "$KUBECTL" "$@"; }
k get nodes -o wide

say "3/7 building the images locally (FROM scratch + static binaries)"
tests/scripts/build-images.sh
# The images carry the workspace version, the chart's appVersion (its default image tag).
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)

say "4/7 helm install: webhook, operator (certificates, policies, node labels), node agent"
"$HELM" upgrade --install agent-boundary charts/agent-boundary -n agent-boundary --create-namespace \
  --set webhook.replicas=1 --set nodeAgent.probeIntervalSeconds=5 \
  --set nodeAgent.installSeccompProfile=true --set nodeAgent.seccompDir="$STATE/kubelet/seccomp" \
  --wait --timeout 5m
k get pods -n agent-boundary -o wide
printf 'waiting for the node agent'"'"'s probe to reach the node labels' >&2
for _ in $(seq 1 120); do
  [ "$("$KUBECTL" get nodes -o jsonpath='{.items[0].metadata.labels.agentboundary\.dev/probed}')" = true ] && break
  printf . >&2; sleep 1
done
echo >&2
k get nodes -L agentboundary.dev/os,agentboundary.dev/tiers,agentboundary.dev/seccomp-profile

say "5/7 an opted-in namespace, two HTTPS services with a private CA, and a policy allowing one"
k create namespace "$NS" --dry-run=client -o yaml | "$KUBECTL" apply -f -
k label namespace "$NS" agentboundary.dev/inject=enabled --overwrite
pki=$(mktemp -d); trap 'rm -rf "$pki"' EXIT
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=demo internal CA" \
  -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=demo servers" -keyout "$pki/tls.key" -out "$pki/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:allowed.demo.test,DNS:denied.demo.test\n' > "$pki/ext.cnf"
openssl x509 -req -in "$pki/tls.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 30 \
  -extfile "$pki/ext.cnf" -out "$pki/tls.crt" 2>/dev/null
"$KUBECTL" -n "$NS" create secret tls servers-tls --cert "$pki/tls.crt" --key "$pki/tls.key" \
  --dry-run=client -o yaml | "$KUBECTL" apply -f -
# The sidecar's proxy trusts the CAs in this ConfigMap for upstream servers (besides public roots).
"$KUBECTL" -n "$NS" create configmap agent-boundary-upstream-ca --from-file=internal-ca.crt="$pki/ca.crt" \
  --dry-run=client -o yaml | "$KUBECTL" apply -f -
for name in allowed denied; do
  "$KUBECTL" apply -n "$NS" -f - <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $name, labels: {app: $name, agentboundary.dev/inject: disabled}}
spec:
  containers:
    - name: server
      image: agent-boundary/e2e-tools:$VERSION
      imagePullPolicy: IfNotPresent
      args: [serve, --cert, /tls/tls.crt, --key, /tls/tls.key, --name, $name]
      volumeMounts: [{name: tls, mountPath: /tls}]
  volumes: [{name: tls, secret: {secretName: servers-tls}}]
---
apiVersion: v1
kind: Service
metadata: {name: $name}
spec: {selector: {app: $name}, ports: [{port: 443, targetPort: 8443}]}
YAML
done
allowed_ip=$("$KUBECTL" get svc -n "$NS" allowed -o jsonpath='{.spec.clusterIP}')
denied_ip=$("$KUBECTL" get svc -n "$NS" denied -o jsonpath='{.spec.clusterIP}')
k apply -n "$NS" -f - <<YAML
apiVersion: agentboundary.dev/v1alpha1
kind: BoundaryPolicy
metadata: {name: demo-agent}
spec:
  podSelector: {matchLabels: {app: demo-agent}}
  mode: Enforce
  allow:
    - domain=allowed.demo.test method=GET path=/models
  # This local cluster has no cluster DNS: the names are pinned to the Services' cluster IPs
  # (the proxy never connects to a private address that is neither pinned nor named by a rule).
  resolve:
    - {host: allowed.demo.test, addresses: ["$allowed_ip"]}
    - {host: denied.demo.test, addresses: ["$denied_ip"]}
  jail: {wrapCommand: true}   # the containers' own commands run inside \`boundary run\`
YAML
k wait -n "$NS" --for condition=Ready --timeout 60s bp/demo-agent
k get bp -n "$NS"
k wait -n "$NS" --for condition=Ready --timeout 120s pod/allowed pod/denied

say "6/7 an agent pod: GETs both services every 3 s (the webhook jails it on the way in)"
"$KUBECTL" delete pod -n "$NS" demo-agent --ignore-not-found --wait=true >/dev/null
k apply -n "$NS" -f - <<YAML
apiVersion: v1
kind: Pod
metadata: {name: demo-agent, labels: {app: demo-agent}}
spec:
  # This local cluster has no cluster DNS; with one, use the Services' names.
  hostAliases:
    - {ip: "$allowed_ip", hostnames: [allowed.demo.test]}
    - {ip: "$denied_ip", hostnames: [denied.demo.test]}
  containers:
    - name: agent
      image: agent-boundary/e2e-tools:$VERSION
      imagePullPolicy: IfNotPresent
      command: [/usr/local/bin/e2e-tools]
      args: [fetch, --every, "3", "https://allowed.demo.test/models", "https://allowed.demo.test/admin", "https://denied.demo.test/exfiltrate"]
      volumeMounts: [{name: tmp, mountPath: /tmp}]
  volumes: [{name: tmp, emptyDir: {}}]
YAML
k wait -n "$NS" --for condition=Ready --timeout 120s pod/demo-agent
for _ in $(seq 1 60); do
  "$KUBECTL" logs -n "$NS" demo-agent -c agent 2>/dev/null | grep -q denied.demo.test && break
  sleep 1
done

say "7/7 what happened"
echo "--- the agent's own output (kubectl logs demo-agent -c agent):" >&2
"$KUBECTL" logs -n "$NS" demo-agent -c agent | head -6
echo "--- the audit trail (kubectl logs demo-agent -c boundary, decisions only):" >&2
"$KUBECTL" logs -n "$NS" demo-agent -c boundary | grep '"decision"' | head -6
echo "--- the tier the webhook chose, and why:" >&2
"$KUBECTL" get pod -n "$NS" demo-agent -o jsonpath='{.metadata.annotations.agentboundary\.dev/tier}{"\n"}'
"$KUBECTL" get events -n "$NS" --field-selector involvedObject.name=demo-agent -o custom-columns=REASON:.reason,MESSAGE:.message 2>/dev/null | head -5 || true
echo "--- the agent container's securityContext and command after injection:" >&2
"$KUBECTL" get pod -n "$NS" demo-agent -o jsonpath='{range .spec.containers[?(@.name=="agent")]}securityContext: {.securityContext}{"\n"}command: {.command} {.args}{"\n"}{end}'
echo "--- policy status:" >&2
k get bp -n "$NS" demo-agent -o jsonpath='{.status}{"\n"}'

cat >&2 <<MSG

Done. The cluster is still running. Look around with:
  export KUBECONFIG=$KUBECONFIG
  $KUBECTL get pods -A; $KUBECTL get bp -A
  $KUBECTL logs -n $NS demo-agent -c boundary -f      # the audit trail, live
  $KUBECTL edit bp -n $NS demo-agent                  # allow denied.demo.test: the running pod follows
Tear it down with:
  tests/local-cluster/down.sh
MSG
