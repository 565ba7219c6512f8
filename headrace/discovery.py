"""Prometheus file-based service discovery: a process announces its ``/metrics`` address.

A process that serves ``/metrics`` writes one target file into
``metrics.targets_dir`` when it starts serving and removes it when it stops::

    [{"targets": ["127.0.0.1:9400"],
      "labels": {"component": "consumer", "group": "headrace.archive",
                 "pid": "4242", "host": "box"}}]

Prometheus' ``file_sd_configs`` reads ``*.json`` there (the local stack's
config, headrace/stack/prometheus.py). A file is written whole (a temporary
name, fsync, rename), so Prometheus never reads half of one. It is named
``HOST-PID-START-N.json``, START the kernel's start time of the process and N a
number of the process's own (one per server it runs): a file
left by a process that died without removing it (SIGKILL) is stale once that
process is gone, and :func:`sweep` (run by every registration and by the
stack's Prometheus at start) removes the stale files of this host.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path

from headrace.stack.process import pid_alive, started_at

log = logging.getLogger(__name__)
_serial = itertools.count(1)  # a file per server, should a process run two

# Addresses that mean "every interface": Prometheus is told the loopback one.
_WILDCARDS = {"", "0.0.0.0", "::"}  # noqa: S104 - compared, never bound


def target_address(host: str, port: int) -> str:
    """``host:port`` as Prometheus should scrape a server bound to ``host``."""
    host = "127.0.0.1" if host in _WILDCARDS else host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def register(
    directory: Path, address: str, labels: Mapping[str, str], *, pid: int | None = None
) -> Path:
    """Write this process's target file (``address`` with ``labels``, plus pid and host);
    return its path. Stale files of this host are removed first."""
    pid = os.getpid() if pid is None else pid
    host = socket.gethostname()
    directory.mkdir(parents=True, exist_ok=True)
    sweep(directory)
    path = directory / f"{host}-{pid}-{started_at(pid) or '0'}-{next(_serial)}.json"
    body = [{"targets": [address], "labels": {**labels, "pid": str(pid), "host": host}}]
    partial = directory / f".{path.name}.partial"  # not *.json: Prometheus ignores it
    with open(partial, "w") as out:
        json.dump(body, out)
        out.flush()
        os.fsync(out.fileno())
    partial.rename(path)
    log.debug("registered %s for Prometheus in %s", address, path)
    return path


def unregister(path: Path | None) -> None:
    """Remove a target file written by :func:`register` (gone already: nothing to do)."""
    if path is not None:
        path.unlink(missing_ok=True)


def stale(path: Path, host: str | None = None) -> bool:
    """Whether ``path`` is a target file of a process of this host that no longer runs."""
    host = host or socket.gethostname()
    rest, _, _serial_number = path.stem.rpartition("-")
    rest, _, start = rest.rpartition("-")
    file_host, _, pid = rest.rpartition("-")
    if file_host != host or not pid.isdigit():
        return False  # another host's, or not ours: left alone
    return not pid_alive(int(pid)) or (started_at(int(pid)) or "0") != start


def sweep(directory: Path) -> list[Path]:
    """Remove the target files of this host's processes that are gone; return them."""
    host = socket.gethostname()
    removed = []
    for path in sorted(directory.glob("*.json")):
        if stale(path, host):
            with contextlib.suppress(FileNotFoundError):  # another sweep was first
                path.unlink()
            removed.append(path)
    return removed
