"""The operational history in PostgreSQL: the ``[postgres]`` server, a schema of its own
(``history.postgres_schema``, created if missing) holding one ``samples`` table.

Autocommit, each call its own transaction; a connection that broke is replaced on the
next call (the flusher retries a failed write at its next flush)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from headrace.history.base import Row, Sample
from headrace.history.errors import HistoryError
from headrace.history.sql import SqlHistory
from headrace.settings import PostgresSettings

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS {schema}.samples (ts DOUBLE PRECISION NOT NULL,"
    " component TEXT NOT NULL, metric TEXT NOT NULL, value DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX IF NOT EXISTS samples_ts ON {schema}.samples (ts)",
    "CREATE INDEX IF NOT EXISTS samples_component_ts ON {schema}.samples (component, ts)",
)


class PostgresHistory(SqlHistory):
    marker, bucket = "%s", "floor(ts / {})::bigint"

    def __init__(self, settings: PostgresSettings, schema: str, *, readonly: bool = False):
        self.settings, self.schema, self.readonly = settings, schema, readonly
        self.where = f"postgresql://{settings.address}/{settings.database} schema {schema}"
        self._db: psycopg.Connection[Any] | None = None

    def _conn(self) -> psycopg.Connection[Any]:
        if self._db is not None and not self._db.closed and not self._db.broken:
            return self._db
        self._db = None
        try:
            db = psycopg.connect(self.settings.conninfo(), autocommit=True)
        except psycopg.Error as exc:
            raise HistoryError(
                f"cannot connect to the operational history {self.where}: {exc}"
            ) from None
        schema = sql.Identifier(self.schema)
        try:
            if self.readonly:
                found = db.execute("SELECT to_regclass(%s)", (f"{self.schema}.samples",))
                row = found.fetchone()
                if row is None or row[0] is None:
                    db.close()
                    raise HistoryError(f"no operational history in {self.where}: nothing recorded")
            else:
                with db.transaction():
                    # one process at a time: two creating the schema at once would collide
                    db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.where,))
                    db.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
                    for statement in SCHEMA:
                        db.execute(sql.SQL(statement).format(schema=schema))
            db.execute(sql.SQL("SET search_path TO {}").format(schema))
        except psycopg.Error as exc:
            db.close()
            raise HistoryError(f"cannot open the operational history {self.where}: {exc}") from None
        self._db = db
        return db

    def write(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        db = self._conn()
        try:
            with db.transaction(), db.cursor() as cur:
                cur.executemany(
                    "INSERT INTO samples (ts, component, metric, value) VALUES (%s, %s, %s, %s)",
                    rows,
                )
        except psycopg.Error as exc:
            raise HistoryError(
                f"cannot write the operational history {self.where}: {exc}"
            ) from None

    def last(self, metric: str, since: float, until: float) -> dict[str, Sample]:
        rows, _ = self._execute(
            "SELECT DISTINCT ON (component) ts, component, metric, value FROM samples"
            " WHERE metric = %s AND ts >= %s AND ts < %s ORDER BY component, ts DESC",
            (metric, since, until),
        )
        return {str(row[1]): Sample(*row) for row in rows}

    def _execute(self, query: str, args: Sequence[object]) -> tuple[list[tuple[Any, ...]], int]:
        try:
            cursor = self._conn().execute(query.encode(), tuple(args))
            return (cursor.fetchall() if cursor.description else []), cursor.rowcount
        except psycopg.Error as exc:
            raise HistoryError(f"cannot read the operational history {self.where}: {exc}") from None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
