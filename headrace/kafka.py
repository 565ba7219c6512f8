"""Kafka client factory: typed settings in, librdkafka's dotted keys out.

Every client headrace makes goes through here, so the delivery guarantees
are set in one place: producers are idempotent with ``acks=all``; consumers
read committed records only and never auto-commit. A setting librdkafka
refuses is a :class:`~headrace.errors.ConfigError` naming it, and no broker
answering is one :class:`~headrace.errors.KafkaUnavailable` line
(:func:`cluster_metadata`), not a raw ``KafkaException``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._metadata import ClusterMetadata  # not re-exported in its stubs
from confluent_kafka.cimpl import NewTopic
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from headrace.errors import ConfigError, KafkaUnavailable, ProduceError
from headrace.settings import KafkaSettings
from headrace.startup import when_up

ClientConfig = dict[str, Any]
_C = TypeVar("_C", Producer, Consumer, AdminClient)
_T = TypeVar("_T")
# librdkafka's session.timeout.ms when none is set: how long a dead member keeps its
# partitions (consumers.instance sets the groups' own, consumer.session_timeout_s).
LIBRDKAFKA_SESSION_TIMEOUT_MS = 45_000
# How long a command waits for the first broker to answer before it gives up.
BROKER_TIMEOUT_S = 10.0


class _LibrdkafkaLog(logging.LoggerAdapter[logging.Logger]):
    """librdkafka's log lines, through Python logging.

    Its connection failures (facility ``FAIL``: a refused connection, a lost one, a
    failed handshake, once per retry, hundreds a minute while a broker is down) go
    at DEBUG: what they mean reaches the user as one line (KafkaUnavailable, or the
    failed call's own error), and ``--log-level debug`` still shows each attempt.
    """

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if args and args[0] == "FAIL":
            level = logging.DEBUG
        super().log(level, msg, *args, **kwargs)


_librdkafka_log = _LibrdkafkaLog(logging.getLogger("headrace.librdkafka"))


def client_config(settings: KafkaSettings) -> ClientConfig:
    """The keys every client shares: where the brokers are and how to log in."""
    config: ClientConfig = {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": settings.client_id,
        "security.protocol": settings.security_protocol,
        # librdkafka's own log lines go through Python logging, not stderr.
        "logger": _librdkafka_log,
    }
    if settings.sasl_mechanism:
        config["sasl.mechanism"] = settings.sasl_mechanism
    if settings.sasl_username:
        config["sasl.username"] = settings.sasl_username
    if settings.sasl_password is not None:
        config["sasl.password"] = settings.sasl_password.get_secret_value()
    config.update(settings.extra)
    return config


def producer_config(
    settings: KafkaSettings, overrides: Mapping[str, Any] | None = None
) -> ClientConfig:
    config = client_config(settings)
    config.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "zstd",
            "linger.ms": 20,
        }
    )
    config.update(overrides or {})
    return config


def consumer_config(
    settings: KafkaSettings, group_id: str, overrides: Mapping[str, Any] | None = None
) -> ClientConfig:
    config = client_config(settings)
    config.update(
        {
            "group.id": group_id,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
        }
    )
    config.update(overrides or {})
    return config


def make_producer(settings: KafkaSettings, **overrides: Any) -> Producer:
    return _client(Producer, producer_config(settings, overrides), settings)


def make_consumer(settings: KafkaSettings, group_id: str, **overrides: Any) -> Consumer:
    return _client(Consumer, consumer_config(settings, group_id, overrides), settings)


def make_admin(settings: KafkaSettings) -> AdminClient:
    return _client(AdminClient, client_config(settings), settings)


def _client(cls: type[_C], config: ClientConfig, settings: KafkaSettings) -> _C:
    """``cls(config)``; a property librdkafka refuses is a ConfigError naming it."""
    try:
        return cls(config)
    except KafkaException as exc:
        error = exc.args[0]
        if error.code() != KafkaError._INVALID_ARG:  # noqa: SLF001 - librdkafka's local code
            raise
        reason = error.str()
        bad = reason.rpartition(": ")[2].strip('"') if "No such" in reason else ""
        named = any(key == bad or f'"{key}"' in reason for key in settings.extra)
        if named or not settings.extra:
            where = "kafka.extra" if named else "Kafka client settings"
        else:  # librdkafka names an alias's target (linger.ms: queue.buffering.max.ms)
            where = f"kafka.extra ({', '.join(sorted(settings.extra))})"
        if bad:
            reason = f"{bad!r} is an unknown property"
        raise ConfigError(f"{where}: {reason} (see librdkafka's CONFIGURATION.md)") from None


def cluster_metadata(
    client: Producer | Consumer | AdminClient,
    settings: KafkaSettings,
    topic: str | None = None,
    timeout_s: float | None = None,
) -> ClusterMetadata:
    """The cluster's metadata (of ``topic`` only, if given); no broker answering
    within ``timeout_s`` (default BROKER_TIMEOUT_S) is a KafkaUnavailable naming the
    bootstrap servers."""
    timeout_s = BROKER_TIMEOUT_S if timeout_s is None else timeout_s
    try:
        return client.list_topics(topic, timeout=timeout_s)
    except KafkaException as exc:
        raise KafkaUnavailable(settings.bootstrap_servers, timeout_s, exc.args[0].str()) from None


def await_broker(
    client: Producer | Consumer | AdminClient, kafka: KafkaSettings, wait_s: float
) -> None:
    """Return once a broker answers, asking again for up to ``wait_s`` seconds (each ask
    bounded by BROKER_TIMEOUT_S), so that a group started while its broker restarts
    waits for it; then one KafkaUnavailable naming the time waited."""
    began = time.monotonic()
    try:
        when_up("Kafka", lambda: cluster_metadata(client, kafka), wait_s)
    except KafkaUnavailable as exc:
        waited = time.monotonic() - began
        raise KafkaUnavailable(kafka.bootstrap_servers, waited, exc.reason) from None


# What a broker answers for a while after a topic is created, a leader moves or a
# broker restarts: worth asking again, never worth stopping a group for.
_PASSING = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._TIMED_OUT,  # noqa: SLF001 - librdkafka's local codes
        KafkaError._TRANSPORT,  # noqa: SLF001
        KafkaError._ALL_BROKERS_DOWN,  # noqa: SLF001
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.UNKNOWN_LEADER_EPOCH,
    }
)


def is_passing(exc: BaseException) -> bool:
    """A KafkaException a broker gives while leadership or a connection settles."""
    if not isinstance(exc, KafkaException) or not exc.args:
        return False
    error = exc.args[0]
    return isinstance(error, KafkaError) and (error.retriable() or error.code() in _PASSING)


def watermarks(
    consumer: Consumer, tp: TopicPartition, *, timeout_s: float = 10.0, retry_for_s: float = 60.0
) -> tuple[int, int]:
    """The low and high watermark of ``tp``, asked of its leader. A passing error (no
    leader yet: a topic just created, a broker restarting) is asked again with backoff
    for up to ``retry_for_s``; what stays is raised."""
    for attempt in Retrying(
        retry=retry_if_exception(is_passing),
        wait=wait_exponential_jitter(multiplier=0.1, max=5, jitter=0.1),
        stop=stop_after_delay(retry_for_s),
        reraise=True,
    ):
        with attempt:
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout_s, cached=False)
            return int(low), int(high)
    raise AssertionError("unreachable: Retrying reraises")  # pragma: no cover


def answer(future: Future[_T], timeout_s: float) -> _T:
    """An admin call's result; no answer within ``timeout_s`` is a KafkaException of
    librdkafka's _TIMED_OUT like the client's own timeouts (the future's bare
    TimeoutError has no message, and callers handle KafkaException)."""
    try:
        return future.result(timeout=timeout_s)
    except TimeoutError:
        reason = f"no answer from the broker within {timeout_s:g} s"
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, reason)) from None  # noqa: SLF001


class Hung(ProduceError):
    """A librdkafka call that did not return within its own timeout and a margin: the
    client it was called on is in an unknown state, never to be used again."""


def within(timeout_s: float, call: Callable[[], _T], what: str) -> _T:
    """``call()`` in a thread of its own, waited for at most ``timeout_s``; longer is a
    :class:`Hung` naming ``what``. For the librdkafka calls that can block past their
    own timeout: ``send_offsets_to_transaction`` waits forever for a group coordinator
    that a broker restart decommissioned (librdkafka#5456, #5511, open in 2.16). The
    thread is a daemon: if it never returns, it holds only the abandoned client."""
    outcome: list[tuple[bool, Any]] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=run, name=f"librdkafka {what}", daemon=True).start()
    if not done.wait(timeout_s):
        raise Hung(f"librdkafka's {what} did not return within {timeout_s:g} s")
    returned, value = outcome[0]
    if not returned:
        raise value
    return value  # type: ignore[no-any-return]


def ensure_topics(
    admin: AdminClient,
    names: Iterable[str],
    *,
    partitions: int,
    replication_factor: int,
    config: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise ProduceError(f"cannot list topics: {exc.args[0].str()}") from None
    wanted = [
        NewTopic(
            name,
            num_partitions=partitions,
            replication_factor=replication_factor,
            config=dict(config or {}),
        )
        for name in names
        if name not in existing
    ]
    if not wanted:
        return []
    created = []
    for name, future in admin.create_topics(wanted, request_timeout=timeout_s).items():
        try:
            answer(future, timeout_s)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise ProduceError(f"cannot create topic {name}: {exc.args[0].str()}") from exc
        else:
            created.append(name)
    return created
