"""The consumer runtime against real Kafka: exactly what was published reaches the
sink, bad records reach the dead-letter topic with their reasons, and the group
goes on."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.serialization import MessageField, SerializationContext

from consumers.base import Decoded, Sink, SinkCapabilities, TopicPartition
from consumers.dlq import DeadLetterQueue
from consumers.errors import StopConsuming
from consumers.runtime import ConsumerRuntime, Decoder
from headrace.errors import HeadraceError, Terminal, Transient
from headrace.kafka import ensure_topics, make_admin, make_producer
from headrace.settings import KafkaSettings, RegistrySettings
from schemas.catalog import EventType
from schemas.models import DeadLetter, DeadLetterReason, FileEvent
from schemas.registry import make_registry_client
from schemas.serde import EventDeserializer, EventSerializer
from tests.integration.topics import read_topic
from tests.unit.test_cli import run


class MemorySink(Sink):
    """A transactional sink in memory: each write is durable at once."""

    capabilities = SinkCapabilities(durable_on_write=True)

    def __init__(self) -> None:
        self.rows: list[Decoded] = []
        self.positions_: dict[TopicPartition, int] = {}

    def write(self, batch: Sequence[Decoded]) -> None:
        for item in batch:
            self.rows.append(item)
            tp = (item.record.topic, item.record.partition)
            self.positions_[tp] = item.record.offset + 1

    def durable(self) -> dict[TopicPartition, int]:
        return dict(self.positions_)


@pytest.fixture
def setup(
    kafka: KafkaSettings, registry: RegistrySettings
) -> Iterator[tuple[KafkaSettings, SchemaRegistryClient]]:
    tag = uuid.uuid4().hex[:10]
    topics = kafka.topics.model_copy(
        update={"file_events": f"test.rt-{tag}.files", "dead_letter": f"test.rt-{tag}.dlq"}
    )
    settings = kafka.model_copy(update={"topics": topics, "partitions": 3})
    ensure_topics(make_admin(settings), [topics.file_events], partitions=3, replication_factor=1)
    with make_registry_client(registry) as client:
        yield settings, client


def publish(
    settings: KafkaSettings,
    client: SchemaRegistryClient,
    events: list[FileEvent],
    raw: Sequence[bytes] = (),
) -> None:
    serialize = EventSerializer(client, EventType.FILE_EVENT)
    ctx = SerializationContext(settings.topics.file_events, MessageField.VALUE)
    producer = make_producer(settings)
    for event in events:
        producer.produce(
            settings.topics.file_events, key=f"p/{event.path}".encode(), value=serialize(event, ctx)
        )
    plain = Producer({"bootstrap.servers": settings.bootstrap_servers})
    for value in raw:
        plain.produce(settings.topics.file_events, key=b"p/poison", value=value)
    assert producer.flush(30) == 0 and plain.flush(30) == 0


def runtime(
    settings: KafkaSettings,
    client: SchemaRegistryClient,
    sink: Sink,
    group: str,
    hold: Callable[[], bool] | None = None,
) -> ConsumerRuntime:
    decoders: dict[str, Decoder] = {
        settings.topics.file_events: EventDeserializer(client, FileEvent),
    }
    return ConsumerRuntime(
        settings,
        group,
        decoders,
        sink,
        DeadLetterQueue(settings, client, group),
        until_caught_up=True,
        batch_size=100,
        hold=hold,
    )


def events(n: int) -> list[FileEvent]:
    return [
        FileEvent(project="p", path=f"f{i:04d}.txt", size=i, checksum=f"{i:064x}") for i in range(n)
    ]


def test_every_event_reaches_the_sink_once_and_offsets_are_committed(
    setup: tuple[KafkaSettings, SchemaRegistryClient],
) -> None:
    settings, client = setup
    sent = events(500)
    publish(settings, client, sent)
    sink = MemorySink()
    stats = runtime(settings, client, sink, f"test-rt-{uuid.uuid4().hex[:6]}").run()
    assert sorted(d.event.path for d in sink.rows) == sorted(e.path for e in sent)  # type: ignore[attr-defined]
    assert stats.processed == 500 and stats.dead_lettered == 0
    assert sum(stats.committed.values()) == 500  # per partition: the next offset, no gaps here

    # A second consumer of the same group starts where the sink's state says: nothing again.
    again = MemorySink()
    again.positions_ = dict(sink.positions_)
    runtime(settings, client, again, "unused").run()  # another group, seeded by the sink state
    assert again.rows == []


def test_a_sink_that_asks_for_its_own_batch_size_gets_it_beyond_the_old_cap(
    setup: tuple[KafkaSettings, SchemaRegistryClient],
) -> None:
    # The load group's load.batch_size (LoadSink's capabilities) wins over the runtime's
    # batch_size (consumer.batch_size), up to what one consume call hands over.
    settings, client = setup
    group = f"test-rt-{uuid.uuid4().hex[:6]}"
    sinks = [MemorySink() for _ in range(3)]
    sinks[0].capabilities = SinkCapabilities(True, max_batch=1_000_000, batch_size=120_000)
    sinks[1].capabilities = SinkCapabilities(True, max_batch=1_000_000, batch_size=7)
    sizes = [runtime(settings, client, sink, group).batch_size for sink in sinks]
    assert sizes == [120_000, 7, 100]  # the last: no batch_size of its own, the runtime's


def test_a_member_holding_reads_nothing_until_its_group_is_whole(
    setup: tuple[KafkaSettings, SchemaRegistryClient],
) -> None:
    # A supervisor's worker holds what it is assigned paused until the supervisor says
    # the group is whole: the first member to join is handed every partition alone.
    settings, client = setup
    sent = events(300)
    publish(settings, client, sent)
    sink = MemorySink()
    seen: list[tuple[int, int]] = []  # (partitions assigned, records in the sink) per call

    def hold() -> bool:
        seen.append((len(rt._assigned), len(sink.rows)))  # noqa: SLF001 - what it holds
        held_assigned = sum(1 for assigned, _ in seen if assigned == 3)
        return held_assigned >= 20  # about a second with all three partitions paused

    rt = runtime(settings, client, sink, f"test-rt-{uuid.uuid4().hex[:6]}", hold)
    stats = rt.run()
    assert sum(1 for assigned, _ in seen if assigned == 3) == 20
    assert all(rows == 0 for _, rows in seen)  # nothing read while held
    assert sorted(d.event.path for d in sink.rows) == sorted(e.path for e in sent)  # type: ignore[attr-defined]
    assert stats.processed == 300 and stats.dead_lettered == 0


def test_poison_messages_are_dead_lettered_and_the_group_goes_on(
    setup: tuple[KafkaSettings, SchemaRegistryClient],
) -> None:
    settings, client = setup
    unknown_id = b"\x00" + (987_654).to_bytes(4, "big") + b"\x02x"
    publish(settings, client, events(20), raw=[os.urandom(64), unknown_id])
    publish(settings, client, events(25)[20:])
    sink = MemorySink()
    group = f"test-rt-{uuid.uuid4().hex[:6]}"
    consumer = runtime(settings, client, sink, group)
    stats = consumer.run()
    assert stats.processed == 25 and stats.dead_lettered == 2
    topic = settings.topics.file_events
    value = consumer.metrics.registry.get_sample_value
    for reason in ("DESERIALIZATION", "SCHEMA"):
        labels = {"group": group, "topic": topic, "reason": reason}
        assert value("headrace_records_dead_lettered_total", labels) == 1
    assert value("headrace_records_processed_total", {"group": group, "topic": topic}) == 25

    decode = EventDeserializer(client, DeadLetter)
    letters = read_topic(
        settings, settings.topics.dead_letter, lambda m: (m.headers(), decode(m.value()))
    )
    reasons = sorted(letter.reason for _h, letter in letters)
    assert reasons == [DeadLetterReason.DESERIALIZATION, DeadLetterReason.SCHEMA]
    for headers, letter in letters:
        assert letter.group == group and letter.topic == settings.topics.file_events
        assert letter.value in (unknown_id,) or letter.reason is DeadLetterReason.DESERIALIZATION
        assert dict(headers)["headrace.dlq.reason"] == letter.reason.value.encode()
        assert letter.error


class RefusingSink(MemorySink):
    """Refuses one path as a constraint violation, until fixed."""

    def __init__(self, refuse: str | None) -> None:
        super().__init__()
        self.refuse = refuse

    def write(self, batch: Sequence[Decoded]) -> None:
        if self.refuse and any(d.event.path == self.refuse for d in batch):  # type: ignore[attr-defined]
            raise ConstraintViolation(f"{self.refuse} breaks a constraint")
        super().write(batch)


class ConstraintViolation(HeadraceError, Terminal):
    pass


def test_a_refused_record_is_dead_lettered_and_replay_brings_it_back(
    setup: tuple[KafkaSettings, SchemaRegistryClient],
    registry: RegistrySettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings, client = setup
    publish(settings, client, events(30))
    first = RefusingSink(refuse="f0007.txt")
    stats = runtime(settings, client, first, f"test-rt-{uuid.uuid4().hex[:6]}").run()
    assert stats.processed == 29 and stats.dead_lettered == 1
    assert "f0007.txt" not in {d.event.path for d in first.rows}  # type: ignore[attr-defined]

    monkeypatch.setenv("HEADRACE_KAFKA__BOOTSTRAP_SERVERS", settings.bootstrap_servers)
    monkeypatch.setenv("HEADRACE_KAFKA__TOPICS__DEAD_LETTER", settings.topics.dead_letter)
    monkeypatch.setenv("HEADRACE_REGISTRY__URL", registry.url)
    code, out, err = run(["dlq", "list", "--json"], capsys)
    assert code == 0, err
    [listed] = [orjson.loads(line) for line in out.splitlines()]
    assert listed["reason"] == "storage_constraint"
    assert "f0007.txt breaks a constraint" in listed["error"]
    code, out, _ = run(["dlq", "show", listed["id"]], capsys)
    assert code == 0 and orjson.loads(out)["reason"] == "STORAGE_CONSTRAINT"

    code, out, err = run(["dlq", "replay", listed["id"]], capsys)
    assert (code, out.strip()) == (0, f"replayed {listed['id']}"), err
    fixed = RefusingSink(refuse=None)
    fixed.positions_ = dict(first.positions_)  # the sink's state: everything else is done
    stats = runtime(settings, client, fixed, f"test-rt-{uuid.uuid4().hex[:6]}").run()
    assert [d.event.path for d in fixed.rows] == ["f0007.txt"]  # type: ignore[attr-defined]


class FlakySink(MemorySink):
    """Unavailable for its first writes, like a database that is restarting."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.attempts = 0

    def write(self, batch: Sequence[Decoded]) -> None:
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            raise StorageDown("database restarting")
        super().write(batch)


class StorageDown(HeadraceError, Transient):
    pass


def test_transient_failures_are_retried_not_dead_lettered(
    setup: tuple[KafkaSettings, SchemaRegistryClient],
) -> None:
    settings, client = setup
    publish(settings, client, events(40))
    sink = FlakySink(failures=3)
    group = f"test-rt-{uuid.uuid4().hex[:6]}"
    consumer = runtime(settings, client, sink, group)
    stats = consumer.run()
    assert stats.processed == 40 and stats.dead_lettered == 0
    assert sink.attempts >= 4
    assert (
        consumer.metrics.registry.get_sample_value("headrace_retries_total", {"group": group}) == 3
    )
    assert sorted(d.event.path for d in sink.rows) == [e.path for e in events(40)]  # type: ignore[union-attr]


class FlakyPositionsSink(MemorySink):
    """Its first position reads fail, like a database connection a restart cut."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def positions(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        if self.failures:
            self.failures -= 1
            raise StorageDown("terminating connection due to administrator command")
        return {}


def test_positions_unavailable_on_assignment_are_retried_not_fatal(
    setup: tuple[KafkaSettings, SchemaRegistryClient],
) -> None:
    settings, client = setup
    publish(settings, client, events(10))
    sink = FlakyPositionsSink(failures=2)
    stats = runtime(settings, client, sink, f"test-rt-{uuid.uuid4().hex[:6]}").run()
    assert sink.failures == 0
    assert stats.processed == 10 and stats.dead_lettered == 0


def test_a_sink_down_for_too_long_stops_the_group_with_a_clear_error(
    setup: tuple[KafkaSettings, SchemaRegistryClient],
) -> None:
    settings, client = setup
    publish(settings, client, events(5))
    group = f"test-rt-{uuid.uuid4().hex[:6]}"
    decoders: dict[str, Decoder] = {
        settings.topics.file_events: EventDeserializer(client, FileEvent)
    }
    rt = ConsumerRuntime(
        settings,
        group,
        decoders,
        FlakySink(failures=10**6),
        DeadLetterQueue(settings, client, group),
        until_caught_up=True,
        retry_for_s=2.0,
    )
    with pytest.raises(StopConsuming, match="sink still unavailable after 2s: database restarting"):
        rt.run()
