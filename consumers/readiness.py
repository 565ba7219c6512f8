"""A group's readiness for ``/readyz``: its dependencies, checked off the hot path.

A daemon thread runs :func:`headrace.doctor.group_checks` every
``health.ready_interval_s`` and keeps the last result; ``/readyz`` only reads
it, so a slow or dead service never blocks the consumer loop or the HTTP
server. Until the first round ends the group is not ready (``checking``).
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable

import orjson

from headrace.doctor import Check, group_checks
from headrace.settings import Settings

log = logging.getLogger(__name__)


class Readiness:
    def __init__(
        self,
        settings: Settings,
        group: str,
        checks: Callable[[Settings, str], list[Check]] = group_checks,
    ) -> None:
        self.settings = settings
        self.group = group
        self.interval_s = settings.health.ready_interval_s
        self._checks = checks
        self._last: list[Check] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        context = contextvars.copy_context()  # its log lines carry the process's run id
        self._thread = threading.Thread(
            target=context.run, args=(self._loop,), name="headrace-readyz", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            checks = self._checks(self.settings, self.group)
            failed = [c for c in checks if not c.ok]
            if failed and (self._last is None or all(c.ok for c in self._last)):
                log.warning("not ready: %s", "; ".join(f"{c.name}: {c.detail}" for c in failed))
            self._last = checks
            self._stop.wait(self.interval_s)

    def state(self) -> tuple[bool, bytes]:
        """(ready, the JSON body): the last round's result, at once."""
        checks = self._last
        if checks is None:
            body = {"ready": False, "failed": {"readiness": "checking"}}
            return False, orjson.dumps(body)
        failed = {c.name: c.detail for c in checks if not c.ok}
        body = {"ready": not failed, "failed": failed, "checked": [c.name for c in checks]}
        return not failed, orjson.dumps(body)
