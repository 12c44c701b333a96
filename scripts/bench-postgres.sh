#!/usr/bin/env bash
# PostgreSQL benchmark, one server, one run: rows/s into the Nexus analytics.events table
# through Weir (file source → postgres sink, unique key in place) against the physical
# limit, `COPY … FROM STDIN` of the same rows as CSV via psql into an identical table.
#
#   scripts/bench-postgres.sh     # ROWS=200000 ROUNDS=2 DATABASE_URL=postgres://postgres@127.0.0.1:5432/test
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-200000}
ROUNDS=${ROUNDS:-2}
BATCH=${BATCH:-5000}
DB=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
cargo build --release --workspace --quiet
BIN=$PWD/target/release
work=$(mktemp -d)
trap 'rm -rf "$work"; psql "$DB" -qX -c "DROP SCHEMA IF EXISTS weir_bench_sink CASCADE; DROP SCHEMA IF EXISTS weir_bench_copy CASCADE" >/dev/null 2>&1 || true' EXIT
python3 - "$ROWS" "$work" <<'PY'
import csv, json, sys
n, work = int(sys.argv[1]), sys.argv[2]
types = ["user.registered", "user.login", "user.logout", "user.profile_updated", "user.profile_viewed", "user.search_performed"]
with open(f"{work}/events.jsonl", "w") as j, open(f"{work}/rows.csv", "w", newline="") as c:
    w = csv.writer(c)
    for i in range(n):
        e = {"event_id": f"evt-{i:09d}", "event_type": types[i % 6], "user_id": f"user-{i % 5000}", "service": "auth-service",
             "timestamp": f"2024-11-08T12:{(i // 60) % 60:02d}:{i % 60:02d}Z", "data": {"ip": "203.0.113.7", "seq": i, "agent": "Mozilla/5.0 (X11; Linux x86_64)"}}
        j.write(json.dumps(e, separators=(",", ":")) + "\n")
        w.writerow([e["event_type"], e["user_id"], e["service"], e["timestamp"], json.dumps(e["data"], separators=(",", ":")), e["event_id"]])
PY
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(psql "$DB" -XAtc 'show server_version'); rows: $ROWS"
ddl() { # schema
  cat <<SQL
DROP SCHEMA IF EXISTS $1 CASCADE; CREATE SCHEMA $1;
CREATE TABLE $1.events (
    id SERIAL PRIMARY KEY,
    event_type VARCHAR(100) NOT NULL,
    user_id VARCHAR(100) NOT NULL,
    service VARCHAR(50) NOT NULL,
    timestamp TIMESTAMP NOT NULL,
    data JSONB,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    event_id VARCHAR(200) NOT NULL
);
CREATE UNIQUE INDEX events_event_id_key ON $1.events (event_id);
SQL
}
mkdir -p "$work/p"
cat > "$work/p/store.yaml" <<YAML
source: {plugin: file, config: {path: $work/events.jsonl, batch_size: $BATCH}}
sinks:
  - plugin: postgres
    config:
      url: "$DB"
      table: weir_bench_sink.events
      unique_key: [event_id]
      max_rows_per_write: $BATCH
      columns:
        - {name: id, type: SERIAL PRIMARY KEY}
        - {name: event_type, type: VARCHAR(100) NOT NULL, from: /event_type}
        - {name: user_id, type: VARCHAR(100) NOT NULL, from: /user_id}
        - {name: service, type: VARCHAR(50) NOT NULL, from: /service}
        - {name: timestamp, type: TIMESTAMP NOT NULL, from: /timestamp}
        - {name: data, type: JSONB, from: /data}
        - {name: created_at, type: TIMESTAMP DEFAULT CURRENT_TIMESTAMP}
        - {name: event_id, type: VARCHAR(200) NOT NULL, from: /event_id}
YAML
now() { date +%s.%N; }
run_copy() {
  ddl weir_bench_copy | psql "$DB" -qX >/dev/null
  start=$(now)
  psql "$DB" -qX -c "\\copy weir_bench_copy.events (event_type, user_id, service, timestamp, data, event_id) FROM '$work/rows.csv' CSV"
  end=$(now)
  rows=$(psql "$DB" -XAtc "select count(*) from weir_bench_copy.events")
  python3 -c "s=$end-$start; print(f'copy  {{\"rows\":$rows,\"seconds\":{s:.3f},\"per_sec\":{$rows/s:.0f}}}')"
}
run_weir() {
  ddl weir_bench_sink | psql "$DB" -qX >/dev/null
  start=$(now)
  "$BIN/weir" run --once --pipelines "$work/p" --admin "127.0.0.1:$((20000 + RANDOM % 20000))" --log warn
  end=$(now)
  rows=$(psql "$DB" -XAtc "select count(*) from weir_bench_sink.events")
  python3 -c "s=$end-$start; print(f'weir  {{\"rows\":$rows,\"seconds\":{s:.3f},\"per_sec\":{$rows/s:.0f}}}')"
}
# Alternate which goes first, so a checkpoint triggered by one run does not always land on the other.
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then run_copy; run_weir; else run_weir; run_copy; fi
done
