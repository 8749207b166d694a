#!/usr/bin/env bash
# The CRD compatibility check: the tree's crds/*.yaml against the previous release's, refusing a
# field dropped, a type changed, a new required field, a narrowed enum, tightened validation, ...
# within a version both serve (boundary-crd-compat; rules in crds/src/crd_compat.rs).
# Baseline: the CRDs of the newest release in RELEASES other than the tree's version (its commit;
# tags need not travel with a clone), or, while there is none, the committed crds/compat-baseline/
# (the first release's CRDs). BASELINE=DIR|FILE or BASELINE_REF=<git ref> choose another.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
if [ -n "${BASELINE:-}" ]; then
  baseline=$BASELINE what="$BASELINE"
else
  # shellcheck source=tests/scripts/releases.sh
  . "$ROOT/tests/scripts/releases.sh"
  released=$(previous_release)
  ref=${BASELINE_REF:-${released#* }}
  if [ -n "$ref" ]; then
    git cat-file -e "$ref^{commit}" 2>/dev/null ||
      { echo "crd-compat: $ref (${released:+release ${released% *} in RELEASES}) is not in this clone: fetch the whole history" >&2; exit 1; }
    # The tag's crds/*.yaml (top level only, as the tree keeps them).
    for file in $(git ls-tree --name-only "$ref" crds/ | grep -E '^crds/[^/]+\.yaml$'); do
      git show "$ref:$file" > "$tmp/$(basename "$file")"
    done
    baseline=$tmp what="the CRDs of ${BASELINE_REF:-release ${released% *} ($ref)}"
  else
    baseline=crds/compat-baseline what="crds/compat-baseline/ (no release in RELEASES yet)"
  fi
fi
echo "crd-compat: baseline: $what" >&2
cargo run --quiet --locked -p boundary-api --bin boundary-crd-compat -- "$baseline" crds
