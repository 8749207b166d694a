#!/usr/bin/env bash
# Proves the advisories check is real although no copy of the RustSec database is reachable
# here: builds a database of its own in RustSec's layout (a git repository, one advisory) and
# runs tests/scripts/supply-chain.sh's advisories check with it:
#   - an advisory against a crate of the tree (httparse, every version) must fail the check and
#     be named in its output;
#   - one against a crate the tree does not have must pass.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

make_db() { # DIR CRATE ID
  local dir=$1 crate=$2 id=$3
  mkdir -p "$dir/crates/$crate"
  cat > "$dir/crates/$crate/$id.md" <<ADV
\`\`\`toml
[advisory]
id = "$id"
package = "$crate"
date = "$(date -u +%Y-%m-%d)"
url = "https://example.invalid/$id"
categories = ["memory-corruption"]
keywords = ["test"]

[versions]
patched = []
\`\`\`

# A made-up advisory of tests/scripts/advisories-test.sh

Every version of $crate is affected.
ADV
  git -C "$dir" init -q -b main
  git -C "$dir" -c user.name=test -c user.email=test@example.invalid add -A
  git -C "$dir" -c user.name=test -c user.email=test@example.invalid commit -q -m "$id"
}

make_db "$tmp/hit" httparse RUSTSEC-2099-0001
make_db "$tmp/miss" no-such-crate-in-the-tree RUSTSEC-2099-0002
if BOUNDARY_ADVISORY_DB=$tmp/hit tests/scripts/supply-chain.sh advisories > "$tmp/hit.log" 2>&1; then
  cat "$tmp/hit.log" >&2
  echo "advisories-test: FAILED: an advisory against httparse passed the check" >&2; exit 1
fi
grep -q RUSTSEC-2099-0001 "$tmp/hit.log" \
  || { cat "$tmp/hit.log" >&2; echo "advisories-test: FAILED: the refusal does not name the advisory" >&2; exit 1; }
BOUNDARY_ADVISORY_DB=$tmp/miss tests/scripts/supply-chain.sh advisories > "$tmp/miss.log" 2>&1 \
  || { cat "$tmp/miss.log" >&2; echo "advisories-test: FAILED: an advisory against no crate of the tree failed the check" >&2; exit 1; }
echo "advisories-test: an advisory against httparse refuses the tree, one against another crate does not" >&2
