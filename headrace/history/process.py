"""The process's own figures: CPU seconds, resident memory, open files, uptime.

Read from ``/proc`` where there is one (Linux), else from ``resource`` (peak memory,
not current) and the time the sampler was made."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

_PROC = Path("/proc/self")


class ProcessSampler:
    def __init__(self) -> None:
        self._started = _process_start() or time.time()

    def sample(self) -> dict[str, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        figures = {
            "process.cpu_seconds": usage.ru_utime + usage.ru_stime,
            "process.rss_bytes": float(_rss() or usage.ru_maxrss * 1024),
            "process.uptime_seconds": max(time.time() - self._started, 0.0),
        }
        fds = _open_files()
        if fds is not None:
            figures["process.open_fds"] = float(fds)
        return figures


def _rss() -> int | None:
    try:
        pages = int((_PROC / "statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def _open_files() -> int | None:
    try:
        return len(os.listdir(_PROC / "fd"))
    except OSError:
        return None


def _process_start() -> float | None:
    """When this process started (seconds since the epoch), from /proc; None elsewhere."""
    try:
        stat = (_PROC / "stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, IndexError, ValueError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")
