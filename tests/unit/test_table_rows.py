"""The table archiver's row codec without a database: the canonical form and checksum,
and the text form of every Python value psycopg's default loaders return."""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import math
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.types.range import Range

from producers.tables.pyvalues import text_form
from producers.tables.rows import canonical, checksum, encode_row, values_of
from schemas import catalog
from schemas.catalog import EventType
from schemas.models import Column, RowEvent
from tests.unit.strategies import row_events

ROW = [
    Column(name="id", type="int4", value="1"),
    Column(name="note", type="text", value='a "q" \\ é\n'),
    Column(name="gone", type="numeric", value=None),
]
columns = st.lists(
    st.builds(Column, name=st.text(), type=st.text(), value=st.none() | st.text()), max_size=8
)


def test_the_canonical_form_is_the_documented_bytes() -> None:
    assert canonical(ROW) == (
        b'[["id","int4","1"],["note","text","a \\"q\\" \\\\ \xc3\xa9\\n"],["gone","numeric",null]]'
    )
    assert checksum(ROW) == hashlib.sha256(canonical(ROW)).hexdigest()


def test_null_empty_and_the_word_null_are_three_checksums() -> None:
    forms = {checksum([Column(name="c", type="text", value=v)]) for v in (None, "", "NULL")}
    assert len(forms) == 3


def test_column_order_names_and_types_are_part_of_the_checksum() -> None:
    renamed = [ROW[0].model_copy(update={"name": "key"}), *ROW[1:]]
    retyped = [ROW[0].model_copy(update={"type": "int8"}), *ROW[1:]]
    sums = {checksum(ROW), checksum(ROW[::-1]), checksum(renamed), checksum(retyped)}
    assert len(sums) == 4


@given(row=columns)
def test_the_canonical_form_is_deterministic_and_decodes_back(row: list[Column]) -> None:
    copy = [Column.model_validate(c.model_dump()) for c in row]
    assert canonical(copy) == canonical(row)
    assert json.loads(canonical(row)) == [[c.name, c.type, c.value] for c in row]


@given(a=columns, b=columns)
def test_different_rows_have_different_canonical_forms(a: list[Column], b: list[Column]) -> None:
    assert (canonical(a) == canonical(b)) == (a == b)


def test_text_values_pass_through_unchanged_and_none_is_null() -> None:
    types = [Column(name="i", type="interval"), Column(name="t", type="time")]
    row = encode_row(types, ["1 mon", None])
    assert [c.value for c in row] == ["1 mon", None] and values_of(row) == ["1 mon", None]
    with pytest.raises(ValueError, match="1 values for 2 columns"):
        encode_row(types, ["x"])


PLUS_0530 = timezone(timedelta(hours=5, minutes=30))
# (Python value as psycopg loads it, column type, text form)
CASES: list[tuple[object, str, str]] = [
    (True, "bool", "t"),
    (False, "bool", "f"),
    (-32768, "int2", "-32768"),
    (2**63 - 1, "int8", "9223372036854775807"),
    (0.1, "float8", "0.1"),
    (-0.0, "float8", "-0.0"),
    (1e300, "float8", "1e+300"),
    (math.nan, "float8", "NaN"),
    (math.inf, "float4", "Infinity"),
    (-math.inf, "float8", "-Infinity"),
    (
        Decimal("123456789012345678901234567890.123456789"),
        "numeric",
        "123456789012345678901234567890.123456789",
    ),
    (Decimal("1.500"), "numeric", "1.500"),
    (Decimal("1E+3"), "numeric", "1000"),
    (Decimal("-1E-30"), "numeric", "-0.000000000000000000000000000001"),
    (Decimal("NaN"), "numeric", "NaN"),
    (Decimal("Infinity"), "numeric", "Infinity"),
    (Decimal("-Infinity"), "numeric", "-Infinity"),
    ("plain 'text'", "text", "plain 'text'"),
    (b"\x00\xff", "bytea", "\\x00ff"),
    (memoryview(b""), "bytea", "\\x"),
    (UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), "uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    (date(2024, 2, 29), "date", "2024-02-29"),
    (date(1, 1, 1), "date", "0001-01-01"),
    (time(23, 59, 59, 999999), "time", "23:59:59.999999"),
    (time(12, 0, 0, 500000), "time", "12:00:00.5"),
    (time(0, 0), "time", "00:00:00"),
    (
        time(12, 34, 56, 789012, tzinfo=timezone(timedelta(hours=5, minutes=45))),
        "timetz",
        "12:34:56.789012+05:45",
    ),
    (time(1, 0, tzinfo=timezone(-timedelta(hours=15, minutes=59))), "timetz", "01:00:00-15:59"),
    (
        time(1, 0, tzinfo=timezone(timedelta(hours=5, minutes=30, seconds=15))),
        "timetz",
        "01:00:00+05:30:15",
    ),
    (datetime(2000, 2, 29, 23, 59, 59, 999999), "timestamp", "2000-02-29 23:59:59.999999"),
    (datetime(2024, 1, 1, 6, 30, tzinfo=UTC), "timestamptz", "2024-01-01 06:30:00+00"),
    (
        datetime(2024, 1, 1, 12, 0, 0, 1, tzinfo=PLUS_0530),
        "timestamptz",
        "2024-01-01 12:00:00.000001+05:30",
    ),
    (
        timedelta(days=-3, hours=-4, microseconds=-7),
        "interval",
        "-4 days 71999 seconds 999993 microseconds",
    ),
    (timedelta(0), "interval", "0 days 0 seconds 0 microseconds"),
    ({"b": [1, 2.5, None], "a": "é"}, "jsonb", '{"b": [1, 2.5, null], "a": "é"}'),
    ([1, "two"], "json", '[1, "two"]'),
    (None, "jsonb", "null"),  # a JSON null inside json: only a column's None is SQL NULL
    ([1, None, 3], "int4[]", '{"1",NULL,"3"}'),
    ([], "int4[]", "{}"),
    ([[1, 2], [3, None]], "int4[]", '{{"1","2"},{"3",NULL}}'),
    (
        ["NULL", None, 'q"uote', "back\\slash", "a,b", ""],
        "text[]",
        '{"NULL",NULL,"q\\"uote","back\\\\slash","a,b",""}',
    ),
    ([Decimal("NaN"), None], "numeric[]", '{"NaN",NULL}'),
    ([datetime(2024, 1, 1, tzinfo=UTC)], "timestamptz[]", '{"2024-01-01 00:00:00+00"}'),
    ([{"a": 1}, None], "jsonb[]", '{"{\\"a\\": 1}",NULL}'),
    ([b"\x01"], "bytea[]", '{"\\\\x01"}'),
    (Range(3, 7), "int4range", '["3","7")'),
    (Range(None, 5, "(]"), "int4range", '(,"5"]'),
    (Range(empty=True), "int4range", "empty"),
    (Range(date(2024, 1, 1), None), "daterange", '["2024-01-01",)'),
    (ipaddress.ip_interface("10.1.2.3/8"), "inet", "10.1.2.3/8"),
    (ipaddress.ip_network("10.0.0.0/8"), "cidr", "10.0.0.0/8"),
    ("happy", "public.mood", "happy"),  # an enum loads as its label
    ('(1,"x, y")', "public.pair", '(1,"x, y")'),  # an unregistered composite as its text
]


@pytest.mark.parametrize(("value", "type_name", "text"), CASES, ids=[c[2] for c in CASES])
def test_text_form_of_each_python_value(value: object, type_name: str, text: str) -> None:
    assert text_form(value, type_name) == text


def test_a_value_without_a_text_form_is_refused_by_its_type() -> None:
    with pytest.raises(TypeError, match="no text form for a complex in a public.odd column"):
        text_form(1j, "public.odd")
    with pytest.raises(TypeError, match="no text form for a bytes in a public.pair column"):
        text_form(b"\x00\x00\x00\x02", "public.pair")  # a binary-format cursor's value
    with pytest.raises(TypeError, match="no text form for a object in a int4"):
        encode_row([Column(name="c", type="int4[]")], [[object()]])


@given(st.floats())
def test_floats_read_back_as_themselves(value: float) -> None:
    back = float(text_form(value, "float8").replace("Infinity", "inf"))
    assert back == value or (math.isnan(back) and math.isnan(value))
    assert math.copysign(1, back) == math.copysign(1, value) or math.isnan(value)


@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_decimals_read_back_with_their_scale(value: Decimal) -> None:
    back = Decimal(text_form(value, "numeric"))
    assert back == value
    assert back.as_tuple().exponent == min(0, int(value.as_tuple().exponent))


@given(
    st.datetimes(
        timezones=st.none()
        | st.timedeltas(min_value=timedelta(hours=-15), max_value=timedelta(hours=15)).map(
            lambda d: timezone(timedelta(seconds=d // timedelta(seconds=1)))
        )
    )
)
def test_datetimes_read_back_with_their_offset(value: datetime) -> None:
    back = datetime.fromisoformat(text_form(value, "timestamptz"))
    assert back == value and back.utcoffset() == value.utcoffset()


def test_row_event_ids_are_the_rows_not_the_runs() -> None:
    def event(**changes: Any) -> RowEvent:
        fields: dict[str, Any] = {
            "run_id": "r1",
            "batch_id": "b1",
            "source": "db",
            "schema": "public",
            "table": "t",
            "key": ROW[:1],
            "row": ROW,
            "checksum": checksum(ROW),
            "event_time": datetime(2026, 1, 1, tzinfo=UTC),
        }
        return RowEvent(**(fields | changes))

    first = event()
    assert len(first.event_id) == 32
    assert event(run_id="r2", batch_id="b2").event_id == first.event_id
    other_key = [Column(name="id", type="int4", value="2")]
    assert event(key=other_key).event_id != first.event_id
    assert event(schema="audit").event_id != first.event_id
    assert first.table_schema == "public" and first.to_avro()["schema"] == "public"


@given(event=row_events)
def test_row_events_round_trip_through_their_avro_schema(event: RowEvent) -> None:
    schema = fastavro.parse_schema(catalog.latest(EventType.ROW_EVENT).json)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, event.to_avro())
    buffer.seek(0)
    record = fastavro.schemaless_reader(buffer, schema)
    assert isinstance(record, dict) and RowEvent.from_avro(record) == event
