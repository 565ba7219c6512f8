"""The archive as a consumer sink: records go into open segments, which become
durable when published (on size, count, age, revocation or shutdown). The
durable position of a partition is the end of its last published segment,
read back from the manifests on assignment, so a replay never archives a
record twice, whatever closed the segment."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from consumers.base import Decoded, Sink, SinkCapabilities, TopicPartition
from storage.archive import Archive, ArchiveRecord, SegmentInfo

TIME_FIELDS = ("event_time", "verified_at", "failed_at")


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
        records = []
        for d in batch:
            event = d.as_dict()
            records.append(
                ArchiveRecord(
                    topic=d.record.topic,
                    partition=d.record.partition,
                    offset=d.record.offset,
                    timestamp_ms=d.record.timestamp_ms,
                    event_time_ms=event_time_ms(event, d.record.timestamp_ms),
                    key=d.record.key,
                    schema_id=d.schema_id,
                    event=event,
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
