"""Adds up the JSON objects of several fanout.js processes (one per line on stdin) and
prints one JSON object: events/s per dashboard (median and slowest), deliveries/s, p50/p99
latency in ms, and the disconnects."""
import json
import sys

parts = [json.loads(line) for line in sys.stdin if line.strip()]
counts = sorted(c for p in parts for c in p["counts"])
lat = sorted(l for p in parts for l in p["latencies_ms"])
secs = parts[0]["seconds"] if parts else 1
pct = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))] if lat else None
print(json.dumps({
    "dashboards": len(counts),
    "processes": len(parts),
    "events_per_dashboard_per_sec": round(counts[len(counts) // 2] / secs) if counts else 0,
    "slowest_dashboard_per_sec": round(counts[0] / secs) if counts else 0,
    "deliveries_per_sec": round(sum(counts) / secs),
    "p50_ms": pct(0.5),
    "p99_ms": pct(0.99),
    "disconnects": sum(p["disconnects"] for p in parts),
}))
