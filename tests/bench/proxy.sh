#!/usr/bin/env bash
# Benchmark (not a test) of the policy proxy, in one run on this machine: HTTPS keep-alive small
# requests (req/s, p50/p99) direct vs through `boundary sidecar` vs squid with ssl-bump, a bulk
# download, proxy RSS with idle connections, and a fresh sidecar's first request. Prints a table of
# figures.
# Usage: tests/bench/proxy.sh [proxy-bench flags, e.g. --seconds 5 --bulk 1073741824]
# (as root; installs Debian's squid-openssl for the squid comparison)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
if ! command -v squid >/dev/null || ! squid -v 2>/dev/null | grep -q -- --with-openssl; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq squid-openssl >/dev/null
fi
# The Debian package starts a system squid; the benchmark runs its own.
systemctl stop squid 2>/dev/null || true
ulimit -n 20000 2>/dev/null || true
# `boundary` on its own, as it is released: built with the load generator, cargo would unify their
# features into it.
cargo build --release --locked -p boundary >&2
cargo build --release --locked -p boundary-bench >&2
exec target/release/proxy-bench --boundary target/release/boundary --squid "$@"
