#!/usr/bin/env bash
# Stops what up.sh started (by the PIDs it recorded) and removes what they left on the host:
# containers, mounts, network namespaces, iptables chains, the pods' bridge and the state
# directory.
# Safe to run twice, and after a run that was killed half-way.
set -u
STATE=${STATE:-/tmp/agent-boundary-cluster}
[ -d "$STATE" ] || exit 0

pids=()
for name in kube-proxy kubelet scheduler controller-manager apiserver etcd; do
  if [ -f "$STATE/$name.pid" ]; then pids+=("$(cat "$STATE/$name.pid")"); fi
done
[ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null
if [ -f "$STATE/dockerd.pid" ]; then
  docker ps -aq 2>/dev/null | xargs -r docker rm -f >/dev/null 2>&1
  dpid=$(cat "$STATE/dockerd.pid"); pids+=("$dpid")
  kill "$dpid" 2>/dev/null
fi
if [ -f "$STATE/containerd.pid" ]; then
  # Containers outlive containerd (each has its shim): kill them through it first.
  export CONTAINERD_ADDRESS="$STATE/containerd/containerd.sock" CONTAINERD_NAMESPACE=k8s.io
  for t in $(ctr tasks ls -q 2>/dev/null); do ctr tasks kill -s SIGKILL "$t" >/dev/null 2>&1; done
  sleep 0.5
  for t in $(ctr tasks ls -q 2>/dev/null); do ctr tasks delete -f "$t" >/dev/null 2>&1; done
  ctr containers ls -q 2>/dev/null | xargs -r ctr containers delete >/dev/null 2>&1
  cpid=$(cat "$STATE/containerd.pid"); pids+=("$cpid")
  kill "$cpid" 2>/dev/null
  pkill -9 -f "containerd-shim-runc-v2 .*-address $STATE/containerd/containerd.sock" 2>/dev/null
fi
for _ in $(seq 1 50); do
  alive=0
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
  [ "$alive" = 0 ] && break
  sleep 0.2
done
for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done

# A test that turned user namespaces off and was killed before putting them back (e2e.rs).
if [ -f "$STATE/max_user_namespaces.saved" ]; then
  cat "$STATE/max_user_namespaces.saved" > /proc/sys/user/max_user_namespaces 2>/dev/null
fi

# kubelet and kube-proxy leave mounts, chains and a bridge behind.
grep -E " ($STATE/|${CONTAINERD_DATA:-/var/lib/agent-boundary-containerd}/)" /proc/mounts | awk '{print $2}' | sort -r |
  xargs -r -n1 umount -l 2>/dev/null
# containerd's pod network namespaces (cni-*), which the kubelet would have torn down.
if [ -f "$STATE/containerd/config.toml" ]; then
  ip netns list 2>/dev/null | awk '/^cni-/{print $1}' | xargs -r -n1 ip netns del 2>/dev/null
fi
if command -v iptables >/dev/null; then
  for t in filter nat mangle; do
    iptables -t $t -S 2>/dev/null | grep -E '^-A (KUBE|DOCKER|CNI)|-j (KUBE|DOCKER|CNI)|docker0|agent-boundary-pods' | sed 's/^-A/-D/' |
      while read -r r; do eval iptables -t $t "$r" 2>/dev/null; done
    iptables -t $t -S 2>/dev/null | awk '/^-N (KUBE|DOCKER|CNI)/{print $2}' |
      while read -r c; do iptables -t $t -F "$c" 2>/dev/null; iptables -t $t -X "$c" 2>/dev/null; done
  done
  iptables -P FORWARD ACCEPT 2>/dev/null
fi
ip link del docker0 2>/dev/null
ip link del ab0 2>/dev/null
rm -rf "$STATE"
true
