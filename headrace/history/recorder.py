"""The hot path's side of the history: :meth:`Recorder.record` appends a tuple to a
bounded deque (no lock, no I/O); a flusher thread drains it every
``flush_interval_s`` and writes what it took in one transaction.

- Full queue: the oldest sample goes and :attr:`Recorder.dropped` counts it (the
  caller is never slowed); each flush records the drops since the last as
  ``history.dropped``.
- Loss window: flushes run on a fixed schedule, so a sample waits at most
  ``flush_interval_s`` to be taken and is committed once that flush's transaction is;
  a SIGKILL loses at most the samples of the last ``flush_interval_s`` plus one
  flush's duration (measured from its scheduled time, recorded as the maximum per
  process sample in ``history.flush_seconds``). A store that cannot be written
  keeps its samples in memory, within the same bound, until a flush succeeds.
- :meth:`Recorder.close` (clean shutdown) takes a last process sample and flushes
  everything.
- Every ``process_interval_s``: the process's CPU seconds, memory, open files and
  uptime; every hour (and at the first flush): samples older than ``retention_days``
  are deleted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

from headrace.history.base import HistoryStore, Row
from headrace.history.errors import HistoryError
from headrace.history.process import ProcessSampler

log = logging.getLogger(__name__)
RETENTION_EVERY_S = 3600.0


class Recorder:
    def __init__(
        self,
        store: HistoryStore,
        component: str,
        *,
        flush_interval_s: float = 2.0,
        queue_size: int = 100_000,
        retention_days: float = 0.0,
        process_interval_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.component = store, component
        self.flush_interval_s, self.queue_size = flush_interval_s, queue_size
        self.retention_days, self.process_interval_s = retention_days, process_interval_s
        self.dropped = 0  # samples the full queue let go (and pending ones a failing store did)
        self.flushed = 0  # samples written
        self._clock = clock
        self._queue: deque[tuple[float, str, float]] = deque(maxlen=queue_size)
        # record(metric, value): queue one sample, stamped now; never blocks, no I/O. A
        # closure, not a method: its state in cells, no bound method made per call.
        self.record: Callable[[str, float], None] = self._recorder()
        self._flushing = threading.Lock()  # a flush at a time (the flusher's, close's)
        self._pending: list[Row] = []  # taken, not yet written (the store failed)
        self._dropped_recorded = 0
        self._flush_max_s = 0.0
        self._sampler = ProcessSampler()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    # --- the hot path ----------------------------------------------------------------

    def _recorder(self) -> Callable[[str, float], None]:
        queue, size, clock = self._queue, self.queue_size, self._clock
        append = queue.append

        def record(metric: str, value: float) -> None:
            if len(queue) == size:
                self.dropped += 1  # the append below pushes the oldest out
            append((clock(), metric, value))

        return record

    def record_many(self, figures: Mapping[str, float]) -> None:
        for metric, value in figures.items():
            self.record(metric, value)

    # --- the flusher -----------------------------------------------------------------

    def start(self) -> Recorder:
        """Start the flusher thread (a daemon: it never keeps a process alive)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"history-{self.component}", daemon=True
            )
            self._thread.start()
        return self

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the flusher after a last process sample and a last flush of everything."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("the history's last flush to %s did not end in time", self.store.where)
            return
        self._final()  # never started: flush here

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _run(self) -> None:
        now = time.monotonic()
        due, process_due, retention_due = now + self.flush_interval_s, now, now
        try:
            while not self._stop.wait(max(due - time.monotonic(), 0.0)):
                now = time.monotonic()
                try:
                    if now >= process_due:
                        self.sample_process()
                        process_due = now + self.process_interval_s
                    self.flush(scheduled=due)
                    if now >= retention_due:
                        self.retain()
                        retention_due = now + RETENTION_EVERY_S
                except Exception:  # a bug must not end the flushing (nor the process)
                    log.warning("operational history flush failed", exc_info=True)
                # a fixed schedule: a sample waits at most one interval to be taken
                due = max(due + self.flush_interval_s, time.monotonic())
        finally:
            self._final()

    def _final(self) -> None:
        try:
            self.sample_process()
            self.flush()
        finally:
            self.store.close()

    def sample_process(self) -> None:
        """Queue the process's figures, and the longest flush since the last call."""
        self.record_many(self._sampler.sample())
        if self._flush_max_s:
            self.record("history.flush_seconds", self._flush_max_s)
            self._flush_max_s = 0.0

    def flush(self, scheduled: float | None = None) -> int:
        """Write what the queue holds in one transaction; how many samples were written.
        A failure is logged, and the samples are kept for the next flush."""
        with self._flushing:
            return self._flush(scheduled)

    def _flush(self, scheduled: float | None) -> int:
        started = time.monotonic() if scheduled is None else scheduled
        queue, component, rows = self._queue, self.component, self._pending
        for _ in range(len(queue)):  # only what is there now: the hot path goes on appending
            ts, metric, value = queue.popleft()
            rows.append((ts, component, metric, value))
        if self.dropped > self._dropped_recorded:  # past the queue: it may be full
            dropped = float(self.dropped - self._dropped_recorded)
            rows.append((self._clock(), component, "history.dropped", dropped))
            self._dropped_recorded = self.dropped
        if not rows:
            return 0
        try:
            self.store.write(rows)
        except HistoryError as exc:
            if not self._failing:
                log.warning("operational history not written, kept in memory: %s", exc)
                self._failing = True
            excess = len(rows) - self.queue_size
            if excess > 0:  # bounded like the queue: the oldest go, counted
                del rows[:excess]
                self.dropped += excess
            return 0
        if self._failing:
            log.info("operational history written again to %s", self.store.where)
            self._failing = False
        written = len(rows)
        self._pending = []
        self.flushed += written
        self._flush_max_s = max(self._flush_max_s, time.monotonic() - started)
        return written

    def retain(self) -> None:
        if self.retention_days <= 0:
            return
        try:
            gone = self.store.delete_before(self._clock() - self.retention_days * 86_400)
        except HistoryError as exc:
            log.warning("operational history retention skipped: %s", exc)
            return
        if gone:
            log.info(
                "operational history: %d samples older than %s days deleted",
                gone,
                self.retention_days,
            )
