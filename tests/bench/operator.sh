#!/usr/bin/env bash
# Benchmark (not a test) of the operator at scale, on a real apiserver-only local cluster of its
# own: the release `boundary-operator` binary runs (all namespaces, leader election on), then
# NODES Node objects (a mix of OS families) and POLICIES BoundaryPolicy objects (spread over
# NAMESPACES namespaces) are created through the API. Prints the time until every node carries
# the operator's OS label and every policy is Ready with its ConfigMap published, measured from
# the first create, and the operator's peak RSS (VmHWM) and RSS at the end.
# Targets (issue 6): converged within 30 s, RSS under 60 MiB.
#   tests/bench/operator.sh [NODES] [POLICIES] [NAMESPACES]     (default 1000 200 20)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
NODES=${1:-1000}; POLICIES=${2:-200}; NAMESPACES=${3:-20}
export STATE=${STATE:-/tmp/agent-boundary-bench} PORT=${PORT:-56443} EPORT=${EPORT:-52379}
cd "$ROOT"
cargo build --release --locked -p boundary-operator >&2
tests/local-cluster/build-k8s.sh >&2
work=$(mktemp -d)
op_pid=
cleanup() {
  [ -n "$op_pid" ] && kill "$op_pid" 2>/dev/null
  tests/local-cluster/down.sh
  rm -rf "$work"
}
trap cleanup EXIT
NODE=0 tests/local-cluster/up.sh >/dev/null
# shellcheck disable=SC1091
. "$STATE/env"
"$KUBECTL" apply -f crds/boundarypolicy.yaml -f crds/clusterboundarypolicy.yaml >/dev/null
"$KUBECTL" wait --for=condition=Established crd/boundarypolicies.agentboundary.dev \
  crd/clusterboundarypolicies.agentboundary.dev >/dev/null
"$KUBECTL" create namespace agent-boundary >/dev/null

BOUNDARY_POD_NAMESPACE=agent-boundary BOUNDARY_LEASE_NAMESPACE=agent-boundary BOUNDARY_POD_NAME=bench \
  BOUNDARY_LOG_LEVEL=warn target/release/boundary-operator >"$work/operator.log" 2>&1 &
op_pid=$!
sleep 2
kill -0 "$op_pid" || { cat "$work/operator.log" >&2; exit 1; }

python3 - "$NODES" "$POLICIES" "$NAMESPACES" "$work" <<'PY'
import json, sys
nodes, policies, namespaces, work = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
images = ["Amazon Linux 2", "Amazon Linux 2023.6.20250203", "Bottlerocket OS 1.19.2 (aws-k8s-1.29)",
          "Ubuntu 22.04.4 LTS"]
items = [{"apiVersion": "v1", "kind": "Node",
          "metadata": {"name": f"bench-{i:04d}", "labels": {"kubernetes.io/os": "linux"}},
          "status": {"nodeInfo": {"osImage": images[i % len(images)], "kernelVersion": "6.1.141",
                     "operatingSystem": "linux", "architecture": "amd64", "bootID": "",
                     "containerRuntimeVersion": "containerd://1.7.0", "kubeProxyVersion": "",
                     "kubeletVersion": "v1.20.2", "machineID": "", "systemUUID": ""}}}
         for i in range(nodes)]
json.dump({"apiVersion": "v1", "kind": "List", "items": items}, open(f"{work}/nodes.json", "w"))
ns = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"bench-{n:02d}"}}
      for n in range(namespaces)]
json.dump({"apiVersion": "v1", "kind": "List", "items": ns}, open(f"{work}/namespaces.json", "w"))
bp = [{"apiVersion": "agentboundary.dev/v1alpha1", "kind": "BoundaryPolicy",
       "metadata": {"name": f"policy-{p:03d}", "namespace": f"bench-{p % namespaces:02d}"},
       "spec": {"podSelector": {"matchLabels": {"team": f"t{p}"}},
                "allow": [f"domain=api{p}.example.com", f"method=GET domain=*.svc{p}.example.com path=/v1/*"]}}
      for p in range(policies)]
json.dump({"apiVersion": "v1", "kind": "List", "items": bp}, open(f"{work}/policies.json", "w"))
PY
"$KUBECTL" create -f "$work/namespaces.json" >/dev/null
start=$(date +%s.%N)
# Both at once, as a cluster scaling up while policies are applied.
"$KUBECTL" create -f "$work/nodes.json" >/dev/null &
nodes_job=$!
"$KUBECTL" create -f "$work/policies.json" >/dev/null
wait "$nodes_job"
created=$(date +%s.%N)

calc() { python3 -c "print($1)"; }
converged() {
  local labelled ready
  labelled=$("$KUBECTL" get nodes -l agentboundary.dev/os -o name | wc -l)
  ready=$("$KUBECTL" get bp -A -o json | python3 -c '
import json, sys
items = json.load(sys.stdin)["items"]
print(sum(1 for p in items if any(c["type"] == "Ready" and c["status"] == "True"
                                  for c in (p.get("status") or {}).get("conditions", []))))')
  echo "$labelled $ready"
  [ "$labelled" -ge "$NODES" ] && [ "$ready" -ge "$POLICIES" ]
}
until state=$(converged); do
  if ! kill -0 "$op_pid" 2>/dev/null; then cat "$work/operator.log" >&2; exit 1; fi
  if [ "$(calc "$(date +%s.%N) - $start > 300")" = True ]; then
    echo "not converged after 300 s (labelled nodes, ready policies: $state)" >&2; exit 1
  fi
  sleep 0.5
done
done_at=$(date +%s.%N)
maps=$("$KUBECTL" get configmap -A -l app.kubernetes.io/component=policy -o name | wc -l)
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$op_pid/status")
rss=$(awk '/VmRSS/ {print $2}' "/proc/$op_pid/status")
printf 'operator bench: %d nodes, %d policies in %d namespaces (%d ConfigMaps)\n' "$NODES" "$POLICIES" "$NAMESPACES" "$maps"
printf '  creating them through the API took   %6.1f s\n' "$(calc "$created - $start")"
printf '  converged (from the first create)    %6.1f s   target < 30 s\n' "$(calc "$done_at - $start")"
printf '  converged after the last create      %6.1f s\n' "$(calc "$done_at - $created")"
printf '  operator RSS peak %5.1f MiB, now %5.1f MiB   target < 60 MiB\n' "$(calc "$hwm / 1024")" "$(calc "$rss / 1024")"
