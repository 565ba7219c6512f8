"""The operational history in an SQLite file (the default): WAL, so that the processes
of one host write to it side by side while ``headrace metrics`` reads it."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from headrace.history.base import Row, Sample
from headrace.history.errors import HistoryError
from headrace.history.sql import SqlHistory

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS samples ("
    " ts REAL NOT NULL, component TEXT NOT NULL, metric TEXT NOT NULL, value REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS samples_ts ON samples (ts)",
    "CREATE INDEX IF NOT EXISTS samples_component_ts ON samples (component, ts)",
)


class SqliteHistory(SqlHistory):
    marker, bucket = "?", "CAST(ts / {} AS INTEGER)"  # ts > 0: CAST truncates = floor

    def __init__(self, path: Path, *, readonly: bool = False, busy_timeout_s: float = 10.0):
        self.path, self.readonly, self.busy_timeout_s = path, readonly, busy_timeout_s
        self.where = str(path)
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        try:
            if self.readonly:
                if not self.path.is_file():
                    raise HistoryError(f"no operational history at {self.path}: nothing recorded")
                db = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=ro",
                    uri=True,
                    timeout=self.busy_timeout_s,
                    isolation_level=None,
                    check_same_thread=False,
                )
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(
                    self.path,
                    timeout=self.busy_timeout_s,
                    isolation_level=None,  # transactions are begun and committed here
                    check_same_thread=False,  # one thread at a time: the flusher, then close
                )
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")  # a process crash loses no commit
                for statement in SCHEMA:
                    db.execute(statement)
        except (sqlite3.Error, OSError) as exc:
            raise HistoryError(f"cannot open the operational history {self.path}: {exc}") from None
        self._db = db
        return db

    def write(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        db = self._conn()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT INTO samples (ts, component, metric, value) VALUES (?, ?, ?, ?)", rows
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise HistoryError(f"cannot write the operational history {self.path}: {exc}") from None

    def last(self, metric: str, since: float, until: float) -> dict[str, Sample]:
        # SQLite takes the bare columns from the row whose ts is the max
        rows, _ = self._execute(
            "SELECT max(ts), component, metric, value FROM samples"
            " WHERE metric = ? AND ts >= ? AND ts < ? GROUP BY component",
            (metric, since, until),
        )
        return {str(row[1]): Sample(*row) for row in rows}

    def _execute(self, query: str, args: Sequence[object]) -> tuple[list[tuple[Any, ...]], int]:
        try:
            cursor = self._conn().execute(query, tuple(args))
            return cursor.fetchall(), cursor.rowcount
        except sqlite3.Error as exc:
            raise HistoryError(f"cannot read the operational history {self.path}: {exc}") from None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
