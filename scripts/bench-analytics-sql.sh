#!/usr/bin/env bash
# Where the Event Analytics Platform's ingest time goes on the PostgreSQL side, without
# Weir (issue: Event Analytics Platform as Weir pipelines): N generated events (default
# 200,000; 200,000 users, 30 days, ten names, as bench/src/bin/analytics_load.rs) inserted
# in batches of 1,000, one transaction each (as the postgres sink writes), into the
# example's events table with its keys and the trigger that queues events for the rollups,
# by two writer connections as the example has, then with less or more of each (the
# earlier table's four indexes and default collation for comparison). The queue is drained
# by the analytics source, not here: this is the insert path alone.
# Uses the machine's PostgreSQL, schema bench_sql (dropped first and at the end).
#
#   scripts/bench-analytics-sql.sh            # N=200000
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-200000}
DB=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
P() { psql "$DB" -qX -v ON_ERROR_STOP=1 "$@"; }
P -c "DROP SCHEMA IF EXISTS bench_sql CASCADE" -c "CREATE SCHEMA bench_sql" 2>/dev/null
P -c "CREATE UNLOGGED TABLE bench_sql.src AS
  SELECT i, 'e' || i AS event_id, 'user' || (abs(hashint8(i)) % 200000) AS user_id,
    (ARRAY['page_view','page_view','page_view','click','signup','add_to_cart','purchase','search','logout','share'])[1 + abs(hashint8(i * 7)) % 10] AS event_name,
    timestamptz '2024-01-01' + (abs(hashint8(i * 13)) % (30 * 86400)) * interval '1 second' AS ts,
    jsonb_build_object('plan', 'pro', 'n', i % 100) AS properties, 's' || i % 200000 || '-' || i % 30 AS session_id, '/p/' || i % 50 AS page_url
  FROM generate_series(1, $N) i" -c "CREATE INDEX ON bench_sql.src (i)" -c "ANALYZE bench_sql.src"
# The queue and the trigger's statement exactly as the analytics source creates them.
queue=$(sed -n '/CREATE TABLE IF NOT EXISTS {schema}.rollup_queue (/,/autovacuum_vacuum_threshold = 100000);/p' plugins/analytics/src/rollup/mod.rs | sed 's/^ *"//; s/{schema}/bench_sql/g')
queued=$(grep -o 'const QUEUED: &str = "[^"]*"' plugins/analytics/src/rollup/mod.rs | cut -d'"' -f2)
trigger=$(grep -o 'INSERT INTO {schema}.rollup_queue SELECT [^;]* FROM weir_new_rows;' plugins/analytics/src/rollup/mod.rs | head -1 | sed "s/{schema}/bench_sql/g; s/{QUEUED}/$queued/")
[ -n "$queue" ] && [ -n "$queued" ] && [ -n "$trigger" ] || { echo "cannot find the queue's statements in plugins/analytics/src/rollup/mod.rs" >&2; exit 1; }
C='COLLATE "C"'
run() { # name collation('' or $C) unique-key-and-indexes trigger(0|1) [writers, each a connection inserting its share at once; default 1]
  local c=$2
  P -c "DROP TABLE IF EXISTS bench_sql.ev, bench_sql.rollup_queue CASCADE" \
    -c "CREATE TABLE bench_sql.ev (id BIGSERIAL PRIMARY KEY, event_id VARCHAR(64) $c NOT NULL, user_id VARCHAR(200) $c NOT NULL,
          event_name VARCHAR(200) $c NOT NULL, timestamp TIMESTAMPTZ NOT NULL, org_id VARCHAR(200) $c NOT NULL, project_id VARCHAR(200) $c NOT NULL,
          properties JSONB, session_id VARCHAR(200), page_url TEXT, user_agent TEXT, ip_address VARCHAR(64),
          created_at TIMESTAMPTZ NOT NULL DEFAULT now(), updated_at TIMESTAMPTZ NOT NULL DEFAULT now()); $3" 2>/dev/null
  if [ "$4" = 1 ]; then
    P -c "$queue" -c "CREATE OR REPLACE FUNCTION bench_sql.queue() RETURNS trigger LANGUAGE plpgsql AS \$body\$ BEGIN $trigger RETURN NULL; END \$body\$;
      CREATE TRIGGER t AFTER INSERT ON bench_sql.ev REFERENCING NEW TABLE AS weir_new_rows FOR EACH STATEMENT EXECUTE FUNCTION bench_sql.queue()"
  fi
  local start end writers=${5:-1}
  local share=$((N / writers))
  start=$(date +%s.%N)
  for w in $(seq 0 $((writers - 1))); do
    P -c "DO \$\$ BEGIN FOR b IN 0..($share / 1000 - 1) LOOP
        INSERT INTO bench_sql.ev (event_id, user_id, event_name, timestamp, org_id, project_id, properties, session_id, page_url)
          SELECT event_id, user_id, event_name, ts, 'bench', 'bench', properties, session_id, page_url FROM bench_sql.src
          WHERE i > $w * $share + b * 1000 AND i <= $w * $share + (b + 1) * 1000;
        COMMIT; END LOOP; END \$\$" &
  done
  wait
  end=$(date +%s.%N)
  printf '%-68s %8.0f events/s\n' "$1" "$(echo "$N / ($end - $start)" | bc -l)"
}
# The example's unique key, the journey index it had before journeys read the rollups, and
# the earlier table's indexes.
NOW="CREATE UNIQUE INDEX ON bench_sql.ev (event_id, org_id, project_id);"
JOURNEY="$NOW CREATE INDEX ON bench_sql.ev (user_id, org_id, project_id, timestamp);"
BEFORE="CREATE UNIQUE INDEX ON bench_sql.ev (org_id, project_id, event_id);
        CREATE INDEX ON bench_sql.ev (org_id, project_id, timestamp); CREATE INDEX ON bench_sql.ev (org_id, project_id, user_id, event_name, timestamp);
        CREATE INDEX ON bench_sql.ev (org_id, project_id, event_name, timestamp); CREATE INDEX ON bench_sql.ev (org_id, project_id, event_name, user_id, timestamp);"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(psql "$DB" -AtXc 'SHOW server_version')"
run "as shipped: unique + key, C collation, queue trigger, 2 writers" "$C" "$NOW" 1 2
run "the same without the queue trigger, 2 writers" "$C" "$NOW" 0 2
run "as shipped, 1 writer" "$C" "$NOW" 1 1
run "with the journey index as before, queue trigger, 2 writers" "$C" "$JOURNEY" 1 2
run "the earlier table: four indexes + unique + key, default collation, queue trigger, 2 writers" "" "$BEFORE" 1 2
run "primary key only, no trigger, 2 writers" "$C" "" 0 2
P -c "DROP SCHEMA bench_sql CASCADE"
