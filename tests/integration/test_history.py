"""The operational history against real services: SQLite and PostgreSQL answer alike,
a SIGKILLed process loses at most the documented window, and the archive group's
processed samples add up to what it wrote."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from headrace.history.base import HistoryStore
from headrace.history.errors import HistoryError
from headrace.history.postgres import PostgresHistory
from headrace.history.query import export
from headrace.history.sqlite import SqliteHistory
from headrace.settings import KafkaSettings, PostgresSettings, RegistrySettings
from tests import history_conformance
from tests.integration.test_archive import drain, env, publish, wait_for  # noqa: F401 - env: the fixture
from tests.unit.test_cli import run


@pytest.fixture
def pg_schema(postgres: PostgresSettings) -> Iterator[str]:
    schema = f"test_history_{uuid.uuid4().hex[:10]}"
    yield schema
    with psycopg.connect(postgres.conninfo(), autocommit=True) as db:
        db.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def test_sqlite_and_postgresql_give_the_same_answers(
    tmp_path: Path, postgres: PostgresSettings, pg_schema: str
) -> None:
    stores: list[HistoryStore] = [
        SqliteHistory(tmp_path / "h.sqlite3"),
        PostgresHistory(postgres, pg_schema),
    ]
    exports = []
    for store in stores:
        history_conformance.seed(store)
        t0 = history_conformance.T0
        exports.append(
            [
                export(store, t0, t0 + 7200.0),
                export(store, t0 + 30.0, t0 + 3700.0, aggregate="1m"),
                export(store, t0, t0 + 7200.0, component="headrace.archive", aggregate="1h"),
            ]
        )
        history_conformance.check(store)  # deletes at its end: after the exports
        store.close()
    assert exports[0] == exports[1]
    # a read-only store finds the history, and none where nothing was recorded
    reader = PostgresHistory(postgres, pg_schema, readonly=True)
    assert [c.name for c in reader.components()] == ["headrace.archive"]
    reader.close()
    with pytest.raises(HistoryError, match="no operational history"):
        PostgresHistory(postgres, pg_schema + "_none", readonly=True).components()


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from headrace.history.recorder import Recorder
    from headrace.history.sqlite import SqliteHistory

    recorder = Recorder(
        SqliteHistory(Path(sys.argv[1])), "child",
        flush_interval_s=float(sys.argv[2]), process_interval_s=0.1,
    ).start()
    n = 0
    while True:
        recorder.record("seq", n)
        n += 1
        time.sleep(0.002)
    """
)


def stored(path: Path, metric: str) -> list[tuple[float, float]]:
    """The stored samples of ``metric``: (ts, value), by value; none before the table is."""
    if not path.exists():
        return []
    with closing(sqlite3.connect(path)) as db:
        try:
            found: list[tuple[float, float]] = db.execute(
                "SELECT ts, value FROM samples WHERE metric = ? ORDER BY value", (metric,)
            ).fetchall()
        except sqlite3.OperationalError:  # the child has not made its table yet
            return []
        return found


def test_a_sigkilled_process_loses_at_most_the_documented_window(tmp_path: Path) -> None:
    """The child records a numbered sample every 2 ms; it is killed late in a flush
    interval once 1,000 are stored. Every sample up to the last stored is there (no
    gap), and the last stored is at most flush_interval_s + one flush's duration older
    than the kill (the longest flush the child recorded; the flush the kill interrupted
    is not recorded, hence a margin of 0.25 s, and the 2 ms between samples)."""
    path, interval = tmp_path / "h.sqlite3", 0.5
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(interval)])
    try:
        wait_for(lambda: len(stored(path, "seq")) >= 1000, 60, "samples")
        # A flush has just been seen: the kill lands late in the interval that follows,
        # where the most is unflushed (not a wait for anything).
        time.sleep(interval * 0.9)
        killed_at = time.time()
        child.send_signal(signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    samples = stored(path, "seq")
    assert [int(v) for _, v in samples] == list(range(len(samples)))  # nothing lost before
    flush_max = max(v for _, v in stored(path, "history.flush_seconds"))
    lost_s = killed_at - samples[-1][0]
    print(f"lost the last {lost_s:.3f} s; window {interval} s + flush {flush_max:.3f} s")
    assert lost_s <= interval + flush_max + 0.002 + 0.25


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_archive_groups_processed_samples_add_up_to_what_it_wrote(
    backend: str,
    env: dict[str, str],  # noqa: F811 - the fixture
    kafka: KafkaSettings,
    registry: RegistrySettings,
    postgres: PostgresSettings,
    pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if backend == "postgres":
        for key, value in {
            "BACKEND": "postgres",
            "POSTGRES_SCHEMA": pg_schema,
        }.items():
            monkeypatch.setenv(f"HEADRACE_HISTORY__{key}", value)
        for key in ("host", "port", "user", "database"):
            monkeypatch.setenv(f"HEADRACE_POSTGRES__{key.upper()}", str(getattr(postgres, key)))
        monkeypatch.setenv("HEADRACE_POSTGRES__PASSWORD", postgres.password.get_secret_value())
    publish(env, kafka, registry, 0, 300)
    assert "300 records written" in drain(capsys)
    group = env["HEADRACE_CONSUMER__GROUP_PREFIX"] + "archive"
    code, out, err = run(["metrics", "export", "--since", "1h", "--component", group], capsys)
    assert code == 0, err
    rows = json.loads(out)
    by_metric: dict[str, list[float]] = {}
    for row in rows:
        by_metric.setdefault(row["metric"], []).append(row["value"])
    assert sum(by_metric["processed"]) == 300
    assert sum(by_metric["failed"]) == 0
    assert by_metric["process.start"] == [1]
    assert by_metric["lag"][-1] == 0  # caught up
    assert len(by_metric["batch_seconds"]) == len(by_metric["processed"])
    assert "process.rss_bytes" in by_metric  # the last process sample, at close
    code, out, err = run(["metrics", "summary", "--since", "1h", "--json"], capsys)
    assert code == 0, err
    (found,) = [g for g in json.loads(out) if g["component"] == group]
    assert (found["processed"], found["errors"], found["restarts"]) == (300, 0, 0)
    # a second run is a restart
    assert "0 records written" in drain(capsys)
    code, out, err = run(["metrics", "summary", "--since", "1h", "--json"], capsys)
    (found,) = [g for g in json.loads(out) if g["component"] == group]
    assert (found["processed"], found["restarts"]) == (300, 1)
    assert os.environ["HEADRACE_HISTORY__SQLITE_PATH"]  # never the checkout's
