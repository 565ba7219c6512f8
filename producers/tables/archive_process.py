"""``archive-table --run-archive``: an archive group started and stopped by the command.

The group is ``headrace consume archive`` in a child process, with the command's
settings (its environment, and ``--config`` if one was given): the same group as a
service would run, joining it if one is running already. A process and not a
thread, because the group's decoding and the archiver's encoding are both CPU work
in Python: in one process they would share one interpreter lock. The child is
killed if the command dies (``headrace.children.die_with_parent``); its log goes
to ``archive-group.log`` under ``tables.state_dir``.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from pathlib import Path
from typing import IO

from headrace.children import die_with_parent, headrace_command
from producers.errors import ArchiveNotRunning
from producers.tables.confirm import ArchiveConfirm


class ArchiveProcess:
    """One child ``headrace consume archive``; started by :meth:`start`, not before."""

    def __init__(self, log_dir: Path, config: Path | None = None) -> None:
        self.log_path = log_dir / "archive-group.log"
        self.config = config
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, confirm: ArchiveConfirm, timeout_s: float = 120.0) -> None:
        """Start the group; return once a member of it reads the row-events topic."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(  # noqa: S603 - headrace's own command
            [*headrace_command(self.config), "consume", "archive"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - it only calls prctl
        )
        deadline = time.monotonic() + timeout_s
        while True:
            code = self._proc.poll()
            if code is not None:
                self.stop()
                raise ArchiveNotRunning(
                    f"the archive group started by --run-archive exited ({code}):"
                    f" {self._last_line()} (log: {self.log_path}); nothing was archived"
                )
            if confirm.members()[1]:
                return
            if time.monotonic() > deadline:
                self.stop()
                raise ArchiveNotRunning(
                    f"the archive group started by --run-archive was not assigned"
                    f" {confirm.topic} within {timeout_s:g} s (log: {self.log_path});"
                    " nothing was archived"
                )
            time.sleep(0.25)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (the group commits what it published), then wait; SIGKILL if it hangs."""
        proc, self._proc = self._proc, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def _last_line(self) -> str:
        with contextlib.suppress(OSError):
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
            if lines:
                return lines[-1].strip()
        return "no output"
