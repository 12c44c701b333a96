#!/usr/bin/env bash
# Checks the public Rust API of the plugin SDK (crate weir-plugin) against its last release
# with cargo-semver-checks: a change that would break a plugin written against that release
# fails unless the SDK's version in plugins/sdk/Cargo.toml says so (a new minor while 0.x,
# a new major after). Releases are listed in plugins/sdk/RELEASES, newest last.
set -euo pipefail
cd "$(dirname "$0")/.."
last=$(grep -v '^#' plugins/sdk/RELEASES | grep . | tail -1 || true)
if [ -z "$last" ]; then
  echo "the SDK has no release yet: nothing to compare with"
  exit 0
fi
read -r version commit <<<"$last"
if ! git cat-file -e "${commit}^{commit}" 2>/dev/null; then
  echo "error: the SDK's last release, $version (commit $commit), is not in this clone's history; fetch it (git fetch --unshallow) and run again" >&2
  exit 1
fi
# The default features: the API a plugin gets from `weir-plugin = "…"`.
cargo semver-checks check-release --package weir-plugin --baseline-rev "$commit"
