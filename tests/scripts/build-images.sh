#!/usr/bin/env bash
# Builds the project's images into the local Docker engine without pulling anything: each image is
# `FROM scratch` plus fully static binaries (glibc with +crt-static; no musl toolchain needed).
#   build-images.sh [TAG]      (default tag: dev)
# Images (what the Helm chart's defaults expect, with BOUNDARY_IMAGE_REPO=agent-boundary):
#   $BOUNDARY_IMAGE_REPO/jail-runtime:TAG        boundary           (injected sidecar; entrypoint)
#                                                + boundary-node-agent (the DaemonSet, runs this `boundary probe`)
#   $BOUNDARY_IMAGE_REPO/boundary-webhook:TAG    boundary-webhook
#   $BOUNDARY_IMAGE_REPO/boundary-operator:TAG   boundary-operator
# and, for the end-to-end tests and the demo (never deployed by the chart):
#   $BOUNDARY_IMAGE_REPO/e2e-tools:TAG           e2e-tools (the agent and HTTPS test servers)
# Prints the image names it built. Needs a running dockerd (tests/local-cluster/up.sh starts one).
# For a registry, charts/images/Dockerfile builds the same images in multi-stage builds.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TAG=${1:-dev}
TARGET=x86_64-unknown-linux-gnu
REPO=${BOUNDARY_IMAGE_REPO:-agent-boundary}

# image name -> binary (the binaries are named after their packages)
IMAGES=(jail-runtime:boundary boundary-webhook:boundary-webhook boundary-operator:boundary-operator)
TEST_IMAGES=(e2e-tools:e2e-tools)
# Further binaries of an image, next to its own: the node agent ships with the `boundary` it
# probes with, so the probe is always the build of the sidecars the webhook injects.
declare -A EXTRA_BINARIES=([jail-runtime]=boundary-node-agent)

cd "$ROOT"
# One cargo invocation for all of them (one lock, shared dependencies built once);
# -p boundary-operator builds boundary-operator and boundary-node-agent.
# --target keeps RUSTFLAGS away from build scripts and proc macros, which cannot be static.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$TARGET" \
  -p boundary -p boundary-webhook -p boundary-operator -p boundary-e2e-tools >&2

ctx=$(mktemp -d); trap 'rm -rf "$ctx"' EXIT
for entry in "${IMAGES[@]}" "${TEST_IMAGES[@]}"; do
  image=${entry%%:*} binary=${entry#*:}
  rm -rf "${ctx:?}"/*
  extra=
  for name in "$binary" ${EXTRA_BINARIES[$image]:-}; do
    bin="target/$TARGET/release/$name"
    if readelf -l "$bin" | grep -q INTERP; then
      echo "build-images: $bin is dynamically linked; it must be static to run in any image" >&2
      exit 1
    fi
    cp "$bin" "$ctx/$name"
    if [ "$name" != "$binary" ]; then
      extra="$extra"$'\n'"COPY $name /usr/local/bin/$name"
    fi
  done
  if [ "$image" = boundary-webhook ]; then
    # oci-client builds a default reqwest client even when it is given its roots, and that
    # panics without a system trust store: the webhook image carries Debian's bundle (the
    # webhook itself trusts only Mozilla's roots plus webhook.imageLookup.caConfigMap).
    mkdir -p "$ctx/certs"; cp /etc/ssl/certs/ca-certificates.crt "$ctx/certs/"
    extra="$extra"$'\n'"COPY certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt"
  fi
  cat > "$ctx/Dockerfile" <<D
FROM scratch
COPY $binary /usr/local/bin/$binary
$extra
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/$binary"]
D
  DOCKER_BUILDKIT=0 docker build -q -t "$REPO/$image:$TAG" "$ctx" >/dev/null
  echo "$REPO/$image:$TAG"
done
