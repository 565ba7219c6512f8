"""The ingest run's decisions, with an in-memory sink and object store."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from producers.breaker import BreakerState, CircuitBreaker
from producers.ingest import Ingest, IngestOptions, StrategyChoice
from producers.policy import detect_encoding
from producers.runs import Probe
from producers.sources import DirectorySource
from schemas.models import (
    ContentStrategy,
    FileEvent,
    Op,
    RunEvent,
    RunEventKind,
    SkipReason,
    run_digest,
)
from schemas.models import TextEncoding as Enc
from storage.errors import ObjectStoreUnavailable
from storage.objects import MemoryObjectStore, StoredObject
from tests.unit.test_cli import run

LFS = b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n"


@dataclass
class Sink:
    files: list[FileEvent] = field(default_factory=list)
    runs: list[RunEvent] = field(default_factory=list)
    commits: int = 0

    def file(self, event: FileEvent) -> None:
        self.files.append(event)

    def run(self, event: RunEvent) -> None:
        self.runs.append(event)

    def flush(self, timeout_s: float = 120.0) -> dict[str, str]:
        return {}

    def prepare(self, timeout_s: float = 120.0) -> tuple[dict[str, str], Probe | None]:
        return {}, None

    def commit(self) -> None:
        self.commits += 1

    def abort(self) -> None:
        raise AssertionError("nothing in these tests aborts")

    def committed(self, probe: Probe, timeout_s: float = 60.0) -> bool:
        raise AssertionError("nothing in these tests resumes")

    def by_path(self) -> dict[str, FileEvent]:
        return {e.path: e for e in self.files}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "mod.py").write_text("print('héllo')\n")
    (root / "latin1.txt").write_bytes("café au lait\n".encode("latin-1"))
    (root / "image.bin").write_bytes(bytes(range(256)) * 4)
    (root / "empty.txt").write_bytes(b"")
    (root / "big.dat").write_bytes(os.urandom(300 * 1024))
    (root / "build").mkdir()
    (root / "build" / "out.o").write_bytes(b"ignored")
    (root / "debug.log").write_text("ignored\n")
    (root / ".gitignore").write_text("build/\n*.log\n")
    (root / "asset.psd").write_bytes(LFS)
    (root / "secret.env").write_text("excluded\n")
    (root / "link-in.py").symlink_to(root / "src" / "pkg" / "mod.py")
    (root / "link-out").symlink_to("/etc/hostname")
    return root


def ingest(
    root: Path, store: MemoryObjectStore | None = None, **options: object
) -> tuple[Sink, object]:
    sink = Sink()
    job = Ingest(
        DirectorySource(root),
        IngestOptions(exclude=("*.env",), **options),  # type: ignore[arg-type]
        "run-1",
        "proj",
        sink,
        store or MemoryObjectStore("content"),
    )
    return sink, job.run()


def test_auto_sends_small_files_inline_and_large_ones_to_object_storage(tree: Path) -> None:
    store = MemoryObjectStore("content")
    sink, summary = ingest(tree, store)
    events = sink.by_path()
    assert sorted(events) == [
        ".gitignore",
        "big.dat",
        "empty.txt",
        "image.bin",
        "latin1.txt",
        "link-in.py",
        "src/pkg/mod.py",
    ]
    assert events["src/pkg/mod.py"].inline is not None
    assert events["src/pkg/mod.py"].inline.encoding is Enc.UTF_8
    assert events["latin1.txt"].inline.encoding is Enc.LATIN_1  # type: ignore[union-attr]
    assert events["image.bin"].inline.encoding is Enc.BINARY  # type: ignore[union-attr]
    assert events["empty.txt"].size == 0 and events["empty.txt"].inline.data == b""  # type: ignore[union-attr]
    big = events["big.dat"]
    assert big.content_strategy is ContentStrategy.OBJECT_STORAGE and big.object_ref is not None
    assert store.get(big.object_ref.key) == (tree / "big.dat").read_bytes()
    assert events["link-in.py"].checksum == events["src/pkg/mod.py"].checksum
    assert all(e.op is Op.UPSERT and e.run_id == "run-1" for e in sink.files)


def test_skips_are_recorded_with_reasons_and_counts_reconcile(tree: Path) -> None:
    sink, summary = ingest(tree)
    skipped = {s.path: s.reason for s in summary.skipped}  # type: ignore[attr-defined]
    assert skipped == {
        "asset.psd": SkipReason.LFS_POINTER,
        "secret.env": SkipReason.EXCLUDED,
        "link-out": SkipReason.SYMLINK_OUTSIDE_ROOT,
    }
    counts = summary.counts  # type: ignore[attr-defined]
    assert counts.files == len(sink.files) == counts.inline + counts.object_storage
    assert counts.skipped == 3
    assert counts.bytes == sum(e.size for e in sink.files)


def test_run_is_bracketed_and_the_digest_covers_the_upserts(tree: Path) -> None:
    sink, summary = ingest(tree)
    assert [r.kind for r in sink.runs] == [RunEventKind.STARTED, RunEventKind.COMPLETED]
    completed = sink.runs[1]
    assert completed.digest == run_digest((e.path, e.checksum) for e in sink.files)
    assert completed.counts == summary.counts  # type: ignore[attr-defined]


def test_event_ids_are_deterministic_across_runs(tree: Path) -> None:
    first, _ = ingest(tree)
    second, _ = ingest(tree)
    assert [e.event_id for e in first.files] == [e.event_id for e in second.files]


def test_reingesting_unchanged_content_uploads_nothing(tree: Path) -> None:
    store = MemoryObjectStore("content")
    ingest(tree, store)
    assert store.uploads == 1
    _, summary = ingest(tree, store)
    assert (summary.uploads, summary.deduplicated) == (0, 1)  # type: ignore[attr-defined]
    assert store.uploads == 1


def test_forced_strategies(tree: Path) -> None:
    store = MemoryObjectStore("content")
    sink, summary = ingest(tree, store, strategy=StrategyChoice.OBJECT_STORAGE)
    assert {e.content_strategy for e in sink.files} == {ContentStrategy.OBJECT_STORAGE}
    sink, summary = ingest(tree, strategy=StrategyChoice.INLINE)
    assert {e.content_strategy for e in sink.files} == {ContentStrategy.INLINE}
    assert {s.path for s in summary.skipped if s.reason is SkipReason.TOO_LARGE} == {"big.dat"}  # type: ignore[attr-defined]


class DownStore(MemoryObjectStore):
    def ensure_bucket(self) -> None:
        raise ObjectStoreUnavailable("127.0.0.1:1", "content", "create bucket", "refused")


def test_store_down_small_files_go_inline_and_large_ones_are_skipped(tree: Path) -> None:
    sink, summary = ingest(tree, DownStore("content"))
    assert {e.content_strategy for e in sink.files} == {ContentStrategy.INLINE}
    assert summary.unavailable == ["big.dat"]  # type: ignore[attr-defined]
    skipped = {s.path: s.reason for s in summary.skipped}  # type: ignore[attr-defined]
    assert skipped["big.dat"] is SkipReason.OBJECT_STORE_UNAVAILABLE
    assert summary.ok and summary.breaker == "open"  # type: ignore[attr-defined]
    assert [r.kind for r in sink.runs] == [RunEventKind.STARTED, RunEventKind.COMPLETED]


def test_a_forced_object_storage_never_falls_back_to_inline(tree: Path) -> None:
    sink, summary = ingest(tree, DownStore("content"), strategy=StrategyChoice.OBJECT_STORAGE)
    assert sink.files == []
    unavailable = summary.unavailable  # type: ignore[attr-defined]
    assert "big.dat" in unavailable and "latin1.txt" in unavailable


class FlakyStore(MemoryObjectStore):
    """Fails the first ``failures`` uploads as unavailable, then works."""

    def __init__(self, failures: int) -> None:
        super().__init__("content")
        self.failures, self.attempts = failures, 0

    def put_file(self, path: Path, sha256: str, size: int) -> StoredObject:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise ObjectStoreUnavailable("127.0.0.1:1", "content", "upload", "SlowDown")
        return super().put_file(path, sha256, size)


def test_a_transient_upload_failure_is_retried(tree: Path) -> None:
    store = FlakyStore(failures=2)
    sink, summary = ingest(tree, store, upload_backoff_s=0.001)
    assert sink.by_path()["big.dat"].content_strategy is ContentStrategy.OBJECT_STORAGE
    assert (summary.upload_retries, summary.breaker) == (2, "closed")  # type: ignore[attr-defined]


def test_the_breaker_opens_after_repeated_failures_and_stops_trying(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    for i in range(6):
        (root / f"big{i}.bin").write_bytes(os.urandom(200_000))
    store = FlakyStore(failures=10**6)
    sink, summary = ingest(root, store, upload_backoff_s=0.001)
    assert summary.unavailable == [f"big{i}.bin" for i in range(6)]  # type: ignore[attr-defined]
    assert store.attempts == 3 * 3  # three files of three attempts, then the breaker is open
    assert (summary.breaker, summary.breaker_opened) == ("open", 1)  # type: ignore[attr-defined]
    assert sink.runs[-1].kind is RunEventKind.COMPLETED


def test_the_breaker_half_opens_after_its_cooldown() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=2, cooldown_s=10, clock=lambda: now[0])
    breaker.failure("down")
    assert breaker.state is BreakerState.CLOSED and breaker.allow()
    breaker.failure("down")
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    now[0] = 10.0
    assert breaker.state is BreakerState.HALF_OPEN and breaker.allow()
    breaker.failure("still down")  # one failure half-open: open again
    assert breaker.state is BreakerState.OPEN and breaker.opened == 2
    now[0] = 20.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state is BreakerState.CLOSED


def test_dry_run_decides_but_publishes_and_uploads_nothing(tree: Path) -> None:
    store = MemoryObjectStore("content")
    job = Ingest(DirectorySource(tree), IngestOptions(dry_run=True), "run-1", "proj", None, store)
    summary = job.run()
    assert summary.counts.files == 8 and summary.counts.object_storage == 1
    assert store.uploads == 0


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (b"plain ascii\n", Enc.UTF_8),
        ("ünïcödé".encode(), Enc.UTF_8),
        ("naïve".encode("latin-1"), Enc.LATIN_1),
        (b"\x00\x01\x02", Enc.BINARY),
        (b"", Enc.UTF_8),
        (bytes(range(1, 32)) * 10, Enc.BINARY),
    ],
)
def test_encoding_detection(data: bytes, encoding: Enc) -> None:
    assert detect_encoding(data) is encoding


@pytest.mark.parametrize(
    ("kind", "prefer", "size", "expected"),
    [
        ("git_url", True, 10, ContentStrategy.GIT_REFERENCE),
        ("git_url", False, 10, ContentStrategy.INLINE),
        ("git", True, 10, ContentStrategy.INLINE),  # a local repository has no URL to share
        ("directory", False, 10**6, ContentStrategy.OBJECT_STORAGE),
    ],
)
def test_auto_choices(
    kind: str, prefer: bool, size: int, expected: ContentStrategy, tmp_path: Path
) -> None:
    from producers.base import SourceInfo, SourceKind

    job = Ingest(DirectorySource(tmp_path), IngestOptions(prefer_git_reference=prefer), "r")
    assert job._choose(size, SourceInfo(SourceKind(kind), "loc", "p")) is expected


def test_an_excluded_directory_is_skipped_whole(tree: Path) -> None:
    sink = Sink()
    source = DirectorySource(tree, exclude=("src/",))
    summary = Ingest(
        source, IngestOptions(exclude=("src/",)), "r", "p", sink, MemoryObjectStore("content")
    ).run()
    assert not any(e.path.startswith("src/") for e in sink.files)
    assert ("src/", SkipReason.EXCLUDED) in {(s.path, s.reason) for s in summary.skipped}


def test_a_path_that_is_not_utf8_is_skipped_and_shown_escaped(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "ok.txt").write_text("fine\n")
    # names as Linux gives them to Python: bytes that are not UTF-8 as surrogates
    (root / "caf\udce9.txt").write_bytes(b"x")  # "café.txt" in latin-1
    (root / "dir-\udcff").mkdir()
    (root / "dir-\udcff" / "inner.txt").write_bytes(b"y")
    sink, summary = ingest(root)
    assert [e.path for e in sink.files] == ["ok.txt"]
    why = (SkipReason.UNREADABLE, "the path is not UTF-8; events carry UTF-8 paths")
    skipped = {s.path: (s.reason, s.detail) for s in summary.skipped}  # type: ignore[attr-defined]
    assert skipped == {"caf\\xe9.txt": why, "dir-\\xff/inner.txt": why}
    (completed,) = [r for r in sink.runs if r.skipped]
    assert sorted(s.path for s in completed.skipped) == ["caf\\xe9.txt", "dir-\\xff/inner.txt"]


def test_entries_that_are_not_regular_files_are_skipped_with_why_and_the_run_completes(
    tmp_path: Path,
) -> None:
    root = tmp_path / "repo"
    (root / "sub").mkdir(parents=True)
    (root / "ok.txt").write_text("fine\n")
    (root / "sub" / "also-ok.txt").write_text("fine too\n")
    os.mkfifo(root / "pipe")  # open() on it would block forever
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(root / "sock"))
    (root / "loop-a").symlink_to(root / "loop-b")
    (root / "loop-b").symlink_to(root / "loop-a")
    (root / "dangling").symlink_to(root / "nowhere")
    (root / "to-pipe").symlink_to(root / "pipe")
    try:
        sink, summary = ingest(root)
    finally:
        server.close()
    assert sorted(e.path for e in sink.files) == ["ok.txt", "sub/also-ok.txt"]
    skipped = {s.path: (s.reason, s.detail) for s in summary.skipped}  # type: ignore[attr-defined]
    assert skipped == {
        "pipe": (SkipReason.UNREADABLE, "a FIFO, not a regular file"),
        "sock": (SkipReason.UNREADABLE, "a socket, not a regular file"),
        "loop-a": (SkipReason.UNREADABLE, skipped["loop-a"][1]),
        "loop-b": (SkipReason.UNREADABLE, skipped["loop-b"][1]),
        "dangling": (SkipReason.UNREADABLE, "the symlink's target: no such file or directory"),
        "to-pipe": (SkipReason.UNREADABLE, "the symlink's target is a FIFO"),
    }
    assert "loop" in str(skipped["loop-a"][1]) and "loop" in str(skipped["loop-b"][1])
    assert [r.kind for r in sink.runs] == [RunEventKind.STARTED, RunEventKind.COMPLETED]


def test_a_file_that_cannot_be_read_or_a_directory_that_vanished_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "repo"
    (root / "gone").mkdir(parents=True)
    (root / "ok.txt").write_text("fine\n")
    (root / "locked.txt").write_text("no\n")
    real_open, real_scandir = os.open, os.scandir

    def refusing_open(path: object, flags: int, *args: object) -> int:
        if str(path).endswith("locked.txt"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    def vanishing_scandir(path: object) -> object:
        if str(path).endswith("gone"):
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refusing_open)
    monkeypatch.setattr(os, "scandir", vanishing_scandir)
    sink, summary = ingest(root)
    assert [e.path for e in sink.files] == ["ok.txt"]
    skipped = {s.path: (s.reason, s.detail) for s in summary.skipped}  # type: ignore[attr-defined]
    assert skipped == {
        "gone/": (SkipReason.UNREADABLE,
                  "the directory cannot be listed: no such file or directory"),
        "locked.txt": (SkipReason.UNREADABLE, "cannot be read: permission denied"),
    }  # fmt: skip
    assert sink.runs[-1].kind is RunEventKind.COMPLETED


def test_a_path_that_became_a_fifo_after_the_walk_is_refused_not_opened(tmp_path: Path) -> None:
    from producers.sources import _open

    fifo = tmp_path / "was-a-file"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        _open(fifo)  # returns at once: O_NONBLOCK, then fstat


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--presign-expiry", "100000"], "Invalid value for '--presign-expiry'"),
        (["--presign-expiry", "nan"], "'nan' is not a number of hours"),
        (["--max-batch-bytes", "0"], "below the smallest batch of 1KiB"),
        (["--inline-limit", "10GiB"], "an inline file must fit in one producer batch"),
    ],
)
def test_options_that_cannot_work_are_one_line_at_parse_time(
    tree: Path, args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["ingest", str(tree), "--dry-run", *args], capsys)
    assert code == 2 and needle in err and out == ""
    assert len(err.strip().splitlines()) == 1 and "unexpected" not in err


def test_a_file_rewritten_while_it_is_read_is_read_again_or_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import producers.sources

    root = tmp_path / "repo"
    root.mkdir()
    (root / "steady.txt").write_text("steady\n")
    (root / "once.txt").write_text("first version\n")
    (root / "always.txt").write_text("v0\n")
    opened: dict[str, int] = {}
    real_open = producers.sources._open

    def rewriting_open(opened_path: str | Path) -> object:
        stream = real_open(opened_path)
        path = Path(opened_path)
        opened[path.name] = opened.get(path.name, 0) + 1
        if path.name == "always.txt" or (path.name == "once.txt" and opened[path.name] == 1):
            path.write_text(f"rewritten {opened[path.name]} times, longer\n")  # under the reader
        return stream

    monkeypatch.setattr(producers.sources, "_open", rewriting_open)
    sink, summary = ingest(root)
    published = {e.path: e for e in sink.files}
    assert sorted(published) == ["once.txt", "steady.txt"]
    once = (root / "once.txt").read_bytes()
    assert published["once.txt"].inline is not None and published["once.txt"].inline.data == once
    skipped = {s.path: s.reason for s in summary.skipped}  # type: ignore[attr-defined]
    assert skipped == {"always.txt": SkipReason.CHANGED_WHILE_READ}
    assert opened["always.txt"] == 2  # read once more, then skipped
    assert summary.digest == run_digest(  # type: ignore[attr-defined]
        [(e.path, e.checksum) for e in sink.files]
    )


def test_the_run_completed_event_lists_a_bounded_number_of_skips_per_reason(
    tmp_path: Path,
) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "ok.txt").write_text("fine\n")
    for i in range(5):
        os.mkfifo(root / f"pipe{i}")
    (root / "asset.psd").write_bytes(LFS)
    sink, summary = ingest(root, max_skips_listed=2)
    completed = sink.runs[-1]
    assert completed.kind is RunEventKind.COMPLETED
    assert completed.skip_counts == {"UNREADABLE": 5, "LFS_POINTER": 1}
    listed = [s.path for s in completed.skipped]
    assert listed == ["asset.psd", "pipe0", "pipe1"]
    assert len(summary.skipped) == 6  # type: ignore[attr-defined]  # the summary keeps all
    assert completed.counts is not None and completed.counts.skipped == 6
