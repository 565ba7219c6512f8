"""One ingest as a function: the request in, the run's summary out.

``headrace ingest`` parses its options into an :class:`IngestRequest` and calls
:func:`run_ingest`; so does ``headrace sweep``. Nothing here prints or raises a
click error.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from headrace.history import record_final
from headrace.redact import REDACTOR, credentials_in, strip_credentials
from headrace.settings import Settings
from headrace.telemetry import set_run_id
from producers.base import Candidate, Source, SourceInfo, SourceKind
from producers.costs import CostEstimate, Prices
from producers.errors import SourceError
from producers.ingest import Ingest, IngestOptions, Summary, resumed_options
from producers.prepare import EncodedFile
from producers.publisher import Publisher
from producers.runs import Probe, RunStatus, RunStore
from producers.sources import DirectorySource, GitSource
from schemas.models import FileEvent, RunEvent
from schemas.registry import make_registry_client
from storage.git import GitRepo
from storage.git_cache import GitCache
from storage.objects import MinioObjectStore

log = logging.getLogger(__name__)
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://|^[\w.-]+@[\w.-]+:")


@dataclass(frozen=True)
class IngestRequest:
    """What to ingest and how: the options of ``headrace ingest``, checked."""

    source: str
    run_id: str
    options: IngestOptions = field(default_factory=IngestOptions)
    ref: str | None = None
    project: str | None = None
    since: str | None = None
    resume: bool = False  # the run must be recorded already
    incremental: bool = False
    max_batch_bytes: int = 5 * 1024 * 1024


def open_source(
    settings: Settings,
    location: str,
    ref: str | None,
    since: str | None,
    project: str | None,
    exclude: tuple[str, ...] = (),
) -> Source:
    if _URL.match(location) and not location.startswith("file://"):
        clean = strip_credentials(location)
        cached, _commit = GitCache.from_settings(settings.git).repo(location, ref)
        name = clean.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git") or "repository"
        return GitSource(cached, SourceKind.GIT_URL, clean, project or name, ref=ref, since=since)
    path = Path(location.removeprefix("file://")).expanduser()
    if not path.exists():
        raise SourceError(f"{location} does not exist")
    local = GitRepo.discover(path)
    if local is not None:
        return GitSource(
            local,
            SourceKind.GIT,
            str(path.resolve()),
            project or path.resolve().name,
            ref=ref,
            since=since,
        )
    if ref or since:
        raise SourceError(f"--ref and --since need a git repository; {location} is not one")
    return DirectorySource(path, project, exclude)


def run_ingest(
    settings: Settings,
    request: IngestRequest,
    runner: Callable[[Ingest], Summary] = Ingest.run,
) -> Summary:
    """Run one ingest (or resume one); the summary says what happened, failures too."""
    for secret in credentials_in(request.source):
        REDACTOR.add(secret)
    for credential in settings.git.credentials:
        REDACTOR.add(credential.token.get_secret_value())
    run_id, options, dry_run = request.run_id, request.options, request.options.dry_run
    set_run_id(run_id)
    ref, project = request.ref, request.project
    runs = None if dry_run else RunStore(settings.ingest.state_dir)
    earlier = runs.get(run_id) if runs is not None else None
    if earlier is not None and earlier.status is not RunStatus.COMPLETED:
        # A resumed git run reads the commit its first attempt read, whatever the ref says now.
        ref, project = earlier.commit or ref, project or earlier.project
        # ... and publishes its files with the options it started with.
        options = resumed_options(options, earlier)
    src = open_source(settings, request.source, ref, request.since, project, options.exclude)
    project_name = project or src.info().project
    with contextlib.ExitStack() as resources:
        publisher = store = None
        if runs is not None:
            resources.enter_context(runs.lock(run_id))
            _prune(runs, settings.ingest.checkpoint_max_age_days)
        transactional_id = transactional_id_for(project_name, run_id)
        if not dry_run and not (earlier is not None and earlier.status is RunStatus.COMPLETED):
            registry = resources.enter_context(make_registry_client(settings.registry))
            publisher = Publisher(
                settings.kafka,
                registry,
                max_batch_bytes=request.max_batch_bytes,
                largest_inline=options.inline_limit,
                transactional_id=transactional_id if settings.ingest.transactions else None,
                transaction_timeout_s=settings.ingest.transaction_timeout_s,
            )
            resources.callback(publisher.close)  # aborts a batch left open by an error
            publisher.start()
            store = MinioObjectStore(settings.object_store)
            resources.callback(store.close)  # its connections
        job = Ingest(
            src,
            options,
            run_id,
            project,
            publisher,
            store,
            runs=runs,
            transactional_id=transactional_id,
            incremental=request.incremental,
            resume_only=request.resume,
        )
        summary = runner(job)
    if not summary.already_completed:
        ingest = settings.ingest
        prices = Prices(ingest.cost_storage_gb_month, ingest.cost_transfer_gb, ingest.cost_currency)
        summary.cost = CostEstimate(summary.object_store_bytes, summary.uploaded_bytes, prices)
    if not dry_run and not summary.already_completed:
        record_final(settings, "ingest", run_figures(summary))  # the operational history
    return summary


def run_figures(summary: Summary) -> dict[str, float]:
    """A run's figures for the operational history: counts, uploads, skips by reason."""
    c = summary.counts
    figures: dict[str, float] = {
        "files": c.files,
        "bytes": c.bytes,
        "inline": c.inline,
        "object_storage": c.object_storage,
        "git_reference": c.git_reference,
        "deleted": c.deleted,
        "skipped": len(summary.skipped),
        "failed": len(summary.failed),
        "uploads": summary.uploads,
        "uploaded_bytes": summary.uploaded_bytes,
        "deduplicated": summary.deduplicated,
        "transactions": summary.transactions,
        "duration_seconds": summary.duration_s,
        "upload_retries": summary.upload_retries,
        "breaker_opened": summary.breaker_opened,  # times the object store's breaker opened
        "breaker_open": 1.0 if summary.breaker != "closed" else 0.0,  # at the end
    }
    for skipped in summary.skipped:
        key = f"skipped.{skipped.reason.value.lower()}"
        figures[key] = figures.get(key, 0) + 1
    if summary.cost is not None:  # the estimate of producers/costs.py
        figures["object_store_bytes"] = summary.cost.stored_bytes
        figures["cost.storage_per_month"] = summary.cost.storage_per_month
        figures["cost.transfer_to_read_once"] = summary.cost.transfer_to_read_once
    return figures


def republish(
    settings: Settings,
    location: str,
    commit: str | None,
    project: str,
    run_id: str,
    options: IngestOptions,
    paths: Iterable[str],
) -> Summary:
    """Publish again, under the run's own id, the file events of ``paths`` as the source
    holds them now (a repair, for events that neither Kafka nor the archive holds any
    more): the same ingest reads, uploads and publishes them, in transactions of their
    own; the run's RunStarted and RunCompleted are not published again, and the run's
    record and journal are not touched. An event of a file whose bytes are the run's has
    the run's event id again (it is derived from them)."""
    src = _Only(open_source(settings, location, commit, None, project, options.exclude), paths)
    with contextlib.ExitStack() as resources:
        registry = resources.enter_context(make_registry_client(settings.registry))
        publisher = Publisher(
            settings.kafka,
            registry,
            largest_inline=options.inline_limit,
            transactional_id=transactional_id_for(project, run_id, "repair")
            if settings.ingest.transactions
            else None,
            transaction_timeout_s=settings.ingest.transaction_timeout_s,
        )
        resources.callback(publisher.close)
        publisher.start()
        store = MinioObjectStore(settings.object_store)
        resources.callback(store.close)
        job = Ingest(src, options, run_id, project, _FilesOnly(publisher), store)
        return job.run()


class _Only:
    """A source offering only some of its files."""

    def __init__(self, source: Source, paths: Iterable[str]) -> None:
        self.source, self.paths = source, frozenset(paths)

    def info(self) -> SourceInfo:
        return self.source.info()

    def candidates(self) -> Iterator[Candidate]:
        return (c for c in self.source.candidates() if c.path in self.paths)

    def deleted(self) -> list[str]:
        return []

    def changes_since(self, commit: str) -> bool:
        return False


class _FilesOnly:
    """The publisher, for file events only: a repair's run events are the run's own."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    def file(self, event: FileEvent) -> None:
        self.publisher.file(event)

    def encoded(self, file: EncodedFile) -> None:
        self.publisher.encoded(file)

    def run(self, event: RunEvent) -> None:
        pass

    def flush(self, timeout_s: float = 120.0) -> dict[str, str]:
        return self.publisher.flush(timeout_s)

    def prepare(self, timeout_s: float = 120.0) -> tuple[dict[str, str], Probe | None]:
        return self.publisher.prepare(timeout_s)

    def commit(self) -> None:
        self.publisher.commit()

    def abort(self) -> None:
        self.publisher.abort()

    def committed(self, probe: Probe, timeout_s: float = 60.0) -> bool:
        return self.publisher.committed(probe, timeout_s)


def transactional_id_for(project: str, run_id: str, role: str = "ingest") -> str:
    """The run's Kafka transactional id: the same for every attempt of the run, so that
    a new attempt fences an old one still alive (``role`` "repair": a repair's own)."""
    readable = f"headrace.{role}.{project}.{run_id}"
    if len(readable) <= 200 and readable.isprintable():
        return readable
    digest = hashlib.sha256(f"{project}\x1f{run_id}".encode()).hexdigest()[:32]
    return f"headrace.{role}.{digest}"


def _prune(runs: RunStore, max_age_days: float) -> None:
    pruned = runs.prune(timedelta(days=max_age_days))
    if pruned:
        log.info(
            "removed the journals of %d runs finished over %s days ago", len(pruned), max_age_days
        )
