"""Pure helpers of the consumer runtime (the loop itself runs against real Kafka in
tests/integration/test_runtime.py)."""

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaPartition

from consumers.runtime import committed_offsets, describe_partitions
from headrace.errors import ConsumeError


def test_assigned_partitions_are_logged_folded_per_topic() -> None:
    given = [("f", 2), ("f", 0), ("f", 1), ("f", 7), ("r", 0), ("f", 9), ("f", 8), ("f", 1)]
    assert describe_partitions(given) == "f[0-2,7-9], r[0]"
    assert describe_partitions([("f", 3)]) == "f[3]"
    assert describe_partitions([]) == ""


class _Flaky:
    """A consumer whose committed offsets are unreadable the first ``failures`` times."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    def committed(self, partitions: list[KafkaPartition], timeout: float) -> list[KafkaPartition]:
        self.calls += 1
        if self.calls <= self.failures:
            raise KafkaException(
                KafkaError(KafkaError._TIMED_OUT, "Failed to get committed offsets")
            )  # noqa: SLF001
        return [KafkaPartition(tp.topic, tp.partition, 7) for tp in partitions]


def test_committed_offsets_are_asked_again_while_kafka_cannot_give_them() -> None:
    consumer = _Flaky(failures=2)
    found = committed_offsets(consumer, [KafkaPartition("t", 0)], "g", backoff_s=0.001)
    assert [(tp.topic, tp.partition, tp.offset) for tp in found] == [("t", 0, 7)]
    assert consumer.calls == 3


def test_committed_offsets_that_stay_unreadable_are_one_clear_line() -> None:
    consumer = _Flaky(failures=10)
    with pytest.raises(ConsumeError, match="cannot read the committed offsets of group g after 3"):
        committed_offsets(consumer, [KafkaPartition("t", 0)], "g", attempts=3, backoff_s=0.001)
    assert consumer.calls == 3
