"""Reading a topic to its end, for tests: bounded, and ending on the end offsets."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import Message, TopicPartition

from headrace.kafka import make_consumer
from headrace.settings import KafkaSettings

T = TypeVar("T")


def read_topic(
    kafka: KafkaSettings, topic: str, decode: Callable[[Message], T], timeout_s: float = 30.0
) -> list[T]:
    """Every committed record of ``topic``, decoded, up to the end offsets seen now."""
    consumer = make_consumer(kafka, f"test-read-{uuid.uuid4().hex[:8]}")
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {}
        for p in partitions:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        out: list[T] = []
        position = dict.fromkeys(partitions, 0)
        deadline = time.monotonic() + timeout_s
        while any(position[p] < ends[p] for p in partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: read {len(out)} records, ends {ends}, at {position}")
            msg = consumer.poll(0.5)
            if msg is None:
                # Transaction markers take offsets without records: ask for the position.
                for tp in consumer.position([TopicPartition(topic, p) for p in partitions]):
                    position[tp.partition] = max(position[tp.partition], tp.offset)
                continue
            assert msg.error() is None, msg.error()
            out.append(decode(msg))
            position[msg.partition()] = (msg.offset() or 0) + 1
        return out
    finally:
        consumer.close()
