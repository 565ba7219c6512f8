"""The stack's failures are one clear line naming the cause."""

import os
import stat
import time
from pathlib import Path

import pytest

from headrace.errors import StackError
from headrace.settings import Settings, StackSettings
from headrace.stack import java
from headrace.stack.kafka import Kafka, new_cluster_id
from headrace.stack.process import pid_alive, read_pid, spawn, stop_group, wait_until


def fake_tool(directory: Path, name: str, script: str) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_missing_java_names_the_cause(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    old = fake_tool(tmp_path, "java", "echo 'openjdk version \"11.0.2\" 2019-01-15' >&2\n")
    monkeypatch.setattr(java, "candidates", lambda _home: [old])
    with pytest.raises(StackError) as info:
        java.find_java("registry", 21)
    message = str(info.value)
    assert message.startswith("registry: needs Java 21 or newer; found Java 11 at ")
    assert "HEADRACE_STACK__JAVA_HOME" in message and "\n" not in message


def test_no_java_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(java, "candidates", lambda _home: [])
    with pytest.raises(StackError, match="needs Java 17 or newer; no Java is installed"):
        java.find_java("kafka", 17)


def test_java_versions_are_parsed(tmp_path: Path) -> None:
    legacy = fake_tool(tmp_path, "java8", "echo 'java version \"1.8.0_392\"' >&2\n")
    modern = fake_tool(tmp_path, "java25", "echo 'openjdk version \"25.0.3\" 2026-04-21' >&2\n")
    assert java.java_major(legacy) == 8
    assert java.java_major(modern) == 25


def test_failed_download_names_what_failed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_tool(
        tmp_path,
        "mvn",
        'echo "[INFO] Scanning"\n'
        'echo "[ERROR] Could not resolve dependencies: '
        'org.apache.kafka:kafka_2.13:jar:9.9.9 was not found"\nexit 1\n',
    )
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    settings = Settings.model_construct(
        stack=StackSettings(home=tmp_path / "state", kafka_version="9.9.9")
    )
    with pytest.raises(StackError) as info:
        Kafka(settings).install()
    assert str(info.value) == (
        "kafka: downloading Kafka 9.9.9 from Maven Central failed: [ERROR] Could not resolve "
        "dependencies: org.apache.kafka:kafka_2.13:jar:9.9.9 was not found"
    )
    assert not Kafka(settings).installed()


def test_spawned_service_is_stopped_with_its_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "svc.pid"
    # A parent that starts a child: both must be gone after stop_group.
    pid = spawn(
        "svc",
        ["sh", "-c", "sleep 60 & echo $! > child; wait"],
        pidfile=pidfile,
        logfile=tmp_path / "svc.log",
        cwd=tmp_path,
    )
    wait_until("svc", lambda: (tmp_path / "child").exists(), timeout_s=10)
    child = int((tmp_path / "child").read_text())
    assert read_pid(pidfile) == pid and pid_alive(child)
    stop_group(pid, grace_s=5)
    deadline = time.monotonic() + 5
    while pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid) and not pid_alive(child)
    assert read_pid(pidfile) is None


def test_a_service_that_dies_while_starting_fails_fast(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    pid = spawn(
        "svc",
        ["sh", "-c", "echo 'fatal: bad config'; exit 1"],
        pidfile=tmp_path / "svc.pid",
        logfile=log,
    )
    started = time.monotonic()
    with pytest.raises(
        StackError, match=r"^svc: exited while starting: fatal: bad config \(log: .*svc\.log\)$"
    ):
        wait_until("svc", lambda: False, timeout_s=30, pid=pid, logfile=log)
    assert time.monotonic() - started < 10


def test_a_service_that_never_answers_times_out(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="svc: did not become ready within 1s"):
        wait_until("svc", lambda: False, timeout_s=1, interval_s=0.1)


def test_a_pid_file_naming_a_reused_pid_is_stale(tmp_path: Path) -> None:
    pidfile = tmp_path / "svc.pid"
    # Our own pid is alive, but it did not start at the recorded time.
    pidfile.write_text(f"{os.getpid()} 1\n")
    assert read_pid(pidfile) is None
    pidfile.write_text(f"{os.getpid()}\n")
    assert read_pid(pidfile) == os.getpid()


def test_postgres_pid_file_is_read_by_its_first_line(tmp_path: Path) -> None:
    postmaster = tmp_path / "postmaster.pid"
    postmaster.write_text(f"{os.getpid()}\n/var/lib/data\n1700000000\n15432\n")
    assert read_pid(postmaster) == os.getpid()


def test_postgres_keeps_its_cluster_where_its_user_can_reach(tmp_path: Path) -> None:
    from headrace.stack.postgres import _traversable_by_others

    closed = tmp_path / "closed"
    (closed / "state").mkdir(parents=True)
    closed.chmod(0o700)
    try:
        assert not _traversable_by_others(closed / "state" / "postgres")
    finally:
        closed.chmod(0o755)
    assert _traversable_by_others(Path("/usr/share/not-created-yet"))


def test_a_cluster_id_never_starts_with_a_dash() -> None:
    # 0xf8 and 0xfb encode to a leading '-' in URL-safe base64: the storage
    # tool's parser takes such an id for an option (a CI start failed so)
    draws = [b"\xf8" + bytes(15), b"\xfb" + bytes(15), bytes(16)]
    sizes: list[int] = []

    def token_bytes(n: int) -> bytes:
        sizes.append(n)
        return draws[len(sizes) - 1]

    assert new_cluster_id(token_bytes) == "A" * 22
    assert sizes == [16, 16, 16]
    assert not any(new_cluster_id().startswith("-") for _ in range(2000))
