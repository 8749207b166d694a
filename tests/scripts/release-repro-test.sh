#!/usr/bin/env bash
# Proves tests/scripts/release.sh reproducible: builds the release of REF (default HEAD) twice,
# from sources in two different directories with two separate target directories (so nothing
# is shared but the crates' sources), and requires identical SHA256SUMS. Then checks what the
# artifacts claim: static binaries with their dependency list embedded, SBOMs naming their
# crates and files, image archives whose layers hold exactly the binaries, a chart of the
# workspace version with image tags of that version.
#   release-repro-test.sh [REF]       (two full release builds: ~2 x 10 min on 2 cores)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
REF=${1:-HEAD}
base=${RELEASE_REPRO_DIR:-/tmp/agent-boundary-release-repro}
rm -rf "$base/a/src" "$base/b/src" "$base/a/out" "$base/b/out"
for side in a b; do
  echo "release-repro-test: build $side of $REF" >&2
  RELEASE_WORK=$base/$side CARGO_TARGET_DIR=$base/$side/target \
    tests/scripts/release.sh "$REF" "$base/$side/out"
done
if ! diff -u "$base/a/out/SHA256SUMS" "$base/b/out/SHA256SUMS"; then
  echo "release-repro-test: FAILED: the two builds of $REF differ (above)" >&2
  exit 1
fi
echo "release-repro-test: both builds of $REF have the same SHA256SUMS ($(wc -l < "$base/a/out/SHA256SUMS") files)" >&2
python3 tests/scripts/release_check.py "$base/a/out" "$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
