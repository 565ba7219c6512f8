"""archive-table's run controls, without services: the pacer, the metrics, the
transactional id per slot, the archive group it starts, and its options' errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from headrace.settings import SourceSettings
from producers.errors import ArchiveNotRunning
from producers.tables.archive_process import ArchiveProcess
from producers.tables.archiver import Pacer, transactional_id
from producers.tables.catalog import TableRef, dsn_source_name
from producers.tables.metrics import TableMetrics
from tests.unit.test_cli import run


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_pacer_holds_the_average_rate_and_caps_the_batch() -> None:
    clock = Clock()
    pacer = Pacer(500.0, clock, clock.sleep)
    assert pacer.batch_size(10_000) == 500  # no batch longer than a second's rows
    pacer.wait()  # the first batch goes at once
    pacer.done(500)
    clock.now += 0.2  # the batch took 0.2 s
    pacer.wait()
    assert clock.slept == [pytest.approx(0.8)]  # 500 rows at 500 rows/s: 1 s a batch
    pacer.done(500)
    clock.now += 3.0  # a slow batch: no sleep, and no catching up beyond the rate
    pacer.wait()
    assert len(clock.slept) == 1
    assert pacer.slept == pytest.approx(0.8)


def test_without_a_rate_the_pacer_never_sleeps() -> None:
    clock = Clock()
    pacer = Pacer(None, clock, clock.sleep)
    assert pacer.batch_size(10_000) == 10_000
    for _ in range(3):
        pacer.wait()
        pacer.done(10_000)
    assert clock.slept == []


def test_a_rate_below_one_row_a_second_still_moves_a_row_a_batch() -> None:
    assert Pacer(0.5).batch_size(100) == 1
    with pytest.raises(ValueError, match="positive"):
        Pacer(0)


def test_metrics_count_rows_batches_and_failures_per_source_and_table() -> None:
    metrics = TableMetrics("orders", "public.events")
    metrics.rows_archived.inc(300)
    metrics.batch("committed")
    metrics.batch("rolled_back")
    metrics.verification_failed("checksum")
    metrics.batch_seconds.observe(1.5)
    text = generate_latest(metrics.registry).decode()
    labels = {"source": "orders", "table": "public.events"}
    sample = metrics.registry.get_sample_value
    assert sample("headrace_table_rows_archived_total", labels) == 300
    assert sample("headrace_table_batches_total", {**labels, "outcome": "rolled_back"}) == 1
    assert sample("headrace_table_batches_total", {**labels, "outcome": "committed"}) == 1
    failures = "headrace_table_verification_failures_total"
    assert sample(failures, {**labels, "reason": "checksum"}) == 1
    assert sample(failures, {**labels, "reason": "timeout"}) == 0  # exported before any
    assert sample("headrace_table_batch_seconds_count", labels) == 1
    assert "# TYPE headrace_table_batch_seconds histogram" in text


def test_metrics_are_served_while_the_run_lasts() -> None:
    import httpx  # noqa: PLC0415 - this test only

    metrics = TableMetrics("orders", "public.events")
    port = metrics.serve("127.0.0.1", 0)
    try:
        metrics.rows_deleted.inc(7)
        body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert 'headrace_table_rows_deleted_total{source="orders",table="public.events"} 7.0' in (
            body
        )
    finally:
        metrics.close()


def test_each_slot_has_its_own_transactional_id() -> None:
    ref = TableRef("public", "events")
    assert transactional_id("s", ref, 0) != transactional_id("s", ref, 1)
    assert transactional_id("s", ref) == transactional_id("s", ref, 0)


class NeverJoined:
    topic = "headrace.row-events"

    def members(self) -> tuple[int, bool]:
        return 0, False


def test_an_archive_group_that_exits_at_once_is_one_line_with_its_last_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The child's command: a Python that prints a line and fails, as a bad setting would.
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    (tmp_path / "python").write_text("#!/bin/sh\necho 'headrace: error: no broker here'\nexit 1\n")
    (tmp_path / "python").chmod(0o755)
    process = ArchiveProcess(tmp_path / "state")
    with pytest.raises(ArchiveNotRunning) as raised:
        process.start(NeverJoined(), timeout_s=30)  # type: ignore[arg-type]
    message = str(raised.value)
    assert "exited (1): headrace: error: no broker here" in message
    assert "nothing was archived" in message
    assert not process.running


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--max-rows-per-second", "0"], "--max-rows-per-second"),
        (["--metrics-port", "70000"], "--metrics-port"),
        (["--archive-timeout", "-1"], "--archive-timeout"),
    ],
)
def test_bad_run_options_are_one_line_and_exit_2(
    extra: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["archive-table", "--source", "t", "--table", "a.b", "--older-than", "9d", *extra]
    code, _, err = run(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "unexpected" not in err, err


def test_a_dsn_source_is_named_by_its_server_and_database_never_its_credentials() -> None:
    one = SourceSettings.from_dsn("host=db1 port=5433 dbname=shop user=u password=hunter2")
    other = SourceSettings.from_dsn("postgresql://u:hunter2@db2:5433/shop")
    assert dsn_source_name(one) == "db1:5433/shop"
    assert dsn_source_name(other) == "db2:5433/shop"
    assert "hunter2" not in dsn_source_name(one) + dsn_source_name(other)
