"""Benchmark: headrace's Kafka clients against bare confluent-kafka clients.

Publishes the same records with a bare producer (librdkafka defaults) and
with the producer from ``headrace.kafka`` (idempotent, acks=all, zstd), then
drains each topic with a bare consumer and with headrace's consumer
(read_committed, manual offsets), in the same run against the same broker.
Prints records/s and MB/s for each and the ratio to the bare baseline.

    .venv/bin/python bench/kafka_clients.py --records 200000 --size 1024
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Producer

from headrace.kafka import ensure_topics, make_admin, make_consumer, make_producer
from headrace.settings import load_settings


def produce(producer: Producer, topic: str, payloads: list[bytes]) -> float:
    started = time.perf_counter()
    failed = 0

    def on_delivery(err: Any, _msg: Any) -> None:
        nonlocal failed
        failed += err is not None

    for i, value in enumerate(payloads):
        while True:
            try:
                producer.produce(
                    topic, key=b"%d" % (i % 1000), value=value, on_delivery=on_delivery
                )
                break
            except BufferError:  # local queue full: serve callbacks and retry
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(60) or failed:
        raise SystemExit(f"{failed} records not delivered")
    return time.perf_counter() - started


def drain(consumer: Consumer, topic: str, expected: int) -> float:
    consumer.subscribe([topic])
    seen = 0
    started = None
    deadline = time.monotonic() + 120
    while seen < expected and time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=10_000, timeout=1.0):
            if msg.error() is None:
                started = started or time.perf_counter()
                seen += 1
    consumer.close()
    if seen < expected or started is None:
        raise SystemExit(f"drained {seen} of {expected} records")
    return time.perf_counter() - started


def report(label: str, seconds: float, records: int, size: int, baseline: float | None) -> None:
    rate = records / seconds
    ratio = f"{baseline / seconds:5.2f}x baseline" if baseline else "baseline"
    print(f"  {label:<34} {rate:>12,.0f} rec/s {rate * size / 1e6:>8.1f} MB/s  {ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=1024, help="bytes per record value")
    args = parser.parse_args()

    settings = load_settings()
    kafka = settings.kafka
    run = uuid.uuid4().hex[:8]
    topics = [f"bench.raw-{run}", f"bench.headrace-{run}"]
    admin = make_admin(kafka)
    ensure_topics(
        admin, topics, partitions=kafka.partitions, replication_factor=kafka.replication_factor
    )
    # Half-compressible values, like source files: random bytes then repeats.
    payloads = [
        os.urandom(args.size // 2) + b"x" * (args.size - args.size // 2)
        for _ in range(min(args.records, 1000))
    ]
    payloads = (payloads * (args.records // len(payloads) + 1))[: args.records]

    bare = {"bootstrap.servers": kafka.bootstrap_servers}
    print(
        f"{args.records:,} records of {args.size} B, {kafka.partitions} partitions, "
        f"broker {kafka.bootstrap_servers}"
    )
    print("produce")
    base = produce(Producer(bare), topics[0], payloads)
    report("bare Producer (librdkafka defaults)", base, args.records, args.size, None)
    ours = produce(make_producer(kafka), topics[1], payloads)
    report("headrace producer (idempotent, zstd)", ours, args.records, args.size, base)

    print("drain")
    consumers: list[tuple[str, Callable[[], Consumer]]] = [
        (
            "bare Consumer",
            lambda: Consumer(
                {**bare, "group.id": f"bench-raw-{run}", "auto.offset.reset": "earliest"}
            ),
        ),
        ("headrace consumer (read_committed)", lambda: make_consumer(kafka, f"bench-hr-{run}")),
    ]
    baseline = None
    for (label, factory), topic in zip(consumers, topics, strict=True):
        seconds = drain(factory(), topic, args.records)
        report(label, seconds, args.records, args.size, baseline)
        baseline = baseline or seconds
    admin.delete_topics(topics)


if __name__ == "__main__":
    main()
