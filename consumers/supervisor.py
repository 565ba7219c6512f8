"""``headrace consume GROUP --processes N``: one consumer group as N worker processes.

Kafka splits a group's partitions between its members; a Python process is one core's
worth of work, so a group on a machine of several cores runs several processes. The
supervisor starts N workers, each an ordinary ``headrace consume GROUP`` with the same
settings (its environment and ``--config``): each joins the group with its own instance
slot (so its own ``group.instance.id``), keeps its positions in the sink per partition
and commits what is durable, exactly as a single process does. The group's assignor
(``consumer.assignment_strategy``, roundrobin by default) spreads each topic's
partitions over the workers; a worker started again takes its predecessor's slot, so
its static membership and its partitions, without a rebalance.

- **Signals.** SIGTERM or SIGINT to the supervisor is forwarded to every worker; each
  commits what is durable and leaves the group. One still running after
  ``consumer.stop_timeout_s`` is killed (and said so).
- **Restarts.** A worker that dies is started again after a backoff (tenacity's
  exponential backoff with jitter, 1 s doubling to 30 s). One that dies
  ``consumer.restart_max`` times within ``consumer.restart_window_s`` makes the
  supervisor give up: it stops the others and ends with one line naming the worker and
  its last error.
- **Until caught up.** With ``--until-caught-up`` each worker reports, after every
  batch, whether it has read its partitions to their ends and which it holds
  (:mod:`consumers.progress`); once all have and together they hold every partition
  with records, the supervisor stops them, and each commits as it stops.
- **Joining together.** Each worker waits to subscribe until all are ready, so they
  join in one generation and each topic is spread over all of them (see
  :mod:`consumers.progress` for why).
- **Exit.** 0 when every worker's last exit was clean; 1 otherwise, or when it gave up.

Each worker's output goes to the supervisor's stderr unchanged (its log records carry
its own run id, ``RUN-wI``); each serves its metrics on ``--metrics-port`` + I and
registers that address with Prometheus' file-based discovery like any group process.
"""

from __future__ import annotations

import contextvars
import logging
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, Protocol

from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential_jitter

from headrace.children import die_with_parent
from headrace.errors import ConsumeError

log = logging.getLogger(__name__)

Command = Callable[[int], Sequence[str]]  # worker index -> argv


class Barrier(Protocol):
    """Holds the workers back until all can subscribe together, then until the group
    is whole (consumers.progress.JoinBarrier)."""

    def all_ready(self) -> bool: ...

    def release(self) -> None: ...

    def settled(self) -> bool: ...

    def declare_whole(self) -> None: ...


@dataclass(frozen=True)
class RestartPolicy:
    """When a dead worker is started again, and when the supervisor gives up."""

    initial_s: float = 1.0
    max_s: float = 30.0
    max_deaths: int = 5  # within window_s: give up
    window_s: float = 300.0


class WorkerDied(Exception):  # noqa: N818 - what tenacity retries on
    def __init__(self, index: int, code: int, last_line: str) -> None:
        self.index, self.code, self.last_line = index, code, last_line
        said = f": {last_line}" if last_line else ""
        super().__init__(f"worker {index} {describe_exit(code)}{said}")


class GaveUp(ConsumeError):
    """A worker kept dying: the group was stopped."""


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited {code}"


@dataclass
class Worker:
    """One worker slot: its process now, and the deaths it had."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    deaths: deque[float] = field(default_factory=deque)  # monotonic times
    starts: int = 0
    last_line: str = ""  # its error line ("headrace: error: ..."), if it printed one
    last_code: int | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    """N workers of one group; :meth:`run` starts them and returns the exit code.
    The constructor starts nothing."""

    def __init__(
        self,
        name: str,
        processes: int,
        command: Command,
        *,
        policy: RestartPolicy | None = None,
        stop_timeout_s: float = 60.0,
        caught_up: Callable[[], bool] | None = None,
        output: IO[str] | None = None,
        barrier: Barrier | None = None,
        join_timeout_s: float = 60.0,
    ) -> None:
        if processes < 1:
            raise ValueError("processes must be at least 1")
        self.name, self.command = name, command
        self.policy = policy or RestartPolicy()
        self.stop_timeout_s = stop_timeout_s
        self.caught_up = caught_up
        self.output = output if output is not None else sys.stderr
        self.barrier, self.join_timeout_s = barrier, join_timeout_s
        self.workers = [Worker(i) for i in range(processes)]
        self.gave_up: WorkerDied | None = None
        self.reached_end = False
        self._stopping = threading.Event()
        self._signal: int | None = None
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()

    # --- the run ------------------------------------------------------------------

    def run(self) -> int:
        """Start the workers, keep them running until a signal, the end (with
        ``caught_up``) or giving up; stop them all; 0 if each ended cleanly."""
        previous = {
            sig: signal.signal(sig, self._signalled) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        threads = [  # each with this thread's context: its log records carry the run id
            threading.Thread(
                target=contextvars.copy_context().run,
                args=(self._keep, w),
                name=f"worker-{w.index}",
                daemon=True,
            )
            for w in self.workers
        ]
        try:
            log.info("%s: starting %d worker processes", self.name, len(self.workers))
            for thread in threads:
                thread.start()
            began = time.monotonic()
            released = settled = self.barrier is None
            while not self._stopping.is_set():
                # Polled, not waited on: the signal handler only sets a flag (an
                # Event.set() there can deadlock on the lock this thread's wait holds).
                time.sleep(0.1)
                if self._signal is not None:
                    name = signal.Signals(self._signal).name
                    log.info("%s: %s: stopping every worker", self.name, name)
                    self.stop()
                    break
                if not settled and self.barrier is not None:
                    waited = time.monotonic() - began
                    if not released and (self.barrier.all_ready() or waited > self.join_timeout_s):
                        self.barrier.release()  # all subscribe now, within milliseconds
                        released = True
                    if released:
                        settled = self._settled(self.barrier, waited)
                if self.caught_up is not None and self.caught_up():
                    log.info("%s: every worker read its partitions to the end", self.name)
                    self.reached_end = True
                    self.stop()
        finally:
            self.stop()
            self.wait_stopped()
            for thread in threads:
                thread.join(10)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.exit_code()

    def _settled(self, barrier: Barrier, waited_s: float) -> bool:
        """Whether the workers, subscribed, may read: once the group is whole, or past
        ``join_timeout_s`` anyway (a worker that cannot start holds none of the others)."""
        if barrier.settled():
            return True
        if waited_s <= self.join_timeout_s:
            return False
        log.warning(
            "%s: the group was not whole within %g s: the workers read anyway",
            self.name,
            self.join_timeout_s,
        )
        barrier.declare_whole()
        return True

    def exit_code(self) -> int:
        if self.gave_up is not None:
            return 1
        return 0 if all(w.last_code in (0, None) for w in self.workers) else 1

    def stop(self) -> None:
        """Forward SIGTERM to every live worker; start none again."""
        if self._stopping.is_set() and not any(w.alive for w in self.workers):
            return
        self._stopping.set()
        with self._lock:
            for worker in self.workers:
                if worker.alive and worker.proc is not None:
                    worker.proc.send_signal(signal.SIGTERM)

    def _signalled(self, signum: int, _frame: FrameType | None) -> None:
        self._signal = signum  # run() stops the workers: no lock may be taken here

    # --- one worker slot ------------------------------------------------------------

    def _keep(self, worker: Worker) -> None:
        """Run the worker until the supervisor stops; start it again when it dies."""
        policy = self.policy
        try:
            for attempt in Retrying(
                retry=retry_if_exception_type(WorkerDied),
                wait=wait_exponential_jitter(
                    multiplier=policy.initial_s, max=policy.max_s, jitter=policy.initial_s / 2
                ),
                stop=lambda _state: self._too_many(worker) or self._stopping.is_set(),
                sleep=self._pause,
                before_sleep=lambda state: self._restarting(worker, state),
                reraise=True,
            ):
                with attempt:
                    if self._stopping.is_set():
                        return
                    self._run_once(worker)
        except WorkerDied as died:
            if self._stopping.is_set() and not self._too_many(worker):
                return  # it died while the group was stopping: its exit code tells
            with self._lock:
                if self.gave_up is None:
                    self.gave_up = died
            log.error(
                "%s: worker %d died %d times within %.0f s: giving up",
                self.name,
                worker.index,
                len(worker.deaths),
                policy.window_s,
            )
            self.stop()

    def _run_once(self, worker: Worker) -> None:
        argv = list(self.command(worker.index))
        with self._lock:
            if self._stopping.is_set():
                return
            worker.proc = subprocess.Popen(  # noqa: S603 - headrace's own command
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - it only calls prctl
            )
            worker.starts += 1
        proc = worker.proc
        log.info("%s: worker %d started (pid %d)", self.name, worker.index, proc.pid)
        self._relay(worker, proc)
        code = proc.wait()
        if code == -signal.SIGTERM and self._stopping.is_set():
            code = 0  # stopped before it could take the signal itself: nothing was begun
        worker.last_code = code
        if code == 0:
            log.info("%s: worker %d stopped", self.name, worker.index)
            return
        if self._stopping.is_set():
            log.warning(
                "%s: worker %d %s while stopping", self.name, worker.index, describe_exit(code)
            )
            return
        worker.deaths.append(time.monotonic())
        raise WorkerDied(worker.index, code, worker.last_line)

    def _relay(self, worker: Worker, proc: subprocess.Popen[bytes]) -> None:
        """The worker's output, line by line, to ours; its last error line is kept."""
        assert proc.stdout is not None  # noqa: S101 - a pipe was asked for
        worker.last_line = ""
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith("headrace: error: "):
                worker.last_line = line.removeprefix("headrace: error: ")
            with self._write_lock:
                self.output.write(line + "\n")
                self.output.flush()
        proc.stdout.close()

    def _pause(self, seconds: float) -> None:
        self._stopping.wait(seconds)  # a stop ends the backoff at once

    def _too_many(self, worker: Worker) -> bool:
        window = time.monotonic() - self.policy.window_s
        while worker.deaths and worker.deaths[0] < window:
            worker.deaths.popleft()
        return len(worker.deaths) >= self.policy.max_deaths

    def _restarting(self, worker: Worker, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning("%s: %s; starting it again in %.1f s", self.name, error, delay)

    # --- after the stop -------------------------------------------------------------

    def wait_stopped(self) -> None:
        """Wait for each worker to exit after the stop; one still running after
        stop_timeout_s is SIGKILLed (its uncommitted work is read again by its successor)."""
        deadline = time.monotonic() + self.stop_timeout_s
        for worker in self.workers:
            proc = worker.proc
            if proc is None:
                continue
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.error(
                    "%s: worker %d did not stop within %.0f s: killed",
                    self.name,
                    worker.index,
                    self.stop_timeout_s,
                )
                proc.kill()
                proc.wait()
