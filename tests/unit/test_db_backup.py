"""Backups of a SQLite load database, without services: taken, listed, found, pruned,
refused (a loader's slot held, a copy that does not match its manifest), restored."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from consumers.instance import InstanceSlot
from headrace.settings import Settings, load_settings
from storage.db import backup as backups
from storage.db.backup import BackupError, Backups, LoaderRunning, backup, restore
from tests.unit.test_cli import run


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("HEADRACE_LOAD__SQLITE_PATH", str(tmp_path / "db" / "load.sqlite3"))
    monkeypatch.setenv("HEADRACE_LOAD__BACKUPS_DIR", str(tmp_path / "backups"))
    monkeypatch.setenv("HEADRACE_CONSUMER__INSTANCES_DIR", str(tmp_path / "instances"))
    monkeypatch.setattr(backups, "_group_members", lambda _settings, _group: 0)  # no Kafka
    monkeypatch.setattr(backups, "rewind_group", lambda _settings: 0)
    return load_settings()


def rows(path: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(path) as conn:
        return list(conn.execute("SELECT id, name FROM t ORDER BY id"))


def write(path: Path, *names: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, name TEXT)")
        conn.executemany("INSERT INTO t (name) VALUES (?)", [(n,) for n in names])
        conn.commit()
    finally:
        conn.close()


def test_a_backup_is_a_consistent_copy_listed_with_its_manifest(settings: Settings) -> None:
    db = settings.load.sqlite_path
    write(db, "a", "b")
    made = backup(settings)
    assert made.backend == "sqlite" and made.path.suffix == ".sqlite3"
    assert rows(made.path) == [(1, "a"), (2, "b")]
    assert made.source == str(db)
    assert Backups(settings.load.backups_dir).all() == [made]
    assert Backups(settings.load.backups_dir).find(made.name) == made
    assert Backups(settings.load.backups_dir).find(str(made.path)) == made


def test_a_backup_taken_while_a_writer_holds_a_transaction_does_not_wait_for_it(
    settings: Settings,
) -> None:
    db = settings.load.sqlite_path
    write(db, "a")
    writer = sqlite3.connect(db, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # the loader mid-transaction
        writer.execute("INSERT INTO t (name) VALUES ('not yet committed')")
        made = backup(settings)
        writer.execute("COMMIT")
    finally:
        writer.close()
    assert rows(made.path) == [(1, "a")]  # the snapshot, without the open transaction


def test_without_a_database_there_is_nothing_to_back_up(settings: Settings) -> None:
    with pytest.raises(BackupError, match="no load database at"):
        backup(settings)


def test_restore_puts_the_copy_back_and_backs_up_what_it_replaces(settings: Settings) -> None:
    db = settings.load.sqlite_path
    write(db, "a")
    first = backup(settings)
    write(db, "b", "c")
    done = restore(settings, first.name)
    assert rows(db) == [(1, "a")]
    assert done.replaced is not None and rows(done.replaced.path) == [(1, "a"), (2, "b"), (3, "c")]
    assert not Path(f"{db}-wal").exists()


def test_restore_refuses_while_a_loader_holds_its_slot_unless_forced(settings: Settings) -> None:
    db = settings.load.sqlite_path
    write(db, "a")
    made = backup(settings)
    slot = InstanceSlot(settings.consumer.instances_dir, settings.consumer.group_prefix + "load")
    slot.acquire()
    try:
        with pytest.raises(LoaderRunning, match="is held on this host"):
            restore(settings, made.name)
        restore(settings, made.name, force=True)
    finally:
        slot.release()
    restore(settings, made.name)  # the slot is free again


def test_a_copy_that_does_not_match_its_manifest_is_not_restored(settings: Settings) -> None:
    db = settings.load.sqlite_path
    write(db, "a")
    made = backup(settings)
    with made.path.open("r+b") as file:
        file.seek(100)
        file.write(b"\xff")
    write(db, "b")
    with pytest.raises(BackupError, match="does not match its manifest"):
        restore(settings, made.name)
    assert rows(db) == [(1, "a"), (2, "b")]


def test_an_interrupted_backup_is_never_listed_and_is_cleaned_by_the_next(
    settings: Settings,
) -> None:
    write(settings.load.sqlite_path, "a")
    directory = settings.load.backups_dir
    directory.mkdir(parents=True)
    (directory / ".load-20260101T000000000000Z.sqlite3.tmp").write_bytes(b"half")
    (directory / "load-20260101T000000000000Z.sqlite3").write_bytes(b"no manifest")
    assert Backups(directory).all() == []
    made = backup(settings)
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [made.path.name, f"{made.name}.json"]
    )


def test_prune_removes_old_backups_but_always_keeps_the_newest(settings: Settings) -> None:
    write(settings.load.sqlite_path, "a")
    made = [backup(settings) for _ in range(3)]
    store = Backups(settings.load.backups_dir)
    later = datetime.now(UTC) + timedelta(days=30)
    gone = store.prune(7, now=later)
    assert {b.name for b in gone} == {made[0].name, made[1].name}
    assert store.all() == [made[2]]
    assert store.prune(0, now=later) == []


def test_the_commands_print_one_line_each_and_refuse_an_unknown_backup(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    write(settings.load.sqlite_path, "a")
    code, out, err = run(["db", "backup"], capsys)
    assert code == 0, err
    assert out.startswith("load-") and "bytes of" in out
    code, out, _ = run(["db", "backups", "--json"], capsys)
    assert code == 0 and '"backend":"sqlite"' in out
    code, _, err = run(["db", "restore", "load-nope"], capsys)
    assert code == 1
    assert err.strip() == (
        f"headrace: error: no backup 'load-nope' in {settings.load.backups_dir}"
        " ('headrace db backups' lists them)"
    )
    code, out, _ = run(["db", "prune-backups", "--keep-days", "30"], capsys)
    assert (code, out.strip()) == (0, "removed 0 backups older than 30 days")
    code, _, err = run(["db", "prune-backups", "--keep-days", "-1"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_the_periodic_backup_runs_in_its_own_thread_when_due_and_prunes(
    settings: Settings,
) -> None:
    write(settings.load.sqlite_path, "a")
    old = backup(settings)
    periodic = backups.PeriodicBackup(settings, interval_s=0.01, keep_days=1)
    periodic.tick()  # not due yet: the interval runs from its creation
    assert periodic.taken == 0
    deadline = datetime.now(UTC) + timedelta(seconds=30)
    while periodic.taken == 0 and datetime.now(UTC) < deadline:
        periodic.tick()
        periodic.close(timeout_s=10)
    assert (periodic.taken, periodic.failed) == (1, 0)
    assert [b.name for b in Backups(settings.load.backups_dir).all()][-1] == old.name
