#!/usr/bin/env python3
"""Independent Kafka client for Weir's tests, on confluent-kafka (librdkafka).

  kafka_client.py produce BROKER TOPIC            < JSON lines {"key": k|null, "value": v}
  kafka_client.py consume BROKER TOPIC GROUP N SECS   > JSON lines {"key","value","partition","offset","headers"}
      (N = 0: read until nothing arrives for 3 s)
  kafka_client.py committed BROKER TOPIC GROUP    > JSON {"committed": total committed offset, "end": total high watermark}
"""
import json
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition


def produce(broker, topic):
    p = Producer({"bootstrap.servers": broker, "enable.idempotence": True, "acks": "all", "linger.ms": 5})
    errors = []

    def report(err, _msg):
        if err is not None:
            errors.append(str(err))

    n = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        m = json.loads(line)
        key = m.get("key")
        p.produce(topic, value=m["value"].encode(), key=key.encode() if key is not None else None, on_delivery=report)
        p.poll(0)
        n += 1
    left = p.flush(30)
    if left or errors:
        sys.exit(f"{left} messages not delivered; errors: {errors[:3]}")
    print(n)


def consume(broker, topic, group, count, secs):
    c = Consumer({"bootstrap.servers": broker, "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    got = 0
    deadline = time.time() + secs
    last = time.time()
    while (count == 0 or got < count) and time.time() < deadline:
        m = c.poll(0.5)
        if m is None:
            if count == 0 and got > 0 and time.time() - last > 3:
                break
            continue
        last = time.time()
        if m.error():
            print(f"consumer error: {m.error()}", file=sys.stderr)
            continue
        headers = {k: (v.decode() if v is not None else None) for k, v in (m.headers() or [])}
        key = m.key().decode() if m.key() is not None else None
        print(json.dumps({"key": key, "value": m.value().decode(), "partition": m.partition(), "offset": m.offset(), "headers": headers}))
        got += 1
    c.close()
    if got < count or (count == 0 and got == 0):
        sys.exit(f"read {got} of {count} messages from {topic} within {secs} s")


def committed(broker, topic, group):
    c = Consumer({"bootstrap.servers": broker, "group.id": group, "enable.auto.commit": False})
    meta = c.list_topics(topic, timeout=10)
    parts = [TopicPartition(topic, p) for p in meta.topics[topic].partitions]
    total, end = 0, 0
    for tp in c.committed(parts, timeout=10):
        total += max(tp.offset, 0)
        end += c.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)[1]
    c.close()
    print(json.dumps({"committed": total, "end": end}))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "produce":
        produce(sys.argv[2], sys.argv[3])
    elif cmd == "consume":
        consume(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
    elif cmd == "committed":
        committed(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)
