"""Compaction: with plain_days segments are published plain; compress_old compresses old
days (zstd or gzip), leaves recent days plain, reads and verifies the same before and
after, does nothing the second time, and finishes after a crash at any step without
losing or duplicating a record. Hermetic: everything under tmp_path."""

from __future__ import annotations

import gzip
import json
from datetime import date
from pathlib import Path

import pytest
import zstandard

from storage.archive import (
    Archive,
    ArchiveConflict,
    ArchivePolicy,
    ArchiveRecord,
    Compression,
    MemoryColdStore,
    compress_old,
    read,
    retain,
    verify,
)
from storage.archive import compaction as compaction_module
from storage.archive.layout import day_dir, segment_files
from tests.unit.test_archive import DAY, NEXT_DAY, TOPIC, rec

LATER = "2025-03-06"
TODAY = date(2025, 3, 7)  # with older_than_days=2, only DAY is older; with 1, NEXT_DAY too


def write_plain(root: Path) -> list[ArchiveRecord]:
    archive = Archive(root, ArchivePolicy(plain_days=2, max_segment_records=3))
    batch = [
        rec(o, partition=p, day=d)
        for o, d in enumerate([DAY] * 5 + [NEXT_DAY] * 4 + [LATER] * 2)
        for p in (0, 1)
    ]
    archive.append(batch)
    archive.close_all()
    return sorted(batch, key=lambda r: (r.event_time_ms // 86_400_000, r.partition, r.offset))


def compressions(root: Path, day: str) -> set[Compression]:
    return {parsed.compression for _, parsed in segment_files(day_dir(root, TOPIC, day))}


def manifest(root: Path, day: str) -> list[dict[str, object]]:
    data = json.loads((day_dir(root, TOPIC, day) / "_manifest.json").read_bytes())
    segments: list[dict[str, object]] = data["segments"]
    return segments


def records(root: Path) -> list[ArchiveRecord]:
    return [line.record for line in read(root)]


def test_plain_days_publishes_plain_and_zero_keeps_the_codec(tmp_path: Path) -> None:
    write_plain(tmp_path)
    for day in (DAY, NEXT_DAY, LATER):
        assert compressions(tmp_path, day) == {Compression.NONE}
        assert {s["compression"] for s in manifest(tmp_path, day)} == {"none"}
    assert ArchivePolicy().plain_days == 0
    assert ArchivePolicy().publish_compression is Compression.ZSTD
    assert ArchivePolicy(plain_days=1).publish_compression is Compression.NONE
    with pytest.raises(ValueError, match="plain_days"):
        ArchivePolicy(plain_days=-1)


@pytest.mark.parametrize(
    ("compression", "suffix"), [(Compression.ZSTD, ".zst"), (Compression.GZIP, ".gz")]
)
def test_compresses_old_days_and_keeps_recent_days_plain(
    tmp_path: Path, compression: Compression, suffix: str
) -> None:
    expected = write_plain(tmp_path)
    assert records(tmp_path) == expected
    changed = compress_old(tmp_path, older_than_days=1, compression=compression, today=TODAY)
    assert changed == [DAY, NEXT_DAY]
    for day in (DAY, NEXT_DAY):
        assert compressions(tmp_path, day) == {compression}
        entries = manifest(tmp_path, day)
        assert all(s["compression"] == compression.value for s in entries)
        assert all(str(s["name"]).endswith(".jsonl" + suffix) for s in entries)
        for s in entries:
            data = (day_dir(tmp_path, TOPIC, day) / str(s["name"])).read_bytes()
            assert len(data) == s["size"]
            plain = (
                zstandard.ZstdDecompressor().decompressobj().decompress(data)
                if compression is Compression.ZSTD
                else gzip.decompress(data)
            )
            assert plain.count(b"\n") == s["records"]
    assert compressions(tmp_path, LATER) == {Compression.NONE}
    assert records(tmp_path) == expected
    assert verify(tmp_path) == []
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_second_run_does_nothing(tmp_path: Path) -> None:
    write_plain(tmp_path)
    assert compress_old(tmp_path, older_than_days=2, today=TODAY) == [DAY]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert compress_old(tmp_path, older_than_days=2, today=TODAY) == []
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_the_writer_continues_after_compaction(tmp_path: Path) -> None:
    expected = write_plain(tmp_path)
    compress_old(tmp_path, older_than_days=0, today=TODAY)
    archive = Archive(tmp_path, ArchivePolicy(plain_days=2))
    assert archive.durable_position(TOPIC, 0) == 11
    late = rec(11, day=DAY)
    archive.append([late, *expected[:3]])  # replayed records are skipped
    archive.close_all()
    assert archive.skipped == 3
    assert Compression.NONE in compressions(tmp_path, DAY)  # the late segment, plain
    assert verify(tmp_path) == []
    assert compress_old(tmp_path, older_than_days=0, today=TODAY) == [DAY]
    assert compressions(tmp_path, DAY) == {Compression.ZSTD}
    assert verify(tmp_path) == []


def test_cold_days_are_left_alone(tmp_path: Path) -> None:
    expected = write_plain(tmp_path)
    store = MemoryColdStore()
    assert retain(tmp_path, store, older_than_days=2, today=TODAY) == [DAY]
    assert compress_old(tmp_path, older_than_days=2, today=TODAY) == []
    assert [line.record for line in read(tmp_path, cold=store)] == expected


def test_crash_after_link_before_manifest_update_is_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = write_plain(tmp_path)

    def crash(*args: object) -> None:
        raise KeyboardInterrupt("crash")

    with monkeypatch.context() as m:
        m.setattr(compaction_module, "replace_entry", crash)
        with pytest.raises(KeyboardInterrupt):
            compress_old(tmp_path, older_than_days=2, today=TODAY)
    directory = day_dir(tmp_path, TOPIC, DAY)
    # the first segment is there twice: plain and listed, compressed and unlisted
    assert compressions(tmp_path, DAY) == {Compression.NONE, Compression.ZSTD}
    assert {s["compression"] for s in manifest(tmp_path, DAY)} == {"none"}
    assert len([n for n, _ in segment_files(directory)]) == len(manifest(tmp_path, DAY)) + 1
    # the writer is not stopped by the leftover
    assert Archive(tmp_path).durable_position(TOPIC, 0) == 11

    assert compress_old(tmp_path, older_than_days=2, today=TODAY) == [DAY]
    assert compressions(tmp_path, DAY) == {Compression.ZSTD}
    assert len(segment_files(directory)) == len(manifest(tmp_path, DAY))
    assert records(tmp_path) == expected  # nothing lost, nothing twice
    assert verify(tmp_path) == []
    assert compress_old(tmp_path, older_than_days=2, today=TODAY) == []


def test_crash_after_manifest_update_before_removal_is_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = write_plain(tmp_path)

    def crash(path: Path) -> None:
        raise KeyboardInterrupt("crash")

    with monkeypatch.context() as m:
        m.setattr(compaction_module, "_remove", crash)
        with pytest.raises(KeyboardInterrupt):
            compress_old(tmp_path, older_than_days=2, today=TODAY)
    listed = manifest(tmp_path, DAY)
    assert {s["compression"] for s in listed} == {"none", "zstd"}
    assert len(segment_files(day_dir(tmp_path, TOPIC, DAY))) == len(listed) + 1
    assert Archive(tmp_path).durable_position(TOPIC, 0) == 11

    assert compress_old(tmp_path, older_than_days=2, today=TODAY) == [DAY]
    assert compressions(tmp_path, DAY) == {Compression.ZSTD}
    assert records(tmp_path) == expected
    assert verify(tmp_path) == []


def test_a_leftover_with_other_bytes_is_a_conflict(tmp_path: Path) -> None:
    write_plain(tmp_path)
    directory = day_dir(tmp_path, TOPIC, DAY)
    first = str(manifest(tmp_path, DAY)[0]["name"])
    (directory / (first + ".zst")).write_bytes(zstandard.ZstdCompressor().compress(b"other\n"))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ArchiveConflict):
        compress_old(tmp_path, older_than_days=2, today=TODAY)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    with pytest.raises(ValueError, match="codec"):
        compress_old(tmp_path, older_than_days=2, compression=Compression.NONE, today=TODAY)
