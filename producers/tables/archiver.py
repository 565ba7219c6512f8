"""``headrace archive-table``: move a table's old rows into the archive, verify, then delete.

Per batch, in one database transaction (``producers.tables.source``)::

    SELECT ... FOR UPDATE SKIP LOCKED      the batch's rows, locked
    publish one RowEvent per row           one Kafka transaction (RowPublisher)
    wait until the archive holds them      published segments cover every offset
    VERIFY                                 selected == published == archived, and each
                                           archived row's checksum is the source row's
    DELETE by primary key; COMMIT          only now do the rows leave the table

Any mismatch, timeout or failure rolls the batch back: its rows stay in the table,
and the events already published are duplicates by event id of the next attempt's.
The archive group must be running (``headrace consume archive``, which reads the
row-events topic), or be started by the command (``--run-archive``:
``producers.tables.archive_process``); without a member the run is refused before
anything is published. ``max_rows_per_second`` paces the batches (:class:`Pacer`).

Two batches at a time, once the first has committed (so an archive that does not
confirm fails the run with one batch locked, and that batch is the one named): while
the archive group writes batch N, batch N+1 is selected (after N's last row, on a
second connection of its own), encoded and published; then N is confirmed, verified,
deleted and committed, and so on. So at most two batches' rows are locked at once,
and each batch's rows are still deleted only after the archive holds them verified.
Batches commit in order, so the kept cursor only ever moves past committed batches.
A failure of either rolls both back (the error is raised): their rows stay,
unlocked, and their events are duplicates by event id of the next run's; a crash
leaves both uncommitted, so the server rolls them back. The pacer counts a batch's
rows when it is selected.
"""

from __future__ import annotations

import gc
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

from consumers.instance import InstanceSlot
from headrace import __version__
from headrace.collector import collector_paused
from headrace.settings import Settings, SourceSettings
from producers.errors import (
    ArchiveNotRunning,
    ArchiveTimeout,
    ArchiveUnconfirmed,
    VerificationFailed,
)
from producers.tables import rows
from producers.tables.archive_process import ArchiveProcess
from producers.tables.catalog import TableRef, TableShape
from producers.tables.confirm import ArchiveConfirm, Placed, days_around
from producers.tables.cursors import CursorStore, Position
from producers.tables.metrics import TableMetrics
from producers.tables.publish import RowPublisher
from producers.tables.source import Batch, DryRun, Limits, TableSource
from producers.tables.wire import EncodedRow, RowEventWriter
from schemas.models import Column, RowEvent
from schemas.registry import make_registry_client
from schemas.serde import HEADER_SIZE
from storage.archive.layout import restore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchiveRequest:
    """What to archive: one table of one source, rows older than ``older_than``."""

    source_name: str
    source: SourceSettings
    table: TableRef
    older_than: timedelta
    timestamp_column: str | None = None
    batch_size: int | None = None  # default: tables.batch_size
    dry_run: bool = False
    archive_timeout_s: float | None = None  # default: archive.row_events_segment_age_s + 60
    max_rows_per_second: float | None = None  # None: as fast as it goes


@dataclass(frozen=True)
class BatchDone:
    """One committed batch: archived, verified and deleted."""

    number: int
    rows: int
    bytes: int
    deleted: int
    seconds: float


@dataclass(frozen=True)
class Summary:
    batches: int = 0
    rows: int = 0
    bytes: int = 0
    deleted: int = 0
    verified: int = 0
    seconds: float = 0.0
    dry_run: DryRun | None = None

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "batches": self.batches,
            "rows": self.rows,
            "bytes": self.bytes,
            "deleted": self.deleted,
            "verified": self.verified,
            "seconds": round(self.seconds, 3),
        }
        if self.dry_run is not None:
            d = self.dry_run
            found["dry_run"] = {
                "rows": d.rows,
                "batches": d.batches,
                "oldest": d.oldest,
                "newest": d.newest,
                "cutoff": d.cutoff,
            }
        return found


class Progress(Protocol):
    def start(self, eligible: int) -> None:
        """Before the first batch: the rows eligible now (an estimate: writers go on)."""

    def batch(self, done: BatchDone) -> None: ...


class NoProgress:
    def start(self, eligible: int) -> None:
        return None

    def batch(self, done: BatchDone) -> None:
        return None


class Pacer:
    """At most ``rate`` rows a second on average since the first batch: :meth:`wait`
    sleeps before a batch until the rows done so far are within the rate. A batch is
    then at most ``rate`` rows (:meth:`batch_size`), so no burst is longer than a second."""

    def __init__(
        self,
        rate: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"a rate must be positive, not {rate}")
        self.rate, self._clock, self._sleep = rate, clock, sleep
        self._began: float | None = None
        self._rows = 0
        self.slept = 0.0

    def batch_size(self, wanted: int) -> int:
        return wanted if self.rate is None else max(1, min(wanted, int(self.rate)))

    def wait(self) -> None:
        if self.rate is None:
            return
        now = self._clock()
        if self._began is None:
            self._began = now
            return
        due = self._began + self._rows / self.rate
        if due > now:
            self._sleep(due - now)
            self.slept += due - now

    def done(self, rows: int) -> None:
        self._rows += rows


def transactional_id(source_name: str, table: TableRef, slot: int = 0) -> str:
    """One per (source, table) and live archiver of it on this host (its slot).

    Two archivers of one table at once hold two slots, so two ids: both run, and
    ``FOR UPDATE SKIP LOCKED`` gives them different rows. An archiver restarted after
    a crash takes the free slot, so its predecessor's id: ``init_transactions`` aborts
    what that one left open at once, instead of after the transaction timeout (while
    it stays open, read_committed readers such as the archive group wait behind it)."""
    return f"headrace-archive-table.{source_name}.{table.schema}.{table.table}.{slot}"


def archive_timeout(settings: Settings, request: ArchiveRequest) -> float:
    if request.archive_timeout_s is not None:
        return request.archive_timeout_s
    return settings.archive.row_events_segment_age_s + 60.0


def archive_table(
    settings: Settings,
    request: ArchiveRequest,
    progress: Progress,
    *,
    metrics: TableMetrics | None = None,
    archive: ArchiveProcess | None = None,
) -> Summary:
    """Archive, verify and delete the request's rows batch by batch (module docstring).

    ``archive``, if given, is started before the first batch and stopped at the end
    (``--run-archive``); ``metrics`` count what the run does."""
    started = time.monotonic()
    limits = Limits.from_settings(settings.tables)
    pacer = Pacer(request.max_rows_per_second)
    limits = replace(limits, batch_size=pacer.batch_size(request.batch_size or limits.batch_size))
    cursors = CursorStore(settings.tables.state_dir)
    # Two connections to the table: the second batch's is ``ahead`` (module docstring).
    source, ahead = (
        TableSource(
            request.source,
            request.source_name,
            request.table,
            timestamp_column=request.timestamp_column,
            limits=limits,
            cursors=cursors,
        )
        for _ in range(2)
    )
    with source:
        if request.dry_run:
            found = source.dry_run(request.older_than)
            return Summary(seconds=time.monotonic() - started, dry_run=found)
        confirm = ArchiveConfirm(settings)
        if archive is not None:
            archive.start(confirm)
        try:
            _require_archive(confirm)
            progress.start(source.dry_run(request.older_than).rows)
            base = transactional_id(request.source_name, request.table).rsplit(".", 1)[0]
            slot = InstanceSlot(settings.tables.state_dir / "instances", base)
            with make_registry_client(settings.registry) as client:
                publisher = RowPublisher(
                    settings.kafka,
                    client,
                    transactional_id(request.source_name, request.table, slot.acquire()),
                )
                publisher.start()
                try:
                    ahead.open()
                    run = _Run(
                        source,
                        publisher,
                        confirm,
                        archive_timeout(settings, request),
                        pacer,
                        metrics or TableMetrics(request.source_name, str(request.table)),
                        ahead=ahead,
                    )
                    summary = run.all(request.older_than, progress)
                finally:
                    ahead.close()
                    publisher.close()
                    slot.release()
        finally:
            if archive is not None:
                archive.stop()
    return Summary(
        summary.batches,
        summary.rows,
        summary.bytes,
        summary.deleted,
        summary.verified,
        time.monotonic() - started,
    )


def _require_archive(confirm: ArchiveConfirm) -> None:
    members, reads = confirm.members()
    if members == 0:
        raise ArchiveNotRunning(
            f"no archive group is running (group {confirm.group_id} has no members):"
            " start 'headrace consume archive'; nothing was archived or deleted"
        )
    if not reads:
        log.warning(
            "the archive group %s has %s members but none reads %s yet",
            confirm.group_id,
            members,
            confirm.topic,
        )


@dataclass
class _Pending:
    """A batch selected and published, its transaction open on ``source``."""

    number: int
    source: TableSource
    batch: Batch
    events: list[EncodedRow]
    placed: list[Placed]
    sent: int
    day: date
    began: float


class _Run:
    """One run's batches: each published, confirmed, verified, deleted and committed;
    with ``ahead``, the next one selected and published while one is confirmed."""

    def __init__(
        self,
        source: TableSource,
        publisher: RowPublisher,
        confirm: ArchiveConfirm,
        timeout_s: float,
        pacer: Pacer,
        metrics: TableMetrics,
        *,
        ahead: TableSource | None = None,
    ) -> None:
        self.source = source
        self.ahead = ahead
        self.publisher = publisher
        self.confirm = confirm
        self.timeout_s = timeout_s
        self.pacer = pacer
        self.metrics = metrics
        self.run_id = uuid.uuid4().hex
        self._totals = Summary()
        self._writer: RowEventWriter | None = None
        self._writer_shape: TableShape | None = None

    def all(self, older_than: timedelta, progress: Progress) -> Summary:
        with collector_paused():
            return self._all(older_than, progress)

    def _all(self, older_than: timedelta, progress: Progress) -> Summary:
        number = 0
        pending: _Pending | None = None
        after: Position | None = None  # None: the kept cursor
        while True:
            source = self.source  # the connection with no batch open
            if pending is not None and self.ahead is not None and pending.source is source:
                source = self.ahead
            self.pacer.wait()
            began = time.monotonic()
            try:
                batch = source.select_batch(older_than, after=after)
            except BaseException as exc:
                self._roll_back(pending, exc)
                raise
            if not batch:
                source.rollback()  # the SELECT's transaction: nothing locked
                if pending is not None:
                    self._finish(pending, progress)
                for each in (self.source, self.ahead):
                    if each is not None:
                        each.reset_cursor()
                return self._totals
            number += 1
            self.pacer.done(len(batch))  # counted when selected: the next may be selected early
            try:
                published = self._publish(source, batch, number, began)
            except BaseException as exc:
                self._failed(source, exc)
                self._roll_back(pending, exc)
                raise
            after = batch.last
            if pending is not None:
                self._finish(pending, progress, also=published)
            if self.ahead is None or not self._totals.batches:  # the first batch runs alone
                self._finish(published, progress)
                pending = None
            else:
                pending = published

    def _roll_back(self, pending: _Pending | None, exc: BaseException | None = None) -> None:
        if pending is not None:
            self._failed(pending.source, exc)

    def _failed(self, source: TableSource, exc: BaseException | None) -> None:
        source.rollback()
        self.metrics.batch("rolled_back")
        if isinstance(exc, ArchiveUnconfirmed):
            self.metrics.verification_failed(exc.reason)

    def _finish(self, pending: _Pending, progress: Progress, also: _Pending | None = None) -> None:
        """Confirm, verify, delete and commit ``pending``; on failure roll it back, and
        ``also`` (the batch published after it), and raise."""
        try:
            deleted = self._confirm(pending)
        except BaseException as exc:
            self._failed(pending.source, exc)
            self._roll_back(also, exc)
            raise
        batch, sent = pending.batch, pending.sent
        seconds = time.monotonic() - pending.began
        m = self.metrics
        m.batch("committed")
        m.batch_seconds.observe(seconds)
        m.rows_archived.inc(len(batch))
        m.rows_deleted.inc(deleted)
        m.bytes_published.inc(sent)
        t = self._totals
        self._totals = Summary(
            t.batches + 1,
            t.rows + len(batch),
            t.bytes + sent,
            t.deleted + deleted,
            t.verified + len(batch),
        )
        progress.batch(BatchDone(pending.number, len(batch), sent, deleted, seconds))
        gc.collect(0)  # the young objects the batch left (headrace.collector)

    def _publish(self, source: TableSource, batch: Batch, number: int, began: float) -> _Pending:
        """Encode the batch's events and publish them in one Kafka transaction."""
        shape = source.shape
        batch_id = f"{self.run_id}-{number}"
        now = datetime.now(UTC)
        writer = self._writer_for(shape)
        # The first row through the model and the registry's serializer: the header, and
        # a check that the writer still writes what the model does (producers.tables.wire).
        first_row = rows.encode_row(batch.columns, batch.values[0])
        model = self._event(shape, first_row, batch_id, now)
        expected = self.publisher.serialize(model)
        events = writer.encode(expected[:HEADER_SIZE], batch_id, now, batch.values)
        first = events[0]
        if (first.event_id, first.checksum, first.value) != (
            model.event_id,
            model.checksum,
            expected,
        ):
            raise RuntimeError(
                "producers.tables.wire no longer writes the RowEvent the model does:"
                f" update it to the schema ({shape.ref}, batch {batch_id})"
            )
        placed, sent = self.publisher.publish_encoded(
            [(e.event_id.encode(), e.value) for e in events]
        )
        pending = _Pending(number, source, batch, events, placed, sent, now.date(), began)
        if len(placed) != len(batch):
            raise VerificationFailed(
                f"{shape.ref} batch {batch_id}: {len(batch)} rows selected but {len(placed)}"
                " published: rolled back, its rows stay"
            )
        return pending

    def _confirm(self, pending: _Pending) -> int:
        """Wait for the archive, verify, delete and commit: the rows deleted."""
        source, batch, placed = pending.source, pending.batch, pending.placed
        where = f"{source.shape.ref} batch {self.run_id}-{pending.number}"
        segments = self.confirm.wait_durable(placed, days_around(pending.day), self.timeout_s)
        if segments is None:
            members, _ = self.confirm.members()
            why = "no archive group is running" if members == 0 else "the archive is behind"
            raise ArchiveTimeout(
                f"{where}: the archive did not hold all {len(placed)} row events within"
                f" {self.timeout_s:g} s ({why}): rolled back, its rows stay"
            )
        self._verify(where, pending.events, self.confirm.read_back_rows(placed, segments))
        deleted = source.delete(batch.keys)
        if deleted != len(batch):
            raise VerificationFailed(
                f"{where}: {deleted} rows deleted of {len(batch)} locked: rolled back, rows stay"
            )
        source.commit()
        return deleted

    def _writer_for(self, shape: TableShape) -> RowEventWriter:
        if self._writer is None or self._writer_shape != shape:
            self._writer_shape = shape
            self._writer = RowEventWriter(
                [(c.name, c.type) for c in shape.columns],
                [shape.index(name) for name in shape.primary_key],
                run_id=self.run_id,
                source=self.source.source_name,
                schema=shape.ref.schema,
                table=shape.ref.table,
                producer_version=__version__,
            )
        return self._writer

    def _event(
        self, shape: TableShape, row: Sequence[Column], batch_id: str, now: datetime
    ) -> RowEvent:
        key = [row[shape.index(name)] for name in shape.primary_key]
        return RowEvent(
            run_id=self.run_id,
            batch_id=batch_id,
            source=self.source.source_name,
            table_schema=shape.ref.schema,
            table=shape.ref.table,
            key=key,
            row=list(row),
            checksum=rows.checksum(row),
            producer_version=__version__,
            event_time=now,
        )

    @staticmethod
    def _verify(
        where: str, events: Sequence[_Published], archived: Sequence[dict[str, Any]]
    ) -> None:
        wanted = {e.event_id: e.checksum for e in events}
        found: dict[str, dict[str, Any]] = {}
        for event in archived:
            found.setdefault(str(event.get("event_id")), event)
        missing = [i for i in wanted if i not in found]
        if missing or len(found) != len(wanted):
            raise VerificationFailed(
                f"{where}: {len(wanted)} rows published but {len(found)} archived"
                f" ({len(missing)} missing): rolled back, its rows stay"
            )
        bad = [i for i, checksum in wanted.items() if _archived_checksum(found[i]) != checksum]
        if bad:
            raise VerificationFailed(
                f"{where}: {len(bad)} archived rows do not match their source row's checksum"
                f" (first event {bad[0]}): rolled back, its rows stay",
                reason="checksum",
            )


class _Published(Protocol):
    @property
    def event_id(self) -> str: ...

    @property
    def checksum(self) -> str: ...


def _archived_checksum(event: dict[str, Any]) -> str | None:
    """The checksum of the row as the archive holds it, if the event's own agrees.

    Every RowEvent's columns are maps of exactly ``name``, ``type`` and ``value``: those
    are hashed as they are (a value that is not a string or null cannot hash as the
    source row's, whose canonical form holds only those). A row of any other shape is
    read back as the archive would (tags restored) and validated as Column models."""
    row = event.get("row") or []
    try:
        if sum(map(len, row)) == 3 * len(row):  # with the three keys each: no other key
            computed = rows.checksum_items([(c["name"], c["type"], c["value"]) for c in row])
            return computed if event.get("checksum") == computed else None
    except (KeyError, TypeError):  # not maps of those keys
        pass
    return _validated_checksum(event)


def _validated_checksum(event: dict[str, Any]) -> str | None:
    row = [Column.model_validate(c) for c in restore(event.get("row") or [])]
    computed = rows.checksum(row)
    return computed if event.get("checksum") == computed else None
