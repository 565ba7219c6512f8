"""Fuzz the deserializer: random, truncated and mutated bytes, wrong magic bytes, unknown
schema ids and garbage behind a valid header only ever give an event or the typed
:class:`DeserializationError` with its reason; never another exception, never a hang
(each example has a deadline)."""

from __future__ import annotations

from datetime import timedelta

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.serialization import MessageField, SerializationContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import catalog
from schemas.catalog import EventType
from schemas.errors import DeserializationError
from schemas.errors import DeserializationReason as Reason
from schemas.models import EVENT_MODELS, Event
from schemas.serde import EventDeserializer, EventSerializer
from tests.unit.strategies import (
    dead_letters,
    file_events,
    row_events,
    run_events,
    verification_events,
)

CTX = SerializationContext("fuzz.events", MessageField.VALUE)
REGISTRY = SchemaRegistryClient.new_client({"url": "mock://"})
# Every local version of every event type, and one schema that is not Avro, registered
# before any test: fuzzed headers then name real ids of every kind (the reader's own,
# an older version resolved by fastavro, another event type's, a JSON schema).
SCHEMA_IDS: dict[int, tuple[EventType | None, int]] = {}
for _event in EventType:
    for _local in catalog.versions(_event):
        _id = REGISTRY.register_schema(f"fuzz.{_event.value}-value", Schema(_local.text, "AVRO"))
        SCHEMA_IDS[_id] = (_event, _local.version)
SCHEMA_IDS[REGISTRY.register_schema("fuzz.json-value", Schema('{"type": "object"}', "JSON"))] = (
    None,
    0,
)
KNOWN_IDS = sorted(SCHEMA_IDS)
SERIALIZERS = {event: EventSerializer(REGISTRY, event) for event in EventType}
DESERIALIZERS = {event: EventDeserializer(REGISTRY, EVENT_MODELS[event]) for event in EventType}
EVENTS = {
    EventType.FILE_EVENT: file_events(),
    EventType.RUN_EVENT: run_events,
    EventType.VERIFICATION_EVENT: verification_events,
    EventType.DEAD_LETTER: dead_letters,
    EventType.ROW_EVENT: row_events,
}
# About 15 s for the file on one core; a deadline of seconds catches a hang, not jitter.
FUZZ = settings(
    max_examples=300,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
event_types = st.sampled_from(EventType)


def decode(event_type: EventType, data: bytes | None) -> Event | Reason:
    """The event, or the reason of the typed error; anything else fails the test."""
    try:
        event = DESERIALIZERS[event_type](data, CTX)
    except DeserializationError as exc:
        assert isinstance(exc.reason, Reason)
        assert str(exc).startswith(f"{exc.reason.value}: ") and len(str(exc)) < 600
        return exc.reason
    assert isinstance(event, EVENT_MODELS[event_type])
    return event


def header(schema_id: int, magic: int = 0) -> bytes:
    return bytes([magic]) + schema_id.to_bytes(4, "big")


@FUZZ
@given(event_type=event_types, data=st.binary(max_size=400))
def test_random_bytes(event_type: EventType, data: bytes) -> None:
    decode(event_type, data)


@FUZZ
@given(event_type=event_types, data=st.binary(max_size=5))
def test_no_more_than_a_header_is_empty(event_type: EventType, data: bytes) -> None:
    assert decode(event_type, data) is Reason.EMPTY
    assert decode(event_type, None) is Reason.EMPTY


@FUZZ
@given(
    event_type=event_types,
    magic=st.integers(min_value=1, max_value=255),
    schema_id=st.sampled_from(KNOWN_IDS) | st.integers(min_value=0, max_value=2**32 - 1),
    body=st.binary(min_size=1, max_size=200),
)
def test_a_wrong_magic_byte(event_type: EventType, magic: int, schema_id: int, body: bytes) -> None:
    assert decode(event_type, header(schema_id, magic) + body) is Reason.BAD_MAGIC_BYTE


@FUZZ
@given(
    event_type=event_types,
    schema_id=st.integers(min_value=0, max_value=2**32 - 1).filter(lambda i: i not in SCHEMA_IDS),
    body=st.binary(min_size=1, max_size=200),
)
def test_an_unknown_schema_id(event_type: EventType, schema_id: int, body: bytes) -> None:
    assert decode(event_type, header(schema_id) + body) is Reason.UNKNOWN_SCHEMA_ID


@FUZZ
@given(
    event_type=event_types,
    schema_id=st.sampled_from(KNOWN_IDS),
    body=st.binary(min_size=1, max_size=400),
)
def test_garbage_behind_a_valid_header(event_type: EventType, schema_id: int, body: bytes) -> None:
    outcome = decode(event_type, header(schema_id) + body)
    writer, _ = SCHEMA_IDS[schema_id]
    if writer is None:  # a JSON schema
        assert outcome is Reason.UNRESOLVABLE_SCHEMA
    else:
        assert outcome not in (Reason.EMPTY, Reason.BAD_MAGIC_BYTE, Reason.UNKNOWN_SCHEMA_ID)


@st.composite
def payloads(draw: st.DrawFn) -> tuple[EventType, bytes]:
    """A valid payload of any event type, written with its latest schema."""
    event_type = draw(event_types)
    return event_type, SERIALIZERS[event_type](draw(EVENTS[event_type]), CTX)


@FUZZ
@given(case=payloads(), data=st.data())
def test_truncated_avro_is_corrupt(case: tuple[EventType, bytes], data: st.DataObject) -> None:
    """Every strict prefix of a payload is refused: EMPTY up to the header, CORRUPT_PAYLOAD
    after it (an Avro record is read field by field, so a prefix always lacks bytes)."""
    event_type, payload = case
    assert isinstance(decode(event_type, payload), EVENT_MODELS[event_type])
    cut = data.draw(st.integers(min_value=0, max_value=len(payload) - 1))
    expected = Reason.EMPTY if cut <= 5 else Reason.CORRUPT_PAYLOAD
    assert decode(event_type, payload[:cut]) is expected
    # A valid payload with bytes after it is corrupt too.
    extra = data.draw(st.binary(min_size=1, max_size=16))
    assert decode(event_type, payload + extra) is Reason.CORRUPT_PAYLOAD


@st.composite
def mutated(draw: st.DrawFn) -> tuple[EventType, bytes]:
    event_type, payload = draw(payloads())
    data = bytearray(payload)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        position = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
        action = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "duplicate"]))
        if action == "flip" and data:
            data[position] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif action == "truncate":
            del data[position:]
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete" and data:
            del data[position]
        elif action == "duplicate":
            data[position:position] = data[position : position + 16]
    return event_type, bytes(data)


@FUZZ
@given(case=mutated())
def test_mutated_valid_payloads(case: tuple[EventType, bytes]) -> None:
    decode(*case)  # a mutation that still decodes must give a valid event (checked there)


@FUZZ
@given(case=payloads(), reader=event_types)
def test_another_event_types_payload(case: tuple[EventType, bytes], reader: EventType) -> None:
    """Read as the wrong event type: the event, if the schemas happen to resolve, or a
    reason; a fresh deserializer and a warm one (its compiled reader cached by header)
    agree."""
    _, payload = case
    fresh = EventDeserializer(REGISTRY, EVENT_MODELS[reader])
    try:
        first: object = fresh(payload, CTX)
    except DeserializationError as exc:
        first = exc.reason
    assert first == decode(reader, payload)
