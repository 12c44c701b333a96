#!/usr/bin/env bash
# Writes plugins/sdk/include/weir_plugin.h, the C header of the plugin ABI, from the Rust
# types in plugins/sdk/src/abi.rs (cbindgen, settings in plugins/sdk/cbindgen.toml).
# With --check: writes nothing, exits 1 when the committed header differs from a fresh one.
set -euo pipefail
cd "$(dirname "$0")/.."
header=plugins/sdk/include/weir_plugin.h
fresh=$(mktemp)
trap 'rm -f "$fresh"' EXIT
cbindgen --quiet --config plugins/sdk/cbindgen.toml --output "$fresh" plugins/sdk/src/abi.rs
if [ "${1:-}" = "--check" ]; then
  if ! diff -u "$header" "$fresh"; then
    echo "error: $header differs from the ABI types in plugins/sdk/src/abi.rs: run scripts/c-header.sh and commit the result" >&2
    exit 1
  fi
else
  mkdir -p "$(dirname "$header")"
  cp "$fresh" "$header"
  echo "wrote $header"
fi
