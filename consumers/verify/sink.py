"""The verify group's sink: each file event's content resolved and checked, and a
VerificationEvent published for it, exactly once.

Every upsert is resolved through the content resolver (inline bytes, the object
store, the clone cache, a v1 event's path) and checked against its sha256 and
size. The outcome is a VerificationEvent keyed by the event id: ``OK``,
``MISMATCH`` (bytes found that are not the event's), ``MISSING`` (nothing holds
them any more) or ``ERROR`` (a reference that is refused). A content failure is
an outcome, published and counted, never retried; an unreachable store is
transient: the batch is aborted and retried by the runtime.

Each batch is one Kafka transaction holding its verifications and the group's
consumed offsets (``send_offsets_to_transaction``): a crash before the commit
leaves neither, after it both, so a replay never verifies an event twice.
Deletes have no content and get no verification.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as KafkaPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.serialization import MessageField, SerializationContext
from prometheus_client import CollectorRegistry, Counter

from consumers.base import Decoded, Sink, SinkCapabilities, TopicPartition
from consumers.instance import InstanceSlot, instance_id
from headrace import __version__
from headrace.errors import ProduceError, Transient
from headrace.failpoints import failpoint
from headrace.kafka import Hung, ensure_topics, make_admin, make_producer, within
from headrace.settings import KafkaSettings
from schemas.catalog import EventType
from schemas.models import VerificationEvent, VerificationStatus
from schemas.serde import EventSerializer
from storage.content.errors import ChecksumMismatch, ContentError, PayloadMissing
from storage.content.resolver import ContentResolver

log = logging.getLogger(__name__)
VERIFIER = f"headrace-verify {__version__}"
# How long past its own timeout a librdkafka call may take before it counts as hung.
HUNG_MARGIN_S = 10.0


class VerifyUnavailable(ProduceError, Transient):
    """A batch's transaction could not commit: aborted, to be retried whole."""


def status_of(error: ContentError) -> VerificationStatus:
    if isinstance(error, ChecksumMismatch):
        return VerificationStatus.MISMATCH
    if isinstance(error, PayloadMissing):
        return VerificationStatus.MISSING
    return VerificationStatus.ERROR  # refused: a reference that is not fetched


class VerifyMetrics:
    def __init__(self, registry: CollectorRegistry, group: str) -> None:
        self.group = group
        self.outcomes = Counter(
            "headrace_verifications",
            "File events verified, by content strategy and outcome",
            ["group", "strategy", "status"],
            registry=registry,
        )


def verification_of(
    event: dict[str, Any],
    outcome: Any,
    where: tuple[str, int, int],
    verified_at: datetime,
) -> VerificationEvent:
    """The VerificationEvent of a file event (a dict) whose content resolved to
    ``outcome`` (the resolved content, or the ContentError); ``where``: its topic,
    partition and offset."""
    common: dict[str, Any] = {
        "event_id": event.get("event_id") or "",
        "run_id": event.get("run_id"),
        "project": event["project"],
        "path": event["path"],
        "expected_checksum": event.get("checksum") or "",
        "expected_size": event["size"],
        "source_topic": where[0],
        "source_partition": where[1],
        "source_offset": where[2],
        "verifier": VERIFIER,
        "verified_at": verified_at,
    }
    if isinstance(outcome, ContentError):
        actual = getattr(outcome, "actual_sha256", None), getattr(outcome, "actual_size", None)
        return VerificationEvent(
            **common,
            status=status_of(outcome),
            actual_checksum=actual[0],
            actual_size=actual[1],
            detail=str(outcome),
        )
    return VerificationEvent(
        **common,
        status=VerificationStatus.OK,
        actual_checksum=outcome.sha256,
        actual_size=outcome.size,
    )


def transactional_id_for(group_id: str, slot: int) -> str:
    """One id per live process: the host and the process's slot on it (consumers.instance),
    the same as the process's group.instance.id."""
    return instance_id(group_id, slot)


class VerifySink(Sink):
    # Durable on write: a returned write has committed its verifications and offsets.
    capabilities = SinkCapabilities(durable_on_write=True, max_batch=2000, needs_models=False)

    def __init__(
        self,
        resolver: ContentResolver,
        kafka: KafkaSettings,
        registry: SchemaRegistryClient,
        *,
        group_id: str,
        parallel: int = 4,
        metrics: VerifyMetrics | None = None,
        transaction_timeout_s: float = 60.0,
        instances: Path = Path(".headrace") / "instances",
    ) -> None:
        self.resolver, self.parallel, self.metrics = resolver, parallel, metrics
        self.file_topic = kafka.topics.file_events
        self.topic = kafka.topics.verifications
        self._kafka, self._registry = kafka, registry
        self._slot = InstanceSlot(instances, group_id)
        self._group_id = group_id
        self._timeout_s = transaction_timeout_s
        self._producer: Any = None  # made on the first batch: the constructor does no I/O
        self._serialize = EventSerializer(registry, EventType.VERIFICATION_EVENT)
        self._ctx = SerializationContext(self.topic, MessageField.VALUE)
        self._group_metadata: Callable[[], Any] | None = None
        self._durable: dict[TopicPartition, int] = {}
        self.outcomes: dict[str, int] = {}
        self._undelivered: str | None = None  # the first failed delivery of the batch

    def bind(self, group_metadata: Callable[[], Any]) -> None:
        """The runtime's consumer, for the offsets each transaction commits. Before the
        group is joined: the producer starts its transactions, which aborts what a
        crashed predecessor of this slot left open (its offsets would block the join)."""
        self._group_metadata = group_metadata
        self._ready()

    def _ready(self) -> Any:
        if self._producer is None:
            kafka = self._kafka
            ensure_topics(
                make_admin(kafka),
                [self.topic],
                partitions=kafka.partitions,
                replication_factor=kafka.replication_factor,
            )
            if self._slot.number < 0:
                self._slot.acquire()
            self._producer = make_producer(
                self._kafka,
                **{
                    "transactional.id": transactional_id_for(self._group_id, self._slot.number),
                    "transaction.timeout.ms": int(self._timeout_s * 1000),
                },
            )
            try:
                self._producer.init_transactions(30)
            except KafkaException as exc:
                self._producer = None
                raise VerifyUnavailable(f"cannot start transactions: {exc.args[0].str()}") from None
        return self._producer

    def write(self, batch: Sequence[Decoded]) -> None:
        if self._group_metadata is None:
            raise RuntimeError("VerifySink.write before bind(): the runtime binds it")
        producer = self._ready()
        wanted = [
            d
            for d in batch
            if d.record.topic == self.file_topic
            and str(d.as_dict().get("op") or "UPSERT") == "UPSERT"
        ]
        events = [d.as_dict() for d in wanted]
        results = self.resolver.resolve_many(events, parallel=self.parallel, keep_bytes=False)
        offsets: dict[TopicPartition, int] = {}
        for d in batch:
            tp = (d.record.topic, d.record.partition)
            offsets[tp] = max(offsets.get(tp, 0), d.record.offset + 1)
        verified_at = datetime.now(UTC)
        counted: list[tuple[str, str]] = []
        try:
            producer.begin_transaction()
            for d, event, outcome in zip(wanted, events, results, strict=True):
                verification = self._verification(d, event, outcome, verified_at)
                producer.produce(
                    self.topic,
                    key=verification.event_id.encode(),
                    value=self._serialize(verification, self._ctx),
                    on_delivery=self._delivered,
                )
                producer.poll(0)
                counted.append((str(event.get("content_strategy")), verification.status.value))
                if not isinstance(outcome, ContentError):
                    outcome.discard()
            positions = [KafkaPartition(t, p, o) for (t, p), o in offsets.items()]
            group = self._group_metadata()
            within(
                self._timeout_s + HUNG_MARGIN_S,
                lambda: producer.send_offsets_to_transaction(positions, group, self._timeout_s),
                "send_offsets_to_transaction",
            )
            producer.flush(self._timeout_s)  # delivered, not yet visible
            failpoint("verify.before_commit")  # tests: die with the verifications in flight
            producer.commit_transaction(self._timeout_s)
        except KafkaException as exc:
            self._abort(exc)
        except Hung as exc:  # a new producer of this id fences the transaction left open
            self._producer = None
            raise VerifyUnavailable(f"the verify transaction was abandoned: {exc}") from None
        for tp, offset in offsets.items():
            self._durable[tp] = max(self._durable.get(tp, 0), offset)
        for strategy, status in counted:
            self.outcomes[status] = self.outcomes.get(status, 0) + 1
            if self.metrics is not None:
                self.metrics.outcomes.labels(self.metrics.group, strategy, status).inc()

    def _delivered(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None and self._undelivered is None:
            self._undelivered = err.str()

    def _verification(
        self,
        decoded: Decoded,
        event: dict[str, Any],
        outcome: Any,
        verified_at: datetime,
    ) -> VerificationEvent:
        record = decoded.record
        return verification_of(
            event, outcome, (record.topic, record.partition, record.offset), verified_at
        )

    def _abort(self, exc: KafkaException) -> None:
        error = exc.args[0]
        why = error.str() + (f" ({self._undelivered})" if self._undelivered else "")
        self._undelivered = None
        if error.fatal():  # fenced: a newer instance of this process's id, or the group moved
            self._producer = None
            raise ProduceError(f"the verify transaction failed: {why}") from None
        try:
            self._producer.abort_transaction(self._timeout_s)
        except KafkaException:
            self._producer = None  # a new producer fences what this one left
        raise VerifyUnavailable(f"the verify transaction was aborted: {why}") from None

    def durable(self) -> dict[TopicPartition, int]:
        return dict(self._durable)

    def close(self) -> None:
        """Flush, close the resolver and the registry client (the sink owns both)."""
        if self._producer is not None:
            self._producer.flush(10)
        self.resolver.close()
        self._registry.close()
        self._slot.release()
