"""The load database on SQLite: the conformance suite, and what only SQLite does."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from headrace.errors import is_transient
from storage.db import ConstraintViolation, Database, DatabaseUnavailable, DeleteMode
from storage.db.sqlite import SqliteDatabase
from tests.db_conformance import DatabaseConformance, version


class SqliteBackend:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.opened: list[SqliteDatabase] = []

    def open(self, deletes: DeleteMode = DeleteMode.MARK) -> Database:
        db = SqliteDatabase(self.root / f"db{len(self.opened)}.sqlite3", deletes=deletes)
        self.opened.append(db)
        db.migrate()
        return db

    def table(self, db: Database, name: str) -> list[tuple[Any, ...]]:
        assert isinstance(db, SqliteDatabase)
        with sqlite3.connect(db.path) as conn:
            rows = conn.execute(f"SELECT * FROM {name}").fetchall()  # noqa: S608 - test tables
        return sorted(rows, key=lambda r: tuple(str(v) for v in r[:4]))


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[SqliteBackend]:
    found = SqliteBackend(tmp_path)
    yield found
    for db in found.opened:
        db.close()


class TestSqliteConformance(DatabaseConformance):
    max_examples = 80


def test_the_constructor_does_no_io_the_first_use_makes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "db.sqlite3"
    db = SqliteDatabase(path)
    assert not path.parent.exists()  # style 7a: nothing made until used
    db.close()  # closing one never opened is nothing to do
    with db:
        assert db.migrate()
    assert path.exists()


def test_the_database_is_in_wal_mode(tmp_path: Path) -> None:
    with SqliteDatabase(tmp_path / "new" / "dir" / "db.sqlite3") as db:
        db.migrate()
    with sqlite3.connect(tmp_path / "new" / "dir" / "db.sqlite3") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_locked_past_the_busy_timeout_is_transient_and_passes(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    with SqliteDatabase(path, busy_timeout_s=0.05) as db:
        db.migrate()
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        with pytest.raises(DatabaseUnavailable) as locked:
            db.write([version("a", 1, 1)])
        assert is_transient(locked.value) and "locked" in str(locked.value)
        other.execute("ROLLBACK")
        other.close()
        assert db.write([version("a", 1, 1)]).files_written == 1


def test_an_integer_beyond_64_bits_is_refused(tmp_path: Path) -> None:
    with SqliteDatabase(tmp_path / "db.sqlite3") as db:
        db.migrate()
        with pytest.raises(ConstraintViolation):
            db.write([version("a", 1, 2**63)])
        assert db.write([version("a", 1, 1)]).files_written == 1
