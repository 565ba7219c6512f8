"""Child processes that must not outlive the process that started them."""

from __future__ import annotations

import signal
import sys
from pathlib import Path


def die_with_parent() -> None:
    """In the child, before exec (``preexec_fn``): SIGKILL when the parent ends (Linux's
    PR_SET_PDEATHSIG; elsewhere nothing), so a parent that is itself killed leaves no
    consumer group running behind it."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes  # noqa: PLC0415 - Linux only

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def headrace_command(config: Path | None = None, **options: str | None) -> list[str]:
    """``headrace`` in a child with this process's interpreter: ``--config`` and the
    other global options given (``log_level="INFO"`` is ``--log-level INFO``)."""
    command = [sys.executable, "-m", "headrace"]
    if config is not None:
        command += ["--config", str(config)]
    for name, value in options.items():
        if value:
            command += [f"--{name.replace('_', '-')}", value]
    return command
