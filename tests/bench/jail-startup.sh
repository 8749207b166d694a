#!/usr/bin/env bash
# Benchmark (not a test): start-up of `boundary run -- true` against `unshare -Urn true` (the
# issue's reference) and against unshare creating the same namespaces as the jail, on this
# machine, in one run. Prints the medians and the ratio; target: under 2x and under 15 ms.
# Usage: tests/bench/jail-startup.sh [RUNS]     (as root; installs hyperfine from Debian)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RUNS=${1:-300}
command -v hyperfine >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hyperfine >/dev/null; }
cd "$ROOT"
TARGET=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$TARGET" -p boundary >&2
BIN="target/$TARGET/release/boundary"
out=$(mktemp)
hyperfine -N --warmup 20 --min-runs "$RUNS" --export-json "$out" \
  'unshare -Urn true' \
  'unshare -Urnmi --fork --pid --mount-proc true' \
  "$BIN run -- true" >&2
python3 - "$out" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
ref = r["unshare -Urn true"]["median"]
for cmd, x in r.items():
    print(f"{cmd:55s} median {x['median']*1000:6.2f} ms   {x['median']/ref:4.2f}x")
PY
rm -f "$out"
