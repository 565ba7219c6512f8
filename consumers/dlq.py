"""The dead-letter topic: a message a group gives up on, with its original bytes and why.

Each dead letter is a DeadLetter event (Avro) carrying the original key, value
and headers, the reason code, the error text (credentials redacted), the
group, the source topic, partition and offset and the attempt count; Kafka
headers repeat the reason, group and source for filtering without decoding.
``flush`` raises if any dead letter was not delivered: the runtime then does
not commit past it, so nothing is lost.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from confluent_kafka import KafkaError, Message, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.serialization import MessageField, SerializationContext

from consumers.base import Record
from headrace.errors import ProduceError
from headrace.kafka import (
    cluster_metadata,
    ensure_topics,
    make_admin,
    make_consumer,
    make_producer,
    watermarks,
)
from headrace.redact import REDACTOR
from headrace.settings import KafkaSettings, Settings
from schemas.catalog import EventType
from schemas.errors import DeserializationError, DeserializationReason
from schemas.models import DeadLetter, DeadLetterReason, Header
from schemas.registry import make_registry_client
from schemas.serde import EventDeserializer, EventSerializer

# Bytes that do not decode (a tombstone, an empty value included) are a
# deserialization problem; bytes that decode under a schema the reader cannot use
# are a schema problem; an event that decodes and is impossible or hostile is an
# invalid event (schemas.validation), one too far in the future its own reason.
REASON_OF: dict[DeserializationReason, DeadLetterReason] = {
    DeserializationReason.EMPTY: DeadLetterReason.DESERIALIZATION,
    DeserializationReason.BAD_MAGIC_BYTE: DeadLetterReason.DESERIALIZATION,
    DeserializationReason.CORRUPT_PAYLOAD: DeadLetterReason.DESERIALIZATION,
    DeserializationReason.UNKNOWN_SCHEMA_ID: DeadLetterReason.SCHEMA,
    DeserializationReason.UNRESOLVABLE_SCHEMA: DeadLetterReason.SCHEMA,
    DeserializationReason.INVALID_EVENT: DeadLetterReason.INVALID_EVENT,
    DeserializationReason.EVENT_TIME_SKEW: DeadLetterReason.EVENT_TIME_SKEW,
}
MAX_ERROR_TEXT = 2000


class DeadLetterQueue:
    def __init__(self, settings: KafkaSettings, registry: SchemaRegistryClient, group: str) -> None:
        self.group = group
        self.topic = settings.topics.dead_letter
        ensure_topics(
            make_admin(settings),
            [self.topic],
            partitions=settings.partitions,
            replication_factor=settings.replication_factor,
        )
        self._producer = make_producer(settings)
        self._serialize = EventSerializer(registry, EventType.DEAD_LETTER)
        self._ctx = SerializationContext(self.topic, MessageField.VALUE)
        self._failed: list[str] = []
        self.sent = 0

    def send(self, record: Record, reason: DeadLetterReason, error: str, attempts: int = 1) -> None:
        letter = DeadLetter(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            headers=[Header(key=k, value=v) for k, v in record.headers],
            reason=reason,
            error=REDACTOR.redact(error)[:MAX_ERROR_TEXT],
            group=self.group,
            attempts=attempts,
            failed_at=datetime.now(UTC),
        )
        where = f"{record.topic}/{record.partition}/{record.offset}"

        def report(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                self._failed.append(f"{where}: {err.str()}")

        self._producer.produce(
            self.topic,
            key=record.key,
            value=self._serialize(letter, self._ctx),
            headers=[
                ("headrace.dlq.reason", reason.value.encode()),
                ("headrace.dlq.group", self.group.encode()),
                ("headrace.dlq.source", where.encode()),
            ],
            on_delivery=report,
        )
        self.sent += 1
        self._producer.poll(0)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait for every dead letter; raise if any was not delivered."""
        left = self._producer.flush(timeout_s)
        if left or self._failed:
            failed, self._failed = self._failed, []
            raise ProduceError(
                f"{left + len(failed)} dead letters not delivered to {self.topic}: "
                + "; ".join(failed[:3])
            )


def read_dead_letters(
    settings: Settings,
    timeout_s: float = 10.0,
    on_skip: Callable[[int, int, Exception], None] = lambda _p, _o, _e: None,
) -> Iterator[tuple[int, int, DeadLetter]]:
    """Every dead letter as (partition, offset, letter), read without joining a group's offsets."""
    topic = settings.kafka.topics.dead_letter
    consumer = make_consumer(settings.kafka, f"headrace-dlq-reader-{uuid.uuid4().hex[:8]}")
    with make_registry_client(settings.registry) as client:
        decode = EventDeserializer(client, DeadLetter)
        try:
            cluster = cluster_metadata(consumer, settings.kafka, topic, timeout_s)
            metadata = cluster.topics.get(topic)
            if metadata is None or metadata.error is not None:
                return
            ends = {}
            for p in metadata.partitions:
                _low, ends[p] = watermarks(consumer, TopicPartition(topic, p), timeout_s=timeout_s)
            consumer.assign([TopicPartition(topic, p, 0) for p in ends])
            done = {p for p, end in ends.items() if end == 0}
            while len(done) < len(ends):
                msg = consumer.poll(timeout_s)
                if msg is None:
                    break
                if msg.error() is not None:
                    continue
                partition, offset = msg.partition() or 0, msg.offset() or 0
                if offset + 1 >= ends[partition]:
                    done.add(partition)
                try:
                    yield partition, offset, decode(msg.value())
                except DeserializationError as exc:
                    on_skip(partition, offset, exc)
        finally:
            consumer.close()
