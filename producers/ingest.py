"""One ingest run: every candidate becomes a published FileEvent or a recorded skip.

The run is bracketed by RunStarted and RunCompleted events; the latter carries
the counts and the digest of the sorted (path, sha256) list, and is published
only when every file event was delivered. Failures are never silent: a file
that could not be published is named in the summary and fails the run.

Events go out in batches, each one Kafka transaction (a number of files, of
bytes, or of seconds, whichever comes first), RunStarted in the first and
RunCompleted in the last. The run's journal (:mod:`producers.runs`) says which
batches committed; an attempt that resumes the run skips their files, so each
file of a run is published once across all its attempts. An incremental run
publishes what changed since the last completed run of its project and source.
"""

from __future__ import annotations

import hashlib
import logging
import os
import resource
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from headrace import __version__
from headrace.errors import HeadraceError, is_transient
from headrace.failpoints import failpoint
from producers.base import (
    Candidate,
    EncodedSink,
    EventSink,
    Source,
    SourceInfo,
    SourceKind,
    file_signature,
)
from producers.breaker import CircuitBreaker
from producers.costs import CostEstimate, stored_bytes
from producers.errors import TransactionAborted
from producers.policy import FilePolicy, Skip, is_utf8, shown_path
from producers.pool import Prepared
from producers.prepare import Context, EncodedFile, Task, prepare_inline
from producers.runs import (
    Batch,
    Checkpoint,
    FileEntry,
    Journal,
    ManifestEntry,
    RunRecord,
    RunStateError,
    RunStatus,
    RunStore,
    now_iso,
)
from schemas.models import (
    ContentStrategy,
    FileEvent,
    GitReference,
    ObjectReference,
    Op,
    RunCounts,
    RunEvent,
    RunEventKind,
    SkippedFile,
    SkipReason,
    run_digest,
)
from storage.errors import ContentMismatch
from storage.objects import ObjectStore

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024
# Paths and details of the skipped files a RunCompleted event lists, at most: far below
# Kafka's default message limit of 1 MiB, whatever the names (all are counted).
SKIPS_LISTED_BYTES = 256 * 1024
PRODUCER = f"headrace {__version__}"


class StrategyChoice(StrEnum):
    AUTO = "auto"
    INLINE = "inline"
    OBJECT_STORAGE = "object_storage"
    GIT_REFERENCE = "git_reference"


@dataclass(frozen=True)
class IngestOptions:
    strategy: StrategyChoice = StrategyChoice.AUTO
    inline_limit: int = 100 * 1024
    max_file_size: int = 1024**3
    exclude: tuple[str, ...] = ()
    prefer_git_reference: bool = False
    presign_expiry: timedelta = timedelta(hours=24)
    dry_run: bool = False
    max_skips_listed: int = 1000  # paths per skip reason the RunCompleted event lists
    upload_attempts: int = 3  # tries of one upload on transient failures (tenacity)
    upload_backoff_s: float = 0.5  # exponential backoff with jitter between them
    transaction_files: int = 1000  # a batch (one Kafka transaction) holds at most these
    transaction_bytes: int = 64 * 1024 * 1024  # ... and about this many bytes of events
    transaction_max_s: float = 10.0  # ... and is committed once it is this old
    # processes preparing inline files (read, sha256, encoding, Avro); 1: the run itself
    workers: int = 1
    workers_when_idle: bool = False  # ... started only if a core is idle (the CLI default)
    # The content options (CONTENT_OPTIONS) set explicitly, None for all: a resumed run
    # takes the others from its record (see resumed_options).
    given: frozenset[str] | None = None


CONTENT_OPTIONS = ("strategy", "inline_limit", "max_file_size", "exclude", "prefer_git_reference")


def content_options(options: IngestOptions) -> dict[str, Any]:
    """The options that decide what a run's events are: kept in its record, so that a
    resumed run publishes its files as its first attempt would have."""
    return {
        "strategy": options.strategy.value,
        "inline_limit": options.inline_limit,
        "max_file_size": options.max_file_size,
        "exclude": list(options.exclude),
        "prefer_git_reference": options.prefer_git_reference,
    }


def resumed_options(options: IngestOptions, record: RunRecord) -> IngestOptions:
    """``options`` for resuming ``record``'s run: the content options not given are the
    ones the run started with; RunStateError if a given one differs from those."""
    if record.options is None:
        return options  # recorded before options were kept: as given
    started = options_of(record)
    given = set(CONTENT_OPTIONS) if options.given is None else options.given
    taken = {k: getattr(started, k) for k in CONTENT_OPTIONS if k not in given}
    merged = replace(options, **taken)
    _check_same(record, merged)
    return merged


def _check_same(record: RunRecord, options: IngestOptions) -> None:
    wanted = content_options(options)
    if record.options is None or record.options == wanted:
        return
    changed = ", ".join(
        f"{k} {record.options.get(k)!r}, not {v!r}"
        for k, v in wanted.items()
        if record.options.get(k) != v
    )
    raise RunStateError(
        f"run {record.run_id} was started with other options ({changed}):"
        " resume it with the options it started with, or without them"
    )


def options_of(record: RunRecord) -> IngestOptions:
    """The options a recorded run was started with (the defaults for a record without)."""
    kept = record.options or {}
    defaults = IngestOptions()
    return replace(
        defaults,
        strategy=StrategyChoice(kept.get("strategy", defaults.strategy.value)),
        inline_limit=int(kept.get("inline_limit", defaults.inline_limit)),
        max_file_size=int(kept.get("max_file_size", defaults.max_file_size)),
        exclude=tuple(kept.get("exclude", defaults.exclude)),
        prefer_git_reference=bool(kept.get("prefer_git_reference", False)),
    )


@dataclass
class Summary:
    run_id: str
    project: str
    source: str
    commit: str | None
    dry_run: bool
    counts: RunCounts = field(default_factory=RunCounts)
    skipped: list[SkippedFile] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    uploads: int = 0
    deduplicated: int = 0
    uploaded_bytes: int = 0
    digest: str | None = None
    duration_s: float = 0.0
    cpu_s: float = 0.0  # CPU seconds of the run: this process's threads and its workers
    worker_processes: int = 0  # processes that prepared inline files (0: the run itself)
    upload_retries: int = 0
    breaker: str = "closed"  # the object store breaker's state at the end
    breaker_opened: int = 0
    already_completed: bool = False  # a completed run asked again: nothing was done
    attempt: int = 1
    resumed: int = 0  # files committed by earlier attempts, not read again
    unchanged: int = 0  # an incremental run: files as the base run left them
    base_run: str | None = None  # an incremental run's base
    transactions: int = 0
    object_store_bytes: int = 0  # the run's distinct object-storage content (by sha256)
    cost: CostEstimate | None = None  # from the configured prices (producers/costs.py)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def unavailable(self) -> list[str]:
        """Files skipped because the object store was unavailable: the run is incomplete."""
        return [s.path for s in self.skipped if s.reason is SkipReason.OBJECT_STORE_UNAVAILABLE]

    def as_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "project": self.project,
            "source": self.source,
            "commit": self.commit,
            "dry_run": self.dry_run,
            "ok": self.ok,
            "counts": self.counts.model_dump(),
            "skipped": [
                {"path": s.path, "reason": s.reason.value.lower(), "detail": s.detail}
                for s in self.skipped
            ],
            "failed": self.failed,
            "incomplete": bool(self.unavailable),
            "object_store": {
                "retries": self.upload_retries,
                "breaker": self.breaker,
                "breaker_opened": self.breaker_opened,
                "unavailable": len(self.unavailable),
            },
            "uploads": {
                "made": self.uploads,
                "deduplicated": self.deduplicated,
                "bytes": self.uploaded_bytes,
            },
            "digest": self.digest,
            "already_completed": self.already_completed,
            "attempt": self.attempt,
            "resumed": self.resumed,
            "incremental": {"base_run": self.base_run, "unchanged": self.unchanged},
            "transactions": self.transactions,
            "cost_estimate": None if self.cost is None else self.cost.to_json(),
            "duration_s": round(self.duration_s, 3),
            "cpu_s": round(self.cpu_s, 3),
            "worker_processes": self.worker_processes,
        }


def _signature(path: Path | None) -> tuple[int, int, int, int] | None:
    """The file's signature now (:func:`producers.base.file_signature`)."""
    if path is None:  # a git blob never changes
        return None
    return file_signature(os.stat(path))


class _StoreDown(Exception):  # noqa: N818 - internal signal: no upload, the store is down
    pass


class _Changed(Exception):  # noqa: N818 - internal signal: the bytes uploaded were not hashed
    pass


class _Failed(Exception):  # noqa: N818 - internal signal: this file failed, with why
    pass


class _Way(StrEnum):
    """How a candidate that is not skipped is read."""

    POOLED = "pooled"  # inline, prepared by the workers (a file on this disk)
    INLINE = "inline"  # inline, prepared by the run itself (a git blob)
    HERE = "here"  # object storage or a git reference: by the run itself, at its turn


# Candidates walked and not settled yet, per worker, at most: the walk waits for the
# oldest file's result beyond this, whatever the pool's own bounds.
PENDING_PER_WORKER = 1024


def task_of(candidate: Candidate) -> Task:
    """What :func:`producers.prepare.prepare_inline` needs of a candidate (strings and
    the source's opener: cheap to send to a worker)."""
    local = candidate.local_path
    return (
        candidate.path,
        candidate.open,
        None if local is None else str(local),
        candidate.size,
        candidate.signature,
    )


@dataclass
class _Files:
    """A run's walk: what it decided so far."""

    summary: Summary
    checkpoint: Checkpoint
    baseline: Baseline | None
    policy: FilePolicy
    info: SourceInfo
    project: str
    now: datetime
    kept: dict[str, ManifestEntry] = field(default_factory=dict)  # incremental: left as they were
    seen: set[str] = field(default_factory=set)
    unknown: list[str] = field(default_factory=list)  # directories skipped whole: no deletes
    done_files: int = 0
    done_bytes: int = 0


@dataclass
class Baseline:
    """An incremental directory run's starting point: the manifest of the last
    completed run of the project and source."""

    run_id: str
    entries: dict[str, ManifestEntry]

    def unchanged(self, candidate: Candidate) -> ManifestEntry | None:
        """The file's entry if its size and modification time are as recorded."""
        entry = self.entries.get(candidate.path)
        if entry is None or candidate.local_path is None:
            return None
        signature = candidate.signature
        if signature is None:
            try:
                signature = file_signature(candidate.local_path.stat())
            except OSError:
                return None
        return entry if signature[:2] == (entry.size, entry.mtime_ns) else None


@dataclass
class Ingest:
    source: Source
    options: IngestOptions
    run_id: str
    project: str | None = None
    publisher: EventSink | None = None  # None for a dry run
    store: ObjectStore | None = None
    progress: Callable[[int, int], None] = lambda _files, _bytes: None
    runs: RunStore | None = None  # where runs are remembered; None: nothing is (dry runs)
    transactional_id: str = ""
    incremental: bool = False
    resume_only: bool = False  # --resume: the run must be recorded already
    _store_down: str | None = None
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    _retries: int = 0
    _mtime_ns: int | None = None  # the file just read, as it was when read
    _takes_encoded: bool = False  # the sink publishes encoded bodies (an EncodedSink)
    _used_pool: bool = False  # this run's inline files were prepared by worker processes

    def run(self) -> Summary:
        started, cpu = time.perf_counter(), _cpu_s()
        info = self.source.info()
        project = self.project or info.project
        self._check_strategy(info)
        summary = Summary(self.run_id, project, info.location, info.commit, self.options.dry_run)
        record, checkpoint, journal = self._attempt(info, project, summary)
        if record is not None and record.status is RunStatus.COMPLETED:
            return _already_completed(summary, record, started)
        baseline = self._baseline(record, info, project, summary)
        if (
            record is not None
            and record.status is RunStatus.RUNNING
            and checkpoint.completed
            and self._completed_before(record, checkpoint, baseline)
        ):
            return _already_completed(summary, record, started)
        before = _store_counters(self.store)
        now = datetime.now(UTC)
        self._batcher = _Batcher(self, journal, checkpoint, summary)
        if not checkpoint.started:
            self._publish_run(RunEventKind.STARTED, info, project, now)
            self._batcher.batch.started = True
            self._batcher.produced()
        self._open_store()
        files = _Files(
            summary,
            checkpoint,
            baseline,
            FilePolicy(max_file_size=self.options.max_file_size, exclude=self.options.exclude),
            info,
            project,
            now,
        )
        self._walk(files)
        seen, unknown, kept = files.seen, files.unknown, files.kept
        for path in self._deletes(baseline, seen, unknown):
            if not is_utf8(path):  # never published (skipped as unreadable): nothing to delete
                continue
            if path in checkpoint.files:
                continue
            event = FileEvent(
                project=project,
                path=path,
                size=0,
                checksum="",
                run_id=self.run_id,
                op=Op.DELETE,
                producer_version=PRODUCER,
                event_time=now,
            )
            self._publish(event)
            self._batcher.add(event, None)
        self._finish(summary, info, project, checkpoint)
        after = _store_counters(self.store)
        summary.uploads, summary.deduplicated, summary.uploaded_bytes = (
            a - b for a, b in zip(after, before, strict=True)
        )
        summary.upload_retries = self._retries
        summary.breaker, summary.breaker_opened = self.breaker.state.value, self.breaker.opened
        if record is not None and self.runs is not None:
            self._record(record, summary, checkpoint, baseline, kept, info)
        summary.duration_s = time.perf_counter() - started
        summary.cpu_s = _cpu_s() - cpu
        return summary

    def _walk(self, files: _Files) -> None:
        """Every candidate, settled in the walk's order; inline files of a directory are
        prepared ahead by the workers (:mod:`producers.pool`) while the walk goes on."""
        ctx = Context(
            files.project,
            self.run_id,
            PRODUCER,
            files.now,
            self.options.inline_limit,
            encode=self.publisher is not None,
        )
        self._takes_encoded = isinstance(self.publisher, EncodedSink)
        pending: deque[tuple[Candidate, _Way | Skip]] = deque()
        with Prepared(ctx, self.options.workers, self.options.workers_when_idle) as prepared:
            behind = PENDING_PER_WORKER * max(1, self.options.workers)
            for candidate in self.source.candidates():
                way = self._way(candidate, files)
                if way is None:
                    continue
                pending.append((candidate, way))
                if way is _Way.POOLED:
                    prepared.put(task_of(candidate))
                while pending and (
                    pending[0][1] is not _Way.POOLED or prepared.ready() or len(pending) > behind
                ):
                    self._settle(*pending.popleft(), prepared, ctx, files)
            prepared.flush()
            while pending:
                self._settle(*pending.popleft(), prepared, ctx, files)
            self._used_pool = prepared.used_pool
            files.summary.worker_processes = self.options.workers if prepared.used_pool else 0

    def _way(self, candidate: Candidate, files: _Files) -> _Way | Skip | None:
        """What becomes of a candidate, decided as the walk finds it (from what does not
        change during the run): None if nothing (committed by an earlier attempt, or
        unchanged since the incremental base), else a Skip or how it is read."""
        files.seen.add(candidate.path)
        if candidate.path in files.checkpoint.files:  # committed by an earlier attempt
            files.summary.resumed += 1
            return None
        skip = files.policy.by_metadata(candidate)
        if skip is not None:
            if candidate.path.endswith("/"):
                files.unknown.append(candidate.path)
            return skip
        if files.baseline is not None:
            if (same := files.baseline.unchanged(candidate)) is not None:
                files.kept[candidate.path] = same
                files.summary.unchanged += 1
                return None
        if self._choose(candidate.size, files.info) is not ContentStrategy.INLINE:
            return _Way.HERE
        return _Way.POOLED if candidate.local_path is not None else _Way.INLINE

    def _settle(
        self,
        candidate: Candidate,
        way: _Way | Skip,
        prepared: Prepared,
        ctx: Context,
        files: _Files,
    ) -> None:
        """One candidate's outcome, in the walk's order: published or skipped."""
        summary, baseline = files.summary, files.baseline
        event: FileEvent | EncodedFile | Skip
        mtime_ns: int | None = None
        if isinstance(way, Skip):
            event = way
        elif way is _Way.HERE:
            self._batcher.before(candidate, self._choose(candidate.size, files.info))
            try:
                event = self._stable_event(candidate, files.info, files.project, files.now)
            except _Failed as failed:
                summary.failed[candidate.path] = str(failed)
                return
            except _StoreDown as down:
                event = Skip(SkipReason.OBJECT_STORE_UNAVAILABLE, str(down))
            except OSError as exc:  # refused, gone since the walk, an I/O error
                reason = (exc.strerror or type(exc).__name__).lower()
                event = Skip(SkipReason.UNREADABLE, f"cannot be read: {reason}")
            mtime_ns = self._mtime_ns
        else:
            self._batcher.before(candidate, ContentStrategy.INLINE)
            event = (
                prepared.take() if way is _Way.POOLED else prepare_inline(task_of(candidate), ctx)
            )
            mtime_ns = None if isinstance(event, Skip) else event.mtime_ns
        if isinstance(event, Skip):
            skipped = SkippedFile(
                path=shown_path(candidate.path), reason=event.reason, detail=event.detail
            )
            summary.skipped.append(skipped)
            self._batcher.skipped(skipped)
            if baseline is not None and candidate.path in baseline.entries:
                files.kept[candidate.path] = baseline.entries[candidate.path]  # not a delete
            return
        if baseline is not None:
            previous = baseline.entries.get(event.path)
            if previous is not None and (previous.sha256, previous.size) == (
                event.checksum,
                event.size,
            ):  # touched, not changed: remembered with its new time, not published
                files.kept[event.path] = ManifestEntry(
                    event.path, event.size, mtime_ns or 0, event.checksum
                )
                summary.unchanged += 1
                return
        self._publish(event)
        self._batcher.add(event, mtime_ns)
        files.done_files, files.done_bytes = files.done_files + 1, files.done_bytes + event.size
        self.progress(files.done_files, files.done_bytes)

    def _finish(
        self, summary: Summary, info: SourceInfo, project: str, checkpoint: Checkpoint
    ) -> None:
        """Counts and digest over every attempt; the RunCompleted event in the last
        transaction, if every file of the run is in."""
        batcher = self._batcher
        entries = [*checkpoint.files.values(), *batcher.batch.files]
        summary.counts = _counts(entries, len(summary.skipped))
        summary.digest = run_digest((e.path, e.sha256) for e in entries if e.op == "upsert")
        summary.object_store_bytes = stored_bytes(
            (e.sha256, e.size) for e in entries if e.strategy == "object_storage"
        )
        if self.publisher is not None:
            batcher.settle()  # the files' deliveries, before the run claims them
        if summary.ok:
            self._publish_run(RunEventKind.COMPLETED, info, project, datetime.now(UTC), summary)
            batcher.batch.completed = True
        batcher.commit()
        summary.transactions = batcher.commits

    def _deletes(self, baseline: Baseline | None, seen: set[str], unknown: list[str]) -> list[str]:
        if baseline is None:
            return self.source.deleted()
        return sorted(
            path
            for path in baseline.entries
            if path not in seen and not any(path.startswith(d) for d in unknown)
        )

    # --- the run's state: records, resume, incremental ---------------------------------

    def _attempt(
        self, info: SourceInfo, project: str, summary: Summary
    ) -> tuple[RunRecord | None, Checkpoint, Journal | None]:
        """This run's record (new, or an earlier attempt's) and what it committed."""
        if self.runs is None:
            if self.resume_only:
                raise RunStateError("--resume needs the run's state: not with --dry-run")
            return None, Checkpoint(), None
        record = self.runs.get(self.run_id)
        if record is None:
            if self.resume_only:
                raise RunStateError(
                    f"no run {self.run_id} is recorded in {self.runs.root}: nothing to resume"
                )
            record = RunRecord(
                run_id=self.run_id,
                project=project,
                source=info.location,
                source_kind=info.kind.value,
                commit=info.commit,
                transactional_id=self.transactional_id,
                started_at=now_iso(),
                incremental=self.incremental,
                options=content_options(self.options),
            )
            self.runs.save(record)
            return record, Checkpoint(), self.runs.journal(self.run_id)
        if (record.project, record.source) != (project, info.location):
            raise RunStateError(
                f"run {self.run_id} ingested {record.project} from {record.source}, not"
                f" {project} from {info.location}: a run resumes its own source"
            )
        if record.commit is not None and record.commit != info.commit:
            raise RunStateError(
                f"run {self.run_id} read commit {record.commit[:12]}, not"
                f" {(info.commit or '?')[:12]}: resume it at its own commit"
            )
        if record.status is RunStatus.COMPLETED:
            return record, Checkpoint(), None
        _check_same(record, self.options)  # run_ingest took them from the record
        journal = self.runs.journal(self.run_id)
        checkpoint = journal.replay()
        if checkpoint.pending is not None:
            self._settle_pending(journal, checkpoint)
        record.attempts += 1
        self.runs.save(record)
        summary.attempt = record.attempts
        return record, checkpoint, journal

    def _settle_pending(self, journal: Journal, checkpoint: Checkpoint) -> None:
        """The batch an earlier attempt was committing when it stopped: the broker
        says whether it committed (the producer's init_transactions finished it)."""
        assert checkpoint.pending is not None  # noqa: S101 - the caller checked
        batch, probe = checkpoint.pending
        committed = (
            probe is not None and self.publisher is not None and self.publisher.committed(probe)
        )
        if committed:
            journal.committed(batch)
            checkpoint.merge(batch)
        else:
            journal.aborted(batch)
        log.info(
            "the batch %d the last attempt left pending %s",
            batch.number,
            "had committed" if committed else "was aborted: its files come again",
        )
        checkpoint.pending = None

    def _baseline(
        self, record: RunRecord | None, info: SourceInfo, project: str, summary: Summary
    ) -> Baseline | None:
        """An incremental run's base: the last completed run of this project and source
        (kept in the record, so that a resumed attempt starts from the same one)."""
        if record is None or not record.incremental or self.runs is None:
            return None
        if record.attempts == 1 and record.base_run is None:
            base = self.runs.last_completed(project, info.location)
            record.base_run = base.run_id if base is not None else None
            self.runs.save(record)
        if record.base_run is None:
            log.info("no completed run of %s from %s: a full run", project, info.location)
            return None
        base = self.runs.get(record.base_run)
        summary.base_run = record.base_run
        if base is None or base.source_kind != info.kind.value:
            summary.base_run = None
            return None
        if base.commit is not None:
            if not self.source.changes_since(base.commit):
                log.warning("commit %s is not in the repository: a full run", base.commit[:12])
                summary.base_run = None
            return None
        entries = self.runs.manifest(base.run_id)
        if entries is None:
            summary.base_run = None
            return None
        return Baseline(base.run_id, entries)

    def _record(
        self,
        record: RunRecord,
        summary: Summary,
        checkpoint: Checkpoint,
        baseline: Baseline | None,
        kept: dict[str, ManifestEntry],
        info: SourceInfo,
    ) -> None:
        if self._batcher.completed:  # this attempt's RunCompleted committed
            reasons = [s.reason.value for s in summary.skipped]
            self._close(record, summary.counts, summary.digest, reasons, checkpoint, baseline, kept)
        assert self.runs is not None  # noqa: S101 - the caller checked
        self.runs.save(record)

    def _close(
        self,
        record: RunRecord,
        counts: RunCounts,
        digest: str | None,
        reasons: list[str],
        checkpoint: Checkpoint,
        baseline: Baseline | None,
        kept: dict[str, ManifestEntry],
    ) -> None:
        """The run's RunCompleted committed: its record says so, with its cursor."""
        assert self.runs is not None  # noqa: S101 - the callers checked
        unavailable = SkipReason.OBJECT_STORE_UNAVAILABLE.value in reasons
        record.status = RunStatus.INCOMPLETE if unavailable else RunStatus.COMPLETED
        record.completed_at = now_iso()
        record.counts = counts.model_dump()
        record.skip_counts = dict(Counter(reasons))
        record.digest = digest
        if record.source_kind == SourceKind.DIRECTORY.value:
            # The tree as the consumers now have it: the base's files, those this run
            # found as they were, and what the run published.
            manifest = {**(baseline.entries if baseline is not None else {}), **kept}
            for entry in checkpoint.files.values():
                if entry.op == "delete":
                    manifest.pop(entry.path, None)
                elif entry.mtime_ns is not None:
                    manifest[entry.path] = ManifestEntry(
                        entry.path, entry.size, entry.mtime_ns, entry.sha256
                    )
            record.manifest_files = self.runs.write_manifest(
                record.run_id, (manifest[p] for p in sorted(manifest))
            )

    def _completed_before(
        self, record: RunRecord, checkpoint: Checkpoint, baseline: Baseline | None
    ) -> bool:
        """An earlier attempt committed the RunCompleted event and died before its
        record said so: the record is closed now, from the journal; True if that
        leaves the run completed (an incomplete one goes on as a resume)."""
        entries = list(checkpoint.files.values())
        reasons = [reason for reason, _detail in checkpoint.skipped.values()]
        counts = _counts(entries, len(reasons))
        digest = run_digest((e.path, e.sha256) for e in entries if e.op == "upsert")
        self._close(record, counts, digest, reasons, checkpoint, baseline, {})
        assert self.runs is not None  # noqa: S101 - the caller checked
        self.runs.save(record)
        return record.status is RunStatus.COMPLETED

    # --- decisions ---------------------------------------------------------------

    def _check_strategy(self, info: SourceInfo) -> None:
        if (
            self.options.strategy is StrategyChoice.GIT_REFERENCE
            and info.kind is SourceKind.DIRECTORY
        ):
            raise HeadraceError("--content-strategy git_reference needs a git source")

    def _choose(self, size: int, info: SourceInfo) -> ContentStrategy:
        choice, small = self.options.strategy, size <= self.options.inline_limit
        if choice is StrategyChoice.INLINE:
            return ContentStrategy.INLINE
        if choice is StrategyChoice.GIT_REFERENCE:
            return ContentStrategy.GIT_REFERENCE
        if choice is StrategyChoice.AUTO:
            if self.options.prefer_git_reference and info.kind is SourceKind.GIT_URL:
                return ContentStrategy.GIT_REFERENCE
            if small:
                return ContentStrategy.INLINE
        # A forced object_storage never falls back to inline: with the store down its
        # files are skipped as OBJECT_STORE_UNAVAILABLE and the run exits 1 (incomplete).
        return ContentStrategy.OBJECT_STORAGE

    def _open_store(self) -> None:
        if self.options.dry_run or self.options.strategy in (
            StrategyChoice.INLINE,
            StrategyChoice.GIT_REFERENCE,
        ):
            return
        if self.store is None:
            self._store_down = "no object store configured"
            return
        try:
            self.store.ensure_bucket()
        except HeadraceError as exc:
            if not is_transient(exc):
                raise
            self.breaker.trip(str(exc))
            log.warning("object store unavailable, small files go inline: %s", exc)

    # --- building events ------------------------------------------------------------

    def _stable_event(
        self, candidate: Candidate, info: SourceInfo, project: str, now: datetime
    ) -> FileEvent | Skip:
        """The event of a file that is not sent inline (inline files:
        :func:`producers.prepare.prepare_inline`), made from bytes that did not change
        while they were read: a file on disk whose size, times or inode differ after the
        read, or whose upload carried other bytes than were hashed, is read once more,
        then skipped as CHANGED_WHILE_READ; never published half-read."""
        path = candidate.local_path
        for attempt in range(2):
            # the walk's stat is the first "before"; a file changed since reads again
            before = (
                candidate.signature if attempt == 0 and candidate.signature else _signature(path)
            )
            try:
                event = self._event(candidate, info, project, now)
            except _Changed as changed:
                if path is None:  # a git blob spooled to a temporary file: not a change
                    raise _Failed(f"the spooled blob changed: {changed}") from None
                continue  # the upload saw other bytes because the file changed: again
            except _Failed:
                if before == _signature(path):
                    raise
                continue  # the upload saw other bytes because the file changed: again
            if before == _signature(path):
                self._mtime_ns = before[1] if before is not None else None
                return event
        return Skip(SkipReason.CHANGED_WHILE_READ, "it changed while it was read, twice")

    def _event(
        self, candidate: Candidate, info: SourceInfo, project: str, now: datetime
    ) -> FileEvent | Skip:
        strategy = self._choose(candidate.size, info)
        fields: dict[str, Any] = {"content_strategy": strategy}
        with self._spooled(candidate) as (checksum, size, head, path):
            if (skip := FilePolicy.by_content(head, size)) is not None:
                return skip
            if strategy is ContentStrategy.OBJECT_STORAGE:
                fields["object_ref"] = self._upload(path, checksum, size)
            else:
                fields["git_ref"] = GitReference(
                    url=info.location,
                    commit=info.commit or "",
                    ref=info.ref,
                    path=candidate.path,
                    blob_id=candidate.blob_id or "",
                )
        return FileEvent(
            project=project,
            path=candidate.path,
            size=size,
            checksum=checksum,
            run_id=self.run_id,
            op=Op.UPSERT,
            producer_version=PRODUCER,
            event_time=now,
            **fields,
        )

    @contextmanager
    def _spooled(self, candidate: Candidate) -> Iterator[tuple[str, int, bytes, Path | None]]:
        """Hash the file as a stream; a git blob is spooled to a temp file for upload."""
        digest, size, head = hashlib.sha256(), 0, b""
        spool = None
        if candidate.local_path is None and self._uploads_possible():
            spool = tempfile.NamedTemporaryFile(prefix="headrace-blob-", delete=False)  # noqa: SIM115
        try:
            with candidate.open() as stream:
                while chunk := stream.read(CHUNK):
                    if not head:
                        head = chunk[:64]
                    digest.update(chunk)
                    size += len(chunk)
                    if spool is not None:
                        spool.write(chunk)
            if spool is not None:
                spool.close()
            yield (
                digest.hexdigest(),
                size,
                head,
                (Path(spool.name) if spool else candidate.local_path),
            )
        finally:
            if spool is not None:
                spool.close()
                Path(spool.name).unlink(missing_ok=True)

    def _uploads_possible(self) -> bool:
        return (
            not self.options.dry_run
            and self.store is not None
            and self._store_down is None
            and self.breaker.allow()
        )

    def _upload(self, path: Path | None, checksum: str, size: int) -> ObjectReference:
        """Upload (retried on transient failures) and presign; _StoreDown when the store
        is unavailable or its breaker open, _Failed for a refusal."""
        if self.options.dry_run:
            return ObjectReference(bucket="(dry run)", key=checksum)
        store = self.store
        if self._store_down is not None or store is None:
            raise _StoreDown(f"object store unavailable: {self._store_down}")
        if path is None or not self.breaker.allow():
            raise _StoreDown(f"object store unavailable: {self.breaker.reason}")

        def retried(state: RetryCallState) -> None:
            self._retries += 1
            error = state.outcome.exception() if state.outcome else None
            log.warning("upload attempt %d failed, retrying: %s", state.attempt_number, error)

        backoff = self.options.upload_backoff_s
        try:
            for attempt in Retrying(
                retry=retry_if_exception(is_transient),
                stop=stop_after_attempt(self.options.upload_attempts),
                wait=wait_exponential_jitter(multiplier=backoff, max=8 * backoff, jitter=backoff),
                before_sleep=retried,
                reraise=True,
            ):
                with attempt:
                    stored = store.put_file(path, checksum, size)
                    url, expires = store.presign(stored.key, self.options.presign_expiry)
        except ContentMismatch as exc:
            self.breaker.success()  # the store answered: the bytes it was sent changed
            raise _Changed(exc.reason) from None
        except HeadraceError as exc:
            if is_transient(exc):
                self.breaker.failure(str(exc))
                raise _StoreDown(f"object store unavailable: {exc}") from None
            raise _Failed(str(exc)) from None
        self.breaker.success()
        return ObjectReference(bucket=stored.bucket, key=stored.key, url=url, expires_at=expires)

    # --- publishing -------------------------------------------------------------------

    def _publish(self, event: FileEvent | EncodedFile) -> None:
        if self.publisher is None:
            return
        if not isinstance(event, EncodedFile):
            self.publisher.file(event)
        elif self._takes_encoded:
            self.publisher.encoded(event)  # type: ignore[attr-defined]  # an EncodedSink
        else:
            self.publisher.file(event.event())

    def _listed(self, skipped: list[SkippedFile]) -> list[SkippedFile]:
        return _bounded(skipped, self.options.max_skips_listed)

    def _publish_run(
        self,
        kind: RunEventKind,
        info: SourceInfo,
        project: str,
        at: datetime,
        summary: Summary | None = None,
    ) -> None:
        if self.publisher is None:
            return
        self.publisher.run(
            RunEvent(
                run_id=self.run_id,
                kind=kind,
                project=project,
                source=info.location,
                commit=info.commit,
                event_time=at,
                producer_version=PRODUCER,
                counts=summary.counts if summary else None,
                skipped=self._listed(summary.skipped) if summary else [],
                skip_counts=dict(Counter(s.reason.value for s in summary.skipped))
                if summary
                else {},
                digest=summary.digest if summary else None,
            )
        )


def _cpu_s() -> float:
    """CPU seconds so far of this process (all its threads) and of its children waited
    for (the pool's workers, git's processes)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _already_completed(summary: Summary, record: RunRecord, started: float) -> Summary:
    """A completed run asked again: its record's account, and nothing done."""
    summary.already_completed = True
    summary.counts = RunCounts(**(record.counts or {}))
    summary.digest, summary.commit = record.digest, record.commit
    summary.duration_s = time.perf_counter() - started
    return summary


def _bounded(
    skipped: list[SkippedFile], per_reason: int, budget: int = SKIPS_LISTED_BYTES
) -> list[SkippedFile]:
    """At most ``per_reason`` skipped files of each reason, in their order, and no more
    than ``budget`` bytes of paths and details in all: a tree of a thousand long hostile
    names per reason would otherwise make a RunCompleted event larger than the broker
    takes, and the run could never complete."""
    seen: Counter[SkipReason] = Counter()
    kept = []
    for entry in skipped:
        seen[entry.reason] += 1
        if seen[entry.reason] <= per_reason:
            budget -= len(entry.path.encode()) + len((entry.detail or "").encode()) + 16
            if budget < 0:
                break
            kept.append(entry)
    return kept


def _store_counters(store: ObjectStore | None) -> tuple[int, int, int]:
    """(uploads, deduplicated, uploaded bytes) so far, to report one run's share."""
    names = ("uploads", "deduplicated", "uploaded_bytes")
    return tuple(int(getattr(store, n, 0)) for n in names)  # type: ignore[return-value]


LONG_UPLOAD = 8 * 1024 * 1024  # no transaction stays open while a file this large uploads
EVENT_OVERHEAD = 1024  # about what a reference event weighs, for the batch's byte bound


@dataclass
class _Batcher:
    """The run's batches: each one Kafka transaction, journalled before and after it
    commits, so that a later attempt knows which files are in."""

    job: Ingest
    journal: Journal | None
    checkpoint: Checkpoint
    summary: Summary
    commits: int = 0
    completed: bool = False  # the RunCompleted event committed
    _opened: float | None = None  # when the open batch got its first event

    def __post_init__(self) -> None:
        self.batch = Batch(self.checkpoint.batches)

    def produced(self) -> None:
        if self._opened is None:
            self._opened = time.monotonic()

    def before(self, candidate: Candidate, strategy: ContentStrategy) -> None:
        """Before a file is read: a batch that is old is committed, and so is any open
        batch before a long upload, which must not hold a transaction open."""
        if self._opened is None:
            return
        age = time.monotonic() - self._opened
        if age >= self.job.options.transaction_max_s or (
            strategy is ContentStrategy.OBJECT_STORAGE and candidate.size >= LONG_UPLOAD
        ):
            self.commit()

    def add(self, event: FileEvent | EncodedFile, mtime_ns: int | None) -> None:
        deleted = event.op is Op.DELETE
        strategy = None if deleted else (event.content_strategy or ContentStrategy.INLINE)
        inline = isinstance(event, EncodedFile) or event.inline is not None
        self.batch.files.append(
            FileEntry(
                event.path,
                "delete" if deleted else "upsert",
                event.checksum,
                event.size,
                strategy.value.lower() if strategy else None,
                mtime_ns,
            )
        )
        self.batch.event_bytes += event.size if inline else EVENT_OVERHEAD
        self.produced()
        failpoint("ingest.produced")  # tests: die with the batch's transaction open
        options = self.job.options
        if (
            len(self.batch.files) >= options.transaction_files
            or self.batch.event_bytes >= options.transaction_bytes
        ):
            self.commit()

    def skipped(self, skipped: SkippedFile) -> None:
        self.batch.skipped.append((skipped.path, skipped.reason.value, skipped.detail))

    def settle(self) -> None:
        """Wait for the open batch's deliveries; a failed one aborts the batch."""
        publisher = self.job.publisher
        if publisher is None:
            return
        failed, _probe = publisher.prepare()
        if failed:
            self._abort(failed)

    def commit(self) -> None:
        """Commit the open batch: journalled as pending (with where its first record
        landed), committed, journalled as committed."""
        publisher, batch = self.job.publisher, self.batch
        if publisher is None:  # a dry run
            self.checkpoint.merge(batch)
            self.completed |= batch.completed
            self._next()
            return
        if not batch:
            return
        failed, probe = publisher.prepare()
        if failed:
            self._abort(failed)
            return
        if self.journal is not None:
            self.journal.pending(batch, probe)
        failpoint("ingest.before_commit")  # tests: die with the batch's fate unknown
        try:
            publisher.commit()
        except TransactionAborted as exc:
            if self.journal is not None:
                self.journal.aborted(batch)
            self._lost(batch, f"its transaction was aborted: {exc}")
            self._next()
            return
        failpoint("ingest.after_commit")  # tests: die before the journal says so
        if self.journal is not None:
            self.journal.committed(batch)
        self.checkpoint.merge(batch)
        self.commits += 1
        self.completed |= batch.completed
        self._next()

    def _abort(self, failed: dict[str, str]) -> None:
        publisher = self.job.publisher
        assert publisher is not None  # noqa: S101 - only called with one
        publisher.abort()
        self.summary.failed.update(failed)
        first = next(iter(failed.values()))
        self._lost(self.batch, f"its transaction was aborted: another event failed ({first})")
        self._next()

    def _lost(self, batch: Batch, why: str) -> None:
        for entry in batch.files:
            self.summary.failed.setdefault(entry.path, why)
        if batch.started:
            self.summary.failed.setdefault("<run started>", why)
        if batch.completed:
            self.summary.failed.setdefault("<run completed>", why)

    def _next(self) -> None:
        self.batch = Batch(self.batch.number + 1)
        self._opened = None


def _counts(entries: list[FileEntry], skipped: int) -> RunCounts:
    counts = Counter[str]()
    for entry in entries:
        counts["files"] += 1
        if entry.op == "delete":
            counts["deleted"] += 1
        else:
            counts["bytes"] += entry.size
            counts[entry.strategy or "inline"] += 1
    return RunCounts(**counts, skipped=skipped)
