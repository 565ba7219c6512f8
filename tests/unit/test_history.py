"""The operational history without services: the recorder's queue, drops and flushes,
the SQLite store's answers, time parsing and the ``headrace metrics`` commands."""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from headrace.history import make_recorder, open_recorder, record_final
from headrace.history.base import Bucket, Component, HistoryStore, Row, Sample
from headrace.history.errors import HistoryError
from headrace.history.query import parse_time
from headrace.history.recorder import Recorder
from headrace.history.sqlite import SqliteHistory
from headrace.settings import load_settings
from tests import history_conformance
from tests.unit.test_cli import run


class MemoryStore(HistoryStore):
    """Writes kept in a list, one entry per transaction; ``fail`` makes writes fail."""

    where = "memory"

    def __init__(self) -> None:
        self.writes: list[list[Row]] = []
        self.fail = False
        self.closed = 0
        self.written = threading.Event()

    def write(self, rows: Sequence[Row]) -> None:
        if self.fail:
            raise HistoryError("down")
        self.writes.append(list(rows))
        self.written.set()

    @property
    def rows(self) -> list[Row]:
        return [row for write in self.writes for row in write]

    def delete_before(self, ts: float) -> int:
        return 0

    def samples(self, since: float, until: float, component: str | None) -> list[Sample]:
        return []

    def buckets(
        self, since: float, until: float, component: str | None, width_s: float | None
    ) -> list[Bucket]:
        return []

    def last(self, metric: str, since: float, until: float) -> dict[str, Sample]:
        return {}

    def components(self) -> list[Component]:
        return []

    def close(self) -> None:
        self.closed += 1


def values(store: MemoryStore, metric: str) -> list[float]:
    return [row[3] for row in store.rows if row[2] == metric]


def test_a_full_queue_drops_the_oldest_and_counts_them() -> None:
    store = MemoryStore()
    recorder = Recorder(store, "c", queue_size=3)
    for i in range(5):
        recorder.record("n", i)
    assert recorder.dropped == 2
    assert recorder.flush() == 4  # the three newest, and the drops as a sample
    assert values(store, "n") == [2, 3, 4]
    assert values(store, "history.dropped") == [2.0]
    recorder.record("n", 5)
    recorder.flush()
    assert values(store, "history.dropped") == [2.0]  # only new drops are recorded


def test_a_flush_writes_everything_queued_in_one_transaction() -> None:
    store = MemoryStore()
    recorder = Recorder(store, "group", clock=lambda: 7.0)
    for i in range(1000):
        recorder.record("processed", i)
    assert recorder.flush() == 1000
    assert len(store.writes) == 1
    assert store.writes[0][:2] == [(7.0, "group", "processed", 0), (7.0, "group", "processed", 1)]
    assert recorder.flush() == 0 and len(store.writes) == 1  # nothing queued: no write


def test_close_flushes_what_is_queued_and_a_process_sample() -> None:
    store = MemoryStore()
    recorder = Recorder(store, "c", flush_interval_s=3600).start()  # no timed flush comes
    recorder.record("processed", 3)
    recorder.close()
    assert values(store, "processed") == [3]
    metrics = {row[2] for row in store.rows}
    assert {"process.cpu_seconds", "process.rss_bytes", "process.uptime_seconds"} <= metrics
    assert store.closed == 1


def test_the_flusher_writes_on_its_own_every_interval() -> None:
    store = MemoryStore()
    with Recorder(store, "c", flush_interval_s=0.05) as recorder:
        recorder.record("processed", 1)
        assert store.written.wait(10), "no flush within 10 s"
        assert values(store, "processed") == [1]


def test_a_failing_store_keeps_the_samples_for_the_next_flush_within_the_bound() -> None:
    store = MemoryStore()
    store.fail = True
    recorder = Recorder(store, "c", queue_size=4)
    for i in range(3):
        recorder.record("n", i)
    assert recorder.flush() == 0
    for i in range(3, 6):
        recorder.record("n", i)
    assert recorder.flush() == 0  # six pending, four kept: the oldest two are dropped
    assert recorder.dropped == 2
    store.fail = False
    assert recorder.flush() == 5  # the four kept, and the drop count
    assert values(store, "n") == [2, 3, 4, 5]
    assert values(store, "history.dropped") == [2.0]


def test_a_disabled_history_makes_no_recorder(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    settings = load_settings(history={"enabled": False, "sqlite_path": path})
    assert make_recorder(settings, "c") is None and open_recorder(settings, "c") is None
    record_final(settings, "ingest", {"files": 1})
    assert not path.exists()


def test_record_final_writes_the_figures_now(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    settings = load_settings(history={"sqlite_path": path})
    record_final(settings, "ingest", {"files": 3, "bytes": 10})
    store = SqliteHistory(path, readonly=True)
    found = {s.metric: s.value for s in store.samples(0, 2e9, "ingest")}
    store.close()
    assert found["files"] == 3 and found["bytes"] == 10 and "process.cpu_seconds" in found


def test_record_final_never_fails_the_command(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    settings = load_settings(history={"sqlite_path": blocker / "h.sqlite3"})  # not a directory
    record_final(settings, "ingest", {"files": 1})  # a warning, no exception


def test_the_sqlite_store_answers_the_conformance_queries(tmp_path: Path) -> None:
    store = SqliteHistory(tmp_path / "h.sqlite3")
    history_conformance.seed(store)
    history_conformance.check(store)
    store.close()


def test_a_read_only_store_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "none" / "h.sqlite3"
    store = SqliteHistory(path, readonly=True)
    with pytest.raises(HistoryError, match="no operational history"):
        store.components()
    assert not path.parent.exists()


NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1h", NOW - 3600),
        ("30m", NOW - 1800),
        ("90s", NOW - 90),
        ("7d", NOW - 7 * 86_400),
        ("2w", NOW - 14 * 86_400),
        ("1h30m", NOW - 5400),
        ("1.5h", NOW - 5400),
        ("2026-12-01T10:00", NOW - 7200),  # no offset: UTC
        ("2026-12-01T10:00:00+00:00", NOW - 7200),
        ("2026-12-01T11:00:00+01:00", NOW - 7200),
        ("2026-12-01", NOW - 12 * 3600),
    ],
)
def test_a_time_is_iso_or_a_duration_back_from_now(text: str, expected: float) -> None:
    assert parse_time(text, lambda: NOW) == expected


@pytest.mark.parametrize("text", ["", "1x", "h", "-1h", "yesterday", "2026-13-01"])
def test_a_bad_time_says_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match="neither an ISO time"):
        parse_time(text, lambda: NOW)


@pytest.fixture
def seeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "h.sqlite3"
    monkeypatch.setenv("HEADRACE_HISTORY__SQLITE_PATH", str(path))
    store = SqliteHistory(path)
    history_conformance.seed(store)
    store.close()
    return path


T0 = "2026-01-01T00:00:00"


def test_metrics_export_json_and_csv(seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["metrics", "export", "--since", T0, "--until", "2026-01-01T00:02:00"]
    code, out, err = run([*args, "--component", "ingest"], capsys)
    assert code == 0, err
    assert [(r["metric"], r["value"]) for r in json.loads(out)] == [("bytes", 4096), ("files", 12)]
    code, out, err = run([*args, "--aggregate", "1m", "--format", "csv"], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["bucket", "component", "metric", "count", "min", "max", "avg", "sum"]
    processed = [(r["bucket"], r["sum"]) for r in rows if r["metric"] == "processed"]
    assert processed == [
        ("2026-01-01T00:00:00.000+00:00", "150.0"),
        ("2026-01-01T00:01:00.000+00:00", "25.0"),
    ]


def test_metrics_components_and_summary(seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["metrics", "components"], capsys)
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()] == ["headrace.archive", "ingest"]
    args = ["metrics", "summary", "--since", T0, "--until", "2026-01-01T00:03:20"]
    code, out, err = run(args, capsys)
    assert code == 0, err
    assert out.strip() == (
        "headrace.archive: 175 processed (0.9/s), 2 errors, lag at the end 10, 1 restarts"
    )
    code, out, err = run([*args, "--json"], capsys)
    assert json.loads(out)[0]["restarts"] == 1


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["export", "--since", "yesterday"], "'yesterday' is neither an ISO time"),
        (["export", "--since", "1h", "--until", "2h"], "is not after --since"),
        (["export", "--since", "1h", "--aggregate", "5m"], "'5m' is not one of"),
        (["export", "--since", "1h", "--format", "xml"], "'xml' is not one of"),
        (["export"], "Missing option '--since'"),
        (["summary", "--since", "1 hour"], "'1 hour' is neither an ISO time"),
    ],
)
def test_metrics_bad_options_are_one_line_and_exit_2(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["metrics", *args], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and says in err, err


def test_metrics_without_a_history_is_one_line_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "no" / "h.sqlite3"
    monkeypatch.setenv("HEADRACE_HISTORY__SQLITE_PATH", str(path))
    code, _out, err = run(["metrics", "components"], capsys)
    assert code == 1
    assert err.strip() == f"headrace: error: no operational history at {path}: nothing recorded"
    assert not path.parent.exists()
