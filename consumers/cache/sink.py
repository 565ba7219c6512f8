"""The cache group's sink: fetch the content of object-storage and git-reference events
into the content cache before readers ask for it.

Each batch goes through :meth:`ContentResolver.resolve_many`: git references of one
repository and commit are fetched with one clone-cache call, downloads run several
at a time. A write that returns has everything of the batch in the cache (or
refused), so it is durable at once; positions come from Kafka's committed offsets
(fetching again is harmless: a hit). Content that cannot be had for a terminal
reason (gone, wrong bytes, a hostile reference) is refused by index and
dead-lettered with that reason; an unreachable store is transient and retried.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

from consumers.base import Decoded, Sink, SinkCapabilities, TopicPartition
from consumers.cache.metrics import CacheMetrics
from consumers.errors import RecordsRefused
from headrace.errors import Terminal
from headrace.failpoints import failpoint
from storage.content.base import Resolved
from storage.content.errors import ContentError
from storage.content.resolver import ContentResolver

log = logging.getLogger(__name__)

FETCHED = frozenset({"OBJECT_STORAGE", "GIT_REFERENCE"})
STATS_EVERY_S = 15.0


class CacheSink(Sink):
    capabilities = SinkCapabilities(durable_on_write=True, max_batch=5000, needs_models=False)

    def __init__(
        self,
        resolver: ContentResolver,
        *,
        file_topic: str,
        parallel: int = 4,
        metrics: CacheMetrics | None = None,
    ) -> None:
        if resolver.cache is None:
            raise ValueError("the cache group needs a resolver with a content cache")
        self.resolver, self.file_topic, self.parallel = resolver, file_topic, parallel
        self.metrics = metrics
        self._durable: dict[TopicPartition, int] = {}
        self._observed = -math.inf  # when the cache's figures went into the metrics last
        self.hits = self.fetched = 0

    def write(self, batch: Sequence[Decoded]) -> None:
        wanted: list[int] = []
        for i, d in enumerate(batch):
            if d.record.topic != self.file_topic:
                continue
            fields = d.as_dict()
            if str(fields.get("op") or "UPSERT") != "UPSERT":
                continue
            if str(fields.get("content_strategy")) in FETCHED:
                wanted.append(i)
        events = [batch[i].as_dict() for i in wanted]
        results = self.resolver.resolve_many(events, parallel=self.parallel, keep_bytes=False)
        refused: list[tuple[int, Terminal]] = []
        for i, event, outcome in zip(wanted, events, results, strict=True):
            strategy = str(event.get("content_strategy"))
            if isinstance(outcome, ContentError):
                assert isinstance(outcome, Terminal)  # noqa: S101 - transient ones raise
                refused.append((i, outcome))
                if self.metrics is not None:
                    reason = outcome.dead_letter_reason
                    self.metrics.failures.labels(self.metrics.group, strategy, reason).inc()
                continue
            outcome.discard()  # too large for the cache: nothing to keep warm
            self._count(outcome, strategy)
        self._observe()
        if refused:
            raise RecordsRefused(refused)
        for d in batch:
            tp = (d.record.topic, d.record.partition)
            self._durable[tp] = max(self._durable.get(tp, 0), d.record.offset + 1)
        failpoint("cache.after_write")  # tests: die with the content cached, uncommitted

    def _count(self, resolved: Resolved, strategy: str) -> None:
        hit = resolved.source == "cache"
        if hit:
            self.hits += 1
        else:
            self.fetched += 1
        if self.metrics is not None:
            counter = self.metrics.hits if hit else self.metrics.misses
            counter.labels(self.metrics.group, strategy).inc()

    def _observe(self, *, every_s: float = STATS_EVERY_S) -> None:
        """The cache's size and counters into the metrics: a scan of the index (73 ms
        over 200,000 entries), so at most every ``every_s`` seconds, not every batch."""
        now = time.monotonic()
        if self.metrics is None or self.resolver.cache is None or now - self._observed < every_s:
            return
        self._observed = now
        self.metrics.observe_cache(self.resolver.cache.stats())

    def tick(self) -> None:
        self._observe()

    def durable(self) -> dict[TopicPartition, int]:
        return dict(self._durable)

    def close(self) -> None:
        self._observe(every_s=0)  # the final figures
        self.resolver.close()
