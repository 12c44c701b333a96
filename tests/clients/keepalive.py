"""Keep-alive HTTP clients for the reload tests: each thread keeps one connection
(http.client reconnects only after a response that says `Connection: close`) and posts
events until the stop file appears, some without pause and some pausing between requests.
Prints a JSON summary: ids answered 200, other statuses, and errors (a request that got
no response, a reset, a broken pipe)."""
import http.client
import json
import os
import sys
import threading
import time

port = int(sys.argv[1])
stop_file = sys.argv[2]
pauses = [float(p) for p in sys.argv[3].split(",")]

lock = threading.Lock()
summary = {"ok": [], "statuses": {}, "errors": [], "requests": 0}


def client(index, pause):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    n = 0
    while not os.path.exists(stop_file):
        event_id = f"c{index}-{n}"
        n += 1
        body = json.dumps({"id": event_id})
        try:
            conn.request("POST", "/produce", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            with lock:
                summary["requests"] += 1
                if response.status == 200:
                    summary["ok"].append(event_id)
                else:
                    summary["statuses"][str(response.status)] = summary["statuses"].get(str(response.status), 0) + 1
        except Exception as e:  # noqa: BLE001 - every failure is what the test counts
            with lock:
                summary["requests"] += 1
                summary["errors"].append(f"{event_id}: {type(e).__name__}: {e}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        if pause:
            time.sleep(pause)
    conn.close()


threads = [threading.Thread(target=client, args=(i, p)) for i, p in enumerate(pauses)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(summary))
