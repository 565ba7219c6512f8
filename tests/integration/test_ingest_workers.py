"""``headrace ingest --workers N`` against the real stack: the events of one worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message

from headrace.settings import KafkaSettings, ObjectStoreSettings, RegistrySettings
from schemas.models import FileEvent, RunEvent, RunEventKind
from schemas.registry import make_registry_client
from schemas.serde import EventDeserializer
from tests.integration.test_ingest import NOBODY, traversable_by_others
from tests.integration.topics import read_topic

LFS = b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n"


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """Inline files (several chunks of the pool), object-storage files, skipped ones."""
    root = tmp_path / "mixed"
    for i in range(1200):  # more than pool.START_AFTER: the workers start
        folder = root / f"pkg{i // 300}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"m{i:03d}.py").write_text(f"# {i}\n" + "stream " * (i % 70))
    (root / "latin1.txt").write_bytes("crème\n".encode("latin-1"))
    (root / "logo.bin").write_bytes(bytes(range(256)) * 8)
    (root / "empty").write_bytes(b"")
    (root / "large.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    (root / "pkg1" / "medium.dat").write_bytes(os.urandom(300 * 1024))
    (root / ".gitignore").write_text("*.tmp\n")
    (root / "scratch.tmp").write_text("ignored\n")
    (root / "asset.psd").write_bytes(LFS)
    (root / "secret.env").write_text("excluded\n")
    (root / "outside").symlink_to("/etc/hostname")
    locked = root / "pkg2" / "locked.py"
    locked.write_text("secret = 1\n")
    locked.chmod(0)  # unreadable to the unprivileged run
    return root


def _ingest(
    tree: Path,
    tmp_path: Path,
    workers: int,
    run_id: str,
    kafka: KafkaSettings,
    registry: RegistrySettings,
    object_store: ObjectStoreSettings,
) -> tuple[dict[str, Any], dict[str, str]]:
    """One unprivileged ``headrace ingest`` into topics of its own (the bucket is the
    run id's: object references name it): summary and env."""
    tag = uuid.uuid4().hex[:10]
    home = tmp_path / f"home-{workers}"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    env = {
        **os.environ,
        "HOME": str(home),
        "TMPDIR": str(home),
        "PYTHONDONTWRITEBYTECODE": "1",
        "HEADRACE_GIT__CACHE_DIR": str(home / "git"),
        "HEADRACE_INGEST__STATE_DIR": str(home / "runs"),
        "HEADRACE_HISTORY__SQLITE_PATH": str(home / "history.sqlite3"),
        "HEADRACE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "HEADRACE_KAFKA__PARTITIONS": "3",
        "HEADRACE_KAFKA__TOPICS__FILE_EVENTS": f"test.workers-{tag}.files",
        "HEADRACE_KAFKA__TOPICS__RUN_EVENTS": f"test.workers-{tag}.runs",
        "HEADRACE_REGISTRY__URL": registry.url,
        "HEADRACE_OBJECT_STORE__ENDPOINT": object_store.endpoint,
        "HEADRACE_OBJECT_STORE__BUCKET": f"test-{run_id}",
    }
    ids = [f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    argv = [
        "setpriv",
        *ids,
        sys.executable,
        "-m",
        "headrace",
        "ingest",
        str(tree),
        "--project",
        "mixed",
        "--run-id",
        run_id,
        "--exclude",
        "*.env",
        "--workers",
        str(workers),
        "--json",
    ]
    with traversable_by_others(tree):
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), env


def _published(
    env: dict[str, str], kafka: KafkaSettings, registry: RegistrySettings
) -> tuple[list[tuple[int, str, FileEvent]], list[RunEvent]]:
    """The file events, partition by partition in offset order, and the run events."""
    client = make_registry_client(registry)
    files, runs = EventDeserializer(client, FileEvent), EventDeserializer(client, RunEvent)

    def file(msg: Message) -> tuple[int, str, FileEvent]:
        event = files(msg.value())
        if event.object_ref is not None:  # presigned at upload: its signature and expiry
            unsigned = event.object_ref.model_copy(update={"url": None, "expires_at": None})
            event = event.model_copy(update={"object_ref": unsigned})
        event = event.model_copy(update={"event_time": None})  # the run's start
        return msg.partition() or 0, (msg.key() or b"").decode(), event

    try:
        published = read_topic(kafka, env["HEADRACE_KAFKA__TOPICS__FILE_EVENTS"], file)
        run_events = read_topic(
            kafka, env["HEADRACE_KAFKA__TOPICS__RUN_EVENTS"], lambda m: runs(m.value())
        )
    finally:
        client.close()
    return sorted(published, key=lambda p: p[0]), run_events  # stable: offsets kept


def test_four_workers_publish_what_one_does(
    mixed: Path,
    tmp_path: Path,
    kafka: KafkaSettings,
    registry: RegistrySettings,
    object_store: ObjectStoreSettings,
) -> None:
    run_id = f"workers-{uuid.uuid4().hex[:8]}"
    one, one_env = _ingest(mixed, tmp_path, 1, run_id, kafka, registry, object_store)
    four, four_env = _ingest(mixed, tmp_path, 4, run_id, kafka, registry, object_store)
    assert one["worker_processes"] == 0 and four["worker_processes"] == 4
    assert four["digest"] == one["digest"] and four["counts"] == one["counts"]
    assert four["counts"]["inline"] == 1204 and four["counts"]["object_storage"] == 2
    assert four["skipped"] == one["skipped"]
    skipped = {s["path"]: (s["reason"], s["detail"]) for s in four["skipped"]}
    assert skipped == {
        "asset.psd": ("lfs_pointer", "Git LFS pointer: the content is not in git"),
        "outside": ("symlink_outside_root", None),
        "pkg2/locked.py": ("unreadable", "cannot be read: permission denied"),
        "secret.env": ("excluded", "matched --exclude"),
    }
    one_files, one_runs = _published(one_env, kafka, registry)
    four_files, four_runs = _published(four_env, kafka, registry)
    assert len(four_files) == 1206
    assert four_files == one_files  # the same events, ids and bytes, in each partition's order
    assert [r.kind for r in four_runs] == [RunEventKind.STARTED, RunEventKind.COMPLETED]
    completed_one, completed_four = one_runs[-1], four_runs[-1]
    assert completed_four.digest == completed_one.digest == one["digest"]
    assert completed_four.counts == completed_one.counts
    assert completed_four.skipped == completed_one.skipped
    assert completed_four.skip_counts == completed_one.skip_counts
