#!/usr/bin/env bash
# Benchmark (not a test): start-up of the policy proxy, `boundary sidecar`, from spawn until its
# explicit-proxy port accepts a connection, median of RUNS starts, for each binary given (e.g. a
# build of an older commit next to the current one, in one run on this machine).
# Usage: tests/bench/proxy-startup.sh [RUNS] [BINARY...]   (default: this tree's static release build)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RUNS=${1:-100}
shift || true
cd "$ROOT"
if [ $# -eq 0 ]; then
  TARGET=x86_64-unknown-linux-gnu
  RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$TARGET" -p boundary >&2
  set -- "target/$TARGET/release/boundary"
fi
python3 - "$RUNS" "$@" <<'PY'
import json, os, socket, statistics, subprocess, sys, tempfile, time
runs, binaries = int(sys.argv[1]), sys.argv[2:]
def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
def start_once(binary, work):
    policy = os.path.join(work, "policy.json")
    with open(policy, "w") as f:
        json.dump({"version": 1, "policies": [{"name": "bench", "allow": ["domain=example.com"]}]}, f)
    sock = os.path.join(work, "proxy.sock")
    if os.path.exists(sock): os.unlink(sock)
    port = free_port()
    began = time.perf_counter()
    child = subprocess.Popen([binary, "sidecar", "--socket", sock, "--policy-file", policy,
                              "--explicit-proxy", f"127.0.0.1:{port}", "--audit-file", "/dev/null",
                              "--metrics-addr", f"127.0.0.1:{free_port()}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return time.perf_counter() - began
            except OSError:
                if child.poll() is not None:
                    sys.exit(f"{binary} sidecar exited with {child.returncode}")
                time.sleep(0.0005)
    finally:
        child.kill(); child.wait()
with tempfile.TemporaryDirectory() as work:
    results = {b: [] for b in binaries}
    for _ in range(runs):          # interleaved, so drift on the machine hits every binary alike
        for b in binaries:
            results[b].append(start_once(b, work))
    for b, t in results.items():
        t.sort()
        print(f"{b:60s} median {statistics.median(t)*1000:6.2f} ms   p90 {t[int(len(t)*0.9)]*1000:6.2f} ms")
PY
