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

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from confluent_kafka import KafkaException

from headrace.errors import ServiceUnavailable
from headrace.kafka import make_admin
from headrace.settings import Settings
from storage.archive import Backend, SegmentInfo, open_backend
from storage.archive.layout import decode_line
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
            description = found[self.group_id].result(timeout=timeout_s)
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
        within ``timeout_s``; None if some are still not durable by then."""
        wanted, holding = set(placed), {}
        deadline = time.monotonic() + timeout_s
        while True:
            for segment, covered in self._covering(wanted, days):
                holding[(segment.day, segment.info.name)] = segment
                wanted -= covered
            if not wanted:
                return list(holding.values())
            if time.monotonic() >= deadline:
                return None
            time.sleep(self.poll_s)

    def _covering(self, wanted: set[Placed], days: list[str]) -> list[tuple[Segment, set[Placed]]]:
        backend = self.backend()
        present = set(backend.days(self.topic))
        found = []
        for day in days:
            if day not in present:
                continue
            for info in backend.read_manifest(self.topic, day):
                covered = {
                    (p, o)
                    for p, o in wanted
                    if p == info.partition and info.first_offset <= o <= info.last_offset
                }
                if covered:
                    found.append((Segment(day, info), covered))
        return found

    def read_back(
        self, placed: Iterable[Placed], segments: Iterable[Segment]
    ) -> list[dict[str, Any]]:
        """The archived events at exactly these (partition, offset)s, read from ``segments``."""
        wanted, backend, events = set(placed), self.backend(), []
        for segment in segments:
            info = segment.info
            where = backend.where(self.topic, segment.day, info.name)
            with backend.open(self.topic, segment.day, info.name) as file:
                for line in iter_lines(file, info.compression, where):
                    record = decode_line(line)
                    if (record.partition, record.offset) in wanted:
                        events.append(record.event)
        return events


@dataclass(frozen=True)
class Segment:
    """A published segment of the topic, and the day directory it is in."""

    day: str
    info: SegmentInfo


def days_around(today: date) -> list[str]:
    """The archive's day directories a batch dated ``today`` may be in."""
    return [(today + timedelta(days=d)).isoformat() for d in (-1, 0, 1)]
