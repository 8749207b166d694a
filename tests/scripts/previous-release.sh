#!/usr/bin/env bash
# The previous release, for the end-to-end upgrade test (tests/cluster/tests/e2e/upgrade.rs):
# the newest version in RELEASES that is not the working tree's, built from its commit's own
# sources with its own build-images.sh, and its chart. Prints, for `eval`:
#   BOUNDARY_PREVIOUS_RELEASE=<version> BOUNDARY_PREVIOUS_CHART=<dir of its chart>
# The image archives and the chart are cached under ~/.cache/agent-boundary-previous/v<version>-<commit>
# (a second run only imports them into the node's runtime). The static build has a target
# directory of its own (target/previous-release; seeding it from the tree's saved nothing: the
# dependencies' build scripts record absolute paths, so they all ran and compiled again).
#   previous-release.sh [--build-only]   (--build-only: build and cache, import nothing)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
TARGET=x86_64-unknown-linux-gnu
say() { echo "previous-release: $*" >&2; }

# shellcheck source=tests/scripts/releases.sh
. "$ROOT/tests/scripts/releases.sh"
version=$(workspace_version)
read -r previous commit < <(previous_release) || true
if [ -z "${commit:-}" ]; then
  say "RELEASES names no release other than $version: the upgrade test needs a previous release"
  exit 1
fi
tag=v$previous
if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
  # A shallow clone: ask where it came from for the rest of the history.
  git fetch --quiet --unshallow origin 2>/dev/null || true
  git cat-file -e "$commit^{commit}" 2>/dev/null || {
    say "the commit of release $previous ($commit, RELEASES) is not in this clone and could not be fetched: the upgrade test builds it from its sources (clone the whole history, not --depth)"
    exit 1
  }
fi
if tagged=$(git rev-parse --verify --quiet "refs/tags/$tag^{commit}") && [ "$tagged" != "$commit" ]; then
  say "the tag $tag is on $tagged but RELEASES says $previous is $commit: correct one of them"
  exit 1
fi
cache=${XDG_CACHE_HOME:-$HOME/.cache}/agent-boundary-previous/$tag-$commit
images=(jail-runtime boundary-webhook boundary-operator)

if [ ! -e "$cache/done" ]; then
  say "building $tag ($commit) into $cache"
  target=$ROOT/target/previous-release
  # Its sources at a fixed place, extracted once per commit (cargo's fingerprints name the path
  # and the files' times).
  work=$target/src
  if [ "$(cat "$work/.commit" 2>/dev/null)" != "$commit" ]; then
    rm -rf "$work"; mkdir -p "$work"
    git archive --format=tar "$commit" | tar -x -C "$work"
    echo "$commit" > "$work/.commit"
  fi
  # Its build-images.sh reads the binaries from its own target/.
  ln -sfn "$target" "$work/target"
  (cd "$work" && RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=$target \
    cargo build --release --locked --target "$TARGET" \
    -p boundary -p boundary-webhook -p boundary-operator -p boundary-e2e-tools >&2)
  [ "${1:-}" = --build-only ] && { say "built (not cached until a runtime imports it)"; exit 0; }
  mkdir -p "$cache.tmp/images"
  # Its own build-images.sh writes the archives (and imports them into the node's runtime).
  (cd "$work" && CARGO_TARGET_DIR=$target IMAGES_OUT=$cache.tmp/images \
    tests/scripts/build-images.sh "$previous" >&2)
  cp -r "$work/charts/agent-boundary" "$cache.tmp/chart"
  touch "$cache.tmp/done"
  rm -rf "$cache"; mv "$cache.tmp" "$cache"
else
  [ "${1:-}" = --build-only ] && exit 0
  if [ -n "${CONTAINERD_ADDRESS:-}" ]; then
    for image in "${images[@]}"; do ctr -n k8s.io images import "$cache/images/$image.tar" >/dev/null; done
  else
    for image in "${images[@]}"; do docker load -q -i "$cache/images/$image.tar" >/dev/null; done
  fi
  say "imported the cached images of $tag"
fi
echo "BOUNDARY_PREVIOUS_RELEASE=$previous BOUNDARY_PREVIOUS_CHART=$cache/chart"
