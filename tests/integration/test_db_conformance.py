"""The load database on PostgreSQL: the conformance suite, and what only a server does
(COPY types, lost connections, concurrent migrations, messages without secrets)."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from headrace.errors import is_transient
from headrace.settings import PostgresSettings
from storage.db import ConstraintViolation, Database, DatabaseUnavailable, DeleteMode
from storage.db.migrations import LATEST
from storage.db.postgres import PostgresDatabase
from tests.db_conformance import DatabaseConformance, as_dict, files, version


class PostgresBackend:
    """Every database in a schema of its own, dropped after the test."""

    def __init__(self, settings: PostgresSettings) -> None:
        self.settings = settings
        self.opened: list[PostgresDatabase] = []

    def new_schema(self) -> str:
        return f"test_db_{uuid.uuid4().hex[:12]}"

    def open(self, deletes: DeleteMode = DeleteMode.MARK) -> Database:
        db = PostgresDatabase(self.settings, deletes=deletes, schema=self.new_schema())
        self.opened.append(db)
        db.migrate()
        return db

    def table(self, db: Database, name: str) -> list[tuple[Any, ...]]:
        assert isinstance(db, PostgresDatabase)
        query = sql.SQL("SELECT * FROM {}").format(sql.Identifier(db.schema, name))
        with psycopg.connect(self.settings.conninfo()) as conn:
            rows = conn.execute(query).fetchall()
        return sorted(rows, key=lambda r: tuple(str(v) for v in r[:4]))

    def drop(self) -> None:
        with psycopg.connect(self.settings.conninfo(), autocommit=True) as conn:
            for db in self.opened:
                db.close()
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(db.schema))
                )


@pytest.fixture
def backend(postgres: PostgresSettings) -> Iterator[PostgresBackend]:
    found = PostgresBackend(postgres)
    yield found
    found.drop()


class TestPostgresConformance(DatabaseConformance):
    max_examples = 25  # a schema and its migrations per example


def test_a_nul_in_text_is_refused_and_the_connection_stays_usable(
    backend: PostgresBackend,
) -> None:
    db = backend.open()
    with pytest.raises(ConstraintViolation) as refused:
        db.write([version("a\x00b", 1, 1)])
    assert "0x00" in str(refused.value)  # the server names the byte
    assert db.write([version("ab", 1, 2)]).files_written == 1


def test_an_integer_beyond_bigint_is_refused(backend: PostgresBackend) -> None:
    db = backend.open()
    with pytest.raises(ConstraintViolation):
        db.write([version("a", 1, 2**63)])
    assert db.write([version("a", 1, 1)]).files_written == 1


def test_a_lost_connection_is_transient_and_the_next_call_reconnects(
    backend: PostgresBackend,
) -> None:
    db = backend.open()
    assert isinstance(db, PostgresDatabase)
    db.write([version("a", 1, 1)])
    pid = db._connection().info.backend_pid
    with psycopg.connect(backend.settings.conninfo(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(DatabaseUnavailable) as lost:
        db.write([version("a", 2, 2)])
    assert is_transient(lost.value)
    assert db.write([version("a", 2, 2)]).files_written == 1  # a new connection, new staging
    assert db._connection().info.backend_pid != pid
    assert [r["event_time_ms"] for r in files(db)] == [2]


def test_no_server_is_transient_and_the_message_holds_no_password() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = PostgresSettings(port=port, password="pw-that-must-not-show")
    db = PostgresDatabase(settings, schema="nowhere")
    with pytest.raises(DatabaseUnavailable) as down:
        db.migrate()
    message = str(down.value)
    assert is_transient(down.value) and f"127.0.0.1:{port}" in message
    assert "pw-that-must-not-show" not in message and "password=" not in message
    assert "\n" not in message
    db.close()


def test_two_loaders_migrating_one_schema_at_once_apply_each_version_once(
    backend: PostgresBackend,
) -> None:
    schema = backend.new_schema()
    dbs = [PostgresDatabase(backend.settings, schema=schema) for _ in range(4)]
    backend.opened.extend(dbs)
    start = threading.Barrier(len(dbs))
    applied: list[list[int]] = []
    errors: list[BaseException] = []

    def migrate(db: PostgresDatabase) -> None:
        try:
            db._connection()
            start.wait()
            applied.append(db.migrate())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(db,)) for db in dbs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(v for found in applied for v in found) == list(range(1, LATEST + 1))
    rows = backend.table(dbs[0], "schema_migrations")
    assert [r[0] for r in rows] == list(range(1, LATEST + 1))


def test_writers_in_different_schemas_do_not_see_each_other(backend: PostgresBackend) -> None:
    first, second = backend.open(), backend.open()
    first.write([version("a", 1, 1)])
    assert files(second) == [] and [r["path"] for r in files(first)] == ["a"]


def test_large_inline_content_round_trips(backend: PostgresBackend) -> None:
    db = backend.open()
    big = version("big.bin", 1, 1, content=bytes(range(256)) * 400)  # 100 KiB, TOASTed
    db.write([big])
    assert files(db) == [as_dict(big)]
