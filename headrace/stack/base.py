"""The contract every service of the local stack fulfils."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from headrace.errors import StackError
from headrace.settings import Settings
from headrace.stack.process import port_open, read_pid, spawn, stop_group, wait_until


@dataclass(frozen=True)
class Port:
    host: str
    port: int
    purpose: str
    setting: str  # the setting to change when the port is taken


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    address: str
    healthy: bool


class Service(ABC):
    """One service: installs itself, starts detached, answers a real probe, stops."""

    name: ClassVar[str]
    title: ClassVar[str]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home: Path = settings.stack.home / self.name
        self.pidfile = self.home / f"{self.name}.pid"
        self.logfile = self.home / f"{self.name}.log"

    @property
    @abstractmethod
    def address(self) -> str:
        """Where clients reach the service, as printed to people."""

    @abstractmethod
    def ports(self) -> list[Port]:
        """Every port the service listens on."""

    @abstractmethod
    def installed(self) -> bool: ...

    @abstractmethod
    def install(self) -> None: ...

    @abstractmethod
    def launch(self) -> int:
        """Start the service detached; return its pid."""

    @abstractmethod
    def healthy(self) -> bool:
        """Whether the service really answers (not merely that its port is open)."""

    def after_start(self) -> None:  # noqa: B027 - a hook; most services need nothing
        """Idempotent set-up that needs the service running (databases, rules)."""

    def pid(self) -> int | None:
        return read_pid(self.pidfile)

    def status(self) -> ServiceStatus:
        pid = self.pid()
        return ServiceStatus(self.name, pid, self.address, pid is not None and self.healthy())

    def up(self) -> str:
        """Start the service unless it already runs; return what was done."""
        pid = self.pid()
        if pid is not None:
            self._wait_healthy(pid)
            self.after_start()
            return "already running"
        self.check_ports_free()
        if not self.installed():
            self.install()
        self.home.mkdir(parents=True, exist_ok=True)
        pid = self.launch()
        self._wait_healthy(pid)
        self.after_start()
        return "started"

    def down(self) -> bool:
        """Stop the service; return whether it was running."""
        pid = self.pid()
        if pid is None:
            return False
        stop_group(pid)
        self.pidfile.unlink(missing_ok=True)
        return True

    def check_ports_free(self) -> None:
        for p in self.ports():
            if port_open(p.host, p.port):
                raise StackError(
                    self.name,
                    f"port {p.host}:{p.port} ({p.purpose}) is already taken by another "
                    f"process; stop it or set {p.setting}",
                )

    def spawn(
        self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> int:
        return spawn(self.name, argv, pidfile=self.pidfile, logfile=self.logfile, env=env, cwd=cwd)

    def _wait_healthy(self, pid: int) -> None:
        wait_until(
            self.name,
            self.healthy,
            timeout_s=self.settings.stack.start_timeout_s,
            pid=pid,
            logfile=self.logfile,
        )
