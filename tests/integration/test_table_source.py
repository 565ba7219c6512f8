"""The table archiver's database side against a real PostgreSQL: the catalog, locked
keyset batches, delete by primary key, the kept cursor, hostile names and the dry run."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from headrace.settings import PostgresSettings, SourceSettings
from producers.errors import BatchTimeout, NoPrimaryKey, TableNotFound, TimestampColumnError
from producers.tables import rows
from producers.tables.catalog import TableRef
from producers.tables.cursors import CursorStore
from producers.tables.source import Limits, TableSource

DAYS = timedelta(days=30)
WAIT_S = 20.0  # every wait below is bounded by this


@pytest.fixture
def source(postgres: PostgresSettings) -> SourceSettings:
    return SourceSettings(
        host=postgres.host,
        port=postgres.port,
        database=postgres.database,
        user=postgres.user,
        password=postgres.password,
    )


@pytest.fixture
def db(source: SourceSettings) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(source.conninfo(), autocommit=True) as conn:
        yield conn


@pytest.fixture
def schema(db: psycopg.Connection[Any]) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    db.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def make_events(db: psycopg.Connection[Any], schema: str, n: int = 100) -> None:
    """``schema.events``: a composite key (region, id), row g aged g days less an hour."""
    table = sql.Identifier(schema, "events")
    db.execute(
        sql.SQL(
            "CREATE TABLE {} (payload jsonb, id bigint, created_at timestamptz,"
            " region text, amount numeric, PRIMARY KEY (region, id))"
        ).format(table)
    )
    db.execute(
        sql.SQL(
            "INSERT INTO {} SELECT jsonb_build_object('g', g), g,"
            " now() - make_interval(days => g, hours => -1), 'r' || mod(g, 4), g / 3.0"
            " FROM generate_series(1, %s) g"
        ).format(table),
        (n,),
    )


def old_keys(db: psycopg.Connection[Any], schema: str) -> list[tuple[str, str]]:
    """The rows past 30 days, as (region, id) text, in (created_at, region, id) order."""
    query = sql.SQL(
        "SELECT region, id::text FROM {} WHERE created_at < now() - interval '30 days'"
        " ORDER BY created_at, region, id"
    ).format(sql.Identifier(schema, "events"))
    return [(str(r), str(i)) for r, i in db.execute(query).fetchall()]


def count(db: psycopg.Connection[Any], schema: str, table: str = "events") -> int:
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
    found = db.execute(query).fetchone()
    assert found is not None
    return int(found[0])


def table_source(source: SourceSettings, schema: str, tmp_path: Path, **kwargs: Any) -> TableSource:
    kwargs.setdefault("cursors", CursorStore(tmp_path / "tables"))
    return TableSource(source, "test", TableRef(schema, "events"), **kwargs)


def test_the_primary_key_is_read_in_key_order_not_table_order(
    db: psycopg.Connection[Any], schema: str, source: SourceSettings, tmp_path: Path
) -> None:
    make_events(db, schema, 3)
    with table_source(source, schema, tmp_path) as table:
        shape = table.shape
    assert shape.primary_key == ("region", "id")  # table order would be (id, region)
    assert shape.timestamp_column == "created_at"  # the only timestamp column
    assert [c.name for c in shape.columns] == ["payload", "id", "created_at", "region", "amount"]
    assert [c.type for c in shape.columns] == ["jsonb", "int8", "timestamptz", "text", "numeric"]


def test_a_table_that_cannot_be_archived_is_refused_in_one_line(
    db: psycopg.Connection[Any], schema: str, source: SourceSettings, tmp_path: Path
) -> None:
    db.execute(
        sql.SQL("CREATE TABLE {} (ts timestamptz, v int)").format(sql.Identifier(schema, "nopk"))
    )
    db.execute(
        sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, a timestamptz, b timestamp, c date)").format(
            sql.Identifier(schema, "two")
        )
    )
    cases: list[tuple[str, str | None, type[Exception], str]] = [
        ("nopk", None, NoPrimaryKey, "has no primary key"),
        ("missing", None, TableNotFound, "no such table"),
        ("two", None, TimestampColumnError, r"several timestamp columns \(a, b\)"),
        ("two", "c", TimestampColumnError, "is date, not timestamp"),
        ("two", "nope", TimestampColumnError, "has no column 'nope'"),
    ]
    for table, column, error, message in cases:
        archiver = TableSource(source, "test", TableRef(schema, table), timestamp_column=column)
        with pytest.raises(error, match=message) as caught:
            archiver.open()
        assert "\n" not in str(caught.value)
    chosen = TableSource(source, "test", TableRef(schema, "two"), timestamp_column="b")
    with chosen:
        assert chosen.shape.timestamp_column == "b"


def test_keyset_batches_cover_every_old_row_once_in_order(
    db: psycopg.Connection[Any], schema: str, source: SourceSettings, tmp_path: Path
) -> None:
    make_events(db, schema, 100)
    expected = old_keys(db, schema)
    assert len(expected) == 70  # rows 31..100 days old; 1..30 are kept
    seen: list[tuple[str, ...]] = []
    sizes = []
    with table_source(source, schema, tmp_path, limits=Limits(batch_size=16)) as table:
        ts = table.shape.index("created_at")
        previous = ""
        while batch := table.select_batch(DAYS):
            sizes.append(len(batch))
            # rows come back as the codec's columns, checksummable
            assert all(len(rows.checksum(row)) == 64 for row in batch.rows)
            stamps = [str(row[ts].value) for row in batch.rows]
            assert stamps == sorted(stamps) and stamps[0] > previous
            previous = stamps[-1]
            seen.extend(batch.keys)
            table.commit()  # nothing deleted: the cursor alone moves on
    assert sizes == [16, 16, 16, 16, 6]
    assert seen == expected
    assert count(db, schema) == 100


def test_rows_of_the_same_timestamp_are_split_by_the_key_without_a_gap(
    db: psycopg.Connection[Any], schema: str, source: SourceSettings, tmp_path: Path
) -> None:
    table = sql.Identifier(schema, "events")
    db.execute(
        sql.SQL("CREATE TABLE {} (a int, b text, at timestamp, PRIMARY KEY (a, b))").format(table)
    )
    db.execute(
        sql.SQL(
            "INSERT INTO {} SELECT mod(g, 3), 'k' || g, '2001-01-01' FROM generate_series(1, 30) g"
        ).format(table)
    )
    expected = db.execute(
        sql.SQL("SELECT a::text, b FROM {} ORDER BY a, b").format(table)
    ).fetchall()
    seen: list[tuple[str, ...]] = []
    with table_source(source, schema, tmp_path, limits=Limits(batch_size=7)) as archiver:
        assert archiver.shape.timestamp_column == "at"  # timestamp without time zone
        while batch := archiver.select_batch(DAYS):
            seen.extend(batch.keys)
            archiver.commit()
    assert seen == [tuple(r) for r in expected]


def test_delete_removes_exactly_the_batch_and_rollback_keeps_it(
    db: psycopg.Connection[Any], schema: str, source: SourceSettings, tmp_path: Path
) -> None:
    make_events(db, schema, 100)
    expected = old_keys(db, schema)
    with table_source(source, schema, tmp_path, limits=Limits(batch_size=10)) as table:
        batch = table.select_batch(DAYS)
        assert table.delete(batch.keys) == 10
        table.rollback()
        assert count(db, schema) == 100 and table.after is None
        again = table.select_batch(DAYS)
        assert again.keys == batch.keys  # the rolled-back rows are the next batch again
        with pytest.raises(ValueError, match="keys of the open batch only"):
            table.delete([("r0", "1")])  # a young row, not locked by this batch
        assert table.delete(again.keys) == 10
        table.commit()
    assert old_keys(db, schema) == expected[10:]
    assert count(db, schema) == 90


def test_the_cursor_survives_a_new_table_source_and_moves_only_on_commit(
    db: psycopg.Connection[Any], schema: str, source: SourceSettings, tmp_path: Path
) -> None:
    make_events(db, schema, 100)
    expected = old_keys(db, schema)
    limits = Limits(batch_size=10)
    with table_source(source, schema, tmp_path, limits=limits) as first:
        first.select_batch(DAYS)
        first.commit()
        first.select_batch(DAYS)
        first.rollback()  # interrupted: this batch does not count
        kept = first.after
    with table_source(source, schema, tmp_path, limits=limits) as second:
        assert second.after == kept
        assert second.select_batch(DAYS).keys == tuple(expected[10:20])
        second.rollback()
        second.reset_cursor()
    with table_source(source, schema, tmp_path, limits=limits) as third:
        assert third.after is None
        assert third.select_batch(DAYS).keys == tuple(expected[:10])
        third.rollback()


def test_two_archivers_at_once_never_get_the_same_row(
    db: psycopg.Connection[Any], schema: str, source: SourceSettings, tmp_path: Path
) -> None:
    make_events(db, schema, 1000)
    expected = set(old_keys(db, schema))
    taken: dict[str, list[tuple[str, ...]]] = {"a": [], "b": []}
    both_hold_a_batch = threading.Barrier(2, timeout=WAIT_S)
    failures: list[BaseException] = []

    def archive(name: str) -> None:
        # Without a cursor store: each archiver walks the table from the beginning.
        limits = Limits(batch_size=25, lock_timeout_s=WAIT_S / 4)
        with table_source(source, schema, tmp_path, limits=limits, cursors=None) as table:
            first = True
            while batch := table.select_batch(DAYS):
                if first:  # both hold locked rows at the same time, once at least
                    both_hold_a_batch.wait()
                    first = False
                taken[name].extend(batch.keys)
                assert table.delete(batch.keys) == len(batch)
                table.commit()
            if first:
                both_hold_a_batch.abort()

    def run(name: str) -> None:
        try:
            archive(name)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(name,)) for name in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S * 3)
        assert not thread.is_alive()
    assert not failures, failures
    a, b = set(taken["a"]), set(taken["b"])
    assert a and b and not a & b
    assert a | b == expected
    assert len(taken["a"]) + len(taken["b"]) == len(expected)
    assert count(db, schema) == 1000 - len(expected)


def test_a_row_a_writer_holds_is_skipped_not_waited_for(
    db: psycopg.Connection[Any], schema: str, source: SourceSettings, tmp_path: Path
) -> None:
    make_events(db, schema, 100)
    expected = old_keys(db, schema)
    held = expected[0]
    with psycopg.connect(source.conninfo()) as writer:
        writer.execute(
            sql.SQL("SELECT 1 FROM {} WHERE region = %s AND id = %s FOR UPDATE").format(
                sql.Identifier(schema, "events")
            ),
            held,
        )
        limits = Limits(batch_size=5, lock_timeout_s=1)
        with table_source(source, schema, tmp_path, limits=limits) as table:
            batch = table.select_batch(DAYS)  # waiting would be a BatchTimeout after 1 s
            assert batch.keys == tuple(expected[1:6])
            table.rollback()
        writer.rollback()


def test_a_table_locked_by_someone_else_fails_the_batch_after_lock_timeout(
    db: psycopg.Connection[Any], schema: str, source: SourceSettings, tmp_path: Path
) -> None:
    make_events(db, schema, 10)
    with psycopg.connect(source.conninfo()) as other:
        other.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                sql.Identifier(schema, "events")
            )
        )
        limits = Limits(lock_timeout_s=0.5)
        # opened while it is locked: reading the catalog does not touch the table
        with table_source(source, schema, tmp_path, limits=limits) as table:
            started = time.monotonic()
            with pytest.raises(BatchTimeout, match="lock timeout: rolled back") as caught:
                table.select_batch(DAYS)
            assert 0.4 < time.monotonic() - started < WAIT_S
            assert "\n" not in str(caught.value)
            other.rollback()
            assert len(table.select_batch(DAYS)) == 0  # usable again: nothing is that old
            table.rollback()


def test_a_batch_past_its_timeout_is_rolled_back_and_the_source_reopens(
    db: psycopg.Connection[Any], schema: str, source: SourceSettings, tmp_path: Path
) -> None:
    make_events(db, schema, 100)
    limits = Limits(batch_size=5, batch_timeout_s=0.3)
    with table_source(source, schema, tmp_path, limits=limits) as table:
        for doing in ("DELETE", "COMMIT"):
            batch = table.select_batch(DAYS)
            deadline = time.monotonic() + WAIT_S
            while table.remaining_s() > 0 and time.monotonic() < deadline:
                time.sleep(0.05)  # polled until the batch's own deadline, bounded
            with pytest.raises(BatchTimeout, match=f"0.3 s transaction timeout before its {doing}"):
                if doing == "DELETE":
                    table.delete(batch.keys)
                else:
                    table.commit()
            assert table.after is None  # the cursor did not move
            table.open()  # the server may have ended the idle session: reconnect
            assert table.select_batch(DAYS).keys == batch.keys  # the rows are still there
            table.rollback()
    assert count(db, schema) == 100


def test_a_caller_that_never_comes_back_loses_its_batch_to_the_server(
    db: psycopg.Connection[Any], schema: str, source: SourceSettings, tmp_path: Path
) -> None:
    make_events(db, schema, 100)
    limits = Limits(batch_size=100, batch_timeout_s=1)
    with table_source(source, schema, tmp_path, limits=limits) as table:
        assert len(table.select_batch(DAYS)) == 70  # every old row locked, then idle
        free_rows = sql.SQL(
            "SELECT count(*) FROM (SELECT 1 FROM {} FOR UPDATE SKIP LOCKED) x"
        ).format(sql.Identifier(schema, "events"))
        free = 30
        deadline = time.monotonic() + WAIT_S
        while free == 30 and time.monotonic() < deadline:
            with db.transaction():
                found = db.execute(free_rows).fetchone()
            assert found is not None
            free = int(found[0])
            if free == 30:
                time.sleep(0.2)  # polled, bounded by WAIT_S
        assert free == 100  # idle_in_transaction_session_timeout ended the session


def test_hostile_identifiers_are_only_names(
    db: psycopg.Connection[Any], source: SourceSettings, tmp_path: Path
) -> None:
    schema = f'we"ird; DROP SCHEMA public; -- {uuid.uuid4().hex[:6]}'
    table = 'ev"ents"; DELETE FROM victim; --'
    ts, key = 'ts") < now(); DROP TABLE victim; --', "id) OR (1=1"
    db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        db.execute(sql.SQL("CREATE TABLE {} (v int)").format(sql.Identifier(schema, "victim")))
        db.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(sql.Identifier(schema, "victim")))
        db.execute(
            sql.SQL("CREATE TABLE {} ({} int PRIMARY KEY, {} timestamptz)").format(
                sql.Identifier(schema, table), sql.Identifier(key), sql.Identifier(ts)
            )
        )
        db.execute(
            sql.SQL(
                "INSERT INTO {} SELECT g, now() - make_interval(days => g * 20)"
                " FROM generate_series(1, 4) g"
            ).format(sql.Identifier(schema, table))
        )
        ref = TableRef(schema, table)
        with TableSource(source, "hostile", ref, cursors=CursorStore(tmp_path)) as archiver:
            assert archiver.shape.primary_key == (key,)
            assert archiver.dry_run(DAYS).rows == 3
            batch = archiver.select_batch(DAYS)
            assert batch.keys == (("4",), ("3",), ("2",))  # oldest first
            assert archiver.delete(batch.keys) == 3
            archiver.commit()
            assert archiver.select_batch(DAYS).keys == ()
            archiver.rollback()
        assert count(db, schema, table) == 1
        assert count(db, schema, "victim") == 1
    finally:
        db.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def test_dry_run_changes_and_locks_nothing(
    db: psycopg.Connection[Any], schema: str, source: SourceSettings, tmp_path: Path
) -> None:
    make_events(db, schema, 100)
    digest = sql.SQL("SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM {} t").format(
        sql.Identifier(schema, "events")
    )
    before = db.execute(digest).fetchone()
    store = CursorStore(tmp_path / "tables")
    with table_source(source, schema, tmp_path, cursors=store) as table:
        plan = table.dry_run(DAYS, batch_size=16)
        assert (plan.rows, plan.batches, plan.resumes_after) == (70, 5, None)
        assert plan.oldest is not None and plan.newest is not None and plan.oldest < plan.newest
        assert plan.newest < plan.cutoff
        # no row stays locked: another session takes them all at once, without waiting
        with db.transaction():
            everything = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} FOR UPDATE NOWAIT) x")
            found = db.execute(everything.format(sql.Identifier(schema, "events"))).fetchone()
            assert found is not None and found[0] == 100
    assert db.execute(digest).fetchone() == before
    assert not store.path("test", schema, "events").exists()
