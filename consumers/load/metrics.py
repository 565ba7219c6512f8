"""The load group's database metrics, on the group's registry (served on /metrics)::

headrace_db_rows_written_total{group, table}     rows written: files, runs
headrace_db_rows_skipped_total{group}            file rows not newer than stored
headrace_db_transaction_seconds{group, backend}  one batch's write transaction
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from storage.db import WriteResult

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class LoadMetrics:
    def __init__(self, registry: CollectorRegistry, group: str, backend: str) -> None:
        written = Counter(
            "headrace_db_rows_written",
            "Rows written to the load database (inserted, replaced, marked or removed)",
            ["group", "table"],
            registry=registry,
        )
        self.files = written.labels(group, "files")
        self.runs = written.labels(group, "runs")
        self.skipped = Counter(
            "headrace_db_rows_skipped",
            "File rows not written: not newer than the stored version (duplicates too)",
            ["group"],
            registry=registry,
        ).labels(group)
        self.transaction_seconds = Histogram(
            "headrace_db_transaction_seconds",
            "One batch's write transaction: rows and ledger entries",
            ["group", "backend"],
            buckets=_BUCKETS,
            registry=registry,
        ).labels(group, backend)

    def written(self, result: WriteResult, seconds: float) -> None:
        self.files.inc(result.files_written)
        self.runs.inc(result.runs_written)
        self.skipped.inc(result.files_skipped_older)
        self.transaction_seconds.observe(seconds)
