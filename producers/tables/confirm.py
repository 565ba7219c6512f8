"""Asking the archive whether it durably holds a batch of row events, and reading it back.

The archive group writes segments and publishes them (manifest entries) on size,
count or age (``archive.max_segment_age_s``): a record is durable once a published
segment of its partition covers its offset. :meth:`ArchiveConfirm.wait_durable`
polls the manifests of the days the batch's events are dated (its event time, a
day either side) until every (partition, offset) is covered or the timeout passes;
:meth:`read_back` then reads those days' published segments for the batch's events.
Nothing here writes to the archive.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import date, timedelta
from typing import Any

from confluent_kafka import KafkaException

from headrace.errors import ServiceUnavailable
from headrace.kafka import make_admin
from headrace.settings import Settings
from storage.archive import Backend, open_backend, read

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

    def wait_durable(self, placed: Iterable[Placed], days: list[str], timeout_s: float) -> bool:
        """Whether every (partition, offset) is in a published segment within ``timeout_s``."""
        wanted = set(placed)
        deadline = time.monotonic() + timeout_s
        while True:
            wanted -= self._covered(wanted, days)
            if not wanted:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(self.poll_s)

    def _covered(self, wanted: set[Placed], days: list[str]) -> set[Placed]:
        backend = self.backend()
        present = set(backend.days(self.topic))
        segments = [
            s for day in days if day in present for s in backend.read_manifest(self.topic, day)
        ]
        return {
            (p, o)
            for p, o in wanted
            if any(s.partition == p and s.first_offset <= o <= s.last_offset for s in segments)
        }

    def read_back(self, batch_id: str, days: list[str]) -> list[dict[str, Any]]:
        """The archived events of the batch (by its id), from the published segments."""
        return [
            line.event
            for line in read(
                self.backend(),
                topic=self.topic,
                since=min(days),
                until=max(days),
                predicate=lambda event: event.get("batch_id") == batch_id,
            )
        ]


def days_around(today: date) -> list[str]:
    """The archive's day directories a batch dated ``today`` may be in."""
    return [(today + timedelta(days=d)).isoformat() for d in (-1, 0, 1)]
