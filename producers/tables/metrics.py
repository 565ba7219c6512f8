"""archive-table's Prometheus metrics, served on ``--metrics-port`` while a run lasts.

Labelled by source and table (``schema.table``)::

    headrace_table_rows_archived_total          rows archived, verified and deleted
    headrace_table_rows_deleted_total           rows deleted (committed batches only)
    headrace_table_bytes_published_total        bytes of RowEvents published
    headrace_table_batches_total{outcome}       committed, or rolled_back
    headrace_table_verification_failures_total{reason}
                                                count, checksum, timeout (the archive
                                                did not hold a batch in time)
    headrace_table_batch_seconds                a batch, from SELECT to COMMIT

plus the process collectors (headrace/metrics.py). With ``targets_dir`` set, a
serving run is registered for Prometheus there (headrace/discovery.py) until
:meth:`TableMetrics.close`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import Counter, Histogram, start_http_server

from headrace.discovery import register, target_address, unregister
from headrace.metrics import process_registry

BATCH_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0)


class TableMetrics:
    """The counters of one run, on a registry of their own (no I/O until :meth:`serve`)."""

    def __init__(self, source: str, table: str, *, targets_dir: Path | None = None) -> None:
        self.registry = process_registry()
        self.targets_dir = targets_dir
        labels = ["source", "table"]
        values = (source, table)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=self.registry)

        self.rows_archived = counter(
            "headrace_table_rows_archived", "Rows archived, verified and deleted"
        ).labels(*values)
        self.rows_deleted = counter(
            "headrace_table_rows_deleted", "Rows deleted from the table (committed)"
        ).labels(*values)
        self.bytes_published = counter(
            "headrace_table_bytes_published", "Bytes of row events published"
        ).labels(*values)
        self._batches = Counter(
            "headrace_table_batches",
            "Batches by outcome: committed or rolled_back",
            [*labels, "outcome"],
            registry=self.registry,
        )
        self._failures = Counter(
            "headrace_table_verification_failures",
            "Batches that failed verification: count, checksum or timeout",
            [*labels, "reason"],
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "headrace_table_batch_seconds",
            "One batch, from SELECT to COMMIT",
            labels,
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        ).labels(*values)
        self._values = values
        self._server: Any = None
        self._target: Path | None = None
        for outcome in ("committed", "rolled_back"):
            self._batches.labels(*values, outcome)
        for reason in ("count", "checksum", "timeout"):
            self._failures.labels(*values, reason)

    def batch(self, outcome: str) -> None:
        self._batches.labels(*self._values, outcome).inc()

    def verification_failed(self, reason: str) -> None:
        self._failures.labels(*self._values, reason).inc()

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` in a daemon thread; the port bound (0: any free one)."""
        self._server, _thread = start_http_server(port, host, registry=self.registry)
        bound = int(self._server.server_address[1])
        if self.targets_dir is not None:
            source, table = self._values
            labels = {"component": "archive-table", "source": source, "table": table}
            self._target = register(self.targets_dir, target_address(host, bound), labels)
        return bound

    def close(self) -> None:
        unregister(self._target)
        self._target = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
