"""A process's start while a service it needs restarts: asked again, for a bound.

A group started while its broker (or the load group's database) restarts would
otherwise exit on its first refused connection, and its service manager would
start it again to the same end; a Kafka Connect JDBC sink likewise tries its
connection ``connection.attempts`` times before its task fails.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_before_delay, wait_fixed

from headrace.errors import is_transient

log = logging.getLogger(__name__)
_T = TypeVar("_T")


def when_up(what: str, start: Callable[[], _T], wait_s: float) -> _T:
    """``start()``, asked again while it fails transiently (the service restarting) for
    up to ``wait_s`` seconds, each failure logged; then its last error."""
    began = time.monotonic()

    def told(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "%s is not available yet (%s): asking again for up to %.0f s",
            what,
            error,
            max(0.0, wait_s - (time.monotonic() - began)),
        )

    for attempt in Retrying(
        retry=retry_if_exception(is_transient),
        stop=stop_before_delay(wait_s),
        wait=wait_fixed(1.0),
        before_sleep=told,
        reraise=True,
    ):
        with attempt:
            return start()
    raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover
