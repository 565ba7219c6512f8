"""The compiled Avro reader gives exactly what fastavro gives, and refuses what is not a
record of its schema."""

from __future__ import annotations

import io
import math
import struct
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import catalog
from schemas.avro_reader import compile_reader
from schemas.catalog import EventType
from schemas.models import EVENT_MODELS
from tests.unit.strategies import (
    dead_letters,
    file_events,
    row_events,
    run_events,
    verification_events,
)

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STRATEGIES = {
    EventType.FILE_EVENT: file_events(),
    EventType.RUN_EVENT: run_events,
    EventType.VERIFICATION_EVENT: verification_events,
    EventType.DEAD_LETTER: dead_letters,
    EventType.ROW_EVENT: row_events,
}

# Every type and logical type fastavro reads, nested, named twice and recursive.
EVERYTHING = fastavro.parse_schema(
    {
        "type": "record",
        "name": "t.Everything",
        "fields": [
            {"name": "n", "type": "null"},
            {"name": "b", "type": "boolean"},
            {"name": "i", "type": "int"},
            {"name": "l", "type": "long"},
            {"name": "f", "type": "float"},
            {"name": "d", "type": "double"},
            {"name": "by", "type": "bytes"},
            {"name": "s", "type": "string"},
            {"name": "fx", "type": {"type": "fixed", "name": "t.Four", "size": 4}},
            {"name": "fx2", "type": "t.Four"},
            {"name": "e", "type": {"type": "enum", "name": "t.E", "symbols": ["A", "B", "C"]}},
            {"name": "e2", "type": ["null", "t.E"]},
            {"name": "a", "type": {"type": "array", "items": "long"}},
            {"name": "m", "type": {"type": "map", "values": ["null", "string"]}},
            {
                "name": "u",
                "type": [
                    "null",
                    "long",
                    "string",
                    "t.Four",
                    {"type": "record", "name": "t.Inner", "fields": [{"name": "x", "type": "int"}]},
                ],
            },
            {"name": "inner", "type": {"type": "array", "items": "t.Inner"}},
            {"name": "next", "type": ["null", "t.Everything"]},
            {"name": "ts_ms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "ts_us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
            {"name": "lts_ms", "type": {"type": "long", "logicalType": "local-timestamp-millis"}},
            {"name": "day", "type": {"type": "int", "logicalType": "date"}},
            {"name": "t_ms", "type": {"type": "int", "logicalType": "time-millis"}},
            {"name": "t_us", "type": {"type": "long", "logicalType": "time-micros"}},
            {
                "name": "dec",
                "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 3},
            },
            {
                "name": "fdec",
                "type": {
                    "type": "fixed",
                    "name": "t.Dec",
                    "size": 8,
                    "logicalType": "decimal",
                    "precision": 12,
                    "scale": 2,
                },
            },
            {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
            {"name": "unknown", "type": {"type": "long", "logicalType": "not-a-logical-type"}},
        ],
    }
)

longs = st.integers(min_value=-(2**63), max_value=2**63 - 1)
int32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
EARLY, LATE = datetime(1900, 1, 1), datetime(2200, 1, 1)
LOGICAL: dict[str, st.SearchStrategy[Any]] = {
    "timestamp-millis": st.datetimes(EARLY, LATE, timezones=st.just(UTC)),
    "timestamp-micros": st.datetimes(EARLY, LATE, timezones=st.just(UTC)),
    "local-timestamp-millis": st.datetimes(EARLY, LATE),
    "local-timestamp-micros": st.datetimes(EARLY, LATE),
    "date": st.dates(),
    "time-millis": st.times(),
    "time-micros": st.times(),
    "uuid": st.uuids(),
}
PRIMITIVE: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": int32,
    "long": longs,
    "float": st.floats(width=32),
    "double": st.floats(),
    "bytes": st.binary(max_size=300),
    "string": st.text(max_size=100),
}


def values(schema: Any, named: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values of a parsed schema, for fastavro's writer (recursion stops at depth 3)."""
    if isinstance(schema, list):
        branches = [b for b in schema if depth < 3 or b == "null"] or schema
        return st.one_of([values(b, named, depth) for b in branches])
    if isinstance(schema, str):
        if schema in named:
            return st.deferred(lambda: values(named[schema], named, depth + 1))
        return PRIMITIVE[schema]
    kind, logical = schema["type"], schema.get("logicalType")
    if logical == "decimal":
        scale, precision = schema.get("scale", 0), schema["precision"]
        bound = Decimal(10) ** (precision - scale) - 1
        return st.decimals(min_value=-bound, max_value=bound, places=scale)
    if logical in LOGICAL:
        return LOGICAL[logical]
    if kind in ("record", "error"):
        return st.fixed_dictionaries(
            {f["name"]: values(f["type"], named, depth) for f in schema["fields"]}
        )
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "fixed":
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    if kind == "array":
        return st.lists(values(schema["items"], named, depth), max_size=70 if depth == 0 else 3)
    if kind == "map":
        return st.dictionaries(
            st.text(max_size=5), values(schema["values"], named, depth), max_size=5
        )
    return values(kind, named, depth)


def records(schema: Any) -> st.SearchStrategy[dict[str, Any]]:
    return values(schema, schema["__named_schemas"])


def write(schema: Any, record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    out.write(b"\x00\x00\x00\x00\x07")  # a wire-format header: the reader starts after it
    fastavro.schemaless_writer(out, schema, record)
    return out.getvalue()


def fastavro_read(schema: Any, data: bytes) -> Any:
    body = io.BytesIO(data)
    body.seek(5)
    record = fastavro.schemaless_reader(body, schema, None)
    assert body.tell() == len(data)
    return record


def exact(value: Any) -> Any:
    """A value, with its types, its floats' bits and its dicts' key order, comparable."""
    if isinstance(value, dict):
        return ("dict", [(k, exact(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [exact(v) for v in value])
    if isinstance(value, float):
        return ("float", struct.pack("<d", value) if not math.isnan(value) else "nan")
    if isinstance(value, datetime):
        return ("datetime", value.isoformat(), str(value.tzinfo))
    return (type(value).__name__, value, repr(value))


def same(schema: Any, data: bytes) -> None:
    reader = compile_reader(schema)
    assert reader is not None
    record, end = reader(data, 5)
    assert end == len(data)
    assert exact(record) == exact(fastavro_read(schema, data))


@pytest.mark.parametrize(
    "local",
    [s for event in EventType for s in catalog.versions(event)],
    ids=lambda s: f"{s.event.value}-{s.label}",
)
@PROPERTY
@given(data=st.data())
def test_every_event_schema_reads_as_fastavro_reads_it(
    local: catalog.LocalSchema, data: st.DataObject
) -> None:
    schema = fastavro.parse_schema(local.json)
    same(schema, write(schema, data.draw(records(schema))))


@pytest.mark.parametrize("event_type", list(EventType))
@PROPERTY
@given(data=st.data())
def test_every_event_reads_as_fastavro_reads_it(event_type: EventType, data: st.DataObject) -> None:
    schema = fastavro.parse_schema(catalog.latest(event_type).json)
    event = data.draw(STRATEGIES[event_type])
    assert isinstance(event, EVENT_MODELS[event_type])
    same(schema, write(schema, event.to_avro()))


@PROPERTY
@given(record=records(EVERYTHING))
def test_every_avro_type_reads_as_fastavro_reads_it(record: dict[str, Any]) -> None:
    same(EVERYTHING, write(EVERYTHING, record))


def test_blocks_with_sizes_and_long_varints_read_as_fastavro_reads_them() -> None:
    schema = fastavro.parse_schema(
        {
            "type": "record",
            "name": "B",
            "fields": [
                {"name": "a", "type": {"type": "array", "items": "long"}},
                {"name": "m", "type": {"type": "map", "values": "string"}},
                {"name": "u", "type": ["null", "long"]},
                {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["X", "Y"]}},
            ],
        }
    )
    data = (
        b"\x00\x00\x00\x00\x07"
        + b"\x03\x04\x02\x04"  # a block of -2 items (count -2, 2 bytes), then 1 and 2
        + b"\x02\x06"  # a block of one item: 3
        + b"\x00"  # end of the array
        + b"\x01\x08\x02k\x02v"  # a map block of -1 entry, 4 bytes: "k" -> "v"
        + b"\x00"
        + b"\x82\x00"  # the union's index 1, in two bytes (not the shortest form)
        + b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"  # the smallest long, in ten bytes
        + b"\x82\x80\x00"  # the enum's index 1, in three bytes
    )
    same(schema, data)
    assert compile_reader(schema)(data, 5)[0] == {  # type: ignore[misc]
        "a": [1, 2, 3],
        "m": {"k": "v"},
        "u": -(2**63),
        "e": "Y",
    }


def test_a_schema_that_is_not_a_record_is_left_to_fastavro() -> None:
    assert compile_reader(fastavro.parse_schema("long")) is None
    assert compile_reader(fastavro.parse_schema(["null", "long"])) is None


def test_arrays_of_nulls_are_left_to_fastavro() -> None:
    """A corrupt count of items of no bytes would loop on and on: fastavro's way."""
    schema = fastavro.parse_schema(
        {
            "type": "record",
            "name": "N",
            "fields": [{"name": "a", "type": {"type": "array", "items": "null"}}],
        }
    )
    assert compile_reader(schema) is None


BAD = [
    pytest.param(b"\x0a" + b"abc", id="a string longer than the bytes"),
    pytest.param(b"\x03", id="a negative length"),
    pytest.param(b"\x80", id="a varint cut short"),
    pytest.param(b"\xff" * 11 + b"\x01", id="a varint of eleven bytes"),
    pytest.param(b"\x02\xff\xfe", id="bytes that are not UTF-8"),
]


@pytest.mark.parametrize("body", BAD)
def test_bytes_that_are_not_a_record_raise(body: bytes) -> None:
    schema = fastavro.parse_schema(
        {"type": "record", "name": "S", "fields": [{"name": "s", "type": "string"}]}
    )
    reader = compile_reader(schema)
    assert reader is not None
    with pytest.raises((ValueError, IndexError, KeyError)):  # UnicodeDecodeError is one
        reader(b"\x00\x00\x00\x00\x07" + body, 5)


@pytest.mark.parametrize(
    ("field", "body"),
    [
        ({"type": "enum", "name": "E", "symbols": ["X"]}, b"\x02"),  # index 1 of one symbol
        ({"type": "enum", "name": "E", "symbols": ["X"]}, b"\x01"),  # index -1
        (["null", "long"], b"\x04\x02"),  # branch 2 of two
        (["null", "long"], b"\x01"),  # branch -1
        ({"type": "array", "items": "long"}, b"\xfe\xff\xff\x0f"),  # 2**27 items in no bytes
        ({"type": "fixed", "name": "F", "size": 4}, b"\x00\x00"),  # two bytes of four
        ("double", b"\x00" * 7),
    ],
)
def test_indexes_counts_and_sizes_out_of_range_raise(field: Any, body: bytes) -> None:
    schema = fastavro.parse_schema(
        {"type": "record", "name": "R", "fields": [{"name": "f", "type": field}]}
    )
    reader = compile_reader(schema)
    assert reader is not None
    with pytest.raises((ValueError, IndexError, KeyError, struct.error)):
        reader(b"\x00\x00\x00\x00\x07" + body, 5)


@PROPERTY
@given(data=st.data())
def test_what_it_reads_from_any_bytes_fastavro_reads_the_same(data: st.DataObject) -> None:
    """On mutated bytes the compiled reader may refuse what fastavro lets through (a
    negative index, a length past the end), never the other way round; what both
    read is the same."""
    record = data.draw(records(EVERYTHING))
    raw = bytearray(write(EVERYTHING, record))
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        position = data.draw(st.integers(min_value=5, max_value=len(raw) - 1))
        raw[position] = data.draw(st.integers(min_value=0, max_value=255))
    mutated = bytes(raw)
    reader = compile_reader(EVERYTHING)
    assert reader is not None
    try:
        ours, end = reader(mutated, 5)
    except Exception:  # noqa: BLE001 - refused: fine, whatever the type
        return
    if end != len(mutated):
        return  # bytes left over: the deserializer refuses it
    assert exact(ours) == exact(fastavro_read(EVERYTHING, mutated))


def test_decimals_and_uuids_come_back_as_fastavro_makes_them() -> None:
    record = {
        "dec": Decimal("-12.345"),
        "id": UUID("12345678-1234-5678-1234-567812345678"),
    }
    schema = fastavro.parse_schema(
        {
            "type": "record",
            "name": "D",
            "fields": [
                {
                    "name": "dec",
                    "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 3},
                },
                {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
            ],
        }
    )
    same(schema, write(schema, record))
