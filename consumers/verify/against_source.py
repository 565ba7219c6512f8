"""``verify run --against-source``: the source as a dry run of the ingest sees it now.

The dry run's files go into the run's store (:mod:`consumers.verify.store`), and are
merged by path with the archived first version of each file.
"""

from __future__ import annotations

from collections import Counter
from contextlib import closing
from typing import TYPE_CHECKING, Any

from consumers.verify.report import Kind, RunReport, empty_counts
from consumers.verify.store import Store, Writer, merge
from headrace.settings import Settings
from schemas.models import FileEvent, RunEvent

if TYPE_CHECKING:
    from producers.prepare import EncodedFile


def check_source(settings: Settings, store: Store, report: RunReport) -> None:
    """The source as a dry run of the ingest sees it now, against the run's files."""
    from producers.command import open_source  # noqa: PLC0415 - the producer only when asked
    from producers.ingest import Ingest, IngestOptions  # noqa: PLC0415

    if report.source is None:
        report.notes.append("the run's source is not known: not compared")
        return
    from producers.runs import RunStore  # noqa: PLC0415

    record = RunStore(settings.ingest.state_dir).get(report.run_id)
    partial = record is not None and (record.base_run is not None)
    if partial:
        report.notes.append(
            f"run {report.run_id} is incremental (from run {record.base_run if record else '?'}):"
            " the source is compared on the run's own files only"
        )
    source = open_source(settings, report.source, report.commit, None, report.project)
    with closing(store.writer("source", "source")) as files:
        sink = _Collect(files)
        dry_run = IngestOptions(dry_run=True)
        summary = Ingest(source, dry_run, report.run_id, report.project, sink).run()
    if not partial:
        skipped = dict(Counter(s.reason.value.lower() for s in summary.skipped))
        if skipped != report.skipped and report.completed:
            report.add(
                Kind.COUNT_MISMATCH,
                "source",
                None,
                f"skipped by reason: {skipped} in the source now, the run says {report.skipped}",
            )
    counts = empty_counts()
    found: list[Any] = []  # the source's files against the run's, then the run's extra files
    extra: list[Any] = []
    firsts = ((f[0], f) for f in store.firsts("archived"))
    for path, first, now in merge(firsts, ((f[0], f) for f in store.source())):
        if now is None:
            if first[2] == "UPSERT":
                extra.append((Kind.EXTRA, "source", path, "in the run, not in the source now"))
            continue
        if partial and first is None:
            continue
        if first is None or first[2] != "UPSERT":
            found.append((Kind.MISSING_IN_ARCHIVE, "source", path, "in the source, not in the run"))
            continue
        if first[3] != now[1]:
            detail = f"the source holds {now[1]}, the run {first[3]}"
            found.append((Kind.CHECKSUM_MISMATCH, "source", path, detail))
        counts["files"] += 1
        counts[first[5] or now[2]] += 1
    for discrepancy in (*found, *extra):
        report.add(*discrepancy)
    report.counts["source"] = counts


class _Collect:
    """An event sink for the dry run: each file's sha256 and strategy, into the store."""

    def __init__(self, files: Writer) -> None:
        self.files = files

    def file(self, event: FileEvent) -> None:
        strategy = (event.content_strategy.value if event.content_strategy else "INLINE").lower()
        self.files.add((event.path, event.checksum, strategy))

    def encoded(self, file: EncodedFile) -> None:
        self.files.add((file.path, file.checksum, "inline"))

    def run(self, event: RunEvent) -> None:
        pass

    def flush(self, timeout_s: float = 120.0) -> dict[str, str]:
        return {}

    def prepare(self, timeout_s: float = 120.0) -> tuple[dict[str, str], Any]:
        return {}, None

    def commit(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def committed(self, probe: Any, timeout_s: float = 60.0) -> bool:
        return False
