"""``headrace db stats|query`` on a SQLite database: tables, JSON, one-line errors."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from headrace import cli
from storage.db.sqlite import SqliteDatabase
from tests.db_conformance import version


@pytest.fixture
def db_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "load" / "db.sqlite3"
    monkeypatch.setenv("HEADRACE_LOAD__SQLITE_PATH", str(path))
    monkeypatch.setitem(cli.SUBCOMMANDS, "db", "storage.db.cli:db")
    monkeypatch.setenv("COLUMNS", "200")  # rich tables as wide as a terminal could be
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 0), out, err


def fill(path: Path) -> None:
    with SqliteDatabase(path) as db:
        db.migrate()
        db.write(
            [
                version("src/a.py", 1, 1, content=b"print('secret-bytes')"),
                version("src/deep/b.py", 1, 2),
                version("README.md", 1, 3),
                version("src/gone.py", 1, 4, deleted=True),
            ]
        )


def test_stats_on_an_empty_database(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with SqliteDatabase(db_path) as database:  # what the load group makes on its start
        database.migrate()
    code, out, _ = run(["db", "stats", "--json"], capsys)
    assert code == 0
    stats = orjson.loads(out)
    assert (stats["backend"], stats["files"], stats["runs"]) == ("sqlite", 0, 0)


def test_stats_as_a_table(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fill(db_path)
    code, out, _ = run(["db", "stats"], capsys)
    assert code == 0
    assert "load database (sqlite)" in out and "inline" in out and "deleted" in out


def test_query_as_json_lines_shows_no_content(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(db_path)
    code, out, _ = run(["db", "query", "--project", "p", "--path", "src/*.py", "--json"], capsys)
    assert code == 0
    rows = [orjson.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in rows] == ["src/a.py", "src/deep/b.py"]
    assert rows[0]["content_bytes"] == len(b"print('secret-bytes')")
    assert "content" not in rows[0] and "secret-bytes" not in out
    assert rows[0]["event_time"].startswith("1970-01-01T00:00:00.001")


def test_query_as_a_table_with_deleted_and_limit(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(db_path)
    code, out, _ = run(["db", "query", "--project", "p", "--deleted"], capsys)
    assert code == 0 and "src/gone.py (deleted)" in out and "README.md" in out
    code, out, _ = run(["db", "query", "--project", "p", "--limit", "1", "--json"], capsys)
    assert [orjson.loads(line)["path"] for line in out.splitlines()] == ["README.md"]


def test_query_needs_a_project(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["db", "query"], capsys)
    assert code == 2 and "--project" in err


def test_a_database_error_is_one_line(
    db_path: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db_path.mkdir(parents=True)  # a directory where the file should be
    code, out, err = run(["db", "stats"], capsys)
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("headrace: error: ")
    assert "Traceback" not in err
