"""The load database in one SQLite file: WAL, one writer at a time.

A write is ``BEGIN IMMEDIATE`` (the write lock up front, waiting up to the
busy timeout) and one ``executemany`` per statement. Rows changed are counted
from the cursor (SQLite counts an upsert whose ``WHERE`` refused as no change).
"""

from __future__ import annotations

import fnmatch
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from storage.db import migrations
from storage.db.base import (
    Database,
    DatabaseCapabilities,
    DbStats,
    DeleteMode,
    TopicPartition,
    glob_prefix,
)
from storage.db.errors import (
    ConstraintViolation,
    DatabaseError,
    DatabaseUnavailable,
    LedgerConflict,
)
from storage.db.rows import (
    FILE_COLUMNS,
    RUN_COLUMNS,
    FileRow,
    LedgerEntry,
    RunRow,
    ledger_values,
)

_TRANSIENT = ("locked", "busy", "disk i/o error")
_NEWER = (
    "excluded.event_time_ms > {t}.event_time_ms OR (excluded.event_time_ms = {t}.event_time_ms"
    " AND excluded.source_offset > {t}.source_offset)"
)
# A stored version of the same file at least as new as the incoming one (:named parameters).
_NOT_OLDER = (
    "{t}.project = :project AND {t}.path = :path AND ({t}.event_time_ms > :event_time_ms"
    " OR ({t}.event_time_ms = :event_time_ms AND {t}.source_offset >= :source_offset))"
)
_OLDER = (
    "project = :project AND path = :path AND (event_time_ms < :event_time_ms"
    " OR (event_time_ms = :event_time_ms AND source_offset < :source_offset))"
)


def _upsert(table: str, columns: Sequence[str], key: str, source: str) -> str:
    names = ", ".join(f'"{c}"' for c in (*columns, "updated_at"))
    updates = ", ".join(f'"{c}" = excluded."{c}"' for c in (*columns, "updated_at"))
    return (
        f"INSERT INTO {table} ({names}) {source} ON CONFLICT ({key}) DO UPDATE SET {updates}"
        f" WHERE {_NEWER.format(t=table)}"
    )


# The statements are built from constants (the row classes' field names), never from
# input: hence the S608 exemptions.
_VALUES = ", ".join(f":{c}" for c in (*FILE_COLUMNS, "updated_at"))
UPSERT_FILES = _upsert("files", FILE_COLUMNS, "project, path", f"VALUES ({_VALUES})")
UPSERT_FILES_UNLESS_TOMBSTONE = _upsert(
    "files",
    FILE_COLUMNS,
    "project, path",
    f"SELECT {_VALUES} WHERE NOT EXISTS"  # noqa: S608 - constants only
    f" (SELECT 1 FROM file_tombstones t WHERE {_NOT_OLDER.format(t='t')})",
)
CLEAR_TOMBSTONES = f"DELETE FROM file_tombstones WHERE {_OLDER}"  # noqa: S608 - constants only
ADD_TOMBSTONES = (
    "INSERT INTO file_tombstones (project, path, event_time_ms, source_offset, deleted_at)"  # noqa: S608 - constants only
    " SELECT :project, :path, :event_time_ms, :source_offset, :updated_at WHERE NOT EXISTS"
    f" (SELECT 1 FROM files f WHERE {_NOT_OLDER.format(t='f')})"
    " ON CONFLICT (project, path) DO UPDATE SET event_time_ms = excluded.event_time_ms,"
    " source_offset = excluded.source_offset, deleted_at = excluded.deleted_at"
    f" WHERE {_NEWER.format(t='file_tombstones')}"
)
REMOVE_FILES = f"DELETE FROM files WHERE {_OLDER}"  # noqa: S608 - constants only
_RUN_VALUES = ", ".join(f":{c}" for c in (*RUN_COLUMNS, "updated_at"))
UPSERT_RUNS = _upsert("runs", RUN_COLUMNS, "run_id, kind", f"VALUES ({_RUN_VALUES})")
INSERT_LEDGER = (
    'INSERT INTO load_ledger (group_name, topic, "partition", first_offset, last_offset,'
    " row_count, committed_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_COLS = ", ".join(FILE_COLUMNS)
SELECT_FILES = f"SELECT {_COLS}, updated_at FROM files WHERE project = ?"  # noqa: S608 - constants


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _params(row: FileRow | RunRow, columns: Sequence[str], now: str) -> dict[str, Any]:
    values = {c: getattr(row, c) for c in columns}
    values["updated_at"] = now
    return values


class SqliteDatabase(Database):
    """One connection: for one thread (open one per thread or process)."""

    capabilities = DatabaseCapabilities(name="sqlite", bulk_copy=False, concurrent_writers=False)

    def __init__(
        self,
        path: Path | str,
        *,
        deletes: DeleteMode | str = DeleteMode.MARK,
        busy_timeout_s: float = 5.0,
    ) -> None:
        super().__init__(deletes)
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._where = f"SQLite at {self.path}"
        self._opened: sqlite3.Connection | None = None  # on first use: no I/O here

    @property
    def _conn(self) -> sqlite3.Connection:
        """The connection; the first use makes the file (and its directory) and sets WAL."""
        if self._opened is None:
            with self._errors():
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    self.path,
                    timeout=self.busy_timeout_s,
                    isolation_level=None,
                    check_same_thread=False,
                )
                try:
                    conn.execute("PRAGMA journal_mode=WAL")
                    # In WAL, NORMAL never corrupts; a power loss may undo the last
                    # transactions, rows and ledger entries together, and the loader
                    # replays them.
                    conn.execute("PRAGMA synchronous=NORMAL")
                except BaseException:
                    conn.close()
                    raise
                self._opened = conn
        return self._opened

    # --- errors and transactions -----------------------------------------------------

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.IntegrityError as exc:
            self._rollback()
            reason = str(exc)
            if "load_ledger" in reason and "UNIQUE" in reason:
                raise LedgerConflict(f"ledger entry exists already ({reason})") from None
            raise ConstraintViolation(reason) from None
        except OverflowError as exc:  # a Python int beyond INTEGER
            self._rollback()
            raise ConstraintViolation(f"a number out of range: {exc}") from None
        except (sqlite3.OperationalError, OSError) as exc:
            self._rollback()
            if isinstance(exc, OSError) or any(t in str(exc).lower() for t in _TRANSIENT):
                raise DatabaseUnavailable(self._where, str(exc)) from None
            raise DatabaseError(f"{self._where}: {exc}") from None
        except sqlite3.Error as exc:
            self._rollback()
            raise DatabaseError(f"{self._where}: {exc}") from None
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        conn = self._opened
        if conn is not None and conn.in_transaction:
            conn.rollback()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._errors():
            self._conn.execute("BEGIN IMMEDIATE")
            yield self._conn
            self._conn.execute("COMMIT")

    # --- the contract --------------------------------------------------------------

    def _applied(self) -> set[int]:
        found = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        ).fetchone()
        if found is None:
            return set()
        return {v for (v,) in self._conn.execute("SELECT version FROM schema_migrations")}

    def migrate(self, target: int | None = None) -> list[int]:
        done: list[int] = []
        with self._errors():
            todo = migrations.wanted(self._applied(), target)
        for migration in todo:
            with self._transaction() as conn:
                conn.execute(migrations.BOOTSTRAP_SQLITE)
                if migration.version in self._applied():  # another process was first
                    continue
                for statement in migration.sqlite:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, description, applied_at)"
                    " VALUES (?, ?, ?)",
                    (migration.version, migration.description, _now()),
                )
            done.append(migration.version)
        return done

    def _write(
        self, files: list[FileRow], runs: list[RunRow], ledger: Sequence[LedgerEntry]
    ) -> tuple[int, int]:
        now = _now()
        with self._transaction() as conn:
            written = self._write_files(conn, files, now)
            runs_written = conn.executemany(
                UPSERT_RUNS, [_params(r, RUN_COLUMNS, now) for r in runs]
            ).rowcount
            conn.executemany(
                INSERT_LEDGER,
                [(*ledger_values(e), now) for e in ledger],
            )
        return written, max(runs_written, 0)

    def _replace(self, files: list[FileRow], absent: list[tuple[str, str]]) -> int:
        keys = [(f.project, f.path) for f in files] + absent
        with self._transaction() as conn:
            conn.executemany("DELETE FROM files WHERE project = ? AND path = ?", keys)
            if self.deletes is DeleteMode.REMOVE:
                conn.executemany("DELETE FROM file_tombstones WHERE project = ? AND path = ?", keys)
            return self._write_files(conn, files, _now())

    def _write_files(self, conn: sqlite3.Connection, files: list[FileRow], now: str) -> int:
        params = [_params(f, FILE_COLUMNS, now) for f in files]
        if self.deletes is DeleteMode.MARK:
            return max(conn.executemany(UPSERT_FILES, params).rowcount, 0)
        upserts = [p for p in params if not p["deleted"]]
        deletes = [p for p in params if p["deleted"]]
        written = conn.executemany(UPSERT_FILES_UNLESS_TOMBSTONE, upserts).rowcount
        conn.executemany(CLEAR_TOMBSTONES, upserts)
        removed = conn.executemany(ADD_TOMBSTONES, deletes).rowcount
        conn.executemany(REMOVE_FILES, deletes)
        return max(written, 0) + max(removed, 0)

    def positions(
        self, group: str, topic_partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]:
        found = {}
        with self._errors():
            for topic, partition in topic_partitions:
                (last,) = self._conn.execute(
                    "SELECT max(last_offset) FROM load_ledger"
                    ' WHERE group_name = ? AND topic = ? AND "partition" = ?',
                    (group, topic, partition),
                ).fetchone()
                if last is not None:
                    found[(topic, partition)] = last + 1
        return found

    def stats(self) -> DbStats:
        one = self._one
        with self._errors():
            files, deleted, projects = self._conn.execute(
                "SELECT coalesce(sum(deleted = 0), 0), coalesce(sum(deleted = 1), 0),"
                " count(DISTINCT CASE WHEN deleted = 0 THEN project END) FROM files"
            ).fetchone()
            by_strategy = dict(
                self._conn.execute(
                    "SELECT coalesce(content_strategy, 'NONE'), count(*) FROM files"
                    " WHERE deleted = 0 GROUP BY 1 ORDER BY 1"
                ).fetchall()
            )
            ledger_rows, last = self._conn.execute(
                "SELECT count(*), max(committed_at) FROM load_ledger"
            ).fetchone()
            return DbStats(
                backend=self.capabilities.name,
                schema_version=one("SELECT coalesce(max(version), 0) FROM schema_migrations"),
                files=files,
                deleted=deleted,
                tombstones=one("SELECT count(*) FROM file_tombstones"),
                by_strategy=by_strategy,
                runs=one("SELECT count(*) FROM runs"),
                projects=projects,
                ledger_rows=ledger_rows,
                last_committed_at=datetime.fromisoformat(last) if last else None,
                size_bytes=one(
                    "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"
                ),
            )

    def _one(self, sql: str) -> int:
        (value,) = self._conn.execute(sql).fetchone()
        return int(value)

    def query(
        self,
        project: str,
        path_glob: str | None = None,
        include_deleted: bool = False,
        limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        sql, args = SELECT_FILES, [project]
        if not include_deleted:
            sql += " AND deleted = 0"
        prefix = glob_prefix(path_glob) if path_glob is not None else ""
        if prefix:  # GLOB with no wildcard inside the prefix: an index range, case-sensitive
            sql += " AND path GLOB ?"
            args.append(prefix + "*")
        sql += " ORDER BY path"
        if limit is not None and path_glob is None:
            sql += f" LIMIT {int(limit)}"
        count = 0
        with self._errors():
            cursor = self._conn.execute(sql, args)
        names = [*FILE_COLUMNS, "updated_at"]
        for values in cursor:
            row = dict(zip(names, values, strict=True))
            if path_glob is not None and not fnmatch.fnmatchcase(row["path"], path_glob):
                continue
            row["deleted"] = bool(row["deleted"])
            row["updated_at"] = datetime.fromisoformat(row["updated_at"])
            yield row
            count += 1
            if count == limit:
                return

    def close(self) -> None:
        if self._opened is not None:
            self._opened.close()
            self._opened = None
