"""The schema comes from versioned migrations, applied once, whoever starts first."""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime
from pathlib import Path

from storage.db.migrations import LATEST, MIGRATIONS, wanted
from storage.db.sqlite import SqliteDatabase


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_versions_are_one_to_n_and_every_migration_has_both_dialects() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert LATEST == len(MIGRATIONS)
    for m in MIGRATIONS:
        assert m.description and m.sqlite and m.postgres
        assert len(m.sqlite) == len(m.postgres)


def test_wanted_lists_what_is_missing_up_to_a_target() -> None:
    assert [m.version for m in wanted(set())] == list(range(1, LATEST + 1))
    assert [m.version for m in wanted(set(), target=1)] == [1]
    assert wanted(set(range(1, LATEST + 1))) == []


def test_migrate_applies_each_version_once(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    with SqliteDatabase(path) as db:
        assert db.migrate(target=1) == [1]
        assert {"files", "runs", "load_ledger", "schema_migrations"} <= tables(path)
        assert "file_tombstones" not in tables(path)
        assert db.migrate() == list(range(2, LATEST + 1))
        assert db.migrate() == []
    with SqliteDatabase(path) as db:  # a restart finds everything applied
        assert db.migrate() == []
    with sqlite3.connect(path) as conn:
        recorded = conn.execute(
            "SELECT version, description, applied_at FROM schema_migrations ORDER BY version"
        ).fetchall()
    assert [(v, d) for v, d, _ in recorded] == [(m.version, m.description) for m in MIGRATIONS]
    assert all(datetime.fromisoformat(at).tzinfo is not None for _, _, at in recorded)


def test_two_processes_migrating_at_once_apply_each_version_once(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    start = threading.Barrier(4)
    applied: list[list[int]] = []
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            with SqliteDatabase(path) as db:
                start.wait()
                applied.append(db.migrate())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(v for found in applied for v in found) == list(range(1, LATEST + 1))
