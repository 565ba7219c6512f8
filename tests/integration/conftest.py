"""Real services for integration tests: see headrace.testing for where they come from."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from headrace.settings import (
    KafkaSettings,
    ObjectStoreSettings,
    PostgresSettings,
    RegistrySettings,
    Settings,
)
from headrace.testing import ServiceResolver, resolver_for_session


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in item.nodeid:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def ingest_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ingest remembers its runs: in the test's own directory, not the checkout's."""
    monkeypatch.setenv("HEADRACE_INGEST__STATE_DIR", str(tmp_path_factory.mktemp("runs")))
    # ... and every process its operational history.
    history = tmp_path_factory.mktemp("history") / "history.sqlite3"
    monkeypatch.setenv("HEADRACE_HISTORY__SQLITE_PATH", str(history))


@pytest.fixture(autouse=True)
def metrics_targets(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process serving /metrics registers for Prometheus: in the test's own directory,
    not the one a developer's Prometheus scrapes (test_prometheus.py uses that one)."""
    monkeypatch.setenv("HEADRACE_METRICS__TARGETS_DIR", str(tmp_path_factory.mktemp("targets")))


@pytest.fixture(scope="session")
def resolver(base_settings: Settings) -> Iterator[ServiceResolver]:
    with resolver_for_session(base_settings) as found:
        yield found


@pytest.fixture(scope="session")
def kafka(resolver: ServiceResolver) -> KafkaSettings:
    return resolver.require("kafka").kafka


@pytest.fixture(scope="session")
def registry(resolver: ServiceResolver) -> RegistrySettings:
    return resolver.require("registry").registry


@pytest.fixture(scope="session")
def object_store(resolver: ServiceResolver) -> ObjectStoreSettings:
    return resolver.require("minio").object_store


@pytest.fixture(scope="session")
def postgres(resolver: ServiceResolver) -> PostgresSettings:
    return resolver.require("postgres").postgres


@pytest.fixture(scope="session")
def prometheus(resolver: ServiceResolver) -> Settings:
    return resolver.require("prometheus")
