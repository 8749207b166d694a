#!/usr/bin/env bash
# The policy proxy's own tests (unit and in-process) run as an unprivileged user with no
# capabilities: the proxy needs no privilege, only the jail does. Run as root (test-all.sh does):
# the test binaries are copied where uid 65534 can read them and run with setpriv.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
chmod 755 "$dir"
cargo test --locked -p boundary-proxy --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])' >"$dir/list"
[ -s "$dir/list" ] || { echo "no test binaries of boundary-proxy were built" >&2; exit 1; }
while read -r bin; do
  cp "$bin" "$dir/" && chmod 755 "$dir/$(basename "$bin")"
  echo "== $(basename "$bin") as uid 65534, no capabilities" >&2
  (cd "$dir" && setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all --bounding-set=-all \
    "./$(basename "$bin")" --quiet) </dev/null
done <"$dir/list"
