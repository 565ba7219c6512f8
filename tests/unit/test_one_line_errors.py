"""Every failure a user can meet reads as one line: ``headrace: error: ...``, never
``unexpected <Type>`` (a case nobody handled), a traceback or a library's log lines."""

import logging
import re
import socket
import time
from pathlib import Path

import pytest

from headrace import kafka
from headrace.errors import ConfigError
from headrace.settings import KafkaSettings
from tests.unit.test_cli import run


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines[:5]
    assert lines[0].startswith("headrace: error: ") and "unexpected" not in lines[0]
    return lines[0]


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def no_broker(closed_port: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    address = f"127.0.0.1:{closed_port}"
    monkeypatch.setenv("HEADRACE_KAFKA__BOOTSTRAP_SERVERS", address)
    monkeypatch.setenv("HEADRACE_CONSUMER__METRICS_PORT", "0")
    monkeypatch.setenv("HEADRACE_CONSUMER__INSTANCES_DIR", str(tmp_path / "instances"))
    monkeypatch.setattr(kafka, "BROKER_TIMEOUT_S", 1.0)
    monkeypatch.setenv("HEADRACE_CONSUMER__STARTUP_WAIT_S", "0")  # a group asks once
    return address


@pytest.mark.parametrize(
    "argv",
    [["status"], ["dlq", "list"], ["dlq", "show", "0:0"], ["consume", "archive"]],
    ids=["status", "dlq list", "dlq show", "consume archive"],
)
def test_no_broker_is_one_line_without_librdkafka_noise(
    argv: list[str], no_broker: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(argv, capsys)
    assert code == 1
    assert one_line(err).startswith(f"headrace: error: no Kafka broker answered at {no_broker}")


def test_a_group_waits_for_a_broker_before_it_gives_up(
    no_broker: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # consumer.startup_wait_s: a group started while its broker restarts waits for it
    monkeypatch.setattr(kafka, "BROKER_TIMEOUT_S", 0.5)
    monkeypatch.setenv("HEADRACE_CONSUMER__STARTUP_WAIT_S", "3")
    began = time.monotonic()
    code, _, err = run(["consume", "archive"], capsys)
    waited = time.monotonic() - began
    assert code == 1
    lines = err.strip().splitlines()
    asked = [line for line in lines if "asking again for up to" in line]
    assert asked, lines  # said before each ask again (asks of 0.5 s, a second apart)
    assert f"Kafka is not available yet (no Kafka broker answered at {no_broker}" in asked[0]
    assert lines[-1].startswith(f"headrace: error: no Kafka broker answered at {no_broker}")
    assert re.search(r"within [23]s \(", lines[-1]), lines[-1]  # the asks' time, not one's
    assert 1.5 <= waited < 15  # asked twice at least; no ask begins after 3 s


def test_librdkafka_connection_failures_log_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "headrace.librdkafka")
    log = kafka.client_config(KafkaSettings())["logger"]
    log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", "Connect failed")
    log.log(logging.WARNING, "%s [%s] %s", "CONFWARN", "rdkafka#producer-1", "ignored")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "FAIL [rdkafka#consumer-1] Connect failed"),
        (logging.WARNING, "CONFWARN [rdkafka#producer-1] ignored"),
    ]


@pytest.mark.parametrize("make", [kafka.make_admin, kafka.make_producer])
def test_an_unknown_librdkafka_property_is_a_config_error_naming_it(make: object) -> None:
    settings = KafkaSettings(extra={"socket.timeout.ms": "5000", "no.such.thing": "1"})
    with pytest.raises(ConfigError, match=r"^kafka\.extra: 'no\.such\.thing' is an unknown"):
        make(settings)  # type: ignore[operator]


def test_a_bad_librdkafka_value_in_extra_is_a_config_error() -> None:
    settings = KafkaSettings(extra={"linger.ms": "soon"})
    with pytest.raises(ConfigError, match=r"^kafka\.extra \(linger\.ms\): Invalid value"):
        kafka.make_consumer(settings, "g")


def test_an_unknown_property_through_the_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADRACE_KAFKA__EXTRA", '{"no.such.thing": "1"}')
    code, _, err = run(["status"], capsys)
    assert code == 1 and "kafka.extra: 'no.such.thing' is an unknown property" in one_line(err)


@pytest.mark.parametrize(
    "argv",
    [
        ["archive", "verify", "--date", "not-a-date"],
        ["archive", "read", "--since", "not-a-date"],
        ["archive", "read", "--until", "2024-13-01"],
        ["archive", "request-deletion", "--topic", "t", "--date", "20240101", "--reason", "r"],
        ["load", "--from-archive", "--since", "yesterday"],
    ],
)
def test_a_bad_day_is_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(argv, capsys)
    assert code == 2
    assert "is not a YYYY-MM-DD date" in one_line(err)


def test_an_unknown_environment_section_is_rejected(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADRACE_KAFAK__PARTITIONS", "64")
    code, _, err = run(["settings"], capsys)
    assert code == 1
    assert one_line(err) == (
        "headrace: error: invalid settings: HEADRACE_KAFAK__PARTITIONS: "
        "no settings section 'kafak' (did you mean kafka?)"
    )


def test_headrace_variables_that_are_not_settings_are_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "headrace.toml"
    config.write_text("[kafka]\npartitions = 3\n")
    for name, value in {
        "HEADRACE_CONFIG": str(config),
        "HEADRACE_FAILPOINTS": "",
        "HEADRACE_EXAMPLE_DIR": str(tmp_path),
        "HEADRACE_CHAOS_SEED": "1",
        "HEADRACE_TEST_TABLE_ROWS": "10",
        "HEADRACE_STACK__HOME": str(tmp_path),
    }.items():
        monkeypatch.setenv(name, value)
    code, out, _ = run(["settings"], capsys)
    assert code == 0 and '"partitions": 3' in out


@pytest.mark.parametrize("argv", [["db", "query", "--project", "p"], ["db", "stats"]])
def test_a_read_only_db_command_creates_nothing(
    argv: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "db" / "headrace.sqlite3"
    monkeypatch.setenv("HEADRACE_LOAD__SQLITE_PATH", str(path))
    code, _, err = run(argv, capsys)
    assert code == 1
    assert f"no load database at {path} yet" in one_line(err)
    assert not path.parent.exists()


def test_an_archive_root_that_cannot_be_made_is_one_storage_error(tmp_path: Path) -> None:
    from headrace.errors import StorageError
    from storage.archive import Archive

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="cannot create the archive directory"):
        Archive(blocker / "archive")
