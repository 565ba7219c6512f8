"""The deployment files and the CLI in step: the image (compose/Dockerfile), its
settings (compose/headrace.toml), a compose service per consumer group
(compose/headrace.yml) and the systemd template (docs/deploy/). Docker itself cannot
run here: these tests read the files and check them against the code."""

from __future__ import annotations

import os
import re
import shlex
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from consumers.groups import GROUPS
from headrace.errors import ConfigError
from headrace.settings import PROJECT_ROOT, Settings, load_settings
from tests.unit.test_cli import run

COMPOSE = PROJECT_ROOT / "compose"
IMAGE_SETTINGS = COMPOSE / "headrace.toml"


@pytest.fixture
def image(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The image's settings as a container reads them: its file, no HEADRACE_* of ours."""
    for name in [n for n in os.environ if n.startswith("HEADRACE_")]:
        monkeypatch.delenv(name)
    return load_settings(IMAGE_SETTINGS)


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((COMPOSE / "headrace.yml").read_text())
    return data["services"]


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    return data["services"]


def test_every_group_is_a_service_running_consume_group(services: dict[str, Any]) -> None:
    assert set(services) == set(GROUPS)
    for name, service in services.items():
        assert service["command"] == ["consume", name]
        assert service["build"] == {"context": "..", "dockerfile": "compose/Dockerfile"}
        assert service["stop_signal"] == "SIGTERM"
        assert any(v.endswith(":/var/lib/headrace") for v in service["volumes"])


@pytest.mark.parametrize("name", sorted(GROUPS))
def test_each_service_command_is_one_the_cli_knows(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["consume", name, "--help"], capsys)
    assert code == 0, err
    assert "Usage: headrace consume" in out


def test_the_health_check_asks_the_port_the_image_serves(
    services: dict[str, Any], image: Settings
) -> None:
    settings = image
    port = settings.consumer.metrics_port
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    assert f"EXPOSE {port}" in dockerfile
    assert f"http://127.0.0.1:{port}/healthz" in dockerfile
    for service in services.values():
        assert f"http://127.0.0.1:{port}/healthz" in " ".join(service["healthcheck"]["test"])
    assert settings.consumer.metrics_host == "0.0.0.0"  # noqa: S104 - reached from outside


def test_the_image_is_multi_stage_non_root_and_pinned() -> None:
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", dockerfile, re.M)) == 2
    assert "pip install -c constraints.txt ." in dockerfile  # pinned, not editable
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    assert "COPY compose/headrace.toml /etc/headrace/headrace.toml" in dockerfile
    assert "HEADRACE_CONFIG=/etc/headrace/headrace.toml" in dockerfile
    for package in ("headrace", "producers", "consumers", "schemas", "storage"):
        assert f"COPY {package}/ {package}/" in dockerfile


def paths(settings: Any, prefix: str = "") -> dict[str, Path]:
    found: dict[str, Path] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if hasattr(type(value), "model_fields"):
            found.update(paths(value, f"{prefix}{name}."))
        elif isinstance(value, Path):
            found[f"{prefix}{name}"] = value
    return found


def test_every_path_of_the_image_is_on_its_volume(image: Settings) -> None:
    found = paths(image)
    found.pop("stack.recipes")  # the local stack's recipes: no stack runs in the image
    outside = {k: v for k, v in found.items() if not v.is_relative_to("/var/lib/headrace")}
    assert not outside, f"add these to compose/headrace.toml: {outside}"


def test_the_image_reaches_the_stack_by_its_service_names(
    stack: dict[str, Any], image: Settings
) -> None:
    settings = image
    kafka = stack["kafka"]["environment"]
    assert f"INTERNAL://{settings.kafka.bootstrap_servers}" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    for service, address in (
        ("registry", settings.registry.url),
        ("minio", settings.object_store.endpoint),
        ("postgres", f"{settings.postgres.host}:{settings.postgres.port}"),
    ):
        assert service in stack and service in address


def unit() -> dict[str, str]:
    text = (PROJECT_ROOT / "docs" / "deploy" / "headrace-consume@.service").read_text()
    found: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), value.strip())
    return found


def test_the_systemd_unit_runs_consume_with_the_instance_as_the_group(
    capsys: pytest.CaptureFixture[str],
) -> None:
    found = unit()
    command = shlex.split(found["ExecStart"])
    assert command[0].endswith("/bin/headrace") and command[1:] == ["consume", "%i"]
    assert found["KillSignal"] == "SIGTERM" and found["Restart"] == "on-failure"
    assert found["User"] != "root"
    for name in GROUPS:
        code, _, err = run([*command[1:-1], name, "--help"], capsys)
        assert code == 0, err


def test_the_env_file_sets_only_known_settings() -> None:
    text = (PROJECT_ROOT / "docs" / "deploy" / "headrace.env").read_text()
    names = re.findall(r"^#?\s*(HEADRACE_[A-Z_]+)=", text, re.M)
    assert names
    for name in names:
        if name == "HEADRACE_CONFIG":
            continue
        section, _, key = name.removeprefix("HEADRACE_").lower().partition("__")
        model = type(getattr(Settings(), section))
        assert key.split("__")[0] in model.model_fields, name


def test_a_metrics_port_in_use_is_one_line_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from consumers import groups  # noqa: PLC0415

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("HEADRACE_CONSUMER__METRICS_HOST", "127.0.0.1")
        monkeypatch.setenv("HEADRACE_CONSUMER__METRICS_PORT", str(port))
        monkeypatch.setattr(groups, "ensure_topics", lambda *_a, **_k: None)  # no broker
        monkeypatch.setattr(groups, "make_admin", lambda *_a, **_k: None)
        monkeypatch.setattr(groups, "await_broker", lambda *_a, **_k: None)
        with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            groups.run_group(load_settings(), "archive")
