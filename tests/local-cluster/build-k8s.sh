#!/usr/bin/env bash
# Builds the Kubernetes v1.20.2 binaries the local test cluster needs (kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl and the pause binary)
# from Debian bookworm's `kubernetes` source package with Debian's Go. Nothing is downloaded from
# outside Debian's archive. Cold build: ~7 min on 2 cores, ~1.5 GB RAM; a no-op when cached.
#
# Usage: OUT=~/.cache/local-k8s/v1.20.2 build-k8s.sh
# The cache is keyed by version: a different version gets a different folder.
set -euo pipefail
K8S_VERSION=v1.20.2
DEB_VERSION=1.20.5+really1.20.2-1.1+deb12u1
OUT=${OUT:-$HOME/.cache/local-k8s/$K8S_VERSION}
ALL="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kube-proxy cmd/kubectl"

missing=""
for b in $ALL; do [ -x "$OUT/$(basename "$b")" ] || missing="$missing $b"; done
if [ -z "$missing" ] && [ -x "$OUT/pause" ]; then
  echo "Kubernetes $K8S_VERSION binaries cached in $OUT"
  exit 0
fi
missing=${missing:-cmd/kubectl}   # only pause is missing: still need a source tree
echo "building Kubernetes $K8S_VERSION ($missing) into $OUT; this takes several minutes once" >&2

W=$(mktemp -d /tmp/build-k8s.XXXXXX)
trap 'rm -rf "$W"' EXIT
mkdir -p "$W/apt/lists/partial" "$W/apt/cache/partial" "$W/apt/parts" "$OUT"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends golang-go rsync make gcc libc6-dev \
  golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev >/dev/null
# A private apt configuration with a deb-src entry, so the system's apt sources stay untouched.
cat > "$W/apt/parts/src.sources" <<S
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
S
APTO=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$W/apt/parts"
      -o Dir::State::Lists="$W/apt/lists" -o Dir::Cache="$W/apt/cache")
apt-get "${APTO[@]}" update -qq
cd "$W"
apt-get "${APTO[@]}" source --download-only "kubernetes=$DEB_VERSION" >/dev/null 2>&1
tar xzf kubernetes_1.20.5+really1.20.2.orig.tar.gz
cd kubernetes-1.20.2
# The vendored reflect2 1.0.1 crashes under Go >= 1.18 on the first custom-resource write
# ("fatal error: fault ... reflect2.(*UnsafeMapType).UnsafeIterate"). Use Debian's newer copies.
for p in github.com/modern-go/reflect2 github.com/json-iterator/go; do
  rm -rf "vendor/$p" && mkdir -p "vendor/$p"
  find "/usr/share/gocode/src/$p" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' -o -name go.mod \) \
       ! -name '*_test.go' -exec cp {} "vendor/$p/" \;
done
# shellcheck disable=SC2086
env -u GOFLAGS -u GOPATH KUBE_GIT_VERSION=$K8S_VERSION KUBE_GIT_TREE_STATE=clean make WHAT="${missing# }"
for b in $missing; do cp "_output/bin/$(basename "$b")" "$OUT/"; done
gcc -static -O2 -o "$OUT/pause" build/pause/linux/pause.c
"$OUT/kube-apiserver" --version
