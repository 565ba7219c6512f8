"""``headrace schemas``: offline checks and diffs, and one line per registry failure."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from schemas import catalog
from schemas.catalog import EventType
from tests.unit.test_cli import run


def test_offline_check_of_the_local_schemas_passes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["schemas", "check", "--offline"], capsys)
    assert code == 0
    assert out.splitlines() == [
        "ok    file_event v2",
        "ok    run_event v2",
        "ok    verification_event v1",
        "ok    dead_letter v3",
        "ok    row_event v1",
    ]


def write(path: Path, schema: object) -> Path:
    path.write_text(json.dumps(schema))
    return path


def test_offline_check_of_files_explains_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = write(
        tmp_path / "old.avsc",
        {"type": "record", "name": "R", "fields": [{"name": "size", "type": "long"}]},
    )
    new = write(
        tmp_path / "new.avsc",
        {"type": "record", "name": "R", "fields": [{"name": "size", "type": "int"}]},
    )
    code, out, _ = run(["schemas", "check", "--offline", str(new), str(old)], capsys)
    assert code == 1
    assert out.splitlines()[0] == "FAIL  new.avsc"
    assert "'size'" in out and "long" in out and "int" in out
    code, out, _ = run(
        ["schemas", "check", "--offline", "--level", "forward", str(new), str(old)], capsys
    )
    assert (code, out.splitlines()) == (0, ["ok    new.avsc"])


def test_an_invalid_schema_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(
        tmp_path / "bad.avsc",
        {"type": "record", "name": "R", "fields": [{"name": "x", "type": "no-such-type"}]},
    )
    good = write(tmp_path / "good.avsc", {"type": "record", "name": "R", "fields": []})
    code, _, err = run(["schemas", "check", "--offline", str(bad), str(good)], capsys)
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "bad.avsc" in err


def test_files_online_need_a_subject(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = write(tmp_path / "new.avsc", {"type": "record", "name": "R", "fields": []})
    code, _, err = run(["schemas", "check", str(new)], capsys)
    assert code == 2 and "--subject" in err


def test_offline_diff_of_file_event_v1_v2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["schemas", "diff", "--offline", "file_event", "1", "2"], capsys)
    assert code == 0
    added = {line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith("added")}
    v1 = {f["name"] for f in catalog.version(EventType.FILE_EVENT, 1).json["fields"]}
    v2 = {f["name"] for f in catalog.version(EventType.FILE_EVENT, 2).json["fields"]}
    assert v2 - v1 <= added
    assert any(
        line.startswith("type changed") and "local_path" in line for line in out.splitlines()
    )


class _Answer(BaseHTTPRequestHandler):
    status = 500
    body: dict[str, object] = {}

    def _reply(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        payload = json.dumps(self.body).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = _reply  # noqa: N815 - http.server's naming

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def answering(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_Answer]]:
    handler = type("Handler", (_Answer,), {})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HEADRACE_REGISTRY__URL", f"http://127.0.0.1:{server.server_port}")
    yield handler
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("status", "command", "expected"),
    [
        (401, ["schemas", "list"], "listing subjects: the registry refused the credentials (401)"),
        (409, ["schemas", "register"], "incompatible with the registered versions (409): nope"),
        (422, ["schemas", "register"], "the registry rejected the schema as invalid (422): nope"),
    ],
)
def test_registry_refusals_are_one_line(
    answering: type[_Answer],
    status: int,
    command: list[str],
    expected: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    answering.status = status
    answering.body = {"error_code": status, "message": "nope"}
    if command[1] == "register":
        # Versions are listed first: answer them 404 (no subject yet), then refuse.
        answering.do_GET = _not_found  # type: ignore[method-assign]
    code, _, err = run(command, capsys)
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and expected in err


def _not_found(self: _Answer) -> None:
    payload = b'{"error_code": 40401, "message": "Subject not found"}'
    self.send_response(404)
    self.send_header("Content-Length", str(len(payload)))
    self.end_headers()
    self.wfile.write(payload)


def test_unreachable_registry_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HEADRACE_REGISTRY__URL", f"http://127.0.0.1:{port}")
    code, _, err = run(["schemas", "list"], capsys)
    assert code == 1
    assert err.strip() == (
        f"headrace: error: schema registry unreachable at "
        f"http://127.0.0.1:{port}: [Errno 111] Connection refused"
    )
