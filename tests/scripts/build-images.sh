#!/usr/bin/env bash
# Builds the project's images into the local Docker engine without pulling anything: each image is
# `FROM scratch` plus fully static binaries (glibc with +crt-static; no musl toolchain needed).
#   build-images.sh [TAG]      (default tag: dev)
# Prints the image names it built. Needs a running dockerd (tests/local-cluster/up.sh starts one).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TAG=${1:-dev}
TARGET=x86_64-unknown-linux-gnu
REPO=${BOUNDARY_IMAGE_REPO:-agent-boundary}

cd "$ROOT"
# --target keeps RUSTFLAGS away from build scripts and proc macros, which cannot be static.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$TARGET" -p boundary >&2
bin="target/$TARGET/release/boundary"
if readelf -l "$bin" | grep -q INTERP; then
  echo "build-images: $bin is dynamically linked; it must be static to run in any image" >&2
  exit 1
fi

ctx=$(mktemp -d); trap 'rm -rf "$ctx"' EXIT
cp "$bin" "$ctx/boundary"
cat > "$ctx/Dockerfile" <<D
FROM scratch
COPY boundary /usr/local/bin/boundary
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/boundary"]
D
DOCKER_BUILDKIT=0 docker build -q -t "$REPO/jail-runtime:$TAG" "$ctx" >/dev/null
echo "$REPO/jail-runtime:$TAG"
