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
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
for target in $(cargo fuzz list); do
  echo "[fuzz] $target for ${SECS}s" >&2
  # RUST_LIB_BACKTRACE=0: cargo-fuzz's own error would otherwise end the output with its stack.
  if RUST_LIB_BACKTRACE=0 cargo fuzz run "$target" --sanitizer none -- -max_total_time="$SECS" -print_final_stats=0 >"$LOG" 2>&1; then
    tail -n 3 "$LOG"
  else
    # A crash: the panic's message, the input that caused it and how to run it again, without the
    # backtrace's frames (CI shows only the end of a step's output).
    grep -v -E '^[[:space:]]+([0-9]+: |at )' "$LOG" | tail -n 60 || true
    echo "[fuzz] $target failed: the input is kept under jail-runtime/fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
