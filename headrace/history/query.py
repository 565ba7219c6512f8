"""What ``headrace metrics`` asks of the history: time ranges, export, components and
the per-group summary. Functions of a store, callable without click."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from headrace.history.base import Bucket, HistoryStore, Sample

AGGREGATES = {"1m": 60.0, "1h": 3600.0, "1d": 86_400.0}
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
# group metrics (consumers.runtime) and the process start every group records
PROCESSED, FAILED, LAG, START = "processed", "failed", "lag", "process.start"


def parse_time(text: str, now: Callable[[], float] = time.time) -> float:
    """Seconds since the epoch for an ISO 8601 time (UTC unless it names an offset) or
    a duration back from now (``90s``, ``30m``, ``1h``, ``7d``, ``2w``, ``1h30m``).
    A ValueError names what is accepted."""
    value = text.strip()
    if _DURATION.fullmatch(value):
        return now() - sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(value))
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO time (2026-12-01T10:00, UTC unless an offset is"
            " given) nor a duration back from now (30m, 1h, 7d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def export(
    store: HistoryStore,
    since: float,
    until: float,
    *,
    component: str | None = None,
    aggregate: str | None = None,
) -> list[dict[str, object]]:
    """The samples of ``[since, until)`` as rows, or, with ``aggregate`` (1m, 1h, 1d),
    per component, metric and bucket: count, min, max, avg and sum."""
    if aggregate is None:
        return [_sample_row(s) for s in store.samples(since, until, component)]
    width = AGGREGATES[aggregate]
    return [_bucket_row(b) for b in store.buckets(since, until, component, width)]


SAMPLE_COLUMNS = ("ts", "component", "metric", "value")
BUCKET_COLUMNS = ("bucket", "component", "metric", "count", "min", "max", "avg", "sum")


def _sample_row(sample: Sample) -> dict[str, object]:
    return {
        "ts": iso(sample.ts),
        "component": sample.component,
        "metric": sample.metric,
        "value": sample.value,
    }


def _bucket_row(bucket: Bucket) -> dict[str, object]:
    return {
        "bucket": iso(bucket.start),
        "component": bucket.component,
        "metric": bucket.metric,
        "count": bucket.count,
        "min": bucket.min,
        "max": bucket.max,
        "avg": bucket.avg,
        "sum": bucket.sum,
    }


@dataclass(frozen=True)
class GroupSummary:
    component: str
    processed: int
    throughput: float  # records per second over the range
    errors: int  # records dead-lettered
    lag: float | None  # the last lag recorded in the range
    restarts: int  # process starts after the component's first

    def as_json(self) -> dict[str, object]:
        return {
            "component": self.component,
            "processed": self.processed,
            "throughput_per_s": self.throughput,
            "errors": self.errors,
            "lag_at_end": self.lag,
            "restarts": self.restarts,
        }


def summary(store: HistoryStore, since: float, until: float) -> list[GroupSummary]:
    """Per group (a component that records ``processed`` or process starts) in
    ``[since, until)``: records processed and per second, errors, lag at the end and
    restarts (starts in the range, less the component's very first one if it is in it)."""
    totals: dict[tuple[str, str], Bucket] = {
        (b.component, b.metric): b for b in store.buckets(since, until, None, None)
    }
    first = {c.name: c.first for c in store.components()}
    lags = store.last(LAG, since, until)
    groups = sorted({c for c, m in totals if m in (PROCESSED, START)})
    seconds = max(until - since, 1e-9)
    found = []
    for name in groups:
        processed = _sum(totals, name, PROCESSED)
        starts = int(_count(totals, name, START))
        found.append(
            GroupSummary(
                component=name,
                processed=int(processed),
                throughput=processed / seconds,
                errors=int(_sum(totals, name, FAILED)),
                lag=lags[name].value if name in lags else None,
                restarts=max(starts - (1 if first.get(name, since) >= since else 0), 0),
            )
        )
    return found


def _sum(totals: dict[tuple[str, str], Bucket], component: str, metric: str) -> float:
    found = totals.get((component, metric))
    return found.sum if found is not None else 0.0


def _count(totals: dict[tuple[str, str], Bucket], component: str, metric: str) -> int:
    found = totals.get((component, metric))
    return found.count if found is not None else 0
