"""PostgreSQL rows to RowEvent columns and back, type-faithfully.

The representation
------------------
Each column is ``{name, type, value}`` (``schemas.models.Column``):

- ``type`` is PostgreSQL's type name: ``pg_type.typname`` (``int4``,
  ``numeric``, ``timestamptz``, ``jsonb``), qualified by its schema outside
  ``pg_catalog`` (``public.mood``), with ``[]`` after the element's name for
  an array (``int4[]``, ``public.mood[]``).
- ``value`` is the value in **PostgreSQL's own text form**: what the type's
  output function prints under the fixed session settings in :data:`SESSION`;
  ``None`` is SQL NULL. Arrays are PostgreSQL array literals, so NULL elements
  (``NULL`` unquoted, a string ``"NULL"`` quoted), several dimensions and
  non-default bounds (``[0:1]={1,2}``) all survive.

Why the text form: it is the one representation PostgreSQL itself guarantees
to read back as the same value, for every type, user types (enums, domains,
composites, ranges, extensions) included. Going through Python values would
lose what Python cannot hold: interval months (``1 mon`` is not ``30 days``),
``24:00:00``, ``infinity`` and BC dates, array bounds, json's exact text
(duplicate keys, whitespace), a jsonb JSON ``null`` (loaded as ``None``, like
SQL NULL). So an "unknown" type is no special case: it
travels as its text form with its name, like every other, and nothing is
dropped. A value is written back as an *untyped* literal (psycopg binds a
``str`` as ``unknown``), so the target column's input function reads it.

Reading rows for archiving: :func:`prepare` sets :data:`SESSION` and makes
every column load as ``str`` on that connection; :func:`table_types` (or
:func:`column_types`, for any query) names each column's type from the
catalog; :func:`encode_row` builds the columns.
:func:`values_of` gives the values back for ``INSERT ... VALUES (%s, ...)``.
Values that default psycopg loaders return (``Decimal``, ``datetime``...) are
accepted too (``producers.tables.pyvalues``), but their text is only
input-equivalent to PostgreSQL's, so the same value may checksum differently
that way: the archiver reads text, and so does anything that re-checks it.

The canonical form (:func:`canonical`, hashed by :func:`checksum`)
------------------------------------------------------------------
The UTF-8 bytes of the JSON array ``[[name, type, value], ...]`` in the
table's column order (``attnum``, as ``SELECT *`` returns them), ``value``
``null`` for NULL, with no whitespace (``,`` and ``:`` separators), non-ASCII
characters literal, and only ``"``, ``\\`` and control characters escaped
(``\\n``, ``\\r``, ``\\t``, ``\\b``, ``\\f``, else ``\\u00XX``): what
``json.dumps(items, ensure_ascii=False, separators=(",", ":"))`` writes, and what
orjson writes too, byte for byte (tests/unit/test_row_codec_speed.py compares them on
every code point), so orjson makes it. Names and types
are part of it, so a renamed or retyped column changes the checksum. The
text of a ``timestamptz`` depends on ``TimeZone`` (and others on the rest of
:data:`SESSION`): a checksum is reproducible under :data:`SESSION` only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.types.string import TextLoader

from producers.tables.pyvalues import text_form
from schemas.models import Column

# Output settings the text forms depend on (PostgreSQL 12+: extra_float_digits 1
# prints the shortest text that reads back as the same float).
SESSION = {
    "DateStyle": "ISO, MDY",
    "IntervalStyle": "postgres",
    "TimeZone": "UTC",
    "extra_float_digits": "1",
    "bytea_output": "hex",
}

# A type's name as Column.type has it, for the type of oid ``o.oid``.
_TYPE_NAME = """
       CASE WHEN n.nspname = 'pg_catalog' THEN '' ELSE n.nspname || '.' END
       || b.typname || CASE WHEN e.oid IS NULL THEN '' ELSE '[]' END
FROM {source}
JOIN pg_type t ON t.oid = o.oid
LEFT JOIN pg_type e ON t.typcategory = 'A' AND e.oid = t.typelem
JOIN pg_type b ON b.oid = coalesce(e.oid, t.oid)
JOIN pg_namespace n ON n.oid = b.typnamespace
"""
_RESULT_TYPES = "SELECT o.oid," + _TYPE_NAME.format(source="unnest(%s::oid[]) AS o(oid)")
_TABLE_TYPES = (
    "SELECT a.attname,"
    + _TYPE_NAME.format(source="pg_attribute a CROSS JOIN LATERAL (SELECT a.atttypid) AS o(oid)")
    + "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
)


def prepare(conn: psycopg.Connection[Any]) -> None:
    """Set :data:`SESSION` on ``conn`` and make every column load as its text form.

    Call it outside a transaction that may roll back (a rollback undoes ``SET``).
    """
    for name, value in SESSION.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    for info in conn.adapters.types:
        for oid in (info.oid, info.array_oid):
            if oid:
                conn.adapters.register_loader(oid, TextLoader)


def column_types(conn: psycopg.Connection[Any], cursor: psycopg.Cursor[Any]) -> list[Column]:
    """The cursor's result columns, named and typed (values empty), from the catalog."""
    description = cursor.description or []
    oids = sorted({column.type_code for column in description})
    rows = conn.execute(_RESULT_TYPES, (oids,)).fetchall()
    names: dict[int, str] = {int(oid): str(name) for oid, name in rows}
    return [Column(name=column.name, type=names[column.type_code]) for column in description]


def table_types(conn: psycopg.Connection[Any], schema: str, table: str) -> list[Column]:
    """The table's columns in ``attnum`` order (``SELECT *``'s), typed from the catalog.

    Unlike :func:`column_types` this names a domain (a result column only has its
    base type): the archiver's types for a whole-table ``SELECT *``.
    """
    relation = sql.Identifier(schema, table).as_string(conn)
    rows = conn.execute(_TABLE_TYPES, (relation,)).fetchall()
    return [Column(name=str(name), type=str(type_)) for name, type_ in rows]


def encode_row(types: Sequence[Column], values: Sequence[object]) -> list[Column]:
    """The row's columns: each value's text form under its column's name and type."""
    return [
        Column(name=c.name, type=c.type, value=v)
        for c, v in zip(types, text_forms(types, values), strict=True)
    ]


def text_forms(types: Sequence[Column], values: Sequence[object]) -> list[str | None]:
    """Each value's text form (None for NULL) for its column's type: :func:`encode_row`'s
    values, without the columns."""
    if len(types) != len(values):
        raise ValueError(f"{len(values)} values for {len(types)} columns")
    return [None if v is None else text_form(v, c.type) for c, v in zip(types, values, strict=True)]


def values_of(row: Sequence[Column]) -> list[str | None]:
    """The values to bind (as untyped text) to write the row back as the same values."""
    return [column.value for column in row]


def insert_statement(schema: str, table: str, row: Sequence[Column]) -> sql.Composed:
    """``INSERT INTO schema.table (columns) VALUES (%s, ...)`` for :func:`values_of`."""
    return sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(schema, table),
        sql.SQL(", ").join(sql.Identifier(c.name) for c in row),
        sql.SQL(", ").join(sql.Placeholder() * len(row)),
    )


def canonical(row: Sequence[Column]) -> bytes:
    """The row's canonical bytes (see the module docstring)."""
    return canonical_items([[c.name, c.type, c.value] for c in row])


def canonical_items(items: Sequence[Sequence[str | None]]) -> bytes:
    """:func:`canonical` of the row as ``[[name, type, value], ...]`` (strings and None)."""
    try:
        return orjson.dumps(items)
    except orjson.JSONEncodeError:  # a lone surrogate: fail as json fails, not otherwise
        return json.dumps(items, ensure_ascii=False, separators=(",", ":")).encode()


def checksum(row: Sequence[Column]) -> str:
    """sha256 of :func:`canonical`, lowercase hex: the RowEvent's ``checksum``."""
    return hashlib.sha256(canonical(row)).hexdigest()


def checksum_items(items: Sequence[Sequence[str | None]]) -> str:
    """:func:`checksum` of the row as ``[[name, type, value], ...]``."""
    return hashlib.sha256(canonical_items(items)).hexdigest()
