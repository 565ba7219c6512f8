"""``verify run``: one run's account checked against every place its files went.

The sides, each read once:

- the run's RunCompleted event (the newest, from the archive, else from Kafka);
- published: the run's file events still in the file-events topic (read_committed);
  when the topic no longer starts at offset 0 (retention), a file absent there proves
  nothing: the report says so, and Kafka's counts may be below the run's, not above;
- archived: the run's file events in the archive;
- loaded: the project's rows in the database;
- verified: the verifications of the run's events (archive and topic);
- source (``against_source``): the files the source offers now, hashed by a dry
  run of the ingest itself, so the same rules decide what is a file of the run.

Then, per file: every archived event is in Kafka and the reverse, once each; every
upsert has its row (the same event, or a newer version of the file), with the
same sha256 and size; every upsert has a verification and the newest is OK; the
counts per strategy agree across the sides and the archive's digest is the run's.

How, in bounded memory: every side is streamed into a temporary store on disk
(:mod:`consumers.verify.store`: compact rows in SQLite files, sorted once by path or
event id) and the checks are scans of it merged by path, SQL counting what agrees and
Python naming what differs; no process holds a side. Worker processes read the two
topics and the database's rows while this one reads the archive
(:mod:`consumers.verify.read`), and one checks the verifications while this one checks
the rest (2 cores). Only records whose bytes hold the run id are decoded; the archive's
lines are read without restoring their tagged values (inline bytes stay base64). What
is skipped: the verifications topic is read only past the offsets the archive provably
holds (a partition's chain of segments from its first one, every line its manifest
counts read), since a record there is one the archive gave already; the file-events
topic is always read whole, the published side staying a check independent of the
archive. The store needs about 1 GB of temporary disk at 1,000,000 events.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass
from multiprocessing.pool import AsyncResult, Pool
from pathlib import Path
from typing import Any

from consumers.verify.against_source import check_source
from consumers.verify.read import (
    archived_events,
    archived_through,
    millis,
    outcome_row,
    read_loaded,
    read_published,
    read_verifications,
    records,
    version_row,
)
from consumers.verify.report import STRATEGIES, Kind, RunReport, empty_counts
from consumers.verify.store import Row, Store
from headrace.errors import HeadraceError
from headrace.settings import Settings
from schemas.models import RunEvent
from schemas.registry import make_registry_client
from schemas.serde import EventDeserializer
from storage.archive.backend import Backend, open_backend
from storage.archive.reader import read

Progress = Callable[[str], None]
Outcomes = dict[str, list[tuple[int, str, str | None]]]  # event id: (time, status, detail)


@dataclass(frozen=True, slots=True)
class Version:
    """One file event of the run, as a side holds it."""

    event_id: str
    op: str  # UPSERT or DELETE
    sha256: str
    size: int
    strategy: str  # inline, object_storage, git_reference; "" for a delete
    event_time_ms: int


def _first(row: Row) -> Version:
    """The Version of a store row (path, event_id, op, sha256, size, strategy, time_ms)."""
    return Version(row[1], row[2], row[3], row[4], row[5], row[6])


@dataclass
class Sides:
    """The sides as read. ``store`` holds the file events and verifications; without one
    (small sides, tests) they are given in memory and :meth:`stored` writes them to one."""

    run: dict[str, Any] | None = None  # the newest RunCompleted event
    started: dict[str, Any] | None = None
    published: dict[str, list[Version]] | None = None  # None: the topic was not read whole
    archived: dict[str, list[Version]] | None = None
    verified: Outcomes | None = None  # event id: outcomes
    project: str | None = None  # of the run's file events, when no run event says
    store: Store | None = None
    whole: bool = True  # the file-events topic was read whole

    def stored(self) -> Store:
        if self.store is None:
            self.store = Store()
            self.whole = self.published is not None
            for side, files in (("archived", self.archived), ("published", self.published)):
                rows = ((p, *_fields(v)) for p, vs in (files or {}).items() for v in vs)
                self.store.fill(side, "versions", rows)
            outcomes = ((e, *o) for e, found in (self.verified or {}).items() for o in found)
            self.store.fill("archived_outcomes", "outcomes", outcomes)
        return self.store


def _fields(v: Version) -> Row:
    return (v.event_id, v.op, v.sha256, v.size, v.strategy, v.event_time_ms)


def verify_run(
    settings: Settings,
    run_id: str,
    *,
    against_source: bool = False,
    progress: Progress = lambda _step: None,
) -> RunReport:
    """The report of one run: every side read, every discrepancy named."""
    report = RunReport(run_id)
    with (
        tempfile.TemporaryDirectory(prefix="headrace-verify-") as scratch,
        closing(Store(Path(scratch))) as store,
        # spawn: fresh interpreters, whatever threads this process runs (Kafka clients, a
        # status spinner) when it starts them
        multiprocessing.get_context("spawn").Pool(3) as pool,
    ):
        sides = Sides(store=store)
        loaded = _read(settings, run_id, sides, report, progress, pool)
        run = sides.run or sides.started
        published = sides.whole and store.count("published") > 0
        if run is None and not store.count("archived") and not published:
            raise HeadraceError(f"no run {run_id} in the archive or in Kafka")
        if run is not None:
            report.project, report.source = run["project"], run["source"]
            report.commit = run.get("commit")
        else:
            report.project = sides.project
            report.notes.append(f"no RunStarted or RunCompleted event of run {run_id} found")
        _check_manifest(sides, report)
        _check_published(sides, report)
        if sides.whole:
            # A file the archive lacks but Kafka holds is missing in the archive, said once:
            # the database and the verifications are checked against Kafka's version.
            store.adopt_missing("published", "archived")
        # The verifications are checked by a worker meanwhile: the other core.
        manifest = None if sides.run is None else _manifest_counts(sides.run)
        verified = pool.apply_async(_check_verified_in, (Path(scratch), run_id, manifest))
        if loaded is not None:
            progress("reading the database")
            _check_database(settings, sides, report, loaded.get())
        checked = verified.get()
        report.discrepancies += checked.discrepancies
        report.counts["verified"] = checked.counts["verified"]
        if against_source:
            progress("hashing the source")
            check_source(settings, store, report)
    return report


# --- reading ---------------------------------------------------------------------------


def _read(
    settings: Settings,
    run_id: str,
    sides: Sides,
    report: RunReport,
    progress: Progress,
    pool: Pool,
) -> AsyncResult[str | None] | None:
    """The archive here; meanwhile in ``pool`` the two topics (the decoding of Avro is
    most of the time) and, once the project is known, the database; all into
    ``sides.store``. The database's read (None: no project is known)."""
    store = sides.stored()
    files = pool.apply_async(read_published, (settings, run_id, store.file("published")))
    progress("reading the archive")
    backend = open_backend(settings.archive, settings.object_store)
    held = _read_archived_verifications(settings, run_id, backend, store)
    into = store.file("published_outcomes")
    checks = pool.apply_async(read_verifications, (settings, run_id, into, held))
    loaded: tuple[str, AsyncResult[str | None]] | None = None

    def database() -> tuple[str, AsyncResult[str | None]] | None:
        """The database's read, started as soon as the project is known."""
        run = sides.run or sides.started
        project = run["project"] if run is not None else sides.project
        if project is None or (loaded is not None and loaded[0] == project):
            return loaded
        if loaded is not None:  # a RunCompleted of a project other than its RunStarted's
            loaded[1].wait()
            store.file("loaded").unlink()
        return project, pool.apply_async(read_loaded, (settings, project, store.file("loaded")))

    _read_archived_runs(settings, run_id, backend, sides)
    loaded = database()
    _read_archived_files(settings, run_id, backend, sides)
    progress("reading Kafka")
    if sides.run is None:
        _read_run_events(settings, run_id, sides)
    loaded = database()
    whole, project = files.get()
    sides.whole, sides.project = whole, sides.project or project
    loaded = database()
    checks.get()
    for side in ("published", "published_outcomes"):
        store.attach(side)
    if not whole:
        report.notes.append(
            f"{settings.kafka.topics.file_events} no longer starts at offset 0: what Kafka"
            " still holds of the run is checked to be no more than the run's counts"
        )
        report.counts["published"] = _counts(store.counts("published"))
    return None if loaded is None else loaded[1]


def _read_archived_verifications(
    settings: Settings, run_id: str, backend: Backend, store: Store
) -> dict[int, tuple[int, int]]:
    """The run's verifications in the archive; the offsets of their topic the archive
    provably holds (see ``archived_through``)."""
    topic = settings.kafka.topics.verifications
    if topic not in backend.topics():
        return {}
    lines: Counter[str] = Counter()
    with closing(store.writer("archived_outcomes", "outcomes")) as outcomes:
        for name, event in archived_events(backend, topic):
            lines[name] += 1
            if event.get("run_id") == run_id:
                outcomes.add(outcome_row(event))
    return archived_through(backend, topic, lines)


def _read_archived_runs(settings: Settings, run_id: str, backend: Backend, sides: Sides) -> None:
    """The run's run events in the archive."""
    topic = settings.kafka.topics.run_events
    if topic in backend.topics():
        for line in read(backend, topic=topic, predicate=_of(run_id)):
            _run_event(line.event, sides)


def _read_archived_files(settings: Settings, run_id: str, backend: Backend, sides: Sides) -> None:
    """The run's file events in the archive."""
    assert sides.store is not None  # noqa: S101 - the caller made it
    topic = settings.kafka.topics.file_events
    with closing(sides.store.writer("archived", "versions")) as versions:
        if topic in backend.topics():
            for _name, event in archived_events(backend, topic):
                if event.get("run_id") == run_id:
                    versions.add(version_row(event))
                    sides.project = sides.project or event["project"]


def _of(run_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: event.get("run_id") == run_id


def _run_event(event: dict[str, Any], sides: Sides) -> None:
    if str(event.get("kind")) == "COMPLETED":
        sides.run = event  # in offset order: the newest wins
    elif sides.started is None:
        sides.started = event


def _read_run_events(settings: Settings, run_id: str, sides: Sides) -> None:
    """The run's run events in Kafka (when the archive holds no RunCompleted of it)."""
    with make_registry_client(settings.registry) as client:
        decode = EventDeserializer(client, RunEvent).decode
        for value, _whole in records(settings, settings.kafka.topics.run_events):
            try:
                event = decode(value)
            except HeadraceError:
                continue  # the dead-letter topic's business, not the run's
            if event.get("run_id") == run_id:
                _run_event(event, sides)


# --- checking --------------------------------------------------------------------------


def _counts(found: Iterable[tuple[str, str, int]]) -> dict[str, int]:
    """Files per strategy (and deleted) of a side, from (op, strategy, files) of the first
    version of each path."""
    counts = empty_counts()
    for op, strategy, n in found:
        counts["files"] += n
        counts["deleted" if op == "DELETE" else strategy] += n
    return counts


def path_digest(files: Iterable[tuple[str, str]]) -> str:
    """``run_digest`` of (path, sha256) pairs given sorted by unique path, streamed."""
    digest = hashlib.sha256()
    for path, checksum in files:
        digest.update(f"{path}\0{checksum}\n".encode())
    return digest.hexdigest()


def _check_manifest(sides: Sides, report: RunReport) -> None:
    store = sides.stored()
    report.counts["archived"] = _counts(store.counts("archived"))
    report.digest["archived"] = path_digest(store.upserts("archived"))
    run = sides.run
    if run is None:
        report.add(
            Kind.RUN_INCOMPLETE, "manifest", None, "no RunCompleted event: the run did not finish"
        )
        return
    report.completed = True
    report.counts["manifest"] = _manifest_counts(run)
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


def _manifest_counts(run: dict[str, Any]) -> dict[str, int]:
    manifest = run.get("counts") or {}
    return {k: int(manifest.get(k, 0)) for k in empty_counts()}


def _compare_counts(report: RunReport, side: str, *, at_most: bool = False) -> None:
    """A count mismatch for each count of ``side`` that is not the run's own (with
    ``at_most``: that is over the run's own, as a topic retention has cut may hold fewer)."""
    manifest, found = report.counts.get("manifest"), report.counts.get(side)
    if manifest is None or found is None:
        return
    for key in (*STRATEGIES, "deleted", "files"):
        if found[key] > manifest[key] or (found[key] < manifest[key] and not at_most):
            report.add(
                Kind.COUNT_MISMATCH,
                side,
                None,
                f"{key}: {found[key]}, the run says {manifest[key]}",
            )


def _check_published(sides: Sides, report: RunReport) -> None:
    store = sides.stored()
    for path, event_id, n in store.duplicates("archived"):
        report.add(Kind.DUPLICATED, "archived", path, f"event {event_id} archived {n} times")
    if not sides.whole:
        _compare_counts(report, "published", at_most=True)
        return
    report.counts["published"] = _counts(store.counts("published"))
    # By path: what Kafka holds twice, then whether the archive misses the file.
    found: list[tuple[str, int, Kind, str, str]] = [
        (path, 0, Kind.DUPLICATED, "published", f"event {event_id} published {n} times")
        for path, event_id, n in store.duplicates("published")
    ]
    found += (
        (path, 1, Kind.MISSING_IN_ARCHIVE, "archived", f"event {event_id}")
        for path, event_id in store.only_in("published", "archived")
    )
    found.sort(key=lambda d: (d[0], d[1]))  # stable: each path's duplicates as they came
    for path, _order, kind, side, detail in found:
        report.add(kind, side, path, detail)
    for path, event_id in store.only_in("archived", "published"):
        report.add(Kind.EXTRA, "archived", path, f"event {event_id} is not in Kafka")
    _compare_counts(report, "published")


def _check_database(settings: Settings, sides: Sides, report: RunReport, error: str | None) -> None:
    """The project's rows (as read into the store, ``error`` if the read stopped) against
    the archived first version of each path."""
    store = sides.stored()
    loaded = empty_counts()
    for strategy, n in store.rows_counted():  # the run's own version: nothing to say
        loaded["files"] += n
        loaded[strategy] += n
    # By path, the rows of the run the archive does not hold, and the rows to look at.
    found: list[tuple[str, Row | None]] = [
        (p, None) for (p,) in store.rows_of_run_only(report.run_id)
    ]
    found += ((r[0], r) for r in store.rows_to_check())
    found.sort(key=lambda f: f[0])
    for path, r in found:
        if r is None:
            report.add(Kind.EXTRA, "loaded", path, "a row of the run the archive does not hold")
            continue
        row = dict(zip(_ROW, r, strict=False))
        _check_row(row, Version(*r[7:13]), report, loaded)
    if error is not None:
        report.add(
            Kind.MISSING_IN_DATABASE, "loaded", None, f"the database cannot be read: {error}"
        )
    else:  # said once for all, not once a file
        remove = settings.load.deletes == "remove"
        for path, event_id, op in store.not_loaded():
            if op == "UPSERT":
                report.add(Kind.MISSING_IN_DATABASE, "loaded", path, f"event {event_id}")
            elif remove:
                loaded["deleted"] += 1  # removed rows: a delete that landed
                loaded["files"] += 1
    report.counts["loaded"] = loaded
    _compare_counts(report, "loaded")


_ROW = ("path", "event_id", "run_id", "sha256", "size", "event_time_ms", "deleted")


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


def _check_verified(
    sides: Sides, files: dict[str, list[Version]] | None, report: RunReport
) -> None:
    """``files``: the archived side in memory, when ``sides`` holds none."""
    if files is not None and sides.store is None:
        sides = Sides(archived=files, verified=sides.verified)
    verified = empty_counts()
    found: list[tuple[str, Kind, str]] = []  # in the order of the event ids: sorted below
    for path, event_id, op, strategy, status, detail in sides.stored().newest():
        if op == "DELETE":
            verified["deleted"] += 1  # nothing to verify: counted as the run counts it
            verified["files"] += 1
        elif status is None:
            found.append((path, Kind.NOT_VERIFIED, f"no verification of event {event_id}"))
        elif status == "OK":
            verified[strategy] += 1
            verified["files"] += 1
        elif status == "MISMATCH":
            found.append((path, Kind.VERIFICATION_FAILED, detail or status))
        else:
            found.append((path, Kind.CONTENT_UNRESOLVABLE, detail or status))
    found.sort(key=lambda f: f[0])
    for path, kind, detail in found:
        report.add(kind, "verified", path, detail)
    report.counts["verified"] = verified
    _compare_counts(report, "verified")


def _check_verified_in(directory: Path, run_id: str, manifest: dict[str, int] | None) -> RunReport:
    """``_check_verified`` on the store in ``directory`` (a pool worker: it only reads),
    as a report of its own; ``manifest``: the run's counts, to compare with."""
    with closing(Store(directory)) as store:
        report = RunReport(run_id)
        if manifest is not None:
            report.counts["manifest"] = manifest
        _check_verified(Sides(store=store), None, report)
    return report


def latest_run(settings: Settings, project: str) -> str:
    """The newest run of ``project`` the archive's run events know (by event time)."""
    topic = settings.kafka.topics.run_events
    backend = open_backend(settings.archive, settings.object_store)
    newest: tuple[int, str] | None = None
    if topic in backend.topics():
        for line in read(backend, topic=topic, predicate=lambda e: e.get("project") == project):
            when = (millis(line.event.get("event_time")), str(line.event["run_id"]))
            newest = when if newest is None or when > newest else newest
    if newest is None:
        raise HeadraceError(f"the archive holds no run of project {project}")
    return newest[1]
