"""The archiver's fast paths write exactly what the slow ones wrote.

- the canonical form and the row event id, now made by orjson, are the bytes of
  ``json.dumps(..., ensure_ascii=False, separators=(",", ":"))`` for every string (so the
  checksums of archives already written, and the event ids, do not change);
- ``producers.tables.wire`` writes the bytes ``EventSerializer`` writes for the model;
- the lean read-back checksum agrees with the model's, and fails what it should.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.serialization import MessageField, SerializationContext
from hypothesis import given, settings
from hypothesis import strategies as st

from producers.tables import rows
from producers.tables.archiver import _archived_checksum
from producers.tables.wire import RowEventWriter
from schemas.catalog import EventType
from schemas.models import Column, RowEvent, derive_row_event_id, row_event_id
from schemas.serde import EventSerializer

EVERY_CHARACTER = "".join(chr(i) for i in range(0x110000) if not 0xD800 <= i <= 0xDFFF)
# Characters JSON escapes or that encoders have treated specially, to be generated often.
SPECIAL = st.sampled_from(
    [chr(i) for i in range(0x20)] + ['"', "\\", "/", "\x7f", "\u2028", "\u2029", "\ufeff", "é"]
)
TEXT = st.text(st.one_of(SPECIAL, st.characters(exclude_categories=["Cs"])), max_size=40)
VALUE = st.none() | TEXT
FAST = settings(max_examples=300, deadline=None)


def old_canonical(items: list[list[str | None]]) -> bytes:
    return json.dumps(items, ensure_ascii=False, separators=(",", ":")).encode()


def old_event_id(source: str, schema: str, table: str, key: list[Column], checksum: str) -> str:
    material = [source, schema, table, checksum, *([c.name, c.value] for c in key)]
    text = json.dumps(material, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def test_every_code_point_is_written_as_json_writes_it() -> None:
    chunks = [EVERY_CHARACTER[i : i + 4096] for i in range(0, len(EVERY_CHARACTER), 4096)]
    items: list[list[str | None]] = [[c, "text", c] for c in chunks] + [["n", "int4", None]]
    assert rows.canonical_items(items) == old_canonical(items)
    key = [Column(name=c, type="text", value=c) for c in chunks[:40]]
    assert derive_row_event_id("s", "p", "t", key, "c") == old_event_id("s", "p", "t", key, "c")


@FAST
@given(st.lists(st.tuples(TEXT, TEXT, VALUE), max_size=8))
def test_canonical_form_is_unchanged(columns: list[tuple[str, str, str | None]]) -> None:
    row = [Column(name=n, type=t, value=v) for n, t, v in columns]
    items: list[list[str | None]] = [[n, t, v] for n, t, v in columns]
    assert rows.canonical(row) == old_canonical(items)
    assert rows.checksum(row) == hashlib.sha256(old_canonical(items)).hexdigest()
    assert rows.checksum_items(items) == rows.checksum(row)


@FAST
@given(TEXT, TEXT, TEXT, st.lists(st.tuples(TEXT, VALUE), max_size=4), TEXT)
def test_row_event_ids_are_unchanged(
    source: str, schema: str, table: str, key: list[tuple[str, str | None]], checksum: str
) -> None:
    columns = [Column(name=n, type="text", value=v) for n, v in key]
    old = old_event_id(source, schema, table, columns, checksum)
    assert derive_row_event_id(source, schema, table, columns, checksum) == old
    assert row_event_id(source, schema, table, key, checksum) == old


def test_a_lone_surrogate_fails_as_json_fails() -> None:
    with pytest.raises(UnicodeEncodeError):
        rows.canonical_items([["a", "text", "\ud800"]])
    with pytest.raises(UnicodeEncodeError):
        row_event_id("s", "p", "t", [("id", "\udfff")], "c")


REGISTRY = SchemaRegistryClient.new_client({"url": "mock://"})
SERIALIZE = EventSerializer(REGISTRY, EventType.ROW_EVENT)
CTX = SerializationContext("t.rows", MessageField.VALUE)
NAMES = st.lists(TEXT, min_size=1, max_size=70, unique=True)  # past 63: two-byte counts
LONG = st.text(max_size=9000)  # lengths past 4095, the writer's table of lengths


@settings(max_examples=150, deadline=None)
@given(
    NAMES.flatmap(
        lambda names: st.tuples(
            st.just(names),
            st.lists(TEXT, min_size=len(names), max_size=len(names)),
            st.lists(st.lists(VALUE | LONG, min_size=len(names), max_size=len(names)), max_size=3),
            st.sets(st.integers(0, len(names) - 1), min_size=1, max_size=3),
        )
    ),
    st.none() | TEXT,
    st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
)
def test_the_writer_writes_what_the_serializer_writes(
    table: tuple[list[str], list[str], list[list[str | None]], set[int]],
    version: str | None,
    when: datetime,
) -> None:
    names, types, batch, key_places = table
    key = sorted(key_places)
    writer = RowEventWriter(
        list(zip(names, types, strict=True)),
        key,
        run_id="run",
        source="src",
        schema="public",
        table="événements",
        producer_version=version,
    )
    header = SERIALIZE(model(names, types, ["x"] * len(names), key, version, when), CTX)[:5]
    encoded = writer.encode(header, "run-7", when, batch)
    for values, got in zip(batch, encoded, strict=True):
        event = model(names, types, values, key, version, when)
        assert (got.event_id, got.checksum) == (event.event_id, event.checksum)
        assert got.value == SERIALIZE(event, CTX)


def model(
    names: list[str],
    types: list[str],
    values: list[str | None],
    key: list[int],
    version: str | None,
    when: datetime,
) -> RowEvent:
    row = [Column(name=n, type=t, value=v) for n, t, v in zip(names, types, values, strict=True)]
    return RowEvent(
        run_id="run",
        batch_id="run-7",
        source="src",
        table_schema="public",
        table="événements",
        key=[row[i] for i in key],
        row=row,
        checksum=rows.checksum(row),
        producer_version=version,
        event_time=when,
    )


def test_the_writer_refuses_a_row_of_another_width() -> None:
    writer = RowEventWriter(
        [("id", "int8")], [0], run_id="r", source="s", schema="p", table="t", producer_version=None
    )
    with pytest.raises(ValueError, match="2 values for 1 columns"):
        writer.encode(b"\0\0\0\0\1", "r-1", datetime.now(UTC) - timedelta(days=1), [["1", "2"]])


def archived(values: list[str | None]) -> dict[str, Any]:
    event = model(["id", "t"], ["int8", "text"], values, [0], None, datetime.now(UTC))
    return event.to_avro()


def test_the_lean_checksum_is_the_models() -> None:
    event = archived(["1", None])
    assert _archived_checksum(event) == event["checksum"]


@pytest.mark.parametrize(
    "change",
    [
        lambda e: e["row"][1].update(value="y"),  # another value
        lambda e: e["row"][1].update(value=None) or e["row"][0].update(value=None),
        lambda e: e.update(checksum="0" * 64),  # a checksum field that disagrees
        lambda e: e["row"].pop(),  # a column lost
        lambda e: e["row"][1].update(name="u"),  # renamed
    ],
)
def test_the_lean_checksum_fails_a_changed_row(change: Any) -> None:
    event = archived(["1", "x"])
    change(event)
    assert _archived_checksum(event) is None


def test_a_column_that_is_not_plain_is_read_as_the_archive_would() -> None:
    event = archived(["1", "x"])
    del event["row"][1]["value"]  # a column without a value: the model's default, NULL
    assert _archived_checksum(event) is None  # the checksum was of "x"
    event = archived(["1", None])
    del event["row"][1]["value"]
    assert _archived_checksum(event) == event["checksum"]
    wrapped = archived(["1", "x"])
    wrapped["row"][1] = {"$map": wrapped["row"][1]}  # as layout._escape would wrap a map
    assert _archived_checksum(wrapped) == wrapped["checksum"]
