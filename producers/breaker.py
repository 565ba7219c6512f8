"""A circuit breaker for the object store during one ingest run.

``closed``: uploads go ahead. After ``threshold`` consecutive failures (each one
an upload whose retries were spent) it ``opens``: uploads are not tried, and
the files that need one are skipped as ``OBJECT_STORE_UNAVAILABLE``. After
``cooldown_s`` it is ``half_open``: one upload is tried; success closes it,
failure opens it again. Every change of state is logged and counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from enum import StrEnum

log = logging.getLogger(__name__)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        *,
        threshold: int = 3,
        cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1:
            raise ValueError(f"threshold must be at least 1: {threshold}")
        self.threshold, self.cooldown_s, self._clock = threshold, cooldown_s, clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._lock = threading.Lock()
        self.opened = 0  # how many times it opened
        self.reason: str | None = None  # the last failure that opened it

    @property
    def state(self) -> BreakerState:
        with self._lock:
            if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= (
                self.cooldown_s
            ):
                self._move(BreakerState.HALF_OPEN)
            return self._state

    def allow(self) -> bool:
        """Whether an upload may be tried now."""
        return self.state is not BreakerState.OPEN

    def success(self) -> None:
        with self._lock:
            self._failures = 0
            if self._state is not BreakerState.CLOSED:
                self._move(BreakerState.CLOSED)

    def failure(self, reason: str) -> None:
        with self._lock:
            self._failures += 1
            if self._state is BreakerState.HALF_OPEN or self._failures >= self.threshold:
                self.reason = reason
                self._open()

    def trip(self, reason: str) -> None:
        """Open at once (the store did not answer at the start of the run)."""
        with self._lock:
            self.reason = reason
            self._open()

    def _open(self) -> None:
        self._opened_at = self._clock()
        if self._state is not BreakerState.OPEN:
            self.opened += 1
            self._move(BreakerState.OPEN)

    def _move(self, state: BreakerState) -> None:
        log.warning(
            "object store breaker %s -> %s%s",
            self._state.value,
            state.value,
            f" ({self.reason})" if state is BreakerState.OPEN and self.reason else "",
        )
        self._state = state
