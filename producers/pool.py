"""Inline files prepared by worker processes, their results taken in the walk's order.

The run hands :class:`Prepared` the files it sends inline, in order, and takes their
results back in that same order, so that the events, their ids and the run's digest
are those of a run with one worker. Files go out in chunks (one task is many small
files: a task costs more to send than a tiny file costs to prepare), and no more than
a bound of files and of bytes is in flight at once: a tree of large inline files is
not read into memory all at once.

Processes, not threads: preparing a small file is Python code holding the GIL
(pydantic, fastavro, the encoding check), so threads only add their switching to it
(docs/performance.md has the figures). A run prepares its first START_AFTER inline files itself
and starts the workers only if there are more; with ``workers`` 1 it prepares every
file itself.
Workers are forked: they run nothing but :func:`producers.prepare.prepare_many` on
their inherited modules, never the parent's Kafka client or its threads.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from headrace.errors import HeadraceError
from producers.policy import Skip
from producers.prepare import Context, EncodedFile, Task, prepare_inline, prepare_many

CHUNK_FILES = 64  # files a task, at most
CHUNK_BYTES = 4 * 1024 * 1024  # ... and about this many bytes of them
IN_FLIGHT_CHUNKS = 4  # tasks queued or running per worker
IN_FLIGHT_BYTES = 64 * 1024 * 1024  # bytes of files in flight, at most (plus one file)
# Files the run prepares itself before it starts the workers: a run with fewer inline
# files never starts them. Starting two costs more than they save below about 2,000
# tiny files on 2 cores (docs/performance.md).
START_AFTER = 1024

Result = EncodedFile | Skip


def cores() -> int:
    """The cores this process may run on (the default number of workers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def idle_core() -> bool:
    """Whether the machine has a core to spare: the 1-minute load average (this process
    counted) below the cores less a half. On a busy machine workers only add the CPU
    of sending them the files (docs/performance.md)."""
    return os.getloadavg()[0] < cores() - 0.5


class WorkerFailed(HeadraceError):
    """A worker process died (killed, out of memory): the run stops."""


@dataclass
class _Chunk:
    tasks: list[Task]
    size: int
    future: Future[list[Result]] | None = None  # None: prepared here, when it is taken
    results: list[Result] | None = None


class Prepared:
    """Files to prepare, in order: :meth:`put` each one, :meth:`take` their results
    back in the same order (a file is taken after it was put, never before)."""

    def __init__(self, ctx: Context, workers: int, when_idle: bool = False) -> None:
        self._ctx = ctx
        self._workers = workers
        self._when_idle = when_idle  # start them only if a core is idle (the default)
        self._allowed: bool | None = None  # decided when the START_AFTER-th file comes
        self._pool: ProcessPoolExecutor | None = None
        self._chunks: deque[_Chunk] = deque()
        self._open = _Chunk([], 0)
        self._taken = 0  # results taken from the head chunk
        self._in_flight = 0  # bytes of the chunks submitted and not taken
        self._put = 0  # files put so far
        self.used_pool = False

    def __enter__(self) -> Prepared:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    @property
    def pooled(self) -> bool:
        """Whether files go to the workers (from the START_AFTER-th file on; with
        ``when_idle``, only if the load average then leaves a core idle)."""
        if self._workers <= 1 or self._put <= START_AFTER:
            return False
        if self._allowed is None:
            self._allowed = not self._when_idle or idle_core()
        return self._allowed

    def put(self, task: Task) -> None:
        """Queue one file; full chunks go to the workers while the bounds allow."""
        self._put += 1
        chunk = self._open
        chunk.tasks.append(task)
        chunk.size += task[3]
        if len(chunk.tasks) >= CHUNK_FILES or chunk.size >= CHUNK_BYTES:
            self._seal()

    def flush(self) -> None:
        """The walk is over: the last files go to the workers too."""
        self._seal()

    def ready(self) -> bool:
        """Whether the next result may be taken without holding back the workers: the
        run takes results while this is true, and walks on while it is not."""
        if not self.pooled:
            return True
        limit = IN_FLIGHT_CHUNKS * self._workers
        return len(self._chunks) >= limit or self._in_flight >= IN_FLIGHT_BYTES

    def take(self) -> Result:
        """The oldest file's result (waiting for its worker if it is not ready)."""
        if not self._chunks:
            self._seal()
        head = self._chunks[0]
        if head.results is None:
            head.results = self._results(head)
        result = head.results[self._taken]
        self._taken += 1
        if self._taken == len(head.results):
            self._chunks.popleft()
            self._taken = 0
            if head.future is not None:
                self._in_flight -= head.size
        return result

    def _seal(self) -> None:
        chunk, self._open = self._open, _Chunk([], 0)
        if not chunk.tasks:
            return
        if self.pooled:
            chunk.future = self._submit(prepare_many, chunk.tasks, self._ctx)
            self._in_flight += chunk.size
        self._chunks.append(chunk)

    def _submit(self, fn: Callable[..., list[Result]], *args: Any) -> Future[list[Result]]:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self._workers, mp_context=multiprocessing.get_context("fork")
            )
            self.used_pool = True
        try:
            return self._pool.submit(fn, *args)
        except BrokenProcessPool as exc:  # a worker died before this chunk went out
            raise WorkerFailed(f"an ingest worker process died: {exc}") from None

    def _results(self, chunk: _Chunk) -> list[Result]:
        if chunk.future is None:  # a run's last few files, or one worker: prepared here
            return [prepare_inline(task, self._ctx) for task in chunk.tasks]
        try:
            return chunk.future.result()
        except BrokenProcessPool as exc:
            raise WorkerFailed(f"an ingest worker process died: {exc}") from None
