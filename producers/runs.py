"""What the producer remembers of its runs: a record per run, a journal of its
committed transactions, and the cursor an incremental run starts from.

Layout under ``ingest.state_dir`` (``.headrace/runs/`` by default)::

    <run_id>/record.json      the run: source, status, counts, digest, cursor
    <run_id>/journal.jsonl    its transactions: pending, then committed or aborted
    <run_id>/manifest.jsonl   a directory run's cursor: (path, size, mtime, sha256)
    <run_id>/lock             held by the one process ingesting the run

The record and the manifest are replaced atomically (a temporary file, fsync,
rename). The journal is appended to, one line per write, each fsync'ed before
the next step: a ``pending`` line (the batch's files and where its first record
landed) before the transaction commits, a ``committed`` line after. A crash
leaves at most one batch pending, and the broker can tell which way it went
(see :meth:`producers.publisher.Publisher.committed`); a torn last line is a
write the crash interrupted, before anything it describes was committed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from headrace.errors import HeadraceError

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class RunStateError(HeadraceError):
    """The run's state cannot be read, written or locked."""


def check_run_id(run_id: str) -> str:
    """A run id names a directory and a transactional id: letters, digits, ``._-``."""
    if not RUN_ID.fullmatch(run_id):
        raise RunStateError(
            f"run id {run_id!r} is not 1-128 letters, digits, '.', '_' or '-'"
            " (starting with a letter or digit)"
        )
    return run_id


class RunStatus(StrEnum):
    RUNNING = "running"  # started; not every file committed (interrupted, or still going)
    INCOMPLETE = "incomplete"  # completed, but files were skipped as the store was down
    COMPLETED = "completed"


class FileEntry(NamedTuple):  # a tuple: made once a file, 3x cheaper than a dataclass
    """One file event a run committed."""

    path: str
    op: str  # "upsert" or "delete"
    sha256: str
    size: int
    strategy: str | None = None  # inline, object_storage, git_reference; None for a delete
    mtime_ns: int | None = None  # files of a directory source, for its manifest

    def row(self) -> list[Any]:
        return list(self)


@dataclass(frozen=True)
class ManifestEntry:
    """A file as a directory run left it: what the next incremental run compares with."""

    path: str
    size: int
    mtime_ns: int
    sha256: str


@dataclass(frozen=True)
class Probe:
    """Where a batch's first record landed: read back, it says if the batch committed."""

    topic: str
    partition: int
    offset: int


@dataclass
class Batch:
    """One transaction's worth of a run."""

    number: int
    files: list[FileEntry] = field(default_factory=list)
    skipped: list[tuple[str, str, str | None]] = field(default_factory=list)
    started: bool = False  # holds the RunStarted event
    completed: bool = False  # holds the RunCompleted event
    event_bytes: int = 0

    def __bool__(self) -> bool:
        return bool(self.files or self.skipped or self.started or self.completed)


@dataclass
class Checkpoint:
    """What a run's journal says was committed, across all its attempts."""

    files: dict[str, FileEntry] = field(default_factory=dict)
    skipped: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # path: reason
    started: bool = False
    completed: bool = False
    batches: int = 0  # the next batch number
    pending: tuple[Batch, Probe | None] | None = None

    def merge(self, batch: Batch) -> None:
        for entry in batch.files:
            self.files[entry.path] = entry
            self.skipped.pop(entry.path, None)
        for path, reason, detail in batch.skipped:
            self.skipped[path] = (reason, detail)
        self.started |= batch.started
        self.completed |= batch.completed


@dataclass
class RunRecord:
    run_id: str
    project: str
    source: str  # the directory or credential-free URL, as events carry it
    source_kind: str
    commit: str | None  # the commit a git run reads: its cursor, and pinned on resume
    transactional_id: str
    started_at: str
    status: RunStatus = RunStatus.RUNNING
    updated_at: str = ""
    completed_at: str | None = None
    attempts: int = 1
    incremental: bool = False
    base_run: str | None = None  # an incremental run: the run it started from
    counts: dict[str, int] | None = None
    skip_counts: dict[str, int] = field(default_factory=dict)
    digest: str | None = None
    manifest_files: int | None = None  # a directory run's cursor: files in its manifest
    options: dict[str, Any] | None = None  # what decides its events (ingest.content_options)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["status"] = RunStatus(known.get("status", RunStatus.RUNNING))
        return cls(**known)

    @property
    def finished(self) -> bool:
        return self.status is not RunStatus.RUNNING

    @property
    def cursor(self) -> str:
        """What an incremental run after this one starts from, in words."""
        if self.status is RunStatus.RUNNING:
            return "-"
        if self.commit:
            return f"commit {self.commit[:12]}"
        return f"manifest of {self.manifest_files or 0} files"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a temporary file, fsync, rename, fsync of the directory."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """A run's transactions, appended one fsync'ed line at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def replay(self) -> Checkpoint:
        checkpoint = Checkpoint()
        if not self.path.exists():
            return checkpoint
        lines = self.path.read_bytes().split(b"\n")
        pending: dict[int, tuple[Batch, Probe | None]] = {}
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                if number >= len(lines) - 1:  # the last line, torn by a crash mid-write
                    break
                raise RunStateError(f"{self.path}: line {number} is not JSON") from None
            kind, batch_no = entry["t"], entry["batch"]
            checkpoint.batches = max(checkpoint.batches, batch_no + 1)
            if kind == "pending":
                pending[batch_no] = (_batch(entry), _probe(entry.get("probe")))
            elif kind == "committed" and batch_no in pending:
                checkpoint.merge(pending.pop(batch_no)[0])
            elif kind == "aborted":
                pending.pop(batch_no, None)
        if pending:
            checkpoint.pending = pending[max(pending)]
        return checkpoint

    def pending(self, batch: Batch, probe: Probe | None) -> None:
        self._append(
            {
                "t": "pending",
                "batch": batch.number,
                "probe": [probe.topic, probe.partition, probe.offset] if probe else None,
                "files": [e.row() for e in batch.files],
                "skipped": [list(s) for s in batch.skipped],
                "started": batch.started,
                "completed": batch.completed,
            }
        )

    def committed(self, batch: Batch) -> None:
        self._append({"t": "committed", "batch": batch.number})

    def aborted(self, batch: Batch) -> None:
        self._append({"t": "aborted", "batch": batch.number})

    def _append(self, entry: dict[str, Any]) -> None:
        line = orjson.dumps(entry) + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def _batch(entry: dict[str, Any]) -> Batch:
    return Batch(
        number=entry["batch"],
        files=[FileEntry(*row) for row in entry["files"]],
        skipped=[(s[0], s[1], s[2]) for s in entry["skipped"]],
        started=entry["started"],
        completed=entry["completed"],
    )


def _probe(raw: list[Any] | None) -> Probe | None:
    return Probe(raw[0], int(raw[1]), int(raw[2])) if raw else None


class RunStore:
    """The runs of this producer, one directory each. The constructor does no I/O."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, run_id: str) -> Path:
        return self.root / check_run_id(run_id)

    def get(self, run_id: str) -> RunRecord | None:
        path = self._dir(run_id) / "record.json"
        try:
            return RunRecord.from_json(orjson.loads(path.read_bytes()))
        except FileNotFoundError:
            return None
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise RunStateError(f"{path} cannot be read: {exc}") from None

    def save(self, record: RunRecord) -> None:
        record.updated_at = now_iso()
        folder = self._dir(record.run_id)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_atomically(
                folder / "record.json", orjson.dumps(record.as_json(), option=orjson.OPT_INDENT_2)
            )
        except OSError as exc:
            raise RunStateError(f"cannot write the record of run {record.run_id}: {exc}") from None

    def records(self, project: str | None = None) -> list[RunRecord]:
        """Every recorded run (of ``project``), oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for folder in self.root.iterdir():
            if folder.is_dir() and RUN_ID.fullmatch(folder.name):
                record = self.get(folder.name)
                if record is not None and (project is None or record.project == project):
                    found.append(record)
        return sorted(found, key=lambda r: (r.started_at, r.run_id))

    def last_completed(self, project: str, source: str) -> RunRecord | None:
        """The newest completed run of this project and source: an incremental run's
        base. An incomplete run is none: the files it skipped must come again."""
        done = [
            r
            for r in self.records(project)
            if r.source == source and r.status is RunStatus.COMPLETED
        ]
        return max(done, key=lambda r: (r.completed_at or "", r.run_id), default=None)

    def journal(self, run_id: str) -> Journal:
        return Journal(self._dir(run_id) / "journal.jsonl")

    @contextlib.contextmanager
    def lock(self, run_id: str) -> Iterator[None]:
        """Held while a process ingests the run: a second one on this machine is refused
        (the broker fences one on another machine: the same transactional id)."""
        folder = self._dir(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise RunStateError(
                    f"run {run_id} is being ingested by another process on this machine"
                ) from None
            yield
        finally:
            os.close(fd)

    def write_manifest(self, run_id: str, entries: Iterable[ManifestEntry]) -> int:
        lines = [orjson.dumps([e.path, e.size, e.mtime_ns, e.sha256]) for e in entries]
        write_atomically(self._dir(run_id) / "manifest.jsonl", b"\n".join(lines) + b"\n")
        return len(lines)

    def manifest(self, run_id: str) -> dict[str, ManifestEntry] | None:
        """A directory run's manifest, or None if it has none (any more)."""
        path = self._dir(run_id) / "manifest.jsonl"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        entries = {}
        for line in raw.splitlines():
            if line.strip():
                path_, size, mtime_ns, sha256 = orjson.loads(line)
                entries[path_] = ManifestEntry(path_, size, mtime_ns, sha256)
        return entries

    def prune(self, max_age: timedelta, now: datetime | None = None) -> list[str]:
        """Remove the journals of runs that finished longer than ``max_age`` ago, and
        the manifests no incremental run can start from any more (a newer finished run
        of the same source has its own). Records stay: a finished run re-run with its
        id is still a no-op. Returns the runs pruned."""
        cutoff = (now or datetime.now(UTC)) - max_age
        records = self.records()
        newest: dict[tuple[str, str], str] = {}  # the base of the next incremental run
        for record in sorted(records, key=lambda r: (r.completed_at or "", r.run_id)):
            if record.status is RunStatus.COMPLETED:
                newest[(record.project, record.source)] = record.run_id
        pruned = []
        for record in records:
            if not record.finished or record.completed_at is None:
                continue
            if datetime.fromisoformat(record.completed_at) > cutoff:
                continue
            folder, removed = self._dir(record.run_id), False
            for name in ("journal.jsonl", "manifest.jsonl"):
                if name == "manifest.jsonl" and newest.get((record.project, record.source)) == (
                    record.run_id
                ):
                    continue  # the cursor of the next incremental run
                with contextlib.suppress(FileNotFoundError):
                    (folder / name).unlink()
                    removed = True
            if removed:
                pruned.append(record.run_id)
        return pruned
