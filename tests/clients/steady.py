"""Posts activity events at a steady pace over one keep-alive connection, as an application
would, until the stop file appears; prints each answer's status and the slowest answer.
Usage: steady.py URL STOP_FILE INTERVAL_SECONDS ID_PREFIX"""
import http.client
import json
import os
import sys
import time
import urllib.parse

url, stop_file, interval, prefix = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
u = urllib.parse.urlparse(url)
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
statuses, latencies, ids, errors = {}, [], [], []
n = 0
while not os.path.exists(stop_file):
    event_id = f"{prefix}-{n}"
    n += 1
    body = json.dumps({"user_id": f"user-{n % 7}", "event_type": "post_created", "entity_id": event_id,
                       "occurred_at": "2024-03-01T10:00:00.000Z"})
    started = time.monotonic()
    try:
        conn.request("POST", u.path, body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        latencies.append((time.monotonic() - started) * 1000)
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
        if r.status == 202:
            ids.append(event_id)
    except Exception as e:  # noqa: BLE001 - counted
        errors.append(f"{event_id}: {type(e).__name__}: {e}")
        conn.close()
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    time.sleep(interval)
latencies.sort()
print(json.dumps({"statuses": statuses, "errors": errors, "ids": ids, "requests": n,
                  "max_ms": latencies[-1] if latencies else None,
                  "p99_ms": latencies[int(len(latencies) * 0.99) - 1] if latencies else None}))
