"""``headrace ingest`` against the real stack: what reaches Kafka and MinIO."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import pytest
from confluent_kafka import Message

from headrace.settings import KafkaSettings, ObjectStoreSettings, RegistrySettings
from schemas.models import ContentStrategy, FileEvent, Op, RunEvent, RunEventKind, SkipReason
from schemas.models import TextEncoding as Enc
from schemas.registry import make_registry_client
from schemas.serde import EventDeserializer
from storage.objects import content_key
from storage.objectstore.minio import make_minio
from tests.integration.topics import read_topic
from tests.unit.test_cli import run


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch,
    kafka: KafkaSettings,
    registry: RegistrySettings,
    object_store: ObjectStoreSettings,
) -> dict[str, str]:
    """Fresh topics and bucket for each test, pointed at the services under test."""
    run_tag = uuid.uuid4().hex[:10]
    values = {
        "HEADRACE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "HEADRACE_KAFKA__PARTITIONS": "3",
        "HEADRACE_KAFKA__TOPICS__FILE_EVENTS": f"test.ingest-{run_tag}.files",
        "HEADRACE_KAFKA__TOPICS__RUN_EVENTS": f"test.ingest-{run_tag}.runs",
        "HEADRACE_REGISTRY__URL": registry.url,
        "HEADRACE_OBJECT_STORE__ENDPOINT": object_store.endpoint,
        "HEADRACE_OBJECT_STORE__BUCKET": f"test-ingest-{run_tag}",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def file_events(
    kafka: KafkaSettings, registry: RegistrySettings, env: dict[str, str]
) -> list[tuple[str, FileEvent]]:
    client = make_registry_client(registry)
    decode = EventDeserializer(client, FileEvent)

    def pair(msg: Message) -> tuple[str, FileEvent]:
        return (msg.key() or b"").decode(), decode(msg.value())

    try:
        return read_topic(kafka, env["HEADRACE_KAFKA__TOPICS__FILE_EVENTS"], pair)
    finally:
        client.close()


def run_events(
    kafka: KafkaSettings, registry: RegistrySettings, env: dict[str, str]
) -> list[RunEvent]:
    client = make_registry_client(registry)
    decode = EventDeserializer(client, RunEvent)
    try:
        return read_topic(
            kafka, env["HEADRACE_KAFKA__TOPICS__RUN_EVENTS"], lambda m: decode(m.value())
        )
    finally:
        client.close()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "demo"
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text("print('hello')\n")
    (root / "notes-latin1.txt").write_bytes("crème brûlée\n".encode("latin-1"))
    (root / "logo.bin").write_bytes(bytes(range(256)))
    (root / "empty").write_bytes(b"")
    (root / "large.bin").write_bytes(os.urandom(20 * 1024 * 1024))  # above the multipart threshold
    (root / "medium.txt").write_text("x" * 200_000)
    (root / ".gitignore").write_text("*.tmp\n")
    (root / "scratch.tmp").write_text("ignored\n")
    (root / "outside").symlink_to("/etc/hostname")
    return root


def test_ingest_a_directory_end_to_end(
    tree: Path,
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    object_store: ObjectStoreSettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(["ingest", str(tree), "--project", "demo", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["ok"] and summary["counts"]["files"] == 7
    assert summary["counts"]["inline"] == 5 and summary["counts"]["object_storage"] == 2
    assert summary["skipped"] == [
        {"path": "outside", "reason": "symlink_outside_root", "detail": None}
    ]
    assert summary["uploads"]["made"] == 2

    events = dict(file_events(kafka, registry, env))
    assert sorted(events) == [
        "demo/.gitignore",
        "demo/empty",
        "demo/large.bin",
        "demo/logo.bin",
        "demo/medium.txt",
        "demo/notes-latin1.txt",
        "demo/src/app.py",
    ]
    app = events["demo/src/app.py"]
    assert app.inline is not None and app.inline.data == b"print('hello')\n"
    assert app.inline.encoding is Enc.UTF_8
    assert events["demo/notes-latin1.txt"].inline.encoding is Enc.LATIN_1  # type: ignore[union-attr]
    assert events["demo/logo.bin"].inline.encoding is Enc.BINARY  # type: ignore[union-attr]
    assert events["demo/empty"].size == 0

    large = events["demo/large.bin"]
    assert large.content_strategy is ContentStrategy.OBJECT_STORAGE
    assert large.object_ref is not None and large.object_ref.url is not None
    assert large.object_ref.key.endswith(large.checksum)
    fetched = httpx.get(large.object_ref.url, timeout=30)
    assert fetched.status_code == 200 and fetched.content == (tree / "large.bin").read_bytes()

    runs = run_events(kafka, registry, env)
    assert [r.kind for r in runs] == [RunEventKind.STARTED, RunEventKind.COMPLETED]
    assert runs[1].counts is not None and runs[1].counts.files == 7
    assert runs[1].digest == summary["digest"]


def test_identical_content_is_stored_once_across_projects(
    tree: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["ingest", str(tree), "--project", "one", "--json"], capsys)
    assert code == 0 and json.loads(out)["uploads"] == {
        "made": 2,
        "deduplicated": 0,
        "bytes": 20 * 1024 * 1024 + 200_000,
    }
    stored = 20 * 1024 * 1024 + 200_000
    cost = json.loads(out)["cost_estimate"]
    assert (cost["object_store_bytes"], cost["uploaded_bytes"]) == (stored, stored)
    assert cost["storage_per_month"] == round(stored / 2**30 * 0.023, 6)  # default prices
    assert cost["transfer_to_read_once"] == round(stored / 2**30 * 0.09, 6)
    code, out, _ = run(["ingest", str(tree), "--project", "two", "--json"], capsys)
    assert code == 0 and json.loads(out)["uploads"]["made"] == 0
    assert json.loads(out)["uploads"]["deduplicated"] == 2
    # Nothing uploaded, but the run's content is stored all the same: it costs the same.
    cost = json.loads(out)["cost_estimate"]
    assert (cost["object_store_bytes"], cost["uploaded_bytes"]) == (stored, 0)


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


def test_since_publishes_changes_and_deletes(
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
    git(repo, "tag", "v1")
    (repo / "change.txt").write_text("changed\n")
    (repo / "remove.txt").unlink()
    (repo / "new.txt").write_text("new\n")
    git(repo, "mv", "old-name.txt", "new-name.txt")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "two")

    code, out, err = run(["ingest", str(repo), "--since", "v1", "--json"], capsys)
    assert code == 0, err
    events = {key.split("/", 1)[1]: e for key, e in file_events(kafka, registry, env)}
    assert {p: e.op for p, e in events.items()} == {
        "change.txt": Op.UPSERT,
        "new.txt": Op.UPSERT,
        "new-name.txt": Op.UPSERT,
        "remove.txt": Op.DELETE,
        "old-name.txt": Op.DELETE,
    }
    assert events["change.txt"].inline.data == b"changed\n"  # type: ignore[union-attr]
    commit = git(repo, "rev-parse", "HEAD")
    assert json.loads(out)["commit"] == commit


def test_git_reference_strategy(
    tmp_path: Path,
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    repo = tmp_path / "refs"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "a.txt").write_text("alpha\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "one")
    code, _, err = run(["ingest", str(repo), "--content-strategy", "git_reference"], capsys)
    assert code == 0, err
    [(_, event)] = file_events(kafka, registry, env)
    assert event.content_strategy is ContentStrategy.GIT_REFERENCE
    assert event.git_ref is not None and event.inline is None
    assert event.git_ref.commit == git(repo, "rev-parse", "HEAD")
    assert event.git_ref.blob_id == git(repo, "rev-parse", "HEAD:a.txt")
    assert event.size == 6


def test_a_broker_that_is_down_at_start_is_one_clear_error(
    tree: Path,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HEADRACE_KAFKA__BOOTSTRAP_SERVERS", f"127.0.0.1:{port}")
    code, _, err = run(["ingest", str(tree)], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"no Kafka broker answered at 127.0.0.1:{port}" in lines[0]


def test_skip_reasons_reach_the_run_event(
    tree: Path,
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, _ = run(["ingest", str(tree), "--exclude", "*.bin"], capsys)
    assert code == 0
    completed = run_events(kafka, registry, env)[-1]
    assert {(s.path, s.reason) for s in completed.skipped} == {
        ("outside", SkipReason.SYMLINK_OUTSIDE_ROOT),
        ("large.bin", SkipReason.EXCLUDED),
        ("logo.bin", SkipReason.EXCLUDED),
    }


TOKEN = "ghp-s3cr3t-integration-token"


def test_a_git_url_with_a_token_leaves_no_trace_of_it(
    tmp_path: Path,
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import base64

    from tests.gitserver import serving

    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    (work / "README.md").write_text("# served over http\n")
    (work / "data.bin").write_bytes(os.urandom(150 * 1024))  # object storage, from a git blob
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "one")
    cache = tmp_path / "git-cache"
    monkeypatch.setenv("HEADRACE_GIT__CACHE_DIR", str(cache))
    with serving(work, tmp_path / "served", TOKEN) as server:
        port = server.server_address[1]
        url = f"http://x-access-token:{TOKEN}@127.0.0.1:{port}/repo.git"
        argv = [
            "--log-level",
            "DEBUG",
            "--log-format",
            "json",
            "ingest",
            url,
            "--ref",
            "main",
            "--json",
        ]
        code, out, err = run(argv, capsys)
    assert code == 0, err
    assert any(auth for _path, auth in server.requests)  # the token was sent, as a header

    summary = json.loads(out)
    assert summary["source"] == f"http://127.0.0.1:{port}/repo.git"
    assert summary["counts"]["files"] == 2 and summary["counts"]["object_storage"] == 1
    raw = [
        m.value() or b""
        for m in read_topic(kafka, env["HEADRACE_KAFKA__TOPICS__FILE_EVENTS"], lambda m: m)
    ]
    raw += [
        m.value() or b""
        for m in read_topic(kafka, env["HEADRACE_KAFKA__TOPICS__RUN_EVENTS"], lambda m: m)
    ]
    assert len(raw) == 4
    secrets = [TOKEN.encode(), base64.b64encode(f"x-access-token:{TOKEN}".encode())]
    for secret in secrets:
        assert not any(secret in value for value in raw), "token in a message"
        assert secret.decode() not in out + err, "token in the output or the logs"
        assert not [p for p in cache.rglob("*") if p.is_file() and secret in p.read_bytes()]
    assert err.strip(), "the DEBUG log run wrote log lines to scan"
    events = {e.path: e for _k, e in file_events(kafka, registry, env)}
    assert events["README.md"].inline is not None
    assert events["data.bin"].object_ref is not None


def test_object_store_down_small_files_go_inline_and_large_ones_are_skipped_incomplete(
    tree: Path,
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HEADRACE_OBJECT_STORE__ENDPOINT", f"127.0.0.1:{port}")
    code, out, err = run(["ingest", str(tree), "--inline-limit", "64KiB", "--json"], capsys)
    assert code == 1
    summary = json.loads(out)
    assert summary["failed"] == {} and summary["incomplete"] is True
    unavailable = sorted(s["path"] for s in summary["skipped"]
                         if s["reason"] == "object_store_unavailable")  # fmt: skip
    assert unavailable == ["large.bin", "medium.txt"]
    assert summary["object_store"]["breaker"] == "open"
    assert summary["counts"]["inline"] == 5 and summary["counts"]["object_storage"] == 0
    lines = err.strip().splitlines()
    assert lines[-1].startswith("headrace: error: run incomplete: 2 files skipped because")
    events = {key.split("/", 1)[1]: e for key, e in file_events(kafka, registry, env)}
    assert "large.bin" not in events and events["src/app.py"].inline is not None
    runs = run_events(kafka, registry, env)
    assert [r.kind for r in runs] == [RunEventKind.STARTED, RunEventKind.COMPLETED]
    assert {s.path for s in runs[-1].skipped} >= {"large.bin", "medium.txt"}


def test_an_inline_limit_above_the_brokers_message_limit_is_one_line_before_anything_is_sent(
    tree: Path,
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["ingest", str(tree), "--inline-limit", "64MiB", "--max-batch-bytes", "128MiB"]
    code, out, err = run(argv, capsys)
    assert code == 1
    assert "max.message.bytes" in err and "--inline-limit" in err
    assert len(err.strip().splitlines()) == 1 and "unexpected" not in err
    assert file_events(kafka, registry, env) == [] and run_events(kafka, registry, env) == []


def test_a_fifo_a_socket_and_a_loop_are_skipped_while_the_rest_of_the_tree_is_published(
    tree: Path,
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import socket

    os.mkfifo(tree / "pipe")  # open() on it would block the run forever
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tree / "sock"))
    (tree / "loop").symlink_to(tree / "loop")
    try:
        code, out, err = run(["ingest", str(tree), "--json"], capsys)
    finally:
        server.close()
    assert code == 0, err
    summary = json.loads(out)
    skipped = {s["path"]: (s["reason"], s["detail"]) for s in summary["skipped"]}
    assert skipped["pipe"] == ("unreadable", "a FIFO, not a regular file")
    assert skipped["sock"] == ("unreadable", "a socket, not a regular file")
    assert skipped["loop"][0] == "unreadable" and "loop" in skipped["loop"][1]
    events = {key.split("/", 1)[1] for key, _ in file_events(kafka, registry, env)}
    assert {"src/app.py", "logo.bin", "large.bin"} <= events
    assert not events & {"pipe", "sock", "loop"}
    runs = run_events(kafka, registry, env)
    assert [r.kind for r in runs] == [RunEventKind.STARTED, RunEventKind.COMPLETED]


NOBODY = 65534  # an unprivileged uid and gid: root reads a file whatever its mode says


@contextlib.contextmanager
def traversable_by_others(path: Path) -> Iterator[None]:
    """``path`` and its ancestors searchable by any user (pytest makes its temporary
    directories 0700) for the ``with`` block; their modes restored afterwards."""
    changed: list[tuple[Path, int]] = []
    try:
        for where in (path, *path.parents):
            mode = stat.S_IMODE(where.stat().st_mode)
            if not mode & stat.S_IXOTH:
                where.chmod(mode | stat.S_IXOTH)
                changed.append((where, mode))
        yield
    finally:
        for where, mode in changed:
            where.chmod(mode)


def test_an_unreadable_file_and_directory_are_skipped_while_the_rest_is_published(
    tree: Path,
    tmp_path: Path,
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
) -> None:
    locked = tree / "src" / "locked.py"
    locked.write_text("secret = 1\n")
    locked.chmod(0)
    (tree / "private").mkdir()
    (tree / "private" / "inner.txt").write_text("inner\n")
    (tree / "private").chmod(0)
    home = tmp_path / "home"  # the unprivileged run's HOME, TMPDIR, git cache and run state
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    child_env = {
        **os.environ,
        "HOME": str(home),
        "TMPDIR": str(home),
        "PYTHONDONTWRITEBYTECODE": "1",
        "HEADRACE_GIT__CACHE_DIR": str(home / "git"),
        "HEADRACE_INGEST__STATE_DIR": str(home / "runs"),
    }
    ids = [f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    argv = ["setpriv", *ids, sys.executable, "-m", "headrace", "ingest", str(tree), "--json"]
    with traversable_by_others(tree):
        done = subprocess.run(argv, capture_output=True, text=True, env=child_env, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    skipped = {s["path"]: (s["reason"], s["detail"]) for s in summary["skipped"]}
    assert skipped == {
        "outside": ("symlink_outside_root", None),
        "private/": ("unreadable", "the directory cannot be listed: permission denied"),
        "src/locked.py": ("unreadable", "cannot be read: permission denied"),
    }
    assert summary["ok"] and summary["failed"] == {} and summary["counts"]["files"] == 7
    events = {key.split("/", 1)[1]: e for key, e in file_events(kafka, registry, env)}
    assert sorted(events) == [
        ".gitignore",
        "empty",
        "large.bin",
        "logo.bin",
        "medium.txt",
        "notes-latin1.txt",
        "src/app.py",
    ]
    assert events["src/app.py"].inline is not None
    assert events["large.bin"].object_ref is not None
    runs = run_events(kafka, registry, env)
    assert [r.kind for r in runs] == [RunEventKind.STARTED, RunEventKind.COMPLETED]
    assert {(s.path, s.reason) for s in runs[-1].skipped} >= {
        ("src/locked.py", SkipReason.UNREADABLE),
        ("private/", SkipReason.UNREADABLE),
    }


def test_entries_beyond_path_max_are_skipped_while_the_reachable_ones_are_published(
    tmp_path: Path,
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = (tmp_path / "deep").resolve()
    root.mkdir()
    (root / "top.txt").write_text("top\n")
    path_max = os.pathconf(root, "PC_PATH_MAX")  # with its NUL: a path has fewer bytes
    name_max = os.pathconf(root, "PC_NAME_MAX")
    # Nested directories of the longest names, each with a file, built a level at a time
    # through directory descriptors (no path names them once they pass PATH_MAX).
    files: list[str] = []  # each level's f.txt, relative to the root
    rel = ""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        level = 0
        while len(str(root)) + len(rel) < path_max + 2 * name_max:
            name = f"d{level:02d}".ljust(name_max, "x")
            os.mkdir(name, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
            rel += f"{name}/"
            made = os.open("f.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(made, f"level {level}\n".encode())
            os.close(made)
            files.append(f"{rel}f.txt")
            level += 1
    finally:
        os.close(fd)

    def length(rel: str) -> int:  # bytes of the entry's full path
        return len(f"{root}/{rel.rstrip('/')}".encode())

    def parent(rel: str) -> str:
        return rel.rstrip("/").rpartition("/")[0]

    # An entry is reached if its directory can be listed; read if its own path fits.
    reached = [r for r in files + [f.removesuffix("f.txt") for f in files]
               if length(parent(r)) < path_max]  # fmt: skip
    readable = {r for r in reached if r.endswith("f.txt") and length(r) < path_max}
    too_long = {r.rstrip("/") for r in reached if length(r) >= path_max}
    assert readable and too_long and len(readable) < len(files)  # the tree crosses PATH_MAX

    code, out, err = run(["ingest", str(root), "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["ok"] and summary["counts"]["files"] == len(readable) + 1
    skipped = {s["path"].rstrip("/"): (s["reason"], s["detail"]) for s in summary["skipped"]}
    assert set(skipped) == too_long
    assert set(skipped.values()) == {("unreadable", "file name too long")}
    events = {key.split("/", 1)[1]: e for key, e in file_events(kafka, registry, env)}
    assert set(events) == readable | {"top.txt"}
    deepest = max(readable, key=len)
    inline = events[deepest].inline
    assert inline is not None and inline.data == f"level {files.index(deepest)}\n".encode()
    runs = run_events(kafka, registry, env)
    assert [r.kind for r in runs] == [RunEventKind.STARTED, RunEventKind.COMPLETED]
    assert {s.path.rstrip("/") for s in runs[-1].skipped} == too_long


class _RewrittenAfterRead(io.BytesIO):
    """A file's bytes as they were read; closing it rewrites the file, a line longer."""

    def __init__(self, data: bytes, path: Path, rewrites: list[int]) -> None:
        super().__init__(data)
        self._path, self._rewrites = path, rewrites

    def close(self) -> None:
        if not self.closed:
            with self._path.open("ab") as file:
                file.write(b"one more line\n")
            self._rewrites.append(self._path.stat().st_size)
        super().close()


def test_a_small_file_rewritten_on_every_read_is_skipped_as_changed_while_read(
    tree: Path,
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from producers import sources

    busy = (tree / "src" / "busy.log").resolve()
    busy.write_text("first line\n")
    rewrites: list[int] = []
    real_open = sources._open

    def rewriting_open(opened_path: str | Path) -> BinaryIO:
        path = Path(opened_path)
        if path != busy:
            return real_open(path)
        with real_open(path) as stream:
            return _RewrittenAfterRead(stream.read(), path, rewrites)

    monkeypatch.setattr(sources, "_open", rewriting_open)
    code, out, err = run(["ingest", str(tree), "--json"], capsys)
    assert code == 0, err
    assert rewrites, "the file was read, and rewritten after each read"
    summary = json.loads(out)
    assert summary["ok"] and summary["failed"] == {} and summary["counts"]["files"] == 7
    [changed] = [s for s in summary["skipped"] if s["path"] == "src/busy.log"]
    assert changed["reason"] == "changed_while_read" and changed["detail"]
    events = {key.split("/", 1)[1]: e for key, e in file_events(kafka, registry, env)}
    assert "src/busy.log" not in events
    assert {"src/app.py", "logo.bin", "large.bin", "medium.txt"} <= set(events)
    runs = run_events(kafka, registry, env)
    assert [r.kind for r in runs] == [RunEventKind.STARTED, RunEventKind.COMPLETED]
    assert ("src/busy.log", SkipReason.CHANGED_WHILE_READ) in {
        (s.path, s.reason) for s in runs[-1].skipped
    }


def test_a_large_file_changed_while_it_is_uploaded_is_skipped_not_failed(
    tree: Path,
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    object_store: ObjectStoreSettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from storage.objectstore.base import VerifyingReader

    growing = (tree / "growing.bin").resolve()
    growing.write_bytes(os.urandom(2 * 1024 * 1024))
    rewrites: list[int] = []
    real_read = VerifyingReader.read

    def read(self: VerifyingReader, n: int = -1) -> bytes:
        """The upload of growing.bin: before its first byte is sent, the file is
        rewritten in place and grows by a byte (as a log being written does)."""
        if self._read == 0 and Path(getattr(self._raw, "name", "")) == growing:
            with growing.open("r+b") as file:
                file.write(os.urandom(4096))
                file.seek(0, os.SEEK_END)
                file.write(b"+")
            rewrites.append(growing.stat().st_size)
        return real_read(self, n)

    monkeypatch.setattr(VerifyingReader, "read", read)
    argv = ["ingest", str(tree), "--inline-limit", "1KiB", "--json"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert rewrites, "the file changed while it was uploaded"
    assert "does not match its key" not in out + err
    summary = json.loads(out)
    assert summary["ok"] and summary["failed"] == {} and summary["incomplete"] is False
    [changed] = [s for s in summary["skipped"] if s["path"] == "growing.bin"]
    assert changed["reason"] == "changed_while_read" and changed["detail"]
    assert summary["counts"]["object_storage"] == 2  # large.bin and medium.txt
    events = {key.split("/", 1)[1]: e for key, e in file_events(kafka, registry, env)}
    assert "growing.bin" not in events
    assert events["large.bin"].object_ref is not None
    assert events["medium.txt"].object_ref is not None
    stored = make_minio(object_store).list_objects(
        env["HEADRACE_OBJECT_STORE__BUCKET"], recursive=True
    )
    assert sorted(str(o.object_name) for o in stored) == sorted(
        content_key(events[p].checksum) for p in ("large.bin", "medium.txt")
    ), "nothing of the changing file was stored"
    runs = run_events(kafka, registry, env)
    assert [r.kind for r in runs] == [RunEventKind.STARTED, RunEventKind.COMPLETED]
    assert ("growing.bin", SkipReason.CHANGED_WHILE_READ) in {
        (s.path, s.reason) for s in runs[-1].skipped
    }


def test_directories_removed_during_the_walk_are_skipped_and_the_run_completes(
    tree: Path,
    env: dict[str, str],
    kafka: KafkaSettings,
    registry: RegistrySettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tree.resolve()
    for name in ("gone-after-listing", "gone-before-listing"):
        (root / name / "sub").mkdir(parents=True)
        (root / name / "sub" / "file.txt").write_text(f"{name}\n")
    (root / "zz-last.txt").write_text("after the removed directories\n")
    real_scandir = os.scandir
    removed: list[str] = []

    def scandir(path: Any = ".") -> Any:
        """Removes gone-after-listing once the root has been listed, so that its entry
        is gone when the walk looks at it, and gone-before-listing just before the walk
        lists it."""
        if isinstance(path, int):  # shutil.rmtree's own listings, by descriptor
            return real_scandir(path)
        where = Path(os.fsdecode(path))
        if where == root / "gone-before-listing":
            shutil.rmtree(where)
            removed.append(where.name)
        if where != root:
            return real_scandir(path)
        with real_scandir(path) as listing:
            entries = list(listing)
        shutil.rmtree(root / "gone-after-listing")
        removed.append("gone-after-listing")
        return contextlib.nullcontext(entries)

    monkeypatch.setattr(os, "scandir", scandir)
    code, out, err = run(["ingest", str(root), "--json"], capsys)
    assert code == 0, err
    assert sorted(removed) == ["gone-after-listing", "gone-before-listing"]
    summary = json.loads(out)
    assert summary["ok"] and summary["counts"]["files"] == 8
    skipped = {s["path"]: (s["reason"], s["detail"]) for s in summary["skipped"]}
    assert skipped["gone-after-listing"] == ("unreadable", "no such file or directory")
    assert skipped["gone-before-listing/"] == (
        "unreadable",
        "the directory cannot be listed: no such file or directory",
    )
    events = {key.split("/", 1)[1] for key, _ in file_events(kafka, registry, env)}
    assert {"src/app.py", "large.bin", "zz-last.txt"} <= events
    assert not {e for e in events if e.startswith("gone-")}
    runs = run_events(kafka, registry, env)
    assert [r.kind for r in runs] == [RunEventKind.STARTED, RunEventKind.COMPLETED]
