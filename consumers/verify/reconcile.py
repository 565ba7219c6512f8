"""``verify run``: one run's account checked against every place its files went.

The sides, each read once:

- the run's RunCompleted event (the newest, from the archive, else from Kafka);
- published: the run's file events still in the file-events topic (read_committed);
  when the topic no longer starts at offset 0, a file absent there proves nothing,
  and the report says so instead of counting it;
- archived: the run's file events in the archive;
- loaded: the project's rows in the database;
- verified: the verifications of the run's events (archive and topic);
- source (``against_source``): the files the source offers now, hashed by a dry
  run of the ingest itself, so the same rules decide what is a file of the run.

Then, per file: every archived event is in Kafka and the reverse, once each; every
upsert has its row (the same event, or a newer version of the file), with the
same sha256 and size; every upsert has a verification and the newest is OK; the
counts per strategy agree across the sides and the archive's digest is the run's.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaPartition

from consumers.verify.report import STRATEGIES, Kind, RunReport, empty_counts
from headrace.errors import ConsumeError, HeadraceError
from headrace.kafka import make_consumer
from headrace.settings import Settings
from schemas.models import FileEvent, RunEvent, VerificationEvent, run_digest
from schemas.registry import make_registry_client
from schemas.serde import EventDeserializer
from storage.archive.backend import open_backend
from storage.archive.reader import read

Progress = Callable[[str], None]
Outcomes = dict[str, list[tuple[int, str, str | None]]]  # event id: (time, status, detail)


@dataclass(frozen=True)
class Version:
    """One file event of the run, as a side holds it."""

    event_id: str
    op: str  # UPSERT or DELETE
    sha256: str
    size: int
    strategy: str  # inline, object_storage, git_reference; "" for a delete
    event_time_ms: int


def _millis(when: Any) -> int:
    """An event time (a datetime, or epoch milliseconds) in milliseconds."""
    if isinstance(when, datetime):
        return int(when.timestamp() * 1000)
    return int(when or 0)


def _version(event: dict[str, Any]) -> Version:
    strategy = event.get("content_strategy")
    op = str(event.get("op") or "UPSERT")
    millis = _millis(event.get("event_time"))
    return Version(
        event_id=str(event.get("event_id") or ""),
        op=op,
        sha256=str(event.get("checksum") or ""),
        size=int(event.get("size") or 0),
        strategy="" if op == "DELETE" else str(strategy or "INLINE").lower(),
        event_time_ms=millis,
    )


@dataclass
class Sides:
    run: dict[str, Any] | None = None  # the newest RunCompleted event
    started: dict[str, Any] | None = None
    published: dict[str, list[Version]] | None = None  # None: the topic was not read whole
    archived: dict[str, list[Version]] | None = None
    verified: Outcomes | None = None  # event id: outcomes
    project: str | None = None  # of the run's file events, when no run event says


def verify_run(
    settings: Settings,
    run_id: str,
    *,
    against_source: bool = False,
    progress: Progress = lambda _step: None,
) -> RunReport:
    """The report of one run: every side read, every discrepancy named."""
    report = RunReport(run_id)
    sides = Sides()
    progress("reading the archive")
    _read_archive(settings, run_id, sides)
    progress("reading Kafka")
    _read_kafka(settings, run_id, sides, report)
    run = sides.run or sides.started
    if run is None and not sides.archived and not sides.published:
        raise HeadraceError(f"no run {run_id} in the archive or in Kafka")
    if run is not None:
        report.project, report.source = run["project"], run["source"]
        report.commit = run.get("commit")
    else:
        report.project = sides.project
        report.notes.append(f"no RunStarted or RunCompleted event of run {run_id} found")
    _check_manifest(sides, report)
    files = sides.archived or {}
    _check_published(sides, report)
    if report.project is not None:
        progress("reading the database")
        _check_database(settings, files, report)
    _check_verified(sides, files, report)
    if against_source:
        progress("hashing the source")
        _check_source(settings, files, report)
    return report


# --- reading ---------------------------------------------------------------------------


def _read_archive(settings: Settings, run_id: str, sides: Sides) -> None:
    topics = settings.kafka.topics
    backend = open_backend(settings.archive, settings.object_store)

    def of_run(event: dict[str, Any]) -> bool:
        return event.get("run_id") == run_id

    archived: dict[str, list[Version]] = {}
    if topics.file_events in backend.topics():
        for line in read(backend, topic=topics.file_events, predicate=of_run):
            archived.setdefault(line.event["path"], []).append(_version(line.event))
            sides.project = sides.project or line.event["project"]
    sides.archived = archived
    if topics.run_events in backend.topics():
        for line in read(backend, topic=topics.run_events, predicate=of_run):
            _run_event(line.event, sides)
    verified: Outcomes = {}
    if topics.verifications in backend.topics():
        for line in read(backend, topic=topics.verifications, predicate=of_run):
            _verification(line.event, verified)
    sides.verified = verified


def _run_event(event: dict[str, Any], sides: Sides) -> None:
    if str(event.get("kind")) == "COMPLETED":
        sides.run = event  # in offset order: the newest wins
    elif sides.started is None:
        sides.started = event


def _verification(event: dict[str, Any], into: Outcomes) -> None:
    millis = _millis(event.get("verified_at"))
    outcome = (millis, str(event["status"]), event.get("detail"))
    into.setdefault(str(event["event_id"]), []).append(outcome)


def _read_kafka(settings: Settings, run_id: str, sides: Sides, report: RunReport) -> None:
    """The run's events still in Kafka: file events (if the topic is whole), its run
    events if the archive had none, verifications the archive does not hold yet."""
    topics = settings.kafka.topics
    with make_registry_client(settings.registry) as client:
        files = EventDeserializer(client, FileEvent)
        runs = EventDeserializer(client, RunEvent)
        checks = EventDeserializer(client, VerificationEvent)
        published: dict[str, list[Version]] = {}
        whole = True
        for event, from_start in _topic(settings, topics.file_events, files.decode):
            whole &= from_start
            if event is not None and event.get("run_id") == run_id:
                published.setdefault(event["path"], []).append(_version(event))
                sides.project = sides.project or event["project"]
        if whole:
            sides.published = published
        else:
            report.notes.append(
                f"{topics.file_events} no longer starts at offset 0: what Kafka published"
                " is checked against the run's counts only"
            )
            sides.published = None
            report.counts["published"] = _counts(published)
        if sides.run is None:
            for event, _whole in _topic(settings, topics.run_events, runs.decode):
                if event is not None and event.get("run_id") == run_id:
                    _run_event(event, sides)
        verified = sides.verified if sides.verified is not None else {}
        seen = {(e, o[0]) for e, outcomes in verified.items() for o in outcomes}
        for event, _whole in _topic(settings, topics.verifications, checks.decode):
            if event is None or event.get("run_id") != run_id:
                continue
            fresh: Outcomes = {}
            _verification(event, fresh)
            for event_id, outcomes in fresh.items():
                for outcome in outcomes:
                    if (event_id, outcome[0]) not in seen:
                        verified.setdefault(event_id, []).append(outcome)
        sides.verified = verified


def _topic(
    settings: Settings,
    topic: str,
    decode: Callable[[bytes | None], dict[str, Any]],
    timeout_s: float = 60.0,
) -> Iterator[tuple[dict[str, Any] | None, bool]]:
    """Every committed record of ``topic`` up to the end offsets seen now, decoded (None
    for one that does not decode), with whether its partition still starts at 0."""
    consumer = make_consumer(settings.kafka, f"headrace-verify-read-{uuid.uuid4().hex[:12]}")
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        except KafkaException as exc:
            raise ConsumeError(f"cannot read {topic}: {exc.args[0].str()}") from None
        if metadata.error is not None:
            return  # no such topic: nothing published there
        partitions = list(metadata.partitions)
        ends, starts = {}, {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(KafkaPartition(topic, p), timeout=10)
            starts[p], ends[p] = low, high
        consumer.assign([KafkaPartition(topic, p, 0) for p in partitions])
        position = dict.fromkeys(partitions, 0)
        deadline = time.monotonic() + timeout_s
        while any(position[p] < ends[p] for p in partitions):
            if time.monotonic() > deadline:
                raise ConsumeError(f"{topic}: not read to its end within {timeout_s:.0f}s")
            msg = consumer.poll(0.5)
            if msg is None:  # transaction markers take offsets without records
                for tp in consumer.position([KafkaPartition(topic, p) for p in partitions]):
                    position[tp.partition] = max(position[tp.partition], tp.offset)
                continue
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:  # noqa: SLF001 - librdkafka's
                    continue
                raise ConsumeError(f"{topic}: {error.str()}")
            part = msg.partition() or 0
            position[part] = (msg.offset() or 0) + 1
            try:
                event: dict[str, Any] | None = decode(msg.value())
            except HeadraceError:
                event = None  # the dead-letter topic's business, not the run's
            yield event, starts[part] == 0
    finally:
        consumer.close()


# --- checking --------------------------------------------------------------------------


def _counts(files: dict[str, list[Version]]) -> dict[str, int]:
    counts = empty_counts()
    for versions in files.values():
        for v in versions[:1]:
            counts["files"] += 1
            counts["deleted" if v.op == "DELETE" else v.strategy] += 1
    return counts


def _check_manifest(sides: Sides, report: RunReport) -> None:
    archived = sides.archived or {}
    report.counts["archived"] = _counts(archived)
    upserts = [(p, vs[0].sha256) for p, vs in archived.items() if vs[0].op == "UPSERT"]
    report.digest["archived"] = run_digest(upserts)
    run = sides.run
    if run is None:
        report.add(
            Kind.RUN_INCOMPLETE, "manifest", None, "no RunCompleted event: the run did not finish"
        )
        return
    report.completed = True
    manifest = run.get("counts") or {}
    report.counts["manifest"] = {k: int(manifest.get(k, 0)) for k in empty_counts()}
    report.skipped = {str(k).lower(): int(v) for k, v in (run.get("skip_counts") or {}).items()}
    report.digest["manifest"] = run.get("digest")
    if report.digest["manifest"] != report.digest["archived"]:
        report.add(
            Kind.DIGEST_MISMATCH,
            "archived",
            None,
            f"the archive's (path, sha256) list hashes to {report.digest['archived']},"
            f" the run says {report.digest['manifest']}",
        )
    _compare_counts(report, "archived")


def _compare_counts(report: RunReport, side: str) -> None:
    manifest, found = report.counts.get("manifest"), report.counts.get(side)
    if manifest is None or found is None:
        return
    for key in (*STRATEGIES, "deleted", "files"):
        if manifest[key] != found[key]:
            report.add(
                Kind.COUNT_MISMATCH,
                side,
                None,
                f"{key}: {found[key]}, the run says {manifest[key]}",
            )


def _check_published(sides: Sides, report: RunReport) -> None:
    archived = sides.archived or {}
    for path, versions in sorted(archived.items()):
        ids = Counter(v.event_id for v in versions)
        for event_id, n in ids.items():
            if n > 1:
                report.add(
                    Kind.DUPLICATED, "archived", path, f"event {event_id} archived {n} times"
                )
    published = sides.published
    if published is None:
        _compare_counts(report, "published")
        return
    report.counts["published"] = _counts(published)
    for path, versions in sorted(published.items()):
        ids = Counter(v.event_id for v in versions)
        for event_id, n in ids.items():
            if n > 1:
                report.add(
                    Kind.DUPLICATED, "published", path, f"event {event_id} published {n} times"
                )
        if path not in archived:
            report.add(Kind.MISSING_IN_ARCHIVE, "archived", path, f"event {versions[0].event_id}")
    for path, versions in sorted(archived.items()):
        if path not in published:
            report.add(
                Kind.EXTRA, "archived", path, f"event {versions[0].event_id} is not in Kafka"
            )
    _compare_counts(report, "published")


def _check_database(settings: Settings, files: dict[str, list[Version]], report: RunReport) -> None:
    from storage.db import open_database  # noqa: PLC0415 - the database only when asked

    assert report.project is not None  # noqa: S101 - the caller checked
    loaded = empty_counts()
    seen: set[str] = set()
    try:
        with open_database(settings, migrate=False) as db:
            for row in db.query(report.project, include_deleted=True):
                path = row["path"]
                versions = files.get(path)
                if versions is None:
                    if row["run_id"] == report.run_id:
                        report.add(
                            Kind.EXTRA, "loaded", path, "a row of the run the archive does not hold"
                        )
                    continue
                seen.add(path)
                _check_row(row, versions[0], report, loaded)
    except HeadraceError as exc:  # no database yet (nothing loaded), or unreachable
        report.add(Kind.MISSING_IN_DATABASE, "loaded", None, f"the database cannot be read: {exc}")
        seen.update(files)  # said once for all, not once a file
    for path, versions in sorted(files.items()):
        if path not in seen and versions[0].op == "UPSERT":
            report.add(Kind.MISSING_IN_DATABASE, "loaded", path, f"event {versions[0].event_id}")
        elif path not in seen and settings.load.deletes == "remove":
            loaded["deleted"] += 1  # removed rows: a delete that landed
            loaded["files"] += 1
    report.counts["loaded"] = loaded
    _compare_counts(report, "loaded")


def _check_row(
    row: dict[str, Any], version: Version, report: RunReport, loaded: dict[str, int]
) -> None:
    path = row["path"]
    if row["event_id"] != version.event_id:
        if int(row["event_time_ms"]) > version.event_time_ms:
            _count_loaded(loaded, version)  # superseded by a newer version of the file: fine
            return
        report.add(
            Kind.STALE_VERSION,
            "loaded",
            path,
            f"the row is event {row['event_id']} of run {row['run_id']}, older than the run's",
        )
        return
    if version.op == "DELETE":
        if row["deleted"]:
            _count_loaded(loaded, version)
        else:
            report.add(Kind.STALE_VERSION, "loaded", path, "deleted by the run, the row is not")
        return
    if row["sha256"] != version.sha256:
        report.add(
            Kind.CHECKSUM_MISMATCH, "loaded", path, f"row {row['sha256']}, the run {version.sha256}"
        )
    elif int(row["size"]) != version.size:
        report.add(
            Kind.SIZE_MISMATCH, "loaded", path, f"row {row['size']} bytes, the run {version.size}"
        )
    else:
        _count_loaded(loaded, version)


def _count_loaded(loaded: dict[str, int], version: Version) -> None:
    loaded["files"] += 1
    loaded["deleted" if version.op == "DELETE" else version.strategy] += 1


def _check_verified(sides: Sides, files: dict[str, list[Version]], report: RunReport) -> None:
    outcomes = sides.verified or {}
    verified = empty_counts()
    for path, versions in sorted(files.items()):
        version = versions[0]
        if version.op == "DELETE":
            verified["deleted"] += 1  # nothing to verify: counted as the run counts it
            verified["files"] += 1
            continue
        found = sorted(outcomes.get(version.event_id, []))
        if not found:
            report.add(
                Kind.NOT_VERIFIED, "verified", path, f"no verification of event {version.event_id}"
            )
            continue
        _when, status, detail = found[-1]
        if status == "OK":
            verified[version.strategy] += 1
            verified["files"] += 1
        elif status == "MISMATCH":
            report.add(Kind.VERIFICATION_FAILED, "verified", path, detail or status)
        else:
            report.add(Kind.CONTENT_UNRESOLVABLE, "verified", path, detail or status)
    report.counts["verified"] = verified
    _compare_counts(report, "verified")


def _check_source(settings: Settings, files: dict[str, list[Version]], report: RunReport) -> None:
    """The source as a dry run of the ingest sees it now, against the run's files."""
    from producers.command import open_source  # noqa: PLC0415 - the producer only when asked
    from producers.ingest import Ingest, IngestOptions  # noqa: PLC0415

    if report.source is None:
        report.notes.append("the run's source is not known: not compared")
        return
    from producers.runs import RunStore  # noqa: PLC0415

    record = RunStore(settings.ingest.state_dir).get(report.run_id)
    partial = record is not None and (record.base_run is not None)
    if partial:
        report.notes.append(
            f"run {report.run_id} is incremental (from run {record.base_run if record else '?'}):"
            " the source is compared on the run's own files only"
        )
    source = open_source(settings, report.source, report.commit, None, report.project)
    sink = _Collect()
    summary = Ingest(source, IngestOptions(dry_run=True), report.run_id, report.project, sink).run()
    if not partial:
        skipped = dict(Counter(s.reason.value.lower() for s in summary.skipped))
        if skipped != report.skipped and report.completed:
            report.add(
                Kind.COUNT_MISMATCH,
                "source",
                None,
                f"skipped by reason: {skipped} in the source now, the run says {report.skipped}",
            )
    counts = empty_counts()
    for path, (sha256, strategy) in sorted(sink.files.items()):
        versions = files.get(path)
        if partial and versions is None:
            continue
        if versions is None or versions[0].op != "UPSERT":
            report.add(Kind.MISSING_IN_ARCHIVE, "source", path, "in the source, not in the run")
            continue
        if versions[0].sha256 != sha256:
            report.add(
                Kind.CHECKSUM_MISMATCH,
                "source",
                path,
                f"the source holds {sha256}, the run {versions[0].sha256}",
            )
        counts["files"] += 1
        counts[versions[0].strategy or strategy] += 1
    for path, versions in sorted(files.items()):
        if versions[0].op == "UPSERT" and path not in sink.files:
            report.add(Kind.EXTRA, "source", path, "in the run, not in the source now")
    report.counts["source"] = counts


class _Collect:
    """An event sink for the dry run: each file's sha256."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[str, str]] = {}

    def file(self, event: FileEvent) -> None:
        strategy = (event.content_strategy.value if event.content_strategy else "INLINE").lower()
        self.files[event.path] = (event.checksum, strategy)

    def run(self, event: RunEvent) -> None:
        pass

    def flush(self, timeout_s: float = 120.0) -> dict[str, str]:
        return {}

    def prepare(self, timeout_s: float = 120.0) -> tuple[dict[str, str], Any]:
        return {}, None

    def commit(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def committed(self, probe: Any, timeout_s: float = 60.0) -> bool:
        return False


def latest_run(settings: Settings, project: str) -> str:
    """The newest run of ``project`` the archive's run events know (by event time)."""
    topic = settings.kafka.topics.run_events
    backend = open_backend(settings.archive, settings.object_store)
    newest: tuple[int, str] | None = None
    if topic in backend.topics():
        for line in read(backend, topic=topic, predicate=lambda e: e.get("project") == project):
            when = (_millis(line.event.get("event_time")), str(line.event["run_id"]))
            newest = when if newest is None or when > newest else newest
    if newest is None:
        raise HeadraceError(f"the archive holds no run of project {project}")
    return newest[1]
