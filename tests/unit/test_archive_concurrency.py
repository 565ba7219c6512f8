"""Two processes archiving different partitions of one topic and date: the day's manifest,
updated under its lock, keeps every entry of both."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from storage.archive import Archive, ArchivePolicy, read, verify
from storage.archive.layout import day_dir
from tests.unit.test_archive import DAY, TOPIC, rec

SEGMENTS = 40


def archive_partition(root: str, partition: int, start: multiprocessing.synchronize.Event) -> None:
    archive = Archive(Path(root), ArchivePolicy(max_segment_records=1))
    start.wait(30)
    for offset in range(SEGMENTS):  # one segment, so one manifest update, per record
        archive.append([rec(offset, partition=partition)])
    archive.close_all()


def test_concurrent_manifest_updates_from_two_processes_keep_both(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    workers = [
        context.Process(target=archive_partition, args=(str(tmp_path), partition, start))
        for partition in (0, 1)
    ]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0, 0]
    body = json.loads((day_dir(tmp_path, TOPIC, DAY) / "_manifest.json").read_text())
    listed = [(s["partition"], s["first_offset"]) for s in body["segments"]]
    assert listed == [(p, o) for p in (0, 1) for o in range(SEGMENTS)]
    assert verify(tmp_path) == []
    assert sum(1 for _ in read(tmp_path)) == 2 * SEGMENTS
