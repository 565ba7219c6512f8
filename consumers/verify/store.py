"""The sides of one run on disk: compact rows in SQLite, read back sorted by path.

``verify run`` holds no side in memory. Each side is streamed into a table of its
own SQLite file (one file a side, so a child process can write one while this
process writes another), indexed once written, and read back in path order (byte
order, as both databases sort ``query``) for the checks to merge, one path at a
time. Every file's page cache is bounded (``CACHE_KIB``) and sorts spill to
temporary files, so memory does not grow with the run. The files are scratch:
no journal, no fsync; the caller removes the directory.

A store without a directory keeps its tables in memory (small sides: tests).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

CACHE_KIB = 16 * 1024  # a file's page cache
BATCH = 10_000  # rows a write

# A side's table is appended to as it is read (``raw_*``, in reading order), then copied
# once, sorted, into a table clustered on its key, and what the checks read of it is
# derived once (``firsts``, ``newest``): every later read is a scan in key order, or
# lookups that walk it forward.
_COLUMNS = {
    # a file event of the run, seq: its reading order
    "versions": "path TEXT NOT NULL, seq INTEGER NOT NULL, event_id TEXT NOT NULL,"
    " op TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL, strategy TEXT NOT NULL,"
    " time_ms INTEGER NOT NULL, PRIMARY KEY (path, seq)",
    # the first version of each path
    "firsts": "path TEXT NOT NULL PRIMARY KEY, event_id TEXT NOT NULL, op TEXT NOT NULL,"
    " sha256 TEXT NOT NULL, size INTEGER NOT NULL, strategy TEXT NOT NULL,"
    " time_ms INTEGER NOT NULL",
    # a verification of one of its events
    "outcomes": "event_id TEXT NOT NULL, millis INTEGER NOT NULL, seq INTEGER NOT NULL,"
    " status TEXT NOT NULL, detail TEXT, PRIMARY KEY (event_id, millis, seq)",
    # the newest verification of each event, as its _KEY
    "newest": "event_id TEXT NOT NULL PRIMARY KEY, found TEXT NOT NULL",
    # a file of the source now, the last one said winning
    "source": "path TEXT NOT NULL PRIMARY KEY, sha256 TEXT NOT NULL, strategy TEXT NOT NULL",
    # a row of the project in the database
    "rows": "path TEXT NOT NULL PRIMARY KEY, event_id TEXT, run_id TEXT, sha256 TEXT,"
    " size INTEGER, time_ms INTEGER, deleted INTEGER",
}
_DIRECT = {"source": 3, "rows": 7}  # tables written as they come (in key order, or near)
_RAW = {  # the others: (columns appended, columns of the sorted copy, its order)
    "versions": (
        "path, event_id, op, sha256, size, strategy, time_ms",
        "path, rowid, event_id, op, sha256, size, strategy, time_ms",
        "path, rowid",
    ),
    "outcomes": (
        "event_id, millis, status, detail",
        "event_id, millis, rowid, status, detail",
        "event_id, millis, rowid",
    ),
}
# A verification as one string whose order is that of (millis, status, detail): the
# newest is the max(); a NULL detail reads as "", which the checks take alike.
_KEY = "printf('%020d', millis) || char(31) || status || char(31) || ifnull(detail, '')"
_DERIVED = {
    "versions": "INSERT INTO {s}.firsts SELECT path, event_id, op, sha256, size, strategy,"
    " time_ms FROM (SELECT *, min(seq) FROM {s}.versions GROUP BY path)",
    # SQLite takes the bare columns of a min() aggregate from the row of the minimum
    "outcomes": "INSERT INTO {s}.newest SELECT event_id, max(" + _KEY + ")"  # noqa: S608
    " FROM {s}.outcomes GROUP BY event_id",
}

Row = tuple[Any, ...]


def connect(target: str) -> sqlite3.Connection:
    """A connection for scratch files: no journal, no fsync, a bounded cache."""
    db = sqlite3.connect(target, isolation_level=None)
    db.execute("PRAGMA temp_store = FILE")
    _scratch(db, "main")
    return db


def _scratch(db: sqlite3.Connection, schema: str) -> None:
    for pragma in ("journal_mode = OFF", "synchronous = OFF", f"cache_size = -{CACHE_KIB}"):
        db.execute(f"PRAGMA {schema}.{pragma}")


def _create(db: sqlite3.Connection, schema: str, table: str) -> None:
    db.execute(f"CREATE TABLE IF NOT EXISTS {schema}.{table} ({_COLUMNS[table]}) WITHOUT ROWID")


class Writer:
    """Rows appended to one table, in batches of ``BATCH``; sorted by its key when closed."""

    def __init__(self, db: sqlite3.Connection, schema: str, table: str) -> None:
        self._db, self._schema, self._table = db, schema, table
        if table in _DIRECT:
            _create(db, schema, table)
            marks = ", ".join("?" * _DIRECT[table])
            self._sql = f"INSERT OR REPLACE INTO {schema}.{table} VALUES ({marks})"  # noqa: S608
        else:
            columns = _RAW[table][0]
            db.execute(f"CREATE TABLE {schema}.raw_{table} ({columns})")
            marks = ", ".join("?" * len(columns.split(",")))
            self._sql = f"INSERT INTO {schema}.raw_{table} VALUES ({marks})"  # noqa: S608
        self._batch: list[Row] = []
        self.rows = 0

    def add(self, row: Row) -> None:
        self._batch.append(row)
        if len(self._batch) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._batch:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(self._sql, self._batch)
            self.rows += len(self._batch)
            self._batch.clear()

    def close(self) -> None:
        self._flush()
        if self._table in _DIRECT:
            return
        s, t = self._schema, self._table
        _columns, picked, order = _RAW[t]
        for table in _COLUMNS:
            _create(self._db, s, table)
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                f"INSERT INTO {s}.{t} SELECT {picked} FROM {s}.raw_{t} ORDER BY {order}"  # noqa: S608
            )
            self._db.execute(f"DROP TABLE {s}.raw_{t}")
            self._db.execute(_DERIVED[t].format(s=s))
            if s == "archived" and t == "versions":  # for newest(): a walk by event id
                self._db.execute(
                    f"CREATE INDEX {s}.firsts_event ON firsts (event_id, op, strategy)"
                )


def write_file(path: Path, table: str) -> tuple[sqlite3.Connection, Writer]:
    """A writer of ``table`` into a file of its own (in a child process); close both."""
    db = connect(str(path))
    return db, Writer(db, "main", table)


class Store:
    """The run's sides, each a schema: ``archived``, ``published``, ``archived_outcomes``,
    ``published_outcomes``, ``source``. A side written here is opened with :meth:`writer`;
    one written by another process (in its file, :meth:`file`) with :meth:`attach`."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self._db = connect(":memory:")
        self._sides: set[str] = set()

    def file(self, side: str) -> Path:
        if self.directory is None:
            raise ValueError("an in-memory store has no files")
        return self.directory / f"{side}.sqlite3"

    def attach(self, side: str) -> None:
        if side in self._sides:
            return
        target = ":memory:" if self.directory is None else str(self.file(side))
        self._db.execute("ATTACH DATABASE ? AS " + side, (target,))
        _scratch(self._db, side)
        for table in _COLUMNS:  # a side nobody wrote reads as empty
            _create(self._db, side, table)
        self._sides.add(side)

    def writer(self, side: str, table: str) -> Writer:
        self.attach(side)
        return Writer(self._db, side, table)

    def fill(self, side: str, table: str, rows: Iterable[Row]) -> None:
        """A side written from ``rows`` (one kept in memory: tests)."""
        writer = self.writer(side, table)
        for row in rows:
            writer.add(row)
        writer.close()

    def close(self) -> None:
        self._db.close()

    # --- reading back, in path order ----------------------------------------------------

    def count(self, side: str) -> int:
        self.attach(side)
        (n,) = self._db.execute(f"SELECT count(*) FROM {side}.versions").fetchone()  # noqa: S608
        return int(n)

    def firsts(self, side: str) -> Iterator[Row]:
        """The first version of each path of a side, by path: (path, event_id, op, sha256,
        size, strategy, time_ms)."""
        self.attach(side)
        return self._db.execute(f"SELECT * FROM {side}.firsts ORDER BY path")  # noqa: S608

    def counts(self, side: str) -> list[tuple[str, str, int]]:
        """(op, strategy, files) of the first versions of a side's paths."""
        self.attach(side)
        sql = f"SELECT op, strategy, count(*) FROM {side}.firsts GROUP BY 1, 2"  # noqa: S608
        return self._db.execute(sql).fetchall()

    def upserts(self, side: str) -> Iterator[tuple[str, str]]:
        """(path, sha256) of the paths whose first version is an upsert, by path."""
        self.attach(side)
        return self._db.execute(
            f"SELECT path, sha256 FROM {side}.firsts WHERE op = 'UPSERT' ORDER BY path"  # noqa: S608
        )

    def duplicates(self, side: str) -> Iterator[tuple[str, str, int]]:
        """(path, event_id, times) of each event a side holds more than once, by path and
        then by first reading."""
        self.attach(side)
        return self._db.execute(
            f"SELECT path, event_id, count(*) FROM {side}.versions WHERE path IN ("  # noqa: S608
            f"  SELECT path FROM {side}.versions GROUP BY path HAVING count(*) > 1"
            ") GROUP BY path, event_id HAVING count(*) > 1 ORDER BY path, min(seq)"
        )

    def only_in(self, side: str, other: str) -> Iterator[tuple[str, str]]:
        """(path, first event_id) of a side's paths that ``other`` does not hold, by path."""
        self.attach(side)
        self.attach(other)
        return self._db.execute(
            f"SELECT f.path, f.event_id FROM {side}.firsts AS f WHERE NOT EXISTS ("  # noqa: S608
            f" SELECT 1 FROM {other}.firsts AS o WHERE o.path = f.path) ORDER BY f.path"
        )

    def adopt_missing(self, side: str, into: str) -> int:
        """Add to ``into``'s first versions the paths only ``side`` holds (the run's files
        for the later checks: a file the archive lost but Kafka holds is checked against
        the database and the verifications as Kafka has it); how many."""
        self.attach(side)
        self.attach(into)
        with self._db:
            cursor = self._db.execute(
                f"INSERT INTO {into}.firsts SELECT * FROM {side}.firsts AS f"  # noqa: S608
                f" WHERE NOT EXISTS (SELECT 1 FROM {into}.firsts AS o WHERE o.path = f.path)"
            )
        return cursor.rowcount

    # The database's rows against the archived first versions. A row of the run's own
    # version with its sha256 and size (nearly all) is counted here; the others are
    # returned, for the checks to name.
    _SAME = (
        "r.event_id IS f.event_id AND f.op IS NOT 'DELETE' AND r.sha256 IS f.sha256"
        " AND r.size IS f.size"
    )
    _JOINED = "archived.firsts AS f JOIN loaded.rows AS r ON r.path = f.path"

    def rows_counted(self) -> list[tuple[str, int]]:
        """(strategy, rows) of the rows that are the archived version itself."""
        self.attach("loaded")
        sql = f"SELECT f.strategy, count(*) FROM {self._JOINED} WHERE {self._SAME} GROUP BY 1"  # noqa: S608
        return self._db.execute(sql).fetchall()

    def rows_to_check(self) -> Iterator[Row]:
        """(path, row's event_id, run_id, sha256, size, time_ms, deleted, then the archived
        first version's event_id, op, sha256, size, strategy, time_ms) of the other rows,
        by path."""
        self.attach("loaded")
        return self._db.execute(
            "SELECT f.path, r.event_id, r.run_id, r.sha256, r.size, r.time_ms, r.deleted,"  # noqa: S608
            " f.event_id, f.op, f.sha256, f.size, f.strategy, f.time_ms"
            f" FROM {self._JOINED} WHERE NOT ({self._SAME}) ORDER BY f.path"
        )

    def rows_of_run_only(self, run_id: str) -> Iterator[tuple[str]]:
        """Paths of rows of ``run_id`` that the archive does not hold, by path."""
        self.attach("loaded")
        self.attach("archived")
        return self._db.execute(
            "SELECT r.path FROM loaded.rows AS r WHERE r.run_id = ? AND NOT EXISTS ("
            " SELECT 1 FROM archived.firsts AS a WHERE a.path = r.path) ORDER BY r.path",
            (run_id,),
        )

    def not_loaded(self) -> Iterator[tuple[str, str, str]]:
        """(path, event_id, op) of the archived first versions without a row, by path."""
        self.attach("loaded")
        return self._db.execute(
            "SELECT f.path, f.event_id, f.op FROM archived.firsts AS f WHERE NOT EXISTS ("
            " SELECT 1 FROM loaded.rows AS r WHERE r.path = f.path) ORDER BY f.path"
        )

    def newest(self) -> Iterator[Row]:
        """The archived first version of each path as (path, event_id, op, strategy,
        status, detail) with the newest verification of its event (by time, then status
        and detail), or None, None: of the archive's verifications and those of the topic
        the archive does not hold (the same event at the same time is one). In the order
        of the event ids (a walk along both tables), not by path."""
        for side in ("archived", "archived_outcomes", "published_outcomes"):
            self.attach(side)
        newest = self._newest()
        rows = self._db.execute(
            "SELECT f.path, f.event_id, f.op, f.strategy, n.found"  # noqa: S608 - constants
            " FROM archived.firsts AS f INDEXED BY firsts_event"
            f" LEFT JOIN {newest} AS n ON n.event_id = f.event_id ORDER BY f.event_id"
        )
        for path, event_id, op, strategy, found in rows:
            if found is None:
                yield path, event_id, op, strategy, None, None
            else:
                _when, status, detail = found.split("\x1f", 2)
                yield path, event_id, op, strategy, status, detail or None

    def _newest(self) -> str:
        """The table of each event's newest verification: one side's when the other has
        none (nearly always), else both's, made here."""
        (archived,) = self._db.execute("SELECT count(*) FROM archived_outcomes.newest").fetchone()
        if not archived:
            return "published_outcomes.newest"
        (kafka,) = self._db.execute("SELECT count(*) FROM published_outcomes.newest").fetchone()
        if not kafka:
            return "archived_outcomes.newest"
        self._db.executescript(
            f"""
            DROP TABLE IF EXISTS temp.newest;
            CREATE TEMP TABLE newest ({_COLUMNS["newest"]}) WITHOUT ROWID;
            INSERT INTO temp.newest SELECT event_id, max(found) FROM (
                SELECT event_id, {_KEY} AS found FROM archived_outcomes.outcomes
                UNION ALL
                SELECT k.event_id, {_KEY} FROM published_outcomes.outcomes AS k
                WHERE NOT EXISTS (
                    SELECT 1 FROM archived_outcomes.outcomes AS a
                    WHERE a.event_id = k.event_id AND a.millis = k.millis
                )
            ) GROUP BY event_id;
            """  # noqa: S608 - constants only
        )
        return "temp.newest"

    def source(self) -> Iterator[Row]:
        """The source's files, (path, sha256, strategy), by path."""
        self.attach("source")
        return self._db.execute("SELECT path, sha256, strategy FROM source.source ORDER BY path")


def merge(
    left: Iterable[tuple[str, Any]], right: Iterable[tuple[str, Any]]
) -> Iterator[tuple[str, Any, Any]]:
    """Two streams of (key, value), each sorted by unique keys: every key once, with
    each side's value or None. ValueError if a stream is out of order."""
    lefts, rights = iter(left), iter(right)
    a, b = next(lefts, None), next(rights, None)
    last: str | None = None
    while a is not None or b is not None:
        if a is not None and (b is None or a[0] < b[0]):
            key, pair = a[0], (a[1], None)
            a = next(lefts, None)
        elif b is not None and (a is None or b[0] < a[0]):
            key, pair = b[0], (None, b[1])
            b = next(rights, None)
        elif a is not None and b is not None:
            key, pair = a[0], (a[1], b[1])
            a, b = next(lefts, None), next(rights, None)
        if last is not None and key <= last:
            raise ValueError(f"not in path order: {key!r} after {last!r}")
        last = key
        yield key, pair[0], pair[1]
