"""The load database in PostgreSQL: binary COPY into a staging table, then one
``INSERT ... SELECT ... ON CONFLICT`` per batch.

The staging table is a temporary table made once per connection and emptied
at each commit (``ON COMMIT DELETE ROWS``), so a batch costs no catalog
changes. The connection is in autocommit mode and every call runs in its own
``conn.transaction()``, which rolls back on any error; a connection that
broke is replaced on the next call. ``schema`` puts every table in that
schema (``search_path``), created by :meth:`migrate` if it is missing.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC
from operator import attrgetter
from typing import Any

import psycopg
from psycopg import sql

from headrace.redact import Redactor
from headrace.settings import PostgresSettings
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

log = logging.getLogger(__name__)

FILE_TYPES = dict(
    project="text", path="text", sha256="text", size="int8", content_strategy="text",
    content="bytea", content_ref="text", text_encoding="text", git_commit="text",
    deleted="bool", event_id="text", event_time_ms="int8", run_id="text",
    source_topic="text", source_partition="int4", source_offset="int8",
)  # fmt: skip
assert tuple(FILE_TYPES) == FILE_COLUMNS  # noqa: S101 - the staging table mirrors FileRow
STAGE = "headrace_files_in"

_COLS = ", ".join(FILE_COLUMNS)
_I_COLS = ", ".join(f"i.{c}" for c in FILE_COLUMNS)
_NEWER = "(EXCLUDED.event_time_ms, EXCLUDED.source_offset) > ({t}.event_time_ms, {t}.source_offset)"
_NOT_OLDER = (
    "{t}.project = i.project AND {t}.path = i.path"
    " AND ({t}.event_time_ms, {t}.source_offset) >= (i.event_time_ms, i.source_offset)"
)


def _set(columns: Sequence[str]) -> str:
    return ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in (*columns, "updated_at"))


CREATE_STAGE = (
    f"CREATE TEMP TABLE IF NOT EXISTS {STAGE} ("
    + ", ".join(f"{c} {t}" for c, t in FILE_TYPES.items())
    + ") ON COMMIT DELETE ROWS"
)
COPY_STAGE = f"COPY {STAGE} ({_COLS}) FROM STDIN (FORMAT BINARY)"
_FILES_CONFLICT = f"ON CONFLICT (project, path) DO UPDATE SET {_set(FILE_COLUMNS)}"
UPSERT_FILES = (
    f"INSERT INTO files ({_COLS}, updated_at) SELECT {_I_COLS}, now() FROM {STAGE} i"  # noqa: S608
    f" {_FILES_CONFLICT} WHERE {_NEWER.format(t='files')}"
)
UPSERT_FILES_UNLESS_TOMBSTONE = (
    f"WITH up AS (INSERT INTO files ({_COLS}, updated_at) SELECT {_I_COLS}, now()"  # noqa: S608
    f" FROM {STAGE} i WHERE NOT i.deleted AND NOT EXISTS"
    f" (SELECT 1 FROM file_tombstones t WHERE {_NOT_OLDER.format(t='t')})"
    f" {_FILES_CONFLICT} WHERE {_NEWER.format(t='files')} RETURNING project, path),"
    " cleared AS (DELETE FROM file_tombstones t USING up"
    " WHERE t.project = up.project AND t.path = up.path)"
    " SELECT count(*) FROM up"
)
REMOVE_FILES = (
    "WITH gone AS (INSERT INTO file_tombstones (project, path, event_time_ms, source_offset)"  # noqa: S608
    f" SELECT i.project, i.path, i.event_time_ms, i.source_offset FROM {STAGE} i"
    f" WHERE i.deleted AND NOT EXISTS (SELECT 1 FROM files f WHERE {_NOT_OLDER.format(t='f')})"
    " ON CONFLICT (project, path) DO UPDATE SET event_time_ms = EXCLUDED.event_time_ms,"
    " source_offset = EXCLUDED.source_offset, deleted_at = EXCLUDED.deleted_at"
    f" WHERE {_NEWER.format(t='file_tombstones')} RETURNING project, path),"
    " removed AS (DELETE FROM files f USING gone"
    " WHERE f.project = gone.project AND f.path = gone.path)"
    " SELECT count(*) FROM gone"
)
_RUN_COLS = ", ".join(f'"{c}"' for c in RUN_COLUMNS)
UPSERT_RUNS = (
    f"INSERT INTO runs ({_RUN_COLS})"  # noqa: S608 - constants only
    f" VALUES ({', '.join(['%s'] * len(RUN_COLUMNS))})"
    f" ON CONFLICT (run_id, kind) DO UPDATE SET {_set(RUN_COLUMNS)} WHERE {_NEWER.format(t='runs')}"
)
INSERT_LEDGER = (
    'INSERT INTO load_ledger (group_name, topic, "partition", first_offset, last_offset,'
    " row_count) VALUES (%s, %s, %s, %s, %s, %s)"
)
SELECT_FILES = f"SELECT {_COLS}, updated_at FROM files WHERE project = %s"  # noqa: S608
_run_values = attrgetter(*RUN_COLUMNS)


def check_connection(conninfo: str, where: str, secrets: Sequence[str] = ()) -> str:
    """Connect with ``conninfo`` and ask the server's version: what ``headrace doctor``
    and ``/readyz`` check. DatabaseUnavailable, one line, no password, if it fails."""
    try:
        with psycopg.connect(conninfo, application_name="headrace-check") as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except psycopg.Error as exc:
        reason = exc.diag.message_primary or str(exc) or type(exc).__name__
        raise DatabaseUnavailable(
            where, Redactor(secrets).redact(" ".join(reason.split()))
        ) from None
    return f"PostgreSQL {row[0] if row else '?'}"


class PostgresDatabase(Database):
    """One connection: for one thread (open one per thread or process)."""

    capabilities = DatabaseCapabilities(name="postgres", bulk_copy=True, concurrent_writers=True)

    def __init__(
        self,
        settings: PostgresSettings,
        *,
        deletes: DeleteMode | str = DeleteMode.MARK,
        schema: str = "public",
    ) -> None:
        super().__init__(deletes)
        self.settings = settings
        self.schema = schema
        self._where = f"PostgreSQL at {settings.address}"
        self._redactor = Redactor([settings.password.get_secret_value()])
        self._conn: psycopg.Connection[Any] | None = None

    # --- connection and errors -----------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        """The open connection, or a new one if there is none or it broke."""
        if self._conn is not None and not (self._conn.closed or self._conn.broken):
            return self._conn
        self._discard()
        conn = psycopg.connect(
            self.settings.conninfo(), autocommit=True, application_name="headrace-load"
        )
        try:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            self._prefer_lz4(conn)
            conn.execute(CREATE_STAGE)  # outside any write: a rollback cannot undo it
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _prefer_lz4(self, conn: psycopg.Connection[Any]) -> None:
        """Compress content with lz4, not pglz: with pglz, storing 2 KiB files takes two
        to three times as long (measured). Servers built without lz4 keep pglz."""
        try:
            conn.execute("SET default_toast_compression TO 'lz4'")
        except (psycopg.DataError, psycopg.ProgrammingError):
            log.info("%s has no lz4: content is compressed with pglz", self._where)

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Driver errors as headrace errors: one line, no SQL, no row data, no password."""
        try:
            yield
        except (psycopg.IntegrityError, psycopg.DataError) as exc:
            diag = exc.diag
            reason = self._reason(exc)
            if isinstance(exc, psycopg.errors.UniqueViolation) and diag.table_name == "load_ledger":
                raise LedgerConflict(
                    f"ledger entry exists already ({reason})", constraint=diag.constraint_name
                ) from None
            raise ConstraintViolation(reason, constraint=diag.constraint_name) from None
        except OverflowError as exc:  # the binary COPY's dumper: beyond bigint or integer
            raise ConstraintViolation(f"a number out of range: {exc}") from None
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if self._conn is not None and (self._conn.broken or self._conn.closed):
                self._discard()
            raise DatabaseUnavailable(self._where, self._reason(exc)) from None
        except psycopg.Error as exc:
            raise DatabaseError(f"{self._where}: {self._reason(exc)}") from None

    def _reason(self, exc: psycopg.Error) -> str:
        diag = exc.diag
        text = diag.message_primary or str(exc) or type(exc).__name__
        if diag.constraint_name and diag.constraint_name not in text:
            text += f" ({diag.constraint_name})"
        return self._redactor.redact(" ".join(text.split()))

    # --- migrations ------------------------------------------------------------------

    def _applied(self, conn: psycopg.Connection[Any]) -> set[int]:
        row = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
        if row is None or row[0] is None:
            return set()
        return {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}

    def migrate(self, target: int | None = None) -> list[int]:
        done: list[int] = []
        with self._errors():
            conn = self._connection()
            schema = sql.Identifier(self.schema)
            for migration in migrations.wanted(self._applied(conn), target):
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (migrations.LOCK_KEY,))
                    exists = conn.execute(
                        "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)
                    ).fetchone()
                    if exists is None:
                        conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
                    conn.execute(migrations.BOOTSTRAP_POSTGRES)
                    if migration.version in self._applied(conn):  # another process was first
                        continue
                    for statement in migration.postgres:
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, description) VALUES (%s, %s)",
                        (migration.version, migration.description),
                    )
                done.append(migration.version)
        return done

    # --- writing ---------------------------------------------------------------------

    def _write(
        self, files: list[FileRow], runs: list[RunRow], ledger: Sequence[LedgerEntry]
    ) -> tuple[int, int]:
        written = runs_written = 0
        with self._errors():
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                if files:
                    written = self._write_files(cur, files)
                if runs:
                    cur.executemany(UPSERT_RUNS, [_run_values(r) for r in runs])
                    runs_written = max(cur.rowcount, 0)
                if ledger:
                    cur.executemany(INSERT_LEDGER, [ledger_values(e) for e in ledger])
        return written, runs_written

    def _replace(self, files: list[FileRow], absent: list[tuple[str, str]]) -> int:
        keys = [(f.project, f.path) for f in files] + absent
        if not keys:
            return 0
        with self._errors():
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany("DELETE FROM files WHERE project = %s AND path = %s", keys)
                if self.deletes is DeleteMode.REMOVE:
                    cur.executemany(
                        "DELETE FROM file_tombstones WHERE project = %s AND path = %s", keys
                    )
                return self._write_files(cur, files) if files else 0

    def _write_files(self, cur: psycopg.Cursor[Any], files: list[FileRow]) -> int:
        with cur.copy(COPY_STAGE) as copy:
            copy.set_types(list(FILE_TYPES.values()))
            for row in files:  # a FileRow is the tuple of FILE_COLUMNS: no copy of it
                copy.write_row(row)
        if self.deletes is DeleteMode.MARK:
            cur.execute(UPSERT_FILES)
            return max(cur.rowcount, 0)
        written = 0
        for statement in (UPSERT_FILES_UNLESS_TOMBSTONE, REMOVE_FILES):
            found = cur.execute(statement).fetchone()
            written += found[0] if found else 0
        return written

    # --- reading ---------------------------------------------------------------------

    def positions(
        self, group: str, topic_partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]:
        wanted = set(topic_partitions)
        if not wanted:
            return {}
        with self._errors():
            rows = (
                self._connection()
                .execute(
                    'SELECT topic, "partition", max(last_offset) FROM load_ledger'
                    ' WHERE group_name = %s AND topic = ANY(%s) GROUP BY topic, "partition"',
                    (group, sorted({t for t, _ in wanted})),
                )
                .fetchall()
            )
        return {(t, p): last + 1 for t, p, last in rows if (t, p) in wanted}

    def stats(self) -> DbStats:
        with self._errors():
            conn = self._connection()

            def one(query: str) -> Any:
                row = conn.execute(query).fetchone()
                return row[0] if row else None

            files, deleted, projects = conn.execute(
                "SELECT count(*) FILTER (WHERE NOT deleted), count(*) FILTER (WHERE deleted),"
                " count(DISTINCT project) FILTER (WHERE NOT deleted) FROM files"
            ).fetchone() or (0, 0, 0)
            by_strategy = dict(
                conn.execute(
                    "SELECT coalesce(content_strategy, 'NONE'), count(*) FROM files"
                    " WHERE NOT deleted GROUP BY 1 ORDER BY 1"
                ).fetchall()
            )
            ledger_rows, last = conn.execute(
                "SELECT count(*), max(committed_at) FROM load_ledger"
            ).fetchone() or (0, None)
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
                last_committed_at=last.astimezone(UTC) if last else None,
                size_bytes=one(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint"
                    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = current_schema() AND c.relkind = 'r'"
                ),
            )

    def query(
        self,
        project: str,
        path_glob: str | None = None,
        include_deleted: bool = False,
        limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        query, args = SELECT_FILES, [project]
        if not include_deleted:
            query += " AND NOT deleted"
        prefix = glob_prefix(path_glob) if path_glob is not None else ""
        if prefix:
            query += " AND starts_with(path, %s)"
            args.append(prefix)
        query += ' ORDER BY path COLLATE "C"'  # byte order, as SQLite sorts
        if limit is not None and path_glob is None:
            query += f" LIMIT {int(limit)}"
        names = [*FILE_COLUMNS, "updated_at"]
        count = 0
        with self._errors():
            conn = self._connection()
            # a server-side cursor streams the rows; it needs a transaction around it
            with conn.transaction(), conn.cursor(name="headrace_query") as cur:
                cur.itersize = 500
                cur.execute(query, args)
                for values in cur:
                    row = dict(zip(names, values, strict=True))
                    if path_glob is not None and not fnmatch.fnmatchcase(row["path"], path_glob):
                        continue
                    row["updated_at"] = row["updated_at"].astimezone(UTC)
                    yield row
                    count += 1
                    if count == limit:
                        return

    def close(self) -> None:
        self._discard()
