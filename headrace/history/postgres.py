"""The operational history in PostgreSQL: the ``[postgres]`` server, a schema of its own
(``history.postgres_schema``, created if missing) holding one ``samples`` table.

Autocommit, each call its own transaction; a connection that broke is replaced on the
next call (the flusher retries a failed write at its next flush)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from headrace.history.base import Bucket, Component, HistoryStore, Row, Sample
from headrace.history.errors import HistoryError
from headrace.settings import PostgresSettings

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS {schema}.samples (ts DOUBLE PRECISION NOT NULL,"
    " component TEXT NOT NULL, metric TEXT NOT NULL, value DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX IF NOT EXISTS samples_ts ON {schema}.samples (ts)",
    "CREATE INDEX IF NOT EXISTS samples_component_ts ON {schema}.samples (component, ts)",
)


class PostgresHistory(HistoryStore):
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

    def delete_before(self, ts: float) -> int:
        return self._run("DELETE FROM samples WHERE ts < %s", (ts,)).rowcount

    def samples(self, since: float, until: float, component: str | None) -> list[Sample]:
        where, args = _where(since, until, component)
        found = self._run(
            f"SELECT ts, component, metric, value FROM samples WHERE {where}"  # noqa: S608 - no input in it
            " ORDER BY ts, component, metric",
            args,
        )
        return [Sample(*row) for row in found.fetchall()]

    def buckets(
        self, since: float, until: float, component: str | None, width_s: float | None
    ) -> list[Bucket]:
        where, args = _where(since, until, component)
        index = "0" if width_s is None else "floor(ts / %s)::bigint"
        found = self._run(
            f"SELECT {index} AS b, component, metric, count(*), min(value), max(value),"  # noqa: S608
            f" sum(value) FROM samples WHERE {where}"
            " GROUP BY b, component, metric ORDER BY component, metric, b",
            (() if width_s is None else (width_s,)) + args,
        )
        return [
            Bucket(since if width_s is None else b * width_s, c, m, n, lo, hi, total)
            for b, c, m, n, lo, hi, total in found.fetchall()
        ]

    def last(self, metric: str, since: float, until: float) -> dict[str, Sample]:
        found = self._run(
            "SELECT DISTINCT ON (component) ts, component, metric, value FROM samples"
            " WHERE metric = %s AND ts >= %s AND ts < %s ORDER BY component, ts DESC",
            (metric, since, until),
        )
        return {row[1]: Sample(*row) for row in found.fetchall()}

    def components(self) -> list[Component]:
        found = self._run(
            "SELECT component, min(ts), max(ts), count(*) FROM samples"
            " GROUP BY component ORDER BY component",
            (),
        )
        return [Component(*row) for row in found.fetchall()]

    def _run(self, query: str, args: tuple[object, ...]) -> psycopg.Cursor[Any]:
        try:
            return self._conn().execute(query.encode(), args)
        except psycopg.Error as exc:
            raise HistoryError(f"cannot read the operational history {self.where}: {exc}") from None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _where(since: float, until: float, component: str | None) -> tuple[str, tuple[object, ...]]:
    if component is None:
        return "ts >= %s AND ts < %s", (since, until)
    return "component = %s AND ts >= %s AND ts < %s", (component, since, until)
