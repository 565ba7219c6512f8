"""A private PostgreSQL cluster from Debian's packages, on a port of its own."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

from headrace.errors import StackError
from headrace.settings import Settings
from headrace.stack.base import Port, Service
from headrace.stack.process import apt_install, read_pid, run_tool, stop_group

# PostgreSQL refuses to run as root; the Debian package brings this user.
SERVICE_USER = "postgres"
FALLBACK_HOME = Path("/var/lib/postgresql/headrace")


def find_bindir() -> Path | None:
    """The newest PostgreSQL server binaries Debian installed, if any."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else None


def _traversable_by_others(path: Path) -> bool:
    """Whether every existing directory on the way to ``path`` lets other users through."""
    return all(
        parent.stat().st_mode & stat.S_IXOTH for parent in (path, *path.parents) if parent.exists()
    )


class Postgres(Service):
    name = "postgres"
    title = "PostgreSQL"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        if os.geteuid() == 0 and not _traversable_by_others(self.home):
            # The server runs as the postgres user, who cannot reach a state
            # directory under, say, /root: keep the cluster in that user's home.
            digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:12]
            self.home = FALLBACK_HOME / digest
            self.pidfile = self.home / f"{self.name}.pid"
            self.logfile = self.home / f"{self.name}.log"

    @property
    def address(self) -> str:
        return self.settings.postgres.address

    @property
    def data(self) -> Path:
        return self.home / "data"

    def ports(self) -> list[Port]:
        pg = self.settings.postgres
        return [Port(pg.host, pg.port, "PostgreSQL", "HEADRACE_POSTGRES__PORT")]

    def installed(self) -> bool:
        return find_bindir() is not None

    def install(self) -> None:
        apt_install(self.name, "postgresql")

    def _bin(self, tool: str) -> str:
        bindir = find_bindir()
        if bindir is None:
            raise StackError(self.name, "PostgreSQL's server binaries are not installed")
        return str(bindir / tool)

    def _as_owner(self, argv: list[str]) -> list[str]:
        """Run as the postgres user when we are root (initdb and postgres refuse root)."""
        if os.geteuid() != 0:
            return argv
        return ["runuser", "-u", SERVICE_USER, "--", *argv]

    def _prepare_dirs(self) -> None:
        for path in (self.home, self.data, self.home / "run"):
            path.mkdir(parents=True, exist_ok=True, mode=0o755)
        if os.geteuid() == 0:
            shutil.chown(self.home, SERVICE_USER, SERVICE_USER)
            for path in (self.data, self.home / "run"):
                shutil.chown(path, SERVICE_USER, SERVICE_USER)
            self.data.chmod(0o700)
            probe = subprocess.run(  # noqa: S603 - fixed argv
                self._as_owner(["test", "-w", str(self.home)]), check=False
            )
            if probe.returncode != 0:
                raise StackError(
                    self.name,
                    f"the {SERVICE_USER} user cannot reach {self.home}: "
                    "give its parent directories o+x",
                )

    def _initdb(self) -> None:
        pg = self.settings.postgres
        with tempfile.NamedTemporaryFile("w", dir=self.home, delete=False) as pwfile:
            pwfile.write(pg.password.get_secret_value())
        try:
            if os.geteuid() == 0:
                shutil.chown(pwfile.name, SERVICE_USER, SERVICE_USER)
            run_tool(
                self.name,
                self._as_owner(
                    [
                        self._bin("initdb"),
                        "-D",
                        str(self.data),
                        "-U",
                        pg.user,
                        f"--pwfile={pwfile.name}",
                        "--auth-local=trust",
                        "--auth-host=scram-sha-256",
                        "-E",
                        "UTF8",
                        "--locale=C.UTF-8",
                    ]
                ),
                what="initdb",
            )
        finally:
            os.unlink(pwfile.name)

    def pid(self) -> int | None:
        return read_pid(self.data / "postmaster.pid")

    def launch(self) -> int:
        self._prepare_dirs()
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        pg = self.settings.postgres
        options = " ".join(
            f"-c {shlex.quote(setting)}"
            for setting in (
                f"listen_addresses={pg.host}",
                f"port={pg.port}",
                f"unix_socket_directories={self.home / 'run'}",
            )
        )
        run_tool(
            self.name,
            self._as_owner(
                [
                    self._bin("pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.logfile),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            what="pg_ctl start",
        )
        pid = self.pid()
        if pid is None:
            raise StackError(self.name, f"pg_ctl started no server; see {self.logfile}")
        return pid

    def healthy(self) -> bool:
        pg = self.settings.postgres
        done = subprocess.run(  # noqa: S603 - fixed argv
            [self._bin("pg_isready"), "-q", "-h", pg.host, "-p", str(pg.port), "-t", "2"],
            check=False,
        )
        return done.returncode == 0

    def after_start(self) -> None:
        pg = self.settings.postgres
        try:
            with psycopg.connect(pg.conninfo("postgres"), autocommit=True) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (pg.database,)
                ).fetchone()
                if exists is None:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(pg.database)))
        except psycopg.Error as exc:
            raise StackError(self.name, f"cannot create database {pg.database}: {exc}") from None

    def down(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        try:
            run_tool(
                self.name,
                self._as_owner(
                    [self._bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]
                ),
                what="pg_ctl stop",
            )
        except StackError:
            stop_group(pid)
        return True
