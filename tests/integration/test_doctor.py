"""``headrace doctor`` against the real services: it passes on the running stack and
fails, with the right line, for a stopped service, a wrong password and a full disk."""

from __future__ import annotations

import socket
from pathlib import Path

import orjson
import pytest

from headrace.cli import main
from headrace.settings import KafkaSettings, ObjectStoreSettings, PostgresSettings, RegistrySettings


@pytest.fixture
def stack_env(
    kafka: KafkaSettings,
    registry: RegistrySettings,
    object_store: ObjectStoreSettings,
    postgres: PostgresSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The settings of the running stack, every directory under the test's own."""
    values = {
        "KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "REGISTRY__URL": registry.url,
        "OBJECT_STORE__ENDPOINT": object_store.endpoint,
        "OBJECT_STORE__ACCESS_KEY": object_store.access_key,
        "OBJECT_STORE__SECRET_KEY": object_store.secret_key.get_secret_value(),
        "POSTGRES__HOST": postgres.host,
        "POSTGRES__PORT": str(postgres.port),
        "POSTGRES__USER": postgres.user,
        "POSTGRES__PASSWORD": postgres.password.get_secret_value(),
        "POSTGRES__DATABASE": postgres.database,
        "LOAD__BACKEND": "postgres",
    }
    for setting in (
        "ARCHIVE__ROOT",
        "CACHE__DIR",
        "GIT__CACHE_DIR",
        "CONSUMER__INSTANCES_DIR",
        "TABLES__STATE_DIR",
        "VERIFY__REPAIRS_DIR",
    ):
        values[setting] = str(tmp_path / setting.lower())
    for name, value in values.items():
        monkeypatch.setenv(f"HEADRACE_{name}", value)


def doctor(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exit_info:
        main(["doctor", "--min-free-gb", "0", *argv])
    out, _err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 0), out.splitlines()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.usefixtures("stack_env")
def test_doctor_passes_on_the_running_stack(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = doctor([], capsys)
    assert code == 0, lines
    assert lines[-1] == "all checks passed"
    names = [line.split(":")[0] for line in lines[:-1]]
    assert all(name.startswith("ok ") for name in names), lines
    for wanted in ("kafka", "registry", "object store (object_store.bucket)", "load database"):
        assert f"ok   {wanted}" in names


@pytest.mark.usefixtures("stack_env")
@pytest.mark.parametrize(
    ("variable", "value", "line"),
    [
        (
            "HEADRACE_KAFKA__BOOTSTRAP_SERVERS",
            "127.0.0.1:{port}",
            "FAIL kafka: no Kafka broker answered at 127.0.0.1:{port}",
        ),
        (
            "HEADRACE_REGISTRY__URL",
            "http://127.0.0.1:{port}/apis/ccompat/v7",
            "FAIL registry: schema registry unreachable at http://127.0.0.1:{port}",
        ),
        (
            "HEADRACE_OBJECT_STORE__ENDPOINT",
            "127.0.0.1:{port}",
            "FAIL object store (object_store.bucket): object store at 127.0.0.1:{port}",
        ),
        ("HEADRACE_POSTGRES__PORT", "{port}", "FAIL load database: database PostgreSQL at"),
    ],
    ids=["kafka", "registry", "object store", "postgres"],
)
def test_doctor_names_a_stopped_service(
    variable: str,
    value: str,
    line: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = closed_port()
    monkeypatch.setenv(variable, value.format(port=port))
    code, lines = doctor([], capsys)
    assert code == 1
    failed = [entry for entry in lines if entry.startswith("FAIL")]
    assert len(failed) >= 1 and failed[0].startswith(line.format(port=port)), lines
    assert lines[-1].endswith("checks failed")


@pytest.mark.usefixtures("stack_env")
def test_doctor_names_a_wrong_password_and_never_prints_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADRACE_POSTGRES__PASSWORD", "not-the-password-4711")
    code, lines = doctor(["--json"], capsys)
    report = orjson.loads("\n".join(lines))
    assert code == 1 and report["ok"] is False
    failed = [c for c in report["checks"] if not c["ok"]]
    assert [c["name"] for c in failed] == ["load database"]
    assert "password authentication failed" in failed[0]["detail"]
    assert "not-the-password-4711" not in "\n".join(lines)


@pytest.mark.usefixtures("stack_env")
def test_doctor_fails_a_disk_below_the_threshold(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = doctor(["--min-free-gb", "100000"], capsys)
    assert code == 1
    disks = [line for line in lines if line.startswith("FAIL disk (")]
    assert disks and all("below 100000 GB" in line for line in disks), lines
    assert "archive.root" in disks[0] and "cache.dir" in disks[0]
