"""Inline files prepared by worker processes: the run's events as with one worker."""

from __future__ import annotations

import hashlib
import io
import os
from datetime import UTC, datetime
from pathlib import Path

import fastavro
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.serialization import MessageField, SerializationContext

from producers import ingest as ingest_module
from producers import pool, prepare
from producers.ingest import Ingest, IngestOptions
from producers.policy import Skip, detect_encoding
from producers.prepare import Context, prepare_inline
from producers.sources import DirectorySource
from schemas import catalog
from schemas.catalog import EventType
from schemas.models import (
    ContentStrategy,
    FileEvent,
    InlineContent,
    Op,
    SkipReason,
    TextEncoding,
)
from schemas.serde import EventSerializer
from storage.objects import MemoryObjectStore
from tests.unit.test_cli import run
from tests.unit.test_ingest import LFS, Sink

SHIPPED_START_AFTER = pool.START_AFTER
NOW = datetime(2026, 12, 2, 10, 0, 0, 123000, tzinfo=UTC)


class _Clock(datetime):
    @classmethod
    def now(cls, tz: object = None) -> _Clock:  # type: ignore[override]
        return cls.fromtimestamp(NOW.timestamp(), UTC)


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """Inline files (more than a few chunks), object-storage files and skipped ones."""
    root = tmp_path / "mixed"
    for i in range(150):
        folder = root / f"pkg{i // 40}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"m{i:03d}.py").write_text(f"# {i}\n" + "word " * (i % 50))
    (root / "latin1.txt").write_bytes("café\n".encode("latin-1"))
    (root / "image.bin").write_bytes(bytes(range(256)) * 4)
    (root / "empty.txt").write_bytes(b"")
    (root / "big1.dat").write_bytes(os.urandom(300 * 1024))
    (root / "pkg1" / "big2.dat").write_bytes(os.urandom(200 * 1024))
    (root / ".gitignore").write_text("*.log\n")
    (root / "debug.log").write_text("ignored\n")
    (root / "asset.psd").write_bytes(LFS)
    (root / "secret.env").write_text("excluded\n")
    (root / "pkg2" / "locked.py").write_text("no\n")
    (root / "link-out").symlink_to("/etc/hostname")
    return root


def _run(
    root: Path, workers: int, monkeypatch: pytest.MonkeyPatch, start_after: int = 16
) -> tuple[Sink, ingest_module.Summary, Ingest]:
    monkeypatch.setattr(ingest_module, "datetime", _Clock)  # the run's event time, fixed
    monkeypatch.setattr(pool, "CHUNK_FILES", 8)  # many chunks from a small tree
    monkeypatch.setattr(pool, "START_AFTER", start_after)  # ... the workers start early
    sink = Sink()
    job = Ingest(
        DirectorySource(root),
        IngestOptions(exclude=("*.env",), workers=workers),
        "run-1",
        "proj",
        sink,
        MemoryObjectStore("content"),
    )
    return sink, job.run(), job


def _refusing(monkeypatch: pytest.MonkeyPatch) -> None:
    """``locked.py`` cannot be opened: in this process and in the workers it forks."""
    real_open = os.open

    def refusing_open(path: object, flags: int, *args: object) -> int:
        if str(path).endswith("locked.py"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refusing_open)


def _comparable(event: FileEvent) -> FileEvent:
    """The event without its presigned URL's signature and expiry (made at upload)."""
    if event.object_ref is None:
        return event
    unsigned = event.object_ref.model_copy(update={"url": None, "expires_at": None})
    return event.model_copy(update={"object_ref": unsigned})


def test_four_workers_publish_the_events_and_digest_of_one(
    mixed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _refusing(monkeypatch)
    one_sink, one, one_job = _run(mixed, 1, monkeypatch)
    four_sink, four, four_job = _run(mixed, 4, monkeypatch)
    assert not one_job._used_pool and four_job._used_pool  # the workers did prepare them
    assert [_comparable(e) for e in four_sink.files] == [_comparable(e) for e in one_sink.files]
    assert [e.event_id for e in four_sink.files] == [e.event_id for e in one_sink.files]
    assert four.digest == one.digest and four.counts == one.counts
    assert four.counts.inline == 154 and four.counts.object_storage == 2
    assert four.skipped == one.skipped
    skipped = {s.path: (s.reason, s.detail) for s in four.skipped}
    assert skipped == {
        "asset.psd": (SkipReason.LFS_POINTER, "Git LFS pointer: the content is not in git"),
        "link-out": (SkipReason.SYMLINK_OUTSIDE_ROOT, None),
        "pkg2/locked.py": (SkipReason.UNREADABLE, "cannot be read: permission denied"),
        "secret.env": (SkipReason.EXCLUDED, "matched --exclude"),
    }
    assert four_sink.runs[-1].digest == one_sink.runs[-1].digest == one.digest
    assert four_sink.runs[-1].skipped == one_sink.runs[-1].skipped
    assert [r.model_copy(update={"event_time": NOW}) for r in four_sink.runs] == [
        r.model_copy(update={"event_time": NOW}) for r in one_sink.runs
    ]


def test_results_come_back_in_the_walk_order_with_few_files_in_flight(
    mixed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool, "CHUNK_FILES", 8)
    monkeypatch.setattr(pool, "IN_FLIGHT_CHUNKS", 1)
    monkeypatch.setattr(pool, "START_AFTER", 0)
    candidates = [c for c in DirectorySource(mixed).candidates() if c.path.endswith(".py")]
    ctx = Context("proj", "run-1", "test", NOW, 100 * 1024)
    most = 0
    with pool.Prepared(ctx, 2) as prepared:
        taken = []
        for candidate in candidates:
            prepared.put(ingest_module.task_of(candidate))
            most = max(most, len(prepared._chunks))
            while prepared.ready():
                taken.append(prepared.take())
        prepared.flush()
        taken += [prepared.take() for _ in range(len(candidates) - len(taken))]
        assert prepared.used_pool
    assert [getattr(t, "path", None) for t in taken] == [c.path for c in candidates]
    assert most <= 2  # one chunk a worker in flight, then the walk waits for the oldest


def test_an_encoded_body_is_what_the_serializer_makes_of_the_event(mixed: Path) -> None:
    """The body a worker writes from its record is the one the Publisher's serializer
    writes from the FileEvent model, for every kind of inline file of the tree."""
    registry = SchemaRegistryClient.new_client({"url": "mock://"})
    serializer = EventSerializer(registry, EventType.FILE_EVENT)
    ctx = SerializationContext("files", MessageField.VALUE)
    context = Context("proj", "run-1", "test", NOW, 100 * 1024)
    seen = set()
    for candidate in DirectorySource(mixed).candidates():
        if candidate.skip is not None or candidate.size > 100 * 1024:
            continue
        encoded = prepare_inline(ingest_module.task_of(candidate), context)
        if isinstance(encoded, Skip):
            assert encoded.reason is SkipReason.LFS_POINTER
            continue
        data = Path(candidate.local_path or "").read_bytes()
        event = FileEvent(
            project="proj",
            path=candidate.path,
            size=len(data),
            checksum=hashlib.sha256(data).hexdigest(),
            run_id="run-1",
            op=Op.UPSERT,
            producer_version="test",
            event_time=NOW,
            content_strategy=ContentStrategy.INLINE,
            inline=InlineContent(data=data, encoding=detect_encoding(data)),
        )
        assert serializer(event, ctx) == serializer.header(ctx) + encoded.body
        assert encoded.event() == event
        seen.add(detect_encoding(data))
    assert seen == set(TextEncoding)


def test_a_schema_of_another_layout_is_written_by_fastavro(
    mixed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The straight writer is used only where it writes what fastavro does: with a
    FileEvent schema of another field order, every body is fastavro's."""
    schema = catalog.latest(EventType.FILE_EVENT).json
    moved = {**schema, "fields": [schema["fields"][1], schema["fields"][0], *schema["fields"][2:]]}
    parsed = fastavro.parse_schema(moved)
    monkeypatch.setattr(prepare, "file_schema", lambda: parsed)
    context = Context("proj", "run-moved", "test", NOW, 100 * 1024)
    write = prepare.body_writer(context)
    assert not isinstance(write, prepare._InlineWriter)
    data = (mixed / "latin1.txt").read_bytes()
    body = write("latin1.txt", "0" * 64, data, TextEncoding.LATIN_1)
    record = fastavro.schemaless_reader(io.BytesIO(body), parsed, None)
    assert isinstance(record, dict)
    assert (record["path"], record["project"], record["inline"]["data"]) == (
        "latin1.txt",
        "proj",
        data,
    )


@pytest.mark.parametrize("value", ["-1", "x", "257"])
def test_a_bad_number_of_workers_is_one_line(
    value: str, mixed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = run(["ingest", str(mixed), "--dry-run", "--workers", value], capsys)
    assert code == 2
    assert "--workers" in err and len(err.strip().splitlines()) == 1, err


def test_a_bad_workers_setting_is_one_line(
    mixed: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HEADRACE_INGEST__WORKERS", "-2")
    code, _out, err = run(["ingest", str(mixed), "--dry-run"], capsys)
    assert code != 0
    assert "workers" in err and len(err.strip().splitlines()) == 1, err


def test_workers_come_from_the_option_then_the_setting_then_the_cores(
    mixed: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    chosen: list[tuple[int, bool]] = []
    real_run = Ingest.run

    def recording(job: Ingest) -> ingest_module.Summary:
        chosen.append((job.options.workers, job.options.workers_when_idle))
        return real_run(job)

    monkeypatch.setattr(Ingest, "run", recording)
    for args, setting in (
        ([], None),
        ([], "3"),
        (["--workers", "2"], "3"),
        (["--workers", "0"], "3"),
    ):
        if setting is not None:
            monkeypatch.setenv("HEADRACE_INGEST__WORKERS", setting)
        code, _out, err = run(["ingest", str(mixed), "--dry-run", "--json", *args], capsys)
        assert code == 0, err
    # one per core if a core is idle, unless a number was given
    assert chosen == [(pool.cores(), True), (3, False), (2, False), (pool.cores(), True)]


@pytest.mark.parametrize("idle", [True, False])
def test_the_default_starts_workers_only_if_a_core_is_idle(
    idle: bool, mixed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool, "idle_core", lambda: idle)
    monkeypatch.setattr(pool, "CHUNK_FILES", 8)
    monkeypatch.setattr(pool, "START_AFTER", 16)
    monkeypatch.setattr(ingest_module, "datetime", _Clock)
    sink = Sink()
    options = IngestOptions(workers=2, workers_when_idle=True)
    summary = Ingest(DirectorySource(mixed), options, "run-1", "proj", sink).run()
    assert summary.worker_processes == (2 if idle else 0)
    assert summary.counts.inline == 156  # no --exclude, nothing refused here


def test_a_run_of_few_inline_files_starts_no_workers(
    mixed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink, summary, job = _run(mixed, 4, monkeypatch)
    # as shipped: more files than the tree has
    _sink, alone, job_alone = _run(mixed, 4, monkeypatch, start_after=SHIPPED_START_AFTER)
    assert job._used_pool and summary.worker_processes == 4
    assert not job_alone._used_pool and alone.worker_processes == 0
    assert alone.digest == summary.digest


def test_a_worker_that_dies_stops_the_run_with_one_line(
    mixed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent, real_open = os.getpid(), os.open

    def dying_open(path: object, flags: int, *args: object) -> int:
        if os.getpid() != parent and str(path).endswith("m100.py"):
            os._exit(9)  # a worker killed (the OOM killer, a signal)
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", dying_open)
    with pytest.raises(pool.WorkerFailed, match="an ingest worker process died"):
        _run(mixed, 2, monkeypatch)
