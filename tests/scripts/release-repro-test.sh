#!/usr/bin/env bash
# Proves tests/scripts/release.sh reproducible: builds the release of REF (default HEAD) twice,
# from sources in two different directories with two separate target directories (so nothing
# is shared but the crates' sources), and requires identical SHA256SUMS. Then checks what the
# artifacts claim (tests/scripts/release_check.py): static binaries with their dependency list
# embedded, SBOMs naming exactly the crates linked (against the binaries' embedded lists and the
# crate sources their code names), image archives whose layers hold exactly the binaries, a
# chart of the workspace version rendering images of that version.
#   release-repro-test.sh [REF]     two full release builds: 30 min on 2 cores from empty
#                                   target directories (with the release profile's fat LTO);
#                                   RELEASE_REPRO_DIR (default
#                                   /tmp/agent-boundary-release-repro) keeps them for the next run
# Not in the test command (too slow); tests/scripts/release-quick-test.sh is.
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
# shellcheck source=tests/scripts/chart-tools.sh
source "$ROOT/tests/scripts/chart-tools.sh"
version=$(git show "$REF:Cargo.toml" | sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p')
HELM=$HELM python3 tests/scripts/release_check.py "$base/a/out" "$version"
