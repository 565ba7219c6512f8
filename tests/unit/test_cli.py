"""The CLI's contract with people: readable help, one-line errors, exit codes."""

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from headrace import __version__
from headrace.cli import main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 0), out, err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--version"], capsys)
    assert (code, out.strip()) == (0, f"headrace, version {__version__}")


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    assert "stack" in out and "--log-format" in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--bogus"], "No such option '--bogus'"),
        (["stack", "up", "kafak"], "'kafak' is not one of"),
        (["--log-format", "xml", "settings"], "'xml' is not one of"),
        (["nosuchcommand"], "No such command 'nosuchcommand'"),
    ],
)
def test_bad_arguments_get_one_line_and_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(argv, capsys)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("headrace: error: ") and needle in err
    assert "Traceback" not in err


def test_bad_settings_get_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADRACE_POSTGRES__PORT", "not-a-port")
    code, _, err = run(["settings"], capsys)
    assert code == 1
    assert err.strip().splitlines() == [
        "headrace: error: invalid settings: postgres.port: "
        "Input should be a valid integer, unable to parse string as an integer"
    ]


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["--config", str(tmp_path / "nope.toml"), "settings"], capsys)
    assert code == 1
    assert "config file" in err and "does not exist" in err


def test_settings_command_masks_secrets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADRACE_OBJECT_STORE__SECRET_KEY", "very-secret-key")
    code, out, _ = run(["settings"], capsys)
    assert code == 0
    assert "very-secret-key" not in out
    assert '"secret_key": "**********"' in out


def test_stack_env_prints_exports(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["stack", "env"], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    assert "export HEADRACE_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:9092" in lines
    assert all(line.startswith("export HEADRACE_") for line in lines)


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_port_taken_by_another_process_is_one_clear_line(
    taken_port: int,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HEADRACE_STACK__HOME", str(tmp_path))
    monkeypatch.setenv("HEADRACE_OBJECT_STORE__ENDPOINT", f"127.0.0.1:{taken_port}")
    code, _, err = run(["stack", "up", "minio"], capsys)
    assert code == 1
    assert err.strip().splitlines() == [
        f"headrace: error: minio: port 127.0.0.1:{taken_port} (MinIO S3 API) is already "
        "taken by another process; stop it or set HEADRACE_OBJECT_STORE__ENDPOINT"
    ]


def test_status_of_a_stack_that_is_not_running_exits_3(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    taken_port: int,
) -> None:
    monkeypatch.setenv("HEADRACE_STACK__HOME", str(tmp_path))
    monkeypatch.setenv("HEADRACE_OBJECT_STORE__ENDPOINT", f"127.0.0.1:{taken_port}")
    code, out, _ = run(["stack", "status", "--json", "minio"], capsys)
    assert code == 3
    assert '"healthy":false' in out and '"pid":null' in out
