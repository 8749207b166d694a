#!/usr/bin/env bash
# Benchmark (not a test) of the admission webhook's HTTPS server, in one run on this machine:
# the real server (boundary_webhook::server with the decider of webhook-bench's `admitter()`)
# against two floors (a minimal axum + rustls server with a constant answer; floor+: the same
# answering a constant copy of the webhook's own answer, patch included), all over HTTPS
# keep-alive with a ~5 KiB Pod review. Prints the decider alone at 200 nodes/3 policies and 3 cluster
# policies and at 10,000 nodes/500 and 500 (ratio; target at most 1.2x), fixed-rate latency (p50/p90/p99/p99.9 from the
# scheduled send time; target p99 under 2 ms at 1,000/s) with server CPU per review vs the floor
# (target within 1.5x), and closed-loop throughput with the webhook/floor ratio.
# Usage: tests/bench/webhook.sh [webhook-bench flags, e.g. --seconds 5 --rate 2000 --rounds 1]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
cargo build --release --locked -p boundary-webhook-bench >&2
exec target/release/webhook-bench "$@"
