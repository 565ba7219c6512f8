"""``/readyz`` and ``/healthz`` of a running group (``headrace consume archive``): ready
on the real stack, not ready, and saying why, when a check fails (a disk threshold
above the free space), while ``/healthz`` stays 200: the loop is alive either way."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import orjson

from tests.integration.test_archive import (
    consumer_process,
    env,  # noqa: F401 - the fixture, reused
    wait_for,
)
from tests.integration.test_archive_table import stop


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answer(port: int, path: str) -> tuple[int, bytes] | None:
    try:
        got = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    except httpx.TransportError:
        return None  # not serving yet
    return got.status_code, got.content


def test_a_group_is_ready_on_the_stack_and_says_why_when_it_is_not(
    env: dict[str, str],  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    ready_port, unready_port = free_port(), free_port()
    common = {
        **env,
        "HEADRACE_CONSUMER__METRICS_HOST": "127.0.0.1",
        "HEADRACE_CONSUMER__INSTANCES_DIR": str(tmp_path / "instances"),
        "HEADRACE_HEALTH__READY_INTERVAL_S": "0.5",
    }
    ready = consumer_process({**common, "HEADRACE_CONSUMER__METRICS_PORT": str(ready_port)})
    unready = consumer_process(
        {
            **common,
            "HEADRACE_CONSUMER__METRICS_PORT": str(unready_port),
            "HEADRACE_HEALTH__MIN_FREE_GB": "1000000000",  # more than any disk has
        }
    )
    try:
        wait_for(lambda: _status(ready_port) == 200, 60, "the group to be ready")
        wait_for(lambda: _status(unready_port) == 503 and _checked(unready_port), 60,
                 "the other to say it is not ready, after a round of checks")  # fmt: skip
        ready_body = orjson.loads(_body(ready_port))
        assert ready_body["ready"] is True and ready_body["failed"] == {}
        assert any(name.startswith("kafka") for name in ready_body["checked"]), ready_body
        body = orjson.loads(_body(unready_port))
        assert body["ready"] is False
        assert body["failed"] and all(n.startswith("disk") for n in body["failed"]), body
        assert answer(unready_port, "/healthz") == (200, b"ok")  # alive, only not ready
        assert answer(ready_port, "/healthz") == (200, b"ok")
    finally:
        stop(ready)
        stop(unready)


def _checked(port: int) -> bool:
    """Whether the answer comes from a round of checks (not the first "checking")."""
    body = _body(port)
    return bool(body) and "checked" in orjson.loads(body)


def _status(port: int) -> int | None:
    found = answer(port, "/readyz")
    return None if found is None else found[0]


def _body(port: int) -> bytes:
    found = answer(port, "/readyz")
    return b"" if found is None else found[1]
