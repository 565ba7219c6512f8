"""The clone cache's file locks, and the size it takes on disk.

Each clone has a ``.lock`` file (exclusive: clone, fetch, evict) and a ``.use``
file (shared by every reader while it reads; its mtime is the clone's last use).
A :class:`Lease` holds one of them until released; waits are bounded.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path
from typing import IO

from storage.git import GitUnavailable


class Lease:
    """A flock on one of a clone's lock files, held until :meth:`release`."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle: IO[bytes] | None = handle
        self._mutex = threading.Lock()

    @classmethod
    def take(cls, path: Path, mode: int, timeout: float, url: str) -> Lease:
        handle = flock_within(path, mode, timeout)
        if handle is None:
            raise GitUnavailable(
                f"the clone of {url} stayed locked by another process for {timeout:g}s ({path})"
            )
        if mode == fcntl.LOCK_SH:
            now = time.time_ns()
            os.utime(handle.fileno(), ns=(now, now))  # the clone's last use, for eviction
        return cls(handle)

    def release(self) -> None:
        with self._mutex:
            handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()  # closing the file releases its lock


def flock_within(path: Path, mode: int, timeout: float) -> IO[bytes] | None:
    """``path`` opened and locked (``mode``: LOCK_SH or LOCK_EX) within ``timeout``
    seconds (0: one try), else None. Lock files are never deleted: a deleted one
    would let two holders lock two different files."""
    handle = path.open("a+b")
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle.fileno(), mode | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.close()
                return None
            time.sleep(0.02)


def disk_usage(root: Path) -> int:
    """Bytes of the files under ``root``."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:  # removed by a fetch running meanwhile
                pass
    return total
