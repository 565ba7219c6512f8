"""Where the table archiver got to in each (source, table): its keyset cursor, kept durably.

A cursor is the (timestamp, primary key...) of the last row of the last batch
that **committed** (its rows archived and deleted), in PostgreSQL's text forms
(``producers.tables.rows``). A run that was interrupted continues after it;
a run that found nothing more to archive clears it, so the next run starts from
the beginning again (rows skipped because another archiver held them locked, or
old rows inserted later, are found then). The cursor only saves rescanning: it
never decides what is archived, the row locks and the DELETE do.

Layout under ``tables.state_dir`` (``.headrace/tables/`` by default): one JSON
file per (source, schema, table), named by a hash of the three (a table name may
hold any character, ``/`` and ``..`` included), replaced atomically
(``producers.runs.write_atomically``)::

    {"source": "orders-db", "schema": "public", "table": "events",
     "timestamp_column": "created_at", "primary_key": ["id"],
     "after": {"timestamp": "2024-01-01 00:00:00+00", "key": ["42"]}}
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from producers.runs import write_atomically

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Position:
    """A row's place in (timestamp column, primary key...) order, as text forms."""

    timestamp: str
    key: tuple[str, ...]


@dataclass(frozen=True)
class Cursor:
    """A table's cursor, with the ordering it was taken in (a changed key voids it)."""

    timestamp_column: str
    primary_key: tuple[str, ...]
    after: Position


class CursorStore:
    """The cursors of every (source, table) under one directory; no I/O until used."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def path(self, source: str, schema: str, table: str) -> Path:
        name = json.dumps([source, schema, table]).encode()
        return self.state_dir / f"cursor-{hashlib.sha256(name).hexdigest()[:32]}.json"

    def load(self, source: str, schema: str, table: str) -> Cursor | None:
        path = self.path(source, schema, table)
        try:
            data = json.loads(path.read_text())
            after = data["after"]
            return Cursor(
                timestamp_column=str(data["timestamp_column"]),
                primary_key=tuple(str(c) for c in data["primary_key"]),
                after=Position(str(after["timestamp"]), tuple(str(v) for v in after["key"])),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Only an optimisation is lost: the run starts from the beginning.
            log.warning("ignoring the unreadable table cursor %s: %s", path, exc)
            return None

    def save(self, source: str, schema: str, table: str, cursor: Cursor) -> None:
        data = {
            "source": source,
            "schema": schema,
            "table": table,
            "timestamp_column": cursor.timestamp_column,
            "primary_key": list(cursor.primary_key),
            "after": {"timestamp": cursor.after.timestamp, "key": list(cursor.after.key)},
        }
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.path(source, schema, table)
        write_atomically(path, json.dumps(data, ensure_ascii=False, indent=1).encode())

    def clear(self, source: str, schema: str, table: str) -> None:
        self.path(source, schema, table).unlink(missing_ok=True)
