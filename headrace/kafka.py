"""Kafka client factory: typed settings in, librdkafka's dotted keys out.

Every client headrace makes goes through here, so the delivery guarantees
are set in one place: producers are idempotent with ``acks=all``; consumers
read committed records only and never auto-commit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from headrace.errors import ProduceError
from headrace.settings import KafkaSettings

ClientConfig = dict[str, Any]
# librdkafka's session.timeout.ms when none is set: how long a dead member keeps its
# partitions (consumers.instance sets the groups' own, consumer.session_timeout_s).
LIBRDKAFKA_SESSION_TIMEOUT_MS = 45_000
_librdkafka_log = logging.getLogger("headrace.librdkafka")


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
    return Producer(producer_config(settings, overrides))


def make_consumer(settings: KafkaSettings, group_id: str, **overrides: Any) -> Consumer:
    return Consumer(consumer_config(settings, group_id, overrides))


def make_admin(settings: KafkaSettings) -> AdminClient:
    return AdminClient(client_config(settings))


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
    existing = set(admin.list_topics(timeout=timeout_s).topics)
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
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise ProduceError(f"cannot create topic {name}: {exc.args[0].str()}") from exc
        else:
            created.append(name)
    return created
