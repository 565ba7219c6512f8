"""The stack is real: each service is driven through the client the pipeline uses."""

from __future__ import annotations

import hashlib
import io
import os
import time
import uuid
from datetime import timedelta

import httpx
import psycopg
from confluent_kafka import KafkaError, Message
from confluent_kafka.schema_registry import SchemaRegistryClient, topic_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from headrace.kafka import ensure_topics, make_admin, make_consumer, make_producer
from headrace.settings import (
    KafkaSettings,
    ObjectStoreSettings,
    PostgresSettings,
    RegistrySettings,
)
from storage.objectstore.minio import make_minio

SCHEMA = """{"type": "record", "name": "Probe", "namespace": "dev.headrace.test",
  "fields": [{"name": "n", "type": "int"}, {"name": "body", "type": "bytes"}]}"""
STRATEGY = {"subject.name.strategy": topic_subject_name_strategy}


def test_avro_records_round_trip_through_kafka_and_the_registry(
    kafka: KafkaSettings, registry: RegistrySettings
) -> None:
    topic = f"test.stack-{uuid.uuid4().hex[:12]}"
    admin = make_admin(kafka)
    assert ensure_topics(admin, [topic], partitions=3, replication_factor=1) == [topic]
    assert len(admin.list_topics(topic, timeout=10).topics[topic].partitions) == 3

    with SchemaRegistryClient({"url": registry.url}) as client:
        _round_trip(kafka, client, topic)


def _round_trip(kafka: KafkaSettings, client: SchemaRegistryClient, topic: str) -> None:
    serialize = AvroSerializer(client, SCHEMA, conf=STRATEGY)
    ctx = SerializationContext(topic, MessageField.VALUE)
    sent = [{"n": i, "body": os.urandom(i % 50)} for i in range(200)]
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    producer = make_producer(kafka)
    assert producer_config_is_idempotent(kafka)
    for record in sent:
        producer.produce(
            topic, key=str(record["n"]), value=serialize(record, ctx), on_delivery=on_delivery
        )
    assert producer.flush(30) == 0
    assert errors == []

    registered = client.get_latest_version(f"{topic}-value")
    assert registered.schema_id > 0

    deserialize = AvroDeserializer(client, conf=STRATEGY)
    consumer = make_consumer(kafka, f"test-{topic}")
    received, ids = [], set()
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        while len(received) < len(sent) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            assert msg.value()[0] == 0  # Confluent wire format: magic byte
            ids.add(int.from_bytes(msg.value()[1:5], "big"))
            received.append(deserialize(msg.value(), ctx))
            consumer.store_offsets(msg)
        consumer.commit(asynchronous=False)
        committed = consumer.committed(consumer.assignment(), timeout=10)
    finally:
        consumer.close()
    assert sorted(received, key=lambda r: r["n"]) == sent
    assert ids == {registered.schema_id}
    # The group's committed positions cover every record it read.
    assert sum(tp.offset for tp in committed) == len(sent)


def producer_config_is_idempotent(kafka: KafkaSettings) -> bool:
    from headrace.kafka import producer_config

    config = producer_config(kafka)
    return config["enable.idempotence"] is True and config["acks"] == "all"


def test_minio_put_get_and_presigned_url(object_store: ObjectStoreSettings) -> None:
    client = make_minio(object_store)
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    client.make_bucket(bucket)
    body = os.urandom(300_000)
    key = hashlib.sha256(body).hexdigest()
    client.put_object(bucket, key, io.BytesIO(body), len(body))

    response = client.get_object(bucket, key)
    try:
        assert response.read() == body
    finally:
        response.close()
        response.release_conn()

    url = client.presigned_get_object(bucket, key, expires=timedelta(minutes=5))
    assert url.startswith(f"http://{object_store.endpoint}/")
    fetched = httpx.get(url, timeout=10)
    assert fetched.status_code == 200
    assert fetched.content == body
    # The signature is checked: the same URL with one character changed is refused.
    tampered = url[:-1] + ("0" if url[-1] != "0" else "1")
    assert httpx.get(tampered, timeout=10).status_code == 403


def test_postgres_round_trips_a_row(postgres: PostgresSettings) -> None:
    body = bytes(range(256)) * 4  # NUL bytes included: content is bytea
    with psycopg.connect(postgres.conninfo()) as conn:
        conn.execute("CREATE TEMP TABLE probe (id bigint PRIMARY KEY, name text, body bytea)")
        conn.execute("INSERT INTO probe VALUES (%s, %s, %s)", (7, "seven", body))
        row = conn.execute("SELECT id, name, body FROM probe").fetchone()
    assert row == (7, "seven", body)
