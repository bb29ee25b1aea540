#!/usr/bin/python3
"""The backlog of bench/run's RSS phase, with python3-confluent-kafka (system python3).

  backlog.py produce --bootstrap B --topic T --partitions P --per-partition N
      Produces N todo.create commands (the benchmark's command shape, new keys) to each of the P
      partitions of T, uncompressed, then checks that the broker still holds every one of them
      (low watermark 0, high watermark N: the embedded broker drops its oldest records past ~5 MiB
      per partition, silently). Prints `name: value` lines.

  backlog.py wait --bootstrap B --topic T --partitions P --group G [--timeout 900]
      Waits until the group's committed offsets on T reach the high watermarks. Prints the seconds.
"""
import argparse
import json
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition


def command(i):
    # As bench_support.hpp's command_body (keys sorted, as nlohmann::json dumps them).
    return json.dumps({"idempotency_key": f"rss-key-{i:08d}",
                       "payload": {"description": "From the benchmark", "title": f"Todo number {i}"},
                       "scope": f"org-{i % 100}", "type": "todo.create"}, separators=(",", ":"))


def watermarks(bootstrap, topic, partitions):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-backlog-watermarks"})
    try:
        return [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in range(partitions)]
    finally:
        consumer.close()


def produce(args):
    producer = Producer({"bootstrap.servers": args.bootstrap, "compression.type": "none",
                         "linger.ms": 20, "batch.num.messages": 1000, "enable.idempotence": True})
    start = time.monotonic()
    value_bytes = 0
    for i in range(args.per_partition):
        for p in range(args.partitions):
            value = command(i * args.partitions + p)
            value_bytes += len(value)
            while True:
                try:
                    producer.produce(args.topic, value=value, partition=p)
                    break
                except BufferError:
                    producer.poll(0.05)
        if i % 256 == 0:
            producer.poll(0)
    if producer.flush(120) != 0:
        sys.exit("backlog.py: produce did not complete")
    seconds = time.monotonic() - start
    for p, (low, high) in enumerate(watermarks(args.bootstrap, args.topic, args.partitions)):
        if low != 0 or high != args.per_partition:
            sys.exit(f"backlog.py: partition {p} holds offsets [{low}, {high}), not [0, {args.per_partition}): "
                     "the broker dropped records (the embedded one keeps ~5 MiB per partition): "
                     "lower --rss-records")
    total = args.per_partition * args.partitions
    print(f"worker rss backlog records: {total}")
    print(f"worker rss backlog MiB per partition: {value_bytes / args.partitions / 2**20:.1f}")
    print(f"worker rss backlog produce seconds: {seconds:.1f}")


def wait(args):
    highs = [high for _, high in watermarks(args.bootstrap, args.topic, args.partitions)]
    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group})
    start = time.monotonic()
    try:
        while True:
            committed = consumer.committed([TopicPartition(args.topic, p) for p in range(args.partitions)],
                                           timeout=10)
            if all(tp.offset >= high for tp, high in zip(committed, highs)):
                break
            if time.monotonic() - start > args.timeout:
                done = sum(max(0, tp.offset) for tp in committed)
                sys.exit(f"backlog.py: the worker committed {done} of {sum(highs)} in {args.timeout} s")
            time.sleep(0.2)
    finally:
        consumer.close()
    print(f"{time.monotonic() - start:.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("produce", "wait"):
        p = sub.add_parser(name)
        p.add_argument("--bootstrap", required=True)
        p.add_argument("--topic", required=True)
        p.add_argument("--partitions", type=int, required=True)
        if name == "produce":
            p.add_argument("--per-partition", type=int, required=True)
        else:
            p.add_argument("--group", required=True)
            p.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    produce(args) if args.what == "produce" else wait(args)


if __name__ == "__main__":
    main()
