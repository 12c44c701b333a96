#!/usr/bin/env bash
# Benchmark of a dedupe-only pipeline over loopback: http → dedupe (/eventId) → file, with
# the window in memory and in the machine's Redis (127.0.0.1:6379, a fresh key prefix per
# run, removed afterwards). Prints one JSON line per run.
#
#   scripts/bench-dedupe.sh                 # ROUNDS=2 SECONDS_PER_RUN=5 CONNECTIONS=8
#   BIN=/other/build/release scripts/bench-dedupe.sh   # another build (no cargo build then)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
CONNECTIONS=${CONNECTIONS:-8}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet -p weir -p weir-http -p weir-dedupe -p weir-file -p weir-bench
  BIN=target/release
fi
REDIS=${REDIS:-redis://127.0.0.1:6379}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

run() { # store
  local store=$1 port=3911 admin=3993 prefix="weir:bench:$$:$RANDOM:"
  mkdir -p "$work/p"
  cat > "$work/p/ingest.yaml" <<EOF
source: {plugin: http, config: {listen: "127.0.0.1:$port"}}
transforms:
  - plugin: dedupe
    config: {fields: [/eventId], store: "$store", key_prefix: "$prefix"}
sinks: [{plugin: file, config: {path: "$work/events.jsonl"}}]
EOF
  "$BIN/weir" run --pipelines "$work/p" --plugins "$BIN" --admin 127.0.0.1:$admin --log warn --no-watch &
  local pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$admin/health" >/dev/null && break; sleep 0.05; done
  local result
  result=$("$BIN/weir-bench" --url "http://127.0.0.1:$port/produce" --connections "$CONNECTIONS" --batch 100 --event-bytes 300 --seconds "$SECONDS_PER_RUN" --json)
  kill -TERM $pid; wait $pid || true
  rm -f "$work/events.jsonl"
  if [ "$store" != memory ]; then
    redis-cli EVAL "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end" 0 "$prefix*" >/dev/null
  fi
  echo "${store%%:*} $result"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); build: $BIN"
for r in $(seq "$ROUNDS"); do
  run memory
  run "$REDIS"
done
