"""``headrace archive-table`` against the real stack: PostgreSQL, Kafka, the registry and
the archive group in a process of its own. Old rows are archived, verified by checksum
against a copy of the table taken before, and deleted; young rows stay; without the
archive group, or with an archive that does not confirm in time, nothing is deleted."""

from __future__ import annotations

import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from headrace.kafka import make_admin
from headrace.settings import KafkaSettings, PostgresSettings
from producers.tables import rows
from schemas.models import Column
from storage.archive import read
from tests.integration.test_archive import (
    consumer_process,
    env,  # noqa: F401 - the fixture, reused
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


@pytest.fixture
def schema(db: psycopg.Connection[Any]) -> Iterator[str]:
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
        (OLD, OLD + YOUNG),
    )
    yield name
    db.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def table_copy(db: psycopg.Connection[Any], schema: str) -> dict[str, str]:
    """Each row's checksum by its id, computed as the archiver computes it."""
    types = rows.table_types(db, schema, "events")
    found = db.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(schema, "events")))
    copy = {}
    for values in found.fetchall():
        row = rows.encode_row(types, values)
        copy[str(row[0].value)] = rows.checksum(row)
    return copy


def archived(values: dict[str, str], schema: str) -> dict[str, str]:
    """The archived rows of the table: the checksum of each row as archived, by id."""
    found: dict[str, str] = {}
    topic = values["HEADRACE_KAFKA__TOPICS__ROW_EVENTS"]
    for line in read(Path(values["HEADRACE_ARCHIVE__ROOT"]), topic=topic):
        event = line.event
        if event["schema"] != schema:
            continue
        row = [Column.model_validate(c) for c in event["row"]]
        assert event["checksum"] == rows.checksum(row)
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
    proc = consumer_process(table_env)
    try:
        wait_for(lambda: group_reads(kafka, table_env), WAIT_S, "the archive group to join")
        code, out, err = run(archive_table(schema, "--json"), capsys)
        assert code == 0, err
        assert '"rows":700' in out and '"deleted":700' in out and '"batches":3' in out
    finally:
        err = stop(proc)
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
    proc = consumer_process(slow)
    try:
        wait_for(lambda: group_reads(kafka, table_env), WAIT_S, "the archive group to join")
        code, out, err = run(archive_table(schema, "--archive-timeout", "3"), capsys)
    finally:
        stop(proc)
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
