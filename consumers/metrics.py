"""Per-process metrics and health: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 while the loop has turned within ``stall_after_s``,
503 once it has stalled. ``/readyz`` answers what the ``readiness`` callback
returns (200 and a JSON body while none is set); the callback must answer at
once, from checks made elsewhere (consumers/readiness.py). The server is off
when the port is 0. With ``targets_dir`` set, a serving process is registered
for Prometheus there (headrace/discovery.py) until :meth:`Metrics.close`. The
registry holds the process collectors too (headrace/metrics.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from headrace.discovery import register, target_address, unregister
from headrace.metrics import process_registry


class Metrics:
    def __init__(
        self, group: str, *, stall_after_s: float = 120.0, targets_dir: Path | None = None
    ) -> None:
        self.registry = process_registry()
        self.group = group
        self.stall_after_s = stall_after_s
        self.last_beat = time.monotonic()
        self.targets_dir = targets_dir  # set: serve() registers for Prometheus there
        labels = ["group"]
        self.processed = Counter(
            "headrace_records_processed_total",
            "Records written to the sink",
            ["group", "topic"],
            registry=self.registry,
        )
        self.failed = Counter(
            "headrace_records_failed_total",
            "Records that failed, any reason",
            labels,
            registry=self.registry,
        ).labels(group)
        self.dead_lettered = Counter(
            "headrace_records_dead_lettered_total",
            "Records sent to the dead-letter topic, by source topic and reason",
            ["group", "topic", "reason"],
            registry=self.registry,
        )
        self.retries = Counter(
            "headrace_retries_total",
            "Sink writes retried after a transient failure (the partitions paused)",
            labels,
            registry=self.registry,
        ).labels(group)
        # Its _count is the number of batches.
        self.batch_seconds = Histogram(
            "headrace_batch_seconds", "Time to process one batch", labels, registry=self.registry
        ).labels(group)
        self.lag = Gauge(
            "headrace_consumer_lag",
            "Records behind the end of the partition",
            ["group", "topic", "partition"],
            registry=self.registry,
        )
        self._server: ThreadingHTTPServer | None = None
        self._target: Path | None = None
        # () -> (ready, JSON body) for /readyz; None: ready, nothing checked.
        self.readiness: Callable[[], tuple[bool, bytes]] | None = None

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    @property
    def healthy(self) -> bool:
        return time.monotonic() - self.last_beat < self.stall_after_s

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoints in a daemon thread; return the port bound."""
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path == "/metrics":
                    status, body, kind = 200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST
                elif self.path == "/healthz":
                    ok = metrics.healthy
                    status, body, kind = (
                        (200 if ok else 503),
                        (b"ok" if ok else b"stalled"),
                        "text/plain",
                    )
                elif self.path == "/readyz":
                    ready, body = (
                        metrics.readiness() if metrics.readiness else (True, b'{"ready": true}')
                    )
                    status, kind = (200 if ready else 503), "application/json"
                else:
                    status, body, kind = 404, b"not found", "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        bound = int(self._server.server_address[1])
        if self.targets_dir is not None:
            labels = {"component": "consumer", "group": self.group}
            self._target = register(self.targets_dir, target_address(host, bound), labels)
        return bound

    def close(self) -> None:
        unregister(self._target)
        self._target = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
