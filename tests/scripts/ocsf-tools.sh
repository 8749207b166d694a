#!/usr/bin/env bash
# The OCSF schema the proxy's OCSF audit lines are checked against, pinned, installed once into a
# venv and a no-op afterwards:
#   ocsf-json-schema 1.2.0  from PyPI: ships OCSF's own schema exports (schema.ocsf.io
#                           `export/schema`, 1.3.0 among them) and turns a class into a JSON Schema
#                           (draft 2020-12: required attributes, enums, types, no unknown attributes)
#   jsonschema 4.23.0       from PyPI: the validator
# The venv is under $OCSF_TOOLS (default /opt/agent-boundary-tools, readable by every user: the
# proxy's tests also run as uid 65534, see unprivileged-proxy-tests.sh); the tests use
# $OCSF_TOOLS/ocsf-json-schema-1.2.0/bin/python (jail-runtime/proxy/tests/ocsf.rs).
# Needs python3 with venv (tests/scripts/setup.sh installs them from Debian).
OCSF_TOOLS=${OCSF_TOOLS:-/opt/agent-boundary-tools}
OCSF_JSON_SCHEMA=1.2.0
JSONSCHEMA=4.23.0
OCSF_VENV="$OCSF_TOOLS/ocsf-json-schema-$OCSF_JSON_SCHEMA"
OCSF_PY="$OCSF_VENV/bin/python"

ocsf_tools_install() {
  [ -e "$OCSF_VENV/.installed" ] && return 0
  echo "[ocsf-tools] installing ocsf-json-schema $OCSF_JSON_SCHEMA and jsonschema $JSONSCHEMA (PyPI) into $OCSF_VENV" >&2
  mkdir -p "$OCSF_TOOLS"
  chmod 755 "$OCSF_TOOLS"
  rm -rf "$OCSF_VENV"
  (umask 022 && /usr/bin/python3 -m venv "$OCSF_VENV" >&2 &&
    "$OCSF_VENV/bin/pip" install --quiet --disable-pip-version-check --only-binary :all: \
      "ocsf-json-schema==$OCSF_JSON_SCHEMA" "jsonschema==$JSONSCHEMA" >&2)
  touch "$OCSF_VENV/.installed"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  ocsf_tools_install
fi
