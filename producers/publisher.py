"""Publishing: an idempotent producer, every delivery report accounted for.

Each produced event is in flight until its delivery report arrives; after the
final flush, anything still in flight or reported failed is undelivered, and
the run says which files those were.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # ConfigResource: no __all__
    AdminClient,
    ConfigResource,
)
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.serialization import MessageField, SerializationContext

from headrace.errors import ProduceError
from headrace.kafka import ensure_topics, make_admin, make_producer
from headrace.settings import KafkaSettings
from producers.errors import BrokerUnavailable
from schemas.catalog import EventType
from schemas.models import FileEvent, RunEvent
from schemas.serde import EventSerializer

log = logging.getLogger(__name__)
MESSAGE_OVERHEAD = 64 * 1024  # headers, key and Avro framing around the largest inline file


@dataclass
class Publisher:
    settings: KafkaSettings
    registry: SchemaRegistryClient
    max_batch_bytes: int = 5 * 1024 * 1024
    largest_inline: int = 100 * 1024  # the inline limit: the largest content of one event
    connect_timeout_s: float = 10.0
    failed: dict[str, str] = field(default_factory=dict)  # path -> why
    delivered: int = 0
    _in_flight: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        topics = self.settings.topics
        self.file_topic, self.run_topic = topics.file_events, topics.run_events
        admin = make_admin(self.settings)
        try:
            admin.list_topics(timeout=self.connect_timeout_s)
        except KafkaException as exc:
            raise BrokerUnavailable(
                f"no Kafka broker answered at {self.settings.bootstrap_servers} within "
                f"{self.connect_timeout_s:.0f}s ({exc.args[0].str()})"
            ) from None
        ensure_topics(
            admin,
            [self.file_topic, self.run_topic],
            partitions=self.settings.partitions,
            replication_factor=self.settings.replication_factor,
        )
        self._check_broker_limit(admin)
        self._producer = make_producer(
            self.settings,
            **{
                "batch.size": self.max_batch_bytes,
                "message.max.bytes": self.max_batch_bytes + MESSAGE_OVERHEAD,
                "linger.ms": 50,
                "queue.buffering.max.kbytes": 64 * 1024,
            },
        )
        self._file_ctx = SerializationContext(self.file_topic, MessageField.VALUE)
        self._run_ctx = SerializationContext(self.run_topic, MessageField.VALUE)
        self._file_value = EventSerializer(self.registry, EventType.FILE_EVENT)
        self._run_value = EventSerializer(self.registry, EventType.RUN_EVENT)
        self._next = 0

    def _check_broker_limit(self, admin: AdminClient) -> None:
        """The largest event (an inline file and its framing) must fit the topic's
        ``max.message.bytes``: a ProduceError naming both, before anything is sent."""
        resource = ConfigResource(ConfigResource.Type.TOPIC, self.file_topic)
        try:
            configs = admin.describe_configs([resource])[resource].result(self.connect_timeout_s)
        except KafkaException as exc:
            log.warning("cannot read %s's max.message.bytes: %s", self.file_topic, exc)
            return
        entry = configs.get("max.message.bytes")
        if entry is None or entry.value is None:
            return
        limit = int(entry.value)
        largest = self.largest_inline + MESSAGE_OVERHEAD
        if largest > limit:
            raise ProduceError(
                f"--inline-limit {self.largest_inline} bytes plus {MESSAGE_OVERHEAD} of framing"
                f" is more than topic {self.file_topic}'s max.message.bytes ({limit}):"
                " lower --inline-limit or raise the topic's limit"
            )

    def file(self, event: FileEvent) -> None:
        key = f"{event.project}/{event.path}"
        self._produce(self.file_topic, key, self._file_value(event, self._file_ctx), event.path)

    def run(self, event: RunEvent) -> None:
        label = f"<run {event.kind.value.lower()}>"
        self._produce(self.run_topic, event.run_id, self._run_value(event, self._run_ctx), label)

    def _produce(self, topic: str, key: str, value: bytes, label: str) -> None:
        token = self._next
        self._next += 1
        self._in_flight[token] = label

        def report(err: KafkaError | None, _msg: Message, token: int = token) -> None:
            what = self._in_flight.pop(token, label)
            if err is None:
                self.delivered += 1
            else:
                self.failed[what] = err.str()

        while True:
            try:
                self._producer.produce(topic, key=key.encode(), value=value, on_delivery=report)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                self._producer.poll(0.05)
        self._producer.poll(0)

    def flush(self, timeout_s: float = 120.0) -> dict[str, str]:
        """Wait for every delivery report; return the undelivered labels and why."""
        self._producer.flush(timeout_s)
        for label in self._in_flight.values():
            self.failed.setdefault(label, f"no delivery report within {timeout_s:.0f}s")
        self._in_flight.clear()
        return dict(self.failed)

    def stats(self) -> dict[str, Any]:
        return {"delivered": self.delivered, "failed": len(self.failed)}
