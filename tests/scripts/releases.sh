# Sourced by the scripts that need the previous release (previous-release.sh, crd-compat.sh);
# expects $ROOT. Tags need not travel with a clone, so releases are read from RELEASES.

# The workspace version (Cargo.toml [workspace.package]).
workspace_version() {
  sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml"
}

# "<version> <commit>" of the newest release in RELEASES other than the tree's version; nothing
# while there is none (comments and blank lines skipped).
previous_release() {
  awk -v v="$(workspace_version)" 'NF && $1 !~ /^#/ && $1 != v' "$ROOT/RELEASES" | tail -1
}
