#!/usr/bin/python3
"""Sample traffic for the dedup-worker demo and end-to-end tests, with python3-confluent-kafka
(a Kafka client nobody on this project wrote).

  traffic.py produce --bootstrap B --topic commands [--commands 7000] [--seed 7]
      Produces a realistic stream: todos, appointments (some overlapping), conversations keyed by
      their natural key, ~30% redeliveries of earlier commands, keys reused with a changed payload,
      and a few malformed records. Prints what it sent as JSON on stdout.

  traffic.py collect --bootstrap B --topic commands.results --expect N [--timeout 120]
      Reads the results topic until N distinct input records have a result (a result may be
      repeated after a crash; it is counted once per input record). Shows progress on stderr and
      prints the tallies as JSON on stdout.

  traffic.py dead-letters --bootstrap B --topic commands.dlq
      Prints the dead letters' error codes and headers as JSON.
"""
import argparse
import collections
import json
import random
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition


def produce(args):
    rng = random.Random(args.seed)
    producer = Producer({"bootstrap.servers": args.bootstrap, "enable.idempotence": True,
                         "linger.ms": 5})
    sent = collections.Counter()
    records = []  # (key, value bytes, headers)

    def command(key, scope, ctype, payload):
        body = {"scope": scope, "type": ctype, "payload": payload}
        if key is not None:
            body["idempotency_key"] = key
        return body

    originals = []
    for i in range(args.commands):
        roll = rng.random()
        if roll < 0.70:
            body = command(f"todo-{i}", f"org-{rng.randint(1, 20)}", "todo.create",
                           {"title": f"Todo {i}", "description": rng.choice(["From store", "Call back", "Review"])})
        elif roll < 0.85:
            pro = rng.randint(1, 120)
            hour = rng.randint(8, 17)
            minute = rng.choice([0, 30])
            body = command(f"appt-{i}", "clinic-1", "appointment.create",
                           {"professional_id": pro,
                            "starts_at": f"2026-12-01T{hour:02}:{minute:02}:00Z",
                            "ends_at": f"2026-12-01T{hour + 1:02}:{minute:02}:00Z"})
        else:
            # No client key: the worker derives it from (context_type, context_id, created_by).
            org = rng.randint(1, 20)
            body = command(None, f"org-{org}", "conversation.create",
                           {"context_type": "ticket", "context_id": f"T-{org}-{rng.randint(1, 40)}",
                            "created_by": f"user-{org}-{rng.randint(1, 3)}", "title": "Help needed"})
        originals.append(body)
        records.append(body)
        sent["original"] += 1

    redeliveries = int(len(originals) * 0.43)  # ~30% of the final stream
    for body in rng.sample(originals, redeliveries):
        records.append(body)
        sent["redelivery"] += 1
    for body in rng.sample([b for b in originals if b["type"] == "todo.create"], args.commands // 70):
        changed = json.loads(json.dumps(body))
        changed["payload"]["title"] += " (edited)"
        records.append(changed)
        sent["key_reused_payload"] += 1

    rng.shuffle(records)
    stream = [(None, json.dumps(b).encode(), None) for b in records]
    malformed = [
        (b"bad-json", b'{"idempotency_key": "m-1", "scope": ', None),
        (b"no-key", json.dumps({"scope": "org-1", "type": "todo.create", "payload": {"title": "x"}}).encode(), None),
        (b"unknown-type", json.dumps({"idempotency_key": "m-3", "scope": "org-1", "type": "invoice.create",
                                      "payload": {}}).encode(), None),
        (b"bad-key", json.dumps({"idempotency_key": "line\nbreak", "scope": "org-1", "type": "todo.create",
                                 "payload": {"title": "x"}}).encode(), None),
        (b"header-mismatch", json.dumps({"idempotency_key": "m-5", "scope": "org-1", "type": "todo.create",
                                         "payload": {"title": "x"}}).encode(),
         [("idempotency-key", b"m-5-other")]),
        (b"not-object", b'["a", "list"]', None),
    ]
    for index, item in enumerate(malformed * 5):
        stream.insert(rng.randrange(len(stream)), item)
        sent["malformed"] += 1

    for key, value, headers in stream:
        body = None
        try:
            body = json.loads(value)
        except ValueError:
            pass
        if key is None and isinstance(body, dict):
            key = f'{body.get("scope")}/{body.get("idempotency_key", "natural")}'.encode()
        while True:
            try:
                producer.produce(args.topic, value=value, key=key, headers=headers)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(60)
    if remaining:
        sys.exit(f"traffic.py: {remaining} records not delivered")
    sent["total"] = len(stream)
    print(json.dumps(dict(sent)))


def collect(args):
    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": f"demo-collector-{time.time()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([args.topic])
    seen = {}
    deadline = time.time() + args.timeout
    last_report = 0
    while len(seen) < args.expect and time.time() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            result = json.loads(message.value())
            source = result["source"]
            seen[(source["topic"], source["partition"], source["offset"])] = result
        if time.time() - last_report > 1:
            last_report = time.time()
            print(f"\r  results: {len(seen)}/{args.expect}", end="", file=sys.stderr, flush=True)
    print(f"\r  results: {len(seen)}/{args.expect}", file=sys.stderr, flush=True)
    consumer.close()
    by_status = collections.Counter(r["status"] for r in seen.values())
    by_type = collections.Counter(f'{r["type"]}:{r["status"]}' for r in seen.values())
    created_keys = collections.Counter((r["scope"], r["idempotency_key"]) for r in seen.values()
                                       if r["status"] == "created")
    entity_of_key = {}
    mismatched_replays = 0
    for r in seen.values():
        if r["status"] in ("created", "duplicate"):
            key = (r["scope"], r["idempotency_key"])
            entity = json.dumps(r["entity"], sort_keys=True)
            if entity_of_key.setdefault(key, entity) != entity:
                mismatched_replays += 1
    print(json.dumps({
        "records_with_result": len(seen),
        "by_status": dict(by_status),
        "by_type_status": dict(by_type),
        "keys_created_twice": sum(1 for c in created_keys.values() if c > 1),
        "replays_with_other_entity": mismatched_replays,
        "replayed": sum(1 for r in seen.values() if r["replayed"]),
    }))


def dead_letters(args):
    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": f"demo-dlq-{time.time()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    metadata = consumer.list_topics(args.topic, timeout=10)
    partitions = [TopicPartition(args.topic, p, 0) for p in metadata.topics[args.topic].partitions]
    consumer.assign(partitions)
    codes = collections.Counter()
    idle_since = time.time()
    while time.time() - idle_since < 3:
        message = consumer.poll(0.5)
        if message is None or message.error() is not None:
            continue
        idle_since = time.time()
        headers = dict(message.headers() or [])
        codes[headers.get("dedup-error-code", b"?").decode()] += 1
    consumer.close()
    print(json.dumps(dict(codes)))


def cloudevents(args):
    """CloudEvents as a team's existing topic has them: no envelope. Each event once, in binary or
    structured mode at random; some sent again in the other mode with a new `time` (a producer
    retry); the same ids from several sources; a few with a specversion the worker refuses."""
    rng = random.Random(args.seed)
    producer = Producer({"bootstrap.servers": args.bootstrap, "enable.idempotence": True, "linger.ms": 5})
    sources = ["/shop", "/billing", "/crm"]
    events = []
    for n in range(args.events):
        source = sources[n % len(sources)]
        event_id = f"order-{n // len(sources)}"  # the same ids under every source: three tenants
        data = {"title": f"follow up {event_id} from {source}", "priority": rng.randint(1, 5)}
        events.append((event_id, source, data))

    def send(event_id, source, data, mode, specversion="1.0", time_="2026-12-02T10:00:00Z"):
        key = f"{source}/{event_id}".encode()  # both modes of one event on one partition, in order
        if mode == "binary":
            headers = [("ce_specversion", specversion.encode()), ("ce_id", event_id.encode()),
                       ("ce_source", source.encode()), ("ce_type", b"com.example.todo.created"),
                       ("ce_time", time_.encode()), ("content-type", b"application/json")]
            producer.produce(args.topic, key=key, value=json.dumps(data).encode(), headers=headers)
        else:
            event = {"specversion": specversion, "id": event_id, "source": source,
                     "type": "com.example.todo.created", "time": time_, "data": data}
            producer.produce(args.topic, key=key, value=json.dumps(event).encode(),
                             headers=[("content-type", b"application/cloudevents+json")])
        producer.poll(0)

    counts = collections.Counter()
    for event_id, source, data in events:
        mode = rng.choice(["binary", "structured"])
        send(event_id, source, data, mode)
        counts[mode] += 1
        if rng.random() < args.retry_share:  # the producer retries, in the other mode, later
            send(event_id, source, data, "structured" if mode == "binary" else "binary",
                 time_="2026-12-02T10:00:05Z")
            counts["retried in the other mode"] += 1
    for n in range(args.invalid):
        send(f"legacy-{n}", "/legacy", {"title": "old producer"}, "structured", specversion="0.3")
        counts["specversion 0.3"] += 1
    producer.flush(60)
    total = sum(counts.values())
    print(json.dumps({"total": total, "events": len(events), "sources": len(sources), **counts}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("produce")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--commands", type=int, default=7000)
    p.add_argument("--seed", type=int, default=7)
    c = sub.add_parser("collect")
    c.add_argument("--bootstrap", required=True)
    c.add_argument("--topic", required=True)
    c.add_argument("--expect", type=int, required=True)
    c.add_argument("--timeout", type=float, default=120)
    d = sub.add_parser("dead-letters")
    d.add_argument("--bootstrap", required=True)
    d.add_argument("--topic", required=True)
    e = sub.add_parser("cloudevents")
    e.add_argument("--bootstrap", required=True)
    e.add_argument("--topic", required=True)
    e.add_argument("--events", type=int, default=300)
    e.add_argument("--retry-share", type=float, default=0.3)
    e.add_argument("--invalid", type=int, default=5)
    e.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    {"produce": produce, "collect": collect, "dead-letters": dead_letters,
     "cloudevents": cloudevents}[args.command](args)


if __name__ == "__main__":
    main()
