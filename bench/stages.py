"""Benchmark: where each record's time goes in the archive and the load group, by stage.

Publishes N FileEvents with inline source text (default 200,000, 200-600 B, the
checksums true) to a fresh topic, then drains it with each group on the real
consumer runtime, timing every stage of every batch, and prints microseconds per
record for each:

- poll: ``Consumer.consume`` (counted from the first records in hand);
- decode: the runtime's own loop (Avro, the checks, Record and Decoded), that is
  ``_process`` less the sink's ``write``;
- build: the sink's ``write`` less what it spends in storage: the rows (load) or
  the JSON lines into open segments (archive);
- write: ``Database.write`` (load, PostgreSQL) or publishing segments (archive:
  zstd, sha256, fsync, manifest; at the end of a drain that fills no segment);
- commit: ``_commit`` (the sink's positions, Kafka's commit);
- other: the rest of the loop (ticks, lag, the caught-up check, closing);

and CPU seconds per 100,000 records (``resource.getrusage``: the whole process,
librdkafka's threads included). The baselines, in the same run: a bare consumer
draining the topic (the archive's) and ``Database.write`` of the same rows, and a
binary ``COPY`` of them (the load's).

    .venv/bin/python bench/stages.py                               # both groups
    .venv/bin/python bench/stages.py --groups load --bytes 2000 4000 --runs 3
    .venv/bin/python bench/stages.py --events 20000 --offline 5 --groups   # code paths only
    .venv/bin/python bench/stages.py --events 3000                 # a quick check (CI)
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

# bench/git.py is in this folder: it must not shadow GitPython's `git` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402 - after the path
from confluent_kafka import Consumer, Message  # noqa: E402
from psycopg import sql  # noqa: E402

from bench.archive import raw_drain  # noqa: E402
from bench.load import copy_baseline, publish, write_only  # noqa: E402
from consumers.archive.sink import ArchiveSink  # noqa: E402
from consumers.base import Decoded, Sink, SinkCapabilities  # noqa: E402
from consumers.dlq import DeadLetterQueue  # noqa: E402
from consumers.load.sink import LoadSink  # noqa: E402
from consumers.metrics import Metrics  # noqa: E402
from consumers.runtime import ConsumerRuntime  # noqa: E402
from headrace.kafka import ensure_topics, make_admin  # noqa: E402
from headrace.settings import Settings, load_settings  # noqa: E402
from schemas.models import FileEvent  # noqa: E402
from schemas.registry import make_registry_client  # noqa: E402
from schemas.serde import EventDeserializer  # noqa: E402
from storage.archive import Archive, SegmentInfo  # noqa: E402
from storage.db import FileRow, LedgerEntry, RunRow, WriteResult, file_row  # noqa: E402
from storage.db.postgres import PostgresDatabase  # noqa: E402

STAGES = ("poll", "decode", "build", "write", "commit", "other")
Clock = dict[str, float]


class _Timed:
    """A consumer that times ``consume`` once records have come (the wait for the
    assignment is not a per-record cost); everything else passes through."""

    def __init__(self, consumer: Any, clock: Clock) -> None:
        self.consumer, self.clock, self.seen = consumer, clock, False

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        began = time.perf_counter()
        messages: list[Message] = self.consumer.consume(num_messages, timeout)
        if self.seen:
            self.clock["poll"] += time.perf_counter() - began
        elif messages:
            self.seen = True
            self.clock["first"] = time.perf_counter()
        return messages

    def __getattr__(self, name: str) -> Any:
        return getattr(self.consumer, name)


class _StagedRuntime(ConsumerRuntime):
    clock: Clock

    def timed(self, clock: Clock) -> None:
        self.clock = clock
        self._consumer = _Timed(self._consumer, clock)  # type: ignore[assignment]

    def _process(self, messages: Sequence[Message]) -> None:
        began = time.perf_counter()
        sink_before = self.clock["sink"]
        super()._process(messages)
        spent = time.perf_counter() - began
        self.clock["decode"] += spent - (self.clock["sink"] - sink_before)

    def process(self, messages: Sequence[Message]) -> None:
        self._process(messages)

    def _commit(self, only: set[tuple[str, int]] | None = None) -> None:
        began = time.perf_counter()
        super()._commit(only)
        self.clock["commit"] += time.perf_counter() - began


def _timing_sink(base: type[Any], clock: Clock) -> type[Any]:
    """``base`` (a sink class) with its ``write`` timed: the sink's time less storage's is
    the build stage."""

    class TimedSink(base):  # type: ignore[misc]
        def write(self, batch: Sequence[Decoded]) -> None:
            began, storage = time.perf_counter(), clock["write"]
            super().write(batch)
            spent = time.perf_counter() - began
            clock["sink"] += spent
            clock["build"] += spent - (clock["write"] - storage)

    return TimedSink


class _TimedDatabase(PostgresDatabase):
    clock: Clock

    def write(
        self,
        files: Sequence[FileRow],
        runs: Sequence[RunRow] = (),
        ledger: Sequence[LedgerEntry] = (),
    ) -> WriteResult:
        began = time.perf_counter()
        try:
            return super().write(files, runs, ledger)
        finally:
            self.clock["write"] += time.perf_counter() - began


class _BehindDatabase(_TimedDatabase):
    """An experiment, for measuring only (``--overlap``): each write runs in a thread
    while the runtime decodes the next batch, and the next write waits for it. It claims
    a batch durable before it is, and a failed write surfaces one batch late: not for
    use, only to see whether the overlap would pay on this machine."""

    pending: Future[WriteResult] | None = None
    pool: ThreadPoolExecutor

    def write(
        self,
        files: Sequence[FileRow],
        runs: Sequence[RunRow] = (),
        ledger: Sequence[LedgerEntry] = (),
    ) -> WriteResult:
        began = time.perf_counter()
        self.drain()  # the runtime's thread waits only here: that is its write stage
        self.clock["write"] += time.perf_counter() - began
        self.pending = self.pool.submit(PostgresDatabase.write, self, files, runs, ledger)
        return WriteResult(len(files), 0, len(runs))

    def drain(self) -> None:
        if self.pending is not None:
            self.pending.result()
            self.pending = None

    def close(self) -> None:
        began = time.perf_counter()
        self.drain()
        self.clock["write"] += time.perf_counter() - began
        self.pool.shutdown()
        super().close()


class _TimedArchive(Archive):
    clock: Clock

    def close_all(self, partitions: Any = None) -> list[SegmentInfo]:
        return self._timed(lambda: super(_TimedArchive, self).close_all(partitions))

    def close_due(self) -> list[SegmentInfo]:
        return self._timed(super().close_due)

    def append(self, records: Any) -> list[SegmentInfo]:
        # publishing inside append (a segment that fills) is rare and counted as build
        return super().append(records)

    def _timed(self, call: Callable[[], list[SegmentInfo]]) -> list[SegmentInfo]:
        began = time.perf_counter()
        try:
            return call()
        finally:
            self.clock["write"] += time.perf_counter() - began


def run_group(
    settings: Settings, topic: str, sink_for: Callable[[Clock], Any], batch_size: int
) -> tuple[Clock, int]:
    """Drain ``topic`` with the sink ``sink_for`` makes; the clock and the records done."""
    clock: Clock = defaultdict(float)
    group = f"bench-stages-{uuid.uuid4().hex[:8]}"
    kafka = settings.kafka.model_copy(
        update={"topics": settings.kafka.topics.model_copy(update={"dead_letter": f"{topic}.dlq"})}
    )
    with make_registry_client(settings.registry) as client:
        runtime = _StagedRuntime(
            kafka,
            group,
            {topic: EventDeserializer(client, FileEvent)},
            sink_for(clock),
            DeadLetterQueue(kafka, client, group),
            metrics=Metrics(group),
            until_caught_up=True,
            batch_size=batch_size,
        )
        runtime.timed(clock)
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        stats = runtime.run()
        finished = time.perf_counter()
        after = resource.getrusage(resource.RUSAGE_SELF)
    clock["wall"] = finished - clock["first"]
    clock["cpu"] = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    clock["other"] = clock["wall"] - sum(clock[s] for s in STAGES if s != "other")
    return clock, stats.processed


class _NoSink(Sink):
    capabilities = SinkCapabilities(durable_on_write=True, needs_models=False)

    def write(self, batch: Sequence[Decoded]) -> None:
        pass

    def durable(self) -> dict[tuple[str, int], int]:
        return {}


class _NoDatabase(PostgresDatabase):
    def write(
        self,
        files: Sequence[FileRow],
        runs: Sequence[RunRow] = (),
        ledger: Sequence[LedgerEntry] = (),
    ) -> WriteResult:
        return WriteResult(len(files), 0, len(runs))


class _NoLetters:
    def flush(self) -> None:
        pass


def offline(settings: Settings, topic: str, n: int, passes: int) -> None:
    """The code paths alone: the topic's messages fetched first, then through
    ``ConsumerRuntime._process`` in batches of 5,000 into a sink that does nothing
    (runtime and decoding), the LoadSink over a database that does nothing (rows), the
    ArchiveSink on a local directory (lines; publishing at close apart); the best of
    ``passes``, in CPU time of this thread (waiting for a core does not count)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"bench-offline-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    messages: list[Message] = []
    while len(messages) < n:
        messages += [m for m in consumer.consume(10_000, 1.0) if m.error() is None]
    consumer.close()
    best: dict[str, float] = {}
    with make_registry_client(settings.registry) as client, tempfile.TemporaryDirectory() as tmp:
        sinks: dict[str, Callable[[], Any]] = {
            "runtime+decode": _NoSink,
            "load": lambda: LoadSink(
                _NoDatabase(settings.postgres), "g", file_topic=topic, run_topic="-"
            ),
            "archive": lambda: ArchiveSink(Archive(Path(tempfile.mkdtemp(dir=tmp)))),
        }
        for name, make in sinks.items():
            for _ in range(passes):
                runtime = _StagedRuntime(
                    settings.kafka,
                    "bench-offline",
                    {topic: EventDeserializer(client, FileEvent)},
                    make(),
                    _NoLetters(),  # type: ignore[arg-type]
                    metrics=Metrics("bench-offline"),
                )
                runtime.clock = defaultdict(float)
                runtime.process(messages[:500])  # the schema fetched, the code warm
                began = time.thread_time()
                for i in range(0, n, 5000):
                    runtime.process(messages[i : i + 5000])
                spent = time.thread_time() - began
                best[name] = min(best.get(name, spent), spent)
                if name == "archive":
                    began = time.thread_time()
                    runtime.sink.close()
                    spent = time.thread_time() - began
                    best["publish"] = min(best.get("publish", spent), spent)
    us = {k: v / n * 1e6 for k, v in best.items()}
    print(
        f"  code paths alone, best of {passes}, CPU us/record: runtime+decode"
        f" {us['runtime+decode']:.2f}, load build {us['load'] - us['runtime+decode']:.2f},"
        f" archive build {us['archive'] - us['runtime+decode']:.2f},"
        f" archive publish {us['publish']:.2f}"
    )


def report(label: str, clocks: list[Clock], n: int, baseline: float, what: str) -> None:
    """One line of medians per stage, in us per record."""
    med = {k: statistics.median(c[k] for c in clocks) for k in (*STAGES, "wall", "cpu")}
    stages = "  ".join(f"{s} {med[s] / n * 1e6:5.2f}" for s in STAGES)
    rate = n / med["wall"]
    print(
        f"  {label:<22} {stages}  = {med['wall'] / n * 1e6:5.2f} us/record;"
        f" {rate:>8,.0f}/s, {rate * baseline / n:4.2f}x {what};"
        f" CPU {med['cpu'] / n * 1e5:.2f} s/100k"
    )
    if len(clocks) > 1:
        rates = sorted(n / c["wall"] for c in clocks)
        print(f"  {'':<22} rates of {len(clocks)} runs: {', '.join(f'{r:,.0f}' for r in rates)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--bytes", type=int, nargs=2, default=(200, 600), metavar=("MIN", "MAX"))
    parser.add_argument("--groups", nargs="*", default=["archive", "load"])
    parser.add_argument("--runs", type=int, default=1, help="drains of each group (median)")
    parser.add_argument(
        "--offline",
        type=int,
        metavar="PASSES",
        help="also the code paths alone, without Kafka or storage: best of PASSES",
    )
    parser.add_argument(
        "--overlap",
        action="store_true",
        help="load: each write in a thread while the next batch is decoded (an experiment)",
    )
    args = parser.parse_args()
    settings, n = load_settings(), args.events
    tag = uuid.uuid4().hex[:8]
    topic, schema = f"bench.stages-{tag}", f"bench_stages_{tag}"
    admin = make_admin(settings.kafka)
    ensure_topics(
        admin,
        [topic],
        partitions=settings.kafka.partitions,
        replication_factor=settings.kafka.replication_factor,
    )
    values = publish(settings, n, topic, tuple(args.bytes))
    print(
        f"{n:,} FileEvents, {args.bytes[0]}-{args.bytes[1]} B inline, {os.cpu_count()} cores,"
        f" load average {os.getloadavg()[0]:.2f}; us per record by stage, medians of"
        f" {args.runs} run(s)"
    )
    try:
        if args.offline:
            offline(settings, topic, n, args.offline)
        if "archive" in args.groups:
            raw_s = statistics.median(raw_drain(topic, n) for _ in range(args.runs))
            print(f"  {'bare consumer drain':<22} {raw_s / n * 1e6:5.2f} us/record  baseline")
            clocks = []
            for _ in range(args.runs):
                with tempfile.TemporaryDirectory(prefix="headrace-bench-stages-") as tmp:

                    def archive_sink(clock: Clock, root: Path = Path(tmp)) -> Any:
                        archive = _TimedArchive(root)
                        archive.clock = clock
                        return _timing_sink(ArchiveSink, clock)(archive)

                    clock, done = run_group(settings, topic, archive_sink, 10_000)
                if done != n:
                    raise SystemExit(f"the archive group took {done} of {n}")
                clocks.append(clock)
            report("archive group", clocks, n, raw_s, "bare consumer")
        if "load" in args.groups:
            clocks = []
            for run in range(args.runs):

                def load_sink(clock: Clock, name: str = f"{schema}_{run}") -> Any:
                    db = (_BehindDatabase if args.overlap else _TimedDatabase)(
                        settings.postgres, schema=name
                    )
                    db.migrate()
                    db.clock = clock
                    if isinstance(db, _BehindDatabase):
                        db.pool = ThreadPoolExecutor(1, thread_name_prefix="write-behind")
                    return _timing_sink(LoadSink, clock)(
                        db, "bench", file_topic=topic, run_topic=f"{topic}.runs"
                    )

                clock, done = run_group(settings, topic, load_sink, settings.load.batch_size)
                if done != n:
                    raise SystemExit(f"the load group took {done} of {n}")
                clocks.append(clock)
            decode = EventDeserializer(make_registry_client(settings.registry), FileEvent).decode
            rows = [file_row(decode(v), topic, 0, i) for i, v in enumerate(values)]
            writes = []
            for run in range(args.runs):
                db = PostgresDatabase(settings.postgres, schema=f"{schema}_w{run}")
                db.migrate()
                with db:
                    writes.append(write_only(db, rows, settings.load.batch_size))
            write_s = statistics.median(writes)
            copy_s = copy_baseline(settings, schema + "_0", rows)
            print(
                f"  {'Database.write alone':<22} {write_s / n * 1e6:5.2f} us/record  baseline;"
                f" COPY {copy_s / n * 1e6:5.2f} us/record"
            )
            report("load group -> Postgres", clocks, n, write_s, "Database.write")
            med = statistics.median(c["wall"] for c in clocks)
            print(f"  {'':<22} {copy_s / med:4.2f}x COPY (plain table)")
    finally:
        with psycopg.connect(settings.postgres.conninfo(), autocommit=True) as conn:
            for run in range(args.runs):
                for name in (f"{schema}_{run}", f"{schema}_w{run}"):
                    conn.execute(
                        sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
                    )
        admin.delete_topics([topic, f"{topic}.dlq"])


if __name__ == "__main__":
    main()
