"""Benchmark: ``headrace verify run`` reconciling one run, against a bare archive read.

Publishes N small inline FileEvents of one run (real sha256 of the inline bytes,
the event id the model derives) and the run's RunStarted and RunCompleted (counts
and ``run_digest`` of the (path, sha256) list) to fresh topics, with a temporary
archive, SQLite database and verify instances directory (``HEADRACE_*``
variables), then in the same run measures:

- the archive, load and verify groups, each ``headrace consume GROUP
  --until-caught-up`` in a child process (wall time, startup included): the
  verify group's events/s against the archive group's on the same topic;
- ``headrace verify run RUN_ID --json`` in a child process: seconds, events/s,
  peak RSS (from the kernel, via wait4: the largest of the process and the children it
  waited for), the peak of the process tree together (its resident memory and its
  children's, sampled every 50 ms from /proc), and that the report is ok (exit 0);
- baseline: a bare read of the same archive topic with
  ``storage.archive.reader.read`` (in this process), so the ratio shows what the
  reconcile costs on top of reading the archive once.

    .venv/bin/python bench/verify.py                   # 100,000 events
    .venv/bin/python bench/verify.py --events 1000000  # the issue's target size
    .venv/bin/python bench/verify.py --small           # a quick check: 2,000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

# bench/git.py is in this folder: it must not shadow GitPython's `git` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from confluent_kafka.serialization import MessageField, SerializationContext  # noqa: E402

from headrace.kafka import ensure_topics, make_admin, make_producer  # noqa: E402
from headrace.settings import Settings, load_settings  # noqa: E402
from schemas.catalog import EventType  # noqa: E402
from schemas.models import (  # noqa: E402
    ContentStrategy,
    FileEvent,
    InlineContent,
    RunCounts,
    RunEvent,
    RunEventKind,
    TextEncoding,
    run_digest,
)
from schemas.registry import make_registry_client  # noqa: E402
from schemas.serde import EventSerializer  # noqa: E402
from storage.archive.reader import read  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HEADRACE = [sys.executable, "-m", "headrace"]
T0 = datetime(2026, 12, 1, tzinfo=UTC)
PROJECT = "bench"
SOURCE = Path(__file__).read_bytes()


def fresh_env(tag: str, tmp: Path) -> dict[str, str]:
    """The environment of every child: fresh topics, groups, archive, database."""
    env = dict(os.environ)
    env["HEADRACE_KAFKA__TOPICS__FILE_EVENTS"] = f"bench.verify-{tag}.files"
    env["HEADRACE_KAFKA__TOPICS__RUN_EVENTS"] = f"bench.verify-{tag}.runs"
    env["HEADRACE_KAFKA__TOPICS__VERIFICATIONS"] = f"bench.verify-{tag}.verifications"
    env["HEADRACE_KAFKA__TOPICS__DEAD_LETTER"] = f"bench.verify-{tag}.dlq"
    env["HEADRACE_CONSUMER__GROUP_PREFIX"] = f"bench-verify-{tag}."
    env["HEADRACE_CONSUMER__METRICS_PORT"] = "0"
    env["HEADRACE_ARCHIVE__BACKEND"] = "local"
    env["HEADRACE_ARCHIVE__ROOT"] = str(tmp / "archive")
    env["HEADRACE_ARCHIVE__STAGING"] = str(tmp / "staging")
    env["HEADRACE_LOAD__BACKEND"] = "sqlite"
    env["HEADRACE_LOAD__SQLITE_PATH"] = str(tmp / "db" / "headrace.sqlite3")
    env["HEADRACE_VERIFY__INSTANCES_DIR"] = str(tmp / "instances")
    env["HEADRACE_VERIFY__REPAIRS_DIR"] = str(tmp / "repairs")
    env["PYTHONPATH"] = str(ROOT)
    return env


def publish(settings: Settings, n: int, run_id: str) -> None:
    """RunStarted, ``n`` inline FileEvents of the run, RunCompleted with counts and digest."""
    topics = settings.kafka.topics
    with make_registry_client(settings.registry) as client:
        files = EventSerializer(client, EventType.FILE_EVENT)
        runs = EventSerializer(client, EventType.RUN_EVENT)
        files_ctx = SerializationContext(topics.file_events, MessageField.VALUE)
        runs_ctx = SerializationContext(topics.run_events, MessageField.VALUE)
        producer = make_producer(settings.kafka)

        def produce(topic: str, key: bytes, value: bytes) -> None:
            while True:
                try:
                    producer.produce(topic, key=key, value=value)
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)

        def run_event(kind: RunEventKind, **extra: object) -> RunEvent:
            return RunEvent(
                run_id=run_id,
                kind=kind,
                project=PROJECT,
                source="bench:synthetic",
                event_time=T0,
                **extra,
            )

        started = run_event(RunEventKind.STARTED)
        produce(topics.run_events, run_id.encode(), runs(started, runs_ctx))
        listed: list[tuple[str, str]] = []
        total = 0
        for i in range(n):
            start = (i * 97) % (len(SOURCE) - 400)
            data = SOURCE[start : start + 100 + i % 300]
            checksum = hashlib.sha256(data).hexdigest()
            event = FileEvent(
                project=PROJECT,
                path=f"src/m{i:07d}.py",
                size=len(data),
                checksum=checksum,
                run_id=run_id,
                content_strategy=ContentStrategy.INLINE,
                inline=InlineContent(data=data, encoding=TextEncoding.UTF_8),
                event_time=T0 + timedelta(milliseconds=i),
            )
            listed.append((event.path, checksum))
            total += len(data)
            key = f"{PROJECT}/{event.path}".encode()
            produce(topics.file_events, key, files(event, files_ctx))
        completed = run_event(
            RunEventKind.COMPLETED,
            counts=RunCounts(files=n, bytes=total, inline=n),
            digest=run_digest(listed),
        )
        produce(topics.run_events, run_id.encode(), runs(completed, runs_ctx))
        if producer.flush(120):
            raise SystemExit("not every event was delivered")


def child(env: dict[str, str], *args: str) -> tuple[int, float, float, str, float]:
    """(exit status, wall seconds, peak RSS MiB, stdout, peak RSS MiB of the process tree
    together, sampled) of ``headrace ARGS``."""
    argv = [*HEADRACE, "--log-level", "WARNING", *args]
    tree = 0.0
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        pid = os.posix_spawn(
            argv[0], argv, env, file_actions=[(os.POSIX_SPAWN_DUP2, out.fileno(), 1)]
        )
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                break
            tree = max(tree, tree_rss_mib(pid))
            time.sleep(0.05)
        wall = time.perf_counter() - started
        out.seek(0)
        text = out.read().decode()
    return os.waitstatus_to_exitcode(status), wall, usage.ru_maxrss / 1024, text, tree


def tree_rss_mib(pid: int) -> float:
    """The resident memory of a process and of its descendants now, in MiB (from /proc)."""
    kib, todo = 0, [pid]
    while todo:
        proc = Path("/proc") / str(todo.pop())
        try:
            status = (proc / "status").read_text()
            kib += next((int(x.split()[1]) for x in status.splitlines() if x[:6] == "VmRSS:"), 0)
            for task in (proc / "task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone meanwhile
    return kib / 1024


def bare_read(root: Path, topic: str) -> tuple[float, int]:
    """Seconds to stream every archived line of ``topic``, and how many."""
    started = time.perf_counter()
    lines = sum(1 for _ in read(root, topic=topic))
    return time.perf_counter() - started, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--small", action="store_true", help="a quick check: 2,000 events")
    args = parser.parse_args()
    n = 2_000 if args.small else args.events
    tag = uuid.uuid4().hex[:8]
    run_id = f"bench-verify-{tag}"
    with tempfile.TemporaryDirectory(prefix="headrace-bench-verify-") as tmp_dir:
        tmp = Path(tmp_dir)
        env = fresh_env(tag, tmp)
        os.environ.update(env)  # this process's settings: the same topics
        settings = load_settings()
        topics = settings.kafka.topics
        names = [topics.file_events, topics.run_events, topics.verifications, topics.dead_letter]
        admin = make_admin(settings.kafka)
        ensure_topics(
            admin,
            names,
            partitions=settings.kafka.partitions,
            replication_factor=settings.kafka.replication_factor,
        )
        try:
            started = time.perf_counter()
            publish(settings, n, run_id)
            print(
                f"published {n:,} inline FileEvents of run {run_id} (+ RunStarted, RunCompleted)"
                f" to {settings.kafka.partitions} partitions in"
                f" {time.perf_counter() - started:.1f}s"
            )
            _, startup, _, _, _ = child(env, "--help")  # interpreter and imports: a floor
            print(f"  headrace --help (startup)  {startup:6.2f}s")
            groups: dict[str, float] = {}
            for group in ("archive", "load", "verify"):
                code, wall, rss, _, _ = child(env, "consume", group, "--until-caught-up")
                if code != 0:
                    raise SystemExit(f"headrace consume {group} exited with {code}")
                groups[group] = wall
                print(
                    f"  consume {group:<8} {n / wall:>10,.0f} events/s  {wall:6.2f}s"
                    f"  peak RSS {rss:6.0f} MiB  (wall, startup included)"
                )
            ratio = groups["archive"] / groups["verify"]
            print(f"  verify group / archive group on the same topic: {ratio:4.2f}x")
            code, wall, rss, text, tree = child(env, "verify", "run", run_id, "--json")
            report = json.loads(text) if text.strip().startswith("{") else {}
            if code != 0:
                print(text[:2000])
                raise SystemExit(f"headrace verify run exited with {code}: the report is not ok")
            base_s, lines = bare_read(settings.archive.root, topics.file_events)
            if lines != n:
                raise SystemExit(f"the archive holds {lines} of {n} file events")
        finally:
            admin.delete_topics(names)
    ok = report.get("ok", "?")
    print(f"verify run {run_id} --json: exit 0, ok={ok}")
    print(f"  {'N':<26} {n:>10,}")
    print(
        f"  {'verify run':<26} {n / wall:>10,.0f} events/s  {wall:6.2f}s  peak RSS {rss:.0f} MiB"
        f" (largest process), {tree:.0f} MiB (the process and its children together)"
    )
    print(
        f"  {'bare archive read':<26} {n / base_s:>10,.0f} events/s  {base_s:6.2f}s  baseline"
        f"  (verify run: {wall / base_s:.1f}x its time)"
    )
    net = max(wall - startup, 1e-9)
    if n >= 1_000_000:
        return
    print(
        f"  1,000,000 events by linear extrapolation (an extrapolation, not a measurement):"
        f" verify run ~{startup + net * 1_000_000 / n:.0f}s"
        " (target: under 60 s, bounded memory)"
    )


if __name__ == "__main__":
    main()
