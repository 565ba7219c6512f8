"""Every event round-trips through the wire format, within and across versions."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.errors import Terminal, is_transient
from schemas import catalog
from schemas.catalog import EventType
from schemas.errors import DeserializationError, DeserializationReason
from schemas.models import DeadLetter, DeadLetterReason, FileEvent
from schemas.registry import SUBJECT_STRATEGY
from schemas.serde import EventDeserializer, EventSerializer
from tests.unit.strategies import (
    dead_letters,
    file_events,
    row_events,
    run_events,
    verification_events,
)

CTX = SerializationContext("unit.events", MessageField.VALUE)
STRATEGIES = {
    EventType.FILE_EVENT: file_events(),
    EventType.RUN_EVENT: run_events,
    EventType.VERIFICATION_EVENT: verification_events,
    EventType.DEAD_LETTER: dead_letters,
    EventType.ROW_EVENT: row_events,
}


def mock_registry() -> SchemaRegistryClient:
    return SchemaRegistryClient.new_client({"url": "mock://"})


@pytest.mark.parametrize("event_type", list(EventType))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_event_round_trips(event_type: EventType, data: st.DataObject) -> None:
    registry = mock_registry()
    event = data.draw(STRATEGIES[event_type])
    payload = EventSerializer(registry, event_type)(event, CTX)
    assert payload[0] == 0
    schema_id = int.from_bytes(payload[1:5], "big")
    assert registry.get_schema(schema_id).schema_str
    model = type(event)
    assert EventDeserializer(registry, model)(payload, CTX) == event


@pytest.mark.parametrize(
    "local",
    [s for event in EventType for s in catalog.versions(event)],
    ids=lambda s: f"{s.event.value}-{s.label}",
)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_version_round_trips_as_itself(
    local: catalog.LocalSchema, data: st.DataObject
) -> None:
    registry = mock_registry()
    strategy = (
        file_events(legacy_path=True)
        if local.event is EventType.FILE_EVENT
        else STRATEGIES[local.event]
    )
    if local.event is EventType.DEAD_LETTER:  # a version writes only the reasons it has
        reasons = next(f["type"]["symbols"] for f in local.json["fields"] if f["name"] == "reason")
        strategy = strategy.filter(lambda d: d.reason in reasons)
    if local.event is EventType.RUN_EVENT:  # ... and the skip reasons it has
        skipped = next(f["type"] for f in local.json["fields"] if f["name"] == "skipped")
        symbols = next(f["type"]["symbols"] for f in skipped["items"]["fields"]
                       if f["name"] == "reason")  # fmt: skip
        strategy = strategy.filter(lambda r: all(s.reason in symbols for s in r.skipped))
    event = data.draw(strategy)
    payload = EventSerializer(registry, local.event, writer_version=local.version)(event, CTX)
    read = EventDeserializer(registry, type(event), reader_version=local.version)(payload, CTX)
    # The fields this version has survive; those it lacks take their defaults.
    names = [f["name"] for f in local.json["fields"]]
    assert {n: getattr(read, n) for n in names} == {n: getattr(event, n) for n in names}


def v1_writer(registry: SchemaRegistryClient) -> Callable[[dict[str, object]], bytes]:
    serializer = AvroSerializer(
        registry, catalog.version(EventType.FILE_EVENT, 1).text, conf=SUBJECT_STRATEGY
    )
    return lambda record: serializer(record, CTX)


@settings(max_examples=80, deadline=None)
@given(event=file_events(legacy_path=True))
def test_v1_written_is_read_as_a_legacy_v2_event(event: FileEvent) -> None:
    registry = mock_registry()
    record = {
        "project": event.project,
        "path": event.path,
        "size": event.size,
        "checksum": event.checksum,
        "local_path": event.local_path,
    }
    read = EventDeserializer(registry, FileEvent)(v1_writer(registry)(record), CTX)
    assert read.is_legacy
    assert (read.project, read.path, read.size, read.checksum, read.local_path) == (
        event.project,
        event.path,
        event.size,
        event.checksum,
        event.local_path,
    )
    assert read.content_strategy is None and read.inline is None and read.object_ref is None
    assert read.event_id  # derived deterministically, as for v2 events without one
    assert read == EventDeserializer(registry, FileEvent)(v1_writer(registry)(record), CTX)


@settings(max_examples=80, deadline=None)
@given(event=file_events(legacy_path=True))
def test_v2_written_is_read_by_a_v1_reader_when_it_has_a_local_path(event: FileEvent) -> None:
    # FORWARD (old reads new) holds for v2 data that sets the v1 fields.
    registry = mock_registry()
    payload = EventSerializer(registry, EventType.FILE_EVENT)(event, CTX)
    read = EventDeserializer(registry, FileEvent, reader_version=1)(payload, CTX)
    assert (read.project, read.path, read.size, read.checksum, read.local_path) == (
        event.project,
        event.path,
        event.size,
        event.checksum,
        event.local_path,
    )


@settings(max_examples=40, deadline=None)
@given(event=file_events(legacy_path=False))
def test_v2_without_local_path_is_a_typed_error_for_a_v1_reader(event: FileEvent) -> None:
    # The registry's level (BACKWARD) does not promise this direction.
    registry = mock_registry()
    payload = EventSerializer(registry, EventType.FILE_EVENT)(event, CTX)
    with pytest.raises(DeserializationError) as info:
        EventDeserializer(registry, FileEvent, reader_version=1)(payload, CTX)
    assert info.value.reason is DeserializationReason.UNRESOLVABLE_SCHEMA


def test_serializer_refuses_the_wrong_model() -> None:
    event = next(iter([FileEvent(project="p", path="a", size=0, checksum="")]))
    with pytest.raises(TypeError, match="expected RunEvent, got FileEvent"):
        EventSerializer(mock_registry(), EventType.RUN_EVENT)(event, CTX)


@pytest.fixture(scope="module")
def valid_payload() -> tuple[SchemaRegistryClient, bytes]:
    registry = mock_registry()
    event = FileEvent(project="p", path="src/a.py", size=3, checksum="ab" * 32)
    return registry, EventSerializer(registry, EventType.FILE_EVENT)(event, CTX)


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda p: None, DeserializationReason.EMPTY),
        (lambda p: p[:5], DeserializationReason.EMPTY),
        (lambda p: b"\x01" + p[1:], DeserializationReason.BAD_MAGIC_BYTE),
        (lambda p: b'{"json": true}', DeserializationReason.BAD_MAGIC_BYTE),
        (
            lambda p: p[:1] + (9999).to_bytes(4, "big") + p[5:],
            DeserializationReason.UNKNOWN_SCHEMA_ID,
        ),
        (lambda p: p[:-3], DeserializationReason.CORRUPT_PAYLOAD),
        (lambda p: p + b"\x00", DeserializationReason.CORRUPT_PAYLOAD),
    ],
)
def test_bad_input_is_a_typed_terminal_error(
    valid_payload: tuple[SchemaRegistryClient, bytes],
    mangle: Callable[[bytes], bytes | None],
    reason: DeserializationReason,
) -> None:
    registry, payload = valid_payload
    with pytest.raises(DeserializationError) as info:
        EventDeserializer(registry, FileEvent)(mangle(payload), CTX)
    assert info.value.reason is reason
    assert str(info.value).startswith(reason.value + ": ")


def test_a_schema_the_reader_cannot_resolve(
    valid_payload: tuple[SchemaRegistryClient, bytes],
) -> None:
    registry, _ = valid_payload
    other = AvroSerializer(
        registry,
        '{"type": "record", "name": "Other", "fields": [{"name": "n", "type": "int"}]}',
        conf=SUBJECT_STRATEGY,
    )
    payload = other({"n": 1}, SerializationContext("unit.other", MessageField.VALUE))
    with pytest.raises(DeserializationError) as info:
        EventDeserializer(registry, FileEvent)(payload, CTX)
    assert info.value.reason is DeserializationReason.UNRESOLVABLE_SCHEMA


def test_deserialization_errors_are_terminal() -> None:
    error = DeserializationError(DeserializationReason.CORRUPT_PAYLOAD, "x")
    assert isinstance(error, Terminal) and not is_transient(error)


@settings(max_examples=40, deadline=None)
@given(event=file_events())
def test_decode_gives_the_reader_schemas_dict_without_the_model(event: FileEvent) -> None:
    registry = mock_registry()
    payload = EventSerializer(registry, EventType.FILE_EVENT)(event, CTX)
    assert EventDeserializer(registry, FileEvent).decode(payload) == event.to_avro()


def test_a_reason_v1_lacks_reads_as_other_there() -> None:
    registry = mock_registry()
    letter = DeadLetter(
        topic="t",
        partition=0,
        offset=1,
        reason=DeadLetterReason.REFUSED,
        error="host not allowed",
        group="g",
        attempts=1,
        failed_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    payload = EventSerializer(registry, EventType.DEAD_LETTER)(letter, CTX)
    old = EventDeserializer(registry, DeadLetter, reader_version=1)(payload, CTX)
    assert old.reason is DeadLetterReason.OTHER
    assert EventDeserializer(registry, DeadLetter)(payload, CTX).reason is DeadLetterReason.REFUSED
