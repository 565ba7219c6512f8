"""``headrace archive verify`` as a function: the archive's problems as a report in
the shape ``verify run`` uses (:mod:`consumers.report`), with what was checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from consumers.report import Report
from storage.archive import ColdStore, verify
from storage.archive.backend import Backend
from storage.archive.layout import ArchiveCorrupt

COUNTS = ("days", "segments", "records")


@dataclass(kw_only=True)
class ArchiveReport(Report):
    location: str
    date: str | None = None  # one day, or None for every day
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # topic -> COUNTS

    def as_json(self) -> dict[str, Any]:
        findings = self.findings_json()
        return {
            "archive": self.location,
            "date": self.date,
            "ok": findings.pop("ok"),
            "counts": self.counts,
            **findings,
        }


def check_archive(backend: Backend, date: str | None, cold: ColdStore | None) -> ArchiveReport:
    """Every problem of the archive (one day, or all), each a discrepancy of kind
    :class:`storage.archive.ProblemKind` on side ``archive``, with the days, segments
    and records its manifests list per topic."""
    report = ArchiveReport(location=backend.location, date=date)
    for topic in backend.topics():
        days = [d for d in backend.days(topic) if date is None or d == date]
        counts = dict.fromkeys(COUNTS, 0)
        counts["days"] = len(days)
        for day in days:
            try:
                segments = backend.read_manifest(topic, day)
            except ArchiveCorrupt:
                continue  # verify() reports it
            counts["segments"] += len(segments)
            counts["records"] += sum(s.records for s in segments)
        report.counts[topic] = counts
    for problem in verify(backend, date=date, cold=cold):
        report.add(problem.kind, "archive", problem.path, problem.message)
    if cold is None:
        report.notes.append("no cold store: days moved to it were checked by their markers only")
    return report
