"""Retention to the cold tier: old days move, new days stay, local files go only after a
verified upload, a second run does nothing, reading and verifying see the same archive
before and after; deletion requests delete nothing. Hermetic: MemoryColdStore (a ColdStore
over MemoryStorage, whose ``objects`` the tests damage)."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

import pytest

from storage.archive import (
    ArchiveConflict,
    ArchiveCorrupt,
    ArchiveError,
    ColdStore,
    MemoryColdStore,
    read,
    read_cold_marker,
    request_deletion,
    retain,
    verify,
)
from storage.archive.layout import day_dir, segment_files
from storage.archive.retention import DELETION_REQUEST, cold_key
from storage.errors import ObjectStoreUnavailable
from tests.unit.test_archive import DAY, NEXT_DAY
from tests.unit.test_archive_reader import LATER, write_mixed

TOPICS = ("t.a", "t.b", "t.c")  # gzip, plain, zstd: see write_mixed
TODAY = date(2025, 3, 7)  # with older_than_days=2, only DAY is older


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


class FailingStore(MemoryColdStore):
    """Uploads ``good`` objects, then fails (unavailable) or stores other bytes (corrupt)."""

    def __init__(self, good: int, corrupt: bool = False) -> None:
        super().__init__()
        self.good, self.corrupt = good, corrupt

    def put(self, key: str, path: Path) -> None:
        if self.good <= 0:
            if not self.corrupt:
                raise ObjectStoreUnavailable("memory", self.bucket, "upload", "down", key=key)
            super().put(key, path)
            self.storage.overwrite(key, path.read_bytes() + b"x")  # stored other than sent
            return
        self.good -= 1
        super().put(key, path)


def test_old_days_move_and_newer_days_stay(tmp_path: Path) -> None:
    expected = write_mixed(tmp_path)
    store = MemoryColdStore()
    assert retain(tmp_path, store, older_than_days=2, today=TODAY) == [DAY]
    for topic in TOPICS:
        old = day_dir(tmp_path, topic, DAY)
        assert segment_files(old) == []
        marker = read_cold_marker(old)
        assert marker is not None and marker.topic == topic and marker.date == DAY
        assert {o.key for o in marker.objects} == {
            k for k in store.storage.objects if k.startswith(f"archive/{topic}/dt={DAY}/")
        }
        assert cold_key(topic, DAY, "_manifest.json") in store.storage.objects
        manifest = json.loads((old / "_manifest.json").read_bytes())
        assert manifest["tier"] == "cold" and len(manifest["segments"]) == len(marker.segments())
        assert (old / "_manifest.json").read_bytes() == store.storage.get(
            cold_key(topic, DAY, "_manifest.json")
        )
        for day in (NEXT_DAY, LATER):
            assert segment_files(day_dir(tmp_path, topic, day)) != []
            assert read_cold_marker(day_dir(tmp_path, topic, day)) is None
    assert [line.record for line in read(tmp_path, cold=store)] == expected
    with pytest.raises(ArchiveError, match="cold tier"):
        list(read(tmp_path))
    assert [line.record for line in read(tmp_path, since=NEXT_DAY)] == [
        r for r in expected if r.event_time_ms >= expected[0].event_time_ms + 86_400_000
    ]


def test_a_second_run_is_a_no_op_and_everything_reads_back_identically(tmp_path: Path) -> None:
    expected = write_mixed(tmp_path)
    store = MemoryColdStore()
    retain(tmp_path, store, older_than_days=2, today=TODAY)
    files, objects = snapshot(tmp_path), dict(store.storage.objects)
    assert retain(tmp_path, store, older_than_days=2, today=TODAY) == []
    assert snapshot(tmp_path) == files and store.storage.objects == objects
    assert retain(tmp_path, store, older_than_days=0, today=TODAY) == [NEXT_DAY, LATER]
    assert all(k in store.storage.objects for k in objects)  # nothing left the cold store
    assert not any(segment_files(d) for t in TOPICS for _, d in _days(tmp_path, t))
    lines = list(read(tmp_path, cold=store))
    assert [line.record for line in lines] == expected
    assert {line.segment.rsplit(".", 1)[-1] for line in lines} == {"gz", "jsonl", "zst"}
    assert verify(tmp_path, cold=store) == []
    assert verify(tmp_path) == []  # checked by the markers only
    assert retain(tmp_path, store, older_than_days=0, today=TODAY) == []


def _days(root: Path, topic: str) -> list[tuple[str, Path]]:
    return [(d, day_dir(root, topic, d)) for d in (DAY, NEXT_DAY, LATER)]


def test_a_failing_upload_removes_nothing_and_a_later_run_finishes(tmp_path: Path) -> None:
    expected = write_mixed(tmp_path)
    before = snapshot(tmp_path)
    failing = FailingStore(good=2)
    with pytest.raises(ObjectStoreUnavailable):
        retain(tmp_path, failing, older_than_days=2, today=TODAY)
    assert snapshot(tmp_path) == before  # no segment removed, no marker, same manifest
    assert len(failing.storage.objects) == 2
    store = ColdStore(failing.storage)  # the same bucket, now answering
    assert retain(tmp_path, store, older_than_days=2, today=TODAY) == [DAY]
    assert [line.record for line in read(tmp_path, cold=store)] == expected


def test_an_upload_that_does_not_verify_removes_nothing(tmp_path: Path) -> None:
    write_mixed(tmp_path)
    before = snapshot(tmp_path)
    corrupting = FailingStore(good=1, corrupt=True)
    with pytest.raises(ArchiveCorrupt, match="does not verify"):
        retain(tmp_path, corrupting, older_than_days=2, today=TODAY)
    assert snapshot(tmp_path) == before
    stored = dict(corrupting.storage.objects)
    corrupting.corrupt, corrupting.good = False, 100
    with pytest.raises(ArchiveConflict, match="never overwritten"):
        retain(tmp_path, corrupting, older_than_days=2, today=TODAY)
    assert snapshot(tmp_path) == before
    assert all(corrupting.storage.objects[k] == v for k, v in stored.items())


def test_a_run_stopped_after_the_marker_is_finished_by_the_next(tmp_path: Path) -> None:
    write_mixed(tmp_path)
    old = day_dir(tmp_path, "t.c", DAY)
    kept = tmp_path.parent / "kept"
    shutil.copytree(old, kept)
    store = MemoryColdStore()
    retain(tmp_path, store, older_than_days=2, today=TODAY)
    for name, _ in segment_files(kept):  # as if it stopped before removing them
        shutil.copy(kept / name, old / name)
    assert segment_files(old) != []
    assert verify(tmp_path, cold=store) == []
    assert retain(tmp_path, store, older_than_days=2, today=TODAY) == [DAY]
    assert segment_files(old) == []


def test_verify_finds_a_cold_object_whose_bytes_changed_or_went(tmp_path: Path) -> None:
    write_mixed(tmp_path)
    store = MemoryColdStore()
    retain(tmp_path, store, older_than_days=0, today=TODAY)
    marker = read_cold_marker(day_dir(tmp_path, "t.c", NEXT_DAY))
    assert marker is not None
    first, second = (o for o, _ in marker.segments()[:2])
    data = bytearray(store.storage.get(first.key))
    data[len(data) // 2] ^= 0x55
    store.storage.overwrite(first.key, bytes(data))  # its metadata still says the old sha256
    del store.storage.objects[second.key]
    problems = verify(tmp_path, cold=store)
    found = {(p.path, p.kind) for p in problems}
    assert (f"cold:{first.key}", "manifest_mismatch") in found
    assert (f"cold:{first.key}", "decompression_error") in found
    assert (f"cold:{second.key}", "missing_segment") in found
    assert {p.path for p in problems} == {f"cold:{first.key}", f"cold:{second.key}"}
    assert verify(tmp_path) == []  # without the store, the marker is all there is to check
    with pytest.raises(ArchiveCorrupt):
        list(read(tmp_path, topic="t.c", cold=store))


def test_a_deletion_request_is_recorded_and_deletes_nothing(tmp_path: Path) -> None:
    write_mixed(tmp_path)
    before = snapshot(tmp_path)
    path = request_deletion(tmp_path, topic="t.a", date=DAY, reason="GDPR erasure, ticket 42")
    assert path == day_dir(tmp_path, "t.a", DAY) / DELETION_REQUEST
    request_deletion(tmp_path, topic="t.a", date=DAY, reason="second thoughts")
    body = json.loads(path.read_bytes())
    assert (body["topic"], body["date"]) == ("t.a", DAY)
    assert [r["reason"] for r in body["requests"]] == ["GDPR erasure, ticket 42", "second thoughts"]
    assert all(r["requested_by"] and r["requested_at"] for r in body["requests"])
    after = snapshot(tmp_path)
    del after[str(path.relative_to(tmp_path))]
    assert after == before
    assert verify(tmp_path) == []
    with pytest.raises(ValueError):
        request_deletion(tmp_path, topic="t.a", date=DAY, reason=" ")
    with pytest.raises(ValueError):
        request_deletion(tmp_path, topic="t.a", date="yesterday", reason="x")
    with pytest.raises(FileNotFoundError):
        request_deletion(tmp_path, topic="t.a", date="2020-01-01", reason="x")


def test_a_day_that_does_not_verify_locally_does_not_move(tmp_path: Path) -> None:
    write_mixed(tmp_path)
    old = day_dir(tmp_path, "t.b", DAY)
    name = segment_files(old)[0][0]
    (old / name).write_bytes((old / name).read_bytes()[:-3])
    before = snapshot(tmp_path)
    store = MemoryColdStore()
    assert retain(tmp_path, store, older_than_days=2, today=TODAY) == [DAY]  # t.a and t.c
    assert read_cold_marker(old) is None and not any("t.b" in k for k in store.storage.objects)
    assert all(before[k] == v for k, v in snapshot(tmp_path).items() if k.startswith("t.b"))
    with pytest.raises(ValueError):
        retain(tmp_path, store, older_than_days=-1)
