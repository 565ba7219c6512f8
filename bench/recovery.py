"""Benchmark: how long a consumer group stands still after its process is SIGKILLed.

Runs ``headrace consume archive`` on fresh topics until it archives, SIGKILLs it and
starts it again at once (same host, so the same instance slot), publishes one record,
and times from the kill until the restarted process has its partitions (its
``assigned`` log line) and until that record is in the archive. Each membership runs
in the same run against the same broker:

- ``static``: the defaults, group.instance.id and consumer.session_timeout_s (10 s);
- ``dynamic``: no group.instance.id, the same session;
- ``baseline``: no group.instance.id and librdkafka's 45 s session (headrace before).

Prints seconds per trial and the median's ratio to the baseline's.

    .venv/bin/python bench/recovery.py --trials 3
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from confluent_kafka.serialization import MessageField, SerializationContext

from headrace.kafka import ensure_topics, make_admin, make_producer
from headrace.settings import load_settings
from schemas.catalog import EventType
from schemas.models import FileEvent
from schemas.registry import make_registry_client
from schemas.serde import EventSerializer
from storage.archive import read


class Group:
    """One ``headrace consume archive`` process; its stderr lines are kept with the time
    each arrived."""

    def __init__(self, env: dict[str, str]) -> None:
        self.lines: list[tuple[float, str]] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "headrace", "consume", "archive"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None  # noqa: S101 - piped above
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip()))

    def first(self, text: str) -> float | None:
        return next((t for t, line in list(self.lines) if text in line), None)

    def stop(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)
        self._reader.join(timeout=10)


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def trial(
    env: dict[str, str], publish: Callable[[str], None], root: Path
) -> tuple[float, float, bool]:
    """Seconds from the kill to the restarted process's assignment and to its first
    archived record, and whether it said what it waited for."""
    tag = uuid.uuid4().hex[:6]
    publish(f"{tag}-before")
    first = Group(env)
    try:
        wait_for(lambda: archived(root, f"{tag}-before"), 120, "the first process archiving")
    finally:
        first.stop(signal.SIGKILL)
    killed = time.monotonic()
    second = Group(env)
    try:
        publish(f"{tag}-after")
        wait_for(lambda: archived(root, f"{tag}-after"), 180, "the restarted process")
        done = time.monotonic()
        assigned = second.first("assigned ") or done
        said = second.first("waiting") is not None
    finally:
        second.stop(signal.SIGTERM)
    return assigned - killed, done - killed, said


def archived(root: Path, path: str) -> bool:
    return root.exists() and any(line.event["path"] == path for line in read(root))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--baseline-session-s", type=float, default=45.0)
    args = parser.parse_args()
    settings = load_settings()
    tag = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix="headrace-recovery-"))
    topics = {
        "FILE_EVENTS": f"bench.recovery-{tag}.files",
        "RUN_EVENTS": f"bench.recovery-{tag}.runs",
        "VERIFICATIONS": f"bench.recovery-{tag}.verifications",
        "DEAD_LETTER": f"bench.recovery-{tag}.dlq",
    }
    ensure_topics(
        make_admin(settings.kafka),
        list(topics.values()),
        partitions=3,
        replication_factor=settings.kafka.replication_factor,
    )
    base = {
        **os.environ,
        **{f"HEADRACE_KAFKA__TOPICS__{k}": v for k, v in topics.items()},
        "HEADRACE_KAFKA__PARTITIONS": "3",
        "HEADRACE_CONSUMER__METRICS_PORT": "0",
        "HEADRACE_CONSUMER__INSTANCES_DIR": str(work / "instances"),
        # A segment per record, published within a poll: archived = consumed.
        "HEADRACE_ARCHIVE__MAX_SEGMENT_RECORDS": "1",
        "HEADRACE_ARCHIVE__MAX_SEGMENT_AGE_S": "0.2",
    }
    memberships = {
        "static": {},
        "dynamic": {"HEADRACE_CONSUMER__STATIC_MEMBERSHIP": "false"},
        "baseline": {
            "HEADRACE_CONSUMER__STATIC_MEMBERSHIP": "false",
            "HEADRACE_CONSUMER__SESSION_TIMEOUT_S": str(args.baseline_session_s),
        },
    }
    client = make_registry_client(settings.registry)
    serialize = EventSerializer(client, EventType.FILE_EVENT)
    ctx = SerializationContext(topics["FILE_EVENTS"], MessageField.VALUE)
    producer = make_producer(settings.kafka)

    def publish(path: str) -> None:
        event = FileEvent(project="bench", path=path, size=1, checksum="0" * 64)
        producer.produce(topics["FILE_EVENTS"], key=path.encode(), value=serialize(event, ctx))
        if producer.flush(30):
            raise SystemExit("a record was not delivered")

    print(f"SIGKILL of `headrace consume archive` (3 partitions), {args.trials} trials each")
    medians: dict[str, float] = {}
    for name, extra in memberships.items():
        # Each membership has its own group (and archive): no dead member of another.
        env = {
            **base,
            **extra,
            "HEADRACE_CONSUMER__GROUP_PREFIX": f"bench-{tag}-{name}.",
            "HEADRACE_ARCHIVE__ROOT": str(work / name / "archive"),
        }
        root = work / name / "archive"
        runs = [trial(env, publish, root) for _ in range(args.trials)]
        medians[name] = statistics.median(r[1] for r in runs)
        figures = ", ".join(f"{a:.1f}/{c:.1f}" for a, c, _ in runs)
        said = sum(s for _, _, s in runs)
        print(
            f"{name:9} kill to assigned/consuming: {figures} s"
            f" (median {medians[name]:.1f} s; wait announced in {said}/{len(runs)})"
        )
    for name, median in medians.items():
        if name != "baseline":
            print(f"{name:9} {median / medians['baseline']:.2f}x baseline")
    print("baseline  is the baseline")
    client.close()


if __name__ == "__main__":
    main()
