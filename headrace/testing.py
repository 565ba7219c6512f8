"""Where the test suite gets each real service from.

In order: the address set explicitly in the environment (``HEADRACE_...``);
the local stack (``headrace stack up``), at the addresses in settings;
testcontainers, when a Docker engine answers. Otherwise the service is
unavailable: with ``CI=true`` that fails the tests that need it, naming the
service; elsewhere they are skipped with the same reason.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from headrace.settings import Settings
from headrace.stack.base import Service
from headrace.stack.manager import Stack
from headrace.stack.process import split_host_port

# The variables that, when set, name a service's address explicitly.
EXPLICIT_ENV: dict[str, tuple[str, ...]] = {
    "kafka": ("HEADRACE_KAFKA__BOOTSTRAP_SERVERS",),
    "registry": ("HEADRACE_REGISTRY__URL",),
    "minio": ("HEADRACE_OBJECT_STORE__ENDPOINT",),
    "postgres": ("HEADRACE_POSTGRES__HOST", "HEADRACE_POSTGRES__PORT"),
    "prometheus": ("HEADRACE_STACK__PROMETHEUS_PORT",),
}


@dataclass(frozen=True)
class Found:
    service: str
    source: str  # "environment", "local stack", "testcontainers"
    settings: Settings


@dataclass(frozen=True)
class Missing:
    service: str
    reason: str

    def message(self, ci: bool) -> str:
        verdict = "CI=true, so a missing service fails the run" if ci else "skipped"
        return (
            f"{self.service} is not available: {self.reason} ({verdict}; "
            f"start it with 'headrace stack up {self.service}')"
        )


def in_ci(env: Mapping[str, str] | None = None) -> bool:
    value = (env if env is not None else os.environ).get("CI", "")
    return value.lower() in {"1", "true", "yes"}


@dataclass
class ServiceResolver:
    """Finds each service once per session and remembers the answer."""

    settings: Settings
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    docker_available: Callable[[], bool] = lambda: docker_engine_answers()
    _found: dict[str, Found | Missing] = field(default_factory=dict)
    _containers: list[Any] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def resolve(self, service: str) -> Found | Missing:
        with self._lock:
            if service not in self._found:
                self._found[service] = self._resolve(service)
            return self._found[service]

    def require(self, service: str) -> Settings:
        """The settings that reach ``service``; fail (CI) or skip the test if none do."""
        import pytest

        result = self.resolve(service)
        if isinstance(result, Found):
            return result.settings
        if in_ci(self.env):
            pytest.fail(result.message(ci=True), pytrace=False)
        pytest.skip(result.message(ci=False))

    def _resolve(self, service: str) -> Found | Missing:
        probe = Stack(self.settings).services[service]
        explicit = [v for v in EXPLICIT_ENV[service] if self.env.get(v)]
        if explicit:
            if _answers(probe):
                return Found(service, "environment", self.settings)
            return Missing(
                service, f"{', '.join(explicit)} points at {probe.address}, which does not answer"
            )
        if _answers(probe):
            return Found(service, "local stack", self.settings)
        if service in CONTAINERS and self.docker_available():
            return Found(service, "testcontainers", self._start_container(service))
        return Missing(
            service,
            f"nothing answers at {probe.address} (the local stack's "
            "address) and no Docker engine answers for testcontainers",
        )

    def _start_container(self, service: str) -> Settings:
        container, section, values = CONTAINERS[service](self.settings)
        self._containers.append(container)
        current = getattr(self.settings, section)
        self.settings = self.settings.model_copy(
            update={section: current.model_copy(update=values)}
        )
        return self.settings

    def close(self) -> None:
        for container in reversed(self._containers):
            with contextlib.suppress(Exception):
                container.stop()
        self._containers.clear()


def _answers(service: Service) -> bool:
    try:
        return service.healthy()
    except Exception:  # a probe that cannot even run means "does not answer"
        return False


def docker_engine_answers(env: Mapping[str, str] | None = None) -> bool:
    """Whether a Docker engine answers ``GET /_ping`` at DOCKER_HOST or the default socket."""
    host = (env if env is not None else os.environ).get(
        "DOCKER_HOST", "unix:///var/run/docker.sock"
    )
    address: str | tuple[str, int]
    if host.startswith("unix://"):
        family, address = socket.AF_UNIX, host.removeprefix("unix://")
    elif host.startswith("tcp://"):
        family, address = socket.AF_INET, split_host_port(host.removeprefix("tcp://"), 2375)
    else:
        return False
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(3.0)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return sock.recv(64).split(b" ")[1:2] == [b"200"]
    except OSError:
        return False


# --- testcontainers, for hosts that have a Docker engine -------------------------
# Credentials, and the images but Kafka's, match compose/docker-compose.yml
# (testcontainers' KafkaContainer configures Confluent's image, not Apache's).

# Each starts a container and returns it with the settings section it replaces.
Started = tuple[Any, str, dict[str, Any]]


def _kafka(_settings: Settings) -> Started:
    from testcontainers.community.kafka import KafkaContainer

    container = KafkaContainer("confluentinc/cp-kafka:7.6.0").with_kraft().start()
    return container, "kafka", {"bootstrap_servers": container.get_bootstrap_server()}


def _registry(_settings: Settings) -> Started:
    from testcontainers.core.container import DockerContainer

    container = (
        DockerContainer("apicurio/apicurio-registry:3.3.3")
        .with_env("APICURIO_RULES_GLOBAL_COMPATIBILITY", "BACKWARD")
        .with_exposed_ports(8080)
        .start()
    )
    host, port = container.get_container_host_ip(), container.get_exposed_port(8080)
    url = f"http://{host}:{port}/apis/ccompat/v7"
    _wait_http(f"{url}/subjects")
    return container, "registry", {"url": url}


def _minio(settings: Settings) -> Started:
    from testcontainers.community.minio import MinioContainer

    store = settings.object_store
    container = MinioContainer(
        "minio/minio:RELEASE.2025-10-15T17-29-55Z",
        access_key=store.access_key,
        secret_key=store.secret_key.get_secret_value(),
    ).start()
    endpoint = f"{container.get_container_host_ip()}:{container.get_exposed_port(9000)}"
    return container, "object_store", {"endpoint": endpoint}


def _postgres(settings: Settings) -> Started:
    from testcontainers.community.postgres import PostgresContainer

    pg = settings.postgres
    container = PostgresContainer(
        "postgres:15",
        username=pg.user,
        password=pg.password.get_secret_value(),
        dbname=pg.database,
    ).start()
    host, port = container.get_container_host_ip(), int(container.get_exposed_port(5432))
    return container, "postgres", {"host": host, "port": port}


def _wait_http(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f}s")


CONTAINERS: dict[str, Callable[[Settings], Started]] = {
    "kafka": _kafka,
    "registry": _registry,
    "minio": _minio,
    "postgres": _postgres,
}


@contextlib.contextmanager
def resolver_for_session(settings: Settings) -> Iterator[ServiceResolver]:
    resolver = ServiceResolver(settings)
    try:
        yield resolver
    finally:
        resolver.close()
