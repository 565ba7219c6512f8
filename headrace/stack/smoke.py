"""A smoke job: real data through every service of the stack, end to end.

``make demo`` runs it until the producer exists. Each step uses the same
client libraries the pipeline uses, and raises on the first surprise.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from datetime import timedelta
from typing import Any

import httpx
import psycopg
from confluent_kafka import KafkaError, Message
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from headrace.discovery import register, unregister
from headrace.errors import HeadraceError
from headrace.kafka import ensure_topics, make_admin, make_consumer, make_producer
from headrace.settings import Settings
from headrace.stack.process import wait_until
from headrace.stack.prometheus import Prometheus
from schemas.registry import SUBJECT_STRATEGY, make_registry_client
from storage.objectstore import open_storage

Row = tuple[str, str, str]
RECORDS = 100
SCHEMA = """{
  "type": "record", "name": "SmokeEvent", "namespace": "dev.headrace.smoke",
  "fields": [{"name": "seq", "type": "long"}, {"name": "path", "type": "string"},
             {"name": "sha256", "type": "string"}]
}"""


class SmokeFailed(HeadraceError):
    """A service answered, but not with what was sent."""


def run_smoke(settings: Settings) -> list[Row]:
    run = uuid.uuid4().hex[:8]
    with make_registry_client(settings.registry) as registry:
        rows = _kafka_and_registry(settings, registry, run)
    return [*rows, _object_store(settings), _postgres(settings), _prometheus(settings, run)]


def _kafka_and_registry(settings: Settings, registry: SchemaRegistryClient, run: str) -> list[Row]:
    topic = f"headrace.smoke-{run}"
    admin = make_admin(settings.kafka)
    ensure_topics(
        admin, [topic], partitions=3, replication_factor=settings.kafka.replication_factor
    )
    strategy = SUBJECT_STRATEGY
    serialize = AvroSerializer(registry, SCHEMA, conf=strategy)
    context = SerializationContext(topic, MessageField.VALUE)
    sent: list[dict[str, Any]] = [
        {"seq": i, "path": f"smoke/{i}.txt", "sha256": hashlib.sha256(b"%d" % i).hexdigest()}
        for i in range(RECORDS)
    ]
    failures: list[KafkaError] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(err)

    producer = make_producer(settings.kafka)
    started = time.perf_counter()
    for record in sent:
        producer.produce(
            topic, key=record["path"], value=serialize(record, context), on_delivery=delivered
        )
    if producer.flush(30) or failures:
        raise SmokeFailed(f"kafka: {len(failures)} records not delivered: {failures[:1]}")
    produced_s = time.perf_counter() - started

    deserialize = AvroDeserializer(registry, conf=strategy)
    consumer = make_consumer(settings.kafka, f"headrace-smoke-{run}")
    received: list[tuple[dict[str, Any], int]] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        while len(received) < RECORDS and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                raise SmokeFailed(f"kafka: consume error {msg.error()}")
            value = msg.value() or b""
            received.append((deserialize(value, context), int.from_bytes(value[1:5], "big")))
    finally:
        consumer.close()
    admin.delete_topics([topic])
    if sorted((r for r, _ in received), key=lambda r: r["seq"]) != sent:
        raise SmokeFailed(
            f"kafka: sent {RECORDS} records, read back {len(received)} different ones"
        )
    registered = registry.get_latest_version(f"{topic}-value").schema_id
    if {schema_id for _, schema_id in received} != {registered}:
        raise SmokeFailed("registry: messages carry a schema id the registry did not assign")
    return [
        (
            "kafka",
            f"{RECORDS} Avro records produced (idempotent, acks=all) and consumed",
            f"ok in {produced_s * 1000:.0f} ms",
        ),
        ("registry", f"subject {topic}-value", f"schema id {registered}"),
    ]


def _object_store(settings: Settings) -> Row:
    store = open_storage(settings.object_store)
    store.ensure_bucket()
    body = os.urandom(256 * 1024)
    sha256 = hashlib.sha256(body).hexdigest()
    key = f"smoke/{sha256}"
    store.put(key, body, sha256=sha256)
    url, _ = store.presign(key, timedelta(minutes=5))
    fetched = httpx.get(url, timeout=10.0)
    store.delete(key)
    if fetched.status_code != 200 or fetched.content != body:
        raise SmokeFailed(f"minio: presigned GET answered {fetched.status_code}")
    return ("minio", "256 KiB put, fetched by presigned URL", f"ok, bucket {store.bucket}")


def _postgres(settings: Settings) -> Row:
    payload = bytes(range(256))  # NUL included: content is bytea, never text
    with psycopg.connect(settings.postgres.conninfo()) as conn:
        conn.execute("CREATE TEMP TABLE smoke (id int PRIMARY KEY, body bytea NOT NULL)")
        conn.execute("INSERT INTO smoke VALUES (1, %s)", (payload,))
        row = conn.execute("SELECT body FROM smoke WHERE id = 1").fetchone()
        version = conn.execute("SHOW server_version").fetchone()
    if row is None or bytes(row[0]) != payload:
        raise SmokeFailed("postgres: the row read back differs from the row written")
    return (
        "postgres",
        "bytea row written and read back",
        f"ok, PostgreSQL {version[0] if version else '?'}",
    )


def _prometheus(settings: Settings, run: str) -> Row:
    """A target registered through file-based discovery is scraped: its value read back."""
    registry = CollectorRegistry()
    probe = Gauge("headrace_smoke_probe", "The smoke run's probe", ["run"], registry=registry)
    value = int.from_bytes(os.urandom(3), "big")
    probe.labels(run).set(value)
    server, _thread = start_http_server(0, "127.0.0.1", registry=registry)
    address = f"127.0.0.1:{server.server_address[1]}"
    target = register(settings.metrics.targets_dir, address, {"component": "smoke"})
    base = Prometheus(settings).address
    read: list[float] = []

    def scraped() -> bool:
        answer = httpx.get(
            f"{base}/api/v1/query", params={"query": f'headrace_smoke_probe{{run="{run}"}}'}
        ).json()
        read[:] = [float(r["value"][1]) for r in answer["data"]["result"]]
        return bool(read)

    started = time.perf_counter()
    try:
        # Discovery and the scrape each take up to an interval.
        wait_until(
            "prometheus", scraped, timeout_s=4 * settings.stack.prometheus_scrape_interval_s + 10
        )
    finally:
        unregister(target)
        server.shutdown()
        server.server_close()
    if read != [value]:
        raise SmokeFailed(f"prometheus: scraped {read}, the target served {value}")
    return (
        "prometheus",
        "a target registered by file SD, scraped and queried",
        f"ok in {time.perf_counter() - started:.1f} s",
    )
