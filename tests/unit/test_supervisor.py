"""The supervisor of a group's worker processes, with small Python scripts as workers."""

from __future__ import annotations

import io
import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from consumers.progress import WorkersCaughtUp, WorkerState
from consumers.supervisor import RestartPolicy, Supervisor

FAST = RestartPolicy(initial_s=0.05, max_s=0.2, max_deaths=3, window_s=60)


def _script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "worker.py"
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


# A worker that says it started, then waits for SIGTERM and says it stopped.
SERVES = """
    import signal, sys, time
    from pathlib import Path
    here, i = Path(sys.argv[1]), sys.argv[2]
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    (here / f"started-{i}").touch()
    while not stopping:
        time.sleep(0.01)
    (here / f"stopped-{i}").touch()
"""


def _wait_for(condition: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _terminate_when(condition: object) -> threading.Thread:
    """SIGTERM to this process (the supervisor's) once ``condition`` holds."""

    def run() -> None:
        _wait_for(condition)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_sigterm_is_forwarded_to_every_worker_and_each_stops_cleanly(tmp_path: Path) -> None:
    argv = _script(tmp_path, SERVES)
    supervisor = Supervisor(
        "g", 3, lambda i: [*argv, str(tmp_path), str(i)], policy=FAST, output=io.StringIO()
    )
    started = [tmp_path / f"started-{i}" for i in range(3)]
    _terminate_when(lambda: all(p.exists() for p in started))
    assert supervisor.run() == 0
    assert all((tmp_path / f"stopped-{i}").exists() for i in range(3))
    assert [w.starts for w in supervisor.workers] == [1, 1, 1]
    assert not any(w.alive for w in supervisor.workers)


def test_a_worker_that_dies_is_started_again_after_a_backoff(tmp_path: Path) -> None:
    argv = _script(
        tmp_path,
        textwrap.dedent("""
        import os, sys
        from pathlib import Path
        here, i = Path(sys.argv[1]), sys.argv[2]
        if i == "1" and not (here / "died").exists():
            (here / "died").touch()
            os.kill(os.getpid(), 9)  # SIGKILL, once
        """)
        + textwrap.dedent(SERVES),
    )
    supervisor = Supervisor(
        "g", 2, lambda i: [*argv, str(tmp_path), str(i)], policy=FAST, output=io.StringIO()
    )
    _terminate_when(
        lambda: (
            (tmp_path / "died").exists()
            and supervisor.workers[1].starts == 2
            and (tmp_path / "started-1").exists()
        )
    )
    began = time.monotonic()
    assert supervisor.run() == 0
    assert [w.starts for w in supervisor.workers] == [1, 2]
    assert time.monotonic() - began >= FAST.initial_s
    assert (tmp_path / "stopped-0").exists() and (tmp_path / "stopped-1").exists()


def test_a_worker_that_keeps_dying_makes_it_give_up_with_its_last_error(tmp_path: Path) -> None:
    argv = _script(
        tmp_path,
        textwrap.dedent("""
        import sys
        from pathlib import Path
        here, i = Path(sys.argv[1]), sys.argv[2]
        if i == "0":
            print("some log line", flush=True)
            print("headrace: error: the archive root is not writable", file=sys.stderr)
            sys.exit(1)
        """)
        + textwrap.dedent(SERVES),
    )
    out = io.StringIO()
    supervisor = Supervisor(
        "g", 2, lambda i: [*argv, str(tmp_path), str(i)], policy=FAST, output=out
    )
    assert supervisor.run() == 1
    assert supervisor.gave_up is not None
    assert supervisor.gave_up.index == 0 and supervisor.gave_up.code == 1
    assert supervisor.gave_up.last_line == "the archive root is not writable"
    assert supervisor.workers[0].starts == FAST.max_deaths
    # the healthy worker was stopped (SIGTERM), not left behind
    assert (tmp_path / "stopped-1").exists() and not supervisor.workers[1].alive
    assert "headrace: error: the archive root is not writable" in out.getvalue()


def test_a_worker_that_ignores_sigterm_is_killed_after_the_stop_timeout(tmp_path: Path) -> None:
    argv = _script(
        tmp_path,
        textwrap.dedent("""
        import signal, sys, time
        from pathlib import Path
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        (Path(sys.argv[1]) / "started").touch()
        time.sleep(60)
        """),
    )
    supervisor = Supervisor(
        "g",
        1,
        lambda i: [*argv, str(tmp_path)],
        policy=FAST,
        stop_timeout_s=0.5,
        output=io.StringIO(),
    )
    _terminate_when(lambda: (tmp_path / "started").exists())
    began = time.monotonic()
    assert supervisor.run() == 1  # killed: not a clean stop
    assert supervisor.workers[0].last_code == -signal.SIGKILL
    assert time.monotonic() - began < 30


def test_caught_up_stops_the_group_once_every_worker_said_so(tmp_path: Path) -> None:
    argv = _script(tmp_path, SERVES)
    progress = WorkersCaughtUp(tmp_path, 2)
    progress.wanted = {("t", 0), ("t", 1)}
    supervisor = Supervisor(
        "g",
        2,
        lambda i: [*argv, str(tmp_path), str(i)],
        policy=FAST,
        caught_up=progress,
        output=io.StringIO(),
    )
    say = [WorkerState(progress.path(i)) for i in range(2)]

    def report() -> None:
        _wait_for(lambda: all((tmp_path / f"started-{i}").exists() for i in range(2)))
        say[0](True, frozenset({("t", 0)}))
        say[1](False, frozenset({("t", 1)}))
        time.sleep(1.2)  # the supervisor looks every 0.5 s: it must not stop yet
        assert not supervisor.reached_end
        say[1](True, frozenset({("t", 1)}))

    threading.Thread(target=report, daemon=True).start()
    assert supervisor.run() == 0
    assert supervisor.reached_end


def test_workers_caught_up_needs_every_worker_and_every_partition(tmp_path: Path) -> None:
    progress = WorkersCaughtUp(tmp_path, 2)
    progress.wanted = {("t", 0), ("t", 1)}
    assert not progress()  # nobody said anything
    WorkerState(progress.path(0))(True, frozenset({("t", 0)}))
    assert not progress()  # worker 1 has not said
    WorkerState(progress.path(1))(True, frozenset())
    assert not progress()  # ("t", 1) is nobody's
    WorkerState(progress.path(1))(True, frozenset({("t", 1)}))
    assert progress()
    progress.forget(1)  # started again: its claim is gone
    assert not progress()


def test_processes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Supervisor("g", 0, lambda i: ["true"])


class _Barrier:
    """A JoinBarrier without files or Kafka: ready at once, whole when told."""

    def __init__(self, whole_after: int | None) -> None:
        self.whole_after, self.asked, self.released, self.declared = whole_after, 0, False, False

    def all_ready(self) -> bool:
        return True

    def release(self) -> None:
        self.released = True

    def settled(self) -> bool:
        self.asked += 1
        return self.declared or (self.whole_after is not None and self.asked >= self.whole_after)

    def declare_whole(self) -> None:
        self.declared = True


def test_the_workers_are_released_then_told_the_group_is_whole(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    argv = _script(tmp_path, SERVES)
    barrier = _Barrier(whole_after=3)  # the coordinator says so at the third look
    supervisor = Supervisor(
        "g", 2, lambda i: [*argv, str(tmp_path), str(i)], policy=FAST, barrier=barrier
    )
    _terminate_when(lambda: barrier.asked >= 3 and (tmp_path / "started-1").exists())
    assert supervisor.run() == 0
    assert barrier.released and barrier.asked == 3  # asked no more once whole
    assert not barrier.declared and "not whole" not in caplog.text


def test_a_group_never_whole_reads_anyway_after_the_join_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    argv = _script(tmp_path, SERVES)
    barrier = _Barrier(whole_after=None)  # a worker that never joins, say
    supervisor = Supervisor(
        "g",
        2,
        lambda i: [*argv, str(tmp_path), str(i)],
        policy=FAST,
        barrier=barrier,
        join_timeout_s=0.5,
    )
    _terminate_when(lambda: barrier.declared)
    assert supervisor.run() == 0
    assert "g: the group was not whole within 0.5 s: the workers read anyway" in caplog.text
