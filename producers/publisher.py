"""Publishing: a transactional producer, every delivery report accounted for.

Each produced event is in flight until its delivery report arrives; before a
transaction commits, everything in it is flushed, and anything reported failed
aborts it, so the run can say which files those were. With a
``transactional_id`` the events of one batch become visible together or not at
all (consumers read ``read_committed``), and a second producer with the same id
fences the first: the broker aborts what the first left open, and the first
can commit nothing more. Without one, the producer is idempotent only.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # ConfigResource: no __all__
    AdminClient,
    ConfigResource,
)
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.serialization import MessageField, SerializationContext
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from headrace.errors import ProduceError
from headrace.kafka import (
    answer,
    cluster_metadata,
    ensure_topics,
    make_admin,
    make_consumer,
    make_producer,
)
from headrace.settings import KafkaSettings
from producers.errors import Fenced, TransactionAborted
from producers.prepare import EncodedFile
from producers.runs import Probe
from schemas.catalog import EventType
from schemas.models import FileEvent, RunEvent
from schemas.serde import EventSerializer

log = logging.getLogger(__name__)
# librdkafka's own (local) error codes are spelled with a leading underscore.
FENCED = (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH)  # noqa: SLF001
PARTITION_EOF = KafkaError._PARTITION_EOF  # noqa: SLF001
MESSAGE_OVERHEAD = 64 * 1024  # headers, key and Avro framing around the largest inline file
# Delivery reports are served every this many produced events: a poll(0) after each one
# was 7% of a tiny-file ingest's main thread (py-spy), for reports nothing reads before
# the batch's flush.
POLL_EVERY = 64


class Publisher:
    """One producer of a run's file and run events. The constructor does no I/O:
    :meth:`start` connects (the topics made if missing, the broker's message limit
    checked, transactions initialised, which fences an earlier producer of the id)."""

    def __init__(
        self,
        settings: KafkaSettings,
        registry: SchemaRegistryClient,
        *,
        max_batch_bytes: int = 5 * 1024 * 1024,
        largest_inline: int = 100 * 1024,  # the inline limit: the largest content of one event
        connect_timeout_s: float = 10.0,
        transactional_id: str | None = None,
        transaction_timeout_s: float = 60.0,  # the broker aborts a transaction left open longer
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.max_batch_bytes = max_batch_bytes
        self.largest_inline = largest_inline
        self.connect_timeout_s = connect_timeout_s
        self.transactional_id = transactional_id
        self.transaction_timeout_s = transaction_timeout_s
        self.file_topic = settings.topics.file_events
        self.run_topic = settings.topics.run_events
        self.failed: dict[str, str] = {}  # label (a path) -> why it was not delivered
        self.delivered = 0
        self._producer: Producer | None = None  # made by start()
        self._in_flight: dict[int, str] = {}
        self._probe: Probe | None = None  # where the open transaction's first record landed
        self._probe_token = 0
        self._open = False
        self._next = 0
        self._file_ctx = SerializationContext(self.file_topic, MessageField.VALUE)
        self._run_ctx = SerializationContext(self.run_topic, MessageField.VALUE)
        self._file_value = EventSerializer(registry, EventType.FILE_EVENT)
        self._run_value = EventSerializer(registry, EventType.RUN_EVENT)

    def start(self) -> Publisher:
        """Connect: KafkaUnavailable if no broker answers, ProduceError if the largest
        inline event cannot fit the topic or transactions cannot start. Once only."""
        if self._producer is not None:
            return self
        admin = make_admin(self.settings)
        cluster_metadata(admin, self.settings, timeout_s=self.connect_timeout_s)
        ensure_topics(
            admin,
            [self.file_topic, self.run_topic],
            partitions=self.settings.partitions,
            replication_factor=self.settings.replication_factor,
        )
        self._check_broker_limit(admin)
        overrides: dict[str, Any] = {
            "batch.size": self.max_batch_bytes,
            "message.max.bytes": self.max_batch_bytes + MESSAGE_OVERHEAD,
            "linger.ms": 50,
            "queue.buffering.max.kbytes": 64 * 1024,
        }
        if self.transactional_id is not None:
            overrides["transactional.id"] = self.transactional_id
            overrides["transaction.timeout.ms"] = int(self.transaction_timeout_s * 1000)
        producer = make_producer(self.settings, **overrides)
        if self.transactional_id is not None:
            # Fences any earlier producer of this id: what it left open is aborted.
            try:
                producer.init_transactions(self.connect_timeout_s * 3)
            except KafkaException as exc:
                raise ProduceError(
                    f"cannot start transactions as {self.transactional_id}: {exc.args[0].str()}"
                ) from None
        self._producer = producer
        return self

    def _started(self) -> Producer:
        """The producer :meth:`start` made; a RuntimeError before it."""
        if self._producer is None:
            raise RuntimeError("Publisher.start() first")
        return self._producer

    def _check_broker_limit(self, admin: AdminClient) -> None:
        """The largest event (an inline file and its framing) must fit the topic's
        ``max.message.bytes``: a ProduceError naming both, before anything is sent."""
        resource = ConfigResource(ConfigResource.Type.TOPIC, self.file_topic)
        try:
            configs = answer(admin.describe_configs([resource])[resource], self.connect_timeout_s)
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
        self._started()  # before the registry is asked for the schema
        self._produce(self.file_topic, key, self._file_value(event, self._file_ctx), event.path)

    def encoded(self, file: EncodedFile) -> None:
        """An inline file's event as a worker encoded it: the wire-format header and the
        body, the same bytes :meth:`file` would have made of its FileEvent."""
        self._started()  # before the registry is asked for the schema
        value = self._file_value.header(self._file_ctx) + file.body
        self._produce(self.file_topic, f"{file.project}/{file.path}", value, file.path)

    def run(self, event: RunEvent) -> None:
        label = f"<run {event.kind.value.lower()}>"
        self._started()  # before the registry is asked for the schema
        self._produce(self.run_topic, event.run_id, self._run_value(event, self._run_ctx), label)

    def _produce(self, topic: str, key: str, value: bytes, label: str) -> None:
        token = self._next
        self._next += 1
        self._in_flight[token] = label

        def report(err: KafkaError | None, msg: Message, token: int = token) -> None:
            what = self._in_flight.pop(token, label)
            if err is None:
                self.delivered += 1
                if self._probe is None or token < self._probe_token:
                    where = (msg.partition() or 0, msg.offset() or 0)
                    self._probe = Probe(msg.topic() or topic, *where)
                    self._probe_token = token
            else:
                self.failed[what] = err.str()

        producer = self._started()
        self._begin(producer)
        while True:
            try:
                producer.produce(topic, key=key.encode(), value=value, on_delivery=report)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.05)
            except KafkaException as exc:  # fatal: fenced by another producer of this id
                raise self._fatal(exc) from None
        if token % POLL_EVERY == 0:  # delivery reports; flush() serves the last ones
            producer.poll(0)

    # --- transactions -------------------------------------------------------------

    def _begin(self, producer: Producer) -> None:
        if self.transactional_id is not None and not self._open:
            try:
                producer.begin_transaction()
            except KafkaException as exc:
                raise self._fatal(exc) from None
            self._open = True
            self._probe, self._probe_token = None, 0

    def prepare(self, timeout_s: float = 120.0) -> tuple[dict[str, str], Probe | None]:
        """Flush the open batch: what was not delivered, and where its first record is."""
        failed = self.flush(timeout_s)
        return failed, self._probe

    def commit(self) -> None:
        """Commit the open transaction (retried while the broker says it may); if it
        cannot commit, it is aborted and TransactionAborted says why; Fenced if another
        producer took the run over."""
        if self.transactional_id is None or not self._open:
            self._probe = None
            return

        def retriable(exc: BaseException) -> bool:
            return isinstance(exc, KafkaException) and bool(exc.args[0].retriable())

        try:
            for attempt in Retrying(
                retry=retry_if_exception(retriable),
                stop=stop_after_attempt(5),
                wait=wait_exponential_jitter(multiplier=0.2, max=5),
                reraise=True,
            ):
                with attempt:
                    self._started().commit_transaction(self.transaction_timeout_s)
        except KafkaException as exc:
            error = exc.args[0]
            if error.txn_requires_abort():
                self.abort()
                raise TransactionAborted(error.str()) from None
            raise self._fatal(exc) from None
        self._open = False

    def abort(self) -> None:
        """Abort the open transaction: none of its records become visible."""
        self.failed.clear()
        if self.transactional_id is None or not self._open:
            return
        try:
            self._started().abort_transaction(self.transaction_timeout_s)
        except KafkaException as exc:
            raise self._fatal(exc) from None
        finally:
            self._open = False

    def _fatal(self, exc: KafkaException) -> ProduceError:
        error = exc.args[0]
        if error.code() in FENCED:
            return Fenced(
                f"another producer took over transactional id {self.transactional_id}"
                " (the same run started again elsewhere): this one stops; its open"
                " transaction is aborted and never visible"
            )
        return ProduceError(f"the transaction failed: {error.str()}")

    def committed(self, probe: Probe, timeout_s: float = 60.0) -> bool:
        """Whether the record at ``probe`` is visible to read_committed consumers, that
        is whether the batch it opened committed. Asked after init_transactions, which
        finished whatever the previous producer of this id left open."""
        self._started()  # its init_transactions ended what an earlier producer left open
        group = f"headrace-probe-{uuid.uuid4().hex[:12]}"  # assigned, never committed
        consumer = make_consumer(self.settings, group, **{"enable.partition.eof": True})
        try:
            consumer.assign([TopicPartition(probe.topic, probe.partition, probe.offset)])
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                error = msg.error()
                if error is not None:
                    if error.code() == PARTITION_EOF:
                        return False  # aborted: read_committed skipped it to the end
                    raise ProduceError(f"cannot read back {probe}: {error.str()}")
                return msg.offset() == probe.offset
            raise ProduceError(f"cannot tell within {timeout_s:.0f}s whether {probe} committed")
        finally:
            consumer.close()

    def flush(self, timeout_s: float = 120.0) -> dict[str, str]:
        """Wait for every delivery report; return the undelivered labels and why."""
        if self._producer is not None:  # else nothing was produced
            try:
                self._producer.flush(timeout_s)
            except KafkaException as exc:
                raise self._fatal(exc) from None
        for label in self._in_flight.values():
            self.failed.setdefault(label, f"no delivery report within {timeout_s:.0f}s")
        self._in_flight.clear()
        return dict(self.failed)

    def stats(self) -> dict[str, Any]:
        return {"delivered": self.delivered, "failed": len(self.failed)}

    def close(self) -> None:
        """Abort what is still open (a run that stopped half-way) and flush the rest."""
        if self._open:
            with contextlib.suppress(ProduceError):
                self.abort()
        if self._producer is None:  # never started
            return
        with contextlib.suppress(KafkaException):  # a fenced producer cannot flush any more
            self._producer.flush(5)
