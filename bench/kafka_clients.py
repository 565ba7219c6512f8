"""Benchmark: headrace's Kafka clients against bare confluent-kafka clients.

Publishes the same records with a bare producer (librdkafka defaults) and
with the producer from ``headrace.kafka`` (idempotent, acks=all, zstd), then
drains the topic headrace's producer wrote with a bare consumer and with
headrace's consumer (read_committed, manual offsets), in the same run against
the same broker.
Prints records/s and MB/s for each and the ratio to the bare baseline.

    .venv/bin/python bench/kafka_clients.py --records 200000 --size 1024
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Producer

from headrace.kafka import ensure_topics, make_admin, make_consumer, make_producer
from headrace.settings import KafkaSettings, load_settings


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


def report(
    label: str, times: list[float], records: int, size: int, baseline: float | None
) -> float:
    """Print the median rate, its spread over rounds and the ratio; return the median time."""
    seconds = statistics.median(times)
    rate = records / seconds
    spread = f"({records / max(times):,.0f}-{records / min(times):,.0f})"
    ratio = f"{baseline / seconds:5.2f}x baseline" if baseline else "baseline"
    print(
        f"  {label:<38} {rate:>10,.0f} rec/s {spread:>19} {rate * size / 1e6:>7.1f} MB/s  {ratio}"
    )
    return seconds


def one_round(kafka: KafkaSettings, payloads: list[bytes], order: int) -> dict[str, float]:
    """Times, in seconds, of each client on fresh topics and groups."""
    run = uuid.uuid4().hex[:8]
    raw_topic, our_topic = f"bench.raw-{run}", f"bench.headrace-{run}"
    admin = make_admin(kafka)
    ensure_topics(
        admin,
        [raw_topic, our_topic],
        partitions=kafka.partitions,
        replication_factor=kafka.replication_factor,
    )
    bare = {"bootstrap.servers": kafka.bootstrap_servers}
    times = {
        PRODUCERS[0]: produce(Producer(bare), raw_topic, payloads),
        PRODUCERS[1]: produce(make_producer(kafka), our_topic, payloads),
    }
    # Both consumers drain the topic headrace's producer wrote (zstd), so the
    # ratio measures the consumer settings alone; the order alternates by round.
    consumers: dict[str, Callable[[], Consumer]] = {
        CONSUMERS[0]: lambda: Consumer(
            {**bare, "group.id": f"bench-raw-{run}", "auto.offset.reset": "earliest"}
        ),
        CONSUMERS[1]: lambda: make_consumer(kafka, f"bench-hr-{run}"),
    }
    for label in CONSUMERS[::-1] if order % 2 else CONSUMERS:
        times[label] = drain(consumers[label](), our_topic, len(payloads))
    admin.delete_topics([raw_topic, our_topic])
    return times


PRODUCERS = ("bare Producer (librdkafka defaults)", "headrace producer (idempotent, zstd)")
CONSUMERS = ("bare Consumer", "headrace consumer (read_committed)")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=1024, help="bytes per record value")
    parser.add_argument("--rounds", type=int, default=3, help="the median of rounds is shown")
    args = parser.parse_args()

    kafka = load_settings().kafka
    # Half-compressible values, like source files: random bytes, then a repeat.
    distinct = [
        os.urandom(args.size // 2) + b"x" * (args.size - args.size // 2)
        for _ in range(min(args.records, 1000))
    ]
    payloads = (distinct * (args.records // len(distinct) + 1))[: args.records]
    print(
        f"{args.records:,} records of {args.size} B, {kafka.partitions} partitions, "
        f"broker {kafka.bootstrap_servers}, median of {args.rounds} rounds"
    )
    rounds = [one_round(kafka, payloads, order) for order in range(args.rounds)]
    for title, (base, ours) in (("produce", PRODUCERS), ("drain (same topic, zstd)", CONSUMERS)):
        print(title)
        base_s = report(base, [r[base] for r in rounds], args.records, args.size, None)
        report(ours, [r[ours] for r in rounds], args.records, args.size, base_s)


if __name__ == "__main__":
    main()
