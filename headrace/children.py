"""Child processes that must not outlive the process that started them."""

from __future__ import annotations

import signal
import sys


def die_with_parent() -> None:
    """In the child, before exec (``preexec_fn``): SIGKILL when the parent ends (Linux's
    PR_SET_PDEATHSIG; elsewhere nothing), so a parent that is itself killed leaves no
    consumer group running behind it."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes  # noqa: PLC0415 - Linux only

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
