#!/usr/bin/env bash
# Benchmark (not a test) of the operator at scale, on a real apiserver-only local cluster of its
# own (a fresh one per measurement), in two scenarios:
#   scale-up  the operator binary runs (all namespaces, leader election on), then NODES Node
#             objects (a mix of OS families) and POLICIES BoundaryPolicy objects (spread over
#             NAMESPACES namespaces) are created through the API by operator-load.py (parallel
#             keep-alive clients, so creation goes as fast as the apiserver allows); converged
#             when every node carries the operator's OS label and every policy is Ready with its
#             ConfigMap published (timed from the first create and from the last).
#   install   the nodes, a node agent Pod with its probe report on each, and the policies exist
#             first; then the operator starts, as on `helm install` into a running cluster;
#             converged when every node carries `probed=true` and every policy is Ready (timed
#             from the operator's start, so the apiserver's create rate is not in it).
# Prints, per size, scenario and operator binary: how long creating took, the time to converge,
# the operator's CPU time, its peak RSS (VmHWM) and its RSS at the end.
#
#   tests/bench/operator.sh              the rows of the issues' tables: scale-up at
#                                        1000 nodes/200 policies/20 namespaces (issue 6) and at
#                                        10000/1000/100 (issue 16), install at 10000/1000/100
#   tests/bench/operator.sh NODES POLICIES NAMESPACES [SCENARIO]   one size (scale-up by default)
#
# Environment:
#   OPERATORS="before=/work/bench-operator/before/boundary-operator after=target/release/boundary-operator"
#            the binaries to compare, as label=path (default: after=<this tree's release build>);
#            measured interleaved (size 1: A B, size 2: A B, then the next round)
#   ROUNDS=3 rounds; with more than one, a last table gives the medians
#   WORKERS=16 parallel creating clients
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export STATE=${STATE:-/tmp/agent-boundary-bench} PORT=${PORT:-56443} EPORT=${EPORT:-52379}
ROUNDS=${ROUNDS:-1}
if [ $# -ge 3 ]; then
  SIZES=("$1 $2 $3 ${4:-scale-up}")
elif [ $# -eq 0 ]; then
  SIZES=("1000 200 20 scale-up" "10000 1000 100 scale-up" "10000 1000 100 install")
else
  echo "usage: $0 [NODES POLICIES NAMESPACES [scale-up|install]]" >&2; exit 2
fi
cd "$ROOT"
if [ -z "${OPERATORS:-}" ]; then
  cargo build --release --locked -p boundary-operator >&2
  OPERATORS="after=${CARGO_TARGET_DIR:-$ROOT/target}/release/boundary-operator"
fi
for entry in $OPERATORS; do
  [ -x "${entry#*=}" ] || { echo "not an executable: ${entry#*=} (in OPERATORS=$OPERATORS)" >&2; exit 2; }
done
tests/local-cluster/build-k8s.sh >&2

results=$(mktemp)
work=
op_pid=
stop_run() {
  if [ -n "$op_pid" ]; then kill "$op_pid" 2>/dev/null || true; wait "$op_pid" 2>/dev/null || true; fi
  op_pid=
  tests/local-cluster/down.sh >/dev/null 2>&1 || true
  [ -n "$work" ] && rm -rf "$work"
  work=
}
trap 'stop_run; rm -f "$results"' EXIT

# The targets of a size: issue 16's for 10,000 nodes and more, issue 6's below.
targets() { # nodes -> "seconds MiB"
  if [ "$1" -ge 10000 ]; then echo "30 100"; else echo "30 60"; fi
}

# One measurement: a fresh cluster, the operator `bin`, the load of one size and scenario.
# Appends a line "label nodes policies namespaces scenario create converged after cpu hwm rss"
# to $results.
run_one() { # label bin nodes policies namespaces scenario
  local label=$1 bin=$2 nodes=$3 policies=$4 namespaces=$5 scenario=$6
  work=$(mktemp -d)
  NODE=0 tests/local-cluster/up.sh >/dev/null 2>"$work/up.log" || { cat "$work/up.log" >&2; exit 1; }
  # shellcheck disable=SC1091
  . "$STATE/env"
  "$KUBECTL" apply -f crds/boundarypolicy.yaml -f crds/clusterboundarypolicy.yaml >/dev/null
  "$KUBECTL" wait --for=condition=Established crd/boundarypolicies.agentboundary.dev \
    crd/clusterboundarypolicies.agentboundary.dev >/dev/null
  "$KUBECTL" create namespace agent-boundary >/dev/null
  local api
  api=(env API_SERVER="$("$KUBECTL" config view --raw -o jsonpath='{.clusters[0].cluster.server}')"
    API_TOKEN="$("$KUBECTL" config view --raw -o jsonpath='{.users[0].user.token}')"
    API_CA="$("$KUBECTL" config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority}')")
  local out preload=
  if [ "$scenario" = install ]; then
    preload=$("${api[@]}" python3 tests/bench/operator-load.py --preload "$nodes" "$policies" "$namespaces")
  fi
  BOUNDARY_POD_NAMESPACE=agent-boundary BOUNDARY_LEASE_NAMESPACE=agent-boundary BOUNDARY_POD_NAME=bench \
    BOUNDARY_LOG_LEVEL=warn "$bin" >"$work/operator.log" 2>&1 &
  op_pid=$!
  if [ "$scenario" = install ]; then
    out=$("${api[@]}" python3 tests/bench/operator-load.py --converge "$nodes" "$policies" "$namespaces") \
      || { tail -n 20 "$work/operator.log" >&2; exit 1; }
    # The creating was done before the operator started: report its time, not in the clock.
    out=$(python3 -c 'import json, sys; a, b = map(json.loads, sys.argv[1:]); b["create_seconds"] = 0.0; b["preload_seconds"] = a["create_seconds"]; print(json.dumps(b))' "$preload" "$out")
  else
    sleep 2
    kill -0 "$op_pid" || { cat "$work/operator.log" >&2; exit 1; }
    out=$("${api[@]}" python3 tests/bench/operator-load.py "$nodes" "$policies" "$namespaces") \
      || { tail -n 20 "$work/operator.log" >&2; exit 1; }
  fi
  kill -0 "$op_pid" || { cat "$work/operator.log" >&2; exit 1; }
  local hwm rss cpu maps
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$op_pid/status")
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$op_pid/status")
  # utime + stime, in clock ticks (fields 14 and 15; the name in field 2 has no spaces here).
  cpu=$(awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$op_pid/stat")
  maps=$("$KUBECTL" get configmap -A -l app.kubernetes.io/component=policy -o name | wc -l)
  [ "$maps" -eq "$namespaces" ] || echo "warning: $maps policy ConfigMaps for $namespaces namespaces" >&2
  python3 - "$label" "$nodes" "$policies" "$namespaces" "$scenario" "$out" "$cpu" "$hwm" "$rss" >>"$results" <<'PY'
import json, sys
label, nodes, policies, namespaces, scenario, out, cpu, hwm, rss = sys.argv[1:]
r = json.loads(out)
create = r.get("preload_seconds", r["create_seconds"])
print(label, nodes, policies, namespaces, scenario, f"{create:.2f}", f"{r['converged_seconds']:.2f}",
      f"{r['converged_seconds'] - r['create_seconds']:.2f}", cpu, f"{int(hwm) / 1024:.1f}", f"{int(rss) / 1024:.1f}")
PY
  tail -n 1 "$results" >&2
  stop_run
}

for round in $(seq 1 "$ROUNDS"); do
  for size in "${SIZES[@]}"; do
    for entry in $OPERATORS; do
      echo "round $round: ${entry%%=*} at $size (nodes policies namespaces scenario)" >&2
      # shellcheck disable=SC2086
      run_one "${entry%%=*}" "${entry#*=}" $size
    done
  done
done

# The table: every measurement, then (with several rounds) the medians.
python3 - "$results" "$ROUNDS" "$(targets 1000)" "$(targets 10000)" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
rounds = int(sys.argv[2])
small, large = (t.split() for t in sys.argv[3:5])
head = (f"{'operator':<10} {'nodes':>6} {'policies':>8} {'ns':>4} {'scenario':>9} {'create s':>9} "
        f"{'converged s':>12} {'after last s':>13} {'cpu s':>7} {'peak MiB':>9} {'end MiB':>8}   target")
def show(title, table):
    print(title)
    print(head)
    for label, n, p, ns, scenario, create, conv, after, cpu, hwm, rss in table:
        secs, mib = large if int(n) >= 10000 else small
        print(f"{label:<10} {int(n):>6} {int(p):>8} {int(ns):>4} {scenario:>9} {float(create):>9.1f} "
              f"{float(conv):>12.1f} {float(after):>13.1f} {float(cpu):>7.1f} {float(hwm):>9.1f} "
              f"{float(rss):>8.1f}   converged < {secs} s, peak < {mib} MiB")
show("operator bench: every measurement (converged: scale-up from the first create, install from "
     "the operator's start; create: install's objects made before the operator started)", rows)
if rounds > 1:
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r[:5]), []).append(r)
    medians = [list(key) + [f"{statistics.median(float(r[i]) for r in rs):.2f}" for i in range(5, 11)]
               for key, rs in groups.items()]
    show(f"\nmedians of {rounds} rounds", medians)
PY
