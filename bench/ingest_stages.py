"""Benchmark: microseconds a file for each stage of ``headrace ingest``'s tiny-file path.

Each stage runs alone over the same files (the synthetic tree of bench/ingest.py,
10,000 files of 0.6-4 KiB by default), ``--repeat`` times; the best run is
shown (the least disturbed by other work on the machine), with the median:

- walk: ``DirectorySource.candidates()`` (scandir, lstat, ``.gitignore`` checks);
- read: opening each candidate (the checks of producers/sources.py) and reading it;
- hash: sha256 of the bytes read;
- encoding: the LFS check and ``detect_encoding``;
- event, avro: building the ``FileEvent`` (pydantic, the deterministic event id) and
  its Confluent wire-format value (``EventSerializer``); since issue 16 one stage,
  event+avro, the body written from the bytes (``producers.prepare``);
- produce: ``Publisher``'s produce of those values (no transactions), with the flush;
- ingest: a whole in-process ``Ingest(...).run()`` with a transactional Publisher.

It needs the local stack (the registry and Kafka) for the last three.

    .venv/bin/python bench/ingest_stages.py [--small N] [--repeat N] [--tree DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka.serialization import MessageField, SerializationContext

# the repository, not bench/ (whose git.py would shadow GitPython)
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.ingest import synthetic_tree  # noqa: E402
from headrace.settings import load_settings  # noqa: E402
from producers.ingest import PRODUCER, Ingest, IngestOptions, StrategyChoice  # noqa: E402
from producers.policy import FilePolicy, detect_encoding  # noqa: E402
from producers.publisher import Publisher  # noqa: E402
from producers.sources import DirectorySource  # noqa: E402
from schemas.catalog import EventType  # noqa: E402
from schemas.models import ContentStrategy, FileEvent, InlineContent, Op  # noqa: E402
from schemas.registry import make_registry_client  # noqa: E402
from schemas.serde import EventSerializer  # noqa: E402

try:  # since issue 16: an inline file's Avro body written without the model
    from producers.prepare import Context  # noqa: E402
    from producers.prepare import body_writer as writer_for  # noqa: E402
except ImportError:  # before it (for the before-and-after figures of docs/performance.md)
    writer_for = None  # type: ignore[assignment]

LIMIT = 100 * 1024


def started(publisher: Publisher) -> Publisher:
    """The publisher connected (earlier Publishers connected in their constructor)."""
    start = getattr(publisher, "start", None)
    return start() if start is not None else publisher


def timed(repeat: int, files: int, stage: Callable[[], object]) -> tuple[float, float]:
    """(best, median) microseconds a file over ``repeat`` runs of ``stage``."""
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        stage()
        runs.append((time.perf_counter() - started) * 1e6 / files)
    return min(runs), statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--small", type=int, default=10_000, help="files in the synthetic tree")
    parser.add_argument("--repeat", type=int, default=7, help="runs of each stage")
    parser.add_argument("--tree", type=Path, help="an existing tree instead of a synthetic one")
    parser.add_argument("--workers", type=int, default=None, help="ingest --workers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="headrace-stages-") as tmp:
        root = args.tree or synthetic_tree(Path(tmp) / "tree", args.small, 0)
        measure(root, args.repeat, args.workers, Path(tmp))


def measure(root: Path, repeat: int, workers: int | None, tmp: Path) -> None:
    settings = load_settings()
    tag = uuid.uuid4().hex[:8]
    kafka = settings.kafka.model_copy(
        update={
            "topics": settings.kafka.topics.model_copy(
                update={
                    "file_events": f"bench.stages-{tag}.files",
                    "run_events": f"bench.stages-{tag}.runs",
                }
            )
        }
    )
    source = DirectorySource(root)
    candidates = list(source.candidates())
    n = len(candidates)
    now = datetime.now(UTC)
    datas: list[bytes] = []

    def read() -> None:
        datas.clear()
        for c in candidates:
            with c.open() as stream:
                datas.append(stream.read(LIMIT + 1))

    read()
    sums = [hashlib.sha256(d).hexdigest() for d in datas]

    def encodings() -> None:
        for d in datas:
            FilePolicy.by_content(d[:64], len(d))
            detect_encoding(d)

    encoded = [detect_encoding(d) for d in datas]

    def events() -> list[FileEvent]:
        return [
            FileEvent(
                project="bench",
                path=c.path,
                size=len(d),
                checksum=s,
                run_id="run",
                op=Op.UPSERT,
                producer_version=PRODUCER,
                event_time=now,
                content_strategy=ContentStrategy.INLINE,
                inline=InlineContent(data=d, encoding=e),
            )
            for c, d, s, e in zip(candidates, datas, sums, encoded, strict=True)
        ]

    built = events()
    with make_registry_client(settings.registry) as registry:
        serializer = EventSerializer(registry, EventType.FILE_EVENT)
        ctx = SerializationContext(kafka.topics.file_events, MessageField.VALUE)
        values = [serializer(e, ctx) for e in built]
        if writer_for is not None:  # since issue 16: the body written from the bytes
            write = writer_for(Context("bench", "run", PRODUCER, now, LIMIT))

            def bodies() -> list[bytes]:
                return [
                    write(c.path, s, d, e)
                    for c, d, s, e in zip(candidates, datas, sums, encoded, strict=True)
                ]

            stages_of_event: list[tuple[str, Callable[[], object]]] = [("event+avro", bodies)]
        else:  # the FileEvent model, then the serializer
            stages_of_event = [
                ("event", events),
                ("avro", lambda: [serializer(e, ctx) for e in built]),
            ]

        publisher = started(Publisher(kafka, registry))

        def produce() -> None:
            for e, v in zip(built, values, strict=True):
                publisher._produce(publisher.file_topic, f"{e.project}/{e.path}", v, e.path)  # noqa: SLF001
            publisher.flush()

        produce()  # warm: connections, the topic's leaders
        stages: list[tuple[str, Callable[[], object]]] = [
            ("walk", lambda: list(source.candidates())),
            ("read", read),
            ("hash", lambda: [hashlib.sha256(d).hexdigest() for d in datas]),
            ("encoding", encodings),
            *stages_of_event,
            ("produce", produce),
        ]
        total = 0.0
        print(f"{n:,} files of {root}, best (median) of {repeat} runs, us a file")
        for name, stage in stages:
            best, med = timed(repeat, n, stage)
            total += best
            print(f"  {name:<10} {best:7.1f} ({med:.1f})")
        print(f"  {'sum':<10} {total:7.1f}")
        publisher.close()
        os.environ["HEADRACE_INGEST__STATE_DIR"] = str(tmp / "runs")

        extra = {} if workers is None else {"workers": workers}
        options = IngestOptions(strategy=StrategyChoice.INLINE, **extra)  # type: ignore[arg-type]
        runs = []
        for _ in range(max(3, repeat // 2)):
            transactional_id = f"bench.stages-{uuid.uuid4().hex}"
            job_publisher = started(Publisher(kafka, registry, transactional_id=transactional_id))
            try:
                job = Ingest(source, options, uuid.uuid4().hex, "bench", job_publisher)
                runs.append(job.run().duration_s * 1e6 / n)
            finally:
                job_publisher.close()
        print(f"  {'ingest':<10} {min(runs):7.1f} ({statistics.median(runs):.1f})  a whole run")


if __name__ == "__main__":
    main()
