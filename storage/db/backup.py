"""Backups of the load database: taken while the load group runs, listed, restored, pruned.

A backup is two files in ``load.backups_dir``, named by the UTC time it was taken::

    load-20261201T221500123456Z.sqlite3   (or .pgdump)   the copy
    load-20261201T221500123456Z.json                     its manifest, written last

- **SQLite**: ``VACUUM INTO`` a temporary file: a consistent snapshot read in one
  transaction, which in WAL mode does not stop the loader writing; then fsync and an
  atomic rename.
- **PostgreSQL**: ``pg_dump --format=custom`` of the load schema (``load.postgres_schema``),
  the password passed in the environment (``PGPASSWORD``), never on the command line.

The manifest holds the backend, the time, the size and the sha256 of the copy, and
what it is a copy of (the path, or ``user@host:port/database`` and the schema: never a
password). A copy without a manifest is an interrupted backup: it is never listed or
restored, and the next backup removes it.

:func:`restore` refuses while a load group holds the database (an instance slot of
the load group on this host, or a member of the group in Kafka), unless forced; it
checks the copy's sha256, backs up the database it replaces first, then puts the copy
in place (SQLite: an atomic rename over the database file, its WAL removed;
PostgreSQL: ``pg_restore --clean --if-exists --single-transaction``), and commits the
load group's offsets back to the restored ledger (:func:`rewind_group`). The load
group then continues from there: what was loaded after the backup is loaded again
from Kafka, once, as its positions come from the database.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from headrace.errors import ConfigError, HeadraceError
from headrace.redact import REDACTOR
from headrace.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "load-"
SUFFIXES = {"sqlite": ".sqlite3", "postgres": ".pgdump"}


class BackupError(HeadraceError):
    """A backup could not be taken, read or restored."""


class LoaderRunning(BackupError):
    """A load group holds the database: restoring under it would lose its writes."""


@dataclass(frozen=True)
class Backup:
    """One complete backup: its copy and what its manifest says."""

    name: str
    path: Path
    backend: str
    created_at: datetime
    size: int
    sha256: str
    source: str  # the database it copies, without credentials

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "backend": self.backend,
            "created_at": self.created_at.isoformat(timespec="seconds"),
            "size": self.size,
            "sha256": self.sha256,
            "source": self.source,
        }

    @classmethod
    def from_manifest(cls, manifest: Path) -> Backup:
        data = orjson.loads(manifest.read_bytes())
        return cls(
            data["name"],
            manifest.with_name(data["file"]),
            data["backend"],
            datetime.fromisoformat(data["created_at"]),
            int(data["size"]),
            data["sha256"],
            data["source"],
        )


class Backups:
    """The backups directory: the one place backups are read from and written to."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def all(self) -> list[Backup]:
        """Complete backups, newest first (a manifest whose copy is missing is skipped)."""
        if not self.directory.is_dir():
            return []
        found = []
        for manifest in self.directory.glob(f"{PREFIX}*.json"):
            try:
                backup = Backup.from_manifest(manifest)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("skipping the unreadable backup manifest %s: %s", manifest, exc)
                continue
            if backup.path.is_file():
                found.append(backup)
        return sorted(found, key=lambda b: b.created_at, reverse=True)

    def find(self, name_or_path: str) -> Backup:
        """A backup by its name (``load-...``), its copy's path or its manifest's path."""
        wanted = Path(name_or_path).name
        for suffix in (".json", *SUFFIXES.values()):
            wanted = wanted.removesuffix(suffix)
        for backup in self.all():
            if backup.name == wanted:
                return backup
        raise BackupError(
            f"no backup {name_or_path!r} in {self.directory} ('headrace db backups' lists them)"
        )

    def new_name(self, now: datetime) -> str:
        return f"{PREFIX}{now.strftime('%Y%m%dT%H%M%S%fZ')}"

    def add(self, name: str, backend: str, temp: Path, source: str, now: datetime) -> Backup:
        """Publish a finished copy: fsync, rename into place, then write its manifest."""
        final = self.directory / f"{name}{SUFFIXES[backend]}"
        _fsync(temp)
        os.replace(temp, final)
        backup = Backup(name, final, backend, now, final.stat().st_size, _sha256(final), source)
        manifest = {**backup.to_json(), "file": final.name}
        manifest["created_at"] = now.isoformat()
        temp_manifest = self.directory / f".{name}.json.tmp"
        temp_manifest.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        _fsync(temp_manifest)
        os.replace(temp_manifest, self.directory / f"{name}.json")
        _fsync_dir(self.directory)
        return backup

    def remove_incomplete(self) -> int:
        """Remove temporary files and copies without a manifest (interrupted backups)."""
        if not self.directory.is_dir():
            return 0
        listed = {b.path for b in self.all()}
        removed = 0
        for path in self.directory.iterdir():
            stray_copy = path.name.startswith(PREFIX) and path.suffix in SUFFIXES.values()
            if (
                path.name.startswith(".")
                and path.name.endswith(".tmp")
                or (stray_copy and path not in listed)
            ):
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def prune(self, keep_days: int, now: datetime | None = None) -> list[Backup]:
        """Remove backups older than ``keep_days``; the newest one always stays."""
        now = now or datetime.now(UTC)
        backups = self.all()
        cutoff = now - timedelta(days=keep_days)
        gone = [b for b in backups[1:] if b.created_at < cutoff]
        for backup in gone:
            (self.directory / f"{backup.name}.json").unlink(missing_ok=True)  # manifest first
            backup.path.unlink(missing_ok=True)
        return gone


def backups_of(settings: Settings) -> Backups:
    return Backups(settings.load.backups_dir)


def backup(settings: Settings) -> Backup:
    """Back up the load database now (module docstring); the backup made."""
    load = settings.load
    store = backups_of(settings)
    store.directory.mkdir(parents=True, exist_ok=True)
    store.remove_incomplete()
    now = datetime.now(UTC)
    name = store.new_name(now)
    temp = store.directory / f".{name}{SUFFIXES[load.backend]}.tmp"
    try:
        if load.backend == "sqlite":
            source = _vacuum_into(load.sqlite_path, temp)
        else:
            source = _pg_dump(settings, temp)
        return store.add(name, load.backend, temp, source, now)
    finally:
        temp.unlink(missing_ok=True)


def _vacuum_into(database: Path, temp: Path) -> str:
    if not database.is_file():
        raise BackupError(f"no load database at {database}: nothing to back up")
    uri = f"file:{database}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=30)
        try:
            conn.execute("VACUUM INTO ?", (str(temp),))
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise BackupError(f"backing up {database}: {exc}") from None
    return str(database)


def _pg_env(settings: Settings) -> dict[str, str]:
    pg = settings.postgres
    env = {
        **os.environ,
        "PGHOST": pg.host,
        "PGPORT": str(pg.port),
        "PGUSER": pg.user,
        "PGDATABASE": pg.database,
        "PGCONNECT_TIMEOUT": "10",
    }
    if pg.password is not None:
        env["PGPASSWORD"] = pg.password.get_secret_value()
    return env


def _pg_source(settings: Settings) -> str:
    pg = settings.postgres
    return f"{pg.user}@{pg.host}:{pg.port}/{pg.database} schema {settings.load.postgres_schema}"


def _tool(name: str) -> str:
    """A PostgreSQL client tool: on PATH, else the newest Debian installed."""
    found = shutil.which(name)
    if found is None:
        candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
        if candidates:
            return str(candidates[-1])
        raise ConfigError(f"{name} is not installed (PostgreSQL's client tools are needed)")
    return found


def _run_pg(argv: list[str], settings: Settings, doing: str) -> None:
    try:
        done = subprocess.run(  # noqa: S603 - PostgreSQL's own tools, no shell
            argv, env=_pg_env(settings), capture_output=True, timeout=3600, check=False
        )
    except subprocess.TimeoutExpired:
        raise BackupError(f"{doing}: {Path(argv[0]).name} ran for an hour; stopped") from None
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines() or ["no output"]
        reason = REDACTOR.redact(lines[-1].strip())
        raise BackupError(f"{doing}: {Path(argv[0]).name} failed ({done.returncode}): {reason}")


def _pg_dump(settings: Settings, temp: Path) -> str:
    schema = settings.load.postgres_schema
    argv = [_tool("pg_dump"), "--format=custom", "--no-owner", f"--schema={schema}"]
    _run_pg([*argv, f"--file={temp}"], settings, f"backing up {_pg_source(settings)}")
    return _pg_source(settings)


@dataclass(frozen=True)
class Restored:
    backup: Backup
    replaced: Backup | None  # the database as it was before, backed up first
    rewound: int = 0  # partitions whose committed offset went back to the ledger's


def restore(settings: Settings, name_or_path: str, *, force: bool = False) -> Restored:
    """Put a backup back in place of the load database (module docstring)."""
    load = settings.load
    chosen = backups_of(settings).find(name_or_path)
    if chosen.backend != load.backend:
        raise BackupError(
            f"{chosen.name} is a {chosen.backend} backup; load.backend is {load.backend}"
        )
    if not force:
        holder = loader_running(settings)
        if holder is not None:
            raise LoaderRunning(
                f"a load group holds the database ({holder}): stop it first, or --force;"
                " nothing was restored"
            )
    if _sha256(chosen.path) != chosen.sha256:
        raise BackupError(f"{chosen.path} does not match its manifest's sha256: not restored")
    present = load.backend == "postgres" or load.sqlite_path.is_file()
    replaced = backup(settings) if present else None
    if load.backend == "sqlite":
        _sqlite_restore(chosen.path, load.sqlite_path)
    else:
        argv = [_tool("pg_restore"), "--clean", "--if-exists", "--no-owner"]
        argv += ["--single-transaction", f"--dbname={settings.postgres.database}"]
        _run_pg([*argv, str(chosen.path)], settings, f"restoring {_pg_source(settings)}")
    try:
        rewound = rewind_group(settings)
    except HeadraceError as exc:
        raise BackupError(
            f"{chosen.name} is restored, but the load group's offsets were not rewound to"
            f" its ledger ({exc}): restore it again before the load group runs"
        ) from None
    return Restored(chosen, replaced, rewound)


def rewind_group(settings: Settings) -> int:
    """Commit the load group's offsets back to the restored ledger's positions (the
    partitions it has no entry for: to their start), so the group reloads what came
    after the backup. Without it the runtime would start at the committed offsets,
    which it takes as the sink's when ahead of them (they only skip dead letters
    otherwise), and the rows loaded after the backup would be missing for good. The
    partitions rewound; a record dead-lettered after the backup is dead-lettered again.
    """
    from confluent_kafka import KafkaException  # noqa: PLC0415 - only when restoring
    from confluent_kafka import TopicPartition as KafkaPartition  # noqa: PLC0415

    from headrace.kafka import make_consumer  # noqa: PLC0415
    from storage.db import open_database  # noqa: PLC0415

    group = settings.consumer.group_prefix + "load"
    topics = settings.kafka.topics
    consumer = make_consumer(settings.kafka, group)  # commits as the group, never joins it
    try:
        partitions: list[tuple[str, int]] = []
        for topic in (topics.file_events, topics.run_events):
            meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if meta is not None and meta.error is None:
                partitions += [(topic, p) for p in sorted(meta.partitions)]
        with open_database(settings, migrate=True) as database:
            ledger = database.positions(group, partitions)
        offsets = []
        for topic, partition in partitions:
            low, _high = consumer.get_watermark_offsets(KafkaPartition(topic, partition), 10)
            offsets.append(KafkaPartition(topic, partition, ledger.get((topic, partition), low)))
        if offsets:
            consumer.commit(offsets=offsets, asynchronous=False)
        return len(offsets)
    except KafkaException as exc:
        raise BackupError(
            f"Kafka at {settings.kafka.bootstrap_servers}: {exc.args[0].str()}"
        ) from None
    finally:
        consumer.close()


def _sqlite_restore(copy: Path, database: Path) -> None:
    database.parent.mkdir(parents=True, exist_ok=True)
    temp = database.with_name(f".{database.name}.restore.tmp")
    shutil.copyfile(copy, temp)
    _fsync(temp)
    for suffix in ("-wal", "-shm"):  # the old database's log must not be replayed into it
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    os.replace(temp, database)
    _fsync_dir(database.parent)


def loader_running(settings: Settings) -> str | None:
    """What shows a load group holds the database, if anything: one of its instance
    slots held on this host, or members of the group in Kafka."""
    group = settings.consumer.group_prefix + "load"
    directory = settings.consumer.instances_dir
    for lock in sorted(directory.glob(f"{group}.*.lock")) if directory.is_dir() else []:
        with open(lock, "a+b") as file:  # noqa: PTH123 - a lock, not content
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return f"{lock.name} is held on this host"
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)
    members = _group_members(settings, group)
    if members:
        return f"group {group} has {members} members"
    return None


def _group_members(settings: Settings, group: str) -> int:
    from confluent_kafka import KafkaException  # noqa: PLC0415 - only when restoring

    from headrace.kafka import answer, make_admin  # noqa: PLC0415

    admin = make_admin(settings.kafka)
    try:
        found = admin.describe_consumer_groups([group], request_timeout=10)[group]
        return len(answer(found, 10).members)
    except KafkaException as exc:
        log.warning("could not ask Kafka whether group %s has members: %s", group, exc)
        return 0


class PeriodicBackup:
    """The load group's own backups, every ``interval_s``, in a thread of their own (the
    loader never waits for one); then backups older than ``keep_days`` are pruned."""

    def __init__(self, settings: Settings, interval_s: float, keep_days: int = 0) -> None:
        self.settings, self.interval_s, self.keep_days = settings, interval_s, keep_days
        self._last = time.monotonic()
        self._thread: threading.Thread | None = None
        self.taken = 0
        self.failed = 0

    def tick(self) -> None:
        if self.interval_s <= 0 or time.monotonic() - self._last < self.interval_s:
            return
        if self._thread is not None and self._thread.is_alive():
            return
        self._last = time.monotonic()
        self._thread = threading.Thread(target=self._take, name="load-backup", daemon=True)
        self._thread.start()

    def _take(self) -> None:
        try:
            made = backup(self.settings)
            self.taken += 1
            log.info("backed up the load database: %s (%s bytes)", made.path, made.size)
            if self.keep_days > 0:
                for gone in backups_of(self.settings).prune(self.keep_days):
                    log.info("pruned the backup %s", gone.name)
        except (HeadraceError, OSError) as exc:
            self.failed += 1
            log.warning("the periodic backup failed: %s", exc)

    def close(self, timeout_s: float = 600.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with path.open("rb") as file:
        os.fsync(file.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = [
    "Backup",
    "BackupError",
    "Backups",
    "LoaderRunning",
    "PeriodicBackup",
    "Restored",
    "backup",
    "backups_of",
    "loader_running",
    "restore",
]
