"""Publishing a batch of RowEvents in one Kafka transaction, and where each landed.

:class:`RowPublisher` connects on :meth:`start`, not before. Its ``transactional_id``
is one per (source, table) and live archiver of it (``archiver.transactional_id``):
a restarted archiver takes its dead predecessor's, and the broker aborts whatever
that one left open. :meth:`publish` returns the (partition, offset) of every event
(in the order delivered), from the delivery reports, so the caller can ask the
archive for exactly those records.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.serialization import MessageField, SerializationContext

from headrace.errors import ProduceError
from headrace.failpoints import failpoint
from headrace.kafka import cluster_metadata, ensure_topics, make_admin, make_producer
from headrace.settings import KafkaSettings
from producers.errors import TransactionAborted
from schemas.catalog import EventType
from schemas.models import RowEvent
from schemas.serde import EventSerializer

log = logging.getLogger(__name__)

Placed = tuple[int, int]  # (partition, offset)


class RowPublisher:
    """One transactional producer for the row-events topic."""

    def __init__(
        self,
        settings: KafkaSettings,
        registry: SchemaRegistryClient,
        transactional_id: str,
        *,
        timeout_s: float = 60.0,
    ) -> None:
        self.settings = settings
        self.topic = settings.topics.row_events
        self.transactional_id = transactional_id
        self.timeout_s = timeout_s
        self._registry = registry
        self._producer: Producer | None = None
        self._serialize: EventSerializer | None = None
        self._ctx = SerializationContext(self.topic, MessageField.VALUE)

    def start(self) -> None:
        """Connect: the topic made if missing, transactions initialised (fencing)."""
        admin = make_admin(self.settings)
        cluster_metadata(admin, self.settings)  # no broker: one line, KafkaUnavailable
        ensure_topics(
            admin,
            [self.topic],
            partitions=self.settings.partitions,
            replication_factor=self.settings.replication_factor,
        )
        producer = make_producer(
            self.settings,
            **{
                "transactional.id": self.transactional_id,
                "transaction.timeout.ms": int(self.timeout_s * 1000),
            },
        )
        try:
            producer.init_transactions(self.timeout_s)
        except KafkaException as exc:
            raise ProduceError(
                f"cannot start transactions as {self.transactional_id}: {exc.args[0].str()}"
            ) from None
        self._producer = producer
        self._serialize = EventSerializer(self._registry, EventType.ROW_EVENT)

    def serialize(self, event: RowEvent) -> bytes:
        """The event's Kafka value, as :meth:`publish` sends it (the registry's header first)."""
        if self._serialize is None:
            raise RuntimeError("RowPublisher.start() first")
        return self._serialize(event, self._ctx)

    def publish(self, events: Sequence[RowEvent]) -> tuple[list[Placed], int]:
        """Publish ``events`` in one transaction: where each landed, and the bytes sent.

        Anything undelivered aborts the transaction (TransactionAborted): none is visible."""
        return self.publish_encoded([(e.event_id.encode(), self.serialize(e)) for e in events])

    def publish_encoded(self, records: Sequence[tuple[bytes, bytes]]) -> tuple[list[Placed], int]:
        """:meth:`publish` of events already serialized, as (key, value): the event id and
        the bytes :meth:`serialize` makes (``producers.tables.wire`` writes them faster)."""
        producer = self._producer
        if producer is None:
            raise RuntimeError("RowPublisher.start() first")
        placed: list[Placed] = []  # in the order delivered
        failed: list[str] = []
        sent = 0

        def report(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                failed.append(err.str())
            else:
                placed.append((msg.partition() or 0, msg.offset() or 0))

        try:
            producer.begin_transaction()
            for i, (key, value) in enumerate(records):
                sent += len(value)
                self._produce(producer, key, value, report)
                if i % 1000 == 999:  # serve delivery reports now and then, not per record
                    producer.poll(0)
            producer.flush(self.timeout_s)
            if failed or len(placed) != len(records):
                reason = failed[0] if failed else f"no delivery report within {self.timeout_s:g}s"
                producer.abort_transaction(self.timeout_s)
                raise TransactionAborted(f"{len(records)} row events not delivered: {reason}")
            producer.commit_transaction(self.timeout_s)
            failpoint("archive_table.after_publish")
        except KafkaException as exc:
            error = exc.args[0]
            if error.txn_requires_abort():
                producer.abort_transaction(self.timeout_s)
                raise TransactionAborted(error.str()) from None
            raise ProduceError(f"the row events' transaction failed: {error.str()}") from None
        return placed, sent

    def _produce(self, producer: Producer, key: bytes, value: bytes, report: Any) -> None:
        while True:
            try:
                producer.produce(self.topic, key=key, value=value, on_delivery=report)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.05)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(5)
            self._producer = None
