"""The cache group's Prometheus metrics, on the runtime's registry."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from storage.content.cache import CacheStats

_FETCH_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300)


class _Evictions(Collector):
    """``headrace_cache_evictions_total``: a counter kept by the cache itself (its stats,
    shared by every process), so exported as read rather than incremented here."""

    def __init__(self, group: str) -> None:
        self.group = group
        self.value = 0.0

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "headrace_cache_evictions",
            "Entries evicted since the cache was made (all processes)",
            labels=["group"],
        )
        family.add_metric([self.group], self.value)
        yield family


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry, group: str) -> None:
        self.group = group
        labels = ["group", "strategy"]
        self.hits = Counter(
            "headrace_cache_hits", "Content found in the cache", labels, registry=registry
        )
        self.misses = Counter(
            "headrace_cache_misses", "Content fetched into the cache", labels, registry=registry
        )
        self.failures = Counter(
            "headrace_cache_failures",
            "Content that could not be resolved (dead-lettered)",
            [*labels, "reason"],
            registry=registry,
        )
        self.fetched_bytes = Counter(
            "headrace_cache_fetched_bytes", "Bytes fetched", labels, registry=registry
        )
        self.fetch_seconds = Histogram(
            "headrace_cache_fetch_seconds",
            "Time to fetch one file's content (git: a batch's time shared by its files)",
            labels,
            buckets=_FETCH_BUCKETS,
            registry=registry,
        )
        self.hit_ratio = Gauge(
            "headrace_cache_hit_ratio",
            "Hits over lookups since the cache was made (all processes)",
            ["group"],
            registry=registry,
        )
        self.size = Gauge(
            "headrace_cache_size_bytes", "Bytes in the content cache", ["group"], registry=registry
        )
        self.entries = Gauge(
            "headrace_cache_entries", "Entries in the content cache", ["group"], registry=registry
        )
        self.evictions = _Evictions(group)
        registry.register(self.evictions)
        self.git_reads = Counter(
            "headrace_git_cache_reads",
            "Reads of the git clone cache: hit (every object on disk) or fill (clone/fetch)",
            ["group", "outcome"],
            registry=registry,
        )
        self.git_seconds = Histogram(
            "headrace_git_cache_seconds",
            "A clone cache fill (clone or fetch, under its lock), or a new clone alone",
            ["group", "action"],
            buckets=_FETCH_BUCKETS,
            registry=registry,
        )
        self.git_evictions = Counter(
            "headrace_git_cache_evictions",
            "Whole clones removed to keep the clone cache within git.cache_max_size",
            ["group"],
            registry=registry,
        )
        self.git_size = Gauge(
            "headrace_git_cache_size_bytes",
            "Bytes the git clone cache takes on disk (after its last fill or eviction)",
            ["group"],
            registry=registry,
        )
        for outcome in ("hit", "fill"):
            self.git_reads.labels(group, outcome)
        self.git_evictions.labels(group)

    def observe_git(self, what: str, value: float) -> None:
        """The clone cache's events (``storage.git_cache.GitCache.on_event``)."""
        if what in ("hit", "fill"):
            self.git_reads.labels(self.group, what).inc()
        if what in ("fill", "clone"):
            self.git_seconds.labels(self.group, what).observe(value)
        elif what == "evicted":
            self.git_evictions.labels(self.group).inc(value)
        elif what == "size":
            self.git_size.labels(self.group).set(value)

    def observe_fetch(self, strategy: str, seconds: float, nbytes: int) -> None:
        self.fetch_seconds.labels(self.group, strategy).observe(seconds)
        self.fetched_bytes.labels(self.group, strategy).inc(nbytes)

    def observe_cache(self, stats: CacheStats) -> None:
        self.size.labels(self.group).set(stats.total.bytes)
        self.entries.labels(self.group).set(stats.total.entries)
        self.evictions.value = stats.total.evictions
        rate = stats.total.hit_rate
        self.hit_ratio.labels(self.group).set(rate if rate is not None else 0.0)
