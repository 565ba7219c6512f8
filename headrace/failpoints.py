"""Failpoints: named places where a test can make the process die on purpose.

``HEADRACE_FAILPOINTS="load.after_write=3"`` makes the third pass through
``failpoint("load.after_write")`` kill the process with SIGKILL, exactly there:
the only way to show that a crash between two steps (rows written, offsets not
yet committed) loses and repeats nothing. Unset, a failpoint is one dict lookup.
"""

from __future__ import annotations

import os
import signal

_ARMED: dict[str, int] = {}
_PASSES: dict[str, int] = {}


def _parse(spec: str) -> dict[str, int]:
    armed = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, count = item.partition("=")
        armed[name.strip()] = int(count) if count.strip() else 1
    return armed


_ARMED.update(_parse(os.environ.get("HEADRACE_FAILPOINTS", "")))


def failpoint(name: str) -> None:
    """Die here (SIGKILL) on the armed pass; otherwise nothing."""
    if name not in _ARMED:
        return
    _PASSES[name] = _PASSES.get(name, 0) + 1
    if _PASSES[name] == _ARMED[name]:
        os.kill(os.getpid(), signal.SIGKILL)
