#!/usr/bin/env bash
# Builds the project's images into the local node's container runtime without pulling anything:
# each image is `FROM scratch` plus fully static binaries (glibc with +crt-static; no musl
# toolchain needed), written as a one-layer image archive by oci-image.py (reproducible, no
# engine needed) and imported into containerd's `k8s.io` namespace (CONTAINER_RUNTIME=containerd,
# set with CONTAINERD_ADDRESS by the local cluster's env file) or loaded into Docker
# (CONTAINER_RUNTIME=docker, the default without CONTAINERD_ADDRESS). IMAGES_OUT=DIR keeps the
# archives there (DIR/NAME.tar).
#   build-images.sh [TAG]      (default tag: the workspace version, which is the chart's appVersion,
#                              so `helm install charts/agent-boundary` runs these images)
# Images (what the Helm chart's defaults expect, with BOUNDARY_IMAGE_REPO=agent-boundary):
#   $BOUNDARY_IMAGE_REPO/jail-runtime:TAG        boundary           (injected sidecar; entrypoint)
#                                                + boundary-node-agent (the DaemonSet, runs this `boundary probe`)
#   $BOUNDARY_IMAGE_REPO/boundary-webhook:TAG    boundary-webhook
#   $BOUNDARY_IMAGE_REPO/boundary-operator:TAG   boundary-operator
# and, for the end-to-end tests and the demo (never deployed by the chart):
#   $BOUNDARY_IMAGE_REPO/e2e-tools:TAG           e2e-tools (the agent and HTTPS test servers)
# Prints the image names it built. Needs the runtime running (tests/local-cluster/up.sh starts it).
# For a registry, charts/images/Dockerfile builds the same images in multi-stage builds.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml")
TAG=${1:-$VERSION}
TARGET=x86_64-unknown-linux-gnu
REPO=${BOUNDARY_IMAGE_REPO:-agent-boundary}
if [ -n "${CONTAINERD_ADDRESS:-}" ]; then RUNTIME=${CONTAINER_RUNTIME:-containerd}; else RUNTIME=${CONTAINER_RUNTIME:-docker}; fi
# containerd stores names as given: the fully qualified form is what the kubelet asks it for.
qualified() { case "${1%%/*}" in *.*|*:*|localhost) echo "$1";; *) echo "docker.io/$1";; esac; }

# image name -> binary (the binaries are named after their packages)
IMAGES=(jail-runtime:boundary boundary-webhook:boundary-webhook boundary-operator:boundary-operator)
TEST_IMAGES=(e2e-tools:e2e-tools)
# Further binaries of an image, next to its own: the node agent ships with the `boundary` it
# probes with, so the probe is always the build of the sidecars the webhook injects.
declare -A EXTRA_BINARIES=([jail-runtime]=boundary-node-agent)

cd "$ROOT"
# `boundary` in a cargo invocation of its own, as release.sh builds it: cargo unifies features
# over the packages of one invocation, so next to the webhook it would be linked with their
# features (boundary-api's `kube`, tracing's `log`, ...), a different binary from the one
# released and benchmarked. The rest share one (-p boundary-operator also builds
# boundary-node-agent). --target keeps RUSTFLAGS away from build scripts and proc macros, which
# cannot be static.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$TARGET" -p boundary >&2
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$TARGET" \
  -p boundary-webhook -p boundary-operator -p boundary-e2e-tools >&2

ctx=$(mktemp -d); trap 'rm -rf "$ctx"' EXIT
out=${IMAGES_OUT:-$ctx/out}; mkdir -p "$out"
for entry in "${IMAGES[@]}" "${TEST_IMAGES[@]}"; do
  image=${entry%%:*} binary=${entry#*:}
  files=()
  for name in "$binary" ${EXTRA_BINARIES[$image]:-}; do
    bin="target/$TARGET/release/$name"
    if readelf -l "$bin" | grep -q INTERP; then
      echo "build-images: $bin is dynamically linked; it must be static to run in any image" >&2
      exit 1
    fi
    files+=("$bin=/usr/local/bin/$name")
  done
  if [ "$image" = boundary-webhook ]; then
    # oci-client builds a default reqwest client even when it is given its roots, and that
    # panics without a system trust store: the webhook image carries Debian's bundle (the
    # webhook itself trusts only Mozilla's roots plus webhook.imageLookup.caConfigMap).
    files+=(/etc/ssl/certs/ca-certificates.crt=/etc/ssl/certs/ca-certificates.crt)
  fi
  name=$(qualified "$REPO/$image:$TAG")
  python3 "$ROOT/tests/scripts/oci-image.py" "$out/$image.tar" "$name" \
    --entrypoint "/usr/local/bin/$binary" --user 65532:65532 "${files[@]}" >/dev/null
  case "$RUNTIME" in
    containerd) ctr -n k8s.io images import "$out/$image.tar" >/dev/null ;;
    docker) docker load -q -i "$out/$image.tar" >/dev/null ;;
    *) echo "build-images: CONTAINER_RUNTIME must be containerd or docker, not '$RUNTIME'" >&2; exit 2 ;;
  esac
  echo "$REPO/$image:$TAG"
done
