#!/usr/bin/env bash
# Kafka benchmark, one broker, one run: Weir's Kafka sink fed by the file source against a
# bare rust-rdkafka producer (same messages, same producer settings), and Weir's Kafka source
# into the discarding sink against a bare rust-rdkafka consumer.
#
#   scripts/bench-kafka.sh          # MESSAGES=200000 ROUNDS=2
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-200000}
ROUNDS=${ROUNDS:-2}
TANSU=${TANSU:-$HOME/.cargo/bin/tansu}
cargo build --release --workspace --quiet
BIN=$PWD/target/release
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
broker=127.0.0.1:$port
(cd "$work" && exec "$TANSU" broker --listener-url "tcp://$broker" --advertised-listener-url "tcp://$broker" --storage-engine sqlite://bench.db >tansu.log 2>&1) &
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
python3 - "$MESSAGES" > "$work/events.jsonl" <<'PY'
import json, sys
pad = "x" * 160
for i in range(int(sys.argv[1])):
    print(json.dumps({"eventType": "page_view", "userId": f"user-{i % 1000}", "eventId": f"e-{i}", "timestamp": "2024-01-01T12:00:00.000Z", "pad": pad}, separators=(",", ":")))
PY
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); messages: $MESSAGES of $(head -1 "$work/events.jsonl" | wc -c) bytes"

admin_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

for r in $(seq "$ROUNDS"); do
  for t in bare-$r weir-$r; do "$TANSU" topic create "$t" --partitions 3 --broker "tcp://$broker" >/dev/null; done
  # Produce.
  echo "produce bare $("$BIN/kafka_bare" produce "$broker" "bare-$r" "$work/events.jsonl")"
  mkdir -p "$work/p$r"
  cat > "$work/p$r/produce.yaml" <<YAML
source: {plugin: file, config: {path: $work/events.jsonl, batch_size: 1000}}
sinks: [{plugin: kafka, config: {brokers: "$broker", topic: weir-$r}}]
YAML
  start=$(date +%s.%N)
  "$BIN/weir" run --once --pipelines "$work/p$r" --admin "127.0.0.1:$(admin_port)" --log warn
  end=$(date +%s.%N)
  python3 -c "n=$MESSAGES; s=$end-$start; print(f'produce weir {{\"messages\":{n},\"seconds\":{s:.3f},\"per_sec\":{n/s:.0f}}}')"
  # Consume (from the bare producer's topic, fresh groups).
  echo "consume bare $("$BIN/kafka_bare" consume "$broker" "bare-$r" "$MESSAGES")"
  mkdir -p "$work/c$r"
  cat > "$work/c$r/consume.yaml" <<YAML
source: {plugin: kafka, config: {brokers: "$broker", topics: [bare-$r], group_id: weir-bench-$r, batch_size: 1000}}
sinks: [{plugin: discard}]
YAML
  admin=127.0.0.1:$(admin_port)
  "$BIN/weir" run --pipelines "$work/c$r" --admin "$admin" --log warn &
  pid=$!
  python3 - "$admin" "$MESSAGES" <<'PY'
import sys, time, urllib.request
admin, n = sys.argv[1], int(sys.argv[2])
series = 'weir_stage_records_out_total{pipeline="consume",stage="discard",plugin="discard"} '
def count():
    try:
        text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=2).read().decode()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(series):
            return int(float(line[len(series):]))
    return 0
t0 = c0 = None
while True:
    c = count()
    if c > 0 and t0 is None:
        t0, c0 = time.time(), c
    if c >= n:
        s = time.time() - t0
        print(f'consume weir {{"messages":{n - c0},"seconds":{s:.3f},"per_sec":{(n - c0) / s:.0f}}}')
        break
    time.sleep(0.01)
PY
  kill -TERM $pid; wait $pid || true
done
