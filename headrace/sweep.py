"""``headrace sweep``: one source through the whole pipeline, ending in the proof.

The steps, in order: ingest the source; bring the archive, load, cache and verify
groups up to the end of the topics (each group runs here with
``--until-caught-up``, unless a deployment of it is running, found by its members:
then the sweep waits for that deployment's committed offsets instead); then
``verify run`` on the run. A step that fails does not stop the independent ones
after it; the report runs whatever happened, and says what is missing.

The sweep's progress is kept next to the run's state (``<run>/sweep.json``): a
sweep resumed with its run id runs the steps not done yet, and an unfinished
ingest resumes from its journal, so nothing is ingested twice.

This module and ``verify run --against-source`` are the places outside the CLI
that use both the producer and the consumers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import KafkaException
from confluent_kafka import TopicPartition as KafkaPartition
from confluent_kafka.admin import AdminClient

from consumers.groups import groups, run_group, topics_of
from consumers.verify.reconcile import verify_run
from consumers.verify.report import RunReport
from headrace.errors import HeadraceError
from headrace.kafka import answer, cluster_metadata, make_admin, make_consumer, watermarks
from headrace.settings import Settings
from producers.command import IngestRequest, run_ingest
from producers.ingest import Ingest, Summary
from producers.runs import RunStore, check_run_id, write_atomically

GROUP_STEPS = ("archive", "load", "cache", "verify")
STEPS = ("ingest", *GROUP_STEPS, "report")
Progress = Callable[[str, int, int], None]  # the step starting, steps done, steps in all


@dataclass
class StepResult:
    name: str
    status: str  # done, failed, skipped, done earlier
    seconds: float = 0.0
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "step": self.name,
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "detail": self.detail,
        }


@dataclass
class SweepResult:
    run_id: str
    steps: list[StepResult] = field(default_factory=list)
    ingest: Summary | None = None
    report: RunReport | None = None

    @property
    def ok(self) -> bool:
        return (
            all(s.status != "failed" for s in self.steps)
            and self.report is not None
            and self.report.ok
        )

    def next_steps(self) -> list[str]:
        """What to do about what went wrong, in words."""
        hints = []
        for step in self.steps:
            if step.status == "failed":
                hints.append(
                    f"fix the {step.name} step ({step.detail}), then"
                    f" `headrace sweep SOURCE --resume {self.run_id}`"
                )
        if self.report is not None and not self.report.ok:
            hints.append(
                f"`headrace verify run {self.run_id}` lists the discrepancies;"
                f" `headrace verify run {self.run_id} --repair` fixes what it can"
            )
        return hints

    def as_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "ok": self.ok,
            "steps": [s.as_json() for s in self.steps],
            "ingest": self.ingest.as_json() if self.ingest is not None else None,
            "report": self.report.as_json() if self.report is not None else None,
            "next": self.next_steps(),
        }


def sweep(
    settings: Settings,
    request: IngestRequest,
    *,
    skip: frozenset[str] = frozenset(),
    progress: Progress = lambda _step, _done, _all: None,
    runner: Callable[[Ingest], Summary] = Ingest.run,
    deployed_timeout_s: float = 600.0,
) -> SweepResult:
    """Run the steps of one sweep (or the ones a resumed sweep has left)."""
    run_id = check_run_id(request.run_id)
    state = _State(RunStore(settings.ingest.state_dir).root / run_id / "sweep.json")
    result = SweepResult(run_id)
    wanted = [s for s in STEPS if s not in skip]
    for done, name in enumerate(wanted):
        progress(name, done, len(wanted))
        if name != "report" and state.done(name):
            result.steps.append(StepResult(name, "done earlier"))
            continue
        started = time.perf_counter()
        try:
            detail = _step(settings, name, request, result, runner, deployed_timeout_s)
        except HeadraceError as exc:
            result.steps.append(StepResult(name, "failed", time.perf_counter() - started, str(exc)))
            continue
        result.steps.append(StepResult(name, "done", time.perf_counter() - started, detail))
        if name != "report":
            state.mark(name)
    for name in STEPS:
        if name in skip:
            result.steps.append(StepResult(name, "skipped"))
    result.steps.sort(key=lambda s: STEPS.index(s.name))
    progress("", len(wanted), len(wanted))
    return result


def _step(
    settings: Settings,
    name: str,
    request: IngestRequest,
    result: SweepResult,
    runner: Callable[[Ingest], Summary],
    deployed_timeout_s: float,
) -> str:
    if name == "ingest":
        summary = run_ingest(settings, request, runner)
        result.ingest = summary
        if not summary.ok:
            raise HeadraceError(f"{len(summary.failed)} files were not published")
        if summary.unavailable:
            raise HeadraceError(
                f"run incomplete: {len(summary.unavailable)} files skipped, the object store"
                " was unavailable"
            )
        c = summary.counts
        return (
            f"{c.files} file events ({c.inline} inline, {c.object_storage} object storage,"
            f" {c.git_reference} git references, {c.deleted} deletes)"
        )
    if name == "report":
        report = verify_run(settings, request.run_id)
        result.report = report
        if report.ok:
            return "every side agrees"
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(report.by_kind().items()))
        return f"{len(report.discrepancies)} discrepancies ({kinds})"
    return catch_up(settings, name, deployed_timeout_s)


def catch_up(settings: Settings, name: str, timeout_s: float = 600.0) -> str:
    """Run the group to the end of its topics here, or wait for its deployment."""
    group_id = settings.consumer.group_prefix + name
    admin = make_admin(settings.kafka)
    cluster_metadata(admin, settings.kafka)  # no broker: one line, not a future's timeout
    if _members(admin, group_id) and _wait_committed(
        settings, admin, group_id, topics_of(groups()[name]), timeout_s
    ):
        return f"caught up by its running deployment ({group_id})"
    stats = run_group(settings, name, until_caught_up=True, metrics_port=0)
    return f"{stats.processed} records written, {stats.dead_lettered} dead-lettered"


def _members(admin: AdminClient, group_id: str) -> int:
    """How many consumers are in the group now (0 for none, or no such group)."""
    try:
        described = answer(admin.describe_consumer_groups([group_id])[group_id], 10)
    except KafkaException:
        return 0
    return len(described.members)


def _wait_committed(
    settings: Settings,
    admin: AdminClient,
    group_id: str,
    fields: tuple[str, ...],
    timeout_s: float,
) -> bool:
    """Until the group's committed offsets reach the end offsets seen now: True; False
    if the group empties first (its members left, or a dead one's session expired)."""
    topics = [getattr(settings.kafka.topics, f) for f in fields]
    # A consumer of the group's own id that never joins it reads its committed offsets:
    # librdkafka's admin ListConsumerGroupOffsets can crash the process (SIGSEGV in
    # rd_kafka_cgrp_op, seen by `headrace chaos`) when a restarting broker answers it.
    probe = make_consumer(settings.kafka, group_id)
    try:
        ends: dict[tuple[str, int], int] = {}
        for topic in topics:
            for p in cluster_metadata(probe, settings.kafka, topic).topics[topic].partitions:
                _low, high = watermarks(probe, KafkaPartition(topic, p))
                ends[(topic, p)] = high
        deadline = time.monotonic() + timeout_s
        while True:
            listed = probe.committed([KafkaPartition(t, p) for t, p in ends], timeout=10)
            committed = {(tp.topic, tp.partition): tp.offset for tp in listed}
            behind = [tp for tp, end in ends.items() if committed.get(tp, -1) < end and end > 0]
            if not behind:
                return True
            if not _members(admin, group_id):
                return False
            if time.monotonic() > deadline:
                raise HeadraceError(
                    f"{group_id} is running but did not catch up within {timeout_s:.0f}s"
                    f" ({len(behind)} partitions behind)"
                )
            time.sleep(1.0)  # a deployment commits on its own schedule: poll, bounded above
    finally:
        probe.close()


class _State:
    """The steps a sweep of this run finished, kept beside the run's state."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, Any]:
        try:
            data = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {"done": []}
        return data if isinstance(data, dict) else {"done": []}

    def done(self, step: str) -> bool:
        return step in self._read().get("done", [])

    def mark(self, step: str) -> None:
        data = self._read()
        data["done"] = sorted({*data.get("done", []), step}, key=STEPS.index)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, orjson.dumps(data))
