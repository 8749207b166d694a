#!/usr/bin/env bash
# Runs every fuzz target for a while (default 20 s each): the rule parser, the request-head path
# (framing check + head checks), the TLS ClientHello parser, the jail's DNS server and the sidecar
# socket's header lines and session messages, the proxy's decisions and the credentials' body
# scanner.
# cargo-fuzz works on the stable toolchain without a sanitizer (--sanitizer none).
#   tests/scripts/fuzz.sh [SECONDS_PER_TARGET]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SECS=${1:-20}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz >&2
cd "$ROOT/jail-runtime"
for target in $(cargo fuzz list); do
  echo "[fuzz] $target for ${SECS}s" >&2
  cargo fuzz run "$target" --sanitizer none -- -max_total_time="$SECS" -print_final_stats=0 2>&1 | tail -n 3
done
