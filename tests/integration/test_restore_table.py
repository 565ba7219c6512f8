"""``headrace restore-table`` against the real stack: rows archived by archive-table (the
archive group in a process of its own) are written back, compared with a copy of the
table taken before archiving, in SQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import pytest
from psycopg import sql

from headrace.settings import KafkaSettings
from tests.integration.test_archive import env  # noqa: F401 - the fixture, reused
from tests.integration.test_archive_table import (
    archive_table,
    consumer_process,
    db,  # noqa: F401 - the fixture, reused
    group_reads,
    schema,  # noqa: F401 - the fixture, reused
    stop,
    table_env,  # noqa: F401 - the fixture, reused
    wait_for,
)
from tests.integration.test_table_row_types import COLUMNS, ROWS, seed, tables  # noqa: F401
from tests.unit.test_cli import run

WAIT_S = 60.0


def restore(*args: str) -> list[str]:
    return ["restore-table", "--source", "t", *args]


def summary(out: str) -> dict[str, Any]:
    found = orjson.loads(out)
    assert isinstance(found, dict)
    return found


def one(conn: psycopg.Connection[Any], query: sql.Composable, *params: Any) -> Any:
    found = conn.execute(query, params or None).fetchone()
    assert found is not None
    value = found[0]  # db loads every value as its text form (rows.prepare)
    return int(value) if isinstance(value, str) and value.isdigit() else value


def missing(conn: psycopg.Connection[Any], s: str, left: str, right: str, names: list[str]) -> int:
    """Rows of ``left`` that ``right`` lacks, as a bag (EXCEPT ALL). json has no equality
    operator: its columns are compared as their exact text (``::text``)."""
    types = dict(COLUMNS)
    columns = sql.SQL(", ").join(
        sql.SQL("{}::text" if types.get(n) == "json" else "{}").format(sql.Identifier(n))
        for n in names
    )
    query = sql.SQL(
        "SELECT count(*) FROM (SELECT {c} FROM {l} EXCEPT ALL SELECT {c} FROM {r}) AS d"
    ).format(c=columns, l=sql.Identifier(s, left), r=sql.Identifier(s, right))
    return int(one(conn, query))


def archived_with_the_group(
    values: dict[str, str],
    kafka: KafkaSettings,
    capsys: pytest.CaptureFixture[str],
    *runs: list[str],
) -> None:
    """Run archive-table once per argument list, with the archive group running."""
    proc = consumer_process(values)
    try:
        wait_for(lambda: group_reads(kafka, values), WAIT_S, "the archive group to join")
        for argv in runs:
            code, _, err = run(argv, capsys)
            assert code == 0, err
    finally:
        stop(proc)


def test_every_type_round_trips_through_archive_and_restore(
    table_env: dict[str, str],  # noqa: F811 - the fixture
    kafka: KafkaSettings,
    tables: tuple[psycopg.Connection[Any], str],  # noqa: F811 - the fixture
    capsys: pytest.CaptureFixture[str],
) -> None:
    conn, s = tables
    for table in ("a", "b"):  # a timestamp column to archive by: the types' own may be NULL
        conn.execute(
            sql.SQL(
                "ALTER TABLE {} ADD COLUMN archived_at timestamptz NOT NULL DEFAULT '2000-01-01'"
            ).format(sql.Identifier(s, table))
        )
    seed(conn, s, ROWS)
    conn.execute(
        sql.SQL("CREATE TABLE {} AS SELECT * FROM {}").format(
            sql.Identifier(s, "copy"), sql.Identifier(s, "a")
        )
    )
    names = ["id", *(n for n, _ in COLUMNS), "archived_at"]
    archive = [
        "archive-table", "--source", "t", "--table", f"{s}.a",
        "--older-than", "90d", "--timestamp-column", "archived_at",
    ]  # fmt: skip
    archived_with_the_group(table_env, kafka, capsys, archive)
    count = sql.SQL("SELECT count(*) FROM {}")
    assert one(conn, count.format(sql.Identifier(s, "a"))) == 0  # archived, then deleted

    code, out, err = run(restore("--table", f"{s}.a", "--dry-run", "--json"), capsys)
    assert code == 0, err
    found = summary(out)
    assert (found["inserted"], found["dry_run"], found["rows"]) == (len(ROWS), True, len(ROWS))
    assert one(conn, count.format(sql.Identifier(s, "a"))) == 0  # a dry run changes nothing

    code, out, err = run(restore("--table", f"{s}.a", "--json"), capsys)
    assert code == 0, err
    found = summary(out)
    assert (found["events"], found["inserted"], found["present"]) == (len(ROWS), len(ROWS), 0)
    assert (found["differ"], found["bad_checksums"], found["versions"]) == (0, 0, 0)
    assert missing(conn, s, "copy", "a", names) == 0  # every row back, every value equal
    assert missing(conn, s, "a", "copy", names) == 0

    code, out, err = run(restore("--table", f"{s}.a", "--json"), capsys)
    assert code == 0, err
    found = summary(out)
    assert (found["inserted"], found["present"], found["differ"]) == (0, len(ROWS), 0)

    code, out, err = run(restore("--table", f"{s}.a", "--into", "b"), capsys)
    assert code == 0, err
    assert f"{s}.a into {s}.b: {len(ROWS)} rows restored, 0 already present" in out
    assert missing(conn, s, "copy", "b", names) == 0
    assert missing(conn, s, "b", "copy", names) == 0

    # The same database by --dsn: its source name is host:port/database, not "t", so
    # the rows archived as "t" are found with --archived-as only.
    conn.execute(
        sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
            sql.Identifier(s, "c"), sql.Identifier(s, "a")
        )
    )
    e = table_env
    dsn = (
        f"host={e['HEADRACE_SOURCES__T__HOST']} port={e['HEADRACE_SOURCES__T__PORT']}"
        f" dbname={e['HEADRACE_SOURCES__T__DATABASE']} user={e['HEADRACE_SOURCES__T__USER']}"
    )
    if "HEADRACE_SOURCES__T__PASSWORD" in e:
        dsn += f" password={e['HEADRACE_SOURCES__T__PASSWORD']}"
    by_dsn = ["restore-table", "--dsn", dsn, "--table", f"{s}.a", "--into", "c", "--json"]
    code, out, err = run(by_dsn, capsys)
    assert code == 0, err
    assert summary(out)["events"] == 0  # nothing was archived under that name
    code, out, err = run([*by_dsn, "--archived-as", "t"], capsys)
    assert code == 0, err
    assert summary(out)["inserted"] == len(ROWS)
    assert missing(conn, s, "copy", "c", names) == 0
    assert missing(conn, s, "c", "copy", names) == 0


def test_since_until_versions_differ_and_refusals(
    table_env: dict[str, str],  # noqa: F811 - the fixture
    kafka: KafkaSettings,
    db: psycopg.Connection[Any],  # noqa: F811 - the fixture
    schema: str,  # noqa: F811 - the fixture
    capsys: pytest.CaptureFixture[str],
) -> None:
    events, copy = sql.Identifier(schema, "events"), sql.Identifier(schema, "copy")
    db.execute(sql.SQL("CREATE TABLE {} AS SELECT * FROM {}").format(copy, events))
    # Row 1 is archived twice: deleted by the first run, re-inserted changed, archived again.
    reinsert = sql.SQL(
        "INSERT INTO {} SELECT id, created_at, amount, 'version 2', flag, tags, payload, blob,"
        " ratio FROM {} WHERE id = 1"
    ).format(events, copy)
    archived_with_the_group(table_env, kafka, capsys, archive_table(schema))
    db.execute(reinsert)
    archived_with_the_group(table_env, kafka, capsys, archive_table(schema))
    db.execute(sql.SQL("UPDATE {} SET note = 'version 2' WHERE id = 1").format(copy))

    now = datetime.now(UTC)
    since, until = (now - timedelta(days=130)).isoformat(), (now - timedelta(days=120)).isoformat()
    window = sql.SQL("SELECT count(*) FROM {} WHERE created_at >= %s AND created_at < %s")
    expected = one(db, window.format(copy), since, until)
    assert 0 < expected < 700
    code, out, err = run(
        restore("--table", f"{schema}.events", "--since", since, "--until", until, "--json"),
        capsys,
    )
    assert code == 0, err
    found = summary(out)
    assert (found["events"], found["rows"], found["versions"]) == (701, 700, 1)
    assert (found["inserted"], found["outside"]) == (expected, 700 - expected)
    assert one(db, window.format(events), since, until) == expected
    count = sql.SQL("SELECT count(*) FROM {}")
    assert one(db, count.format(events)) == 300 + expected

    # A restored row changed since: reported as differing, never overwritten.
    first = one(db, sql.SQL("SELECT min(id) FROM {} WHERE id <= 700").format(events))
    db.execute(sql.SQL("UPDATE {} SET note = 'changed' WHERE id = %s").format(events), (first,))
    code, out, err = run(restore("--table", f"{schema}.events"), capsys)
    assert code == 3, err
    assert f"{700 - expected} rows restored, {expected - 1} already present" in out
    assert f"1 differ from the table's (not overwritten; keys {first})" in out
    assert "1 keys had several versions, the latest restored" in out
    note = sql.SQL("SELECT note FROM {} WHERE id = %s")
    assert one(db, note.format(events), first) == "changed"
    db.execute(sql.SQL("UPDATE {} SET note = %s WHERE id = %s").format(events),
               (one(db, note.format(copy), first), first))  # fmt: skip
    columns = sql.SQL("id, created_at, amount, note, flag, tags, payload, blob, ratio")
    both = sql.SQL("SELECT count(*) FROM (SELECT {c} FROM {a} EXCEPT ALL SELECT {c} FROM {b}) d")
    assert one(db, both.format(c=columns, a=copy, b=events)) == 0  # row 1 is version 2
    assert one(db, both.format(c=columns, a=events, b=copy)) == 0

    # A target whose column has another type is refused before anything is written.
    other = sql.Identifier(schema, "other")
    db.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(other, events))
    db.execute(
        sql.SQL("ALTER TABLE {} ALTER note TYPE varchar, ADD PRIMARY KEY (id)").format(other)
    )
    code, out, err = run(restore("--table", f"{schema}.events", "--into", "other"), capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"{schema}.other.note is varchar but was archived as text" in err
    assert one(db, count.format(other)) == 0
    # Same type name, another typmod: numeric(30, 2) would round, so it is refused too.
    db.execute(
        sql.SQL("ALTER TABLE {} ALTER note TYPE text, ALTER amount TYPE numeric(30, 2)").format(
            other
        )
    )
    code, out, err = run(restore("--table", f"{schema}.events", "--into", "other"), capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"{schema}.other.amount does not hold the archived value" in err
    assert one(db, count.format(other)) == 0


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--since", "yesterday"], "is not an ISO date or timestamp"),
        (["--since", "2024-02-01", "--until", "2024-01-01"], "--since must be before --until"),
        (["--dsn", "host=x"], "give one of --source NAME and --dsn"),
        (["--into", "a."], "is not SCHEMA.TABLE"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    extra: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(restore("--table", "public.t", *extra), capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and needle in err, err
