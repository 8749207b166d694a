#!/usr/bin/env bash
# The parts of the release that need no release build, for the test command (a few seconds;
# the full proof, tests/scripts/release-repro-test.sh, builds everything twice: 30 min on 2
# cores with the release profile's fat LTO):
#   1. release_tools_test.py: which crates a binary's SBOM lists (the units of its package's own
#      build, not the workspace's resolution), cargo auditable's embedded list read back from a
#      binary it built, the image archives and SBOMs reproducible and complete;
#   2. the chart and CRDs of HEAD released twice (RELEASE_ONLY=chart), from two directories, with
#      another umask and a later clock: the same SHA256SUMS; then release_check.py on them
#      (version, appVersion, the images `helm template` renders).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
# shellcheck source=tests/scripts/supply-tools.sh
source "$ROOT/tests/scripts/supply-tools.sh"
supply_tools_install auditable
# shellcheck source=tests/scripts/chart-tools.sh
source "$ROOT/tests/scripts/chart-tools.sh"
chart_tools_install >/dev/null

CARGO_AUDITABLE="$SUPPLY_TOOLS/cargo-auditable-${SUPPLY_TOOL_VERSIONS[auditable]}/bin/cargo-auditable" \
  python3 tests/scripts/release_tools_test.py

work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
RELEASE_ONLY=chart RELEASE_WORK="$work/a" tests/scripts/release.sh HEAD "$work/a/out" 2>"$work/a.log" \
  || { cat "$work/a.log" >&2; exit 1; }
sleep 1
( umask 077; RELEASE_ONLY=chart RELEASE_WORK="$work/elsewhere/b" tests/scripts/release.sh HEAD "$work/b-out" 2>"$work/b.log" ) \
  || { cat "$work/b.log" >&2; exit 1; }
if ! diff -u "$work/a/out/SHA256SUMS" "$work/b-out/SHA256SUMS"; then
  echo "release-quick-test: FAILED: two releases of the chart and CRDs differ (above)" >&2
  exit 1
fi
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
HELM=$HELM python3 tests/scripts/release_check.py "$work/a/out" "$version" --chart-only
echo "release-quick-test: the chart and CRDs of HEAD released twice: the same SHA256SUMS ($(wc -l < "$work/a/out/SHA256SUMS") files)" >&2
