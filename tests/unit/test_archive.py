"""The archive's writer: naming, rotation, atomic publish, positions, idempotent replay,
conflicts, abandon and crash recovery. Hermetic: everything under tmp_path."""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import subprocess
import sys
import textwrap
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from headrace.errors import StorageError, Terminal, is_transient
from storage.archive import (
    Archive,
    ArchiveConflict,
    ArchiveCorrupt,
    ArchivePolicy,
    ArchiveRecord,
    ArchiveRecordError,
    ArchiveWriteError,
    Compression,
    SegmentInfo,
    read,
    verify,
)
from storage.archive import manifest as manifest_module
from storage.archive.backend import LocalBackend
from storage.archive.layout import (
    date_of,
    day_dir,
    encode_line,
    parse_segment_name,
    segment_name,
)

TOPIC = "test.files"
DAY = "2025-03-04"
NEXT_DAY = "2025-03-05"


def ms(day: str = DAY, second: int = 0) -> int:
    """Epoch milliseconds of a UTC day plus some seconds."""
    return (date.fromisoformat(day) - date(1970, 1, 1)).days * 86_400_000 + second * 1000


def rec(
    offset: int,
    *,
    partition: int = 0,
    topic: str = TOPIC,
    day: str = DAY,
    event: dict[str, Any] | None = None,
) -> ArchiveRecord:
    return ArchiveRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp_ms=ms(day, offset % 86_000),
        event_time_ms=ms(day, offset % 86_000),
        key=f"p/f{offset}".encode(),
        schema_id=1,
        event=event if event is not None else {"path": f"f{offset}.txt", "content": b"x" * 5},
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def files(root: Path) -> list[str]:
    """Every file under root, relative, sorted (bookkeeping lock files left out)."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.name != "_manifest.lock"
    )


def manifest(root: Path, day: str = DAY, topic: str = TOPIC) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((day_dir(root, topic, day) / "_manifest.json").read_text())
    return data


def ranges(segments: list[SegmentInfo]) -> list[tuple[int, int]]:
    return [(s.first_offset, s.last_offset) for s in segments]


# --- naming --------------------------------------------------------------------------


def test_segment_names_carry_topic_partition_first_offset_and_compression() -> None:
    assert segment_name("a.b", 3, 42, Compression.ZSTD) == "a.b+3+00000000000000000042.jsonl.zst"
    assert segment_name("a", 0, 0, Compression.GZIP) == "a+0+00000000000000000000.jsonl.gz"
    assert segment_name("a", 1, 7, Compression.NONE) == "a+1+00000000000000000007.jsonl"
    for compression in Compression:
        parsed = parse_segment_name(segment_name("t-1_x.y", 11, 2**40, compression))
        assert parsed is not None
        assert (parsed.topic, parsed.partition, parsed.first_offset) == ("t-1_x.y", 11, 2**40)
        assert parsed.compression is compression


@pytest.mark.parametrize(
    "name",
    [
        "_manifest.json",
        "_manifest.lock",
        ".t+0+00000000000000000000.jsonl.1-ab.tmp",
        "t+0+1.jsonl",
        "t+0+00000000000000000000.jsonl.bz2",
        "t+x+00000000000000000000.jsonl",
        "t+0+00000000000000000000.json",
    ],
)
def test_other_names_are_not_segments(name: str) -> None:
    assert parse_segment_name(name) is None


def test_dates_are_utc_days_of_event_time(tmp_path: Path) -> None:
    assert date_of(0) == "1970-01-01"
    assert date_of(86_399_999) == "1970-01-01"
    assert date_of(86_400_000) == "1970-01-02"
    assert date_of(-1) == "1969-12-31"
    assert date_of(ms(DAY, 86_399)) == DAY
    assert day_dir(tmp_path, "t", DAY) == tmp_path / "t" / f"dt={DAY}"


# --- rotation ------------------------------------------------------------------------


def test_rotation_by_record_count(tmp_path: Path) -> None:
    archive = Archive(tmp_path, ArchivePolicy(max_segment_records=3))
    published = archive.append([rec(o) for o in range(10)])
    assert ranges(published) == [(0, 2), (3, 5), (6, 8)]
    assert [s.records for s in published] == [3, 3, 3]
    assert ranges(archive.close_all()) == [(9, 9)]
    names = [s.name for s in archive.published(TOPIC, 0)]
    assert names == [segment_name(TOPIC, 0, o, Compression.ZSTD) for o in (0, 3, 6, 9)]


def test_rotation_by_uncompressed_bytes(tmp_path: Path) -> None:
    line = len(encode_line(rec(10)))
    archive = Archive(tmp_path, ArchivePolicy(max_segment_bytes=int(line * 2.5)))
    published = archive.append([rec(o) for o in range(10, 16)])
    assert ranges(published) == [(10, 11), (12, 13)]
    big = rec(16, event={"blob": "y" * (line * 5)})  # larger than a segment: alone
    assert ranges(archive.append([big, rec(17)])) == [(14, 15), (16, 16)]
    assert ranges(archive.close_all()) == [(17, 17)]


def test_rotation_by_age_closes_idle_partitions(tmp_path: Path) -> None:
    clock = FakeClock()
    archive = Archive(tmp_path, ArchivePolicy(max_segment_age_s=60), clock=clock)
    archive.append([rec(0, partition=0), rec(1, partition=0)])
    clock.now += 30
    archive.append([rec(0, partition=1)])
    assert archive.close_due() == []
    clock.now += 30  # partition 0's segment is 60 s old, partition 1's 30 s
    due = archive.close_due()
    assert [(s.partition, s.first_offset, s.last_offset) for s in due] == [(0, 0, 1)]
    assert archive.durable_position(TOPIC, 0) == 2
    assert archive.durable_position(TOPIC, 1) is None
    clock.now += 30
    assert [s.partition for s in archive.close_due()] == [1]
    assert archive.close_due() == []
    assert archive.close_all() == []


def test_rotation_by_date_one_open_segment_per_partition(tmp_path: Path) -> None:
    archive = Archive(tmp_path, ArchivePolicy(compression=Compression.NONE))
    batch = [rec(0), rec(1), rec(2, day=NEXT_DAY), rec(3, day=NEXT_DAY), rec(4)]
    published = archive.append(batch)
    assert [(s.date, s.first_offset, s.last_offset) for s in published] == [
        (DAY, 0, 1),
        (NEXT_DAY, 2, 3),
    ]
    assert [(s.date, s.first_offset) for s in archive.close_all()] == [(DAY, 4)]
    assert files(tmp_path) == [
        f"{TOPIC}/dt={DAY}/_manifest.json",
        f"{TOPIC}/dt={DAY}/{TOPIC}+0+00000000000000000000.jsonl",
        f"{TOPIC}/dt={DAY}/{TOPIC}+0+00000000000000000004.jsonl",
        f"{TOPIC}/dt={NEXT_DAY}/_manifest.json",
        f"{TOPIC}/dt={NEXT_DAY}/{TOPIC}+0+00000000000000000002.jsonl",
    ]
    assert archive.durable_position(TOPIC, 0) == 5
    assert ranges(archive.published(TOPIC, 0)) == [(0, 1), (2, 3), (4, 4)]
    assert verify(tmp_path) == []


# --- publishing and manifests --------------------------------------------------------


def test_publish_leaves_no_temp_files_and_the_manifest_lists_exactly_the_files(
    tmp_path: Path,
) -> None:
    archive = Archive(tmp_path, ArchivePolicy(max_segment_records=4))
    archive.append([rec(o, partition=p) for o in range(10) for p in (2, 0)])
    assert any(name.endswith(".tmp") for name in files(tmp_path))  # open segments
    archive.close_all()
    on_disk = files(tmp_path)
    assert not any(name.endswith(".tmp") for name in on_disk)
    body = manifest(tmp_path)
    assert (body["version"], body["date"], body["topic"]) == (1, DAY, TOPIC)
    listed = [f"{TOPIC}/dt={DAY}/{s['name']}" for s in body["segments"]]
    assert sorted(listed) == [n for n in on_disk if not n.endswith("_manifest.json")]
    keys = [(s["partition"], s["first_offset"]) for s in body["segments"]]
    assert keys == sorted(keys) == [(0, 0), (0, 4), (0, 8), (2, 0), (2, 4), (2, 8)]
    for entry in body["segments"]:
        data = (day_dir(tmp_path, TOPIC, DAY) / entry["name"]).read_bytes()
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["compression"] == "zstd"
        assert SegmentInfo.from_json(entry).to_json() == entry
    assert [s["previous_last_offset"] for s in body["segments"][:3]] == [None, 3, 7]


def test_durable_position_counts_published_segments_only(tmp_path: Path) -> None:
    archive = Archive(tmp_path, ArchivePolicy(max_segment_records=5))
    assert archive.durable_position(TOPIC, 0) is None
    archive.append([rec(o) for o in range(7)])
    assert archive.durable_position(TOPIC, 0) == 5  # 5 and 6 are in the open segment
    archive.close_all()
    assert archive.durable_position(TOPIC, 0) == 7
    assert Archive(tmp_path).durable_position(TOPIC, 0) == 7
    assert Archive(tmp_path).durable_position(TOPIC, 1) is None
    assert Archive(tmp_path).durable_position("other", 0) is None


def test_offsets_with_gaps_are_fine(tmp_path: Path) -> None:
    offsets = [0, 2, 3, 7, 100, 102]  # transaction markers and aborted records take offsets
    archive = Archive(tmp_path, ArchivePolicy(max_segment_records=4))
    archive.append([rec(o) for o in offsets])
    archive.close_all()
    assert ranges(archive.published(TOPIC, 0)) == [(0, 7), (100, 102)]
    assert [s.records for s in archive.published(TOPIC, 0)] == [4, 2]
    assert archive.durable_position(TOPIC, 0) == 103
    assert [line.offset for line in read(tmp_path)] == offsets
    assert verify(tmp_path) == []


@pytest.mark.parametrize("compression", list(Compression))
def test_each_compression_publishes_a_readable_file(
    tmp_path: Path, compression: Compression
) -> None:
    archive = Archive(tmp_path, ArchivePolicy(compression=compression))
    records = [rec(o) for o in range(20)]
    archive.append(records)
    (info,) = archive.close_all()
    assert info.compression is compression
    assert info.name == segment_name(TOPIC, 0, 0, compression)
    data = (day_dir(tmp_path, TOPIC, DAY) / info.name).read_bytes()
    if compression is Compression.GZIP:
        data = gzip.decompress(data)
    elif compression is Compression.ZSTD:
        import zstandard

        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    assert data == b"".join(encode_line(r) for r in records)
    assert [line.record for line in read(tmp_path)] == records


def source_like(offset: int) -> dict[str, Any]:
    body = "\n".join(
        f"def handler_{i}(event: dict[str, Any]) -> None:\n    log.info('seen %s', event['id'])"
        for i in range(offset % 7, offset % 7 + 20)
    )
    return {"path": f"src/module_{offset}.py", "text": body, "content": body.encode()}


def test_zstd_compresses_source_like_text_below_a_fifth(tmp_path: Path) -> None:
    records = [rec(o, event=source_like(o)) for o in range(300)]
    sizes = {}
    for compression in (Compression.NONE, Compression.ZSTD):
        archive = Archive(tmp_path / compression, ArchivePolicy(compression=compression))
        archive.append(records)
        sizes[compression] = sum(s.size for s in archive.close_all())
    assert sizes[Compression.ZSTD] < 0.2 * sizes[Compression.NONE]


@pytest.mark.parametrize("compression", list(Compression))
def test_the_same_records_make_the_same_bytes(tmp_path: Path, compression: Compression) -> None:
    shas = []
    for name in ("a", "b"):
        archive = Archive(tmp_path / name, ArchivePolicy(compression=compression))
        archive.append([rec(o, event=source_like(o)) for o in range(50)])
        shas.append([s.sha256 for s in archive.close_all()])
    assert shas[0] == shas[1]


# --- idempotence and conflicts -------------------------------------------------------


def test_replay_after_restart_archives_nothing_twice(tmp_path: Path) -> None:
    policy = ArchivePolicy(max_segment_records=4)
    first = Archive(tmp_path, policy)
    first.append([rec(o) for o in range(10)])
    first.close_all()
    before = files(tmp_path)
    again = Archive(tmp_path, policy)
    assert again.append([rec(o) for o in range(10)]) == []
    assert again.close_all() == []
    assert again.skipped == 10
    assert files(tmp_path) == before
    # an overlapping replay archives only what is new
    again.append([rec(o) for o in range(5, 15)])
    again.close_all()
    assert [line.offset for line in read(tmp_path)] == list(range(15))
    assert verify(tmp_path) == []


def test_records_at_or_below_the_open_segments_last_offset_are_skipped(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    archive.append([rec(0), rec(1), rec(2)])
    archive.append([rec(1), rec(2), rec(3), rec(3), rec(2)])
    (info,) = archive.close_all()
    assert (info.first_offset, info.last_offset, info.records) == (0, 3, 4)
    assert archive.skipped == 4


def test_a_second_archive_recreating_an_identical_segment_is_accepted(tmp_path: Path) -> None:
    a, b = Archive(tmp_path), Archive(tmp_path)
    for archive in (a, b):  # both read the position before either publishes (a zombie)
        assert archive.durable_position(TOPIC, 0) is None
        archive.append([rec(o) for o in range(5)])
    (first,) = a.close_all()
    (second,) = b.close_all()
    assert first == second
    assert len(manifest(tmp_path)["segments"]) == 1
    assert verify(tmp_path) == []


def test_a_different_segment_under_an_existing_name_is_a_conflict(tmp_path: Path) -> None:
    a, b = Archive(tmp_path), Archive(tmp_path)
    b.durable_position(TOPIC, 0)
    a.append([rec(o) for o in range(5)])
    (info,) = a.close_all()
    path = day_dir(tmp_path, TOPIC, DAY) / info.name
    before = path.read_bytes()
    b.append([rec(o) for o in range(3)])  # same first offset, other bytes
    with pytest.raises(ArchiveConflict, match="other bytes") as caught:
        b.close_all()
    assert isinstance(caught.value, StorageError) and isinstance(caught.value, Terminal)
    assert path.read_bytes() == before
    assert not any(name.endswith(".tmp") for name in files(tmp_path))
    assert verify(tmp_path) == []


def test_a_segment_overlapping_a_published_one_is_a_conflict(tmp_path: Path) -> None:
    a, b = Archive(tmp_path), Archive(tmp_path)
    b.durable_position(TOPIC, 0)
    a.append([rec(o) for o in range(5)])
    a.close_all()
    b.append([rec(o) for o in range(3, 8)])
    with pytest.raises(ArchiveConflict, match="overlaps"):
        b.close_all()
    assert len(list(day_dir(tmp_path, TOPIC, DAY).glob("*.jsonl*"))) == 1
    assert verify(tmp_path) == []


def test_abandon_drops_open_segments_unpublished(tmp_path: Path) -> None:
    archive = Archive(tmp_path, ArchivePolicy(max_segment_records=3))
    archive.append([rec(o, partition=p) for o in range(5) for p in (0, 1)])
    archive.abandon([(TOPIC, 0), (TOPIC, 5)])
    assert archive.durable_position(TOPIC, 0) == 3
    assert len(archive.close_all()) == 1  # partition 1's
    assert [(s.partition, s.last_offset) for s in archive.published(TOPIC, 0)] == [(0, 2)]
    # the abandoned records come again (the consumer seeks back) and are archived
    archive.append([rec(o) for o in range(5)])
    assert ranges(archive.close_all()) == [(3, 4)]
    assert not any(name.endswith(".tmp") for name in files(tmp_path))


def test_close_all_of_some_partitions_leaves_the_others_open(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    archive.append([rec(0, partition=0), rec(0, partition=1), rec(0, partition=2)])
    assert [s.partition for s in archive.close_all([(TOPIC, 2), (TOPIC, 0)])] == [2, 0]
    assert archive.durable_position(TOPIC, 1) is None
    assert [s.partition for s in archive.close_all()] == [1]


# --- crashes -------------------------------------------------------------------------

CRASH = """
import os, sys
from pathlib import Path
from storage.archive import Archive, ArchivePolicy, ArchiveRecord
records = [ArchiveRecord("{topic}", 0, o, {ms}, {ms}, None, None, {{"n": o}}) for o in range(8)]
archive = Archive(Path(sys.argv[1]), ArchivePolicy(max_segment_records=5))
archive.append(records)
os._exit(0)  # a crash: the open segment (offsets 5-7) is never published
"""


def test_a_crashed_writers_temp_files_are_removed_and_its_position_is_unchanged(
    tmp_path: Path,
) -> None:
    script = textwrap.dedent(CRASH.format(topic=TOPIC, ms=ms()))
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=60)
    assert len([n for n in files(tmp_path) if n.endswith(".tmp")]) == 1
    archive = Archive(tmp_path)
    assert not any(name.endswith(".tmp") for name in files(tmp_path))
    assert archive.durable_position(TOPIC, 0) == 5
    assert verify(tmp_path) == []


def test_a_live_archives_temp_files_are_left_alone(tmp_path: Path) -> None:
    live = Archive(tmp_path)
    live.append([rec(0), rec(1)])
    Archive(tmp_path)  # another process starting on the same root
    assert ranges(live.close_all()) == [(0, 1)]


def test_a_segment_published_but_not_listed_is_adopted(tmp_path: Path) -> None:
    archive = Archive(tmp_path, ArchivePolicy(max_segment_records=3))
    archive.append([rec(o) for o in range(6)])
    archive.close_all()
    path = day_dir(tmp_path, TOPIC, DAY) / "_manifest.json"
    body = json.loads(path.read_text())
    body["segments"].pop()  # a crash between the rename and the manifest update
    path.write_text(json.dumps(body))
    assert [p.kind for p in verify(tmp_path)] == ["unlisted_segment"]
    again = Archive(tmp_path, ArchivePolicy(max_segment_records=3))
    assert again.durable_position(TOPIC, 0) == 6
    assert len(manifest(tmp_path)["segments"]) == 2
    assert manifest(tmp_path)["segments"][1]["previous_last_offset"] == 2
    assert verify(tmp_path) == []
    again.append([rec(o) for o in range(8)])
    assert ranges(again.close_all()) == [(6, 7)]


def test_an_unlisted_segment_that_is_not_sound_is_not_adopted(tmp_path: Path) -> None:
    archive = Archive(tmp_path, ArchivePolicy(compression=Compression.NONE))
    archive.append([rec(o) for o in range(3)])
    (info,) = archive.close_all()
    (day_dir(tmp_path, TOPIC, DAY) / "_manifest.json").unlink()
    path = day_dir(tmp_path, TOPIC, DAY) / info.name
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ArchiveCorrupt, match="not a sound segment"):
        Archive(tmp_path).durable_position(TOPIC, 0)
    with pytest.raises(ArchiveCorrupt):
        Archive(tmp_path).append([rec(3)])


# --- bad input and failures ----------------------------------------------------------


def test_an_event_that_cannot_be_encoded_fails_the_batch_before_any_write(
    tmp_path: Path,
) -> None:
    archive = Archive(tmp_path)
    batch = [rec(0), rec(1, event={"x": object()}), rec(2)]
    with pytest.raises(ArchiveRecordError, match=r"test.files\[0\]@1") as caught:
        archive.append(batch)
    assert caught.value.offset == 1 and isinstance(caught.value, Terminal)
    assert archive.close_all() == []
    archive.append([rec(0), rec(2)])  # the caller dead-letters offset 1 and goes on
    assert ranges(archive.close_all()) == [(0, 2)]


@pytest.mark.parametrize("topic", ["../escape", "a/b", "..", ""])
def test_a_topic_that_is_not_a_kafka_name_is_refused(tmp_path: Path, topic: str) -> None:
    with pytest.raises(ArchiveRecordError):
        Archive(tmp_path).append([rec(0, topic=topic)])
    with pytest.raises(ValueError):
        Archive(tmp_path).durable_position(topic, 0)


def test_policy_is_checked_and_compression_coerced() -> None:
    assert ArchivePolicy(compression="gzip").compression is Compression.GZIP  # type: ignore[arg-type]
    for bad in ({"max_segment_records": 0}, {"max_segment_bytes": -1}, {"max_segment_age_s": 0}):
        with pytest.raises(ValueError):
            ArchivePolicy(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ArchivePolicy(compression="lz4")  # type: ignore[arg-type]


def test_a_failing_disk_is_a_transient_error_and_drops_the_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = Archive(tmp_path)
    archive.append([rec(0)])

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(LocalBackend, "publish", full)
    with pytest.raises(ArchiveWriteError, match="No space left") as caught:
        archive.close_all()
    assert is_transient(caught.value)
    assert not any(name.endswith(".tmp") for name in files(tmp_path))
    monkeypatch.undo()
    archive.append([rec(0)])  # the consumer seeks back to the durable position
    assert ranges(archive.close_all()) == [(0, 0)]


def test_manifest_updates_keep_the_lock_file_and_nothing_else(tmp_path: Path) -> None:
    day = tmp_path / "d"
    day.mkdir()
    with manifest_module.locked(day):
        pass
    assert [p.name for p in day.iterdir()] == ["_manifest.lock"]
