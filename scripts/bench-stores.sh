#!/usr/bin/env bash
# Object store and DynamoDB benchmark (issue: Analytics Service seed as a pipeline), one run
# against one S3 + DynamoDB server (moto, on loopback) and one broker (tansu):
#  - events/s from Kafka into the object store in batch mode (Weir: kafka source →
#    object_store sink, JSON-lines objects of a batch each) against a bare object_store put
#    loop writing the same records as objects of BATCH lines (stores_bare s3);
#    and against a bare rdkafka consumer feeding that put loop (stores_bare kafka-s3);
#  - events/s from Kafka into DynamoDB (kafka source → dynamodb sink, BatchWriteItem) against
#    a bare BatchWriteItem loop with the same client and the same items (stores_bare dynamodb).
# Weir's rate is measured from its sink's first delivered record to its last (the consumer
# group's join is left out), polling /metrics; `source_full` is how often the Kafka source
# found the pipeline full (weir_stage_backpressure_total). For scale, the Kafka source into the discarding
# sink from the same topic, a bare rdkafka consumer of it, and the object_store sink fed by the
# file source (the sink without the broker), in the same run.
#
#   scripts/bench-stores.sh          # EVENTS=100000 DYNAMO_EVENTS=20000 BATCH=1000 ROUNDS=2 WORKERS=8
#
# WORKERS is the object_store sink's `workers` (batches written at once). STORAGE is the
# broker's storage engine (sqlite, or memory), KAFKA_SETTINGS more librdkafka settings
# (`name=value ...`) given to the bare consumer and the kafka source alike.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-100000}
DYNAMO_EVENTS=${DYNAMO_EVENTS:-20000}
BATCH=${BATCH:-1000}
ROUNDS=${ROUNDS:-2}
WORKERS=${WORKERS:-8}
STORAGE=${STORAGE:-sqlite}
KAFKA_SETTINGS=${KAFKA_SETTINGS:-}
export KAFKA_SETTINGS
pairs=()
for kv in $KAFKA_SETTINGS; do pairs+=("\"${kv%%=*}\": \"${kv#*=}\""); done
librdkafka="{$(IFS=,; echo "${pairs[*]:-}")}"
case $STORAGE in sqlite) storage=sqlite://bench.db ;; memory) storage=memory://tansu/ ;; *) echo "STORAGE is sqlite or memory" >&2; exit 2 ;; esac
TANSU=${TANSU:-$HOME/.cargo/bin/tansu}
if [ -z "${BIN:-}" ]; then
  cargo build --release --workspace --quiet
  BIN=$PWD/target/release
fi
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
broker=127.0.0.1:$port
(cd "$work" && exec "$TANSU" broker --listener-url "tcp://$broker" --advertised-listener-url "tcp://$broker" --storage-engine "$storage" >tansu.log 2>&1) &
moto_port=$(free_port)
moto=http://127.0.0.1:$moto_port
python3 -m moto.server -H 127.0.0.1 -p "$moto_port" >"$work/moto.log" 2>&1 &
for p in $port $moto_port; do
  for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
done
aws() { python3 tests/aws_client.py "$moto" "$@"; }
python3 - "$EVENTS" > "$work/events.jsonl" <<'PY'
import json, sys
types = ["ProductCreated", "ProductUpdated", "ProductDeleted", "LowStockWarning"]
for i in range(int(sys.argv[1])):
    print(json.dumps({"eventId": f"evt-{i:08}", "eventType": types[i % 4], "timestamp": f"2024-01-15T10:{i // 60 % 60:02}:{i % 60:02}.000Z",
                      "productId": f"prod-{i % 1000}", "data": {"name": f"Product {i}", "stock": i % 17, "price": i % 90 + 0.5, "sku": "SKU-%06d" % i}},
                     separators=(",", ":")))
PY
head -n "$DYNAMO_EVENTS" "$work/events.jsonl" > "$work/dynamo.jsonl"
echo "broker storage: $STORAGE; object_store workers: $WORKERS; librdkafka: $librdkafka"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); events of $(head -1 "$work/events.jsonl" | wc -c) bytes; moto $(python3 -c 'import moto; print(moto.__version__)')"

# Polls the sink's delivered count; prints the rate from its first delivered record to the last.
measure() {
  python3 - "$1" "$2" "$3" <<'PY'
import sys, time, urllib.request
admin, series, n = sys.argv[1], sys.argv[2] + " ", int(sys.argv[3])
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
deadline = time.time() + 600
while time.time() < deadline:
    c = count()
    if c > 0 and t0 is None:
        t0, c0 = time.time(), c
    if c >= n:
        s = time.time() - t0
        # How often the source found the pipeline full (it then pauses its partitions).
        full = sum(int(float(l.split()[-1])) for l in urllib.request.urlopen(f"http://{admin}/metrics", timeout=2).read().decode().splitlines()
                   if l.startswith("weir_stage_backpressure_total{") and 'stage="kafka"' in l)
        print(f'{{"events":{n - c0},"seconds":{s:.3f},"per_sec":{(n - c0) / s:.0f},"source_full":{full}}}')
        break
    time.sleep(0.02)
else:
    sys.exit(f"only {count()} of {n} delivered")
PY
}

run_weir() { # NAME YAML N SERIES
  mkdir -p "$work/$1"
  printf '%s\n' "$2" > "$work/$1/pipeline.yaml"
  local admin=127.0.0.1:$(free_port)
  "$BIN/weir" run --plugins "$BIN" --pipelines "$work/$1" --admin "$admin" --log warn --no-watch 2>"$work/$1.log" &
  local pid=$!
  measure "$admin" "$4" "$3"
  kill -TERM $pid; wait $pid || true
}

for r in $(seq "$ROUNDS"); do
  "$TANSU" topic create "archive-$r" --partitions 3 --broker "tcp://$broker" >/dev/null
  "$TANSU" topic create "recent-$r" --partitions 3 --broker "tcp://$broker" >/dev/null
  "$BIN/kafka_bare" produce "$broker" "archive-$r" "$work/events.jsonl" >/dev/null
  "$BIN/kafka_bare" produce "$broker" "recent-$r" "$work/dynamo.jsonl" >/dev/null
  aws create-bucket "bare-$r"; aws create-bucket "weir-$r"
  aws create-table "bare_$r" id; aws create-table "weir_$r" id

  echo "round $r object store bare $("$BIN/stores_bare" s3 "$moto" "bare-$r" "$work/events.jsonl" "$BATCH")"
  echo "round $r object store weir $(run_weir "os-$r" "name: os
source: {plugin: kafka, config: {brokers: \"$broker\", topics: [archive-$r], group_id: bench-$r, batch_size: $BATCH, librdkafka: $librdkafka}}
sinks:
  - {name: archive, plugin: object_store, workers: $WORKERS, config: {url: \"s3://weir-$r\", endpoint: \"$moto\", mode: batch, key: \"archive/{yyyy}/{MM}/{dd}/{HH}/{batch}.jsonl\", time_field: /timestamp, access_key_id: bench, secret_access_key: bench}}" \
    "$EVENTS" 'weir_stage_records_out_total{pipeline="os",stage="archive",plugin="object_store"}')"
  # The sink alone, fed from a file instead of the broker: the same records, batches of BATCH.
  aws create-bucket "file-$r"
  echo "round $r file to object store weir $(run_weir "fos-$r" "name: fos
source: {plugin: file, config: {path: \"$work/events.jsonl\", batch_size: $BATCH}}
sinks:
  - {name: archive, plugin: object_store, workers: $WORKERS, config: {url: \"s3://file-$r\", endpoint: \"$moto\", mode: batch, key: \"archive/{yyyy}/{MM}/{dd}/{HH}/{batch}.jsonl\", time_field: /timestamp, access_key_id: bench, secret_access_key: bench}}" \
    "$EVENTS" 'weir_stage_records_out_total{pipeline="fos",stage="archive",plugin="object_store"}')"
  # A program of its own doing Kafka → S3 (an rdkafka consumer feeding the same put loop),
  # which pays for the broker as Weir does.
  aws create-bucket "bare-kafka-$r"
  echo "round $r kafka to object store bare $("$BIN/stores_bare" kafka-s3 "$moto" "bare-kafka-$r" "$broker" "archive-$r" "$EVENTS" "$BATCH")"
  # What the broker gives a bare consumer, and the Kafka source alone (fresh groups), for scale.
  echo "round $r kafka consume bare $("$BIN/kafka_bare" consume "$broker" "archive-$r" "$EVENTS")"
  # What the Kafka source alone delivers from the same topic (a fresh group), for scale.
  echo "round $r kafka to discard weir $(run_weir "kd-$r" "name: kd
source: {plugin: kafka, config: {brokers: \"$broker\", topics: [archive-$r], group_id: bench-discard-$r, batch_size: $BATCH, librdkafka: $librdkafka}}
sinks: [{name: discard, plugin: discard}]" "$EVENTS" 'weir_stage_records_out_total{pipeline="kd",stage="discard",plugin="discard"}')"
  echo "round $r dynamodb bare $("$BIN/stores_bare" dynamodb "$moto" "bare_$r" "$work/dynamo.jsonl")"
  echo "round $r dynamodb weir $(run_weir "db-$r" "name: db
source: {plugin: kafka, config: {brokers: \"$broker\", topics: [recent-$r], group_id: bench-$r, batch_size: $BATCH, librdkafka: $librdkafka}}
sinks:
  - name: recent
    plugin: dynamodb
    config:
      endpoint: \"$moto\"
      table: weir_$r
      key: [id]
      attributes: {id: {from: /eventId}, eventId: {from: /eventId}, eventType: {from: /eventType}, timestamp: {from: /timestamp}, data: {from: \"\"}, createdAt: {now: true}}
      ttl: {attribute: ttl, after: 30d}
      access_key_id: bench
      secret_access_key: bench" \
    "$DYNAMO_EVENTS" 'weir_stage_records_out_total{pipeline="db",stage="recent",plugin="dynamodb"}')"
done
echo "peak RSS of moto: $(awk '/VmHWM/{print $2/1024}' /proc/$(pgrep -f "moto.server -H 127.0.0.1 -p $moto_port" | head -1)/status 2>/dev/null || echo '?') MiB"
