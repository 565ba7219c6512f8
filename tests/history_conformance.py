"""One set of samples and what every history store must answer for it (SQLite in
tests/unit, SQLite and PostgreSQL side by side in tests/integration)."""

from __future__ import annotations

from headrace.history.base import HistoryStore
from headrace.history.query import export, summary

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a day's (and so an hour's) first second

# (ts, component, metric, value): values and sums exact in binary floating point
ROWS = [
    (T0 + 1.0, "headrace.archive", "process.start", 1.0),
    (T0 + 5.0, "headrace.archive", "processed", 100.0),
    (T0 + 30.0, "headrace.archive", "processed", 50.0),
    (T0 + 59.5, "headrace.archive", "lag", 40.0),
    (T0 + 61.0, "headrace.archive", "processed", 25.0),
    (T0 + 62.0, "headrace.archive", "failed", 2.0),
    (T0 + 90.0, "headrace.archive", "batch_seconds", 0.25),
    (T0 + 95.0, "headrace.archive", "batch_seconds", 0.75),
    (T0 + 119.0, "headrace.archive", "lag", 10.0),
    (T0 + 130.0, "headrace.archive", "process.start", 1.0),  # a restart
    (T0 + 3700.0, "headrace.archive", "processed", 8.0),  # the next hour
    (T0 + 10.0, "ingest", "files", 12.0),
    (T0 + 10.0, "ingest", "bytes", 4096.0),
]


def seed(store: HistoryStore) -> None:
    store.write(ROWS[:5])
    store.write(ROWS[5:])


def check(store: HistoryStore) -> None:
    """Every query over the seeded samples gives the answers worked out by hand."""
    # raw samples of a range: since included, until excluded, by time
    raw = export(store, T0 + 5.0, T0 + 61.0, component="headrace.archive")
    assert [(r["ts"], r["metric"], r["value"]) for r in raw] == [
        ("2026-01-01T00:00:05.000+00:00", "processed", 100.0),
        ("2026-01-01T00:00:30.000+00:00", "processed", 50.0),
        ("2026-01-01T00:00:59.500+00:00", "lag", 40.0),
    ]
    # minute buckets of the first two minutes (the next hour's sample is outside)
    minutes = export(store, T0, T0 + 120.0, component="headrace.archive", aggregate="1m")
    got = {
        (r["metric"], r["bucket"]): (r["count"], r["min"], r["max"], r["avg"], r["sum"])
        for r in minutes
    }
    assert got == {
        ("batch_seconds", "2026-01-01T00:01:00.000+00:00"): (2, 0.25, 0.75, 0.5, 1.0),
        ("failed", "2026-01-01T00:01:00.000+00:00"): (1, 2.0, 2.0, 2.0, 2.0),
        ("lag", "2026-01-01T00:00:00.000+00:00"): (1, 40.0, 40.0, 40.0, 40.0),
        ("lag", "2026-01-01T00:01:00.000+00:00"): (1, 10.0, 10.0, 10.0, 10.0),
        ("process.start", "2026-01-01T00:00:00.000+00:00"): (1, 1.0, 1.0, 1.0, 1.0),
        ("processed", "2026-01-01T00:00:00.000+00:00"): (2, 50.0, 100.0, 75.0, 150.0),
        ("processed", "2026-01-01T00:01:00.000+00:00"): (1, 25.0, 25.0, 25.0, 25.0),
    }
    # rows come ordered by component, metric, bucket
    assert [(r["metric"], r["bucket"]) for r in minutes] == sorted(got)
    # hour buckets of everything: two hours of processed
    hours = export(store, T0, T0 + 7200.0, aggregate="1h")
    processed = [(r["bucket"], r["sum"]) for r in hours if r["metric"] == "processed"]
    assert processed == [
        ("2026-01-01T00:00:00.000+00:00", 175.0),
        ("2026-01-01T01:00:00.000+00:00", 8.0),
    ]
    days = export(store, T0, T0 + 86_400.0, component="ingest", aggregate="1d")
    assert [(r["metric"], r["sum"]) for r in days] == [("bytes", 4096.0), ("files", 12.0)]
    # components, with their first and last samples
    assert [(c.name, c.first, c.last, c.samples) for c in store.components()] == [
        ("headrace.archive", T0 + 1.0, T0 + 3700.0, 11),
        ("ingest", T0 + 10.0, T0 + 10.0, 2),
    ]
    # the summary: the whole range, then one after the first start (a restart in it)
    whole = [g.as_json() for g in summary(store, T0, T0 + 200.0)]
    assert whole == [
        {
            "component": "headrace.archive",
            "processed": 175,
            "throughput_per_s": 175 / 200.0,
            "errors": 2,
            "lag_at_end": 10.0,
            "restarts": 1,
        }
    ]
    later = summary(store, T0 + 100.0, T0 + 4000.0)
    assert [(g.processed, g.restarts, g.lag) for g in later] == [(8, 1, 10.0)]
    assert [g.lag for g in summary(store, T0 + 120.0, T0 + 4000.0)] == [None]
    # retention: what is older goes, the rest stays
    assert store.delete_before(T0 + 3600.0) == 12
    assert [s.value for s in store.samples(T0, T0 + 7200.0, None)] == [8.0]
