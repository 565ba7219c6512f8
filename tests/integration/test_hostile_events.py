"""Hostile events against every group on the real stack: paths and projects that try
to leave a directory, a NUL, a negative size, an event time in 2100, tombstones and
empty values on every topic a group reads. Each is dead-lettered by each group that
reads it, with the reason that names what is wrong; the good events around them are
archived, loaded, cached and verified; nothing is written outside the configured
directories and no database row holds a hostile name."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.serialization import MessageField, SerializationContext

from consumers.base import Decoded, Sink, SinkCapabilities, TopicPartition
from consumers.dlq import DeadLetterQueue
from consumers.runtime import ConsumerRuntime
from headrace.kafka import ensure_topics, make_admin, make_producer
from headrace.settings import (
    KafkaSettings,
    ObjectStoreSettings,
    RegistrySettings,
    Settings,
    load_settings,
)
from schemas.models import (
    ContentStrategy,
    DeadLetter,
    DeadLetterReason,
    Event,
    FileEvent,
    InlineContent,
    RunEvent,
    RunEventKind,
    TextEncoding,
    VerificationEvent,
    VerificationStatus,
)
from schemas.registry import make_registry_client
from schemas.serde import EventDeserializer, EventSerializer
from storage.archive.reader import read
from storage.content.cache import ContentCache
from storage.objects import MinioObjectStore
from tests.integration.topics import read_topic
from tests.unit.test_cli import run

INVALID, SKEW = DeadLetterReason.INVALID_EVENT, DeadLetterReason.EVENT_TIME_SKEW
UNDECODABLE = DeadLetterReason.DESERIALIZATION


@pytest.fixture
def env(
    tmp_path: Path,
    kafka: KafkaSettings,
    registry: RegistrySettings,
    object_store: ObjectStoreSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:10]
    work = tmp_path / "work"  # every directory a group may write to, and nothing else
    values = {
        "HEADRACE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "HEADRACE_KAFKA__PARTITIONS": "3",
        "HEADRACE_KAFKA__TOPICS__FILE_EVENTS": f"test.hostile-{tag}.files",
        "HEADRACE_KAFKA__TOPICS__RUN_EVENTS": f"test.hostile-{tag}.runs",
        "HEADRACE_KAFKA__TOPICS__VERIFICATIONS": f"test.hostile-{tag}.verifications",
        "HEADRACE_KAFKA__TOPICS__DEAD_LETTER": f"test.hostile-{tag}.dlq",
        "HEADRACE_REGISTRY__URL": registry.url,
        "HEADRACE_OBJECT_STORE__ENDPOINT": object_store.endpoint,
        "HEADRACE_OBJECT_STORE__BUCKET": f"test-hostile-{tag}",
        "HEADRACE_CONSUMER__GROUP_PREFIX": f"test-{tag}.",
        "HEADRACE_CONSUMER__METRICS_PORT": "0",
        "HEADRACE_ARCHIVE__ROOT": str(work / "archive"),
        "HEADRACE_ARCHIVE__STAGING": str(work / "archive-staging"),
        "HEADRACE_LOAD__BACKEND": "sqlite",
        "HEADRACE_LOAD__SQLITE_PATH": str(work / "db" / "load.sqlite3"),
        "HEADRACE_CACHE__DIR": str(work / "content-cache"),
        "HEADRACE_GIT__CACHE_DIR": str(work / "git-cache"),
        "HEADRACE_VERIFY__INSTANCES_DIR": str(work / "instances"),
        "HEADRACE_VERIFY__REPAIRS_DIR": str(work / "repairs"),
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    cwd = tmp_path / "cwd"  # a relative path that escaped would land here
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    topics = [values[f"HEADRACE_KAFKA__TOPICS__{t}"] for t in ("FILE_EVENTS", "RUN_EVENTS")]
    topics.append(values["HEADRACE_KAFKA__TOPICS__VERIFICATIONS"])
    ensure_topics(make_admin(kafka), topics, partitions=3, replication_factor=1)
    yield values


def inline(path: str, text: str, **change: Any) -> FileEvent:
    """An inline event; ``change`` bypasses the model's own checks (a negative size)."""
    data = text.encode()
    fields: dict[str, Any] = {
        "project": "p",
        "path": path,
        "size": len(data),
        "checksum": hashlib.sha256(data).hexdigest(),
        "content_strategy": ContentStrategy.INLINE,
        "inline": InlineContent(data=data, encoding=TextEncoding.UTF_8),
        "event_time": datetime.now(UTC),
        "run_id": "run-h",
    }
    return FileEvent.model_construct(**(FileEvent.model_validate(fields).__dict__ | change))


def stored(objects: MinioObjectStore, path: str, data: bytes) -> FileEvent:
    digest = hashlib.sha256(data).hexdigest()
    ref = objects.put_bytes(data, digest)
    url, expires = objects.presign(ref.key)
    return FileEvent.model_validate(
        {
            "project": "p",
            "path": path,
            "size": len(data),
            "checksum": digest,
            "content_strategy": "OBJECT_STORAGE",
            "object_ref": {"bucket": ref.bucket, "key": ref.key, "url": url, "expires_at": expires},
            "event_time": datetime.now(UTC),
            "run_id": "run-h",
        }
    )


class Publisher:
    """Publishes events and raw values, each with a key of its own to find it again."""

    def __init__(self, settings: Settings, client: SchemaRegistryClient) -> None:
        self.settings = settings
        self.client = client
        self.producer = make_producer(settings.kafka)
        self.plain = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
        self.expected: dict[str, DeadLetterReason | None] = {}  # key -> reason (None: good)

    def event(self, field: str, event: Event, reason: DeadLetterReason | None = None) -> str:
        topic = getattr(self.settings.kafka.topics, field)
        value = EventSerializer(self.client, event.event_type)(
            event, SerializationContext(topic, MessageField.VALUE)
        )
        return self._send(self.producer, topic, value, reason)

    def raw(self, field: str, value: bytes | None) -> str:
        topic = getattr(self.settings.kafka.topics, field)
        return self._send(self.plain, topic, value, UNDECODABLE)

    def _send(
        self, producer: Producer, topic: str, value: bytes | None, reason: DeadLetterReason | None
    ) -> str:
        key = f"k{len(self.expected):03d}"
        producer.produce(topic, key=key.encode(), value=value)
        self.expected[key] = reason
        return key

    def flush(self) -> None:
        assert self.producer.flush(30) == 0 and self.plain.flush(30) == 0


class ModelSink(Sink):
    """A group of one's own that takes models (needs_models): what it is handed."""

    capabilities = SinkCapabilities(durable_on_write=True, needs_models=True)

    def __init__(self) -> None:
        self.paths: list[str] = []
        self._durable: dict[TopicPartition, int] = {}

    def write(self, batch: Sequence[Decoded]) -> None:
        for d in batch:
            assert isinstance(d.event, FileEvent)
            self.paths.append(d.event.path)
            self._durable[(d.record.topic, d.record.partition)] = d.record.offset + 1

    def durable(self) -> dict[TopicPartition, int]:
        return dict(self._durable)


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def test_hostile_events_are_dead_lettered_by_every_group_with_what_is_wrong(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings()
    outside = tmp_path / "outside"
    outside.mkdir()
    objects = MinioObjectStore(settings.object_store)
    objects.ensure_bucket()
    hostile_names = [
        "../../etc/passwd",
        "/abs/path",
        "",
        "x/../../../y.txt",
        f"{outside}/escaped.txt",
        "../" * 40 + str(outside)[1:] + "/relative-escape.txt",
        "a\x00b.txt",
        "\uff0e\uff0e/\uff0e\uff0e/look-alike.txt",
        "x" * 300,
        "a//b",
    ]
    with make_registry_client(settings.registry) as client:
        pub = Publisher(settings, client)
        good = [pub.event("file_events", inline("good/first.txt", "first"))]
        for name in hostile_names:
            pub.event("file_events", inline(name, f"hostile {name!r}"), INVALID)
        pub.event("file_events", inline("src/a.py", "escape", project="../../escape"), INVALID)
        pub.event("file_events", inline("neg.txt", "", size=-1), INVALID)
        future = datetime(2100, 1, 1, tzinfo=UTC)
        pub.event("file_events", inline("good/first.txt", "pinned", event_time=future), SKEW)
        hostile_object = stored(objects, "/abs/object.bin", os.urandom(300))
        pub.event("file_events", hostile_object, INVALID)
        pub.raw("file_events", None)  # a tombstone
        pub.raw("file_events", b"")  # an empty value
        good_object = stored(objects, "good/object.bin", os.urandom(500))
        good.append(pub.event("file_events", good_object))
        soon = datetime.now(UTC) + timedelta(hours=1)  # within the skew: a clock a bit ahead
        good.append(pub.event("file_events", inline("good/soon.txt", "soon", event_time=soon)))
        good.append(pub.event("file_events", inline("good/first.txt", "second")))
        now = datetime.now(UTC)
        started = {
            "run_id": "run-h",
            "kind": RunEventKind.STARTED,
            "source": "/src",
            "event_time": now,
        }
        good.append(pub.event("run_events", RunEvent(project="p", **started)))
        pub.event("run_events", RunEvent(project="../../escape", **started), INVALID)
        pub.event("run_events", RunEvent(project="p", **{**started, "event_time": future}), SKEW)
        pub.raw("run_events", None)
        pub.raw("run_events", b"\x00")
        finding = {
            "event_id": "e",
            "project": "p",
            "status": VerificationStatus.OK,
            "expected_checksum": "0" * 64,
            "expected_size": 1,
            "source_topic": "t",
            "source_partition": 0,
            "source_offset": 0,
            "verifier": "someone",
            "verified_at": now,
        }
        pub.event("verifications", VerificationEvent(path="../../v", **finding), INVALID)
        pub.raw("verifications", None)
        pub.raw("verifications", b"")
        pub.flush()

    reads = {
        "archive": ("files", "runs", "verifications"),
        "load": ("files", "runs"),
        "cache": ("files",),
        "verify": ("files",),
    }
    for group in ("verify", "archive", "load", "cache"):  # verify first: archive its results
        code, out, err = run(["consume", group, "--until-caught-up"], capsys)
        assert code == 0, err

    # A group of one's own that takes models gets the same checks.
    kafka = settings.kafka
    with make_registry_client(settings.registry) as client:
        sink = ModelSink()
        mine = f"{settings.consumer.group_prefix}mine"
        decoders = {kafka.topics.file_events: EventDeserializer(client, FileEvent)}
        dlq = DeadLetterQueue(kafka, client, mine)
        ConsumerRuntime(kafka, mine, decoders, sink, dlq, until_caught_up=True).run()
        reads["mine"] = ("files",)
        decode = EventDeserializer(client, DeadLetter)
        letters = read_topic(kafka, kafka.topics.dead_letter, lambda m: decode(m.value()))
        verification = EventDeserializer(client, VerificationEvent)

        def verified_path(m: Message) -> str | None:
            key, value = m.key(), m.value()
            if key is None or key.decode() in pub.expected or value is None:
                return None  # what this test published itself
            return verification(value).path  # the verify group's

        verified = read_topic(kafka, kafka.topics.verifications, verified_path)

    # Every bad record, once per group that reads its topic, with its reason.
    topic_of = {
        kafka.topics.file_events: "files",
        kafka.topics.run_events: "runs",
        kafka.topics.verifications: "verifications",
    }
    found: dict[str, dict[str, DeadLetterReason]] = defaultdict(dict)
    for letter in letters:
        assert letter.key is not None
        group = letter.group.removeprefix(settings.consumer.group_prefix)
        assert letter.key.decode() not in found[group], f"{group} dead-lettered twice"
        found[group][letter.key.decode()] = letter.reason
    topic_by_key = {}
    for letter in letters:
        assert letter.key is not None
        topic_by_key[letter.key.decode()] = topic_of[letter.topic]
    for group, topics in reads.items():
        wanted = {
            key: reason
            for key, reason in pub.expected.items()
            if reason is not None and topic_by_key.get(key) in topics
        }
        assert found[group] == wanted, group
    every_bad = {k for k, reason in pub.expected.items() if reason is not None}
    assert set(topic_by_key) == every_bad  # each bad record was dead-lettered by some group
    errors = " | ".join(letter.error for letter in letters)
    for why in ("is absolute", "'..' segment", "is empty", "NUL", "look-alikes", "bytes, over"):
        assert why in errors, why

    # The good events were processed by every group; the hostile ones by none.
    db = sqlite3.connect(env["HEADRACE_LOAD__SQLITE_PATH"])
    try:
        rows = db.execute("SELECT project, path, content FROM files").fetchall()
        run_projects = [r[0] for r in db.execute("SELECT project FROM runs")]
    finally:
        db.close()
    assert sorted((p, path) for p, path, _ in rows) == [
        ("p", "good/first.txt"),
        ("p", "good/object.bin"),
        ("p", "good/soon.txt"),
    ]
    assert dict((path, c) for _p, path, c in rows)["good/first.txt"] == b"second"  # not pinned
    assert run_projects == ["p"]
    archived = {line.key.decode() for line in read(Path(env["HEADRACE_ARCHIVE__ROOT"])) if line.key}
    assert set(good) <= archived and not archived & every_bad
    assert sink.paths.count("good/first.txt") == 2 and len(sink.paths) == 4
    assert sorted({p for p in verified if p is not None}) == [
        "good/first.txt",
        "good/object.bin",
        "good/soon.txt",
    ]
    cache = ContentCache(Path(env["HEADRACE_CACHE__DIR"]), 1 << 30)
    assert cache.contains(good_object.checksum, good_object.size)
    assert not cache.contains(hostile_object.checksum, hostile_object.size)

    # Nothing was written outside the configured directories.
    assert files_under(outside) == set()
    assert files_under(tmp_path / "cwd") == set()
    work = tmp_path / "work"
    strays = files_under(tmp_path) - files_under(work)
    assert {p for p in strays if not p.is_relative_to(tmp_path / "runs")} == set()
    names = {p.name for p in files_under(tmp_path)}
    assert not names & {"passwd", "y.txt", "escaped.txt", "relative-escape.txt", "look-alike.txt"}
    objects.close()
