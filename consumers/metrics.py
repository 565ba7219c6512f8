"""Per-process metrics and health: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 while the loop has turned within ``stall_after_s``,
503 once it has stalled. ``/readyz`` answers what the ``readiness`` callback
returns (200 and a JSON body while none is set); the callback must answer at
once, from checks made elsewhere (consumers/readiness.py). The server is off
when the port is 0.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)


class Metrics:
    def __init__(self, group: str, *, stall_after_s: float = 120.0) -> None:
        self.registry = CollectorRegistry()
        self.group = group
        self.stall_after_s = stall_after_s
        self.last_beat = time.monotonic()
        labels = ["group"]
        self.processed = Counter(
            "headrace_records_processed",
            "Records written to the sink",
            labels,
            registry=self.registry,
        ).labels(group)
        self.failed = Counter(
            "headrace_records_failed",
            "Records that failed, any reason",
            labels,
            registry=self.registry,
        ).labels(group)
        self.dead_lettered = Counter(
            "headrace_records_dead_lettered",
            "Records sent to the dead-letter topic",
            labels,
            registry=self.registry,
        ).labels(group)
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
        return int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
