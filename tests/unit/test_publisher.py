"""The Publisher's constructor does no I/O (style 7a): it connects in start()."""

from __future__ import annotations

import socket
import time

import pytest

from headrace.errors import KafkaUnavailable
from headrace.settings import KafkaSettings, RegistrySettings
from producers.publisher import Publisher
from producers.runs import Probe
from schemas.models import FileEvent
from schemas.registry import make_registry_client


def closed_port() -> int:
    """A local port nothing listens on (bound, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def publisher() -> Publisher:
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{closed_port()}")
    registry = make_registry_client(RegistrySettings(url=f"http://127.0.0.1:{closed_port()}"))
    return Publisher(kafka, registry, transactional_id="headrace.test", connect_timeout_s=1)


def test_constructing_touches_no_broker(publisher: Publisher) -> None:
    # no broker answers there: anything that tried to reach one would fail or wait
    assert (publisher.file_topic, publisher.delivered, publisher.failed) == (
        "headrace.file-events",
        0,
        {},
    )
    assert publisher.flush() == {}  # nothing produced, nothing to wait for
    assert publisher.prepare() == ({}, None)
    publisher.commit()  # no transaction open: nothing to do
    publisher.abort()
    publisher.close()


def test_using_it_before_start_says_so(publisher: Publisher) -> None:
    event = FileEvent(project="p", path="a.txt", size=1, checksum="a" * 64)
    with pytest.raises(RuntimeError, match=r"Publisher\.start\(\) first"):
        publisher.file(event)
    with pytest.raises(RuntimeError, match=r"Publisher\.start\(\) first"):
        publisher.committed(Probe("headrace.file-events", 0, 0))


def test_start_is_where_a_missing_broker_shows(publisher: Publisher) -> None:
    began = time.monotonic()
    with pytest.raises(KafkaUnavailable):
        publisher.start()
    assert time.monotonic() - began < 30
