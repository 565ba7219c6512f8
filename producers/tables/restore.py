"""``headrace restore-table``: write a table's archived rows back into it (or ``--into``).

::

    check the target: its columns, primary key (and timestamp column for --since/--until)
    read the archive: every day of the row-events topic, this source's table only;
                      checksums verified, duplicates collapsed, the latest version per key
    check the fit:    every archived column is a target column of the same type
    write:            one transaction (producers.tables.target): copy, read back,
                      INSERT ... ON CONFLICT (pk) DO NOTHING, compare the keys present

Idempotent: a key already in the table is never written; its row is ``present`` (every
restored column's text form the same) or ``differ`` (left as it is, counted, the first
keys named). Restoring twice inserts nothing the second time. :attr:`RestoreSummary.clean`
is false when a row differs or an archived event failed its checksum: the CLI exits 3.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from headrace.settings import Settings, SourceSettings
from producers.errors import RestoreRefused
from producers.tables.archived import Collected, read_archived
from producers.tables.catalog import TableRef, choose_timestamp_column
from producers.tables.source import Limits
from producers.tables.target import RestoreTarget, Values, Window, Written
from schemas.models import Column


@dataclass(frozen=True)
class RestoreRequest:
    """What to restore: one source's archived table, into itself or ``into``."""

    source_name: str  # the name the rows were archived under (--source, or host:port/database)
    source: SourceSettings
    table: TableRef
    into: TableRef | None = None
    since: str | None = None  # ISO timestamp or date: timestamp column >= since
    until: str | None = None  # timestamp column < until
    timestamp_column: str | None = None
    dry_run: bool = False

    @property
    def target(self) -> TableRef:
        return self.into or self.table


@dataclass(frozen=True)
class RestoreSummary:
    table: TableRef
    target: TableRef
    archived: Collected = field(default_factory=lambda: Collected(()))
    written: Written = field(default_factory=Written)
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def clean(self) -> bool:
        """No row differs from the table's and no archived event failed its checksum."""
        return self.written.differ == 0 and self.archived.bad_checksums == 0

    def to_json(self) -> dict[str, Any]:
        a, w = self.archived, self.written
        return {
            "table": str(self.table),
            "target": str(self.target),
            "events": a.events,
            "duplicates": a.duplicates,
            "bad_checksums": a.bad_checksums,
            "bad_events": list(a.first_bad),
            "versions": a.versions,
            "rows": w.rows,
            "outside": w.outside,
            "inserted": w.inserted,
            "present": w.present,
            "differ": w.differ,
            "differ_keys": [list(k) for k in w.differ_keys],
            "seconds": round(self.seconds, 3),
            "dry_run": self.dry_run,
        }


def restore_table(settings: Settings, request: RestoreRequest) -> RestoreSummary:
    """Restore the request's archived rows (module docstring)."""
    started = time.monotonic()
    limits = Limits.from_settings(settings.tables)
    target = RestoreTarget(request.source, request.source_name, request.target, limits)
    with target:
        window = None
        if request.since or request.until or request.timestamp_column:
            column = choose_timestamp_column(
                request.target, target.columns, request.timestamp_column
            )
            window = Window(column, request.since, request.until)
        archived = read_archived(settings, request.source_name, request.table)
        found = [r.row for r in archived.rows]
        names = fit(request.target, target.columns, target.key, found, window)
        written = Written()
        if found:
            values = [aligned(names, row) for row in found]
            written = target.write(names, values, window, dry_run=request.dry_run)
    seconds = time.monotonic() - started
    return RestoreSummary(
        request.table, request.target, archived, written, seconds, request.dry_run
    )


def fit(
    target: TableRef,
    columns: Sequence[Column],
    key: Sequence[str],
    found: Iterable[Sequence[Column]],
    window: Window | None = None,
) -> list[str]:
    """The target's columns the archived rows have, in the target's order; a one-line
    RestoreRefused if an archived column is missing from the target or of another type,
    or if the target's primary key (or the timestamp column) is not archived."""
    types = {c.name: c.type for c in columns}
    shapes = {tuple((c.name, c.type) for c in row) for row in found}
    archived: set[str] = set()
    for shape in sorted(shapes):
        for name, type_ in shape:
            if name not in types:
                raise RestoreRefused(
                    f"{target} has no column {name!r} (archived as {type_}): nothing was written"
                )
            if types[name] != type_:
                raise RestoreRefused(
                    f"{target}.{name} is {types[name]} but was archived as {type_}:"
                    " nothing was written"
                )
            archived.add(name)
    if shapes:
        needed = [*key, *([window.column] if window is not None else [])]
        for name in needed:
            if name not in archived:
                raise RestoreRefused(
                    f"{target}.{name} is not a column of the archived rows: nothing was written"
                )
    return [c.name for c in columns if c.name in archived]


def aligned(names: Sequence[str], row: Sequence[Column]) -> Values:
    """The row's text forms in the order of ``names``; None (NULL) for a column it lacks."""
    by_name = {c.name: c.value for c in row}
    return [by_name.get(name) for name in names]
