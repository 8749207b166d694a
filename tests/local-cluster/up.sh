#!/usr/bin/env bash
# Starts a throwaway local Kubernetes v1.20.2 on this machine (root, Debian 12).
#   up.sh            etcd + kube-apiserver only (CRDs, controllers, admission webhooks)
#   NODE=1 up.sh     plus a container runtime, kube-controller-manager, kube-scheduler, kubelet,
#                    kube-proxy: a one-node cluster that runs real pods (images must be built
#                    locally: nothing can be pulled; use imagePullPolicy: Never or IfNotPresent)
#   RUNTIME=containerd (default, as on EKS nodes): Debian's containerd through the kubelet's CRI
#                    endpoint, pods on a CNI bridge (Debian's containernetworking-plugins);
#                    images are imported into its `k8s.io` namespace (build-images.sh does it)
#   RUNTIME=docker   dockerd through the kubelet's built-in dockershim (nodes before 1.24)
# Writes $STATE/kubeconfig and $STATE/env (KUBECONFIG=..., KUBECTL=...). down.sh undoes it all.
# A previous run that was killed before its clean-up is cleaned up first.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${K8S_BIN:-$HOME/.cache/local-k8s/v1.20.2}
STATE=${STATE:-/tmp/agent-boundary-cluster}
PORT=${PORT:-16443}; EPORT=${EPORT:-12379}
NODE=${NODE:-0}
RUNTIME=${RUNTIME:-containerd}
case "$RUNTIME" in containerd|docker) ;; *) echo "RUNTIME must be containerd or docker, not '$RUNTIME'" >&2; exit 2;; esac
# Ephemeral containers (`kubectl debug`) are alpha in 1.20: on, so the webhook's guard is tested
# against the real subresource.
FEATURES=EphemeralContainers=true
# The node's address on the pods' bridge (docker0, or the CNI bridge $BRIDGE): kubelet refuses a
# loopback node IP, and pods reach the apiserver and test registries there.
NODE_IP=172.17.0.1 BRIDGE=ab0
KUBECTL="$BIN/kubectl"

log() { echo "[local-cluster] $*" >&2; }
[ "$(id -u)" = 0 ] || { echo "up.sh must run as root (it starts etcd, dockerd and kubelet)" >&2; exit 1; }
[ -x "$BIN/kube-apiserver" ] || { echo "no kube-apiserver in $BIN: run $HERE/build-k8s.sh first" >&2; exit 1; }

if [ -d "$STATE" ]; then
  log "cleaning up a previous run in $STATE"
  STATE=$STATE "$HERE/down.sh"
fi

need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
if [ "$NODE" = 1 ]; then
  command -v dockerd >/dev/null || need+=(docker.io)
  if [ "$RUNTIME" = containerd ]; then
    command -v containerd >/dev/null || need+=(containerd)
    [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
  fi
  command -v iptables >/dev/null || need+=(iptables)
  command -v conntrack >/dev/null || need+=(conntrack)
fi
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

mkdir -p "$STATE/pki" "$STATE/logs"
cd "$STATE/pki"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 -subj /CN=local-k8s-ca 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,IP:%s,IP:10.96.0.1,DNS:localhost,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' "$NODE_IP" > ext.cnf
openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 30 -extfile ext.cnf 2>/dev/null
openssl genrsa -out sa.key 2048 2>/dev/null; openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
echo "$(head -c16 /dev/urandom | od -An -tx1 | tr -d ' \n'),admin,admin,system:masters" > tokens.csv
TOKEN=$(cut -d, -f1 tokens.csv)
cd "$STATE"
cat > kubeconfig <<K
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "https://127.0.0.1:$PORT", certificate-authority: "$STATE/pki/ca.crt"}}]
users: [{name: admin, user: {token: "$TOKEN"}}]
contexts: [{name: local, context: {cluster: local, user: admin}}]
current-context: local
K
chmod 600 kubeconfig
printf 'export KUBECONFIG=%s\nexport KUBECTL=%s\n' "$STATE/kubeconfig" "$KUBECTL" > env
if [ "$NODE" = 1 ]; then
  # What the tests and build-images.sh need to reach the node's runtime (ctr reads CONTAINERD_*).
  printf 'export CONTAINER_RUNTIME=%s\n' "$RUNTIME" >> env
  [ "$RUNTIME" = containerd ] &&
    printf 'export CONTAINERD_ADDRESS=%s CONTAINERD_NAMESPACE=k8s.io\n' "$STATE/containerd/containerd.sock" >> env
fi

start() { # name, command...
  local name=$1; shift
  "$@" > "$STATE/logs/$name.log" 2>&1 &
  echo $! > "$STATE/$name.pid"
}
wait_for() { # what, command...
  local what=$1; shift
  for _ in $(seq 1 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "$what did not come up in 60 s; its log:" >&2
  tail -n 30 "$STATE/logs/$what.log" >&2 2>/dev/null || true
  exit 1
}

log "starting etcd and kube-apiserver ($("$BIN/kube-apiserver" --version))"
start etcd etcd --data-dir "$STATE/etcd" --listen-client-urls "http://127.0.0.1:$EPORT" \
  --advertise-client-urls "http://127.0.0.1:$EPORT" --listen-peer-urls "http://127.0.0.1:$((EPORT+1))" --unsafe-no-fsync
BIND=127.0.0.1; EXTRA=()
if [ "$NODE" = 1 ]; then
  # Pods reach the apiserver through the kubernetes Service (10.96.0.1 -> NODE_IP).
  BIND=0.0.0.0; EXTRA=(--advertise-address="$NODE_IP" --kubelet-preferred-address-types=InternalIP --enable-aggregator-routing=true)
  if [ "$RUNTIME" = docker ]; then
    # A dockerd still stopping (an earlier down.sh) would answer `docker info` below and vanish.
    for _ in $(seq 1 150); do pgrep -x dockerd >/dev/null || break; sleep 0.2; done
    if pgrep -x dockerd >/dev/null; then
      echo "another dockerd runs (pid $(pgrep -x dockerd | tr '\n' ' ')) and owns /var/run/docker.sock; stop it first (tests/local-cluster/down.sh stops ours)" >&2
      exit 1
    fi
    log "starting dockerd"
    # dockerd first: it creates docker0, which holds NODE_IP. Registries on NODE_IP (the e2e tests
    # start one that pods and the webhook reach there) are spoken to over plain HTTP.
    start dockerd dockerd --data-root "${DOCKER_DATA:-/var/lib/agent-boundary-docker}" --exec-root "$STATE/docker-exec" \
      --pidfile "$STATE/dockerd.real.pid" --add-runtime "runc-clamp=$HERE/runc-clamp-oom" --default-runtime=runc-clamp \
      --insecure-registry "$NODE_IP/32"
    wait_for dockerd docker info
  else
    if ip link show docker0 >/dev/null 2>&1; then
      echo "docker0 holds $NODE_IP (a dockerd runs, or ran and left it): stop it first (tests/local-cluster/down.sh)" >&2
      exit 1
    fi
    log "starting containerd ($(containerd --version | awk '{print $3}'))"
    # The bridge first: it holds NODE_IP, which the apiserver advertises before any pod exists;
    # the CNI bridge plugin then puts each pod's veth on it.
    ip link add "$BRIDGE" type bridge 2>/dev/null || true
    ip addr replace "$NODE_IP/16" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    mkdir -p "$STATE/containerd/certs.d" "$STATE/cni"
    cat > "$STATE/cni/10-agent-boundary.conflist" <<C
{"cniVersion": "0.4.0", "name": "agent-boundary-pods", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$STATE/cni-ipam",
            "ranges": [[{"subnet": "172.17.0.0/16", "rangeStart": "172.17.1.1", "gateway": "$NODE_IP"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
C
    # Registries on NODE_IP speak plain HTTP: the tests that start one write its hosts.toml
    # under certs.d (containerd reads it at each pull). The image store outlives the cluster,
    # as dockerd's does, so the pause image is imported once.
    cat > "$STATE/containerd/config.toml" <<C
version = 2
root = "${CONTAINERD_DATA:-/var/lib/agent-boundary-containerd}"
state = "$STATE/containerd/state"
[grpc]
  address = "$STATE/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "k8s.gcr.io/pause:3.2"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$HERE/runc-clamp-oom"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$STATE/containerd/certs.d"
C
    start containerd containerd --config "$STATE/containerd/config.toml"
    wait_for containerd ctr --address "$STATE/containerd/containerd.sock" version
  fi
fi
start apiserver "$BIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$EPORT" \
  --bind-address="$BIND" --secure-port="$PORT" --insecure-port=0 \
  --tls-cert-file=pki/apiserver.crt --tls-private-key-file=pki/apiserver.key \
  --token-auth-file=pki/tokens.csv --authorization-mode=RBAC --client-ca-file=pki/ca.crt \
  --service-cluster-ip-range=10.96.0.0/16 --service-account-issuer=https://kubernetes.default.svc \
  --service-account-key-file=pki/sa.pub --service-account-signing-key-file=pki/sa.key \
  --allow-privileged=true --feature-gates="$FEATURES" "${EXTRA[@]}"
wait_for apiserver curl -sf --cacert pki/ca.crt -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$PORT/readyz"

if [ "$NODE" = 1 ]; then
  if [ "$RUNTIME" = docker ]; then
    have_pause() { docker image inspect k8s.gcr.io/pause:3.2; }
    load_image() { docker load -q -i "$1"; }
  else
    have_pause() { ctr --address "$STATE/containerd/containerd.sock" -n k8s.io images check name==k8s.gcr.io/pause:3.2 | grep -q complete; }
    load_image() { ctr --address "$STATE/containerd/containerd.sock" -n k8s.io images import "$1"; }
  fi
  if ! have_pause >/dev/null 2>&1; then
    img=$(mktemp -d)
    python3 "$HERE/../scripts/oci-image.py" "$img/pause.tar" k8s.gcr.io/pause:3.2 --entrypoint /pause \
      --user 65535:65535 "$BIN/pause=/pause" >/dev/null
    load_image "$img/pause.tar" >/dev/null
    rm -rf "$img"
  fi
  log "starting controller-manager, scheduler, kubelet, kube-proxy"
  start controller-manager "$BIN/kube-controller-manager" --kubeconfig="$STATE/kubeconfig" \
    --service-account-private-key-file=pki/sa.key --root-ca-file=pki/ca.crt \
    --controllers='*,-csrsigning' --leader-elect=false
  start scheduler "$BIN/kube-scheduler" --kubeconfig="$STATE/kubeconfig" --leader-elect=false
  mkdir -p "$STATE/kubelet"
  if [ "$RUNTIME" = docker ]; then
    RUNTIME_FLAGS=(--container-runtime=docker --docker-endpoint=unix:///var/run/docker.sock
      --experimental-dockershim-root-directory="$STATE/kubelet/dockershim"
      --container-runtime-endpoint="unix://$STATE/kubelet/dockershim.sock" --image-service-endpoint="unix://$STATE/kubelet/dockershim.sock")
  else
    RUNTIME_FLAGS=(--container-runtime=remote --runtime-request-timeout=5m
      --container-runtime-endpoint="unix://$STATE/containerd/containerd.sock" --image-service-endpoint="unix://$STATE/containerd/containerd.sock")
  fi
  start kubelet "$BIN/kubelet" --kubeconfig="$STATE/kubeconfig" "${RUNTIME_FLAGS[@]}" \
    --pod-infra-container-image=k8s.gcr.io/pause:3.2 \
    --root-dir="$STATE/kubelet/root" --cert-dir="$STATE/kubelet/pki" --volume-plugin-dir="$STATE/kubelet/plugins" \
    --seccomp-profile-root="$STATE/kubelet/seccomp" \
    --hostname-override=local-node --node-ip="$NODE_IP" --address="$NODE_IP" --read-only-port=0 \
    --cgroup-driver=cgroupfs --cgroups-per-qos=false --enforce-node-allocatable= \
    --fail-swap-on=false --image-gc-high-threshold=100 --image-gc-low-threshold=99 \
    --eviction-hard='memory.available<1Mi,nodefs.available<1%,imagefs.available<1%' \
    --anonymous-auth=true --authorization-mode=AlwaysAllow --feature-gates="$FEATURES"
  start kube-proxy "$BIN/kube-proxy" --kubeconfig="$STATE/kubeconfig" --hostname-override=local-node \
    --proxy-mode=iptables --masquerade-all --cluster-cidr=172.17.0.0/16 --conntrack-max-per-core=0
  wait_for kubelet sh -c "'$KUBECTL' --kubeconfig '$STATE/kubeconfig' get node local-node -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
  # Pods need the default ServiceAccount, which the controller-manager creates per namespace.
  wait_for controller-manager "$KUBECTL" --kubeconfig "$STATE/kubeconfig" get serviceaccount default -n default
fi
log "ready: source $STATE/env (KUBECONFIG=$STATE/kubeconfig)"
echo "export KUBECONFIG=$STATE/kubeconfig KUBECTL=$KUBECTL"
