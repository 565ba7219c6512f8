"""Benchmark: the archive group draining a topic, against a raw drain of the same topic.

Publishes N FileEvents with inline source-code content (default 200,000), then
in the same run measures:

- raw drain: a bare confluent-kafka Consumer polling the topic and discarding
  records;
- archive: the archive group (consumer runtime, decode, JSON lines, zstd,
  atomic publish, manifests, commits) draining it, in this process;

and prints events/s for each, the ratio, and the space zstd saved over the
plain JSON lines.

    .venv/bin/python bench/archive.py                      # full figures
    .venv/bin/python bench/archive.py --events 5000        # a quick check (CI)
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import uuid
from pathlib import Path

import zstandard
from confluent_kafka import Consumer
from confluent_kafka.serialization import MessageField, SerializationContext

from consumers.archive.sink import ArchiveSink
from consumers.dlq import DeadLetterQueue
from consumers.metrics import Metrics
from consumers.runtime import ConsumerRuntime
from headrace.kafka import ensure_topics, make_admin, make_producer
from headrace.settings import load_settings
from schemas.catalog import EventType
from schemas.models import ContentStrategy, FileEvent, InlineContent, TextEncoding
from schemas.registry import make_registry_client
from schemas.serde import EventDeserializer, EventSerializer
from storage.archive import Archive

SOURCE = Path(__file__).read_text()  # realistic text: this very file


def publish(n: int, topic: str) -> None:
    settings = load_settings()
    rng = random.Random(3)  # noqa: S311 - test data
    with make_registry_client(settings.registry) as client:
        serialize = EventSerializer(client, EventType.FILE_EVENT)
        ctx = SerializationContext(topic, MessageField.VALUE)
        producer = make_producer(settings.kafka)
        for i in range(n):
            start = rng.randrange(0, len(SOURCE) - 600)
            data = SOURCE[start : start + rng.randrange(200, 600)].encode()
            event = FileEvent(
                project="bench",
                path=f"src/m{i:06d}.py",
                size=len(data),
                checksum=f"{i:064x}",
                content_strategy=ContentStrategy.INLINE,
                inline=InlineContent(data=data, encoding=TextEncoding.UTF_8),
            )
            while True:
                try:
                    producer.produce(topic, key=event.path.encode(), value=serialize(event, ctx))
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
        if producer.flush(120):
            raise SystemExit("not every event was delivered")


def raw_drain(topic: str, n: int) -> float:
    settings = load_settings()
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"bench-raw-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    seen, started = 0, None
    deadline = time.monotonic() + 300
    while seen < n and time.monotonic() < deadline:
        for msg in consumer.consume(10_000, 1.0):
            if msg.error() is None:
                started = started or time.perf_counter()
                seen += 1
    consumer.close()
    if started is None or seen < n:
        raise SystemExit(f"raw drain saw {seen} of {n}")
    return time.perf_counter() - started


def archive_drain(topic: str, root: Path) -> tuple[float, int]:
    settings = load_settings()
    kafka = settings.kafka.model_copy(
        update={"topics": settings.kafka.topics.model_copy(update={"dead_letter": f"{topic}.dlq"})}
    )
    group = f"bench-archive-{uuid.uuid4().hex[:8]}"
    with make_registry_client(settings.registry) as client:
        runtime = ConsumerRuntime(
            kafka,
            group,
            {topic: EventDeserializer(client, FileEvent)},
            ArchiveSink(Archive(root)),
            DeadLetterQueue(kafka, client, group),
            metrics=Metrics(group),
            until_caught_up=True,
            batch_size=10_000,
        )
        started = time.perf_counter()
        stats = runtime.run()
        return time.perf_counter() - started, stats.processed


def sizes(root: Path) -> tuple[int, int]:
    """(compressed bytes on disk, plain JSON-lines bytes) of the archive's segments."""
    compressed = plain = 0
    for segment in root.rglob("*.jsonl.zst"):
        compressed += segment.stat().st_size
        with segment.open("rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as text:
            while chunk := text.read(1 << 20):
                plain += len(chunk)
    return compressed, plain


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    settings = load_settings()
    topic = f"bench.archive-{uuid.uuid4().hex[:8]}"
    ensure_topics(
        make_admin(settings.kafka),
        [topic],
        partitions=settings.kafka.partitions,
        replication_factor=settings.kafka.replication_factor,
    )
    started = time.perf_counter()
    publish(args.events, topic)
    print(
        f"published {args.events:,} FileEvents with inline source text in "
        f"{time.perf_counter() - started:.1f}s"
    )
    raw_s = raw_drain(topic, args.events)
    with tempfile.TemporaryDirectory(prefix="headrace-bench-archive-") as tmp:
        ours_s, processed = archive_drain(topic, Path(tmp))
        compressed, plain = sizes(Path(tmp))
    if processed != args.events:
        raise SystemExit(f"the archive wrote {processed} of {args.events} events")
    raw_rate, ours_rate = args.events / raw_s, args.events / ours_s
    print(f"  raw drain        {raw_rate:>10,.0f} events/s  {raw_s:6.2f}s  baseline")
    print(
        f"  archive group    {ours_rate:>10,.0f} events/s  {ours_s:6.2f}s  "
        f"{ours_rate / raw_rate:4.2f}x baseline"
    )
    print(
        f"  zstd: {plain / 1e6:.1f} MB of JSON lines stored in {compressed / 1e6:.1f} MB "
        f"({100 * (1 - compressed / plain):.1f}% saved)"
    )
    make_admin(settings.kafka).delete_topics([topic, f"{topic}.dlq"])


if __name__ == "__main__":
    main()
