"""verify run's checks on sides made by hand, and the verify sink's outcomes."""

from __future__ import annotations

from typing import Any

import pytest

from consumers.verify.reconcile import (
    Sides,
    Version,
    _check_manifest,
    _check_published,
    _check_row,
    _check_verified,
)
from consumers.verify.report import Kind, RunReport, empty_counts
from consumers.verify.sink import status_of
from schemas.models import VerificationStatus, run_digest
from storage.content.errors import ChecksumMismatch, ContentRefused, PayloadMissing


def v(event_id: str, sha: str = "a" * 64, *, op: str = "UPSERT", when: int = 10) -> Version:
    strategy = "" if op == "DELETE" else "inline"
    return Version(event_id, op, sha, 3, strategy, when)


def run_event(files: dict[str, list[Version]], **counts: int) -> dict[str, Any]:
    base = {**empty_counts(), "inline": len(files), "files": len(files)}
    base.update(counts)
    digest = run_digest((p, vs[0].sha256) for p, vs in files.items())
    return {"kind": "COMPLETED", "counts": base, "digest": digest, "skip_counts": {"UNREADABLE": 2}}


def test_an_archive_that_holds_the_run_agrees_with_its_account() -> None:
    files = {"a": [v("1")], "b": [v("2")]}
    sides, report = Sides(run=run_event(files), archived=files, published=files), RunReport("r")
    _check_manifest(sides, report)
    _check_published(sides, report)
    assert report.ok and report.completed and report.skipped == {"unreadable": 2}
    assert report.counts["archived"] == report.counts["manifest"] == report.counts["published"]


def test_what_the_archive_lacks_holds_twice_or_holds_extra_is_named() -> None:
    account = {"a": [v("1")], "b": [v("2")], "c": [v("3")]}
    archived = {"a": [v("1"), v("1")], "b": [v("2")], "x": [v("9")]}
    published = {**account, "c": [v("3")]}
    sides = Sides(run=run_event(account), archived=archived, published=published)
    report = RunReport("r")
    _check_manifest(sides, report)
    _check_published(sides, report)
    found = {(d.kind, d.path) for d in report.discrepancies}
    assert (Kind.DUPLICATED, "a") in found
    assert (Kind.MISSING_IN_ARCHIVE, "c") in found
    assert (Kind.EXTRA, "x") in found
    assert (Kind.DIGEST_MISMATCH, None) in found


def test_a_run_without_its_completed_event_is_incomplete() -> None:
    sides, report = Sides(archived={"a": [v("1")]}), RunReport("r")
    _check_manifest(sides, report)
    assert not report.completed
    assert [d.kind for d in report.discrepancies] == [Kind.RUN_INCOMPLETE]


def row(
    event_id: str, sha: str = "a" * 64, *, when: int = 10, deleted: bool = False
) -> dict[str, Any]:
    return {
        "path": "p",
        "event_id": event_id,
        "sha256": sha,
        "size": 3,
        "event_time_ms": when,
        "run_id": "other",
        "deleted": deleted,
    }


@pytest.mark.parametrize(
    ("found", "version", "kind"),
    [
        (row("1"), v("1"), None),
        (row("2", when=99), v("1"), None),  # a newer version of the file: superseded
        (row("0", when=1), v("1"), Kind.STALE_VERSION),
        (row("1", "b" * 64), v("1"), Kind.CHECKSUM_MISMATCH),
        (row("1", deleted=False), v("1", op="DELETE"), Kind.STALE_VERSION),
        (row("1", deleted=True), v("1", op="DELETE"), None),
    ],
)
def test_a_row_is_the_runs_version_a_newer_one_or_a_discrepancy(
    found: dict[str, Any], version: Version, kind: Kind | None
) -> None:
    report, loaded = RunReport("r"), empty_counts()
    _check_row(found, version, report, loaded)
    assert [d.kind for d in report.discrepancies] == ([kind] if kind else [])
    assert loaded["files"] == (0 if kind else 1)


def test_the_newest_verification_of_each_event_decides() -> None:
    files = {
        "ok": [v("1")],
        "bad": [v("2")],
        "gone": [v("3")],
        "none": [v("4")],
        "d": [v("5", op="DELETE")],
    }
    outcomes = {
        "1": [(1, "MISMATCH", "was"), (2, "OK", None)],
        "2": [(1, "OK", None), (2, "MISMATCH", "other bytes")],
        "3": [(1, "MISSING", "gone")],
    }
    report = RunReport("r")
    _check_verified(Sides(verified=outcomes), files, report)
    assert {(d.kind, d.path) for d in report.discrepancies} == {
        (Kind.VERIFICATION_FAILED, "bad"),
        (Kind.CONTENT_UNRESOLVABLE, "gone"),
        (Kind.NOT_VERIFIED, "none"),
    }
    assert report.counts["verified"]["inline"] == 1 and report.counts["verified"]["deleted"] == 1


def test_content_errors_map_to_verification_statuses() -> None:
    assert status_of(ChecksumMismatch("p", "x")) is VerificationStatus.MISMATCH
    assert status_of(PayloadMissing("p", "x")) is VerificationStatus.MISSING
    assert status_of(ContentRefused("p", "x")) is VerificationStatus.ERROR


# --- the store the sides are streamed into ----------------------------------------------

PATHS = ["b", "a/z", "a", "A", "é", "e\u0301", "z", "😀", "a b", "\u00e9t\u00e9"]


def test_the_store_gives_paths_in_pythons_order_and_the_runs_digest() -> None:
    from consumers.verify.reconcile import path_digest
    from consumers.verify.store import Store

    store = Store()
    store.fill(
        "archived",
        "versions",
        [(p, f"e{i}", "UPSERT", str(i), 3, "inline", 1) for i, p in enumerate(PATHS)],
    )
    assert [row[0] for row in store.firsts("archived")] == sorted(PATHS)
    pairs = [(p, str(i)) for i, p in enumerate(PATHS)]
    assert path_digest(store.upserts("archived")) == run_digest(pairs)


@pytest.mark.parametrize(
    ("in_kafka", "newest"),
    [
        # the topic's copy of the archive's verification (another status: the archive's
        # is the one taken), and an older one
        ([("1", 5, "MISMATCH", "x"), ("1", 4, "MISSING", "y")], ("OK", None)),
        ([("1", 6, "ERROR", "later")], ("ERROR", "later")),  # one the archive lacks yet
    ],
)
def test_the_newest_verification_is_taken_from_both_sides_once_each(
    in_kafka: list[tuple[str, int, str, str | None]], newest: tuple[str, str | None]
) -> None:
    from consumers.verify.store import Store

    store = Store()
    store.fill("archived", "versions", [("p", "1", "UPSERT", "s", 3, "inline", 1)])
    store.fill("archived_outcomes", "outcomes", [("1", 5, "OK", None)])
    store.fill("published_outcomes", "outcomes", in_kafka)
    assert list(store.newest()) == [("p", "1", "UPSERT", "inline", *newest)]


def test_the_archive_provably_holds_a_partitions_chain_of_whole_segments() -> None:
    from consumers.verify.read import archived_through
    from storage.archive.layout import Compression
    from storage.archive.manifest import SegmentInfo

    def segment(partition: int, first: int, last: int, previous: int | None) -> SegmentInfo:
        name = f"t+{partition}+{first:020d}.jsonl.zst"
        return SegmentInfo(
            "t",
            partition,
            "2026-12-01",
            first,
            last,
            last - first + 1,
            name,
            1,
            "0",
            Compression.ZSTD,
            previous,
        )

    segments = [
        segment(0, 0, 9, None),
        segment(0, 10, 19, 9),
        segment(0, 25, 29, 24),  # a gap
        segment(1, 0, 9, None),
        segment(1, 10, 19, 9),  # the second one short, below
        segment(2, 5, 9, 4),  # not the partition's first segment
    ]

    class Days:
        def days(self, topic: str) -> list[str]:
            return ["2026-12-01"]

        def read_manifest(self, topic: str, day: str) -> list[SegmentInfo]:
            return segments

    lines = {s.name: s.records for s in segments}
    lines["t+1+00000000000000000010.jsonl.zst"] -= 1
    held = archived_through(Days(), "t", lines)  # type: ignore[arg-type]
    assert held == {0: (0, 20), 1: (0, 10)}
