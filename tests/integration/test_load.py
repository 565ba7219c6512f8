"""The load group against real Kafka, PostgreSQL and SQLite: duplicates, out-of-order
versions, deletes, a replay from offset zero and a SIGKILL between the database
transaction and the Kafka commit all leave the tables equal, row by row, to the
expected state; an event that cannot become a row and a row the database refuses
are dead-lettered while the loader goes on; `load --from-archive` rebuilds the same
tables from the archive."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as KafkaPartition
from confluent_kafka.serialization import MessageField, SerializationContext

from headrace.kafka import ensure_topics, make_admin, make_consumer, make_producer
from headrace.settings import (
    KafkaSettings,
    ObjectStoreSettings,
    PostgresSettings,
    RegistrySettings,
    load_settings,
)
from schemas.catalog import EventType
from schemas.models import (
    ContentStrategy,
    DeadLetter,
    DeadLetterReason,
    FileEvent,
    InlineContent,
    Op,
    RunEvent,
    RunEventKind,
    TextEncoding,
)
from schemas.registry import make_registry_client
from schemas.serde import EventDeserializer, EventSerializer
from storage.db import Database, open_database
from tests.integration.topics import read_topic
from tests.unit.test_cli import run

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
# Columns compared row by row (updated_at too: a replay must not touch a row).
COLUMNS = (
    "project",
    "path",
    "sha256",
    "size",
    "content_strategy",
    "content",
    "content_ref",
    "text_encoding",
    "deleted",
    "event_id",
    "event_time_ms",
    "run_id",
    "source_offset",
    "updated_at",
)


@pytest.fixture(params=["sqlite", "postgres"])
def env(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    kafka: KafkaSettings,
    registry: RegistrySettings,
    postgres: PostgresSettings,
    object_store: ObjectStoreSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:10]
    values = {
        "HEADRACE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "HEADRACE_KAFKA__PARTITIONS": "3",
        "HEADRACE_KAFKA__TOPICS__FILE_EVENTS": f"test.load-{tag}.files",
        "HEADRACE_KAFKA__TOPICS__RUN_EVENTS": f"test.load-{tag}.runs",
        "HEADRACE_KAFKA__TOPICS__VERIFICATIONS": f"test.load-{tag}.verifications",
        "HEADRACE_KAFKA__TOPICS__DEAD_LETTER": f"test.load-{tag}.dlq",
        "HEADRACE_REGISTRY__URL": registry.url,
        "HEADRACE_CONSUMER__GROUP_PREFIX": f"test-{tag}.",
        "HEADRACE_CONSUMER__METRICS_PORT": "0",
        "HEADRACE_ARCHIVE__ROOT": str(tmp_path / "archive"),
        "HEADRACE_LOAD__BACKEND": request.param,
        "HEADRACE_LOAD__SQLITE_PATH": str(tmp_path / "load.sqlite3"),
        "HEADRACE_LOAD__POSTGRES_SCHEMA": f"test_{tag}",
        "HEADRACE_POSTGRES__HOST": postgres.host,
        "HEADRACE_POSTGRES__PORT": str(postgres.port),
        "HEADRACE_OBJECT_STORE__ENDPOINT": object_store.endpoint,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    ensure_topics(
        make_admin(kafka),
        [
            values["HEADRACE_KAFKA__TOPICS__FILE_EVENTS"],
            values["HEADRACE_KAFKA__TOPICS__RUN_EVENTS"],
        ],
        partitions=3,
        replication_factor=1,
    )
    yield values
    if request.param == "postgres":
        with psycopg.connect(postgres.conninfo(), autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS test_{tag} CASCADE")


def file_event(
    path: str,
    minutes: int,
    text: str = "",
    *,
    op: Op = Op.UPSERT,
    project: str = "p",
    **extra: Any,
) -> FileEvent:
    data = text.encode()
    digest = hashlib.sha256(data).hexdigest()
    fields: dict[str, Any] = {
        "project": project,
        "path": path,
        "size": len(data),
        "checksum": digest if op is Op.UPSERT else "",
        "op": op,
        "event_time": T0 + timedelta(minutes=minutes),
        "run_id": "run-1",
    }
    if op is Op.UPSERT and "content_strategy" not in extra:
        fields["content_strategy"] = ContentStrategy.INLINE
        fields["inline"] = InlineContent(data=data, encoding=TextEncoding.UTF_8)
    fields.update(extra)
    return FileEvent(**fields)


def publish(env: dict[str, str], events: Sequence[FileEvent | RunEvent]) -> None:
    settings = load_settings()
    with make_registry_client(settings.registry) as client:
        producer = make_producer(settings.kafka)
        for event in events:
            if isinstance(event, FileEvent):
                topic = env["HEADRACE_KAFKA__TOPICS__FILE_EVENTS"]
                serialize = EventSerializer(client, EventType.FILE_EVENT)
                key = f"{event.project}/{event.path}"
            else:
                topic = env["HEADRACE_KAFKA__TOPICS__RUN_EVENTS"]
                serialize = EventSerializer(client, EventType.RUN_EVENT)
                key = event.run_id
            value = serialize(event, SerializationContext(topic, MessageField.VALUE))
            producer.produce(topic, key=key.encode(), value=value)
            producer.poll(0)
        assert producer.flush(30) == 0


def database() -> Database:
    return open_database(load_settings(), migrate=True)


def table(project: str = "p") -> list[tuple[Any, ...]]:
    with database() as db:
        return [tuple(row[c] for c in COLUMNS) for row in db.query(project, include_deleted=True)]


def expected(events: list[FileEvent]) -> dict[str, tuple[Any, ...]]:
    """path -> (sha256, deleted, event time) of the newest version: the tables' truth."""
    newest: dict[str, FileEvent] = {}
    for event in events:  # published in this order, so a later one has a higher offset
        old = newest.get(event.path)
        if old is None or (event.event_time or T0) >= (old.event_time or T0):
            newest[event.path] = event
    return {
        path: (e.checksum, e.op is Op.DELETE, int((e.event_time or T0).timestamp() * 1000))
        for path, e in sorted(newest.items())
    }


def state(rows: list[tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    at = {c: i for i, c in enumerate(COLUMNS)}
    return {
        r[at["path"]]: (r[at["sha256"]], r[at["deleted"]], r[at["event_time_ms"]]) for r in rows
    }


def consume(capsys: pytest.CaptureFixture[str], processes: int = 1) -> str:
    argv = ["consume", "load", "--until-caught-up", "--processes", str(processes)]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    return out


def history() -> list[FileEvent]:
    """Versions of a few files: duplicates, older versions after newer ones, deletes."""
    a1, a2, a3 = (file_event("a.txt", m, f"a version {m}") for m in (1, 2, 3))
    b1, b_del = file_event("b.txt", 1, "b"), file_event("b.txt", 5, op=Op.DELETE)
    c_del, c2 = file_event("c.txt", 2, op=Op.DELETE), file_event("c.txt", 4, "c is back")
    return [
        a1, a3, a2, a3, a1,  # out of order and duplicated: a3 wins
        b1, b_del, b1,  # deleted, then the old version again: stays deleted
        c_del, c2, c_del,  # deleted, re-created later, then the old delete again
        *(file_event(f"many/{i:03d}.py", i % 7, f"print({i})") for i in range(200)),
    ]  # fmt: skip


@pytest.mark.parametrize("processes", [1, 2])
def test_duplicates_out_of_order_versions_and_deletes_end_in_the_expected_state(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], processes: int
) -> None:
    events = history()
    run_started = RunEvent(
        run_id="run-1", kind=RunEventKind.STARTED, project="p", source="/src", event_time=T0
    )
    publish(env, [run_started, *events])
    written = consume(capsys, processes)
    assert f"{len(events) + 1} records written, 0 dead-lettered" in written
    rows = table()
    assert state(rows) == expected(events)
    a = next(r for r in rows if r[1] == "a.txt")
    assert bytes(a[5]) == b"a version 3" and a[4] == "INLINE"
    with database() as db:
        stats = db.stats()
    assert (stats.files, stats.deleted, stats.runs) == (202, 1, 1)

    # A replay from offset zero (a new group: no ledger, no committed offset) changes
    # nothing, not even updated_at.
    os.environ["HEADRACE_CONSUMER__GROUP_PREFIX"] += "replay."
    consume(capsys, processes)
    assert table() == rows


def test_live_batches_follow_load_batch_size_not_consumer_batch_size(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Twelve versions of one file: one key, one partition, all there before the group
    # starts. With consumer.batch_size they would be one transaction of 12; load.batch_size
    # makes them transactions of at most 5 (a ledger entry each).
    monkeypatch.setenv("HEADRACE_CONSUMER__BATCH_SIZE", "5000")
    monkeypatch.setenv("HEADRACE_LOAD__BATCH_SIZE", "5")
    publish(env, [file_event("one.txt", m, f"version {m}") for m in range(12)])
    assert "12 records written, 0 dead-lettered" in consume(capsys)
    group = os.environ["HEADRACE_CONSUMER__GROUP_PREFIX"] + "load"
    entries = int(sql("SELECT count(*) FROM load_ledger WHERE group_name = %s", group))
    largest = int(sql("SELECT max(row_count) FROM load_ledger WHERE group_name = %s", group))
    assert ledger_rows(group) == 12 and largest <= 5 and entries >= 3


def test_sigkill_between_the_transaction_and_the_commit_loads_each_event_once(
    env: dict[str, str], kafka: KafkaSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    events = [file_event(f"f{i:04d}.txt", i % 11, f"file {i}") for i in range(1500)]
    events += [file_event(f"f{i:04d}.txt", 20, f"file {i} v2") for i in range(0, 1500, 3)]
    publish(env, events)
    killed = subprocess.run(
        [sys.executable, "-m", "headrace", "consume", "load", "--until-caught-up"],
        env={
            **os.environ,
            "HEADRACE_LOAD__BATCH_SIZE": "100",  # the live load group's batches
            "HEADRACE_FAILPOINTS": "load.after_write=3",
        },
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    group = env["HEADRACE_CONSUMER__GROUP_PREFIX"] + "load"
    topic = env["HEADRACE_KAFKA__TOPICS__FILE_EVENTS"]
    partitions = [(topic, p) for p in range(3)]
    with database() as db:
        ledger = db.positions(group, partitions)
    committed = committed_offsets(kafka, group, partitions)
    # The third batch's rows are in the database, its offsets are not committed in Kafka.
    assert sum(ledger.values()) > sum(committed.values())

    consume(capsys)
    assert state(table()) == expected(events)
    with database() as db:
        assert sum(db.positions(group, partitions).values()) == len(events)
    assert ledger_rows(group) == len(events)  # no offset loaded twice


def committed_offsets(
    kafka: KafkaSettings, group: str, partitions: list[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    consumer: Consumer = make_consumer(kafka, group)
    try:
        found = consumer.committed([KafkaPartition(t, p) for t, p in partitions], timeout=10)
        return {(tp.topic, tp.partition): max(tp.offset, 0) for tp in found}
    finally:
        consumer.close()


def sql(statement: str, *params: Any) -> Any:
    """Run one statement on the load database directly (the first value of the first row)."""
    settings = load_settings()
    if settings.load.backend == "sqlite":
        conn = sqlite3.connect(settings.load.sqlite_path)
        try:
            with conn:
                row = conn.execute(statement.replace("%s", "?"), params).fetchone()
        finally:
            conn.close()
    else:
        with psycopg.connect(settings.postgres.conninfo(), autocommit=True) as pg:
            pg.execute(f"SET search_path TO {settings.load.postgres_schema}")
            cursor = pg.execute(statement.encode(), params)
            row = cursor.fetchone() if cursor.description else None
    return None if row is None else row[0]


def ledger_rows(group: str) -> int:
    """The sum of the ledger's row counts for ``group``: each offset once if no overlap."""
    return int(sql("SELECT sum(row_count) FROM load_ledger WHERE group_name = %s", group))


def add_forbidden_path_rule() -> None:
    """An operator's rule the loader knows nothing of, as each database spells it."""
    if load_settings().load.backend == "sqlite":
        sql(
            "CREATE TRIGGER no_forbidden_paths BEFORE INSERT ON files"
            " WHEN NEW.path = 'forbidden.txt'"
            " BEGIN SELECT RAISE(ABORT, 'no_forbidden_paths'); END"
        )
    else:
        sql("ALTER TABLE files ADD CONSTRAINT no_forbidden_paths CHECK (path <> 'forbidden.txt')")


@pytest.mark.parametrize("processes", [1, 2])
def test_unresolvable_and_refused_events_are_dead_lettered_and_loading_goes_on(
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    capsys: pytest.CaptureFixture[str],
    processes: int,
) -> None:
    database().close()  # migrated
    add_forbidden_path_rule()
    good = [file_event(f"ok{i}.txt", 1, "fine") for i in range(30)]
    missing_ref = file_event(
        "no-ref.bin", 1, "x", content_strategy=ContentStrategy.OBJECT_STORAGE, inline=None
    )
    forbidden = file_event("forbidden.txt", 1, "no")
    publish(env, [*good[:10], missing_ref, *good[10:20], forbidden, *good[20:]])
    assert "30 records written, 2 dead-lettered" in consume(capsys, processes)
    assert sorted(state(table())) == sorted(e.path for e in good)
    letters = dead_letters(env, kafka, registry)
    by_reason = {letter.reason: letter for letter in letters}
    assert set(by_reason) == {DeadLetterReason.PAYLOAD_MISSING, DeadLetterReason.STORAGE_CONSTRAINT}
    assert "object_ref" in by_reason[DeadLetterReason.PAYLOAD_MISSING].error
    assert "no_forbidden_paths" in by_reason[DeadLetterReason.STORAGE_CONSTRAINT].error
    assert all(letter.group.endswith(".load") for letter in letters)


def test_load_from_the_archive_rebuilds_the_same_tables(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    events = history()
    publish(env, events)
    consume(capsys)
    from_kafka = state(table())
    code, _, err = run(["consume", "archive", "--until-caught-up"], capsys)
    assert code == 0, err

    code, out, _ = run(["load", "--from-archive", "--dry-run", "-q"], capsys)
    assert code == 0 and f"would load from {env['HEADRACE_ARCHIVE__ROOT']}" in out
    # A rebuild into a fresh database gives the same state.
    os.environ["HEADRACE_LOAD__SQLITE_PATH"] += ".rebuilt"
    os.environ["HEADRACE_LOAD__POSTGRES_SCHEMA"] += "_rebuilt"
    try:
        code, out, err = run(["load", "--from-archive", "-q", "--batch-size", "50"], capsys)
        assert code == 0, err
        assert f"{len(events)} events read" in out
        assert state(table()) == from_kafka
        # Loading the same range again writes nothing.
        code, out, _ = run(["load", "--from-archive", "-q", "--project", "p"], capsys)
        assert code == 0 and "0 rows written" in out
    finally:
        if env["HEADRACE_LOAD__BACKEND"] == "postgres":
            settings = load_settings()
            with psycopg.connect(settings.postgres.conninfo(), autocommit=True) as conn:
                schema = os.environ["HEADRACE_LOAD__POSTGRES_SCHEMA"]
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def dead_letters(
    env: dict[str, str], kafka: KafkaSettings, registry: RegistrySettings
) -> list[DeadLetter]:
    """Every letter on the test's dead-letter topic."""
    with make_registry_client(registry) as client:
        decode = EventDeserializer(client, DeadLetter)
        return read_topic(
            kafka.model_copy(
                update={"topics": kafka.topics.model_copy(update={"dead_letter": "x"})}
            ),
            env["HEADRACE_KAFKA__TOPICS__DEAD_LETTER"],
            lambda m: decode(m.value()),
        )


def publish_v1(env: dict[str, str], events: Sequence[FileEvent]) -> None:
    """Publish FileEvents as the legacy v1 schema writes them (no event time, no content)."""
    settings = load_settings()
    topic = env["HEADRACE_KAFKA__TOPICS__FILE_EVENTS"]
    with make_registry_client(settings.registry) as client:
        serialize = EventSerializer(client, EventType.FILE_EVENT, writer_version=1)
        producer = make_producer(settings.kafka)
        for event in events:
            value = serialize(event, SerializationContext(topic, MessageField.VALUE))
            producer.produce(topic, key=f"{event.project}/{event.path}".encode(), value=value)
        assert producer.flush(30) == 0


def test_v1_events_load_with_content_where_their_local_path_is_readable(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    here = tmp_path / "legacy.txt"
    here.write_bytes(b"legacy content\n")

    def legacy(path: str, data: bytes, local: Path) -> FileEvent:
        digest = hashlib.sha256(data).hexdigest()
        return FileEvent(project="p", path=path, size=len(data), checksum=digest,
                         local_path=str(local))  # fmt: skip

    before = int(datetime.now(UTC).timestamp() * 1000)
    elsewhere = tmp_path / "not-here.txt"
    publish_v1(env, [legacy("legacy.txt", b"legacy content\n", here),
                     legacy("elsewhere.txt", b"on another host", elsewhere)])  # fmt: skip
    assert "2 records written, 0 dead-lettered" in consume(capsys)
    with database() as db:
        rows = {row["path"]: row for row in db.query("p")}
    assert rows["legacy.txt"]["content"] == b"legacy content\n"
    assert rows["elsewhere.txt"]["content"] is None
    assert all(row["content_strategy"] is None for row in rows.values())
    after = int(datetime.now(UTC).timestamp() * 1000)
    assert all(before - 1000 <= row["event_time_ms"] <= after for row in rows.values())


def test_wrong_inline_bytes_and_a_missing_bucket_are_dead_lettered_and_loading_goes_on(
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    good = [file_event(f"ok{i}.txt", 1, "fine") for i in range(20)]
    lying = file_event("lying.txt", 1, "the truth").model_copy(
        update={"checksum": hashlib.sha256(b"something else").hexdigest()}
    )
    no_bucket = file_event(
        "nowhere.bin",
        1,
        "x",
        content_strategy=ContentStrategy.OBJECT_STORAGE,
        inline=None,
        object_ref={"bucket": f"no-such-bucket-{uuid.uuid4().hex[:8]}", "key": "k"},
    )
    publish(env, [*good[:10], lying, *good[10:15], no_bucket, *good[15:]])
    assert "20 records written, 2 dead-lettered" in consume(capsys)
    assert sorted(state(table())) == sorted(e.path for e in good)
    letters = dead_letters(env, kafka, registry)
    by_reason = {letter.reason: letter for letter in letters}
    assert set(by_reason) == {DeadLetterReason.CHECKSUM_MISMATCH, DeadLetterReason.PAYLOAD_MISSING}
    assert "does not hash" in by_reason[DeadLetterReason.CHECKSUM_MISMATCH].error
    assert "does not exist" in by_reason[DeadLetterReason.PAYLOAD_MISSING].error
