"""Exactly once across attempts, against the real stack: an ingest killed mid-run and
resumed, the same run id twice, incremental runs, and fencing.

Each test counts what reached the archive (archive lines per path) and the database,
not only what the producer says it published.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from headrace.settings import KafkaSettings, ObjectStoreSettings, RegistrySettings, load_settings
from producers.errors import Fenced
from producers.publisher import Publisher
from schemas.models import FileEvent, Op, RunEventKind, run_digest
from schemas.registry import make_registry_client
from storage.archive.reader import read
from storage.db import open_database
from tests.integration.test_ingest import file_events, git, run_events
from tests.unit.test_cli import run

TREE_FILES = 23


@pytest.fixture
def env(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kafka: KafkaSettings,
    registry: RegistrySettings,
    object_store: ObjectStoreSettings,
) -> dict[str, str]:
    """Fresh topics, bucket, archive, database and run state for each test."""
    tag = uuid.uuid4().hex[:10]
    values = {
        "HEADRACE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "HEADRACE_KAFKA__PARTITIONS": "3",
        "HEADRACE_KAFKA__TOPICS__FILE_EVENTS": f"test.once-{tag}.files",
        "HEADRACE_KAFKA__TOPICS__RUN_EVENTS": f"test.once-{tag}.runs",
        "HEADRACE_KAFKA__TOPICS__VERIFICATIONS": f"test.once-{tag}.verifications",
        "HEADRACE_KAFKA__TOPICS__DEAD_LETTER": f"test.once-{tag}.dlq",
        "HEADRACE_REGISTRY__URL": registry.url,
        "HEADRACE_OBJECT_STORE__ENDPOINT": object_store.endpoint,
        "HEADRACE_OBJECT_STORE__BUCKET": f"test-once-{tag}",
        "HEADRACE_CONSUMER__GROUP_PREFIX": f"test-{tag}.",
        "HEADRACE_CONSUMER__METRICS_PORT": "0",
        "HEADRACE_ARCHIVE__ROOT": str(tmp_path / "archive"),
        "HEADRACE_LOAD__BACKEND": "sqlite",
        "HEADRACE_LOAD__SQLITE_PATH": str(tmp_path / "load.sqlite3"),
        "HEADRACE_INGEST__STATE_DIR": str(tmp_path / "runs"),
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """23 files: 20 small ones, 3 above the inline limit (object storage)."""
    root = tmp_path / "tree"
    for i in range(20):
        folder = root / f"dir{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"file{i:02d}.txt").write_text(f"file {i}\n" * (i + 1))
    for i in range(3):
        (root / f"blob{i}.bin").write_bytes(os.urandom(40_000 + i))
    return root


def tree_digest(root: Path) -> str:
    files = [p for p in root.rglob("*") if p.is_file()]
    return run_digest(
        (p.relative_to(root).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest()) for p in files
    )


def archive_lines(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> Counter[str]:
    """Archive what the topic holds; the number of archived file events per path."""
    code, _out, err = run(["consume", "archive", "--until-caught-up"], capsys)
    assert code == 0, err
    topic = env["HEADRACE_KAFKA__TOPICS__FILE_EVENTS"]
    root = Path(env["HEADRACE_ARCHIVE__ROOT"])
    return Counter(line.event["path"] for line in read(root, topic=topic))


def loaded_rows(capsys: pytest.CaptureFixture[str], project: str) -> dict[str, str]:
    code, _out, err = run(["consume", "load", "--until-caught-up"], capsys)
    assert code == 0, err
    with open_database(load_settings(), migrate=True) as db:
        return {row["path"]: row["sha256"] for row in db.query(project)}


def per_path(events: list[tuple[str, FileEvent]]) -> Counter[str]:
    return Counter(event.path for _key, event in events)


def killed_ingest(tree: Path, run_id: str, failpoint: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "headrace", "ingest", str(tree), "--project", "once"]
    argv += ["--run-id", run_id, "--inline-limit", "16KiB", "--transaction-files", "5"]
    return subprocess.run(
        argv,
        env={**os.environ, "HEADRACE_FAILPOINTS": failpoint},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("failpoint", "committed"),
    [
        # killed with its third batch open: two batches (10 files) committed
        ("ingest.produced=12", 10),
        # killed after journalling the second batch as pending, before it committed:
        # the broker aborts it when the resumed attempt starts (the same transactional id)
        ("ingest.before_commit=2", 5),
        # killed after the second batch committed, before the journal said so: the
        # resumed attempt reads its first record back and finds it committed
        ("ingest.after_commit=2", 10),
    ],
)
def test_an_ingest_killed_mid_run_and_resumed_publishes_every_file_once(
    failpoint: str,
    committed: int,
    tree: Path,
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_id = f"kill-{uuid.uuid4().hex[:8]}"
    killed = killed_ingest(tree, run_id, failpoint)
    assert killed.returncode == -9, killed.stderr

    code, out, err = run(["runs", "list", "--json"], capsys)
    assert code == 0, err
    [record] = json.loads(out)
    assert (record["run_id"], record["status"], record["cursor"]) == (run_id, "running", "-")

    code, out, err = run(["ingest", str(tree), "--resume", run_id, "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["attempt"], summary["resumed"]) == (2, committed)
    assert summary["counts"]["files"] == TREE_FILES
    assert summary["counts"]["object_storage"] == 3
    assert summary["digest"] == tree_digest(tree)

    # Kafka (read_committed), the archive and the database each hold every file once.
    published = per_path(file_events(kafka, registry, env))
    assert len(published) == TREE_FILES and set(published.values()) == {1}
    archived = archive_lines(env, capsys)
    assert archived == published
    rows = loaded_rows(capsys, "once")
    assert len(rows) == TREE_FILES
    runs = run_events(kafka, registry, env)
    assert [r.kind for r in runs] == [RunEventKind.STARTED, RunEventKind.COMPLETED]
    assert runs[-1].digest == tree_digest(tree) and runs[-1].counts is not None
    assert runs[-1].counts.files == TREE_FILES

    code, out, err = run(["runs", "list", "--json"], capsys)
    [record] = json.loads(out)
    assert (record["status"], record["attempts"]) == ("completed", 2)
    assert record["cursor"] == f"manifest of {TREE_FILES} files"


def test_killed_after_its_last_commit_a_resumed_run_is_complete_and_publishes_nothing(
    tree: Path,
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 23 files in batches of 5: the fifth commit holds the last 3 and RunCompleted
    killed = killed_ingest(tree, "last", "ingest.after_commit=5")
    assert killed.returncode == -9, killed.stderr
    code, out, err = run(["ingest", str(tree), "--resume", "last", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["already_completed"] is True
    assert summary["counts"]["files"] == TREE_FILES and summary["digest"] == tree_digest(tree)
    assert [r.kind for r in run_events(kafka, registry, env)] == [
        RunEventKind.STARTED,
        RunEventKind.COMPLETED,
    ]
    published = per_path(file_events(kafka, registry, env))
    assert len(published) == TREE_FILES and set(published.values()) == {1}
    code, out, err = run(["runs", "show", "last", "--json"], capsys)
    assert code == 0, err
    shown = json.loads(out)
    assert (shown["status"], shown["committed_files"]) == ("completed", TREE_FILES)
    assert shown["cursor"] == f"manifest of {TREE_FILES} files"


def test_the_same_run_id_twice_archives_each_file_once(
    tree: Path,
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["ingest", str(tree), "--run-id", "same-run", "--transaction-files", "7"]
    code, out, err = run([*argv, "--json"], capsys)
    assert code == 0, err
    first = json.loads(out)
    assert first["transactions"] == 4  # 23 files in batches of 7
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert out.startswith(f"run same-run already completed ({TREE_FILES} file events")
    assert out.rstrip().endswith("nothing to publish")

    archived = archive_lines(env, capsys)
    assert len(archived) == TREE_FILES and set(archived.values()) == {1}
    assert [r.kind for r in run_events(kafka, registry, env)] == [
        RunEventKind.STARTED,
        RunEventKind.COMPLETED,
    ]


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    code, out, err = run(["ingest", *argv, "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert isinstance(summary, dict)
    return summary


def changes_of(
    run_id: object, kafka: KafkaSettings, registry: RegistrySettings, env: dict[str, str]
) -> dict[str, Op]:
    return {e.path: e.op for _k, e in file_events(kafka, registry, env) if e.run_id == run_id}


def test_incremental_directory_runs_publish_exactly_the_changes(
    tree: Path,
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first = run_json(capsys, str(tree), "--incremental")
    assert first["incremental"] == {"base_run": None, "unchanged": 0}  # the first is full
    assert first["counts"]["files"] == TREE_FILES  # type: ignore[index]

    (tree / "dir0" / "file00.txt").write_text("modified\n")
    (tree / "dir1" / "added.txt").write_text("added\n")
    (tree / "dir2" / "file02.txt").unlink()
    (tree / "dir3" / "file03.txt").rename(tree / "dir3" / "renamed.txt")
    touched = tree / "dir1" / "file01.txt"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))

    second = run_json(capsys, str(tree), "--incremental")
    assert second["incremental"] == {"base_run": first["run_id"], "unchanged": TREE_FILES - 3}
    assert changes_of(second["run_id"], kafka, registry, env) == {
        "dir0/file00.txt": Op.UPSERT,
        "dir1/added.txt": Op.UPSERT,
        "dir3/renamed.txt": Op.UPSERT,
        "dir2/file02.txt": Op.DELETE,
        "dir3/file03.txt": Op.DELETE,
    }
    # the touched file was read again (its time changed), found identical, not published;
    # its new time is in the cursor, so the next run does not read it again
    third = run_json(capsys, str(tree), "--incremental")
    assert third["incremental"] == {"base_run": second["run_id"], "unchanged": TREE_FILES}
    assert changes_of(third["run_id"], kafka, registry, env) == {}

    code, out, err = run(["runs", "list", "--project", "tree", "--json"], capsys)
    assert code == 0, err
    cursors = [(r["run_id"], r["cursor"]) for r in json.loads(out)]
    assert cursors == [
        (first["run_id"], f"manifest of {TREE_FILES} files"),
        (second["run_id"], f"manifest of {TREE_FILES} files"),
        (third["run_id"], f"manifest of {TREE_FILES} files"),
    ]


def test_incremental_git_runs_publish_exactly_the_changes_since_the_recorded_commit(
    tmp_path: Path,
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    repo = tmp_path / "proj"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for name in ("keep.txt", "change.txt", "remove.txt", "old-name.txt"):
        (repo / name).write_text(f"{name}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "one")
    one = git(repo, "rev-parse", "HEAD")

    first = run_json(capsys, str(repo), "--incremental")
    assert first["commit"] == one and first["counts"]["files"] == 4  # type: ignore[index]

    (repo / "change.txt").write_text("changed\n")
    (repo / "remove.txt").unlink()
    (repo / "new.txt").write_text("new\n")
    git(repo, "mv", "old-name.txt", "new-name.txt")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "two")

    second = run_json(capsys, str(repo), "--incremental")
    assert second["incremental"]["base_run"] == first["run_id"]  # type: ignore[index]
    assert changes_of(second["run_id"], kafka, registry, env) == {
        "change.txt": Op.UPSERT,
        "new.txt": Op.UPSERT,
        "new-name.txt": Op.UPSERT,
        "remove.txt": Op.DELETE,
        "old-name.txt": Op.DELETE,
    }
    third = run_json(capsys, str(repo), "--incremental")  # nothing committed since
    assert third["counts"]["files"] == 0  # type: ignore[index]

    code, out, err = run(["runs", "list", "--json"], capsys)
    assert code == 0, err
    two = git(repo, "rev-parse", "HEAD")
    assert [r["cursor"] for r in json.loads(out)] == [
        f"commit {one[:12]}",
        f"commit {two[:12]}",
        f"commit {two[:12]}",
    ]


@pytest.fixture
def publishers(
    env: dict[str, str], kafka: KafkaSettings, registry: RegistrySettings
) -> Iterator[tuple[Publisher, Publisher]]:
    """Two producers of one run: the same transactional id, the second started later."""
    settings = load_settings()
    client = make_registry_client(registry)
    tid = f"headrace.ingest.fence.{uuid.uuid4().hex[:8]}"
    first = Publisher(settings.kafka, client, transactional_id=tid).start()
    try:
        first.file(FileEvent(project="p", path="first.txt", size=1, checksum="a" * 64))
        assert first.prepare()[0] == {}  # delivered, in its open transaction
        second = Publisher(settings.kafka, client, transactional_id=tid).start()
        try:
            yield first, second
        finally:
            second.close()
    finally:
        first.close()
        client.close()


def test_a_second_producer_of_the_same_run_fences_the_first(
    publishers: tuple[Publisher, Publisher],
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
) -> None:
    first, second = publishers
    with pytest.raises(Fenced, match="another producer took over"):
        first.commit()
    second.file(FileEvent(project="p", path="second.txt", size=1, checksum="b" * 64))
    assert second.prepare()[0] == {}
    second.commit()
    assert sorted(per_path(file_events(kafka, registry, env))) == ["second.txt"]


def test_resume_of_an_unknown_run_is_one_clear_line(
    tree: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = run(["ingest", str(tree), "--resume", "never-ran"], capsys)
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("headrace: error: no run never-ran is recorded")
    assert "unexpected" not in err


def test_a_run_resumes_its_own_source_only(
    tree: Path, tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    killed = killed_ingest(tree, "mine", "ingest.produced=3")
    assert killed.returncode == -9, killed.stderr
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("a\n")
    code, _out, err = run(["ingest", str(other), "--project", "once", "--resume", "mine"], capsys)
    assert code == 1
    assert "a run resumes its own source" in err and "unexpected" not in err
