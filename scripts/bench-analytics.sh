#!/usr/bin/env bash
# The Event Analytics Platform benchmark (issue: Event Analytics Platform as Weir pipelines):
# EVENTS seeded events (default 10 million: 200,000 users, 30 days, ten event names, one
# project) for `examples/event-analytics` (the analytics source → dedupe in Redis →
# postgres with two writers; the trigger queues each stored event and the source rolls the
# queue up). The first API_EVENTS (default 1 million) go through the ingest API, which gives
# the ingest rate, and how long after the last answer the rollups held every event; the
# rest are bulk-loaded with COPY into the same table in one statement (queued by the same
# trigger and rolled up by the running source), since a run of ten million through the API
# would take longer. Then each query is timed ROUNDS times, warm,
# through the API and as the plain SQL a user would write over the raw events table.
#
#   scripts/bench-analytics.sh          # EVENTS=10000000 API_EVENTS=1000000 ROUNDS=10
#
# INGEST_ONLY=1 stops once the events ingested through the API are rolled up (with
# EVENTS=API_EVENTS=N: N events, the ingest rate and the roll-up's lag alone). BIN=DIR uses
# the binaries and plugins in DIR instead of building. KEEP=1 keeps the events of the last
# run (no load) and times the queries again. WEIR_LOG=FILE keeps weir's log there. Uses the
# machine's PostgreSQL (schema bench_analytics, dropped first) and Redis (database 7,
# flushed first).
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-10000000}
API_EVENTS=${API_EVENTS:-1000000}
ROUNDS=${ROUNDS:-10}
DB=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
SCHEMA=bench_analytics
PORT=${PORT:-3930}
ADMIN=bench-admin-key-0123456789abcdef
if [ -z "${BIN:-}" ]; then
  cargo build --release --workspace --quiet
  BIN=target/release
fi
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
if [ -z "${KEEP:-}" ]; then
  psql "$DB" -qXc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" 2>/dev/null
  redis-cli -n 7 flushdb >/dev/null
fi

# The query cache is off (CACHE_TTL=0) unless asked for: the figures are the queries' own.
DATABASE_URL=$DB ANALYTICS_SCHEMA=$SCHEMA ANALYTICS_ADMIN_KEY=$ADMIN REDIS_URL=redis://127.0.0.1:6379/7 ANALYTICS_CACHE_TTL=${CACHE_TTL:-0} \
  EVENTS_HTTP_LISTEN=127.0.0.1:$PORT "$BIN/weir" run --plugins "$BIN" --pipelines examples/event-analytics \
  --admin 127.0.0.1:$((PORT + 1)) --log warn --no-watch 2>"${WEIR_LOG:-$work/weir.log}" &
pid=$!
for _ in $(seq 200); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.05; done
# The keys table is created in the background once the database answers: try until it is.
for _ in $(seq 200); do
  key=$(curl -sf -H "X-Admin-Key: $ADMIN" -H 'Content-Type: application/json' "http://127.0.0.1:$PORT/api/v1/keys" \
    -d '{"name":"bench","orgId":"bench","projectId":"bench","rateLimit":{"max":1000000000,"windowMs":60000}}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])' 2>/dev/null) && break
  sleep 0.1
done
[ -n "$key" ] || { echo "no API key could be created; weir's log:" >&2; cat "$work/weir.log" >&2; exit 1; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
# Seconds until the rollup queue is empty (every stored event rolled up).
caught_up() {
  local started=$(date +%s.%N)
  until [ "$(psql "$DB" -AtXc "SELECT count(*) FROM $SCHEMA.rollup_queue")" = 0 ]; do sleep 0.05; done
  echo "$(date +%s.%N) - $started" | bc
}
T=$SCHEMA.event_log
if [ -z "${KEEP:-}" ]; then
echo "ingest through the API: $("$BIN/analytics_load" --url "http://127.0.0.1:$PORT/api/v1/events" --key "$key" --events "$API_EVENTS")"
echo "rollups held every event $(caught_up) s after the last answer"
[ -z "${INGEST_ONLY:-}" ] || exit 0
echo "peak RSS of weir: $(awk '/VmHWM/{print $2/1024}' /proc/$pid/status) MiB"
if [ "$EVENTS" -gt "$API_EVENTS" ]; then
  started=$(date +%s.%N)
  psql "$DB" -qX -v ON_ERROR_STOP=1 <<SQL
CREATE UNLOGGED TABLE $SCHEMA.bulk (doc jsonb);
\copy $SCHEMA.bulk FROM PROGRAM '$BIN/analytics_load --key none --print --first $API_EVENTS --events $((EVENTS - API_EVENTS))'
INSERT INTO $T (event_id, user_id, event_name, timestamp, org_id, project_id, properties, session_id, page_url)
  SELECT doc->>'eventId', doc->>'userId', doc->>'eventName', (doc->>'timestamp')::timestamptz, 'bench', 'bench',
         doc->'properties', doc->>'sessionId', doc->>'pageUrl' FROM $SCHEMA.bulk;
DROP TABLE $SCHEMA.bulk;
SQL
  echo "bulk load of $((EVENTS - API_EVENTS)) events with COPY (queued by the trigger): $(echo "$(date +%s.%N) - $started" | bc) s"
  echo "then rolled up in $(caught_up) s more"
fi
fi
psql "$DB" -qXc "VACUUM ANALYZE $T"
echo "rows: $(psql "$DB" -AtXc "SELECT count(*) FROM $T"), table and indexes: $(psql "$DB" -AtXc "SELECT pg_size_pretty(pg_total_relation_size('$T'))")"

funnel=$(curl -sf -H "X-API-Key: $key" -H 'Content-Type: application/json' "http://127.0.0.1:$PORT/api/v1/funnels" \
  -d '{"name":"checkout","steps":[{"eventName":"page_view"},{"eventName":"add_to_cart"},{"eventName":"purchase"}]}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')

# p50 and p95 of ROUNDS timings (ms), after one warm-up.
stats() { sort -n | awk '{a[NR]=$1} END {printf "p50 %.1f ms, p95 %.1f ms", a[int((NR+1)/2)], a[int(NR*0.95+0.999)]}'; }
api() { # name path
  curl -sf -o /dev/null -H "X-API-Key: $key" "http://127.0.0.1:$PORT$2"
  for _ in $(seq "$ROUNDS"); do
    curl -sf -o /dev/null -w '%{time_total}\n' -H "X-API-Key: $key" "http://127.0.0.1:$PORT$2" | awk '{print $1*1000}'
  done | stats
}
sql() { # sql
  psql "$DB" -qXAt -c "$1" >/dev/null
  for _ in $(seq "$ROUNDS"); do
    psql "$DB" -qXAt -c '\timing on' -c "$1" | awk '/^Time:/{print $2}'
  done | stats
}
S="org_id = 'bench' AND project_id = 'bench'"
R="timestamp >= '2024-01-01' AND timestamp < '2024-01-31'"
echo "summary, 30 days: API $(api summary '/api/v1/events/summary?startDate=2024-01-01&endDate=2024-01-30') | SQL $(sql "SELECT count(*), count(DISTINCT user_id), min(timestamp), max(timestamp) FROM $T WHERE $S AND $R; SELECT event_name, count(*) FROM $T WHERE $S AND $R GROUP BY 1")"
echo "metrics daily, unique users: API $(api metrics '/api/v1/metrics?interval=daily&startDate=2024-01-01&endDate=2024-01-30') | SQL $(sql "SELECT date_trunc('day', timestamp AT TIME ZONE 'UTC'), count(*), count(DISTINCT user_id) FROM $T WHERE $S AND $R GROUP BY 1 ORDER BY 1")"
echo "funnel, 3 steps, 30 days: API $(api funnel "/api/v1/funnels/$funnel/analytics?startDate=2024-01-01&endDate=2024-01-30") | SQL $(sql "WITH s1 AS (SELECT user_id, min(timestamp) AS t1 FROM $T WHERE $S AND $R AND event_name = 'page_view' GROUP BY 1), s2 AS (SELECT s1.user_id, s1.t1, min(e.timestamp) AS t2 FROM s1 JOIN $T e ON e.$S AND e.user_id = s1.user_id AND e.event_name = 'add_to_cart' AND e.timestamp > s1.t1 AND e.timestamp <= s1.t1 + interval '7 days' GROUP BY 1, 2), s3 AS (SELECT s2.user_id FROM s2 JOIN $T e ON e.$S AND e.user_id = s2.user_id AND e.event_name = 'purchase' AND e.timestamp > s2.t2 AND e.timestamp <= s2.t1 + interval '7 days' GROUP BY 1) SELECT (SELECT count(*) FROM s1), (SELECT count(*) FROM s2), (SELECT count(*) FROM s3)")"
echo "retention 30 x 7 (cohort signup): API $(api retention '/api/v1/retention?cohort=signup&days=7&startDate=2024-01-01&endDate=2024-01-30') | SQL $(sql "WITH c AS (SELECT user_id, (min(timestamp) AT TIME ZONE 'UTC')::date AS day FROM $T WHERE $S AND event_name = 'signup' GROUP BY 1) SELECT c.day, ((e.timestamp AT TIME ZONE 'UTC')::date - c.day) AS k, count(DISTINCT c.user_id) FROM c JOIN $T e ON e.$S AND e.user_id = c.user_id AND e.timestamp >= c.day AND e.timestamp < c.day + 8 WHERE c.day BETWEEN '2024-01-01' AND '2024-01-30' GROUP BY 1, 2")"
echo "journey of one user: API $(api journey '/api/v1/users/user4242/journey?startDate=2024-01-01&endDate=2024-01-30') | SQL $(sql "SELECT event_name, timestamp, properties, session_id, page_url FROM $T WHERE $S AND user_id = 'user4242' AND $R ORDER BY timestamp, id LIMIT 1000")"
kill -TERM $pid; wait $pid || true
