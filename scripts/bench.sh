#!/usr/bin/env bash
# Benchmark of the default pipeline over loopback: http → validate → enrich → dedupe →
# websocket + file, against the same chain with a no-op transform added (the cost of the
# plugin boundary). Runs the two alternately ROUNDS times and prints every run.
#
#   scripts/bench.sh            # ROUNDS=3 SECONDS_PER_RUN=10 CONNECTIONS=8
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
CONNECTIONS=${CONNECTIONS:-8}
cargo build --release --workspace --quiet
BIN=target/release
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

mkdir -p "$work/default" "$work/noop"
sed "s|../schemas/|$PWD/schemas/|" pipelines/default.yaml > "$work/default/default.yaml"
# The same chain with one more plugin call per batch.
sed 's|^sinks:|  - plugin: noop\nsinks:|' "$work/default/default.yaml" > "$work/noop/default.yaml"

run() { # variant
  local variant=$1 port=3901 admin=3983
  WEIR_HTTP_LISTEN=127.0.0.1:$port WEIR_WS_LISTEN=127.0.0.1:3902 WEIR_EVENTS_FILE="$work/events-$variant.jsonl" \
    "$BIN/weir" run --pipelines "$work/$variant" --admin 127.0.0.1:$admin --log warn &
  local pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$admin/health" >/dev/null && break; sleep 0.05; done
  local result
  result=$("$BIN/weir-bench" --url "http://127.0.0.1:$port/produce" --connections "$CONNECTIONS" --batch 100 --event-bytes 300 --seconds "$SECONDS_PER_RUN" --json)
  kill -TERM $pid; wait $pid || true
  rm -f "$work/events-$variant.jsonl"
  echo "$variant $result"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
for r in $(seq "$ROUNDS"); do
  run default
  run noop
done
