#!/usr/bin/env bash
# The supply-chain tools, pinned, built from crates.io once into
# $SUPPLY_TOOLS/<tool>-<version> (default ~/.cache/agent-boundary-tools) and a no-op afterwards:
#   cargo-deny 0.20.2        licenses, bans (duplicate versions), sources, advisories (deny.toml)
#   cargo-cyclonedx 0.5.9    CycloneDX SBOMs of the binaries (tests/scripts/release.sh)
#   cargo-auditable 0.7.7    the dependency list embedded in each released binary (release.sh)
# Run it to install all three; source it to get SUPPLY_TOOLS_PATH (their bin directories, for
# PATH), CARGO_DENY and the function supply_tools_install [deny|cyclonedx|auditable ...].
SUPPLY_TOOLS=${SUPPLY_TOOLS:-$HOME/.cache/agent-boundary-tools}
declare -A SUPPLY_TOOL_VERSIONS=([deny]=0.20.2 [cyclonedx]=0.5.9 [auditable]=0.7.7)
SUPPLY_TOOLS_PATH=
for _tool in deny cyclonedx auditable; do
  SUPPLY_TOOLS_PATH="$SUPPLY_TOOLS_PATH${SUPPLY_TOOLS_PATH:+:}$SUPPLY_TOOLS/cargo-$_tool-${SUPPLY_TOOL_VERSIONS[$_tool]}/bin"
done
unset _tool
CARGO_DENY="$SUPPLY_TOOLS/cargo-deny-${SUPPLY_TOOL_VERSIONS[deny]}/bin/cargo-deny"

supply_tools_install() {
  local tool version root
  for tool in "${@:-deny cyclonedx auditable}"; do
    for tool in $tool; do
      version=${SUPPLY_TOOL_VERSIONS[$tool]:?unknown tool $tool}
      root="$SUPPLY_TOOLS/cargo-$tool-$version"
      [ -x "$root/bin/cargo-$tool" ] && continue
      echo "[supply-tools] installing cargo-$tool $version from crates.io into $root" >&2
      # Into a temporary root first: an interrupted build leaves nothing that looks installed.
      rm -rf "$root.tmp"
      cargo install --quiet --locked --version "$version" --root "$root.tmp" "cargo-$tool" >&2
      rm -rf "$root" && mv "$root.tmp" "$root"
    done
  done
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  supply_tools_install "$@"
fi
