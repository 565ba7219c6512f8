"""Processes the stack supervises: spawn detached, track by pid file, stop the group."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from headrace.errors import StackError

_ANSI = re.compile(r"\x1b\[[0-9;]*m")

# Services this process started, kept so that Python neither warns about nor
# forgets a child it must reap; the pid file is the record across processes.
_children: dict[int, subprocess.Popen[bytes]] = {}


def split_host_port(address: str, default_port: int) -> tuple[str, int]:
    """``(host, port)`` of the first entry of a comma-separated ``host:port`` list."""
    first = address.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    return (host, int(port)) if host else (first, default_port)


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    """Whether ``GET url`` answers 200: a service's readiness probe."""
    import httpx  # lazily: the process helpers need no HTTP client

    try:
        return httpx.get(url, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is not running.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def started_at(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), to tell reused pids apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def read_pid(pidfile: Path) -> int | None:
    """The pid recorded in ``pidfile`` if that same process still runs, else None.

    The first line is ``PID [START_TIME]``: headrace's pid files record the start
    time; PostgreSQL's postmaster.pid has the pid alone there, and more lines.
    """
    try:
        fields = pidfile.read_text().splitlines()[0].split()
        pid = int(fields[0])
    except (OSError, ValueError, IndexError):
        return None
    if not pid_alive(pid):
        return None
    if len(fields) > 1 and fields[1] != started_at(pid):
        return None  # the pid now belongs to another process
    return pid


def spawn(
    service: str,
    argv: Sequence[str],
    *,
    pidfile: Path,
    logfile: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Start ``argv`` in a session of its own, output to ``logfile``; record its pid."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as out:
        try:
            proc = subprocess.Popen(  # noqa: S603 - argv is built by the stack, not a shell
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise StackError(service, f"cannot run {argv[0]}: {exc.strerror}") from None
    _children[proc.pid] = proc
    pidfile.write_text(f"{proc.pid} {started_at(proc.pid) or ''}\n")
    return proc.pid


def stop_group(pid: int, *, grace_s: float = 30.0) -> None:
    """SIGTERM the process group led by ``pid``; SIGKILL it if still there after grace."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pid)
            if not pid_alive(pid):
                return
            time.sleep(0.1)


def _reap(pid: int) -> None:
    """Collect the exit status of a child of ours, so it does not linger as a zombie."""
    proc = _children.get(pid)
    if proc is not None and proc.poll() is not None:
        del _children[pid]


def wait_until(
    service: str,
    ready: Callable[[], bool],
    *,
    timeout_s: float,
    pid: int | None = None,
    logfile: Path | None = None,
    interval_s: float = 0.25,
) -> None:
    """Poll ``ready`` until it is true; fail early if ``pid`` dies, late on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        if pid is not None:
            _reap(pid)
            if not pid_alive(pid):
                raise StackError(service, f"exited while starting{_tail(logfile)}")
        time.sleep(interval_s)
    raise StackError(service, f"did not become ready within {timeout_s:.0f}s{_tail(logfile)}")


def _tail(logfile: Path | None) -> str:
    """``": <last log line> (log: PATH)"``, one line, for an error message."""
    if logfile is None or not logfile.exists():
        return ""
    lines = logfile.read_text(errors="replace").strip().splitlines()
    last = lines[-1].strip()[:300] if lines else "(empty log)"
    return f": {last} (log: {logfile})"


def run_tool(
    service: str,
    argv: Sequence[str],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 1800.0,
) -> str:
    """Run an install or admin tool to completion; a failure names ``what`` failed."""
    try:
        done = subprocess.run(  # noqa: S603 - argv is built by the stack, not a shell
            list(argv),
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            timeout=timeout_s,
            check=False,
        )
    except FileNotFoundError:
        raise StackError(service, f"{what}: {argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise StackError(service, f"{what}: timed out after {timeout_s:.0f}s") from None
    if done.returncode != 0:
        output = _meaningful((done.stdout + done.stderr).splitlines())
        errors = [line for line in output if "ERROR" in line or "error" in line.lower()]
        detail = (errors or output or [f"exit code {done.returncode}"])[0][:400]
        raise StackError(service, f"{what} failed: {detail}")
    return done.stdout


# Installs by apt-get, one at a time: the stack installs its services in parallel,
# and dpkg holds one lock.
_apt_lock = threading.Lock()


def apt_install(service: str, package: str) -> None:
    """Install Debian's ``package`` (without its recommends); needs root and apt-get."""
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise StackError(
            service,
            f"{service} is not installed: install Debian's '{package}' package "
            "(needs root and apt-get)",
        )
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    wait = ["-o", "DPkg::Lock::Timeout=300"]  # another apt-get on this machine: wait for it
    with _apt_lock:
        run_tool(service, [apt, *wait, "update", "-q"], env=env, what="apt-get update")
        run_tool(
            service,
            [apt, *wait, "install", "-y", "-q", "--no-install-recommends", package],
            env=env,
            what=f"installing Debian's {package} package",
        )


def maven(service: str, goals: Sequence[str], *, what: str) -> None:
    """Run Maven quietly in batch mode; its own ~/.m2 caches every download."""
    run_tool(service, ["mvn", "-B", "-q", *goals], what=what)


@contextlib.contextmanager
def replacing(target: Path) -> Iterator[Path]:
    """Build into ``TARGET.partial``, then swap it in whole: a half-done install never
    looks installed."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    yield partial
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def _meaningful(lines: list[str]) -> list[str]:
    """Drop the colour codes, blank lines and [INFO] chatter that build tools print."""
    keep = []
    for line in lines:
        clean = _ANSI.sub("", line).strip()
        if clean and not clean.startswith("[INFO]"):
            keep.append(clean)
    return keep
