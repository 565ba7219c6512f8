"""Asking the archive whether it durably holds a batch of row events, and reading it back.

The archive group writes segments and publishes them (manifest entries) on size,
count or age (``archive.max_segment_age_s``): a record is durable once a published
segment of its partition covers its offset. :meth:`ArchiveConfirm.wait_durable`
polls the manifests of the days the batch's events are dated (its event time, a
day either side) until every (partition, offset) is covered or the timeout passes;
:meth:`read_back` then reads those segments only, for the records at the batch's offsets.
Nothing here writes to the archive.
"""

from __future__ import annotations

import re
import time
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import orjson
from confluent_kafka import KafkaException

from headrace.errors import ServiceUnavailable
from headrace.kafka import answer, make_admin
from headrace.settings import Settings
from storage.archive import Backend, SegmentInfo, open_backend
from storage.archive.layout import ArchiveCorrupt, decode_line
from storage.archive.reader import iter_lines

Placed = tuple[int, int]  # (partition, offset)


class ArchiveConfirm:
    """The archive group's view, for one topic; connects on first use."""

    def __init__(self, settings: Settings, *, poll_s: float = 0.25) -> None:
        self.settings = settings
        self.topic = settings.kafka.topics.row_events
        self.group_id = settings.consumer.group_prefix + "archive"
        self.poll_s = poll_s
        self._backend: Backend | None = None

    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = open_backend(self.settings.archive, self.settings.object_store)
        return self._backend

    def members(self, timeout_s: float = 10.0) -> tuple[int, bool]:
        """(members of the archive group, whether any is assigned a partition of the topic)."""
        admin = make_admin(self.settings.kafka)
        found = admin.describe_consumer_groups([self.group_id], request_timeout=timeout_s)
        try:
            description = answer(found[self.group_id], timeout_s)
        except KafkaException as exc:
            raise ServiceUnavailable(
                "Kafka (describing the archive group)",
                self.settings.kafka.bootstrap_servers,
                exc.args[0].str(),
            ) from None
        members = list(description.members)
        reads = any(
            tp.topic == self.topic
            for m in members
            if m.assignment is not None
            for tp in m.assignment.topic_partitions
        )
        return len(members), reads

    def wait_durable(
        self, placed: Iterable[Placed], days: list[str], timeout_s: float
    ) -> list[Segment] | None:
        """The published segments that hold every (partition, offset), once they all do
        within ``timeout_s``; None if some are still not durable by then. It looks again
        after 20 ms, then twice as long each time, up to ``poll_s``."""
        wanted, holding = set(placed), {}
        deadline = time.monotonic() + timeout_s
        pause = min(0.02, self.poll_s)
        while True:
            for segment, covered in self._covering(wanted, days):
                holding[(segment.day, segment.info.name)] = segment
                wanted -= covered
            if not wanted:
                return list(holding.values())
            if time.monotonic() >= deadline:
                return None
            time.sleep(pause)
            pause = min(pause * 2, self.poll_s)

    def _covering(self, wanted: set[Placed], days: list[str]) -> list[tuple[Segment, set[Placed]]]:
        backend = self.backend()
        present = set(backend.days(self.topic))
        offsets: dict[int, list[int]] = {}
        for p, o in wanted:
            offsets.setdefault(p, []).append(o)
        for found_offsets in offsets.values():
            found_offsets.sort()
        found = []
        for day in days:
            if day not in present:
                continue
            for info in backend.read_manifest(self.topic, day):
                mine = offsets.get(info.partition)
                if not mine:
                    continue
                start = bisect_left(mine, info.first_offset)
                end = bisect_right(mine, info.last_offset)
                if start < end:
                    p = info.partition
                    found.append((Segment(day, info), {(p, o) for o in mine[start:end]}))
        return found

    def read_back(
        self, placed: Iterable[Placed], segments: Iterable[Segment]
    ) -> list[dict[str, Any]]:
        """The archived events at exactly these (partition, offset)s, read from ``segments``."""
        wanted = set(placed)
        records = (decode_line(line) for _where, line in self._lines(segments))
        return [r.event for r in records if (r.partition, r.offset) in wanted]

    def _lines(self, segments: Iterable[Segment]) -> Iterator[tuple[str, bytes]]:
        """Every line of ``segments`` in order, with where its segment is (for errors)."""
        backend = self.backend()
        for segment in segments:
            info = segment.info
            where = backend.where(self.topic, segment.day, info.name)
            with backend.open(self.topic, segment.day, info.name) as file:
                for line in iter_lines(file, info.compression, where):
                    yield where, line

    def read_back_rows(
        self, placed: Iterable[Placed], segments: Iterable[Segment]
    ) -> list[dict[str, Any]]:
        """:meth:`read_back` for RowEvents, leaner: a line's partition and offset are read
        from its start (the line format writes them first), only the lines wanted are
        parsed, and their events are left as the JSON has them, tags not restored.

        A RowEvent holds strings (and nulls) in maps of several keys, so its ``row`` and
        ``key`` read the same either way: the archive tags only bytes, times and decimals
        (here ``event_time`` alone) and wraps only maps of one ``$`` key. The caller
        checks each column's shape (``archiver._archived_checksum``) and restores what is
        not plain (:func:`storage.archive.layout.restore`). A line whose start is not in
        that form is decoded whole (``decode_line``)."""
        wanted: set[Placed] = set(placed)
        events: list[dict[str, Any]] = []
        for where, line in self._lines(segments):
            start = _START.match(line)
            if start is None:
                record = decode_line(line)
                if (record.partition, record.offset) in wanted:
                    events.append(record.event)
                continue
            place = (int(start[1]), int(start[2]))
            if place not in wanted:
                continue
            obj = orjson.loads(line)
            event = obj.get("event")
            if (obj.get("partition"), obj.get("offset")) != place or type(event) is not dict:
                raise ArchiveCorrupt(f"{where}: a line at {place} does not read back")
            events.append(event)
        return events


# A line's start as storage.archive.layout writes it: the topic (a Kafka topic name, so no
# escapes in practice), then the partition and offset.
_START = re.compile(rb'\{"topic":"(?:[^"\\]|\\.)*","partition":(\d+),"offset":(\d+),')


@dataclass(frozen=True)
class Segment:
    """A published segment of the topic, and the day directory it is in."""

    day: str
    info: SegmentInfo


def days_around(today: date) -> list[str]:
    """The archive's day directories a batch dated ``today`` may be in."""
    return [(today + timedelta(days=d)).isoformat() for d in (-1, 0, 1)]
