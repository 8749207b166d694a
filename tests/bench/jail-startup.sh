#!/usr/bin/env bash
# Benchmark (not a test): start-up of `boundary run -- true` against `unshare -Urn true` (the
# issue's reference) and against unshare creating the same namespaces as the jail, on this
# machine, in one run. Each binary given (e.g. a build of an older commit next to this tree's)
# is measured in the same run: hyperfine rounds over every command, interleaved (A B C A B C ...),
# so a load that comes and goes on a shared machine falls on all of them alike; medians of all
# rounds' runs. Prints each median, its ratio to `unshare -Urn true`, and the issue's target.
# Usage: tests/bench/jail-startup.sh [RUNS] [BINARY...]
#   RUNS: runs of each command (default 300, in rounds of 30); BINARY: `boundary` builds to
#   compare (default: this tree's static release build). As root; installs hyperfine from Debian.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RUNS=${1:-300}
shift || true
command -v hyperfine >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hyperfine >/dev/null; }
cd "$ROOT"
if [ $# -eq 0 ]; then
  TARGET=x86_64-unknown-linux-gnu
  RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$TARGET" -p boundary >&2
  set -- "${CARGO_TARGET_DIR:-target}/$TARGET/release/boundary"
fi
commands=('unshare -Urn true' 'unshare -Urnmi --fork --pid --mount-proc true')
for bin in "$@"; do commands+=("$bin run -- true"); done
ROUND=30
rounds=$(( (RUNS + ROUND - 1) / ROUND ))
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
hyperfine -N --warmup 20 --runs "$ROUND" "${commands[@]}" >/dev/null 2>&1 || true
for round in $(seq "$rounds"); do
  hyperfine -N --runs "$ROUND" --export-json "$work/$round.json" "${commands[@]}" >/dev/null 2>"$work/err" ||
    { cat "$work/err" >&2; exit 1; }
  echo "round $round/$rounds done" >&2
done
python3 - "$work" <<'PY'
import glob, json, statistics, sys
times = {}
for path in sorted(glob.glob(sys.argv[1] + "/*.json")):
    for x in json.load(open(path))["results"]:
        times.setdefault(x["command"], []).extend(x["times"])
ref = statistics.median(times["unshare -Urn true"])
print(f"{'command':55s} {'median':>9s} {'vs unshare -Urn':>16s}   runs")
for cmd, t in times.items():
    m = statistics.median(t)
    q1, _, q3 = statistics.quantiles(t, n=4)
    target = "   target: under 1.5x" if cmd.endswith(" run -- true") else ""
    print(f"{cmd:55s} {m*1000:6.2f} ms {m/ref:15.2f}x   {len(t)} (IQR {q1*1000:.2f}-{q3*1000:.2f} ms){target}")
PY
