"""The verifier: each kind of damage to an archive is found and named, and a sound
archive has no problem."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from storage.archive import Archive, ArchivePolicy, Compression, ProblemKind, verify
from storage.archive.layout import day_dir, encode_line, segment_name
from tests.unit.test_archive import DAY, NEXT_DAY, TOPIC, rec


def build(root: Path, compression: Compression = Compression.ZSTD, count: int = 9) -> Path:
    """An archive of one partition, three records a segment; the day directory."""
    archive = Archive(root, ArchivePolicy(compression=compression, max_segment_records=3))
    archive.append([rec(o) for o in range(count)])
    archive.close_all()
    return day_dir(root, TOPIC, DAY)


def segment(day: Path, first: int, compression: Compression = Compression.ZSTD) -> Path:
    return day / segment_name(TOPIC, 0, first, compression)


def edit_manifest(day: Path, change: Any) -> None:
    path = day / "_manifest.json"
    body = json.loads(path.read_text())
    change(body)
    path.write_text(json.dumps(body))


def kinds(root: Path, **kwargs: Any) -> list[str]:
    return sorted(p.kind for p in verify(root, **kwargs))


@pytest.mark.parametrize("compression", list(Compression))
def test_a_sound_archive_has_no_problem(tmp_path: Path, compression: Compression) -> None:
    build(tmp_path, compression)
    archive = Archive(tmp_path, ArchivePolicy(compression=compression))
    archive.append([rec(o, partition=1, day=NEXT_DAY) for o in (3, 5, 9)])
    archive.close_all()
    assert verify(tmp_path) == []
    assert verify(tmp_path, date=DAY) == []
    assert verify(tmp_path / "nothing here") == []


@pytest.mark.parametrize("compression", [Compression.ZSTD, Compression.GZIP])
def test_a_truncated_compressed_segment_does_not_decompress(
    tmp_path: Path, compression: Compression
) -> None:
    path = segment(build(tmp_path, compression), 3, compression)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    problems = verify(tmp_path)
    assert sorted(p.kind for p in problems) == ["decompression_error", "manifest_mismatch"]
    assert all(p.path == str(path) for p in problems)
    mismatch = next(p for p in problems if p.kind == "manifest_mismatch")
    assert "size" in mismatch.message and "sha256" in mismatch.message


def test_a_truncated_plain_segment_ends_inside_a_line(tmp_path: Path) -> None:
    path = segment(build(tmp_path, Compression.NONE), 3, Compression.NONE)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    assert kinds(tmp_path) == ["manifest_mismatch", "unparsable_line"]


def test_a_flipped_byte_in_a_zstd_segment_fails_its_checksum(tmp_path: Path) -> None:
    path = segment(build(tmp_path), 0)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x55
    path.write_bytes(bytes(data))
    assert "decompression_error" in kinds(tmp_path)


def test_an_edited_line_no_longer_matches_the_manifests_sha256(tmp_path: Path) -> None:
    path = segment(build(tmp_path, Compression.NONE), 3, Compression.NONE)
    data = path.read_bytes()
    assert b"f4.txt" in data
    path.write_bytes(data.replace(b"f4.txt", b"f5.txt"))  # same size, other bytes
    (problem,) = verify(tmp_path)
    assert problem.kind == "manifest_mismatch"  # a str enum: plain strings compare equal
    assert problem.kind is ProblemKind.MANIFEST_MISMATCH
    assert "sha256" in problem.message and "size" not in problem.message


def test_a_missing_segment_is_found(tmp_path: Path) -> None:
    path = segment(build(tmp_path), 3)
    path.unlink()
    (problem,) = verify(tmp_path)
    assert (problem.kind, problem.path) == ("missing_segment", str(path))


def test_a_manifest_whose_count_is_wrong_is_a_mismatch(tmp_path: Path) -> None:
    day = build(tmp_path)
    edit_manifest(day, lambda body: body["segments"][1].update(records=4))
    (problem,) = verify(tmp_path)
    assert problem.kind == "manifest_mismatch"
    assert "records 4 listed, 3 found" in problem.message


def test_a_manifest_entry_for_another_place_is_a_mismatch(tmp_path: Path) -> None:
    day = build(tmp_path)
    edit_manifest(day, lambda body: body["segments"][0].update(date=NEXT_DAY))
    assert kinds(tmp_path) == ["manifest_mismatch"]


def test_an_unlisted_segment_is_found(tmp_path: Path) -> None:
    day = build(tmp_path)
    edit_manifest(day, lambda body: body["segments"].pop(1))
    assert kinds(tmp_path) == ["unlisted_segment"]


def test_overlapping_segments_are_found(tmp_path: Path) -> None:
    day = build(tmp_path / "a", count=6)  # 0-2, 3-5
    other = Archive(tmp_path / "b", ArchivePolicy(max_segment_records=10))
    other.append([rec(o) for o in range(4, 8)])
    (info,) = other.close_all()
    shutil.copy(day_dir(tmp_path / "b", TOPIC, DAY) / info.name, day / info.name)
    edit_manifest(day, lambda body: body["segments"].append(info.to_json()))
    (problem,) = verify(tmp_path / "a")
    assert (problem.kind, problem.path) == ("overlap", str(day / info.name))


def test_a_segment_taken_out_of_the_chain_is_a_gap(tmp_path: Path) -> None:
    day = build(tmp_path)  # 0-2, 3-5, 6-8
    segment(day, 3).unlink()
    edit_manifest(day, lambda body: body["segments"].pop(1))
    (problem,) = verify(tmp_path)
    assert (problem.kind, problem.path) == ("gap", str(segment(day, 6)))
    assert "follows offset 5" in problem.message and "ends at 2" in problem.message


def test_the_chains_head_taken_away_is_a_gap_across_all_days_only(tmp_path: Path) -> None:
    archive = Archive(tmp_path, ArchivePolicy(max_segment_records=3))
    archive.append([rec(0), rec(1), rec(2, day=NEXT_DAY), rec(3, day=NEXT_DAY)])
    archive.close_all()
    shutil.rmtree(day_dir(tmp_path, TOPIC, DAY))
    assert kinds(tmp_path) == ["gap"]
    assert kinds(tmp_path, date=NEXT_DAY) == []


def test_offset_gaps_from_transactions_are_not_gaps(tmp_path: Path) -> None:
    archive = Archive(tmp_path, ArchivePolicy(max_segment_records=2))
    archive.append([rec(o) for o in (0, 1, 3, 4, 9, 20, 22)])  # markers at 2, 5-8, ...
    archive.close_all()
    assert verify(tmp_path) == []


def write_segment(day: Path, records: list[Any], first: int) -> None:
    """A plain segment written by hand, with a manifest entry that matches its bytes."""
    data = b"".join(encode_line(r) for r in records)
    name = segment_name(TOPIC, 0, first, Compression.NONE)
    (day / name).write_bytes(data)
    entry = {
        "topic": TOPIC,
        "partition": 0,
        "date": DAY,
        "first_offset": first,
        "last_offset": records[-1].offset,
        "records": len(records),
        "name": name,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "compression": "none",
        "previous_last_offset": None,
    }
    edit_manifest(day, lambda body: body["segments"].append(entry))


def test_offsets_out_of_order_inside_a_segment_are_found(tmp_path: Path) -> None:
    day = build(tmp_path, count=3)
    write_segment(day, [rec(10), rec(12), rec(11)], 10)
    (problem,) = verify(tmp_path)
    assert problem.kind == "order" and "offset 11 after 12" in problem.message


def test_a_line_of_another_partition_or_date_is_found(tmp_path: Path) -> None:
    day = build(tmp_path, count=3)
    write_segment(day, [rec(10), rec(11, partition=4), rec(12, day=NEXT_DAY)], 10)
    (problem,) = verify(tmp_path)
    assert problem.kind == "wrong_partition" and problem.message.startswith("2 time(s)")


def test_a_line_that_is_not_a_record_is_found(tmp_path: Path) -> None:
    path = segment(build(tmp_path, Compression.NONE), 0, Compression.NONE)
    path.write_bytes(path.read_bytes() + b"not json\n")
    assert kinds(tmp_path) == ["manifest_mismatch", "unparsable_line"]


def test_a_manifest_that_does_not_parse_is_found(tmp_path: Path) -> None:
    day = build(tmp_path)
    (day / "_manifest.json").write_text("{")
    problems = verify(tmp_path)
    assert [p.kind for p in problems] == ["bad_manifest"]


def test_stray_files_are_found_and_writers_temp_files_are_not(tmp_path: Path) -> None:
    day = build(tmp_path)
    (day / "notes.txt").write_text("hello")
    (day / ".t+0+00000000000000000099.jsonl.1-ab.tmp").write_text("being written")
    assert kinds(tmp_path) == ["unknown_file"]


def test_a_date_limits_the_check_to_that_day(tmp_path: Path) -> None:
    build(tmp_path)
    archive = Archive(tmp_path)
    archive.append([rec(20, day=NEXT_DAY)])
    (info,) = archive.close_all()
    (day_dir(tmp_path, TOPIC, NEXT_DAY) / info.name).unlink()
    assert kinds(tmp_path, date=NEXT_DAY) == ["missing_segment"]
    assert kinds(tmp_path, date=DAY) == []
    with pytest.raises(ValueError):
        verify(tmp_path, date="yesterday")
