#!/usr/bin/env bash
# Cost of host traces: the default pipeline (http → validate → enrich → dedupe → websocket
# + file) with traces off against traces on at 100% sampling, exported over OTLP/gRPC to a
# receiver on loopback that counts the spans. Runs the two alternately ROUNDS times.
#
#   scripts/bench-traces.sh      # ROUNDS=3 SECONDS_PER_RUN=10 CONNECTIONS=8
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
CONNECTIONS=${CONNECTIONS:-8}
cargo build --release --workspace --quiet
BIN=target/release
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/p"
sed "s|../schemas/|$PWD/schemas/|" pipelines/default.yaml > "$work/p/default.yaml"

run() { # variant: off | on
  local variant=$1 port=3901 admin=3983 otlp=3917 env=()
  if [ "$variant" = on ]; then
    "$BIN/otlp_counter" 127.0.0.1:$otlp > "$work/spans" &
    local receiver=$!
    env=(WEIR_TRACES_ENABLED=true WEIR_TRACES_ENDPOINT=http://127.0.0.1:$otlp WEIR_TRACES_SAMPLING_RATIO=1)
  fi
  env "${env[@]}" WEIR_HTTP_LISTEN=127.0.0.1:$port WEIR_WS_LISTEN=127.0.0.1:3902 WEIR_EVENTS_FILE="$work/events.jsonl" \
    "$BIN/weir" run --pipelines "$work/p" --admin 127.0.0.1:$admin --log warn &
  local pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$admin/health" >/dev/null && break; sleep 0.05; done
  local result spans=""
  result=$("$BIN/weir-bench" --url "http://127.0.0.1:$port/produce" --connections "$CONNECTIONS" --batch 100 --event-bytes 300 --seconds "$SECONDS_PER_RUN" --json)
  local dropped
  dropped=$(curl -s "http://127.0.0.1:$admin/metrics" | awk '/^weir_telemetry_spans_total\{outcome="dropped/{s+=$2} END{print s+0}')
  kill -TERM $pid; wait $pid || true
  if [ "$variant" = on ]; then
    kill -TERM $receiver; wait $receiver || true
    spans=" spans_received=$(cat "$work/spans") spans_dropped=$dropped"
  fi
  rm -f "$work/events.jsonl"
  echo "$variant $result$spans"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
for r in $(seq "$ROUNDS"); do
  run off
  run on
done
