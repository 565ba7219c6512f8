"""``headrace archive-table`` against the real stack: PostgreSQL, Kafka, the registry and
the archive group in a process of its own. Old rows are archived, verified by checksum
against a copy of the table taken before, and deleted; young rows stay; without the
archive group, or with an archive that does not confirm in time, nothing is deleted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from psycopg import sql

from headrace.kafka import make_admin
from headrace.settings import KafkaSettings, PostgresSettings, load_settings
from producers.tables import rows
from producers.tables.archive_process import ArchiveProcess
from producers.tables.archiver import ArchiveRequest, NoProgress
from producers.tables.archiver import archive_table as archiver_run
from producers.tables.catalog import TableRef
from producers.tables.metrics import TableMetrics
from storage.archive import read
from tests.integration.test_archive import (
    consumer_process,
    env,  # noqa: F401 - the fixture, reused
    group_members,
    wait_for,
)
from tests.unit.test_cli import run

OLD, YOUNG = 700, 300
WAIT_S = 60.0


@pytest.fixture
def table_env(
    env: dict[str, str],  # noqa: F811 - the fixture
    tmp_path: Path,
    postgres: PostgresSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    tag = env["HEADRACE_CONSUMER__GROUP_PREFIX"].strip(".").removeprefix("test-")
    values = {
        **env,
        "HEADRACE_KAFKA__TOPICS__ROW_EVENTS": f"test.arch-{tag}.rows",
        "HEADRACE_ARCHIVE__MAX_SEGMENT_AGE_S": "0.5",
        "HEADRACE_CONSUMER__INSTANCES_DIR": str(tmp_path / "instances"),
        "HEADRACE_TABLES__STATE_DIR": str(tmp_path / "tables"),
        "HEADRACE_SOURCES__T__HOST": postgres.host,
        "HEADRACE_SOURCES__T__PORT": str(postgres.port),
        "HEADRACE_SOURCES__T__DATABASE": postgres.database,
        "HEADRACE_SOURCES__T__USER": postgres.user,
    }
    if postgres.password is not None:
        values["HEADRACE_SOURCES__T__PASSWORD"] = postgres.password.get_secret_value()
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


@pytest.fixture
def db(postgres: PostgresSettings) -> Iterator[psycopg.Connection[Any]]:
    password = postgres.password.get_secret_value() if postgres.password else None
    with psycopg.connect(
        host=postgres.host,
        port=postgres.port,
        dbname=postgres.database,
        user=postgres.user,
        password=password,
        autocommit=True,
    ) as conn:
        rows.prepare(conn)
        yield conn


def make_table(db: psycopg.Connection[Any], old: int, young: int) -> str:
    """A schema with an ``events`` table: ``old`` rows past a 90-day retention (ids 1 to
    ``old``), then ``young`` ones a day old, of several types, NULLs among them."""
    name = f"at_{uuid.uuid4().hex[:12]}"
    db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    db.execute(
        sql.SQL(
            "CREATE TABLE {} (id bigint PRIMARY KEY, created_at timestamptz NOT NULL,"
            " amount numeric, note text, flag boolean, tags text[], payload jsonb,"
            " blob bytea, ratio double precision)"
        ).format(sql.Identifier(name, "events"))
    )
    db.execute(
        sql.SQL(
            "INSERT INTO {} SELECT g,"
            " CASE WHEN g <= %s THEN now() - make_interval(days => 100 + g %% 50)"
            "      ELSE now() - interval '1 day' END,"
            " (g * 1.000000000000000001)::numeric,"
            " CASE WHEN g %% 7 = 0 THEN NULL ELSE 'row ' || g || E' \\u00e9\\n' END,"
            " g %% 2 = 0, ARRAY['a' || g, NULL], jsonb_build_object('g', g, 'x', ARRAY[1, 2]),"
            " decode(lpad(to_hex(g), 8, '0'), 'hex'), g / 3.0"
            " FROM generate_series(1, %s) AS g"
        ).format(sql.Identifier(name, "events")),
        (old, old + young),
    )
    return name


def drop(db: psycopg.Connection[Any], name: str) -> None:
    db.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def schema(db: psycopg.Connection[Any]) -> Iterator[str]:
    name = make_table(db, OLD, YOUNG)
    yield name
    drop(db, name)


def table_copy(db: psycopg.Connection[Any], schema: str) -> dict[str, str]:
    """Each row's checksum by its id, computed as the archiver computes it."""
    types = rows.table_types(db, schema, "events")
    found = db.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(schema, "events")))
    names = [(t.name, t.type) for t in types]
    copy = {}
    for values in found.fetchall():
        texts = rows.text_forms(types, values)
        items = [(name, kind, text) for (name, kind), text in zip(names, texts, strict=True)]
        copy[str(texts[0])] = rows.checksum_items(items)  # == rows.checksum(encode_row(...))
    return copy


def archived(values: dict[str, str], schema: str) -> dict[str, str]:
    """The archived rows of the table: the checksum of each row as archived, by id."""
    found: dict[str, str] = {}
    topic = values["HEADRACE_KAFKA__TOPICS__ROW_EVENTS"]
    for line in read(Path(values["HEADRACE_ARCHIVE__ROOT"]), topic=topic):
        event = line.event
        if event["schema"] != schema:
            continue
        items = [(c["name"], c["type"], c["value"]) for c in event["row"]]
        assert event["checksum"] == rows.checksum_items(items)  # the row as archived
        key = event["key"][0]["value"]
        assert key not in found or found[key] == event["checksum"]
        found[key] = event["checksum"]
    return found


def group_reads(kafka: KafkaSettings, values: dict[str, str]) -> bool:
    """Whether a member of the archive group has partitions of the row-events topic."""
    group = values["HEADRACE_CONSUMER__GROUP_PREFIX"] + "archive"
    admin = make_admin(kafka)
    description = admin.describe_consumer_groups([group], request_timeout=10)[group]
    members = description.result(timeout=10).members
    topic = values["HEADRACE_KAFKA__TOPICS__ROW_EVENTS"]
    return any(
        tp.topic == topic
        for m in members
        if m.assignment is not None
        for tp in m.assignment.topic_partitions
    )


def stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    return err.decode()


@contextmanager
def archive_group(kafka: KafkaSettings, values: dict[str, str]) -> Iterator[None]:
    """``headrace consume archive`` in a process of its own, for the block: once it
    reads the row-events topic, and stopped with SIGTERM at the end."""
    proc = consumer_process(values)
    try:
        wait_for(lambda: group_reads(kafka, values), WAIT_S, "the archive group to join")
        yield
    finally:
        stop(proc)


def archive_table(schema: str, *extra: str) -> list[str]:
    return [
        "archive-table",
        "--source",
        "t",
        "--table",
        f"{schema}.events",
        "--older-than",
        "90d",
        "--batch-size",
        "300",
        *extra,
    ]


def test_old_rows_are_archived_verified_and_deleted_young_rows_kept(
    table_env: dict[str, str],
    kafka: KafkaSettings,
    db: psycopg.Connection[Any],
    schema: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = table_copy(db, schema)
    assert len(before) == OLD + YOUNG
    with archive_group(kafka, table_env):
        code, out, err = run(archive_table(schema, "--json"), capsys)
        assert code == 0, err
        assert '"rows":700' in out and '"deleted":700' in out and '"batches":3' in out
    after = table_copy(db, schema)
    old = {str(i) for i in range(1, OLD + 1)}
    assert set(after) == set(before) - old  # every old row deleted, every young one kept
    assert all(after[k] == before[k] for k in after)
    found = archived(table_env, schema)
    assert set(found) == old
    assert all(found[k] == before[k] for k in old)  # each archived row is the row as it was


def test_without_the_archive_group_nothing_is_deleted(
    table_env: dict[str, str],
    db: psycopg.Connection[Any],
    schema: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = table_copy(db, schema)
    code, out, err = run(archive_table(schema), capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no archive group is running" in lines[0], err
    assert table_copy(db, schema) == before


def test_an_archive_that_does_not_confirm_in_time_rolls_the_batch_back(
    table_env: dict[str, str],
    kafka: KafkaSettings,
    db: psycopg.Connection[Any],
    schema: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = table_copy(db, schema)
    slow = {**table_env, "HEADRACE_ARCHIVE__ROW_EVENTS_SEGMENT_AGE_S": "600"}  # never in time
    with archive_group(kafka, slow):
        code, out, err = run(archive_table(schema, "--archive-timeout", "3"), capsys)
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("headrace: error:")]
    assert len(errors) == 1 and "did not hold all 300 row events within 3 s" in errors[0], err
    assert "rolled back, its rows stay" in errors[0]
    assert err.rstrip().endswith(errors[0])  # the last line, and no traceback
    assert table_copy(db, schema) == before


def test_a_bad_age_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        ["archive-table", "--source", "t", "--table", "a.b", "--older-than", "9x"], capsys
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "not an age" in err


def test_a_dry_run_changes_nothing_and_says_what_it_would_do(
    table_env: dict[str, str],
    db: psycopg.Connection[Any],
    schema: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = table_copy(db, schema)
    code, out, err = run(archive_table(schema, "--dry-run"), capsys)
    assert code == 0, err
    assert f"{schema}.events: would archive {OLD} rows in 3 batches" in out
    assert "nothing changed" in out
    assert table_copy(db, schema) == before


# --- the acceptance scenarios ------------------------------------------------------

BIG = int(os.environ.get("HEADRACE_TEST_TABLE_ROWS", "100000"))  # smaller by hand only


@pytest.fixture
def big_schema(db: psycopg.Connection[Any]) -> Iterator[str]:
    name = make_table(db, BIG, 100)
    yield name
    drop(db, name)


def archived_ids(values: dict[str, str], schema: str) -> dict[str, set[str]]:
    """The distinct event ids archived for each row (by id): one each if archived once."""
    found: dict[str, set[str]] = {}
    topic = values["HEADRACE_KAFKA__TOPICS__ROW_EVENTS"]
    for line in read(Path(values["HEADRACE_ARCHIVE__ROOT"]), topic=topic):
        if line.event["schema"] == schema:
            found.setdefault(line.event["key"][0]["value"], set()).add(line.event["event_id"])
    return found


def archiver(
    values: dict[str, str], argv: list[str], failpoints: str | None = None
) -> subprocess.Popen[bytes]:
    """``headrace archive-table`` in a process of its own."""
    environment = {**os.environ, **values}
    if failpoints is not None:
        environment["HEADRACE_FAILPOINTS"] = failpoints
    return subprocess.Popen(
        [sys.executable, "-m", "headrace", *argv],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def summary_of(out: bytes | str) -> dict[str, Any]:
    text = out.decode() if isinstance(out, bytes) else out
    found: dict[str, Any] = orjson.loads(text.strip().splitlines()[-1])
    return found


def table_locked(db: psycopg.Connection[Any], schema: str) -> bool:
    """Whether a transaction still holds a lock on the table (a killed archiver's, until
    the server has noticed its connection is gone and rolled it back)."""
    found = db.execute(
        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
        " WHERE c.relname = 'events' AND c.relnamespace = %s::regnamespace"
        " AND l.pid <> pg_backend_pid()",
        (schema,),
    ).fetchone()
    return found is not None and int(found[0]) > 0


def test_100k_rows_are_archived_and_deleted_with_zero_loss(
    table_env: dict[str, str],
    kafka: KafkaSettings,
    db: psycopg.Connection[Any],
    big_schema: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Segments of the default size: the archive tests' 50 records a segment would make
    # 2,000 of them here, and the run four times slower.
    monkeypatch.setenv("HEADRACE_ARCHIVE__MAX_SEGMENT_RECORDS", "100000")
    values = {**table_env, "HEADRACE_ARCHIVE__MAX_SEGMENT_RECORDS": "100000"}
    before = table_copy(db, big_schema)
    assert len(before) == BIG + 100
    with archive_group(kafka, values):
        argv = ["archive-table", "--source", "t", "--table", f"{big_schema}.events"]
        code, out, err = run([*argv, "--older-than", "90d", "--json"], capsys)
        assert code == 0, err
    summary = summary_of(out)
    assert summary["rows"] == summary["deleted"] == summary["verified"] == BIG
    assert summary["batches"] == -(-BIG // 10_000)  # the default batch size
    after = table_copy(db, big_schema)
    old = {str(i) for i in range(1, BIG + 1)}
    assert set(after) == set(before) - old and all(after[k] == before[k] for k in after)
    found = archived(table_env, big_schema)  # asserts each archived row's own checksum
    assert found == {k: before[k] for k in old}  # every row, as it was: zero loss


@pytest.mark.parametrize("where", ["archive_table.after_publish", "archive_table.before_commit"])
def test_a_run_killed_mid_batch_keeps_the_batch_and_a_restart_archives_each_row_once(
    where: str,
    table_env: dict[str, str],
    kafka: KafkaSettings,
    db: psycopg.Connection[Any],
    schema: str,
) -> None:
    before = table_copy(db, schema)
    with archive_group(kafka, table_env):
        # Batches of 300: the second dies after its events were published (and, at
        # before_commit, after its rows were deleted in the open transaction).
        killed = archiver(table_env, archive_table(schema), failpoints=f"{where}=2")
        _, err = killed.communicate(timeout=120)
        assert killed.returncode == -signal.SIGKILL, err.decode()
        wait_for(lambda: not table_locked(db, schema), 30, "the killed batch's rollback")
        mid = table_copy(db, schema)
        gone = set(before) - set(mid)
        assert len(gone) == 300 and gone <= {str(i) for i in range(1, OLD + 1)}  # batch 1
        again = archiver(table_env, archive_table(schema, "--json"))
        out, err = again.communicate(timeout=120)
        assert again.returncode == 0, err.decode()
    assert summary_of(out)["rows"] == OLD - 300  # it resumed after batch 1
    old = {str(i) for i in range(1, OLD + 1)}
    assert set(table_copy(db, schema)) == set(before) - old
    ids = archived_ids(table_env, schema)
    # The killed batch's events and the retry's have the same ids (derived from the
    # row): each row is archived once, whatever copies of its record the log holds.
    assert set(ids) == old and all(len(v) == 1 for v in ids.values())
    assert archived(table_env, schema) == {k: before[k] for k in old}


def test_two_archivers_of_one_table_at_once_archive_nothing_twice(
    table_env: dict[str, str],
    kafka: KafkaSettings,
    db: psycopg.Connection[Any],
    schema: str,
) -> None:
    before = table_copy(db, schema)
    with archive_group(kafka, table_env):
        argv = archive_table(schema, "--json", "--batch-size", "50")  # 14 batches between them
        both = [archiver(table_env, argv), archiver(table_env, argv)]
        outcomes = [p.communicate(timeout=240) for p in both]
    for p, (_, err) in zip(both, outcomes, strict=True):
        assert p.returncode == 0, err.decode()
    counts = [summary_of(out)["rows"] for out, _ in outcomes]
    assert sum(counts) == OLD  # together every old row, and none twice
    assert min(counts) > 0, counts  # both ran at once: SKIP LOCKED gave them different rows
    old = {str(i) for i in range(1, OLD + 1)}
    ids = archived_ids(table_env, schema)
    assert set(ids) == old and all(len(v) == 1 for v in ids.values())
    assert set(table_copy(db, schema)) == set(before) - old


def test_an_archive_group_stopped_mid_run_rolls_the_batch_back_with_a_clear_message(
    table_env: dict[str, str],
    kafka: KafkaSettings,
    db: psycopg.Connection[Any],
    schema: str,
) -> None:
    before = table_copy(db, schema)
    lines: list[str] = []
    # The archive group leaves when the block ends: mid-run.
    with archive_group(kafka, table_env):
        runner = archiver(
            table_env, archive_table(schema, "--batch-size", "100", "--archive-timeout", "5")
        )
        assert runner.stderr is not None
        reader = threading.Thread(
            target=lambda: lines.extend(line.decode() for line in runner.stderr or []),
            daemon=True,
        )
        reader.start()
        wait_for(lambda: any(line.startswith("batch 1:") for line in lines), 120, "batch 1")
    code = runner.wait(timeout=120)
    reader.join(timeout=30)
    for pipe in (runner.stdout, runner.stderr):
        if pipe is not None:
            pipe.close()
    assert code == 1, "".join(lines)
    assert lines[-1].startswith("headrace: error:"), "".join(lines)
    assert "within 5 s (no archive group is running): rolled back, its rows stay" in lines[-1]
    committed = sum(1 for line in lines if line.startswith("batch "))
    assert 1 <= committed < 7
    after = table_copy(db, schema)
    gone = set(before) - set(after)
    assert len(gone) == committed * 100  # the batch in hand rolled back: its rows stay
    assert all(after[k] == before[k] for k in after)
    assert archived(table_env, schema).items() >= {k: before[k] for k in gone}.items()


def test_run_archive_starts_an_archive_group_for_the_run_and_stops_it(
    table_env: dict[str, str],
    kafka: KafkaSettings,
    db: psycopg.Connection[Any],
    schema: str,
    tmp_path: Path,
) -> None:
    before = table_copy(db, schema)
    settings = load_settings()
    request = ArchiveRequest(
        "t", settings.source("t"), TableRef(schema, "events"), timedelta(days=90), batch_size=300
    )
    metrics = TableMetrics("t", f"{schema}.events")
    summary = archiver_run(
        settings, request, NoProgress(), metrics=metrics, archive=ArchiveProcess(tmp_path)
    )
    assert (summary.rows, summary.deleted, summary.batches) == (OLD, OLD, 3)
    assert group_members(kafka, table_env) == 0  # the group it started has left
    assert "assigned" in (tmp_path / "archive-group.log").read_text()
    old = {str(i) for i in range(1, OLD + 1)}
    assert archived(table_env, schema) == {k: before[k] for k in old}
    labels = {"source": "t", "table": f"{schema}.events"}
    sample = metrics.registry.get_sample_value
    assert sample("headrace_table_rows_archived_total", labels) == OLD
    assert sample("headrace_table_rows_deleted_total", labels) == OLD
    assert sample("headrace_table_batches_total", {**labels, "outcome": "committed"}) == 3
    assert sample("headrace_table_batch_seconds_count", labels) == 3
    assert (
        sample("headrace_table_verification_failures_total", {**labels, "reason": "timeout"}) == 0
    )
