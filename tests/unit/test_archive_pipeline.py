"""The archiver's two batches at a time, with fakes of the table, Kafka and the archive.

Batch N+1 is selected (after N's last row, on the other connection) and published
before N is confirmed; N commits first; a failure of either rolls both back and is
raised; the first batch runs alone; rows are deleted only once their archived copy
verifies.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.serialization import MessageField, SerializationContext

from producers.errors import ArchiveTimeout, TransactionAborted, VerificationFailed
from producers.tables.archiver import NoProgress, Pacer, _Run
from producers.tables.catalog import TableRef, TableShape
from producers.tables.confirm import Placed
from producers.tables.cursors import Position
from producers.tables.metrics import TableMetrics
from producers.tables.source import Batch
from schemas.catalog import EventType
from schemas.models import Column, RowEvent
from schemas.serde import EventDeserializer, EventSerializer

SHAPE = TableShape(
    TableRef("public", "events"),
    (
        Column(name="id", type="int8"),
        Column(name="ts", type="timestamptz"),
        Column(name="note", type="text"),
    ),
    ("id",),
    "ts",
)
REGISTRY = SchemaRegistryClient.new_client({"url": "mock://"})


@dataclass
class Table:
    """The rows, and what every connection did, in order."""

    rows: list[tuple[str, str, str | None]]
    log: list[str] = field(default_factory=list)
    locked: set[str] = field(default_factory=set)
    cursor: Position | None = None


class FakeSource:
    """TableSource's part the archiver uses, on a shared Table."""

    source_name = "src"
    shape = SHAPE

    def __init__(self, table: Table, name: str, batch_size: int) -> None:
        self.table, self.name, self.batch_size = table, name, batch_size
        self.open: Batch | None = None

    def select_batch(self, older_than: timedelta, *, after: Position | None = None) -> Batch:
        assert self.open is None, f"{self.name}: a batch is already open"
        start = after or self.table.cursor
        eligible = [
            r
            for r in sorted(self.table.rows, key=lambda r: (r[1], r[0]))
            if (start is None or (r[1], r[0]) > (start.timestamp, start.key[0]))
            and r[0] not in self.table.locked
        ][: self.batch_size]
        keys = tuple((r[0],) for r in eligible)
        last = Position(eligible[-1][1], (eligible[-1][0],)) if eligible else None
        self.open = Batch(tuple(eligible), keys, last, SHAPE.columns)
        self.table.locked |= {r[0] for r in eligible}
        self.table.log.append(f"{self.name} select {[r[0] for r in eligible]}")
        return self.open

    def rollback(self) -> None:
        if self.open:  # a batch with rows (an empty one locked nothing)
            self.table.locked -= {k[0] for k in self.open.keys}
            self.table.log.append(f"{self.name} rollback")
        self.open = None

    def delete(self, keys: Sequence[Sequence[str]]) -> int:
        assert self.open is not None
        self.pending_delete = {k[0] for k in keys}
        return len(self.pending_delete)

    def commit(self) -> None:
        assert self.open is not None
        self.table.rows = [r for r in self.table.rows if r[0] not in self.pending_delete]
        self.table.locked -= self.pending_delete
        self.table.cursor = self.open.last
        self.table.log.append(f"{self.name} commit {sorted(self.pending_delete, key=int)}")
        self.open = None

    def reset_cursor(self) -> None:
        self.table.cursor = None


class FakePublisher:
    """A topic of one partition: what was published, by offset."""

    def __init__(self, table: Table, fail_at: int | None = None) -> None:
        self.table, self.fail_at = table, fail_at
        self.values: list[bytes] = []
        self.batches = 0
        self._serialize = EventSerializer(REGISTRY, EventType.ROW_EVENT)
        self._ctx = SerializationContext("t.rows", MessageField.VALUE)

    def serialize(self, event: RowEvent) -> bytes:
        return self._serialize(event, self._ctx)

    def publish_encoded(self, records: Sequence[tuple[bytes, bytes]]) -> tuple[list[Placed], int]:
        self.batches += 1
        if self.batches == self.fail_at:
            raise TransactionAborted("the broker went away")
        start = len(self.values)
        self.values += [value for _key, value in records]
        self.table.log.append(f"publish {len(records)}")
        return [(0, start + i) for i in range(len(records))], sum(len(v) for _, v in records)


class FakeArchive:
    """The archive group: holds whatever was published, unless told otherwise."""

    def __init__(self, publisher: FakePublisher, *, late: int | None = None) -> None:
        self.publisher, self.late = publisher, late
        self.waits = 0
        self.change: Any = None  # called on the events read back
        self._decode = EventDeserializer(REGISTRY, RowEvent).decode

    def wait_durable(self, placed: Iterable[Placed], days: list[str], timeout_s: float) -> Any:
        self.waits += 1
        self.publisher.table.log.append(f"confirm {self.waits}")
        return None if self.waits == self.late else ["segment"]

    def read_back_rows(self, placed: Iterable[Placed], segments: Any) -> list[dict[str, Any]]:
        events = [self._decode(self.publisher.values[o]) for _p, o in placed]
        if self.change is not None:
            self.change(events)
        return events

    def members(self) -> tuple[int, bool]:
        return 1, True


def make(
    n: int = 10, size: int = 3, *, fail_publish: int | None = None, late: int | None = None
) -> tuple[Table, _Run, FakeArchive]:
    table = Table([(str(i), f"2020-01-01 00:00:{i:02d}+00", f"row {i}") for i in range(1, n + 1)])
    publisher = FakePublisher(table, fail_publish)
    archive = FakeArchive(publisher, late=late)
    run = _Run(
        FakeSource(table, "a", size),  # type: ignore[arg-type]
        publisher,  # type: ignore[arg-type]
        archive,  # type: ignore[arg-type]
        5.0,
        Pacer(None),
        TableMetrics("src", "public.events"),
        ahead=FakeSource(table, "b", size),  # type: ignore[arg-type]
    )
    return table, run, archive


def test_the_next_batch_is_published_before_the_one_before_commits() -> None:
    table, run, _ = make()
    summary = run.all(timedelta(days=1), NoProgress())
    assert (summary.batches, summary.rows, summary.deleted, summary.verified) == (4, 10, 10, 10)
    assert table.rows == [] and table.cursor is None  # a run that finished starts over
    assert table.log == [
        "a select ['1', '2', '3']",
        "publish 3",
        "confirm 1",
        "a commit ['1', '2', '3']",
        # the first batch ran alone; then two at a time, committed in order
        "a select ['4', '5', '6']",
        "publish 3",
        "b select ['7', '8', '9']",
        "publish 3",
        "confirm 2",
        "a commit ['4', '5', '6']",
        "a select ['10']",
        "publish 1",
        "confirm 3",
        "b commit ['7', '8', '9']",
        "b select []",
        "confirm 4",
        "a commit ['10']",
    ]


def test_a_batch_the_archive_does_not_hold_rolls_back_the_next_one_too() -> None:
    table, run, _ = make(late=2)
    with pytest.raises(ArchiveTimeout, match="did not hold all 3 row events"):
        run.all(timedelta(days=1), NoProgress())
    assert [r[0] for r in table.rows] == [str(i) for i in range(4, 11)]  # only batch 1 went
    assert table.locked == set()
    assert table.cursor == Position("2020-01-01 00:00:03+00", ("3",))  # past committed only
    assert table.log[-3:] == ["confirm 2", "a rollback", "b rollback"]


def test_a_failed_publish_rolls_back_the_batch_waiting_for_the_archive() -> None:
    table, run, _ = make(fail_publish=3)
    with pytest.raises(TransactionAborted):
        run.all(timedelta(days=1), NoProgress())
    assert [r[0] for r in table.rows] == [str(i) for i in range(4, 11)]
    assert table.locked == set()
    assert table.log[-2:] == ["b rollback", "a rollback"]  # its own, then the one before


def test_an_archived_row_that_differs_deletes_nothing_of_either_batch() -> None:
    table, run, archive = make()

    def change(events: list[dict[str, Any]]) -> None:
        if archive.waits == 2:
            events[0]["row"][2]["value"] = "not the row"

    archive.change = change
    with pytest.raises(VerificationFailed, match="1 archived rows do not match"):
        run.all(timedelta(days=1), NoProgress())
    assert [r[0] for r in table.rows] == [str(i) for i in range(4, 11)]
    assert table.locked == set()


def test_the_first_batch_alone_when_the_archive_is_late() -> None:
    table, run, _ = make(late=1)
    with pytest.raises(ArchiveTimeout):
        run.all(timedelta(days=1), NoProgress())
    assert len(table.rows) == 10 and table.locked == set()
    assert table.log == ["a select ['1', '2', '3']", "publish 3", "confirm 1", "a rollback"]


def test_without_a_second_connection_batches_go_one_at_a_time() -> None:
    table, run, _ = make()
    run.ahead = None
    assert run.all(timedelta(days=1), NoProgress()).rows == 10
    selects = [i for i, line in enumerate(table.log) if "select" in line]
    commits = [i for i, line in enumerate(table.log) if "commit" in line]
    assert all(c < s for c, s in zip(commits, selects[1:], strict=False))


def test_the_pace_counts_rows_when_selected_so_a_batch_ahead_does_not_speed_it_up() -> None:
    table, run, _ = make()
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    run.pacer = Pacer(3.0, clock=lambda: clock[0], sleep=sleep)
    assert run.all(timedelta(days=1), NoProgress()).rows == 10
    # batches of 3: the 2nd, 3rd and 4th select wait until 3, 6, 9 rows are within 3 a
    # second, and the last (empty) one until 10 are
    assert run.pacer.slept == pytest.approx(10 / 3)
