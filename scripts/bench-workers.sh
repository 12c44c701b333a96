#!/usr/bin/env bash
# Transform workers: the default pipeline as shipped (http → validate → enrich → dedupe →
# websocket + file, answering after delivery) and the lean pipeline (http → enrich adding
# two fields → discard, answering once queued) with one transform worker and with the
# default (one per core), and the physical limit for the lean pipeline's work on this
# machine: bench's `bare_http`, a hyper server that parses each body into its records and
# answers 200 (no pipeline); alternately, ROUNDS times; every run printed with its peak RSS.
#
#   scripts/bench-workers.sh     # ROUNDS=2 SECONDS_PER_RUN=10 CONNECTIONS=8
#
# BIN=DIR runs the binaries and plugins in DIR instead of building (for example a copy of
# another commit's target/release, to compare two versions in one run); VARIANTS picks the
# runs (default: "default-1 default-default lean-1 lean-default bare"; also "empty-default",
# the lean pipeline without its transform: the host's own share); RATE=N sends N events/s
# instead of as fast as answers come (latency at a given load). Each run also prints the
# server's CPU time per event (user + system, from /proc).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
CONNECTIONS=${CONNECTIONS:-8}
VARIANTS=${VARIANTS:-default-1 default-default lean-1 lean-default bare}
RATE=${RATE:-0}
if [ -z "${BIN:-}" ]; then
  cargo build --release --workspace --quiet
  BIN=target/release
fi
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

lean='source: {plugin: http, config: {listen: "127.0.0.1:3901", respond_after: accepted, max_events: 1000}}
transforms: [{plugin: enrich, config: {set: {receivedAt: "{{received_at}}", host: "{{hostname}}"}}}]
sinks: [{plugin: discard}]'
empty='source: {plugin: http, config: {listen: "127.0.0.1:3901", respond_after: accepted, max_events: 1000}}
sinks: [{plugin: discard}]'
for workers in 1 default; do
  mkdir -p "$work/default-$workers" "$work/lean-$workers" "$work/empty-$workers"
  settings=""
  [ "$workers" = 1 ] && settings="settings: {transform_workers: 1}"
  { sed "s|../schemas/|$PWD/schemas/|" pipelines/default.yaml; echo "$settings"; } > "$work/default-$workers/p.yaml"
  { echo "$lean"; echo "$settings"; } > "$work/lean-$workers/p.yaml"
  { echo "$empty"; echo "$settings"; } > "$work/empty-$workers/p.yaml"
done

run() { # variant
  local variant=$1 port=3901 admin=3983
  if [ "$variant" = bare ]; then
    "$BIN/bare_http" 127.0.0.1:$port &
    local pid=$!
    for _ in $(seq 100); do curl -s -o /dev/null -d '[]' "http://127.0.0.1:$port/produce" && break; sleep 0.05; done
    local result rss t0 t1
    t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
    result=$("$BIN/weir-bench" --url "http://127.0.0.1:$port/produce" --connections "$CONNECTIONS" --batch 100 --event-bytes 300 --seconds "$SECONDS_PER_RUN" --rate "$RATE" --json)
    t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
    rss=$(awk '/VmHWM/{print $2/1024}' "/proc/$pid/status")
    kill -TERM $pid; wait $pid || true
    echo "$variant peak_rss_mib=$rss server_cpu_ticks=$((t1 - t0)) $result"
    return
  fi
  WEIR_HTTP_LISTEN=127.0.0.1:$port WEIR_WS_LISTEN=127.0.0.1:3902 WEIR_EVENTS_FILE="$work/events.jsonl" \
    "$BIN/weir" run --pipelines "$work/$variant" --admin 127.0.0.1:$admin --log warn --no-watch &
  local pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$admin/health" >/dev/null && break; sleep 0.05; done
  local result t0 t1
  t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
  result=$("$BIN/weir-bench" --url "http://127.0.0.1:$port/produce" --connections "$CONNECTIONS" --batch 100 --event-bytes 300 --seconds "$SECONDS_PER_RUN" --rate "$RATE" --json)
  t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
  local rss
  rss=$(awk '/VmHWM/{print $2/1024}' "/proc/$pid/status")
  kill -TERM $pid; wait $pid || true
  rm -f "$work/events.jsonl"
  echo "$variant peak_rss_mib=$rss server_cpu_ticks=$((t1 - t0)) $result"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
for _ in $(seq "$ROUNDS"); do
  for v in $VARIANTS; do run "$v"; done
done
