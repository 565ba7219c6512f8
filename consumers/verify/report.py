"""What ``headrace verify run`` finds: counts per side and every discrepancy, by kind.

The sides are checked the way an auditor would: the run's own account (its
RunCompleted event: counts per strategy, skips by reason, the digest of its
sorted (path, sha256) list), what Kafka still holds of it (published), what the
archive holds (archived), what the database holds (loaded), the verifications
published for it (verified) and, on request, the source itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from consumers.report import Discrepancy, Report

__all__ = ["SIDES", "STRATEGIES", "Discrepancy", "Kind", "RunReport", "empty_counts"]

STRATEGIES = ("inline", "object_storage", "git_reference")
SIDES = ("manifest", "source", "published", "archived", "loaded", "verified")


class Kind(StrEnum):
    RUN_INCOMPLETE = "run_incomplete"  # no RunCompleted event for the run
    COUNT_MISMATCH = "count_mismatch"  # a side's count is not the run's own
    DIGEST_MISMATCH = "digest_mismatch"  # the archive's (path, sha256) list is not the run's
    MISSING_IN_ARCHIVE = "missing_in_archive"
    MISSING_IN_DATABASE = "missing_in_database"
    EXTRA = "extra"  # a side holds a file of the run the run does not
    DUPLICATED = "duplicated"  # a side holds one event more than once
    CHECKSUM_MISMATCH = "checksum_mismatch"
    SIZE_MISMATCH = "size_mismatch"
    STALE_VERSION = "stale_version"  # the database holds an older version than the run's
    CONTENT_UNRESOLVABLE = "content_unresolvable"  # its verification found nothing, or refused
    VERIFICATION_FAILED = "verification_failed"  # its verification found other bytes
    NOT_VERIFIED = "not_verified"  # no verification of the event yet


@dataclass
class RunReport(Report):
    run_id: str
    project: str | None = None
    source: str | None = None
    commit: str | None = None
    completed: bool = False
    # side -> strategy (and "deleted", "files") -> count; a side not looked at is absent
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # the run's skips, by reason
    digest: dict[str, str | None] = field(default_factory=dict)  # side -> digest

    def as_json(self) -> dict[str, Any]:
        findings = self.findings_json()
        return {
            "run_id": self.run_id,
            "project": self.project,
            "source": self.source,
            "commit": self.commit,
            "completed": self.completed,
            "ok": findings.pop("ok"),
            "counts": self.counts,
            "skipped": self.skipped,
            "digest": self.digest,
            **findings,
        }


def empty_counts() -> dict[str, int]:
    return {**dict.fromkeys(STRATEGIES, 0), "deleted": 0, "files": 0}
