"""Every PostgreSQL type round-trips through RowEvent: read, encode, Avro, decode, write
back into a second table of the same definition, and compare in SQL."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import fastavro
import psycopg
import pytest
from psycopg import sql

from headrace.settings import PostgresSettings
from producers.tables import rows
from schemas import catalog
from schemas.catalog import EventType
from schemas.models import RowEvent

SCHEMA = fastavro.parse_schema(catalog.latest(EventType.ROW_EVENT).json)

TYPES = """
CREATE TYPE {s}.mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN {s}.posint AS integer CHECK (VALUE > 0);
CREATE TYPE {s}.pair AS (a integer, b text);
"""
COLUMNS: list[tuple[str, str]] = [
    ("c_int2", "smallint"),
    ("c_int4", "integer"),
    ("c_int8", "bigint"),
    ("c_numeric", "numeric"),
    ("c_numeric_scaled", "numeric(40, 9)"),
    ("c_real", "real"),
    ("c_double", "double precision"),
    ("c_text", "text"),
    ("c_varchar", "varchar(20)"),
    ("c_char", "char(5)"),
    ("c_bool", "boolean"),
    ("c_date", "date"),
    ("c_time", "time"),
    ("c_timetz", "timetz"),
    ("c_ts", "timestamp"),
    ("c_tstz", "timestamptz"),
    ("c_interval", "interval"),
    ("c_uuid", "uuid"),
    ("c_json", "json"),
    ("c_jsonb", "jsonb"),
    ("c_int_arr", "integer[]"),
    ("c_text_arr", "text[]"),
    ("c_int_2d", "integer[][]"),
    ("c_numeric_arr", "numeric[]"),
    ("c_tstz_arr", "timestamptz[]"),
    ("c_bytea", "bytea"),
    ("c_mood", "{s}.mood"),
    ("c_mood_arr", "{s}.mood[]"),
    ("c_posint", "{s}.posint"),
    ("c_pair", "{s}.pair"),
    ("c_range", "int4range"),
    ("c_inet", "inet"),
]
# id, then a literal per column (None: NULL); literals are cast to the column's type.
ROWS: list[dict[str, str]] = [
    {},  # every column NULL
    {
        "c_int2": "-32768",
        "c_int4": "2147483647",
        "c_int8": "-9223372036854775808",
        "c_numeric": "123456789012345678901234567890.123456789",
        "c_numeric_scaled": "-0.000000001",
        "c_real": "3.4028235e38",
        "c_double": "0.1",
        "c_text": "line\nbreak\ttab \\ back 'q' \"dq\" é 💧",
        "c_varchar": "",
        "c_char": "ab",
        "c_bool": "true",
        "c_date": "2024-02-29",
        "c_time": "24:00:00",
        "c_timetz": "12:34:56.789012+05:45",
        "c_ts": "2000-02-29 23:59:59.999999",
        "c_tstz": "2024-03-31 02:30:00.000001+02",
        "c_interval": "-1 year -2 mons +3 days -04:05:06.000007",
        "c_uuid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "c_json": '{"a" : 1,   "a":2,\n "b": [1.50, 1e2 ]  }',
        "c_jsonb": '{"b": [1, 2.50, null], "a": "é", "a": "last"}',
        "c_int_arr": "{1,NULL,3}",
        "c_text_arr": '{"NULL",NULL,"a,b","q\\"uote","back\\\\slash",""}',
        "c_int_2d": "{{1,2},{3,NULL}}",
        "c_numeric_arr": "{NaN,1.10,NULL,-0.0}",
        "c_tstz_arr": "{2024-01-01 00:00:00-08,NULL,1999-12-31 23:59:59.999999+13:45}",
        "c_bytea": "\\x00ff10",
        "c_mood": "happy",
        "c_mood_arr": "{sad,NULL,ok}",
        "c_posint": "7",
        "c_pair": '(1,"x, y")',
        "c_range": "[3,7)",
        "c_inet": "10.1.2.3/8",
    },
    {
        "c_numeric": "NaN",
        "c_numeric_scaled": "9999999999999999999999999999999.999999999",
        "c_real": "Infinity",
        "c_double": "-Infinity",
        "c_text": "",
        "c_char": "abcde",
        "c_bool": "false",
        "c_date": "infinity",
        "c_time": "00:00:00",
        "c_timetz": "24:00:00-15:59",
        "c_ts": "-infinity",
        "c_tstz": "infinity",
        "c_interval": "1 mon",
        "c_json": "[]",
        "c_jsonb": "null",
        "c_int_arr": "{}",
        "c_text_arr": "{NULL}",
        "c_int_2d": "[0:1][-1:0]={{7,8},{9,10}}",
        "c_numeric_arr": "{}",
        "c_tstz_arr": "{infinity}",
        "c_bytea": "\\x",
        "c_mood_arr": "{}",
        "c_pair": "(,)",
        "c_range": "empty",
        "c_inet": "::1",
    },
    {
        "c_numeric": "-0.000000000000000000000000000001",
        "c_real": "NaN",
        "c_double": "NaN",
        "c_date": "4713-01-01 BC",
        "c_time": "23:59:59.999999",
        "c_timetz": "00:00:00+00",
        "c_ts": "1900-01-01 00:00:00",
        "c_tstz": "1999-12-31 23:59:59.999999+13:45",
        "c_interval": "30 days",
        "c_json": '  "just a string"  ',
        "c_jsonb": '{"deep": {"x": [{"y": 1}]}}',
    },
    {
        "c_double": "-0",
        "c_real": "1.17549435e-38",
        "c_tstz": "2024-06-01 12:00:00 America/New_York",
        "c_ts": "0001-01-01 00:00:00",
        "c_interval": "24 hours",
        "c_numeric": "Infinity",
    },
    {"c_interval": "1 day", "c_tstz": "2024-06-01 12:00:00.5 Asia/Kathmandu"},
]


@pytest.fixture
def tables(postgres: PostgresSettings) -> Iterator[tuple[psycopg.Connection[Any], str]]:
    schema = f"rows_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            conn.execute(TYPES.format(s=schema).encode())
            columns = ", ".join(f"{n} {t.format(s=schema)}" for n, t in COLUMNS)
            for table in ("a", "b"):
                conn.execute(f"CREATE TABLE {schema}.{table} (id integer PRIMARY KEY, {columns})")
            yield conn, schema
        finally:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def seed(conn: psycopg.Connection[Any], schema: str, literal_rows: list[dict[str, str]]) -> None:
    types = {name: t.format(s=schema) for name, t in COLUMNS}
    for number, literals in enumerate(literal_rows, start=1):
        given = {k: v for k, v in literals.items() if k in types}
        names = ["id", *given]
        casts = sql.SQL(", ").join(
            [sql.Literal(number)]
            + [sql.SQL("{}::" + types[k]).format(sql.Literal(v)) for k, v in given.items()]
        )
        conn.execute(
            sql.SQL("INSERT INTO {}.a ({}) VALUES ({})").format(
                sql.Identifier(schema), sql.SQL(", ").join(map(sql.Identifier, names)), casts
            )
        )


def through_avro(event: RowEvent) -> RowEvent:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, SCHEMA, event.to_avro())
    buffer.seek(0)
    return RowEvent.from_avro(fastavro.schemaless_reader(buffer, SCHEMA))  # type: ignore[arg-type]


def differing(conn: psycopg.Connection[Any], schema: str, json_as: str = "text") -> dict[str, int]:
    """Per column (and the whole row as text), how many rows differ between a and b;
    json has no equality operator: it is compared as its exact text (or as ``json_as``)."""
    found = {}
    for name, type_ in [*COLUMNS, ("*", "")]:
        if name == "*":
            left, right = sql.SQL("a::text"), sql.SQL("b::text")
        else:
            cast = sql.SQL("::" + json_as if type_ == "json" else "")
            left, right = (
                sql.SQL("{}.{}{}").format(sql.Identifier(side), sql.Identifier(name), cast)
                for side in ("a", "b")
            )
        query = sql.SQL(
            "SELECT count(*) FROM {s}.a a FULL JOIN {s}.b b USING (id)"
            " WHERE {l} IS DISTINCT FROM {r}"
        ).format(s=sql.Identifier(schema), l=left, r=right)
        count = conn.execute(query).fetchone()
        found[name] = count[0] if count else -1
    return found


def test_every_type_round_trips_through_row_events(
    tables: tuple[psycopg.Connection[Any], str], postgres: PostgresSettings
) -> None:
    admin, schema = tables
    seed(admin, schema, ROWS)
    with psycopg.connect(postgres.conninfo(), autocommit=True) as conn:
        rows.prepare(conn)
        cursor = conn.execute(
            sql.SQL("SELECT * FROM {}.a ORDER BY id").format(sql.Identifier(schema))
        )
        types = rows.table_types(conn, schema, "a")
        assert rows.column_types(conn, cursor) == [
            c.model_copy(update={"type": "int4"}) if c.name == "c_posint" else c for c in types
        ]  # a result column has a domain's base type
        read = cursor.fetchall()
        assert all(isinstance(v, str) for r in read for v in r if v is not None)
        events = []
        for values in read:
            row = rows.encode_row(types, values)
            events.append(
                RowEvent(
                    run_id="run",
                    batch_id="batch",
                    source="test",
                    schema=schema,
                    table="a",
                    key=row[:1],
                    row=row,
                    checksum=rows.checksum(row),
                    event_time=datetime.now(UTC),
                )
            )
        decoded = [through_avro(e) for e in events]
        assert decoded == events
        for event in decoded:
            assert rows.checksum(event.row) == event.checksum
            conn.execute(rows.insert_statement(schema, "b", event.row), rows.values_of(event.row))

    by_name = {c.name: c.type for c in types}
    assert by_name["c_numeric"] == "numeric" and by_name["c_tstz_arr"] == "timestamptz[]"
    assert by_name["c_mood"] == f"{schema}.mood" and by_name["c_mood_arr"] == f"{schema}.mood[]"
    assert by_name["c_posint"] == f"{schema}.posint"
    assert by_name["c_pair"] == f"{schema}.pair"
    count = admin.execute(sql.SQL("SELECT count(*) FROM {}.b").format(sql.Identifier(schema)))
    assert (count.fetchone() or [0])[0] == len(ROWS)
    assert differing(admin, schema) == {name: 0 for name, _ in [*COLUMNS, ("*", "")]}


# What Python values can hold: psycopg's default loaders lose interval months, 24:00,
# infinite and BC dates, array bounds, json's text (compared as jsonb here) and a jsonb
# JSON null (loaded as None, so written back as SQL NULL): the archiver reads text.
PYTHON_ROWS: list[dict[str, str]] = [
    {},
    {
        **{k: v for k, v in ROWS[1].items() if k not in ("c_time", "c_interval")},
        "c_time": "23:59:59.999999",
        "c_interval": "-3 days -04:05:06.000007",
    },
    {
        "c_numeric": "NaN",
        "c_real": "Infinity",
        "c_double": "-Infinity",
        "c_timetz": "23:00:00-15:59",
        "c_int_arr": "{}",
        "c_int_2d": "{{7,8},{9,10}}",
        "c_text_arr": "{NULL}",
        "c_jsonb": "[]",
        "c_json": '{"k": [1, "two", null, {"x": 1.5}]}',
        "c_range": "empty",
        "c_bytea": "\\x",
        "c_inet": "::1",
        "c_pair": "(,)",
    },
    {
        "c_numeric": "Infinity",
        "c_real": "NaN",
        "c_double": "-0",
        "c_tstz": "2024-06-01 12:00:00.5 Asia/Kathmandu",
        "c_tstz_arr": "{2024-01-01 00:00:00-08,NULL}",
        "c_range": "(,5]",
    },
]


def test_values_loaded_by_psycopg_round_trip(
    tables: tuple[psycopg.Connection[Any], str],
) -> None:
    conn, schema = tables
    seed(conn, schema, PYTHON_ROWS)
    cursor = conn.execute(sql.SQL("SELECT * FROM {}.a ORDER BY id").format(sql.Identifier(schema)))
    types = rows.column_types(conn, cursor)
    loaded = cursor.fetchall()
    kinds = {type(v).__name__ for r in loaded for v in r if v is not None}
    assert {"Decimal", "datetime", "time", "timedelta", "UUID", "list", "dict", "Range"} <= kinds
    for values in loaded:
        row = rows.encode_row(types, values)
        conn.execute(rows.insert_statement(schema, "b", row), rows.values_of(row))
    mismatches = differing(conn, schema, json_as="jsonb")
    del mismatches["*"]  # the rows as text differ where json's text was not kept
    assert mismatches == {name: 0 for name, _ in COLUMNS}
