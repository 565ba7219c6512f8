"""compose/docker-compose.yml and the local stack offer the same services alike."""

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from headrace.settings import PROJECT_ROOT, Settings
from headrace.stack.process import split_host_port


@pytest.fixture(scope="module")
def defaults() -> Settings:
    """The built-in defaults, whatever HEADRACE_* variables this shell has."""
    return Settings.model_construct()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(
        Path(PROJECT_ROOT / "compose" / "docker-compose.yml").read_text()
    )
    return data["services"]


def host_ports(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port, from "127.0.0.1:HOST:CONTAINER" entries."""
    mapping = {}
    for entry in service["ports"]:
        *_, host, container = entry.split(":")
        mapping[int(container)] = int(host)
    return mapping


def test_every_local_service_is_in_compose(compose: dict[str, Any]) -> None:
    from headrace.stack.manager import SERVICE_NAMES

    assert set(SERVICE_NAMES) <= set(compose)
    assert {"prometheus", "grafana"} <= set(compose)


def test_kafka_matches(compose: dict[str, Any], defaults: Settings) -> None:
    _, port = split_host_port(defaults.kafka.bootstrap_servers, 9092)
    kafka = compose["kafka"]
    assert host_ports(kafka) == {9092: port}
    advertised = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert f"PLAINTEXT://127.0.0.1:{port}" in advertised
    assert kafka["image"] == f"apache/kafka:{defaults.stack.kafka_version}"


def test_registry_matches(compose: dict[str, Any], defaults: Settings) -> None:
    url = urlsplit(defaults.registry.url)
    registry = compose["registry"]
    assert host_ports(registry)[8080] == url.port
    assert registry["image"] == f"apicurio/apicurio-registry:{defaults.stack.registry_version}"
    assert registry["environment"]["APICURIO_RULES_GLOBAL_COMPATIBILITY"] == "BACKWARD"


def test_minio_matches(compose: dict[str, Any], defaults: Settings) -> None:
    store = defaults.object_store
    minio = compose["minio"]
    _, port = split_host_port(store.endpoint, 9000)
    assert host_ports(minio) == {9000: port, 9001: defaults.stack.minio_console_port}
    assert minio["environment"]["MINIO_ROOT_USER"] == store.access_key
    assert minio["environment"]["MINIO_ROOT_PASSWORD"] == store.secret_key.get_secret_value()


def test_postgres_matches(compose: dict[str, Any], defaults: Settings) -> None:
    pg = defaults.postgres
    postgres = compose["postgres"]
    assert host_ports(postgres) == {5432: pg.port}
    env = postgres["environment"]
    assert (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"]) == (
        pg.user,
        pg.password.get_secret_value(),
        pg.database,
    )


def test_testcontainers_use_the_compose_images(compose: dict[str, Any]) -> None:
    source = (PROJECT_ROOT / "headrace" / "testing.py").read_text()
    for service in ("registry", "minio", "postgres"):
        assert f'"{compose[service]["image"]}"' in source, service
