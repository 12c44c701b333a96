#!/usr/bin/env bash
# Fan-out to dashboards: events/s delivered to CLIENTS connected dashboards and the latency
# from ingest to arrival, socketio sink against the websocket sink in the same run. Pipeline:
# http → enrich (receivedAt) → the sink; load from weir-bench. First as fast as it goes
# (peak), then paced at half of each sink's peak for the latency.
#
#   scripts/bench-fanout.sh      # ROUNDS=2 CLIENTS=100 SECONDS_PER_RUN=8
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-100}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
cargo build --release --workspace --quiet
BIN=target/release
export NODE_PATH="${WEIR_TEST_NODE_DIR:-$HOME/.cache/weir-test-node}/node_modules"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

pipeline() { # sink-yaml
  printf 'source: {plugin: http, config: {listen: "127.0.0.1:3911"}}\ntransforms: [{plugin: enrich, config: {set: {receivedAt: "{{received_at}}"}}}]\nsinks: [%s]\n' "$1"
}
mkdir -p "$work/ws" "$work/sio"
pipeline '{plugin: websocket, config: {listen: "127.0.0.1:3912", client_buffer: 100000}}' > "$work/ws/p.yaml"
pipeline '{plugin: socketio, config: {listen: "127.0.0.1:3912", client_buffer: 100000}}' > "$work/sio/p.yaml"

run() { # mode rate
  local mode=$1 rate=$2 url
  "$BIN/weir" run --pipelines "$work/$mode" --admin 127.0.0.1:3983 --log warn --no-watch &
  local pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:3983/health" >/dev/null && break; sleep 0.05; done
  if [ "$mode" = ws ]; then url=ws://127.0.0.1:3912/; else url=http://127.0.0.1:3912; fi
  node bench/fanout/fanout.js "$mode" "$url" "$CLIENTS" "$SECONDS_PER_RUN" 2 > "$work/out.json" &
  local client=$!
  sleep 1
  "$BIN/weir-bench" --url http://127.0.0.1:3911/produce --connections 4 --batch 20 --event-bytes 300 \
    --seconds $((SECONDS_PER_RUN + 2)) --warmup 1 --rate "$rate" --json > "$work/load.json"
  wait $client || true
  kill -TERM $pid; wait $pid || true
  echo "$mode rate=$rate $(cat "$work/out.json") load=$(cat "$work/load.json")"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
for r in $(seq "$ROUNDS"); do
  for mode in ws sio; do
    line=$(run "$mode" 0); echo "$line"
    peak=$(echo "$line" | sed -n 's/.*"events_per_dashboard_per_sec":\([0-9]*\).*/\1/p')
    run "$mode" $((peak / 2))
  done
done
