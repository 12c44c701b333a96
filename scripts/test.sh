#!/usr/bin/env bash
# All of Weir's checks, in the order CI runs them. Fails on the first problem.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== dependencies"; bash scripts/deps.sh
echo "== format"; cargo fmt --all --check
echo "== lints"; cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== build"; cargo build --workspace --quiet
echo "== schemas"; "${CARGO_TARGET_DIR:-target}/debug/weir" schema --check
echo "== C header"; bash scripts/c-header.sh --check
echo "== SDK API"; bash scripts/sdk-semver.sh
echo "== pipeline tests"; "${CARGO_TARGET_DIR:-target}/debug/weir" test pipelines examples/*/ examples/activity-events/replay examples/nexus-analytics/routed \
  --junit "${CARGO_TARGET_DIR:-target}/pipeline-tests.xml"
echo "== tests"; cargo nextest run --workspace --no-fail-fast
