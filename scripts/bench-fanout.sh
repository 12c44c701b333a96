#!/usr/bin/env bash
# Fan-out to dashboards: events/s delivered to CLIENTS connected dashboards and the latency
# from ingest to arrival, socketio sink against the websocket sink in the same run. Pipeline:
# http → enrich (receivedAt) → the sink; load from weir-bench, one event per POST as the Neo
# front end sends them (BATCH, over CONNECTIONS); dashboards spread over PROCS Node processes
# (bench/fanout/fanout.js, added up by bench/fanout/sum.py), measuring after a warm-up of
# WARMUP seconds under load (Node's JIT and the connections' first bursts left out).
#
# For each sink: an unpaced run, then the peak: the highest paced rate (starting from what a
# dashboard got unpaced, raised by a quarter while it holds, else lowered by a fifth until it
# does) at which every dashboard gets at least 99% of the paced events and none is
# disconnected; then the latency at half that peak.
#
#   scripts/bench-fanout.sh      # ROUNDS=1 CLIENTS=100 PROCS=4 SECONDS_PER_RUN=8 BATCH=1 CONNECTIONS=8 WARMUP=5
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-1}
CLIENTS=${CLIENTS:-100}
PROCS=${PROCS:-4}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
BATCH=${BATCH:-1}
CONNECTIONS=${CONNECTIONS:-8}
WARMUP=${WARMUP:-5}
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

run() { # mode rate → one JSON line: the dashboards' figures and the load's
  local mode=$1 rate=$2 url pids=()
  "$BIN/weir" run --pipelines "$work/$mode" --admin 127.0.0.1:3983 --log warn --no-watch &
  local pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:3983/health" >/dev/null && break; sleep 0.05; done
  if [ "$mode" = ws ]; then url=ws://127.0.0.1:3912/; else url=http://127.0.0.1:3912; fi
  for i in $(seq "$PROCS"); do
    node bench/fanout/fanout.js "$mode" "$url" $((CLIENTS / PROCS)) "$SECONDS_PER_RUN" "$WARMUP" > "$work/out.$i" &
    pids+=($!)
  done
  # The load starts once every dashboard is connected (the sink's gauge says so).
  for _ in $(seq 200); do
    n=$(curl -s http://127.0.0.1:3983/metrics | sed -n 's/^weir_plugin_connected_clients{[^}]*} \([0-9.]*\)$/\1/p' | head -1)
    [ "${n%.*}" = "$(( (CLIENTS / PROCS) * PROCS ))" ] && break
    sleep 0.05
  done
  "$BIN/weir-bench" --url http://127.0.0.1:3911/produce --connections "$CONNECTIONS" --batch "$BATCH" --event-bytes 300 \
    --seconds $((SECONDS_PER_RUN + WARMUP + 1)) --warmup 1 --rate "$rate" --json > "$work/load.json"
  wait "${pids[@]}" || true
  kill -TERM $pid; wait $pid || true
  local sum
  sum=$(cat "$work"/out.* | python3 bench/fanout/sum.py)
  echo "{\"mode\":\"$mode\",\"rate\":$rate,\"dashboards\":$sum,\"load\":$(cat "$work/load.json")}"
}

field() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(eval(sys.argv[2], {}, d))" "$1" "$2"; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB; $CLIENTS dashboards in $PROCS processes"
for _ in $(seq "$ROUNDS"); do
  for mode in ws sio; do
    line=$(run "$mode" 0); echo "unpaced $line"
    rate=$(field "$line" "dashboards['events_per_dashboard_per_sec']")
    # Up by a quarter while it holds, else down by a fifth until it does.
    peak=0
    for _ in 1 2 3 4 5 6; do
      line=$(run "$mode" "$rate")
      echo "try $line"
      if [ "$(field "$line" "int(dashboards['slowest_dashboard_per_sec'] >= 0.99 * $rate and dashboards['disconnects'] == 0)")" = 1 ]; then
        peak=$rate; rate=$((rate * 5 / 4))
      else
        [ "$peak" -gt 0 ] && break
        rate=$((rate * 4 / 5))
      fi
    done
    echo "peak $mode $peak"
    [ "$peak" -gt 0 ] && { line=$(run "$mode" $((peak / 2))); echo "half $line"; }
  done
done
