"""The local stack's Prometheus config, and how processes register for it (file SD)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from consumers.metrics import Metrics
from headrace.discovery import register, stale, sweep, target_address, unregister
from headrace.settings import PROJECT_ROOT, Settings
from headrace.stack.manager import SERVICE_NAMES, Stack
from headrace.stack.prometheus import config_for
from producers.tables.metrics import TableMetrics


def settings_for(tmp_path: Path, interval: float = 5.0) -> Settings:
    return Settings.model_construct().model_copy(
        update={
            "stack": Settings.model_construct().stack.model_copy(
                update={"home": tmp_path / "stack", "prometheus_scrape_interval_s": interval}
            ),
            "metrics": Settings.model_construct().metrics.model_copy(
                update={"targets_dir": tmp_path / "targets"}
            ),
        }
    )


def test_the_config_discovers_the_target_files_of_settings(tmp_path: Path) -> None:
    config = config_for(settings_for(tmp_path, interval=2.5))
    assert config["global"]["scrape_interval"] == "2500ms"
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "headrace" and job["honor_labels"] is True
    (sd,) = job["file_sd_configs"]
    assert sd == {"files": [str(tmp_path / "targets" / "*.json")], "refresh_interval": "2500ms"}
    assert config_for(settings_for(tmp_path))["global"]["scrape_interval"] == "5s"


def test_prometheus_is_a_stack_service_started_last(tmp_path: Path) -> None:
    assert SERVICE_NAMES[-1] == "prometheus"
    service = Stack(settings_for(tmp_path)).services["prometheus"]
    assert service.address == "http://127.0.0.1:9090"
    (port,) = service.ports()
    assert (port.port, port.setting) == (9090, "HEADRACE_STACK__PROMETHEUS_PORT")
    assert service.home == tmp_path / "stack" / "prometheus"


def test_the_written_config_is_the_generated_one_and_stale_targets_go(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    targets = settings.metrics.targets_dir
    targets.mkdir(parents=True)
    dead = targets / f"{socket.gethostname()}-{_dead_pid()}-1-1.json"
    dead.write_text("[]")
    service = Stack(settings).services["prometheus"]
    written = service.write_config()  # type: ignore[attr-defined]
    assert yaml.safe_load(written.read_text()) == config_for(settings)
    assert not dead.exists()


def test_the_compose_prometheus_scrapes_the_same_target_files() -> None:
    compose = yaml.safe_load((PROJECT_ROOT / "compose" / "docker-compose.yml").read_text())
    config = yaml.safe_load(
        (PROJECT_ROOT / "compose" / "prometheus" / "prometheus.yml").read_text()
    )
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "headrace"]
    (sd,) = job["file_sd_configs"]
    (pattern,) = sd["files"]
    mounts = {
        volume.split(":")[1]: volume.split(":")[0]
        for volume in compose["services"]["prometheus"]["volumes"]
    }
    folder = str(Path(pattern).parent)
    assert folder in mounts and Path(pattern).name == "*.json"
    default = Settings.model_construct().metrics.targets_dir
    compose_dir = PROJECT_ROOT / "compose"
    assert (compose_dir / mounts[folder]).resolve() == default.resolve()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])  # noqa: S603 - fixed argv
    child.wait()
    return child.pid


def test_a_registration_is_one_whole_json_file_with_pid_and_host(tmp_path: Path) -> None:
    path = register(tmp_path, "127.0.0.1:9400", {"component": "consumer", "group": "g"})
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no partial file left
    (entry,) = json.loads(path.read_text())
    assert entry["targets"] == ["127.0.0.1:9400"]
    assert entry["labels"] == {
        "component": "consumer",
        "group": "g",
        "pid": str(os.getpid()),
        "host": socket.gethostname(),
    }
    assert not stale(path)
    unregister(path)
    unregister(path)  # twice: nothing to do
    assert list(tmp_path.iterdir()) == []


def test_a_dead_process_file_is_swept_other_hosts_files_are_not(tmp_path: Path) -> None:
    host = socket.gethostname()
    dead = tmp_path / f"{host}-{_dead_pid()}-123-1.json"
    reused = tmp_path / f"{host}-{os.getpid()}-1-1.json"  # this pid, another start time
    elsewhere = tmp_path / "another-host-1-1-1.json"
    for path in (dead, reused, elsewhere):
        path.write_text("[]")
    assert stale(dead) and stale(reused) and not stale(elsewhere)
    assert sorted(sweep(tmp_path)) == sorted([dead, reused])
    live = register(tmp_path, "127.0.0.1:2", {})  # a registration sweeps too
    assert sorted(tmp_path.glob("*.json")) == sorted([elsewhere, live])


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("0.0.0.0", "127.0.0.1:9"),  # noqa: S104 - a value compared, never bound
        ("", "127.0.0.1:9"),
        ("10.0.0.5", "10.0.0.5:9"),
        ("::1", "[::1]:9"),
    ],
)
def test_target_addresses(host: str, expected: str) -> None:
    assert target_address(host, 9) == expected


def test_a_group_registers_while_it_serves(tmp_path: Path) -> None:
    metrics = Metrics("headrace.archive", targets_dir=tmp_path)
    port = metrics.serve("127.0.0.1", 0)
    try:
        (path,) = tmp_path.glob("*.json")
        (entry,) = json.loads(path.read_text())
        assert entry["targets"] == [f"127.0.0.1:{port}"]
        assert entry["labels"]["group"] == "headrace.archive"
        body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert "process_cpu_seconds_total" in body and "python_info" in body
    finally:
        metrics.close()
    assert list(tmp_path.glob("*.json")) == []


def test_a_group_without_a_targets_dir_registers_nowhere(tmp_path: Path) -> None:
    metrics = Metrics("g")
    metrics.serve("127.0.0.1", 0)
    metrics.close()
    assert metrics.targets_dir is None


def test_archive_table_registers_while_it_serves(tmp_path: Path) -> None:
    metrics = TableMetrics("src", "public.t", targets_dir=tmp_path)
    metrics.serve("127.0.0.1", 0)
    try:
        (path,) = tmp_path.glob("*.json")
        (entry,) = json.loads(path.read_text())
        labels = entry["labels"]
        assert (labels["component"], labels["source"], labels["table"]) == (
            "archive-table",
            "src",
            "public.t",
        )
    finally:
        metrics.close()
    assert list(tmp_path.glob("*.json")) == []


def test_prometheus_installs_debians_package_without_recommends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import headrace.stack.process as process

    calls: list[list[str]] = []
    monkeypatch.setattr(process.shutil, "which", lambda _tool: "/usr/bin/apt-get")
    monkeypatch.setattr(process.os, "geteuid", lambda: 0)
    monkeypatch.setattr(process, "run_tool", lambda _s, argv, **_kw: calls.append(list(argv)))
    Stack(settings_for(tmp_path)).services["prometheus"].install()
    wait = ["-o", "DPkg::Lock::Timeout=300"]
    assert calls == [
        ["/usr/bin/apt-get", *wait, "update", "-q"],
        ["/usr/bin/apt-get", *wait, "install", "-y", "-q", "--no-install-recommends", "prometheus"],
    ]


def test_without_root_the_install_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import headrace.stack.process as process
    from headrace.errors import StackError

    monkeypatch.setattr(process.os, "geteuid", lambda: 1000)
    with pytest.raises(StackError, match="install Debian's 'prometheus' package"):
        Stack(settings_for(tmp_path)).services["prometheus"].install()


def test_two_servers_of_one_process_have_a_file_each(tmp_path: Path) -> None:
    first = register(tmp_path, "127.0.0.1:1", {"n": "1"})
    second = register(tmp_path, "127.0.0.1:2", {"n": "2"})
    assert first != second and not stale(first) and not stale(second)
    unregister(first)
    assert list(tmp_path.glob("*.json")) == [second]


def test_the_compose_prometheus_finds_every_group_service_of_the_image() -> None:
    import tomllib

    config = yaml.safe_load(
        (PROJECT_ROOT / "compose" / "prometheus" / "prometheus.yml").read_text()
    )
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "headrace-groups"]
    (dns,) = job["dns_sd_configs"]
    groups = yaml.safe_load((PROJECT_ROOT / "compose" / "headrace.yml").read_text())["services"]
    image = tomllib.loads((PROJECT_ROOT / "compose" / "headrace.toml").read_text())
    assert sorted(dns["names"]) == sorted(groups)
    assert dns["port"] == image["consumer"]["metrics_port"]
