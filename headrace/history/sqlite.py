"""The operational history in an SQLite file (the default): WAL, so that the processes
of one host write to it side by side while ``headrace metrics`` reads it."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from headrace.history.base import Bucket, Component, HistoryStore, Row, Sample
from headrace.history.errors import HistoryError

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS samples ("
    " ts REAL NOT NULL, component TEXT NOT NULL, metric TEXT NOT NULL, value REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS samples_ts ON samples (ts)",
    "CREATE INDEX IF NOT EXISTS samples_component_ts ON samples (component, ts)",
)


class SqliteHistory(HistoryStore):
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

    def delete_before(self, ts: float) -> int:
        return self._query("DELETE FROM samples WHERE ts < ?", (ts,)).rowcount

    def samples(self, since: float, until: float, component: str | None) -> list[Sample]:
        where, args = _where(since, until, component)
        found = self._query(
            f"SELECT ts, component, metric, value FROM samples WHERE {where}"  # noqa: S608 - no input in it
            " ORDER BY ts, component, metric",
            args,
        )
        return [Sample(*row) for row in found]

    def buckets(
        self, since: float, until: float, component: str | None, width_s: float | None
    ) -> list[Bucket]:
        where, args = _where(since, until, component)
        index = "0" if width_s is None else "CAST(ts / ? AS INTEGER)"
        found = self._query(
            f"SELECT {index} AS b, component, metric, count(*), min(value), max(value),"  # noqa: S608
            f" sum(value) FROM samples WHERE {where}"
            " GROUP BY b, component, metric ORDER BY component, metric, b",
            (() if width_s is None else (width_s,)) + args,
        )
        return [
            Bucket(since if width_s is None else b * width_s, c, m, n, lo, hi, total)
            for b, c, m, n, lo, hi, total in found
        ]

    def last(self, metric: str, since: float, until: float) -> dict[str, Sample]:
        # SQLite takes the bare columns from the row whose ts is the max
        found = self._query(
            "SELECT max(ts), component, metric, value FROM samples"
            " WHERE metric = ? AND ts >= ? AND ts < ? GROUP BY component",
            (metric, since, until),
        )
        return {row[1]: Sample(*row) for row in found}

    def components(self) -> list[Component]:
        found = self._query(
            "SELECT component, min(ts), max(ts), count(*) FROM samples"
            " GROUP BY component ORDER BY component",
            (),
        )
        return [Component(*row) for row in found]

    def _query(self, sql: str, args: tuple[object, ...]) -> sqlite3.Cursor:
        try:
            return self._conn().execute(sql, args)
        except sqlite3.Error as exc:
            raise HistoryError(f"cannot read the operational history {self.path}: {exc}") from None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _where(since: float, until: float, component: str | None) -> tuple[str, tuple[object, ...]]:
    if component is None:
        return "ts >= ? AND ts < ?", (since, until)
    return "component = ? AND ts >= ? AND ts < ?", (component, since, until)
