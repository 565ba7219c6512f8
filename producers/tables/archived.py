"""The archived rows of one table, read back for ``headrace restore-table``.

:func:`read_archived` streams every day of the row-events topic (local, object-store
and cold days alike, ``storage.archive.read``); a line without the table's name as
orjson writes it (``"table":"events"``) is skipped undecoded, and the events of other
sources, schemas or tables after decoding. :class:`Collector` then keeps, per key, the
row to restore:

- each event's row is checked against its checksum (``rows.checksum``) and its key
  against the row's own columns: an event that fails either (a duplicate too) is
  counted in ``bad_checksums`` and never restored;
- good events with one ``event_id`` (a retried batch) collapse into one
  (``duplicates``);
- a key archived with several rows (deleted, re-inserted and archived again) is
  restored as its latest archived version, by (event time, partition, offset), and
  counted in ``versions``.

Everything chosen is held in memory, one row per key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from headrace.settings import Settings
from producers.tables import rows
from producers.tables.catalog import TableRef
from schemas.models import Column
from storage.archive import ColdStore, open_backend, read
from storage.objectstore import open_storage

Key = tuple[tuple[str, str | None], ...]  # the archived key: (column name, text form)...
Place = tuple[int, int, int]  # (event_time_ms, partition, offset): later is greater


@dataclass(frozen=True)
class ArchivedRow:
    """One row to restore: the latest archived version of its key."""

    key: Key
    row: tuple[Column, ...]
    place: Place
    event_id: str


@dataclass(frozen=True)
class Collected:
    """What the archive holds of a table, and how much of it is restorable."""

    rows: tuple[ArchivedRow, ...]  # one per key, in the order the keys were first read
    events: int = 0  # archived events of the table read (bad ones included)
    duplicates: int = 0  # events whose event_id was read before
    versions: int = 0  # keys archived with more than one row
    bad_checksums: int = 0  # events whose row does not match its checksum or key
    first_bad: tuple[str, ...] = ()  # the event ids of the first few bad ones


class Collector:
    """Adds archived events one by one (:meth:`add`); :meth:`result` is the choice."""

    SHOWN = 5

    def __init__(self) -> None:
        self._latest: dict[Key, ArchivedRow] = {}
        self._ids: set[str] = set()
        self._several: set[Key] = set()
        self._events = self._duplicates = self._bad = 0
        self._first_bad: list[str] = []

    def add(self, event: dict[str, Any], place: Place) -> None:
        self._events += 1
        event_id = str(event.get("event_id"))
        found = verified(event)
        if found is None:
            self._bad += 1
            if len(self._first_bad) < self.SHOWN:
                self._first_bad.append(event_id)
            return
        if event_id in self._ids:
            self._duplicates += 1
            return
        self._ids.add(event_id)
        key, row = found
        kept = self._latest.get(key)
        if kept is not None:
            self._several.add(key)
            if kept.place >= place:
                return
        self._latest[key] = ArchivedRow(key, row, place, event_id)

    def result(self) -> Collected:
        return Collected(
            tuple(self._latest.values()),
            self._events,
            self._duplicates,
            len(self._several),
            self._bad,
            tuple(self._first_bad),
        )


def verified(event: dict[str, Any]) -> tuple[Key, tuple[Column, ...]] | None:
    """The event's (key, row) if its row matches its checksum and its key the row; else None."""
    try:
        row = tuple(Column.model_validate(c) for c in event.get("row") or ())
        key = tuple(Column.model_validate(c) for c in event.get("key") or ())
    except ValidationError:
        return None
    if not row or not key or event.get("checksum") != rows.checksum(row):
        return None
    values = {c.name: c for c in row}
    if any(values.get(k.name) != k for k in key):
        return None
    return tuple((k.name, k.value) for k in key), row


def read_archived(settings: Settings, source_name: str, ref: TableRef) -> Collected:
    """The archived rows of ``source_name``'s table ``ref``, from every day of the topic."""
    topic = settings.kafka.topics.row_events
    backend = open_backend(settings.archive, settings.object_store)
    collector = Collector()
    if topic not in backend.topics():
        return collector.result()
    wanted = {"source": source_name, "schema": ref.schema, "table": ref.table}

    def mine(event: dict[str, Any]) -> bool:
        return all(event.get(field) == value for field, value in wanted.items())

    cold = ColdStore(open_storage(settings.object_store, settings.archive.cold_bucket))
    needle = b'"table":' + orjson.dumps(ref.table)
    for line in read(backend, topic=topic, predicate=mine, cold=cold, contains=needle):
        collector.add(line.event, (line.event_time_ms, line.partition, line.offset))
    return collector.result()
