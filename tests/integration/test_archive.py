"""The archive group against real Kafka: each event archived exactly once after a
clean run, a SIGKILL mid-segment, and a rebalance between two processes; an idle
partition's open segment closes on time."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from confluent_kafka.serialization import MessageField, SerializationContext

from headrace.kafka import ensure_topics, make_admin, make_producer
from headrace.settings import KafkaSettings, ObjectStoreSettings, RegistrySettings
from schemas.catalog import EventType
from schemas.models import FileEvent
from schemas.registry import make_registry_client
from schemas.serde import EventSerializer
from storage.archive import ObjectBackend, read, verify
from storage.objectstore import open_storage
from tests.unit.test_cli import run


@pytest.fixture
def env(
    tmp_path: Path,
    kafka: KafkaSettings,
    registry: RegistrySettings,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    values = {
        "HEADRACE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "HEADRACE_KAFKA__PARTITIONS": "3",
        "HEADRACE_KAFKA__TOPICS__FILE_EVENTS": f"test.arch-{tag}.files",
        "HEADRACE_KAFKA__TOPICS__RUN_EVENTS": f"test.arch-{tag}.runs",
        "HEADRACE_KAFKA__TOPICS__VERIFICATIONS": f"test.arch-{tag}.verifications",
        "HEADRACE_KAFKA__TOPICS__DEAD_LETTER": f"test.arch-{tag}.dlq",
        "HEADRACE_REGISTRY__URL": registry.url,
        "HEADRACE_CONSUMER__GROUP_PREFIX": f"test-{tag}.",
        "HEADRACE_CONSUMER__METRICS_PORT": "0",
        "HEADRACE_ARCHIVE__ROOT": str(tmp_path / "archive"),
        "HEADRACE_ARCHIVE__MAX_SEGMENT_RECORDS": "50",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    settings = kafka.model_copy(update={"partitions": 3})
    ensure_topics(
        make_admin(settings),
        [values["HEADRACE_KAFKA__TOPICS__FILE_EVENTS"]],
        partitions=3,
        replication_factor=1,
    )
    return values


def publish(
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    start: int,
    count: int,
    *,
    prefix: str = "f",
    event_time: datetime | None = None,
) -> None:
    topic = env["HEADRACE_KAFKA__TOPICS__FILE_EVENTS"]
    with make_registry_client(registry) as client:
        serialize = EventSerializer(client, EventType.FILE_EVENT)
        ctx = SerializationContext(topic, MessageField.VALUE)
        producer = make_producer(kafka)
        for i in range(start, start + count):
            event = FileEvent(
                project="p",
                path=f"{prefix}{i:05d}.txt",
                size=i,
                checksum=f"{i:064x}",
                event_time=event_time,
            )
            producer.produce(topic, key=f"p/{event.path}".encode(), value=serialize(event, ctx))
            producer.poll(0)
        assert producer.flush(30) == 0


def archived(env: dict[str, str]) -> Counter[str]:
    root = Path(env["HEADRACE_ARCHIVE__ROOT"])
    return Counter(line.event["path"] for line in read(root))


def consumer_process(env: dict[str, str], *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "headrace", "consume", "archive", *extra],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.1)


def manifests(env: dict[str, str]) -> list[Path]:
    return list(Path(env["HEADRACE_ARCHIVE__ROOT"]).rglob("_manifest.json"))


def group_members(kafka: KafkaSettings, env: dict[str, str]) -> int:
    group = env["HEADRACE_CONSUMER__GROUP_PREFIX"] + "archive"
    admin = make_admin(kafka)  # kept alive until the answer arrives
    description = admin.describe_consumer_groups([group], request_timeout=10)[group]
    return len(description.result(timeout=10).members)


def drain(capsys: pytest.CaptureFixture[str], processes: int = 1) -> str:
    argv = ["consume", "archive", "--until-caught-up", "--processes", str(processes)]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    return out


def expected(n: int) -> Counter[str]:
    return Counter(f"f{i:05d}.txt" for i in range(n))


@pytest.mark.parametrize("processes", [1, 2])
def test_clean_run_archives_each_event_once(
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    capsys: pytest.CaptureFixture[str],
    processes: int,
) -> None:
    publish(env, kafka, registry, 0, 400)
    assert "400 records written" in drain(capsys, processes)
    assert archived(env) == expected(400)
    assert verify(Path(env["HEADRACE_ARCHIVE__ROOT"])) == []
    # A second run finds its place in the archive's own manifests: nothing twice.
    assert "0 records written" in drain(capsys, processes)
    assert archived(env) == expected(400)


@pytest.mark.parametrize("processes", [1, 2])
def test_sigkill_mid_segment_then_restart_archives_each_event_once(
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    capsys: pytest.CaptureFixture[str],
    processes: int,
) -> None:
    publish(env, kafka, registry, 0, 3000)
    proc = consumer_process(env)
    try:
        wait_for(lambda: bool(manifests(env)), 60, "a first published segment")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    drain(capsys, processes)  # the restart: one process, or two
    assert archived(env) == expected(3000)
    assert verify(Path(env["HEADRACE_ARCHIVE__ROOT"])) == []


def test_rebalance_between_two_processes_archives_each_event_once(
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    publish(env, kafka, registry, 0, 1000)
    first = consumer_process(env)
    second = None
    try:
        wait_for(lambda: bool(manifests(env)), 60, "the first process archiving")
        second = consumer_process(env)  # joins the group: partitions move
        wait_for(lambda: group_members(kafka, env) == 2, 60, "the second process to join")
        publish(env, kafka, registry, 1000, 1000)
        wait_for(lambda: sum(archived(env).values()) >= 1500, 90, "both processes archiving")
    finally:
        for proc in (first, second):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
        for proc in (first, second):
            if proc is not None:
                _, err = proc.communicate(timeout=60)
                assert proc.returncode == 0, err.decode()[-2000:]
    drain(capsys)
    assert archived(env) == expected(2000)
    assert verify(Path(env["HEADRACE_ARCHIVE__ROOT"])) == []


def test_an_idle_partitions_segment_closes_on_time_and_health_answers(
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    idle = {
        **env,
        "HEADRACE_ARCHIVE__MAX_SEGMENT_AGE_S": "2",
        "HEADRACE_ARCHIVE__MAX_SEGMENT_RECORDS": "100000",
        "HEADRACE_CONSUMER__METRICS_PORT": str(port),
    }
    publish(env, kafka, registry, 0, 30)  # far fewer than a segment holds
    proc = consumer_process(idle)
    try:
        wait_for(lambda: _get(port, "/healthz") == 200, 60, "the health endpoint")
        started = time.monotonic()
        wait_for(lambda: sum(archived(env).values()) == 30, 30, "the idle segment to close")
        assert time.monotonic() - started < 15
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'headrace_records_processed_total{group="' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert archived(env) == expected(30)


def _get(port: int, path: str) -> int:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code
    except httpx.HTTPError:
        return 0


def test_archive_read_and_verify_commands(
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    publish(env, kafka, registry, 0, 120)
    drain(capsys)
    code, out, _ = run(["archive", "verify", "--all"], capsys)
    assert code == 0 and "OK: the archive at " in out
    code, out, _ = run(["archive", "verify", "--json"], capsys)
    clean = json.loads(out)
    assert (code, clean["ok"], clean["discrepancies"]) == (0, True, [])
    assert clean["counts"][env["HEADRACE_KAFKA__TOPICS__FILE_EVENTS"]]["records"] == 120
    code, out, _ = run(["archive", "read", "--project", "p", "--path", "f001*.txt"], capsys)
    assert code == 0
    paths = sorted(json.loads(line)["event"]["path"] for line in out.splitlines())
    assert paths == [f"f{i:05d}.txt" for i in range(100, 120)]

    segment = next(Path(env["HEADRACE_ARCHIVE__ROOT"]).rglob("*.jsonl.zst"))
    segment.write_bytes(segment.read_bytes()[:-7])  # truncate a published segment
    code, out, err = run(["archive", "verify"], capsys)
    assert code == 1
    assert "decompression_error" in out or "manifest_mismatch" in out
    assert out.strip().splitlines()[-1].startswith("FAILED: 2 discrepancies")
    # ... in the shape `verify run` reports in: kind, side, path, detail
    code, out, err = run(["archive", "verify", "--json"], capsys)
    found = json.loads(out)
    assert code == 1 and not found["ok"] and sum(found["discrepancies_by_kind"].values()) == 2
    assert {d["side"] for d in found["discrepancies"]} == {"archive"}
    assert {d["path"] for d in found["discrepancies"]} == {str(segment)}


def test_status_reports_lag_commit_time_and_dead_letters(
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    publish(env, kafka, registry, 0, 60)
    from confluent_kafka import Producer

    poison = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    poison.produce(env["HEADRACE_KAFKA__TOPICS__FILE_EVENTS"], key=b"p/x", value=b"not avro")
    assert poison.flush(10) == 0
    drain(capsys)
    publish(env, kafka, registry, 60, 9)  # lag: 9 records not yet archived
    code, out, err = run(["status", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)[env["HEADRACE_CONSUMER__GROUP_PREFIX"] + "archive"]
    assert report["dead_letters"] == 1
    files = [
        p for p in report["partitions"] if p["topic"] == env["HEADRACE_KAFKA__TOPICS__FILE_EVENTS"]
    ]
    assert sum(p["lag"] for p in files) == 9
    assert all(p["committed_at"] for p in files if p["committed"])


def test_retention_moves_old_days_to_the_cold_tier_and_reading_goes_on(
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    object_store: ObjectStoreSettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HEADRACE_OBJECT_STORE__ENDPOINT", object_store.endpoint)
    monkeypatch.setenv("HEADRACE_ARCHIVE__COLD_BUCKET", f"test-cold-{uuid.uuid4().hex[:10]}")
    topic = env["HEADRACE_KAFKA__TOPICS__FILE_EVENTS"]
    old = datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    publish(env, kafka, registry, 0, 40, prefix="old", event_time=old)
    publish(env, kafka, registry, 0, 10)  # today's events stay hot
    drain(capsys)
    root = Path(env["HEADRACE_ARCHIVE__ROOT"])
    before = sorted((line.topic, line.partition, line.offset) for line in read(root))

    code, out, err = run(["archive", "retain", "--older-than", "30"], capsys)
    assert code == 0, err
    assert out.strip() == "moved 1 days to the cold tier: 2020-01-02"
    assert not list((root / topic / "dt=2020-01-02").glob("*.jsonl.zst"))  # moved, verified
    code, out, err = run(["archive", "read"], capsys)
    assert code == 0, err
    after = sorted(
        (json.loads(x)["topic"], json.loads(x)["partition"], json.loads(x)["offset"])
        for x in out.splitlines()
    )
    assert after == before and len(after) == 50
    code, out, _ = run(["archive", "verify"], capsys)
    assert code == 0 and "OK: the archive at " in out
    code, out, _ = run(["archive", "retain", "--older-than", "30"], capsys)
    assert out.strip() == "moved 0 days to the cold tier"


def test_recent_days_stay_plain_and_old_days_get_compressed(
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HEADRACE_ARCHIVE__PLAIN_DAYS", "7")
    topic = env["HEADRACE_KAFKA__TOPICS__FILE_EVENTS"]
    publish(env, kafka, registry, 0, 30, prefix="old", event_time=datetime(2021, 6, 1, tzinfo=UTC))
    publish(env, kafka, registry, 0, 10)
    drain(capsys)
    root = Path(env["HEADRACE_ARCHIVE__ROOT"])
    old_day = root / topic / "dt=2021-06-01"
    assert list(old_day.glob("*.jsonl")) and not list(old_day.glob("*.zst"))
    before = sorted((line.partition, line.offset) for line in read(root))

    code, out, err = run(["archive", "compress"], capsys)
    assert code == 0, err
    assert out.strip() == "compressed 1 days: 2021-06-01"
    assert list(old_day.glob("*.jsonl.zst")) and not list(old_day.glob("*.jsonl"))
    assert sorted((line.partition, line.offset) for line in read(root)) == before
    assert verify(root) == []


def test_the_archive_in_object_storage_holds_each_event_once_and_verifies(
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    object_store: ObjectStoreSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """archive.backend = object_store: segments and manifests in a real MinIO bucket, a
    SIGKILL mid-run and a restart on another staging directory (another host) lose and
    repeat nothing; `archive read` and `archive verify` work on the bucket."""
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    values = {
        "HEADRACE_OBJECT_STORE__ENDPOINT": object_store.endpoint,
        "HEADRACE_OBJECT_STORE__ACCESS_KEY": object_store.access_key,
        "HEADRACE_OBJECT_STORE__SECRET_KEY": object_store.secret_key.get_secret_value(),
        "HEADRACE_ARCHIVE__BACKEND": "object_store",
        "HEADRACE_ARCHIVE__BUCKET": "headrace-test-archive",
        "HEADRACE_ARCHIVE__PREFIX": prefix,
        "HEADRACE_ARCHIVE__STAGING": str(tmp_path / "staging-host-a"),
    }
    env.update(values)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    bucket = open_storage(object_store, "headrace-test-archive")
    store = ObjectBackend(bucket, tmp_path / "reader", prefix)
    topic = env["HEADRACE_KAFKA__TOPICS__FILE_EVENTS"]

    def in_bucket() -> Counter[str]:
        return Counter(line.event["path"] for line in read(store))

    publish(env, kafka, registry, 0, 2000)
    proc = consumer_process(env)
    try:
        wait_for(lambda: bool(store.days(topic)), 60, "a first segment in the bucket")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert not Path(env["HEADRACE_ARCHIVE__ROOT"]).exists()  # nothing went to local disk
    monkeypatch.setenv("HEADRACE_ARCHIVE__STAGING", str(tmp_path / "staging-host-b"))
    publish(env, kafka, registry, 2000, 500)
    drain(capsys)
    assert in_bucket() == expected(2500)
    assert verify(store) == []
    code, out, _ = run(["archive", "verify"], capsys)
    assert code == 0 and f"OK: the archive at s3://headrace-test-archive/{prefix}" in out
    code, out, _ = run(["archive", "read", "--path", "f0249*.txt"], capsys)
    assert code == 0
    assert sorted(json.loads(line)["event"]["path"] for line in out.splitlines()) == [
        f"f0249{i}.txt" for i in range(10)
    ]
    code, _, err = run(["archive", "retain", "--older-than", "3"], capsys)
    assert code == 2 and "object storage" in err
