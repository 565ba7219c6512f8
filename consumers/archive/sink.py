"""The archive as a consumer sink: records go into open segments, which become
durable when published (on size, count, age, revocation or shutdown). The
durable position of a partition is the end of its last published segment,
read back from the manifests on assignment, so a replay never archives a
record twice, whatever closed the segment."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any

from consumers.base import Decoded, Sink, SinkCapabilities, TopicPartition
from headrace.failpoints import failpoint
from storage.archive import Archive, ArchiveRecord, SegmentInfo

TIME_FIELDS = ("event_time", "verified_at", "failed_at")
# write() builds ArchiveRecords by position (keywords cost 0.3 us a record, 2% of a drain):
# in this order, checked here so that a change to ArchiveRecord cannot go unnoticed.
_ORDER = "topic partition offset timestamp_ms event_time_ms key schema_id event".split()
if [f.name for f in fields(ArchiveRecord)] != _ORDER:
    raise ImportError(f"ArchiveRecord's fields are no longer {_ORDER}: update ArchiveSink.write")


def event_time_ms(event: dict[str, Any], record_time_ms: int) -> int:
    """The event's own time, for its date directory; the record's time if it has none."""
    for name in TIME_FIELDS:
        value = event.get(name)
        if isinstance(value, datetime):
            return int(value.timestamp() * 1000)
    return record_time_ms


class ArchiveSink(Sink):
    # The archive stores what was published: the decoded dict, no model needed.
    capabilities = SinkCapabilities(durable_on_write=False, max_batch=10_000, needs_models=False)

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self._durable: dict[TopicPartition, int] = {}

    def write(self, batch: Sequence[Decoded]) -> None:
        records: list[ArchiveRecord] = []
        append = records.append
        for d in batch:
            record, _, schema_id, event = d  # needs_models=False: the fields are set
            if event is None:
                event = d.as_dict()
            when = event.get("event_time")  # most events' time field: inline, no call
            append(
                ArchiveRecord(
                    record.topic,
                    record.partition,
                    record.offset,
                    record.timestamp_ms,
                    int(when.timestamp() * 1000)  # as event_time_ms: the lines stay the same
                    if type(when) is datetime
                    else event_time_ms(event, record.timestamp_ms),
                    record.key,
                    schema_id,
                    event,
                )
            )
        self._published(self.archive.append(records))

    def durable(self) -> dict[TopicPartition, int]:
        return dict(self._durable)

    def positions(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        found = {}
        for topic, partition in partitions:
            position = self.archive.durable_position(topic, partition)
            if position is not None:
                found[(topic, partition)] = position
                self._durable[(topic, partition)] = position
        return found

    def tick(self) -> None:
        self._published(self.archive.close_due())

    def release(self, partitions: Iterable[TopicPartition]) -> None:
        self._published(self.archive.close_all(list(partitions)))

    def close(self) -> None:
        self._published(self.archive.close_all())

    def _published(self, segments: list[SegmentInfo]) -> None:
        for segment in segments:
            key = (segment.topic, segment.partition)
            self._durable[key] = max(self._durable.get(key, 0), segment.last_offset + 1)
        if segments:
            failpoint("archive.after_publish")  # tests: die with segments published, uncommitted
