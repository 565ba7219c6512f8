"""Fuzz the deserializer: random and mutated bytes only ever give the typed error."""

from __future__ import annotations

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.serialization import MessageField, SerializationContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.catalog import EventType
from schemas.errors import DeserializationError
from schemas.models import EVENT_MODELS, Event
from schemas.serde import EventDeserializer, EventSerializer
from tests.unit.strategies import dead_letters, file_events, run_events

CTX = SerializationContext("fuzz.events", MessageField.VALUE)
REGISTRY = SchemaRegistryClient.new_client({"url": "mock://"})
# Register every event type once, so fuzzed headers can name real schema ids.
SERIALIZERS = {event: EventSerializer(REGISTRY, event) for event in EventType}
DESERIALIZERS = {event: EventDeserializer(REGISTRY, EVENT_MODELS[event]) for event in EventType}
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode(event_type: EventType, data: bytes) -> Event | None:
    """The event, or None for the typed error; anything else fails the test."""
    try:
        return DESERIALIZERS[event_type](data, CTX)
    except DeserializationError:
        return None


@FUZZ
@given(event_type=st.sampled_from(EventType), data=st.binary(max_size=400))
def test_random_bytes(event_type: EventType, data: bytes) -> None:
    decode(event_type, data)


@FUZZ
@given(
    event_type=st.sampled_from(EventType),
    schema_id=st.integers(min_value=0, max_value=8),
    body=st.binary(max_size=400),
)
def test_random_bodies_behind_a_valid_header(
    event_type: EventType, schema_id: int, body: bytes
) -> None:
    decode(event_type, b"\x00" + schema_id.to_bytes(4, "big") + body)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[EventType, bytes]:
    event_type, strategy = draw(
        st.sampled_from(
            [
                (EventType.FILE_EVENT, file_events()),
                (EventType.RUN_EVENT, run_events),
                (EventType.DEAD_LETTER, dead_letters),
            ]
        )
    )
    data = bytearray(SERIALIZERS[event_type](draw(strategy), CTX))
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
    event_type, data = case
    event = decode(event_type, data)
    if event is not None:  # a mutation that still decodes must give a valid event
        assert isinstance(event, EVENT_MODELS[event_type])
