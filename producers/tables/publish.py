"""Publishing a batch of RowEvents in one Kafka transaction, and where each landed.

:class:`RowPublisher` connects on :meth:`start`, not before. Its ``transactional_id``
is one per (source, table) and live archiver of it (``archiver.transactional_id``):
a restarted archiver takes its dead predecessor's, and the broker aborts whatever
that one left open. :meth:`publish` returns the (partition, offset) of every event,
from the delivery reports, so the caller can ask the archive for exactly those records.
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
from headrace.kafka import ensure_topics, make_admin, make_producer
from headrace.settings import KafkaSettings
from producers.errors import BrokerUnavailable, TransactionAborted
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
        try:
            admin.list_topics(timeout=self.timeout_s / 6)
        except KafkaException as exc:
            raise BrokerUnavailable(
                f"no Kafka broker answered at {self.settings.bootstrap_servers}"
                f" ({exc.args[0].str()})"
            ) from None
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

    def publish(self, events: Sequence[RowEvent]) -> tuple[list[Placed], int]:
        """Publish ``events`` in one transaction: where each landed, and the bytes sent.

        Anything undelivered aborts the transaction (TransactionAborted): none is visible."""
        producer, serialize = self._producer, self._serialize
        if producer is None or serialize is None:
            raise RuntimeError("RowPublisher.start() first")
        placed: list[Placed | None] = [None] * len(events)
        failed: list[str] = []
        sent = 0
        try:
            producer.begin_transaction()
            for i, event in enumerate(events):
                value = serialize(event, self._ctx)
                sent += len(value)

                def report(err: KafkaError | None, msg: Message, i: int = i) -> None:
                    if err is not None:
                        failed.append(err.str())
                    else:
                        placed[i] = (msg.partition() or 0, msg.offset() or 0)

                self._produce(producer, event.event_id.encode(), value, report)
            producer.flush(self.timeout_s)
            if failed or any(p is None for p in placed):
                reason = failed[0] if failed else f"no delivery report within {self.timeout_s:g}s"
                producer.abort_transaction(self.timeout_s)
                raise TransactionAborted(f"{len(events)} row events not delivered: {reason}")
            producer.commit_transaction(self.timeout_s)
            failpoint("archive_table.after_publish")
        except KafkaException as exc:
            error = exc.args[0]
            if error.txn_requires_abort():
                producer.abort_transaction(self.timeout_s)
                raise TransactionAborted(error.str()) from None
            raise ProduceError(f"the row events' transaction failed: {error.str()}") from None
        return [p for p in placed if p is not None], sent

    def _produce(self, producer: Producer, key: bytes, value: bytes, report: Any) -> None:
        while True:
            try:
                producer.produce(self.topic, key=key, value=value, on_delivery=report)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.05)
        producer.poll(0)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(5)
            self._producer = None
