#!/usr/bin/env bash
# Produces every release artifact from a tag (or any commit), reproducibly. Status: its parts
# were run separately (SBOMs, image archives); no full run yet (see release-repro-test.sh).
#
#   tests/scripts/release.sh TAG [OUT]          (OUT default: dist/TAG)
# into OUT:
#   boundary, boundary-node-agent, boundary-webhook, boundary-operator
#                               static x86_64 Linux binaries (glibc +crt-static), each with its
#                               dependency list embedded (cargo auditable: `cargo audit bin`,
#                               trivy or syft read it from the shipped file)
#   <binary>.cdx.json           CycloneDX SBOM of each binary (cargo cyclonedx: its crates)
#   image-<image>.cdx.json      CycloneDX SBOM of each image: its binaries (with their crates)
#                               and the other files (the webhook's CA bundle, Debian's package)
#   image-<image>.oci.tar       each image as an OCI image layout archive (FROM scratch, one
#                               layer; `skopeo copy oci-archive:...`, `docker load` 25+)
#   agent-boundary-VERSION.tgz  the Helm chart: version and appVersion = the workspace version,
#                               image tags = VERSION
#   boundarypolicy.yaml, clusterboundarypolicy.yaml
#                               the release's CRDs
#   SHA256SUMS                  of all the above
# The sources are the commit's tree only (`git archive` into a fresh directory, nothing of the
# work tree), built with SOURCE_DATE_EPOCH = the commit's time, paths remapped, archives sorted
# with fixed owners and times: two runs give the same SHA256SUMS
# (tests/scripts/release-repro-test.sh proves it).
# A tag vX.Y.Z must name the workspace version X.Y.Z (Cargo.toml [workspace.package]), which
# is also the chart's version and appVersion (tests/chart checks Chart.yaml against it).
# Environment: RELEASE_WORK (build directory, default /tmp/agent-boundary-release/<commit>),
# CARGO_TARGET_DIR (default RELEASE_WORK/target).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
log() { echo "[release] $*" >&2; }
die() { echo "release: $*" >&2; exit 1; }
REF=${1:?usage: release.sh TAG [OUT]}
commit=$(git rev-parse --verify --quiet "$REF^{commit}") || die "$REF is not a tag or commit of this repository"
OUT=${2:-dist/$REF}
TARGET=x86_64-unknown-linux-gnu
BINARIES=(boundary boundary-node-agent boundary-webhook boundary-operator)

# The pinned tools (cargo-cyclonedx, cargo-auditable), cached.
# shellcheck source=tests/scripts/supply-tools.sh
source "$ROOT/tests/scripts/supply-tools.sh"
supply_tools_install cyclonedx auditable

WORK=${RELEASE_WORK:-/tmp/agent-boundary-release/$commit}
SRC=$WORK/src
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$WORK/target}
export SOURCE_DATE_EPOCH
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct "$commit")
rm -rf "$SRC" && mkdir -p "$SRC" "$CARGO_TARGET_DIR"
git archive --format=tar "$commit" | tar -x -C "$SRC"

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$SRC/Cargo.toml")
[ -n "$version" ] || die "no [workspace.package] version in Cargo.toml"
case "$REF" in
  v[0-9]*) [ "$REF" = "v$version" ] || die "tag $REF does not name the workspace version $version (Cargo.toml)";;
esac
chart=$SRC/charts/agent-boundary
for field in version appVersion; do
  value=$(sed -n "s/^$field: \"\{0,1\}\([^\"]*\)\"\{0,1\}$/\1/p" "$chart/Chart.yaml")
  [ "$value" = "$version" ] || die "Chart.yaml $field is '$value', the workspace version is $version"
done
log "$REF = $commit, version $version, SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH, work $WORK"

# Static binaries. Paths that could end up in a binary (panic locations, debug strings) are
# remapped: the sources, the crates' sources under CARGO_HOME, the target directory (build
# scripts' OUT_DIR). --target keeps RUSTFLAGS away from build scripts and proc macros.
cargo_home=${CARGO_HOME:-$HOME/.cargo}
export RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$SRC=/build/agent-boundary --remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$CARGO_TARGET_DIR=/build/target"
export CARGO_INCREMENTAL=0
( cd "$SRC" && PATH="$SUPPLY_TOOLS_PATH:$PATH" cargo auditable build --release --locked --target "$TARGET" \
    -p boundary -p boundary-webhook -p boundary-operator >&2 )
rm -rf "$OUT" && mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
for bin in "${BINARIES[@]}"; do
  file=$CARGO_TARGET_DIR/$TARGET/release/$bin
  if readelf -l "$file" | grep -q INTERP; then die "$bin is dynamically linked"; fi
  cp "$file" "$OUT/$bin"
  touch -d "@$SOURCE_DATE_EPOCH" "$OUT/$bin"
done

# SBOMs of the binaries: cargo cyclonedx describes each package's binaries for the target
# (normal dependencies only); its random serial number and timestamp are replaced by ones
# derived from the content and SOURCE_DATE_EPOCH.
# Known gap: cargo cyclonedx resolves features for the whole workspace, so `boundary`'s SBOM
# lists kube and k8s-openapi (boundary-api's `kube` feature, enabled by the webhook), which
# release_check.py refuses; `boundary` must get its SBOM from a resolution of its own.
( cd "$SRC" && PATH="$SUPPLY_TOOLS_PATH:$PATH" cargo cyclonedx --format json --spec-version 1.5 \
    --target "$TARGET" --describe binaries >&2 )
python3 "$ROOT/tests/scripts/release_tools.py" binary-sboms "$SRC" "$OUT" "${BINARIES[@]}"

# Images: what build-images.sh (docker) and charts/images/Dockerfile build, as OCI archives made
# without a container engine, and their SBOMs.
ca_version=$(dpkg-query -W -f='${Version}' ca-certificates)
python3 "$ROOT/tests/scripts/release_tools.py" images "$OUT" "$version" "$ca_version" \
  /etc/ssl/certs/ca-certificates.crt

# The chart: image tags = the version; packaged by helm, then re-packed with sorted entries,
# fixed owners, modes and times (helm stamps the packing time).
# shellcheck source=tests/scripts/chart-tools.sh
source "$ROOT/tests/scripts/chart-tools.sh"
chart_tools_install >/dev/null
sed -i "s/^\(    tag: \)dev$/\1\"$version\"/" "$chart/values.yaml"
[ "$(grep -c "^    tag: \"$version\"$" "$chart/values.yaml")" = 3 ] || die "values.yaml: expected three image tags 'dev'"
pkg=$WORK/chart && rm -rf "$pkg" && mkdir -p "$pkg/unpacked"
"$HELM" package --version "$version" --app-version "$version" -d "$pkg" "$chart" >&2
tar -xzf "$pkg/agent-boundary-$version.tgz" -C "$pkg/unpacked"
chmod -R u=rwX,go=rX "$pkg/unpacked"
tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner --format=gnu \
  -C "$pkg/unpacked" -cf - agent-boundary | gzip -9n > "$OUT/agent-boundary-$version.tgz"
"$HELM" show chart "$OUT/agent-boundary-$version.tgz" >/dev/null

cp "$SRC"/crds/boundarypolicy.yaml "$SRC"/crds/clusterboundarypolicy.yaml "$OUT/"
( cd "$OUT" && find . -maxdepth 1 -type f ! -name SHA256SUMS -printf '%f\n' | LC_ALL=C sort \
    | xargs sha256sum > SHA256SUMS )
log "artifacts of $REF in $OUT:"
cat "$OUT/SHA256SUMS" >&2
