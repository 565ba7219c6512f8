"""The producer's run state: records, the journal of transactions, resume, pruning."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from producers.ingest import Ingest, IngestOptions
from producers.runs import (
    Batch,
    FileEntry,
    ManifestEntry,
    Probe,
    RunRecord,
    RunStateError,
    RunStatus,
    RunStore,
    check_run_id,
)
from producers.sources import DirectorySource
from schemas.models import FileEvent, RunEvent, RunEventKind
from tests.unit.test_cli import run


def record(run_id: str, status: RunStatus = RunStatus.RUNNING, **fields: object) -> RunRecord:
    values: dict[str, object] = {
        "project": "p",
        "source": "/src",
        "source_kind": "directory",
        "commit": None,
        "transactional_id": f"t.{run_id}",
        "started_at": "2026-11-01T00:00:00+00:00",
        "status": status,
    }
    values.update(fields)
    return RunRecord(run_id=run_id, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize("good", ["a", "run-1", "2026.12.01_x", "f" * 128])
def test_run_ids_that_name_a_directory_safely_are_accepted(good: str) -> None:
    assert check_run_id(good) == good


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "-x", "f" * 129, "a b", "é"])
def test_run_ids_that_are_not_a_plain_name_are_refused(bad: str) -> None:
    with pytest.raises(RunStateError, match="is not 1-128 letters"):
        check_run_id(bad)


def batch(number: int, *paths: str, started: bool = False) -> Batch:
    files = [FileEntry(p, "upsert", "0" * 64, 1, "inline", 5) for p in paths]
    return Batch(number, files, skipped=[(f"skip{number}", "UNREADABLE", "why")], started=started)


def test_the_journal_replays_committed_batches_and_keeps_the_pending_one(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.save(record("r"))
    journal = store.journal("r")
    journal.pending(batch(0, "a", "b", started=True), Probe("t", 0, 0))
    journal.committed(batch(0))
    journal.pending(batch(1, "c"), Probe("t", 1, 4))
    journal.aborted(batch(1))
    journal.pending(batch(2, "d"), Probe("t", 2, 9))
    checkpoint = journal.replay()
    assert sorted(checkpoint.files) == ["a", "b"] and checkpoint.started
    assert checkpoint.skipped == {"skip0": ("UNREADABLE", "why")}
    assert checkpoint.batches == 3
    assert checkpoint.pending is not None
    pending, probe = checkpoint.pending
    assert [f.path for f in pending.files] == ["d"] and probe == Probe("t", 2, 9)


def test_a_torn_last_line_is_a_write_the_crash_interrupted(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.save(record("r"))
    journal = store.journal("r")
    journal.pending(batch(0, "a"), Probe("t", 0, 0))
    journal.committed(batch(0))
    with journal.path.open("ab") as out:
        out.write(b'{"t": "pending", "batch": 1, "fil')
    assert sorted(journal.replay().files) == ["a"]
    assert journal.replay().pending is None


def test_a_corrupt_line_before_the_last_is_an_error_naming_it(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.save(record("r"))
    journal = store.journal("r")
    journal.path.write_bytes(
        b'{"t": "committed", "batch": 0}\nnot json\n{"t": "aborted", "batch": 1}\n'
    )
    with pytest.raises(RunStateError, match="line 2 is not JSON"):
        journal.replay()


def test_records_round_trip_and_the_base_is_the_newest_completed_run(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.save(record("old", RunStatus.COMPLETED, completed_at="2026-11-01T01:00:00+00:00"))
    store.save(record("new", RunStatus.COMPLETED, completed_at="2026-11-02T01:00:00+00:00"))
    store.save(record("bad", RunStatus.INCOMPLETE, completed_at="2026-11-03T01:00:00+00:00"))
    store.save(record("live", started_at="2026-11-04T00:00:00+00:00"))
    store.save(record("other", RunStatus.COMPLETED, project="q", completed_at="2026-11-05"))
    got = store.get("new")
    assert got is not None and got.status is RunStatus.COMPLETED and got.updated_at
    assert [r.run_id for r in store.records("p")] == ["bad", "new", "old", "live"]
    base = store.last_completed("p", "/src")
    assert base is not None and base.run_id == "new"  # an incomplete run is no base
    assert store.last_completed("p", "/elsewhere") is None


def test_pruning_drops_old_journals_and_manifests_no_run_starts_from(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    entry = ManifestEntry("a", 1, 5, "0" * 64)
    for run_id, day in (("one", 1), ("two", 2), ("three", 28)):
        store.save(
            record(run_id, RunStatus.COMPLETED, completed_at=f"2026-11-{day:02d}T00:00:00+00:00")
        )
        store.journal(run_id).committed(batch(0))
        store.write_manifest(run_id, [entry])
    store.save(record("running"))
    store.journal("running").committed(batch(0))
    pruned = store.prune(timedelta(days=7), now=datetime(2026, 11, 30, tzinfo=UTC))
    assert pruned == ["one", "two"]
    assert not store.journal("one").path.exists() and store.manifest("one") is None
    assert store.manifest("two") is None
    assert store.journal("three").path.exists() and store.manifest("three") == {"a": entry}
    assert store.journal("running").path.exists()
    assert {r.run_id for r in store.records()} == {"one", "two", "three", "running"}


def test_pruning_keeps_the_cursor_of_the_newest_completed_run_however_old(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.save(record("only", RunStatus.COMPLETED, completed_at="2026-01-01T00:00:00+00:00"))
    store.write_manifest("only", [ManifestEntry("a", 1, 5, "0" * 64)])
    store.prune(timedelta(days=7), now=datetime(2026, 11, 30, tzinfo=UTC))
    assert store.manifest("only") is not None


def test_a_second_process_cannot_hold_the_same_run(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    with store.lock("r"), pytest.raises(RunStateError, match="another process"), store.lock("r"):
        pass  # pragma: no cover - the second lock raises
    with store.lock("r"):  # released: it can be taken again
        pass


@dataclass
class TransactionalSink:
    """A sink with Kafka's visibility: events become visible when their batch commits."""

    fail_batch: int | None = None  # the batch whose deliveries fail
    visible: list[FileEvent | RunEvent] = field(default_factory=list)
    _open: list[FileEvent | RunEvent] = field(default_factory=list)
    _batches: int = 0

    def file(self, event: FileEvent) -> None:
        self._open.append(event)

    def run(self, event: RunEvent) -> None:
        self._open.append(event)

    def flush(self, timeout_s: float = 120.0) -> dict[str, str]:
        return {}

    def prepare(self, timeout_s: float = 120.0) -> tuple[dict[str, str], Probe | None]:
        if self._batches == self.fail_batch:
            paths = [e.path for e in self._open if isinstance(e, FileEvent)]
            return {paths[0]: "Broker: message too large"}, None
        return {}, Probe("t", 0, self._batches)

    def commit(self) -> None:
        self.visible += self._open
        self._open, self._batches = [], self._batches + 1

    def abort(self) -> None:
        self._open, self._batches = [], self._batches + 1

    def committed(self, probe: Probe, timeout_s: float = 60.0) -> bool:
        raise AssertionError("nothing is left pending here")

    def paths(self) -> list[str]:
        return sorted(e.path for e in self.visible if isinstance(e, FileEvent))


def test_a_batch_that_fails_is_aborted_and_a_resumed_attempt_publishes_only_it(
    tmp_path: Path,
) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    for i in range(12):
        (root / f"f{i:02d}.txt").write_text(f"{i}\n")
    store = RunStore(tmp_path / "runs")
    options = IngestOptions(transaction_files=5)

    first = TransactionalSink(fail_batch=1)
    summary = Ingest(DirectorySource(root), options, "r", "p", first, runs=store).run()
    assert not summary.ok
    assert sorted(summary.failed) == [f"f{i:02d}.txt" for i in range(5, 10)]
    assert first.paths() == [f"f{i:02d}.txt" for i in (0, 1, 2, 3, 4, 10, 11)]
    assert not any(
        isinstance(e, RunEvent) and e.kind is RunEventKind.COMPLETED for e in first.visible
    )
    got = store.get("r")
    assert got is not None and got.status is RunStatus.RUNNING

    second = TransactionalSink()
    summary = Ingest(DirectorySource(root), options, "r", "p", second, runs=store).run()
    assert summary.ok and (summary.attempt, summary.resumed) == (2, 7)
    assert second.paths() == [f"f{i:02d}.txt" for i in range(5, 10)]
    kinds = [e.kind for e in second.visible if isinstance(e, RunEvent)]
    assert kinds == [RunEventKind.COMPLETED]  # RunStarted committed in the first attempt
    assert summary.counts.files == 12
    got = store.get("r")
    assert got is not None and got.status is RunStatus.COMPLETED and got.attempts == 2

    third = TransactionalSink()
    summary = Ingest(DirectorySource(root), options, "r", "p", third, runs=store).run()
    assert summary.already_completed and third.visible == []


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--resume", "a", "--run-id", "b"], "name two runs"),
        (["--since", "HEAD", "--incremental"], "give one"),
        (["--run-id", "../escape"], "is not 1-128 letters"),
        (["--resume", "a", "--dry-run"], "no state to resume"),
        (["--transaction-files", "0"], "--transaction-files"),
    ],
)
def test_run_options_that_conflict_are_one_line(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = run(["ingest", str(tmp_path), *argv], capsys)
    assert code == 2
    assert needle in err and "unexpected" not in err and "Traceback" not in err


def test_runs_list_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["runs", "list"], capsys)
    assert code == 0 and out.startswith("no runs recorded")
    root = tmp_path / "tree"
    root.mkdir()
    (root / "a.txt").write_text("a\n")
    os.mkfifo(root / "fifo")
    store = RunStore(Path(os.environ["HEADRACE_INGEST__STATE_DIR"]))
    sink = TransactionalSink()
    Ingest(DirectorySource(root), IngestOptions(), "shown", "p", sink, runs=store).run()
    code, out, err = run(["runs", "list", "--json"], capsys)
    assert code == 0, err
    [listed] = json.loads(out)
    assert (listed["run_id"], listed["status"], listed["cursor"]) == (
        "shown",
        "completed",
        "manifest of 1 files",
    )
    code, out, err = run(["runs", "show", "shown", "--json"], capsys)
    assert code == 0, err
    shown = json.loads(out)
    assert shown["committed_files"] == 1
    assert shown["skipped"] == [
        {"path": "fifo", "reason": "unreadable", "detail": "a FIFO, not a regular file"}
    ]
    code, _out, err = run(["runs", "show", "nope"], capsys)
    assert code == 1 and err.strip().startswith("headrace: error: no run nope is recorded")
