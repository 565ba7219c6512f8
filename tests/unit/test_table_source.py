"""The table archiver's database side without a database: names, the timestamp rule,
the kept cursors, and a TableSource that does nothing until it is opened."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from headrace.errors import ServiceUnavailable
from headrace.settings import SourceSettings, TablesSettings
from producers.errors import TimestampColumnError
from producers.tables import catalog
from producers.tables.catalog import TableRef, dsn_source_name
from producers.tables.cursors import Cursor, CursorStore, Position
from producers.tables.source import Limits, TableSource
from schemas.models import Column

PASSWORD = "Src-pw-9f2c-e81a"  # noqa: S105 - a test value


def test_table_names_parse_at_the_first_dot() -> None:
    assert TableRef.parse("audit.events") == TableRef("audit", "events")
    assert TableRef.parse("events") == TableRef("public", "events")
    assert TableRef.parse("s.with.dots") == TableRef("s", "with.dots")
    for bad in (".t", "s.", ""):
        with pytest.raises(ValueError, match="is not SCHEMA.TABLE"):
            TableRef.parse(bad)


def columns(*pairs: tuple[str, str]) -> tuple[Column, ...]:
    return tuple(Column(name=name, type=type_) for name, type_ in pairs)


def test_the_timestamp_column_is_the_one_named_or_the_only_one() -> None:
    ref = TableRef("s", "t")
    one = columns(("id", "int8"), ("at", "timestamptz"), ("day", "date"))
    assert catalog.choose_timestamp_column(ref, one, None) == "at"
    two = columns(("a", "timestamp"), ("b", "timestamptz"))
    assert catalog.choose_timestamp_column(ref, two, "b") == "b"
    with pytest.raises(TimestampColumnError, match=r"several timestamp columns \(a, b\)"):
        catalog.choose_timestamp_column(ref, two, None)
    with pytest.raises(TimestampColumnError, match="has no timestamp or timestamptz column"):
        catalog.choose_timestamp_column(ref, columns(("day", "date")), None)
    with pytest.raises(TimestampColumnError, match="s.t.day is date, not timestamp"):
        catalog.choose_timestamp_column(ref, one, "day")
    with pytest.raises(TimestampColumnError, match="has no column 'gone'"):
        catalog.choose_timestamp_column(ref, one, "gone")


def test_a_cursor_round_trips_and_is_replaced_atomically(tmp_path: Path) -> None:
    store = CursorStore(tmp_path / "tables")
    assert store.load("db", "s", "t") is None
    cursor = Cursor("at", ("region", "id"), Position("2024-01-01 00:00:00+00", ("r1", "42")))
    store.save("db", "s", "t", cursor)
    assert store.load("db", "s", "t") == cursor
    assert CursorStore(tmp_path / "tables").load("db", "s", "t") == cursor  # a new store
    newer = Cursor("at", ("region", "id"), Position("2024-01-02 00:00:00+00", ("r0", "7")))
    store.save("db", "s", "t", newer)
    assert store.load("db", "s", "t") == newer
    assert [p.name for p in (tmp_path / "tables").iterdir()] == [store.path("db", "s", "t").name]
    assert store.load("other-db", "s", "t") is None
    store.clear("db", "s", "t")
    assert store.load("db", "s", "t") is None
    store.clear("db", "s", "t")  # clearing twice is fine


def test_a_hostile_table_name_stays_inside_the_state_dir(tmp_path: Path) -> None:
    store = CursorStore(tmp_path)
    for table in ("../../etc/passwd", "a/b", "..", "t\nx", "é💧"):
        path = store.path("db", "s", table)
        assert path.parent == tmp_path and path.name.startswith("cursor-")
        store.save("db", "s", table, Cursor("at", ("id",), Position("x", ("1",))))
        assert json.loads(path.read_text())["table"] == table
    assert len(list(tmp_path.iterdir())) == 5


def test_an_unreadable_cursor_is_ignored_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = CursorStore(tmp_path)
    store.path("db", "s", "t").write_text('{"after": ')
    assert store.load("db", "s", "t") is None
    assert "ignoring the unreadable table cursor" in caplog.text


def test_limits_come_from_settings() -> None:
    tables = TablesSettings(batch_size=5, lock_timeout_s=1, statement_timeout_s=2)
    assert Limits.from_settings(tables) == Limits(5, 1, 2, 1800)
    assert Limits() == Limits.from_settings(TablesSettings())  # the same defaults


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_table_source_connects_on_open_only_and_never_shows_its_password(
    tmp_path: Path,
) -> None:
    source = SourceSettings(
        host="127.0.0.1", port=closed_port(), database="d", user="u", password=PASSWORD
    )
    table = TableSource(source, "db", TableRef("s", "t"), cursors=CursorStore(tmp_path / "x"))
    assert not (tmp_path / "x").exists()  # nothing touched yet
    with pytest.raises(RuntimeError, match=r"open\(\) first"):
        table.shape  # noqa: B018 - the property raises
    with pytest.raises(ServiceUnavailable) as caught:
        table.open()
    text = str(caught.value)
    assert text.startswith(f"PostgreSQL source db is not available at u@127.0.0.1:{source.port}/d")
    assert PASSWORD not in text and "\n" not in text


def test_a_dsn_source_is_named_once_in_its_error() -> None:
    port = closed_port()
    source = SourceSettings.from_dsn(f"host=127.0.0.1 port={port} dbname=d user=u")
    table = TableSource(source, dsn_source_name(source), TableRef("public", "t"))
    with pytest.raises(ServiceUnavailable) as raised:
        table.open()
    text = str(raised.value)
    assert text.startswith(f"PostgreSQL (--dsn) is not available at u@127.0.0.1:{port}/d"), text
