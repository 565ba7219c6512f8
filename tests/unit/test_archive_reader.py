"""Reading the archive back: exactly what was written, in (topic, date, partition, offset)
order, across compressions, with topic, date and event filters."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from storage.archive import (
    Archive,
    ArchiveCorrupt,
    ArchivedLine,
    ArchivePolicy,
    ArchiveRecord,
    Compression,
    read,
)
from storage.archive.layout import date_of, day_dir, segment_name
from tests.unit.test_archive import DAY, NEXT_DAY, TOPIC, rec

LATER = "2025-03-06"


def event(offset: int) -> dict[str, object]:
    return {
        "path": f"f{offset}.txt",
        "content": bytes(range(offset % 256)),
        "event_time": datetime(2025, 3, 4, 1, 2, 3, offset * 1000 % 1_000_000, tzinfo=UTC),
        "tags": {"$odd": offset % 2 == 1},
    }


def write_mixed(root: Path) -> list[ArchiveRecord]:
    """Three topics, each archived with another compression, over three days and two
    partitions, appended in an interleaved order; returned in reading order."""
    records = []
    for topic, compression in (
        ("t.a", Compression.GZIP),
        ("t.b", Compression.NONE),
        ("t.c", "zstd"),
    ):
        archive = Archive(
            root, ArchivePolicy(compression=Compression(compression), max_segment_records=4)
        )
        batch = [
            rec(o, topic=topic, partition=p, day=d, event=event(o))
            for (o, d) in enumerate([DAY] * 5 + [NEXT_DAY] * 6 + [LATER] * 3)
            for p in (1, 0)
        ]
        archive.append(batch)
        archive.close_all()
        records += batch
    return sorted(records, key=lambda r: (r.topic, date_of(r.event_time_ms), r.partition, r.offset))


def test_reads_back_exactly_what_was_written_across_compressions(tmp_path: Path) -> None:
    expected = write_mixed(tmp_path)
    lines = list(read(tmp_path))
    assert all(isinstance(line, ArchivedLine) for line in lines)
    assert [line.record for line in lines] == expected
    assert {line.segment.rsplit(".", 1)[-1] for line in lines} == {"gz", "jsonl", "zst"}
    assert lines[0].event["content"] == b""
    assert isinstance(lines[0].event["event_time"], datetime)


def test_filters_by_topic_and_dates_inclusive(tmp_path: Path) -> None:
    expected = write_mixed(tmp_path)
    only_b = [line.record for line in read(tmp_path, topic="t.b")]
    assert only_b == [r for r in expected if r.topic == "t.b"]
    days = {
        (since, until): [
            line.offset for line in read(tmp_path, topic="t.a", since=since, until=until)
        ]
        for since, until in ((NEXT_DAY, None), (None, DAY), (NEXT_DAY, NEXT_DAY), (LATER, DAY))
    }
    assert sorted(set(days[(NEXT_DAY, None)])) == list(range(5, 14))
    assert sorted(set(days[(None, DAY)])) == list(range(5))
    assert sorted(set(days[(NEXT_DAY, NEXT_DAY)])) == list(range(5, 11))
    assert days[(LATER, DAY)] == []
    assert list(read(tmp_path, topic="no.such.topic")) == []


def test_a_predicate_sees_the_decoded_event(tmp_path: Path) -> None:
    write_mixed(tmp_path)
    odd = list(read(tmp_path, topic="t.c", predicate=lambda e: e["tags"]["$odd"]))
    assert odd and all(line.offset % 2 == 1 for line in odd)
    assert len(odd) == 2 * 7


def test_unpublished_segments_are_not_read(tmp_path: Path) -> None:
    archive = Archive(tmp_path, ArchivePolicy(max_segment_records=2))
    archive.append([rec(o) for o in range(3)])  # 0-1 published, 2 open
    assert [line.offset for line in read(tmp_path)] == [0, 1]
    archive.close_all()
    assert [line.offset for line in read(tmp_path)] == [0, 1, 2]


def test_a_damaged_segment_raises_archive_corrupt(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    archive.append([rec(o) for o in range(5)])
    (info,) = archive.close_all()
    path = day_dir(tmp_path, TOPIC, DAY) / info.name
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ArchiveCorrupt, match="truncated"):
        list(read(tmp_path))
    plain = day_dir(tmp_path, TOPIC, DAY) / segment_name(TOPIC, 1, 0, Compression.NONE)
    path.unlink()
    plain.write_bytes(b"{}\n")
    with pytest.raises(ArchiveCorrupt, match="line 1 is not a record"):
        list(read(tmp_path))


def test_stopping_early_closes_the_file(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    archive.append([rec(o) for o in range(5)])
    archive.close_all()
    lines = read(tmp_path)
    assert next(lines).offset == 0
    lines.close()  # filterwarnings=error would fail on an unclosed file


def test_dates_must_be_dates(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        list(read(tmp_path, since="last week"))
