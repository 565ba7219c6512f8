"""One ingest run: every candidate becomes a published FileEvent or a recorded skip.

The run is bracketed by RunStarted and RunCompleted events; the latter carries
the counts and the digest of the sorted (path, sha256) list, and is published
only when every file event was delivered. Failures are never silent: a file
that could not be published is named in the summary and fails the run.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
from producers.base import Candidate, EventSink, Source, SourceInfo, SourceKind
from producers.breaker import CircuitBreaker
from producers.policy import FilePolicy, Skip, detect_encoding, is_utf8, shown_path
from schemas.models import (
    ContentStrategy,
    FileEvent,
    GitReference,
    InlineContent,
    ObjectReference,
    Op,
    RunCounts,
    RunEvent,
    RunEventKind,
    SkippedFile,
    SkipReason,
    run_digest,
)
from storage.objects import ObjectStore

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024
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
    upload_retries: int = 0
    breaker: str = "closed"  # the object store breaker's state at the end
    breaker_opened: int = 0

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
            "duration_s": round(self.duration_s, 3),
        }


def _signature(path: Path | None) -> tuple[int, int, int] | None:
    """What changes when a file on disk is written: size, modification time, inode."""
    if path is None:  # a git blob never changes
        return None
    found = path.stat()
    return found.st_size, found.st_mtime_ns, found.st_ino


class _StoreDown(Exception):  # noqa: N818 - internal signal: no upload, the store is down
    pass


class _Failed(Exception):  # noqa: N818 - internal signal: this file failed, with why
    pass


@dataclass
class Ingest:
    source: Source
    options: IngestOptions
    run_id: str
    project: str | None = None
    publisher: EventSink | None = None  # None for a dry run
    store: ObjectStore | None = None
    progress: Callable[[int, int], None] = lambda _files, _bytes: None
    _store_down: str | None = None
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    _retries: int = 0
    _digest: list[tuple[str, str]] = field(default_factory=list)

    def run(self) -> Summary:
        started = time.perf_counter()
        info = self.source.info()
        project = self.project or info.project
        self._check_strategy(info)
        summary = Summary(self.run_id, project, info.location, info.commit, self.options.dry_run)
        before = _store_counters(self.store)
        now = datetime.now(UTC)
        self._publish_run(RunEventKind.STARTED, info, project, now)
        self._open_store()
        policy = FilePolicy(max_file_size=self.options.max_file_size, exclude=self.options.exclude)
        counts = summary.counts.model_dump()
        done_files = done_bytes = 0
        for candidate in self.source.candidates():
            skip = policy.by_metadata(candidate)
            event: FileEvent | Skip | None = skip
            if event is None:
                try:
                    event = self._stable_event(candidate, info, project, now, summary)
                except _Failed as failed:
                    summary.failed[candidate.path] = str(failed)
                    continue
                except _StoreDown as down:
                    event = Skip(SkipReason.OBJECT_STORE_UNAVAILABLE, str(down))
                except OSError as exc:  # refused, gone since the walk, an I/O error
                    reason = (exc.strerror or type(exc).__name__).lower()
                    event = Skip(SkipReason.UNREADABLE, f"cannot be read: {reason}")
            if isinstance(event, Skip):
                summary.skipped.append(
                    SkippedFile(
                        path=shown_path(candidate.path), reason=event.reason, detail=event.detail
                    )
                )
                continue
            self._publish(event)
            counts[(event.content_strategy or ContentStrategy.INLINE).value.lower()] += 1
            counts["files"] += 1
            counts["bytes"] += event.size
            done_files, done_bytes = done_files + 1, done_bytes + event.size
            self.progress(done_files, done_bytes)
        for path in self.source.deleted():
            if not is_utf8(path):  # never published (skipped as unreadable): nothing to delete
                continue
            self._publish(
                FileEvent(
                    project=project,
                    path=path,
                    size=0,
                    checksum="",
                    run_id=self.run_id,
                    op=Op.DELETE,
                    producer_version=PRODUCER,
                    event_time=now,
                )
            )
            counts["deleted"] += 1
            counts["files"] += 1
        counts["skipped"] = len(summary.skipped)
        summary.counts = RunCounts(**counts)
        summary.digest = run_digest(self._digest)
        if self.publisher is not None:
            summary.failed.update(self.publisher.flush())
        if summary.ok:
            self._publish_run(RunEventKind.COMPLETED, info, project, datetime.now(UTC), summary)
            if self.publisher is not None:
                summary.failed.update(self.publisher.flush())
        after = _store_counters(self.store)
        summary.uploads, summary.deduplicated, summary.uploaded_bytes = (
            a - b for a, b in zip(after, before, strict=True)
        )
        summary.upload_retries = self._retries
        summary.breaker, summary.breaker_opened = self.breaker.state.value, self.breaker.opened
        summary.duration_s = time.perf_counter() - started
        return summary

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
        self, candidate: Candidate, info: SourceInfo, project: str, now: datetime, summary: Summary
    ) -> FileEvent | Skip:
        """The file's event, made from bytes that did not change while they were read: a
        file on disk whose size, modification time or inode differ after the read is read
        once more, then skipped as CHANGED_WHILE_READ; never published half-read."""
        path = candidate.local_path
        for _ in range(2):
            before = _signature(path)
            try:
                event = self._event(candidate, info, project, now, summary)
            except _Failed:
                if before == _signature(path):
                    raise
                continue  # the upload saw other bytes because the file changed: again
            if before == _signature(path):
                if isinstance(event, FileEvent):
                    self._digest.append((event.path, event.checksum))
                return event
        return Skip(
            SkipReason.CHANGED_WHILE_READ, "its size or modification time changed while read, twice"
        )

    def _event(
        self, candidate: Candidate, info: SourceInfo, project: str, now: datetime, summary: Summary
    ) -> FileEvent | Skip:
        strategy = self._choose(candidate.size, info)
        fields: dict[str, Any] = {"content_strategy": strategy}
        if strategy is ContentStrategy.INLINE:
            if candidate.size > self.options.inline_limit:
                return Skip(SkipReason.TOO_LARGE, f"{candidate.size} bytes > --inline-limit")
            with candidate.open() as stream:
                data = stream.read(self.options.inline_limit + 1)
            if (skip := FilePolicy.by_content(data[:64], len(data))) is not None:
                return skip
            checksum, size = hashlib.sha256(data).hexdigest(), len(data)
            fields["inline"] = InlineContent(data=data, encoding=detect_encoding(data))
        else:
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
        except HeadraceError as exc:
            if is_transient(exc):
                self.breaker.failure(str(exc))
                raise _StoreDown(f"object store unavailable: {exc}") from None
            raise _Failed(str(exc)) from None
        self.breaker.success()
        return ObjectReference(bucket=stored.bucket, key=stored.key, url=url, expires_at=expires)

    # --- publishing -------------------------------------------------------------------

    def _publish(self, event: FileEvent) -> None:
        if self.publisher is not None:
            self.publisher.file(event)

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


def _bounded(skipped: list[SkippedFile], per_reason: int) -> list[SkippedFile]:
    """At most ``per_reason`` skipped files of each reason, in their order."""
    seen: Counter[SkipReason] = Counter()
    kept = []
    for entry in skipped:
        seen[entry.reason] += 1
        if seen[entry.reason] <= per_reason:
            kept.append(entry)
    return kept


def _store_counters(store: ObjectStore | None) -> tuple[int, int, int]:
    """(uploads, deduplicated, uploaded bytes) so far, to report one run's share."""
    names = ("uploads", "deduplicated", "uploaded_bytes")
    return tuple(int(getattr(store, n, 0)) for n in names)  # type: ignore[return-value]
