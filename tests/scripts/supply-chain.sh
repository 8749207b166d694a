#!/usr/bin/env bash
# The supply-chain checks of the test command (tests/scripts/test-all.sh), no cluster needed:
#   1. cargo deny (deny.toml): licenses, bans (duplicate versions, wildcards), sources
#      (crates.io only); advisories only with a copy of the RustSec database:
#        BOUNDARY_ADVISORY_DB=<a git clone of github.com/rustsec/advisory-db>
#      (these machines reach no copy: without it the check is reported as SKIPPED, never passed)
#   2. one version: Chart.yaml's version and appVersion are the workspace's (Cargo.toml), as
#      tests/scripts/release.sh requires
#   3. the CRD compatibility check against the previous release (tests/scripts/crd-compat.sh)
# `supply-chain.sh advisories` runs only the advisories check (BOUNDARY_ADVISORY_DB required;
# tests/scripts/advisories-test.sh uses it with a database of its own).
set -euo pipefail
ONLY=${1:-}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
# shellcheck source=tests/scripts/supply-tools.sh
source "$ROOT/tests/scripts/supply-tools.sh"
supply_tools_install deny

if [ "$ONLY" != advisories ]; then
  echo "supply-chain: cargo deny check licenses bans sources" >&2
  "$CARGO_DENY" --locked --color never --config deny.toml check licenses bans sources
fi

if [ -n "${BOUNDARY_ADVISORY_DB:-}" ]; then
  [ -d "$BOUNDARY_ADVISORY_DB/crates" ] \
    || { echo "supply-chain: BOUNDARY_ADVISORY_DB=$BOUNDARY_ADVISORY_DB is not a clone of the RustSec advisory database (no crates/ folder)" >&2; exit 1; }
  # cargo-deny keeps the database of deny.toml's db-urls in <db-path>/advisory-db-<hash of the
  # URL>; --offline makes it use what is there instead of fetching: the given copy, linked in.
  cache=$(mktemp -d); trap 'rm -rf "$cache"' EXIT
  db=$(cd "$BOUNDARY_ADVISORY_DB" && pwd)
  ln -s "$db" "$cache/advisory-db-3157b0e258782691"
  echo "supply-chain: cargo deny check advisories (database: $db, commit $(git -C "$db" log -1 --format='%h of %cs' 2>/dev/null || echo '?'))" >&2
  BOUNDARY_ADVISORY_DB_CACHE=$cache "$CARGO_DENY" --locked --offline --color never --config deny.toml check advisories
elif [ "$ONLY" = advisories ]; then
  echo "supply-chain: advisories: BOUNDARY_ADVISORY_DB is not set" >&2; exit 1
else
  echo "supply-chain: advisories SKIPPED: no copy of the RustSec advisory database (GitHub is out of reach here and no reachable registry carries one); set BOUNDARY_ADVISORY_DB to a clone of it to run this check" >&2
fi
[ "$ONLY" = advisories ] && exit 0

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
for field in version appVersion; do
  value=$(sed -n "s/^$field: \"\{0,1\}\([^\"]*\)\"\{0,1\}$/\1/p" charts/agent-boundary/Chart.yaml)
  if [ "$value" != "$version" ]; then
    echo "supply-chain: charts/agent-boundary/Chart.yaml $field is '$value'; the workspace version (Cargo.toml) is '$version': set both from Cargo.toml" >&2
    exit 1
  fi
done
echo "supply-chain: chart version and appVersion = workspace version $version" >&2

tests/scripts/crd-compat.sh
