"""Benchmark: the archive group draining a topic, against a raw drain of the same topic.

Publishes N FileEvents with inline source-code content (default 200,000), then
in the same run measures:

- raw drain: a bare confluent-kafka Consumer polling the topic and discarding
  records;
- archive: the archive group (consumer runtime, decode, JSON lines, zstd,
  atomic publish, manifests, commits) draining it, as one or more processes of
  one group (``--processes``; each its own ConsumerRuntime, the partitions
  split between them);

and prints events/s for each, the ratio, and the space zstd saved over the
plain JSON lines.

Both drains are timed the same way: from the first records in hand to the last
one done (for the archive: published, committed, its consumer closed). The
archive's wall time, from ``run()`` to the end and so with joining the group and
the assignment, is printed too. Several archive processes join together (a
barrier once each is ready) and stop together, once every one has caught up:
one that left first would make the others give their partitions up and take them
back, a cost of stopping, not of draining.

    .venv/bin/python bench/archive.py                      # full figures
    .venv/bin/python bench/archive.py --processes 1 2      # one and two processes
    .venv/bin/python bench/archive.py --events 5000        # a quick check (CI)
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path

import zstandard
from confluent_kafka import Consumer, Message
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


@dataclass(frozen=True)
class Drained:
    """One archive process's run, on the system-wide monotonic clock."""

    started: float  # run() called
    first_records: float  # the first records in hand
    finished: float  # run() returned: everything published and committed
    processed: int


class _Together:
    """Processes of one group stop together: each once it has caught up and every other
    has too. One that leaves first makes the others give their partitions up and take
    them back (a rebalance), which is the group's way of stopping, not of draining."""

    def __init__(self, processes: int, caught_up: Synchronized[int], everyone: Event) -> None:
        self.processes, self.caught_up, self.everyone = processes, caught_up, everyone
        self.counted = False

    def done(self) -> bool:
        if not self.counted:
            self.counted = True
            with self.caught_up.get_lock():
                self.caught_up.value += 1
                if self.caught_up.value == self.processes:
                    self.everyone.set()
        return self.everyone.is_set()


class _TimedRuntime(ConsumerRuntime):
    first_records: float | None = None
    together: _Together | None = None

    def _process(self, messages: Sequence[Message]) -> None:
        if messages and self.first_records is None:
            self.first_records = time.monotonic()
        super()._process(messages)

    def _caught_up(self) -> bool:
        if not super()._caught_up():
            return False
        return self.together is None or self.together.done()


def archive_process(
    topic: str,
    root: Path,
    group: str,
    start: Barrier | None = None,
    together: _Together | None = None,
) -> Drained:
    """One process of the archive group, until it has caught up; ``start``: wait there
    once ready, so that every process joins the group at once; ``together``: stop with
    the others."""
    settings = load_settings()
    kafka = settings.kafka.model_copy(
        update={"topics": settings.kafka.topics.model_copy(update={"dead_letter": f"{topic}.dlq"})}
    )
    with make_registry_client(settings.registry) as client:
        runtime = _TimedRuntime(
            kafka,
            group,
            {topic: EventDeserializer(client, FileEvent)},
            ArchiveSink(Archive(root)),
            DeadLetterQueue(kafka, client, group),
            metrics=Metrics(group),
            until_caught_up=True,
            batch_size=10_000,
            poll_timeout_s=0.05,  # caught up, waiting for the others: look often
            # Processes that join together share the partitions from the start; one that
            # joins a moment late is only noticed at the others' next heartbeat (3 s by
            # default), a whole drain later.
            consumer_config={"heartbeat.interval.ms": 100},
        )
        runtime.together = together
        if start is not None:
            start.wait()
        started = time.monotonic()
        stats = runtime.run()
        finished = time.monotonic()
    return Drained(started, runtime.first_records or finished, finished, stats.processed)


def _child(
    topic: str, root: Path, group: str, start: Barrier, together: _Together, results: Queue[Drained]
) -> None:
    results.put(archive_process(topic, root, group, start, together))


def archive_drain(topic: str, root: Path, processes: int) -> list[Drained]:
    """The archive group draining ``topic`` into ``root`` as ``processes`` processes: in
    this one for 1, else in spawned ones started together."""
    group = f"bench-archive-{uuid.uuid4().hex[:8]}"
    if processes == 1:
        return [archive_process(topic, root, group)]
    ctx = multiprocessing.get_context("spawn")  # no fork: librdkafka's threads are running
    start, results = ctx.Barrier(processes + 1), ctx.Queue()
    together = _Together(processes, ctx.Value("i", 0), ctx.Event())
    children = [
        ctx.Process(target=_child, args=(topic, root, group, start, together, results))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    start.wait(timeout=120)  # every process imported and connected: go
    drained = [results.get(timeout=600) for _ in children]
    for child in children:
        child.join(timeout=60)
        if child.exitcode != 0:
            raise SystemExit(f"an archive process exited with {child.exitcode}")
    return drained


def sizes(root: Path) -> tuple[int, int, int]:
    """(compressed bytes on disk, plain JSON-lines bytes, lines) of the archive's segments."""
    compressed = plain = lines = 0
    for segment in root.rglob("*.jsonl.zst"):
        compressed += segment.stat().st_size
        with segment.open("rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as text:
            while chunk := text.read(1 << 20):
                plain += len(chunk)
                lines += chunk.count(b"\n")
    return compressed, plain, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument(
        "--processes",
        type=int,
        nargs="+",
        default=[1],
        metavar="N",
        help="archive processes of one group; several counts: one drain each (default 1)",
    )
    args = parser.parse_args()
    settings = load_settings()
    topic = f"bench.archive-{uuid.uuid4().hex[:8]}"
    partitions = max(settings.kafka.partitions, *args.processes)  # a partition per process
    ensure_topics(
        make_admin(settings.kafka),
        [topic],
        partitions=partitions,
        replication_factor=settings.kafka.replication_factor,
    )
    started = time.perf_counter()
    publish(args.events, topic)
    print(
        f"published {args.events:,} FileEvents with inline source text to {partitions} "
        f"partitions in {time.perf_counter() - started:.1f}s"
    )
    raw_s = raw_drain(topic, args.events)
    raw_rate = args.events / raw_s
    print(f"  raw drain        {raw_rate:>10,.0f} events/s  {raw_s:6.2f}s  baseline")
    for processes in args.processes:
        with tempfile.TemporaryDirectory(prefix="headrace-bench-archive-") as tmp:
            drained = archive_drain(topic, Path(tmp), processes)
            compressed, plain, lines = sizes(Path(tmp))
        if lines != args.events:
            raise SystemExit(f"the archive holds {lines} of {args.events} events")
        end = max(d.finished for d in drained)
        ours_s = end - min(d.first_records for d in drained)
        wall_s = end - min(d.started for d in drained)
        ours_rate = args.events / ours_s
        label = "archive group" if processes == 1 else f"archive group x{processes}"
        print(
            f"  {label:<16} {ours_rate:>10,.0f} events/s  {ours_s:6.2f}s  "
            f"{ours_rate / raw_rate:4.2f}x baseline  (wall {wall_s:.2f}s from run(): "
            f"{args.events / wall_s:,.0f} events/s)"
        )
    print(
        f"  zstd: {plain / 1e6:.1f} MB of JSON lines stored in {compressed / 1e6:.1f} MB "
        f"({100 * (1 - compressed / plain):.1f}% saved)"
    )
    make_admin(settings.kafka).delete_topics([topic, f"{topic}.dlq"])


if __name__ == "__main__":
    main()
