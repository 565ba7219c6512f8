"""The archive's line format: one JSON object per record, bytes and times tagged so that
every event reads back as the dict that was written."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.models import AvroRecord
from storage.archive import Archive, ArchiveRecord, read
from storage.archive.layout import decode_line, encode_line
from tests.unit.strategies import dead_letters, file_events, run_events, verification_events

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def record(
    event: dict[str, Any], *, key: bytes | None = b"k", schema_id: int | None = 9
) -> ArchiveRecord:
    return ArchiveRecord("t", 1, 42, 1_700_000_000_000, 1_700_000_000_500, key, schema_id, event)


def test_a_line_is_one_json_object_with_the_records_fields() -> None:
    line = encode_line(record({"path": "a.txt", "size": 3}, key=b"\x00\xffkey"))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {
        "topic": "t",
        "partition": 1,
        "offset": 42,
        "timestamp_ms": 1_700_000_000_000,
        "event_time_ms": 1_700_000_000_500,
        "key": "AP9rZXk=",
        "schema_id": 9,
        "event": {"path": "a.txt", "size": 3},
    }
    nulls = json.loads(encode_line(record({}, key=None, schema_id=None)))
    assert nulls["key"] is None and nulls["schema_id"] is None


def test_bytes_and_times_are_tagged_and_read_back_as_themselves() -> None:
    event = {
        "content": b"\x00\x01binary\xff",
        "empty": b"",
        "at": datetime(2025, 3, 4, 5, 6, 7, 8000, tzinfo=UTC),
        "local": datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=-5))),
        "naive": datetime(2025, 3, 4, 5, 6, 7, 123456),
        "day": date(2025, 3, 4),
        "clock": time(5, 6, 7, 890),
        "amount": Decimal("12.3400"),
        "nested": {"list": [b"a", {"deeper": b"b"}], "none": None},
        "array": bytearray(b"ba"),
    }
    line = encode_line(record(event))
    tagged = json.loads(line)["event"]
    assert tagged["content"] == {"$bytes": "AAFiaW5hcnn/"}
    assert tagged["at"] == {"$datetime": "2025-03-04T05:06:07.008000+00:00"}
    assert tagged["day"] == {"$date": "2025-03-04"}
    assert tagged["amount"] == {"$decimal": "12.3400"}
    back = decode_line(line)
    assert back == record({**event, "array": b"ba"})
    assert back.event["local"].utcoffset() == timedelta(hours=-5)
    assert back.event["naive"].tzinfo is None


def test_maps_that_look_like_tags_are_wrapped_and_read_back_unchanged() -> None:
    event = {
        "map": {"$bytes": "not base64!"},
        "dollar": {"$ref": 1},
        "two": {"$a": 1, "$b": 2},
        "list": [{"$x": [{"$y": b"z"}]}],
        "text": '{"$bytes": "x"} and \\u0024 and $',
        "key with $": b"v",
    }
    line = encode_line(record(event))
    assert decode_line(line) == record(event)
    assert json.loads(line)["event"]["map"] == {"$map": {"$bytes": "not base64!"}}


class Colour(StrEnum):
    RED = "red"


def test_enums_uuids_and_tuples_are_written_as_orjson_writes_them() -> None:
    uid = UUID("12345678-1234-5678-1234-567812345678")
    back = decode_line(encode_line(record({"c": Colour.RED, "u": uid, "t": (1, 2)})))
    assert back.event == {"c": "red", "u": str(uid), "t": [1, 2]}
    assert back.event["c"] == Colour.RED


@pytest.mark.parametrize("value", [object(), {1, 2}, 2**64, complex(1, 2)])
def test_values_json_cannot_hold_are_refused(value: object) -> None:
    with pytest.raises(TypeError):
        encode_line(record({"v": value}))


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"[]",
        b"{not json",
        b'{"topic": "t"}',
        b'{"topic": 1, "partition": 0, "offset": 0, "timestamp_ms": 0, "event_time_ms": 0,'
        b' "key": null, "schema_id": null, "event": {}}',
        b'{"topic": "t", "partition": 0, "offset": 0, "timestamp_ms": 0, "event_time_ms": 0,'
        b' "key": "***", "schema_id": null, "event": {}}',
        b'{"topic": "t", "partition": 0, "offset": 0, "timestamp_ms": 0, "event_time_ms": 0,'
        b' "key": null, "schema_id": "1", "event": {}}',
        b'{"topic": "t", "partition": 0, "offset": 0, "timestamp_ms": 0, "event_time_ms": 0,'
        b' "key": null, "schema_id": null, "event": []}',
        b'{"topic": "t", "partition": 0, "offset": 0, "timestamp_ms": 0, "event_time_ms": 0,'
        b' "key": null, "schema_id": null, "event": {"a": {"$what": "x"}}}',
        b'{"topic": "t", "partition": 0, "offset": 0, "timestamp_ms": 0, "event_time_ms": 0,'
        b' "key": null, "schema_id": null, "event": {"a": {"$datetime": "yesterday"}}}',
    ],
)
def test_lines_that_are_not_records_are_refused(line: bytes) -> None:
    with pytest.raises(ValueError):
        decode_line(line)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.binary(max_size=40)
    | st.datetimes(timezones=st.none() | st.just(UTC))
    | st.dates(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(max_size=8) | st.just("$bytes") | st.just("$map"), inner, max_size=4
        )
    ),
    max_leaves=20,
)


@PROPERTY
@given(
    event=st.dictionaries(st.text(max_size=8), json_values, max_size=6),
    key=st.none() | st.binary(max_size=20),
)
def test_any_json_like_event_reads_back_equal(event: dict[str, Any], key: bytes | None) -> None:
    r = record(event, key=key)
    line = encode_line(r)
    assert line.count(b"\n") == 1
    assert decode_line(line) == r


@PROPERTY
@given(
    event=st.one_of(file_events(), run_events, verification_events, dead_letters),
)
def test_every_event_of_the_contract_reads_back_equal(event: AvroRecord) -> None:
    data = event.to_avro()
    assert decode_line(encode_line(record(data))).event == data
    assert type(event).from_avro(decode_line(encode_line(record(data))).event) == event


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(st.one_of(file_events(), run_events, verification_events, dead_letters)))
def test_every_event_kind_round_trips_through_files(events: list[AvroRecord]) -> None:
    records = [
        ArchiveRecord("t", 0, i, 1_700_000_000_000, 1_700_000_000_000, None, 1, e.to_avro())
        for i, e in enumerate(events)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        archive = Archive(Path(tmp))
        archive.append(records)
        archive.close_all()
        assert [line.record for line in read(Path(tmp))] == records
