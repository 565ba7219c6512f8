"""The archive in object storage (ObjectBackend on an in-memory bucket, MemoryStorage,
with S3's conditional-write rules): the same layout, publish, positions, replay, adoption,
reading and verifying as on disk, and a manifest that concurrent archives update by
compare-and-swap without losing entries. Real MinIO: tests/integration/test_archive.py."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from headrace.errors import is_transient
from storage.archive import (
    Archive,
    ArchiveConflict,
    ArchivePolicy,
    ArchiveWriteError,
    Compression,
    ObjectBackend,
    read,
    verify,
)
from storage.archive.layout import MANIFEST, encode_line, segment_name
from storage.archive.verify import ProblemKind
from storage.errors import PreconditionFailed
from storage.objectstore.base import ObjectInfo
from storage.objectstore.memory import MemoryObject, MemoryStorage
from tests.unit.test_archive import DAY, NEXT_DAY, TOPIC, rec

SMALL = ArchivePolicy(max_segment_records=5)


def memory_bucket() -> MemoryStorage:
    return MemoryStorage("archive")


def backend(tmp_path: Path, bucket: MemoryStorage | None = None) -> ObjectBackend:
    return ObjectBackend(bucket or memory_bucket(), tmp_path / "staging", prefix="arch")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def key(name: str, day: str = DAY) -> str:
    return f"arch/{TOPIC}/dt={day}/{name}"


def test_segments_and_manifests_land_in_the_bucket_under_the_same_layout(
    tmp_path: Path,
) -> None:
    store = backend(tmp_path)
    archive = Archive(store, SMALL)
    archive.append([rec(i) for i in range(7)] + [rec(7, day=NEXT_DAY)])
    archive.close_all()
    names = sorted(store.storage.objects)  # type: ignore[attr-defined]
    assert names == [
        key(MANIFEST),
        key(segment_name(TOPIC, 0, 0, Compression.ZSTD)),
        key(segment_name(TOPIC, 0, 5, Compression.ZSTD)),
        key(MANIFEST, NEXT_DAY),
        key(segment_name(TOPIC, 0, 7, Compression.ZSTD), NEXT_DAY),
    ]
    assert [s.records for s in store.read_manifest(TOPIC, DAY)] == [5, 2]
    # nothing is left in staging once published
    assert [p for p in (tmp_path / "staging").rglob("*") if p.is_file()] == []
    lines = list(read(store))
    assert [(line.offset, line.event) for line in lines] == [(i, rec(i).event) for i in range(8)]
    assert verify(store) == []


def test_stored_bytes_carry_their_sha256_and_match_the_manifest(tmp_path: Path) -> None:
    store = backend(tmp_path)
    archive = Archive(store)
    archive.append([rec(i) for i in range(3)])
    (info,) = archive.close_all()
    data, _etag = store.storage.get_with_etag(key(info.name))
    stat = store.storage.stat(key(info.name))
    assert stat is not None
    assert hashlib.sha256(data).hexdigest() == info.sha256 == stat.sha256


def test_a_new_archive_resumes_after_the_published_segments(tmp_path: Path) -> None:
    bucket = memory_bucket()
    first = Archive(backend(tmp_path, bucket), SMALL)
    first.append([rec(i) for i in range(12)])
    first.close_all()
    second = Archive(backend(tmp_path / "other-host", bucket), SMALL)
    assert second.durable_position(TOPIC, 0) == 12
    second.append([rec(i) for i in range(15)])  # a replay from 0: only 12..14 are new
    second.close_all()
    assert [line.offset for line in read(second.backend)] == list(range(15))
    assert second.skipped == 12


def test_a_replay_that_makes_a_published_segment_again_is_accepted(tmp_path: Path) -> None:
    bucket = memory_bucket()
    store = backend(tmp_path, bucket)
    archive = Archive(store)
    archive.append([rec(i) for i in range(3)])
    (info,) = archive.close_all()
    before = dict(bucket.objects)
    # A process that crashed after the upload, before the manifest: the manifest entry
    # is gone, the object is there; publishing the same records again must not fail.
    bucket.objects.pop(key(MANIFEST))
    again = Archive(backend(tmp_path / "b", bucket))
    assert again.durable_position(TOPIC, 0) == 3  # adopted from the object
    assert store.read_manifest(TOPIC, DAY) == [info]
    assert bucket.objects[key(info.name)] == before[key(info.name)]


def test_an_existing_segment_with_other_bytes_is_never_overwritten(tmp_path: Path) -> None:
    bucket = memory_bucket()
    name = segment_name(TOPIC, 0, 0, Compression.NONE)
    other = encode_line(rec(0, event={"path": "other"}))
    archive = Archive(backend(tmp_path, bucket), ArchivePolicy(compression=Compression.NONE))
    archive.append([rec(i) for i in range(2)])
    # a zombie owner of the partition publishes the same name first, with other bytes
    bucket.put(key(name), other, sha256=sha256(other))
    with pytest.raises(ArchiveConflict, match="never overwritten"):
        archive.close_all()
    assert bucket.objects[key(name)].data == other


class RacingBucket(MemoryStorage):
    """Before each manifest write, another archive publishes a segment of partition 9."""

    def __init__(self) -> None:
        super().__init__("archive")
        self.races = 0
        self.rival: Archive | None = None

    def put(self, key: str, data: Any, size: int | None = None, **kwargs: Any) -> ObjectInfo:
        if key.endswith(MANIFEST) and self.rival is not None and self.races < 3:
            self.races += 1
            rival, self.rival = self.rival, None
            rival.append([rec(100 + self.races, partition=9)])
            rival.close_all()
            self.rival = rival
        return super().put(key, data, size, **kwargs)


def test_concurrent_archives_never_lose_each_others_manifest_entries(tmp_path: Path) -> None:
    bucket = RacingBucket()
    ours = Archive(backend(tmp_path / "a", bucket))
    bucket.rival = Archive(backend(tmp_path / "b", bucket))
    ours.append([rec(i) for i in range(3)])
    ours.close_all()
    listed = backend(tmp_path, bucket).read_manifest(TOPIC, DAY)
    assert bucket.races == 3  # our manifest write lost the race three times, then won
    assert sorted((s.partition, s.first_offset) for s in listed) == [
        (0, 0),
        (9, 101),
        (9, 102),
        (9, 103),
    ]
    assert verify(backend(tmp_path, bucket)) == []


class AlwaysRacing(MemoryStorage):
    def put(self, key: str, data: Any, size: int | None = None, **kwargs: Any) -> ObjectInfo:
        if key.endswith(MANIFEST):
            raise PreconditionFailed(self.endpoint, self.bucket, key, "If-Match: racing")
        return super().put(key, data, size, **kwargs)


def test_a_manifest_that_never_settles_is_a_transient_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ObjectBackend, "CAS_ATTEMPTS", 3)
    archive = Archive(backend(tmp_path, AlwaysRacing("archive")))
    archive.append([rec(0)])
    with pytest.raises(ArchiveWriteError, match="3 attempts") as caught:
        archive.close_all()
    assert is_transient(caught.value)


def test_verify_finds_damage_in_object_storage(tmp_path: Path) -> None:
    bucket = memory_bucket()
    store = backend(tmp_path, bucket)
    archive = Archive(store, ArchivePolicy(max_segment_records=2, compression=Compression.NONE))
    archive.append([rec(i) for i in range(6)])
    archive.close_all()
    first, second, third = (key(segment_name(TOPIC, 0, i, Compression.NONE)) for i in (0, 2, 4))
    stored = bucket.objects[first]
    bucket.objects[first] = MemoryObject(stored.data[:-5], "x", stored.sha256)  # truncated
    edited = bucket.objects[second].data.replace(b"f2.txt", b"f9.txt")
    bucket.overwrite(second, edited)  # an edited line, behind the store's back
    bucket.objects.pop(third)  # missing
    bucket.put(key("stray.txt"), b"?", sha256=sha256(b"?"))
    kinds = {(p.path.rsplit("/", 1)[-1], p.kind) for p in verify(store)}
    assert kinds == {
        (first.rsplit("/", 1)[-1], ProblemKind.UNPARSABLE_LINE),
        (first.rsplit("/", 1)[-1], ProblemKind.MANIFEST_MISMATCH),
        (second.rsplit("/", 1)[-1], ProblemKind.MANIFEST_MISMATCH),
        (third.rsplit("/", 1)[-1], ProblemKind.MISSING_SEGMENT),
        ("stray.txt", ProblemKind.UNKNOWN_FILE),
    }
    assert all(p.path.startswith("memory://archive/arch/") for p in verify(store))


def test_keeping_days_plain_is_refused_for_object_storage(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="plain_days"):
        Archive(backend(tmp_path), ArchivePolicy(plain_days=2))
