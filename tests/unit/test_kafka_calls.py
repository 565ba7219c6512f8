"""headrace.kafka's guarded calls: watermarks asked again, admin answers and hung calls bounded."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from headrace.errors import KafkaUnavailable
from headrace.kafka import await_broker, is_passing, watermarks
from headrace.settings import KafkaSettings


class _Consumer:
    """get_watermark_offsets raising ``errors`` in turn, then answering (3, 9)."""

    def __init__(self, *errors: int) -> None:
        self.errors = list(errors)
        self.asked = 0

    def get_watermark_offsets(self, tp: TopicPartition, **_: Any) -> tuple[int, int]:
        self.asked += 1
        if self.errors:
            raise KafkaException(KafkaError(self.errors.pop(0)))
        return 3, 9


class _Restarting:
    """list_topics failing ``down`` times as a restarting broker does, then answering."""

    def __init__(self, down: int) -> None:
        self.down, self.asked = down, 0

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> str:
        self.asked += 1
        if self.asked <= self.down:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Broker transport failure"))  # noqa: SLF001
        return "metadata"


def test_a_group_start_waits_for_a_restarting_broker(caplog: pytest.LogCaptureFixture) -> None:
    client = _Restarting(down=2)
    await_broker(client, KafkaSettings(), wait_s=30)  # type: ignore[arg-type]
    assert client.asked == 3
    asked = [r.getMessage() for r in caplog.records if "asking again" in r.getMessage()]
    assert len(asked) == 2 and asked[0].startswith("Kafka is not available yet (no Kafka broker")
    assert "Broker transport failure" in asked[0]


def test_a_broker_that_stays_away_is_one_error_naming_the_wait() -> None:
    client = _Restarting(down=1000)
    with pytest.raises(KafkaUnavailable, match=r"no Kafka broker answered at 127\.0\.0\.1:9092"):
        await_broker(client, KafkaSettings(), wait_s=1.5)  # type: ignore[arg-type]
    assert client.asked == 2  # at 0 s and, a second later, once more


def test_no_leader_yet_is_asked_again_until_the_leader_answers() -> None:
    consumer = _Consumer(KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE)
    assert watermarks(consumer, TopicPartition("t", 0), retry_for_s=10) == (3, 9)  # type: ignore[arg-type]
    assert consumer.asked == 3


def test_an_error_that_stays_is_raised_after_the_retry_window() -> None:
    consumer = _Consumer(*[KafkaError.NOT_LEADER_FOR_PARTITION] * 1000)
    with pytest.raises(KafkaException):
        watermarks(consumer, TopicPartition("t", 0), retry_for_s=0.3)  # type: ignore[arg-type]
    assert 1 < consumer.asked < 1000


def test_a_lasting_error_is_raised_at_once() -> None:
    consumer = _Consumer(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(KafkaException):
        watermarks(consumer, TopicPartition("t", 0))  # type: ignore[arg-type]
    assert consumer.asked == 1
    assert not is_passing(ValueError("x"))


def test_an_admin_call_without_an_answer_is_a_kafka_timeout_not_a_bare_timeout_error() -> None:
    from concurrent.futures import Future

    from headrace.kafka import answer

    with pytest.raises(KafkaException) as raised:
        answer(Future(), 0.01)
    assert raised.value.args[0].code() == KafkaError._TIMED_OUT  # noqa: SLF001
    assert "within 0.01 s" in raised.value.args[0].str()
    done: Future[int] = Future()
    done.set_result(7)
    assert answer(done, 1) == 7


def test_a_call_that_blocks_past_its_bound_is_hung_and_the_caller_goes_on() -> None:
    import threading

    from headrace.kafka import Hung, within

    release = threading.Event()
    with pytest.raises(Hung, match="send_offsets_to_transaction did not return within 0.05 s"):
        within(0.05, lambda: release.wait(30), "send_offsets_to_transaction")
    release.set()
    assert within(5, lambda: 7, "x") == 7
    with pytest.raises(KafkaException):
        within(
            5,
            lambda: _Consumer(KafkaError.TOPIC_AUTHORIZATION_FAILED).get_watermark_offsets(
                TopicPartition("t", 0)
            ),
            "x",
        )
