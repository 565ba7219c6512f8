"""Where integration tests get services from, and what happens when one is missing."""

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from headrace.settings import RegistrySettings, Settings
from headrace.testing import Found, Missing, ServiceResolver, docker_engine_answers, in_ci


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings_with_registry(url: str) -> Settings:
    return Settings.model_construct(registry=RegistrySettings(url=url))


class _Subjects(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200 if self.path.endswith("/subjects") else 404)
        self.end_headers()
        self.wfile.write(b"[]")

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def fake_registry() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Subjects)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/apis/ccompat/v7"
    server.shutdown()
    server.server_close()


def test_a_service_answering_at_the_configured_address_is_used(fake_registry: str) -> None:
    resolver = ServiceResolver(
        settings_with_registry(fake_registry), env={}, docker_available=lambda: False
    )
    found = resolver.resolve("registry")
    assert isinstance(found, Found) and found.source == "local stack"


def test_explicit_setting_wins_and_is_reported_when_dead() -> None:
    url = f"http://127.0.0.1:{closed_port()}/apis/ccompat/v7"
    resolver = ServiceResolver(
        settings_with_registry(url),
        env={"HEADRACE_REGISTRY__URL": url},
        docker_available=lambda: pytest.fail("docker must not be tried"),
    )
    missing = resolver.resolve("registry")
    assert isinstance(missing, Missing)
    assert missing.reason == f"HEADRACE_REGISTRY__URL points at {url}, which does not answer"


def test_no_stack_and_no_docker_is_missing() -> None:
    url = f"http://127.0.0.1:{closed_port()}/apis/ccompat/v7"
    resolver = ServiceResolver(settings_with_registry(url), env={}, docker_available=lambda: False)
    missing = resolver.resolve("registry")
    assert isinstance(missing, Missing)
    assert "nothing answers at" in missing.reason and "no Docker engine" in missing.reason


def test_in_ci_a_missing_service_fails_naming_it() -> None:
    url = f"http://127.0.0.1:{closed_port()}/apis/ccompat/v7"
    resolver = ServiceResolver(
        settings_with_registry(url), env={"CI": "true"}, docker_available=lambda: False
    )
    with pytest.raises(pytest.fail.Exception) as info:
        resolver.require("registry")
    assert str(info.value).startswith("registry is not available: nothing answers at")
    assert "CI=true, so a missing service fails the run" in str(info.value)


def test_outside_ci_a_missing_service_skips() -> None:
    url = f"http://127.0.0.1:{closed_port()}/apis/ccompat/v7"
    resolver = ServiceResolver(settings_with_registry(url), env={}, docker_available=lambda: False)
    with pytest.raises(pytest.skip.Exception, match="registry is not available"):
        resolver.require("registry")


@pytest.mark.parametrize(
    ("value", "expected"), [("true", True), ("1", True), ("TRUE", True), ("", False), ("no", False)]
)
def test_ci_flag(value: str, expected: bool) -> None:
    assert in_ci({"CI": value}) is expected


def test_no_docker_engine_is_detected_without_leaking(tmp_path: Path) -> None:
    assert docker_engine_answers({"DOCKER_HOST": f"unix://{tmp_path}/docker.sock"}) is False
    assert docker_engine_answers({"DOCKER_HOST": f"tcp://127.0.0.1:{closed_port()}"}) is False
    assert docker_engine_answers({"DOCKER_HOST": "ssh://somewhere"}) is False


def test_a_docker_engine_that_answers_ping_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen()

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")

        thread = threading.Thread(target=answer)
        thread.start()
        assert docker_engine_answers({"DOCKER_HOST": f"unix://{path}"}) is True
        thread.join(5)
