"""Benchmark: what the operational history costs the hot path and the archive group.

In one run:

- ``Recorder.record()`` against a no-op method of the same signature, each called in
  loops of 10,000 (the recorder's flusher running, writing to SQLite every 2 s): the
  median time per call of each, and the difference;
- the archive group draining one topic of N FileEvents (default 100,000; as
  bench/archive.py does) with the history on (a Recorder per batch into SQLite) and
  off, in turns (off, on, off, on, ...), each drain a fresh group: events/s per drain,
  the median of each, and the ratio.

    .venv/bin/python bench/history.py                  # full figures
    .venv/bin/python bench/history.py --events 3000 --rounds 1 --calls 200   # a quick check
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from archive import _TimedRuntime, publish  # bench/archive.py, beside this file

from consumers.archive.sink import ArchiveSink
from consumers.dlq import DeadLetterQueue
from consumers.metrics import Metrics
from headrace.history.recorder import Recorder
from headrace.history.sqlite import SqliteHistory
from headrace.kafka import ensure_topics, make_admin
from headrace.settings import load_settings
from schemas.models import FileEvent
from schemas.registry import make_registry_client
from schemas.serde import EventDeserializer
from storage.archive import Archive

LOOP = 10_000


class NoOp:
    def record(self, metric: str, value: float) -> None:
        pass


def per_call_ns(call: object, repeats: int, drain: Recorder | None) -> list[float]:
    """ns per call of ``call("processed", 1.0)``, one figure per loop of LOOP calls."""
    figures = []
    for _ in range(repeats):
        if drain is not None:
            drain.flush()  # outside the timing: the queue never fills (nothing dropped)
        record = call.record  # type: ignore[attr-defined]
        started = time.perf_counter_ns()
        for _ in range(LOOP):
            record("processed", 1.0)
        figures.append((time.perf_counter_ns() - started) / LOOP)
    return figures


def hot_path(repeats: int, tmp: Path) -> float:
    recorder = Recorder(SqliteHistory(tmp / "hot.sqlite3"), "bench", flush_interval_s=2.0)
    recorder.start()
    noop = NoOp()
    ours, base = [], []
    for _ in range(repeats):  # in turns, so drift touches both alike
        base += per_call_ns(noop, 1, None)
        ours += per_call_ns(recorder, 1, recorder)
    recorder.close()
    rec, nop = statistics.median(ours), statistics.median(base)
    print(
        f"record(): {rec:6.0f} ns median per call; no-op method: {nop:4.0f} ns;"
        f" added {rec - nop:4.0f} ns ({repeats} loops of {LOOP:,}, {recorder.dropped} dropped)"
    )
    return rec


def drain(topic: str, root: Path, history: Path | None) -> tuple[float, float, int]:
    """The archive group draining ``topic``: events/s from the first records in hand,
    the seconds that took, and the samples the history wrote."""
    settings = load_settings()
    group = f"bench-history-{uuid.uuid4().hex[:8]}"
    kafka = settings.kafka.model_copy(
        update={"topics": settings.kafka.topics.model_copy(update={"dead_letter": f"{topic}.dlq"})}
    )
    recorder = None
    if history is not None:
        recorder = Recorder(SqliteHistory(history), group, flush_interval_s=2.0).start()
        recorder.record("process.start", 1)
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
            poll_timeout_s=0.05,
            history=recorder,
        )
        stats = runtime.run()
        finished = time.monotonic()
    if recorder is not None:
        recorder.close()
    seconds = finished - (runtime.first_records or finished)
    return stats.processed / seconds, seconds, recorder.flushed if recorder is not None else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3, help="drains with and without each")
    parser.add_argument("--calls", type=int, default=2000, help="loops of 10,000 record() calls")
    args = parser.parse_args()
    settings = load_settings()
    with tempfile.TemporaryDirectory(prefix="headrace-bench-history-") as name:
        tmp = Path(name)
        record_ns = hot_path(args.calls, tmp)
        topic = f"bench.history-{uuid.uuid4().hex[:8]}"
        ensure_topics(
            make_admin(settings.kafka),
            [topic],
            partitions=settings.kafka.partitions,
            replication_factor=settings.kafka.replication_factor,
        )
        publish(args.events, topic)
        rates: dict[str, list[float]] = {"off": [], "on": []}
        for i in range(args.rounds):
            for mode in ("off", "on"):
                root = tmp / f"archive-{mode}-{i}"
                history = tmp / "history.sqlite3" if mode == "on" else None
                rate, seconds, samples = drain(topic, root, history)
                rates[mode].append(rate)
                cost = (
                    f"  {samples} samples: {samples * record_ns / 1e6:.2f} ms of record() at"
                    f" its median, {100 * samples * record_ns / 1e9 / seconds:.4f}% of the drain"
                    if history is not None
                    else ""
                )
                print(f"  archive group, history {mode:<3} {rate:>10,.0f} events/s{cost}")
        off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
        print(
            f"archive group, {args.events:,} events, median of {args.rounds}: history off"
            f" {off:,.0f} events/s, on {on:,.0f} events/s: {on / off:.3f}x"
            f" ({100 * (off - on) / off:+.1f}% slower with history)"
        )
        make_admin(settings.kafka).delete_topics([topic, f"{topic}.dlq"])


if __name__ == "__main__":
    main()
