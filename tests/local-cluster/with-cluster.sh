#!/usr/bin/env bash
# Runs a command against a real Kubernetes cluster and always cleans up afterwards.
#   with-cluster.sh [--node] -- CMD ARGS...
# When KUBECONFIG is already set, CMD runs against that cluster (kind, k3d, EKS, ...) and nothing
# is started or stopped. Otherwise the local v1.20.2 cluster is built (cached under ~/.cache),
# started (with a real node when --node is given), exported as KUBECONFIG/KUBECTL to CMD, and torn
# down when CMD ends, fails or is interrupted. On failure the tail of each component's log is shown.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
node=0
while [ $# -gt 0 ]; do
  case "$1" in
    --node) node=1; shift ;;
    --) shift; break ;;
    *) echo "usage: $0 [--node] -- CMD ARGS..." >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: $0 [--node] -- CMD ARGS..." >&2; exit 2; }

if [ -n "${KUBECONFIG:-}" ]; then
  echo "[local-cluster] using the cluster of KUBECONFIG=$KUBECONFIG" >&2
  exec "$@"
fi

export STATE=${STATE:-/tmp/agent-boundary-cluster}
"$HERE/build-k8s.sh"
cleanup() {
  rc=$?
  if [ "$rc" != 0 ] && [ -d "$STATE/logs" ]; then
    for f in "$STATE"/logs/*.log; do
      echo "----- last lines of $f" >&2; tail -n 15 "$f" >&2
    done
  fi
  "$HERE/down.sh"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
NODE=$node "$HERE/up.sh" >/dev/null
# shellcheck source=/dev/null
. "$STATE/env"
"$@"
