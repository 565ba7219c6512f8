"""The consumer runtime every group shares: poll, decode, write, commit, retry, dead-letter.

- Offsets are committed only up to what the sink reports durable.
- On assignment each partition starts where the sink's own durable state says
  (Kafka's committed offset is the fallback); on revocation the sink makes
  what it holds durable and that is committed before the partitions go.
- Every record is decoded and then checked (schemas.validation: safe project and
  path names, a size and checksum that can be, an event time not too far after
  the record's timestamp), the same for every group.
- A record that cannot be decoded, that fails the checks, or that the sink
  refuses as terminal, goes to the dead-letter topic; the group goes on.
  Transient failures are retried with exponential backoff and jitter while
  the partitions are paused; nothing is dropped.
- SIGTERM and SIGINT stop the loop after the batch in hand; what is durable
  is committed and the consumer leaves the group, a static member too (it
  unsubscribes first: librdkafka's close alone keeps a static member in the group
  until its session expires), so the others take its partitions at once.
- A member that dies without leaving holds its partitions until its session times
  out, unless a process with its group.instance.id (consumers.instance) takes its
  place first. A wait for an assignment longer than ``assignment_wait_log_s`` is
  logged with what it waits for.
"""

from __future__ import annotations

import collections
import logging
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from types import FrameType
from typing import Any, Protocol

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as KafkaPartition
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from consumers.base import Decoded, Record, Sink, TopicPartition
from consumers.dlq import REASON_OF, DeadLetterQueue
from consumers.errors import RecordsRefused, StopConsuming
from consumers.metrics import Metrics
from headrace.collector import collector_paused
from headrace.errors import ConsumeError, HeadraceError, Terminal, is_transient
from headrace.history import Recorder
from headrace.kafka import LIBRDKAFKA_SESSION_TIMEOUT_MS, watermarks
from headrace.kafka import consumer_config as make_config
from headrace.settings import KafkaSettings
from schemas.errors import DeserializationError
from schemas.models import DeadLetterReason, Event
from schemas.serde import HEADER_SIZE
from schemas.validation import DEFAULT_MAX_SKEW_S, check_for

log = logging.getLogger(__name__)
_topic_of = attrgetter("record.topic")  # counted per batch in C, not a generator per record
CONSUME_MAX = 1_000_000  # the most records one Consumer.consume call hands over
# How long a poll waits while a member holds its partitions paused (``hold``).
HOLD_POLL_S = 0.05
# _process builds Records and Decodeds by position, with tuple.__new__: in this order.
if Record._fields != ("topic", "partition", "offset", "timestamp_ms", "key", "value", "headers"):
    raise ImportError("Record's fields changed: update ConsumerRuntime._process")
if Decoded._fields != ("record", "event", "schema_id", "fields"):
    raise ImportError("Decoded's fields changed: update ConsumerRuntime._process")


class Decoder(Protocol):
    """What the runtime needs of a deserializer (schemas.serde.EventDeserializer)."""

    @property
    def model(self) -> type[Event]: ...

    def __call__(self, data: bytes | None) -> Event: ...

    def decode(self, data: bytes | None) -> dict[str, Any]: ...


@dataclass
class RuntimeStats:
    processed: int = 0
    dead_lettered: int = 0
    committed: dict[TopicPartition, int] = field(default_factory=dict)


class ConsumerRuntime:
    def __init__(
        self,
        kafka: KafkaSettings,
        group: str,
        decoders: Mapping[str, Decoder],  # topic -> deserializer
        sink: Sink,
        dlq: DeadLetterQueue,
        *,
        metrics: Metrics | None = None,
        until_caught_up: bool = False,
        batch_size: int = 5000,
        poll_timeout_s: float = 0.5,
        retry_for_s: float = 120.0,
        consumer_config: Mapping[str, Any] | None = None,  # librdkafka keys, over the defaults
        max_event_time_skew_s: float = DEFAULT_MAX_SKEW_S,  # consumer.max_event_time_skew_s
        assignment_wait_log_s: float = 5.0,
        history: Recorder | None = None,  # the operational history: per batch, and the lag
        history_lag_interval_s: float = 10.0,
        # With until_caught_up: told after each batch whether this member has caught up
        # (or holds nothing) and what it holds; the member then runs on until stopped
        # (a supervisor's worker: the supervisor stops the group once all have).
        on_progress: Callable[[bool, frozenset[TopicPartition]], None] | None = None,
        before_join: Callable[[], None] | None = None,  # called just before subscribing
        # Until this says True, the partitions handed to this member stay paused: a
        # supervisor's worker reads nothing while its group is not whole yet (the first
        # member to join is assigned everything alone, and gives it back at once).
        hold: Callable[[], bool] | None = None,
    ) -> None:
        self.group, self.sink, self.dlq = group, sink, dlq
        self.decoders = dict(decoders)
        skew_ms = int(max_event_time_skew_s * 1000)
        self.checks = {topic: check_for(d.model, skew_ms) for topic, d in self.decoders.items()}
        self.metrics = metrics or Metrics(group)
        self.until_caught_up = until_caught_up
        self.on_progress, self.before_join = on_progress, before_join
        self.hold, self._holding = hold, hold is not None
        wanted = sink.capabilities.batch_size or batch_size  # the sink's own setting first
        self.batch_size = min(wanted, sink.capabilities.max_batch, CONSUME_MAX)
        self.poll_timeout_s = poll_timeout_s
        self.retry_for_s = retry_for_s
        self.stats = RuntimeStats()
        config = make_config(kafka, group, consumer_config)
        self.instance_id: str | None = config.get("group.instance.id")
        self.session_s = int(config.get("session.timeout.ms", LIBRDKAFKA_SESSION_TIMEOUT_MS)) / 1000
        # cooperative-sticky (KIP-429): a rebalance hands out and takes back only the
        # partitions that move, through incremental_assign and incremental_unassign.
        strategy = str(config.get("partition.assignment.strategy", ""))
        self.incremental = strategy.startswith("cooperative")
        self.assignment_wait_log_s = assignment_wait_log_s
        self._consumer: Consumer = Consumer(config)
        sink.bind(self._consumer.consumer_group_metadata)
        self._assigned: set[TopicPartition] = set()
        self._handed: dict[TopicPartition, int] = {}  # highest offset given to the sink
        self._begun: dict[TopicPartition, int] = {}  # where each assigned partition started
        self._dead: dict[TopicPartition, int] = {}  # highest offset dead-lettered
        self._targets: dict[TopicPartition, int] = {}
        self._stop = False
        self._undelivered = False  # dead letters sent and not yet flushed
        self._waiting_since: float | None = None  # joined or revoked, not assigned since
        self._wait_logged = False
        self.history, self.history_lag_interval_s = history, history_lag_interval_s
        self._history_seen = (0, 0)  # processed, dead-lettered: as last recorded
        self._lag_due = 0.0
        self._lag_reported = 0.0  # monotonic time the lag gauge was last set

    # --- the loop -------------------------------------------------------------------

    def stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        if signum is not None:
            log.info("signal %s: stopping after the batch in hand", signal.Signals(signum).name)
        self._stop = True

    def run(self) -> RuntimeStats:
        previous = {sig: signal.signal(sig, self.stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        consumer = self._consumer
        if self.before_join is not None:
            self.before_join()
        consumer.subscribe(
            list(self.decoders),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._waiting()
        if self.instance_id:
            log.info(
                "joining group %s as static member %s (session %.0f s)",
                self.group,
                self.instance_id,
                self.session_s,
            )
        try:
            while not self._stop:
                timeout_s = self.poll_timeout_s
                if self._holding:
                    timeout_s = self._held(consumer)
                with collector_paused():  # while a batch is in hand
                    messages = consumer.consume(self.batch_size, timeout_s)
                    started = time.perf_counter()
                    self._process(messages)
                    consumed = len(messages)
                    del messages  # freed before the collector runs again
                self.sink.tick()
                self._commit()
                if consumed:
                    seconds = time.perf_counter() - started
                    self.metrics.batch_seconds.observe(seconds)
                    if self.history is not None:
                        self._record_batch(seconds)
                self.metrics.beat()
                self._report_lag()
                self._log_wait()
                if self.until_caught_up and self._until_caught_up():
                    # A supervisor logs its own line; this one ends a process alone.
                    log.info("read every partition to the end: stopping")
                    break
        finally:
            try:
                self._report_lag(final=True)  # the lag at the end
                self.sink.close()
                self._flush_dead_letters()
                self._commit()
            finally:
                self._leave()
                consumer.close()
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        return self.stats

    def _held(self, consumer: Consumer) -> float:
        """While holding: resume what is assigned once ``hold`` says so; the poll's
        timeout meanwhile (short: the rebalance callbacks are served by the poll)."""
        assert self.hold is not None  # noqa: S101 - _holding implies it
        if not self.hold():
            return HOLD_POLL_S
        self._holding = False
        if self._assigned:
            consumer.resume([KafkaPartition(t, p) for t, p in sorted(self._assigned)])
        log.info("the group is whole: reading")
        return self.poll_timeout_s

    def _until_caught_up(self) -> bool:
        """Whether to stop now: caught up, unless a supervisor is told instead."""
        if self.on_progress is None:
            return self._caught_up()
        self.on_progress(not self._assigned or self._caught_up(), frozenset(self._assigned))
        return False

    def _record_batch(self, seconds: float) -> None:
        """The batch's figures into the operational history (the lag: _report_lag)."""
        history, stats = self.history, self.stats
        assert history is not None  # noqa: S101 - checked by the caller
        processed, dead = self._history_seen
        history.record("processed", stats.processed - processed)
        history.record("failed", stats.dead_lettered - dead)
        history.record("batch_seconds", seconds)
        self._history_seen = (stats.processed, stats.dead_lettered)

    def _process(self, messages: Sequence[Message]) -> None:
        # Every record of every group passes here: a microsecond here is a large part of
        # an archive's drain (docs/performance.md), so it builds one Record and one
        # Decoded (both tuples) per record and looks nothing up twice.
        batch: list[Decoded] = []
        append, new = batch.append, tuple.__new__
        handed: dict[TopicPartition, int] = {}  # of this batch: the last offset per partition
        needs_models = self.sink.capabilities.needs_models
        decoders: dict[str, Callable[[bytes | None], Any]] = {
            topic: decoder if needs_models else decoder.decode
            for topic, decoder in self.decoders.items()
        }
        checks = self.checks
        # The wire-format header seen last and its schema id; six bytes match no header.
        header, schema_id = b"\xff" * (HEADER_SIZE + 1), 0
        for msg in messages:
            if msg.error() is not None:
                self._consume_error(msg)
                continue
            topic = msg.topic() or ""
            value = msg.value()
            timestamp_ms = msg.timestamp()[1]
            try:
                decoded = decoders[topic](value)
                check = checks[topic]
                if check is not None:
                    check(decoded.__dict__ if needs_models else decoded, timestamp_ms)
            except DeserializationError as exc:
                self._dead_letter(_record(msg), REASON_OF[exc.reason], str(exc))
                continue
            assert value is not None  # noqa: S101 - it decoded
            if not value.startswith(header):
                header = value[:HEADER_SIZE]
                schema_id = int.from_bytes(header[1:], "big")
            partition, offset = msg.partition() or 0, msg.offset() or 0
            headers = msg.headers()
            # tuple.__new__: a named tuple's own __new__ is Python code, twice the cost
            record = new(
                Record,
                (
                    topic,
                    partition,
                    offset,
                    timestamp_ms,
                    msg.key(),
                    value,
                    _headers(headers) if headers else (),
                ),
            )
            if needs_models:
                append(new(Decoded, (record, decoded, schema_id, None)))
            else:
                append(new(Decoded, (record, None, schema_id, decoded)))
            handed[(topic, partition)] = offset
        if batch:
            for tp, offset in handed.items():
                self._handed[tp] = max(self._handed.get(tp, -1), offset)
            self._write(batch)
        self._flush_dead_letters()

    def _consume_error(self, msg: Message) -> None:
        error = msg.error()
        if error is None:
            return
        # librdkafka reports a fatal error as an event of code _FATAL (whose fatal() is
        # false); the consumer is of no use after it.
        if error.fatal() or error.name() == "_FATAL":
            if error.code() == KafkaError.FENCED_INSTANCE_ID or "group.instance.id" in error.str():
                raise StopConsuming(
                    f"another process joined group {self.group} as {self.instance_id}: two"
                    " hosts of one name, or two instances directories on one host"
                    f" (consumer.instances_dir): {error.str()}"
                )
            raise StopConsuming(f"fatal Kafka error: {error.str()}")
        log.warning("consume error: %s", error.str())

    def _write(self, batch: list[Decoded]) -> None:
        """Write with retries for transient failures; isolate and dead-letter terminal ones.

        A batch the sink refuses is split in halves until the refused records are alone
        (a few dozen writes for one bad record in thousands, not one write per record);
        each is dead-lettered with the reason its error names, the rest is written."""
        if self._undelivered:  # a dead letter must be delivered before what follows it
            self._flush_dead_letters()  # becomes durable: the sink's position passes it
        try:
            self._with_retries(lambda: self.sink.write(batch))
        except StopConsuming:
            raise  # the sink stayed unavailable: stop, never dead-letter an outage
        except RecordsRefused as exc:  # the sink named the records it refuses
            refused = {i for i, _ in exc.refused}
            for i, error in exc.refused:
                reason = DeadLetterReason(error.dead_letter_reason)
                self._dead_letter(batch[i].record, reason, str(error))
            rest = [d for i, d in enumerate(batch) if i not in refused]
            if rest:
                self._write(rest)
            return
        except Terminal as exc:
            if len(batch) == 1:
                reason = DeadLetterReason(exc.dead_letter_reason)
                self._dead_letter(batch[0].record, reason, str(exc))
                return
            half = len(batch) // 2
            self._write(batch[:half])
            self._write(batch[half:])
            return
        self.stats.processed += len(batch)
        for topic, count in collections.Counter(map(_topic_of, batch)).items():
            self.metrics.processed.labels(self.group, topic).inc(count)

    def _with_retries(self, call: Callable[[], None]) -> None:
        paused = False

        def pause(state: RetryCallState) -> None:
            nonlocal paused
            self.metrics.retries.inc()
            if not paused and self._assigned:
                self._consumer.pause([KafkaPartition(t, p) for t, p in self._assigned])
                paused = True
            error = state.outcome.exception() if state.outcome else None
            log.warning(
                "sink unavailable (attempt %d), partitions paused: %s", state.attempt_number, error
            )

        try:
            for attempt in Retrying(
                retry=retry_if_exception(is_transient),
                wait=wait_exponential_jitter(multiplier=0.5, max=30),
                stop=stop_after_delay(self.retry_for_s),
                before_sleep=pause,
                reraise=True,
            ):
                with attempt:
                    call()
        except HeadraceError as exc:
            if is_transient(exc):
                raise StopConsuming(
                    f"sink still unavailable after {self.retry_for_s:.0f}s: {exc}"
                ) from None
            raise
        finally:
            if paused:
                self._consumer.resume([KafkaPartition(t, p) for t, p in self._assigned])

    def _flush_dead_letters(self) -> None:
        self.dlq.flush()  # raises if one was not delivered: nothing may pass it then
        self._undelivered = False

    def _dead_letter(self, record: Record, reason: DeadLetterReason, error: str) -> None:
        log.warning(
            "dead-lettering %s/%s/%s: %s", record.topic, record.partition, record.offset, error
        )
        self.dlq.send(record, reason, error)
        self._undelivered = True
        tp = (record.topic, record.partition)
        self._dead[tp] = max(self._dead.get(tp, -1), record.offset)
        self.stats.dead_lettered += 1
        self.metrics.dead_lettered.labels(self.group, record.topic, reason.value).inc()
        self.metrics.failed.inc()

    # --- offsets and rebalances --------------------------------------------------------

    def safe_positions(self) -> dict[TopicPartition, int]:
        """What may be committed: the sink's durable positions, moved past dead-lettered
        records once everything handed to the sink before them is durable."""
        positions = self.sink.durable()
        for tp, dead in self._dead.items():
            durable = positions.get(tp, 0)
            # Only when nothing handed to the sink is pending (all of it is durable).
            if dead >= durable and self._handed.get(tp, -1) < durable:
                positions[tp] = dead + 1
        # Past transaction markers: librdkafka moves the consumer's position past the
        # commit and abort markers it never hands over. Once every record before that
        # position is durable or dead-lettered, the position is safe too; without it a
        # transactional partition's committed offset stays one short of its end (and
        # its lag at 1) for good.
        settled = [
            KafkaPartition(t, p)
            for t, p in self._assigned
            if max(self._handed.get((t, p), -1), self._dead.get((t, p), -1))
            < positions.get((t, p), 0)
        ]
        if settled:  # asked only for those: this runs after every batch
            for kp in self._consumer.position(settled):
                tp = (kp.topic, kp.partition)
                if kp.offset > positions.get(tp, 0):
                    positions[tp] = kp.offset
        return positions

    def _commit(self, only: set[TopicPartition] | None = None) -> None:
        # The commit time rides in the offset's metadata, for `headrace status`.
        stamp = orjson.dumps({"committed_at": time.time()}).decode()
        offsets = [
            KafkaPartition(t, p, offset, metadata=stamp)
            for (t, p), offset in self.safe_positions().items()
            if (t, p) in (only if only is not None else self._assigned)
            and offset > self.stats.committed.get((t, p), -1)
        ]
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except Exception as exc:  # a failed commit is retried with the next one
            log.warning("commit failed, will retry: %s", exc)
            return
        for tp in offsets:
            self.stats.committed[(tp.topic, tp.partition)] = tp.offset

    def _on_assign(self, consumer: Consumer, partitions: list[KafkaPartition]) -> None:
        wanted = [(tp.topic, tp.partition) for tp in partitions]
        # Retried like a write: the first query after a database restart finds its
        # connection gone (chaos found a load process exiting on the next rebalance).
        start: dict[TopicPartition, int] = {}
        self._with_retries(lambda: start.update(self.sink.positions(wanted)))
        # Commits never pass what is durable, so a committed offset ahead of the sink's
        # own position only skips dead-lettered records (or transaction markers).
        committed = {
            (tp.topic, tp.partition): tp.offset
            for tp in committed_offsets(consumer, partitions, self.group)
            if tp.offset >= 0
        }
        for tp in partitions:
            key = (tp.topic, tp.partition)
            if key in start:
                tp.offset = max(start[key], committed.get(key, -1))
            self._begun[key] = max(start.get(key, -1), committed.get(key, -1))
            _low, high = watermarks(consumer, tp)
            self._targets.setdefault((tp.topic, tp.partition), high)
        self._assigned |= set(wanted)
        if self.incremental:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
        if self._holding and partitions:
            consumer.pause(partitions)  # before its first fetch: nothing read to give back
        waited = time.monotonic() - (self._waiting_since or time.monotonic())
        handed = describe_partitions(wanted) or "nothing"
        if self.incremental and len(self._assigned) > len(wanted):
            handed = f"{handed} more (holding {describe_partitions(sorted(self._assigned))})"
        if not wanted and self.incremental and self._waiting_since is None:
            pass  # a cooperative rebalance that moved nothing of this member's
        elif self._wait_logged:
            log.info("assigned %s after %.1f s", handed, waited)
        else:
            log.info("assigned %s", handed)
        self._waiting_since, self._wait_logged = None, False

    def _on_revoke(self, consumer: Consumer, partitions: list[KafkaPartition]) -> None:
        going = {(tp.topic, tp.partition) for tp in partitions}
        self.sink.release(going)
        self._flush_dead_letters()
        self._commit(going)
        self._assigned -= going
        self._forget_lag(going)
        if self.incremental:
            consumer.incremental_unassign(partitions)  # the rest are read on
        else:
            consumer.unassign()
        if not self._stop and not self._assigned:
            self._waiting()  # the next assignment follows
        if going:
            log.info("revoked %s", describe_partitions(sorted(going)))

    def _on_lost(self, consumer: Consumer, partitions: list[KafkaPartition]) -> None:
        lost = {(tp.topic, tp.partition) for tp in partitions}
        self._assigned -= lost
        self._forget_lag(lost)

    # --- membership ----------------------------------------------------------------

    def _waiting(self) -> None:
        self._waiting_since, self._wait_logged = time.monotonic(), False

    def _log_wait(self) -> None:
        since = self._waiting_since
        if since is None or self._wait_logged:
            return
        waited = time.monotonic() - since
        if waited >= self.assignment_wait_log_s:
            log.warning(
                "waiting %.0f s for the group %s to assign partitions: a member that died"
                " holds them until its session times out (%.0f s)",
                waited,
                self.group,
                self.session_s,
            )
            self._wait_logged = True

    def _leave(self, timeout_s: float = 5.0) -> None:
        """Leave the group now: a static member's close does not (KIP-345), so its
        partitions would wait for its session to expire. librdkafka sends the
        LeaveGroup once the revocation unsubscribe starts is served, and forgets the
        member id then."""
        if not self.instance_id:
            return  # a dynamic member's close leaves the group
        consumer = self._consumer
        try:
            if not consumer.memberid():
                return  # never joined
            consumer.unsubscribe()
            deadline = time.monotonic() + timeout_s
            while consumer.memberid() and time.monotonic() < deadline:
                consumer.consume(self.batch_size, 0.1)  # serves the revocation; not handled
        except (KafkaException, RuntimeError) as exc:
            log.warning("could not leave group %s: %s", self.group, exc)

    def _report_lag(self, *, every_s: float = 5.0, final: bool = False) -> None:
        """The lag of each assigned partition into its gauge every ``every_s`` at most, and
        their sum into the operational history every ``history_lag_interval_s``; both
        once more at the end (``final``)."""
        if not self._assigned:
            return
        now = time.monotonic()
        gauge_due = final or now - self._lag_reported >= every_s
        history_due = self.history is not None and (final or now >= self._lag_due)
        if not (gauge_due or history_due):
            return
        lags = self._partition_lags()
        if lags is None:
            return
        if gauge_due:
            self._lag_reported = now
            for (topic, partition), lag in lags.items():
                self.metrics.lag.labels(self.group, topic, str(partition)).set(lag)
        if history_due and self.history is not None:
            self._lag_due = now + self.history_lag_interval_s
            self.history.record("lag", sum(lags.values()))

    def _partition_lags(self) -> dict[TopicPartition, int] | None:
        """Records behind the end per assigned partition, from what the consumer knows:
        the end offset librdkafka last fetched (else the one seen at assignment) less
        the position; no broker request. None if librdkafka cannot say now."""
        partitions = [KafkaPartition(t, p) for t, p in self._assigned]
        try:
            positions = self._consumer.position(partitions)
            ends = [self._consumer.get_watermark_offsets(tp, cached=True)[1] for tp in positions]
        except (KafkaException, RuntimeError) as exc:  # never worth stopping the group for
            log.debug("lag not measured: %s", exc)
            return None
        lags: dict[TopicPartition, int] = {}
        for tp, high in zip(positions, ends, strict=True):
            key = (tp.topic, tp.partition)
            end = high if high >= 0 else self._targets.get(key, -1)
            if end < 0:
                continue  # nothing fetched from it yet, and no end seen
            begun = self._begun.get(key, -1)
            lags[key] = max(end - (tp.offset if tp.offset >= 0 else max(begun, 0)), 0)
        return lags

    def _forget_lag(self, partitions: set[TopicPartition]) -> None:
        for topic, partition in partitions:
            self.metrics.lag.remove(self.group, topic, str(partition))

    def _caught_up(self) -> bool:
        if not self._assigned:
            return False
        positions = self._consumer.position([KafkaPartition(t, p) for t, p in self._assigned])
        durable = self.sink.durable()
        for tp in positions:
            key = (tp.topic, tp.partition)
            target = self._targets.get(key, 0)
            # A partition assigned at its end has no position (nothing to fetch) until
            # a record comes: where it began says it is caught up.
            begun = self._begun.get(key, -1)
            if tp.offset < target and durable.get(key, 0) < target and begun < target:
                return False
            lag = max(target - (tp.offset if tp.offset >= 0 else max(begun, 0)), 0)
            self.metrics.lag.labels(self.group, tp.topic, str(tp.partition)).set(lag)
        return True


def _record(msg: Message) -> Record:
    raw = msg.headers()
    return Record(
        topic=msg.topic() or "",
        partition=msg.partition() or 0,
        offset=msg.offset() or 0,
        timestamp_ms=msg.timestamp()[1],
        key=msg.key(),
        value=msg.value(),
        headers=_headers(raw) if raw else (),
    )


def _headers(
    raw: list[tuple[str, bytes | str | None]] | dict[str, bytes | str | None],
) -> tuple[tuple[str, bytes | None], ...]:
    pairs = raw.items() if isinstance(raw, dict) else raw
    return tuple((k, v.encode() if isinstance(v, str) else v) for k, v in pairs)


def committed_offsets(
    consumer: Any,
    partitions: list[KafkaPartition],
    group: str,
    *,
    attempts: int = 7,
    timeout_s: float = 10.0,
    backoff_s: float = 1.0,
) -> list[KafkaPartition]:
    """The group's committed offsets, asked again while Kafka cannot give them yet: an
    offset committed in a transaction that is still open (a crashed producer's, until
    its transaction times out) is unstable, and the broker answers with a timeout. After
    ``attempts`` tries (about a minute, a transaction's default timeout), one line."""
    try:
        for attempt in Retrying(
            retry=retry_if_exception_type(KafkaException),
            stop=stop_after_attempt(attempts),
            wait=wait_exponential_jitter(multiplier=backoff_s, max=8 * backoff_s, jitter=backoff_s),
            before_sleep=lambda state: log.warning(
                "committed offsets of %s not readable yet (attempt %d), asking again",
                group,
                state.attempt_number,
            ),
            reraise=True,
        ):
            with attempt:
                found: list[KafkaPartition] = consumer.committed(partitions, timeout=timeout_s)
                return found
    except KafkaException as exc:
        raise ConsumeError(
            f"cannot read the committed offsets of group {group} after {attempts} tries"
            f" ({exc.args[0].str()}): an open transaction holding them (another producer's)"
            " is aborted at the latest after its transaction timeout"
        ) from None
    raise AssertionError("unreachable: tenacity returns or raises")


def describe_partitions(partitions: Iterable[TopicPartition]) -> str:
    """``files[0-3,7], runs[0]``: partitions per topic, runs of numbers folded."""
    by_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(set(partitions)):
        by_topic.setdefault(topic, []).append(partition)
    parts = []
    for topic, numbers in by_topic.items():
        spans: list[list[int]] = []
        for n in numbers:
            if spans and n == spans[-1][1] + 1:
                spans[-1][1] = n
            else:
                spans.append([n, n])
        folded = ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)
        parts.append(f"{topic}[{folded}]")
    return ", ".join(parts)
