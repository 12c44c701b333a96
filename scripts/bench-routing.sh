#!/usr/bin/env bash
# Benchmark of filtering and routing (issue 17): the default pipeline (http → validate →
# enrich → dedupe → websocket + file) against the same pipeline with a `filter` transform
# and its file sink split three ways by `when` conditions (each record goes to exactly one
# of the three files, so the same bytes are written). Runs the two alternately ROUNDS times
# and prints every run, events/s as weir-bench measures them, the lines the files got and
# weir's own CPU time per line written.
#
#   scripts/bench-routing.sh        # ROUNDS=3 SECONDS_PER_RUN=10 CONNECTIONS=8 BIN=target/release
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
CONNECTIONS=${CONNECTIONS:-8}
BIN=${BIN:-target/release}
[ "$BIN" != target/release ] || cargo build --release --workspace --quiet
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

mkdir -p "$work/default" "$work/routed" "$work/filter" "$work/route" "$work/three"
sed "s|../schemas/|$PWD/schemas/|" pipelines/default.yaml > "$work/default/default.yaml"
# The same pipeline with a filter (dropping nothing of this load) and three routed files.
python3 - "$work" <<'PY'
import sys
work = sys.argv[1]
base = open(f"{work}/default/default.yaml").read()
filtered = base.replace("sinks:\n", """  - plugin: filter
    config: {drop: 'record.eventType == "heartbeat"'}
sinks:
""", 1)
file_sink = """  - plugin: file
    config:
      path: ${WEIR_EVENTS_FILE:-../data/events.jsonl}"""
assert file_sink in base
routed = ""
for name, when in [("low", 'record.userId < "user-3"'),
                   ("middle", 'record.userId >= "user-3" && record.userId < "user-6"'),
                   ("high", 'record.userId >= "user-6"')]:
    routed += f"""  - plugin: file
    name: {name}
    when: '{when}'
    config:
      path: ${{WEIR_EVENTS_FILE:-../data/events.jsonl}}.{name}
"""
open(f"{work}/routed/default.yaml", "w").write(filtered.replace(file_sink + "\n", routed))
open(f"{work}/filter/default.yaml", "w").write(filtered)
open(f"{work}/route/default.yaml", "w").write(base.replace(file_sink + "\n", routed))
# The same three files without conditions: each gets every record.
three = "".join(line for line in routed.splitlines(keepends=True) if not line.lstrip().startswith("when:"))
open(f"{work}/three/default.yaml", "w").write(base.replace(file_sink + "\n", three))
PY

run() { # variant
  local variant=$1 port=3911 admin=3993
  WEIR_HTTP_LISTEN=127.0.0.1:$port WEIR_WS_LISTEN=127.0.0.1:3912 WEIR_EVENTS_FILE="$work/events-$variant.jsonl" \
    "$BIN/weir" run --pipelines "$work/$variant" --admin 127.0.0.1:$admin --log warn &
  local pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$admin/health" >/dev/null && break; sleep 0.05; done
  local result
  result=$("$BIN/weir-bench" --url "http://127.0.0.1:$port/produce" --connections "$CONNECTIONS" --batch 100 --event-bytes 300 --seconds "$SECONDS_PER_RUN" --json)
  local lines ticks
  lines=$(cat "$work"/events-"$variant".jsonl* 2>/dev/null | wc -l)
  # weir's own CPU (user + system) over the whole run, warm-up included, per line written.
  ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  kill -TERM $pid; wait $pid || true
  rm -f "$work"/events-"$variant".jsonl*
  echo "$variant $result lines_written=$lines cpu_us_per_line=$(awk -v t="$ticks" -v l="$lines" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", l ? t * 1e6 / hz / l : 0}')"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
# VARIANTS: default and routed (filter and three-way route) by default; `filter` and
# `route` have one of the two each; `three` has the three files without conditions (each
# file gets every record).
for _ in $(seq "$ROUNDS"); do
  for v in ${VARIANTS:-default routed}; do run "$v"; done
done
