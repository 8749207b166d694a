#!/usr/bin/env bash
# Produces every release artifact from a tag (or any commit), reproducibly. The script of the
# working tree builds any tag (v0.1.0 included: its chart's image tags are `dev`, set here).
#
#   tests/scripts/release.sh TAG [OUT]          (OUT default: dist/TAG)
# into OUT:
#   boundary, boundary-node-agent, boundary-webhook, boundary-operator
#                               static x86_64 Linux binaries (glibc +crt-static), each with its
#                               dependency list embedded (cargo auditable: `cargo audit bin`,
#                               trivy or syft read it from the shipped file)
#   <binary>.cdx.json           CycloneDX SBOM of each binary: the crates linked into it (the
#                               libraries its package's own build compiled for the target), their
#                               graph, the binary's SHA-256
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
# CARGO_TARGET_DIR (default RELEASE_WORK/target), RELEASE_ONLY=chart (only the chart and the
# CRDs, no build: tests/scripts/release-quick-test.sh).
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
[ "${RELEASE_ONLY:-}" = chart ] || supply_tools_install cyclonedx auditable

WORK=${RELEASE_WORK:-/tmp/agent-boundary-release/$commit}
SRC=$WORK/src
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$WORK/target}
export SOURCE_DATE_EPOCH
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct "$commit")
rm -rf "$SRC" "$WORK"/units-*.json && mkdir -p "$SRC" "$CARGO_TARGET_DIR"
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

if [ "${RELEASE_ONLY:-}" != chart ]; then
# Static binaries. Paths that could end up in a binary (panic locations, debug strings) are
# remapped: the sources, the crates' sources under CARGO_HOME, the target directory (build
# scripts' OUT_DIR). --target keeps RUSTFLAGS away from build scripts and proc macros.
cargo_home=${CARGO_HOME:-$HOME/.cargo}
export RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$SRC=/build/agent-boundary --remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$CARGO_TARGET_DIR=/build/target"
export CARGO_INCREMENTAL=0
# One cargo invocation per package: cargo unifies features over the packages of one invocation,
# so building `boundary` with the webhook would compile boundary-api with its `kube` feature and
# link kube into `boundary` (and the operator's kube features into the webhook). Apart, each
# binary links only its own resolution, which is what its SBOM and embedded list describe.
for package in boundary boundary-webhook boundary-operator; do
  log "building $package"
  # cargo's artifact messages (stdout) name every unit of the build, fresh or compiled: the
  # binaries' SBOMs are made of the units built for the target (the rest is build scripts and
  # proc macros, which run on the build host).
  ( cd "$SRC" && PATH="$SUPPLY_TOOLS_PATH:$PATH" nice -n 10 cargo auditable build --release --locked \
      --target "$TARGET" -p "$package" --message-format=json-render-diagnostics >"$WORK/units-$package.json" )
done
rm -rf "$OUT" && mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
for bin in "${BINARIES[@]}"; do
  file=$CARGO_TARGET_DIR/$TARGET/release/$bin
  if readelf -l "$file" | grep -q INTERP; then die "$bin is dynamically linked"; fi
  cp "$file" "$OUT/$bin"
  touch -d "@$SOURCE_DATE_EPOCH" "$OUT/$bin"
done

# SBOMs of the binaries: what each build above compiled for the target (its units), with the
# names, licenses and hashes cargo cyclonedx gives them and cargo tree's dependency graph of the
# package alone (release_tools.py cross-checks the two). cargo cyclonedx alone would not do: it
# resolves features for the whole workspace, so `boundary`'s SBOM would list kube. The random
# serial number and timestamp are replaced by ones derived from the content and SOURCE_DATE_EPOCH.
( cd "$SRC" && PATH="$SUPPLY_TOOLS_PATH:$PATH" cargo cyclonedx --format json --spec-version 1.5 \
    --target "$TARGET" --describe binaries >&2 )
python3 "$ROOT/tests/scripts/release_tools.py" binary-sboms "$SRC" "$OUT" "$CARGO_TARGET_DIR" "$TARGET" \
  boundary=boundary boundary-node-agent=boundary-operator boundary-webhook=boundary-webhook \
  boundary-operator=boundary-operator

# Images: what build-images.sh (docker) and charts/images/Dockerfile build, as OCI archives made
# without a container engine, and their SBOMs.
ca_version=$(dpkg-query -W -f='${Version}' ca-certificates)
python3 "$ROOT/tests/scripts/release_tools.py" images "$OUT" "$version" "$ca_version" \
  /etc/ssl/certs/ca-certificates.crt
else
  rm -rf "$OUT" && mkdir -p "$OUT"
  OUT=$(cd "$OUT" && pwd)
fi

# The chart: its image tags are the version. Since 0.2.0 values.yaml leaves them empty, which means
# the chart's appVersion (= the version, checked above); v0.1.0 has `tag: dev`, set here to the
# version. Packaged by helm, then re-packed with sorted entries, fixed owners, modes and times
# (helm stamps the packing time on every entry and in the gzip header).
# shellcheck source=tests/scripts/chart-tools.sh
source "$ROOT/tests/scripts/chart-tools.sh"
chart_tools_install >/dev/null
case "$(grep -c '^    tag: dev$' "$chart/values.yaml"),$(grep -c '^    tag: ""$' "$chart/values.yaml")" in
  3,0) sed -i "s/^\(    tag: \)dev$/\1\"$version\"/" "$chart/values.yaml" ;;
  0,3) ;;
  *) die "values.yaml: expected three image tags, all 'dev' (v0.1.0) or all \"\" (the appVersion)" ;;
esac
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
