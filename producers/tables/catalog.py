"""What the table archiver needs to know about a table, read from PostgreSQL's catalog.

A table is archived in (timestamp column, primary key...) order and its rows are
deleted by primary key, so it needs both:

- the **primary key**: ``pg_index.indisprimary``, its columns in key order
  (``indkey``), not table order; a table without one is refused
  (:class:`NoPrimaryKey`);
- the **timestamp column** that decides a row's age: the one named
  (``--timestamp-column``), which must be a ``timestamp`` or ``timestamptz``
  column; or, when none is named, the table's only such column. A table with
  none, or with several, is refused with the candidates named
  (:class:`TimestampColumnError`). A ``timestamp`` (without time zone) is
  compared with ``now()`` in UTC (the archiver's session time zone).

Names reach SQL only as parameters (``%s::regclass``) or through
``psycopg.sql.Identifier``: any table or column name is just a name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from headrace.settings import SourceSettings
from producers.errors import NoPrimaryKey, TableNotFound, TimestampColumnError
from producers.tables import rows
from schemas.models import Column

TIMESTAMP_TYPES = frozenset({"timestamp", "timestamptz"})

_PRIMARY_KEY = """
SELECT a.attname
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s::regclass AND i.indisprimary
ORDER BY k.ord
"""
_RELATION = "SELECT c.relkind FROM pg_class c WHERE c.oid = to_regclass(%s)"


@dataclass(frozen=True)
class TableRef:
    """``schema.table``; the names as they are in the catalog (case kept, not SQL-quoted)."""

    schema: str
    table: str

    @classmethod
    def parse(cls, text: str) -> TableRef:
        """``SCHEMA.TABLE`` (split at the first dot) or ``TABLE`` (in ``public``)."""
        schema, dot, table = text.partition(".")
        if not dot:
            schema, table = "public", text
        if not schema or not table:
            raise ValueError(f"{text!r} is not SCHEMA.TABLE")
        return cls(schema, table)

    def __str__(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass(frozen=True)
class TableShape:
    """A table as the archiver reads it: columns (``SELECT *`` order), key, timestamp."""

    ref: TableRef
    columns: tuple[Column, ...]  # names and types; values empty
    primary_key: tuple[str, ...]  # in key order
    timestamp_column: str

    @property
    def order(self) -> tuple[str, ...]:
        """The keyset order: the timestamp column, then the primary key."""
        return (self.timestamp_column, *self.primary_key)

    def index(self, column: str) -> int:
        return [c.name for c in self.columns].index(column)


def relation(ref: TableRef) -> sql.Identifier:
    return sql.Identifier(ref.schema, ref.table)


def read_shape(
    conn: psycopg.Connection[Any], ref: TableRef, timestamp_column: str | None = None
) -> TableShape:
    """The table's shape, or a one-line TableError saying why it cannot be archived."""
    columns, key = read_keyed(conn, ref, "its rows could not be deleted exactly")
    return TableShape(ref, columns, key, choose_timestamp_column(ref, columns, timestamp_column))


def read_keyed(
    conn: psycopg.Connection[Any], ref: TableRef, why: str
) -> tuple[tuple[Column, ...], tuple[str, ...]]:
    """The table's columns (typed, ``SELECT *`` order) and primary key (key order); a
    TableNotFound, or a NoPrimaryKey saying ``why`` the key is needed."""
    name = relation(ref).as_string(conn)
    found = conn.execute(_RELATION, (name,)).fetchone()
    if found is None or found[0] not in ("r", "p"):
        what = "no such table" if found is None else "not a table"
        raise TableNotFound(f"{ref}: {what} (schema and table names are case-sensitive)")
    key = tuple(str(r[0]) for r in conn.execute(_PRIMARY_KEY, (name,)).fetchall())
    if not key:
        raise NoPrimaryKey(f"{ref} has no primary key: {why}, add one first")
    return tuple(rows.table_types(conn, ref.schema, ref.table)), key


def choose_timestamp_column(ref: TableRef, columns: tuple[Column, ...], named: str | None) -> str:
    """The column rows are aged by: ``named``, or the table's only timestamp column."""
    types = {c.name: c.type for c in columns}
    if named is not None:
        if named not in types:
            raise TimestampColumnError(f"{ref} has no column {named!r}")
        if types[named] not in TIMESTAMP_TYPES:
            raise TimestampColumnError(
                f"{ref}.{named} is {types[named]}, not timestamp or timestamptz"
            )
        return named
    candidates = [c.name for c in columns if c.type in TIMESTAMP_TYPES]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise TimestampColumnError(f"{ref} has no timestamp or timestamptz column")
    shown = ", ".join(candidates)
    raise TimestampColumnError(
        f"{ref} has several timestamp columns ({shown}): choose one with --timestamp-column"
    )


def dsn_source_name(source: SourceSettings) -> str:
    """The source name of a ``--dsn`` (in events, cursors and transactional ids):
    ``host:port/database``, so two databases given by --dsn are never one source,
    and the same one is the same source every run. No user, no password."""
    return f"{source.host}:{source.port}/{source.database}"
