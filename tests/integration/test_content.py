"""Content resolution against real MinIO and real git repositories: every strategy
resolves and verifies, an expired presigned URL is signed again, a corrupted cache
entry is refetched, changed bytes in MinIO are a checksum error, two processes keep
the cache's bound, a token for a private remote shows up nowhere, hostile events are
dead-lettered by `consume cache` while it goes on, and after an ingest with all three
strategies `consume cache` leaves every referenced file in the cache."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka.serialization import MessageField, SerializationContext

from headrace.kafka import ensure_topics, make_admin, make_producer
from headrace.settings import (
    KafkaSettings,
    ObjectStoreSettings,
    RegistrySettings,
    Settings,
    load_settings,
)
from schemas.catalog import EventType
from schemas.models import DeadLetter, DeadLetterReason, FileEvent
from schemas.registry import make_registry_client
from schemas.serde import EventDeserializer, EventSerializer
from storage.content.cache import ContentCache
from storage.content.errors import ChecksumMismatch, PayloadMissing
from storage.content.factory import open_resolver
from storage.objects import MinioObjectStore, content_key
from storage.objectstore import open_storage
from tests.gitserver import serving
from tests.integration.topics import read_topic
from tests.unit.test_cli import run


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    kafka: KafkaSettings,
    registry: RegistrySettings,
    object_store: ObjectStoreSettings,
) -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    values = {
        "HEADRACE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "HEADRACE_KAFKA__PARTITIONS": "3",
        "HEADRACE_KAFKA__TOPICS__FILE_EVENTS": f"test.content-{tag}.files",
        "HEADRACE_KAFKA__TOPICS__RUN_EVENTS": f"test.content-{tag}.runs",
        "HEADRACE_KAFKA__TOPICS__DEAD_LETTER": f"test.content-{tag}.dlq",
        "HEADRACE_REGISTRY__URL": registry.url,
        "HEADRACE_OBJECT_STORE__ENDPOINT": object_store.endpoint,
        "HEADRACE_OBJECT_STORE__BUCKET": f"test-content-{tag}",
        "HEADRACE_CONSUMER__GROUP_PREFIX": f"test-{tag}.",
        "HEADRACE_CONSUMER__METRICS_PORT": "0",
        "HEADRACE_CACHE__DIR": str(tmp_path / "content-cache"),
        "HEADRACE_CACHE__STREAM_THRESHOLD": "4096",
        "HEADRACE_GIT__CACHE_DIR": str(tmp_path / "git-cache"),
        "HEADRACE_GIT__ALLOWED_SCHEMES": '["https", "http", "file"]',
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


_OPEN: list[MinioObjectStore] = []


def store(settings: Settings) -> MinioObjectStore:
    objects = MinioObjectStore(settings.object_store)
    objects.ensure_bucket()
    _OPEN.append(objects)
    return objects


@pytest.fixture(autouse=True)
def _close_stores() -> Iterator[None]:
    """Every store a test made is closed after it (no socket left to the garbage collector)."""
    yield
    while _OPEN:
        _OPEN.pop().close()


def object_event(objects: MinioObjectStore, data: bytes, path: str, **ref: Any) -> FileEvent:
    stored = objects.put_bytes(data, sha(data))
    url, expires = objects.presign(stored.key)
    fields = {"bucket": stored.bucket, "key": stored.key, "url": url, "expires_at": expires}
    fields.update(ref)
    return FileEvent.model_validate(
        {
            "project": "p",
            "path": path,
            "size": len(data),
            "checksum": sha(data),
            "content_strategy": "OBJECT_STORAGE",
            "object_ref": fields,
            "event_time": datetime.now(UTC),
        }
    )


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def make_repo(root: Path, files: dict[str, bytes]) -> tuple[Path, str]:
    root.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=root)
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    git("add", "-A", cwd=root)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init", cwd=root)
    return root, git("rev-parse", "HEAD", cwd=root)


def git_event(
    url: str, commit: str, path: str, data: bytes, event_path: str | None = None
) -> FileEvent:
    """``event_path``: the event's own path when it is not the path in the commit."""
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's id
    return FileEvent.model_validate(
        {
            "project": "p",
            "path": event_path or path,
            "size": len(data),
            "checksum": sha(data),
            "content_strategy": "GIT_REFERENCE",
            "git_ref": {"url": url, "commit": commit, "path": path, "blob_id": blob},
            "event_time": datetime.now(UTC),
        }
    )


def test_each_strategy_resolves_and_verifies(env: dict[str, str], tmp_path: Path) -> None:
    settings = load_settings()
    objects = store(settings)
    small, large = b"inline bytes", os.urandom(100_000)
    repo, commit = make_repo(tmp_path / "repo", {"docs/readme.md": b"# readme\n"})
    inline = FileEvent.model_validate(
        {"project": "p", "path": "a.txt", "size": len(small), "checksum": sha(small),
         "content_strategy": "INLINE", "inline": {"data": small, "encoding": "UTF_8"}}
    )  # fmt: skip
    events = [
        inline,
        object_event(objects, large, "large.bin"),
        git_event(repo.as_uri(), commit, "docs/readme.md", b"# readme\n"),
    ]
    resolver = open_resolver(settings)
    try:
        first = [resolver.resolve(e) for e in events]
        assert [r.read_bytes() for r in first] == [small, large, b"# readme\n"]
        assert [r.source for r in first] == ["inline", "fetched", "fetched"]
        assert first[1].file is not None  # above the stream threshold: a verified file
        again = [resolver.resolve(e).source for e in events]
        assert again == ["inline", "cache", "cache"]
    finally:
        resolver.close()


def test_an_expired_presigned_url_is_signed_again(env: dict[str, str]) -> None:
    settings = load_settings()
    objects = store(settings)
    data = os.urandom(2048)
    stored = objects.put_bytes(data, sha(data))
    url, _ = objects.presign(stored.key, timedelta(seconds=1))
    deadline = time.monotonic() + 15
    while httpx.get(url).status_code != 403:  # wait until MinIO itself refuses it
        assert time.monotonic() < deadline, "the presigned URL never expired"
        time.sleep(0.2)
    # The event claims the URL is still good: only the store's answer says it is not.
    later = datetime.now(UTC) + timedelta(hours=1)
    event = object_event(objects, data, "x.bin", url=url, expires_at=later)
    resolver = open_resolver(settings, cache=False)
    try:
        assert resolver.resolve(event).read_bytes() == data
    finally:
        resolver.close()
    anonymous = settings.model_copy(
        update={"object_store": settings.object_store.model_copy(update={"access_key": ""})}
    )
    resolver = open_resolver(anonymous, cache=False)
    try:
        with pytest.raises(PayloadMissing, match="no object-store credentials"):
            resolver.resolve(event)
    finally:
        resolver.close()


def test_a_corrupted_cache_entry_is_detected_and_fetched_again(env: dict[str, str]) -> None:
    settings = load_settings()
    data = os.urandom(3000)
    event = object_event(store(settings), data, "c.bin")
    resolver = open_resolver(settings)
    try:
        assert resolver.resolve(event).source == "fetched"
        entry = resolver.cache.path_of(sha(data)) if resolver.cache else None
        assert entry is not None and entry.exists()
        entry.write_bytes(b"\0" * len(data))
        healed = resolver.resolve(event)
        assert (healed.source, healed.read_bytes()) == ("fetched", data)
        assert resolver.cache is not None and resolver.cache.stats().total.corrupt == 1
        assert entry.read_bytes() == data
    finally:
        resolver.close()


def test_bytes_changed_in_minio_are_a_checksum_error_not_wrong_data(env: dict[str, str]) -> None:
    settings = load_settings()
    objects = store(settings)
    data = os.urandom(5000)
    event = object_event(objects, data, "changed.bin")
    tampered = bytes(reversed(data))  # same size, other bytes, under the same key
    bucket = open_storage(settings.object_store)
    bucket.put(content_key(sha(data)), tampered, sha256=sha(tampered))  # a plain PUT replaces
    bucket.close()
    resolver = open_resolver(settings)
    try:
        with pytest.raises(ChecksumMismatch, match="hashing to"):
            resolver.resolve(event)
        assert resolver.cache is not None and not resolver.cache.contains(sha(data), len(data))
    finally:
        resolver.close()


def _fill_from_minio(events: list[str], root: str, bound: int) -> None:
    settings = load_settings().model_copy(
        update={"cache": load_settings().cache.model_copy(update={"dir": Path(root),
                                                                  "max_size": bound})}
    )  # fmt: skip
    resolver = open_resolver(settings)
    for event in events:
        assert resolver.resolve(FileEvent.model_validate_json(event)).file is not None
        assert resolver.cache is not None and resolver.cache.size() <= bound


def test_two_processes_filling_the_cache_keep_it_under_its_bound(
    env: dict[str, str], tmp_path: Path
) -> None:
    settings = load_settings()
    objects = store(settings)
    events = [object_event(objects, os.urandom(10_000), f"f{i}.bin") for i in range(40)]
    bound = 100_000
    ctx = multiprocessing.get_context("spawn")
    halves = [events[0::2] + events[1::4], events[1::2] + events[0::4]]  # some overlap
    procs = [
        ctx.Process(
            target=_fill_from_minio,
            args=([e.model_dump_json() for e in half], str(tmp_path / "shared"), bound),
        )
        for half in halves
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    cache = ContentCache(tmp_path / "shared", bound)
    files = [p for p in (tmp_path / "shared" / "objects").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) == cache.size() <= bound
    assert all(sha(p.read_bytes()) == p.name for p in files)
    assert cache.stats().total.evictions >= 30


def test_a_token_for_a_private_remote_shows_up_nowhere(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    token = "tok-" + uuid.uuid4().hex
    data = b"private content\n"
    repo, commit = make_repo(tmp_path / "work", {"secret.txt": data})
    with serving(repo, tmp_path / "served", token) as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/repo.git"
        credential = {"url_prefix": url, "token": token, "allow_http": True}
        monkeypatch.setenv("HEADRACE_GIT__CREDENTIALS", json.dumps([credential]))
        settings = load_settings()
        resolver = open_resolver(settings)
        try:
            assert resolver.resolve(git_event(url, commit, "secret.txt", data)).read_bytes() == data
        finally:
            resolver.close()
        assert server.requests, "the private remote was never asked"
    out, err = capfd.readouterr()
    assert token not in out + err
    for folder in (tmp_path / "git-cache", tmp_path / "content-cache"):
        for path in folder.rglob("*"):
            assert token not in str(path)
            if path.is_file():
                assert token.encode() not in path.read_bytes(), path


# --- the cache group ----------------------------------------------------------------


def publish(settings: Settings, events: list[FileEvent]) -> None:
    topic = settings.kafka.topics.file_events
    ensure_topics(make_admin(settings.kafka), [topic], partitions=3, replication_factor=1)
    with make_registry_client(settings.registry) as client:
        serialize = EventSerializer(client, EventType.FILE_EVENT)
        producer = make_producer(settings.kafka)
        for event in events:
            value = serialize(event, SerializationContext(topic, MessageField.VALUE))
            producer.produce(topic, key=f"{event.project}/{event.path}".encode(), value=value)
        assert producer.flush(30) == 0


def dead_letters(settings: Settings) -> list[DeadLetter]:
    with make_registry_client(settings.registry) as client:
        decode = EventDeserializer(client, DeadLetter)
        return read_topic(
            settings.kafka.model_copy(
                update={"topics": settings.kafka.topics.model_copy(update={"dead_letter": "x"})}
            ),
            settings.kafka.topics.dead_letter,
            lambda m: decode(m.value()),
        )


def test_hostile_events_are_dead_lettered_with_their_reason_and_the_group_goes_on(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings()
    objects = store(settings)
    good = object_event(objects, os.urandom(1000), "good.bin")
    repo, commit = make_repo(tmp_path / "repo", {"ok.txt": b"ok\n"})
    pwned = tmp_path / "pwned"

    def hostile_url(url: str, path: str) -> FileEvent:
        return object_event(objects, os.urandom(100), path, url=url)

    hostile = [
        hostile_url("http://169.254.169.254/latest/meta-data/", "metadata.bin"),
        hostile_url("http://127.0.0.1:1/headrace/x", "internal.bin"),
        git_event(f"ext::sh -c touch% {pwned}", commit, "ok.txt", b"ok\n"),
        git_event("ssh://127.0.0.1/r.git", commit, "ok.txt", b"ok\n"),  # ssh: not allowed here
        git_event(repo.as_uri(), f"--upload-pack=touch {pwned}", "ok.txt", b"ok\n"),
        # A git path that leaves the tree, under an event path that does not (one that
        # does is an invalid event, tests/integration/test_hostile_events.py).
        git_event(repo.as_uri(), commit, "../../etc/passwd", b"ok\n", event_path="a.txt"),
        git_event(repo.as_uri(), commit, "/etc/passwd", b"ok\n", event_path="b.txt"),
    ]
    too_big = object_event(objects, os.urandom(100), "big.bin").model_copy(update={"size": 10**13})
    publish(settings, [hostile[0], good, *hostile[1:], too_big])
    code, out, err = run(["consume", "cache", "--until-caught-up"], capsys)
    assert code == 0, err
    assert "1 records written, 8 dead-lettered" in out
    letters = dead_letters(settings)
    assert {letter.reason for letter in letters} == {DeadLetterReason.REFUSED}
    errors = " | ".join(sorted(letter.error for letter in letters))
    for why in ("not a configured object-store endpoint", "transport helper", "scheme",
                "looks like an option", "escapes the tree", "absolute",
                "above the maximum"):  # fmt: skip
        assert why in errors, errors
    assert not pwned.exists()
    assert ContentCache(Path(env["HEADRACE_CACHE__DIR"]), 1 << 30).contains(good.checksum, 1000)


def test_consume_cache_after_an_ingest_with_all_three_strategies_caches_every_reference(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {f"small{i}.txt": f"small {i}\n".encode() for i in range(5)}
    files.update({f"big{i}.bin": os.urandom(20_000 + i) for i in range(4)})
    repo, _ = make_repo(tmp_path / "project", files)
    for args in (
        ["--project", "p1", "--inline-limit", "1024"],  # inline and object storage
        ["--project", "p2", "--content-strategy", "git_reference"],
    ):
        code, _, err = run(["ingest", str(repo), *args], capsys)
        assert code == 0, err
    code, out, err = run(["consume", "cache", "--until-caught-up"], capsys)
    assert code == 0, err
    assert "0 dead-lettered" in out
    cache = ContentCache(Path(env["HEADRACE_CACHE__DIR"]), 1 << 30)
    for name, data in files.items():
        if name.startswith("big"):  # above the inline limit: an object in p1
            assert cache.contains(sha(data), len(data)), name
        assert cache.contains(sha(data), len(data)), f"{name} (git reference in p2)"
    code, out, _ = run(["cache", "stats", "--json"], capsys)
    stats = json.loads(out)
    assert code == 0
    assert stats["entries"] == len({sha(d) for d in files.values()})  # each content once
    assert stats["bytes"] == sum(len(d) for d in files.values())
    assert set(stats["by_strategy"]) == {"OBJECT_STORAGE", "GIT_REFERENCE"}


def test_cache_warm_fills_the_cache_from_the_database_or_the_archive(
    env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = {f"big{i}.bin": os.urandom(5_000 + i) for i in range(3)}
    files["small.txt"] = b"small\n"
    repo, _ = make_repo(tmp_path / "project", files)
    monkeypatch.setenv("HEADRACE_LOAD__SQLITE_PATH", str(tmp_path / "load.sqlite3"))
    monkeypatch.setenv("HEADRACE_ARCHIVE__ROOT", str(tmp_path / "archive"))
    for argv in (
        ["ingest", str(repo), "--project", "p1", "--inline-limit", "1024"],
        ["ingest", str(repo), "--project", "p2", "--content-strategy", "git_reference"],
        ["consume", "load", "--until-caught-up"],
        ["consume", "archive", "--until-caught-up"],
    ):
        code, _, err = run(argv, capsys)
        assert code == 0, err
    code, out, err = run(["cache", "warm", "--project", "p1"], capsys)
    assert code == 0, err
    assert "p1: 3 files, 0 already cached, 3 fetched, 0 failed" in out  # the small one: inline
    code, out, _ = run(["cache", "warm", "--project", "p1"], capsys)
    assert "3 files, 3 already cached, 0 fetched" in out
    monkeypatch.setenv("HEADRACE_CACHE__DIR", str(tmp_path / "second-cache"))
    code, out, err = run(["cache", "warm", "--project", "p2", "--from", "archive"], capsys)
    assert code == 0, err
    assert "p2: 4 files, 0 already cached, 4 fetched, 0 failed" in out
    cache = ContentCache(tmp_path / "second-cache", 1 << 30)
    assert all(cache.contains(sha(data), len(data)) for data in files.values())
