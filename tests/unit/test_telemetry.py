import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from headrace.telemetry import JsonFormatter, RunIdFilter, configure_logging, current_run_id


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def captured() -> io.StringIO:
    return io.StringIO()


def _handler(stream: io.StringIO, formatter: logging.Formatter) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(RunIdFilter())
    return handler


def test_json_lines_carry_the_run_id_and_extras(captured: io.StringIO) -> None:
    configure_logging("INFO", "json", run_id="run-42")
    log = logging.getLogger("headrace.test")
    handler = _handler(captured, JsonFormatter())
    log.addHandler(handler)
    try:
        log.info("published %d events", 3, extra={"topic": "files"})
    finally:
        log.removeHandler(handler)
    entry = orjson.loads(captured.getvalue())
    assert entry["message"] == "published 3 events"
    assert entry["run_id"] == "run-42"
    assert entry["topic"] == "files"
    assert entry["level"] == "INFO"


def test_configure_logging_installs_one_handler_and_a_fresh_run_id() -> None:
    first = configure_logging("INFO", "text")
    second = configure_logging("WARNING", "json")
    root = logging.getLogger()
    assert len(root.handlers) == 1
    assert isinstance(root.handlers[0].formatter, JsonFormatter)
    assert root.level == logging.WARNING
    assert first != second == current_run_id()
