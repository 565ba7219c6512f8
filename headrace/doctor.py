"""``headrace doctor``: check a configuration before anything runs.

:func:`doctor` returns one :class:`Check` per thing checked: the settings, each
service reachable with the credentials given (Kafka, the schema registry, the
object store, the PostgreSQL load database if ``load.backend`` is postgres,
each ``[sources.NAME]``), each directory headrace writes to, and the free space
of the disks holding the archive, the caches and the database. The groups'
``/readyz`` runs the subset a group needs (:func:`group_checks`). A check never
raises and its detail never holds a credential: errors are headrace's own
one-line messages, which the redactor has already cleaned.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from headrace.errors import HeadraceError
from headrace.settings import Settings

GB = 1000**3


@dataclass(frozen=True)
class Check:
    name: str  # what was checked: "kafka", "path archive.root", "disk /work"
    ok: bool
    detail: str  # what was found, or why it failed

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _run(name: str, probe: Callable[[], str]) -> Check:
    """``probe()``'s answer as a passed check; any failure as a failed one, one line."""
    try:
        return Check(name, True, probe())
    except HeadraceError as exc:
        return Check(name, False, str(exc))
    except Exception as exc:  # a check must report, never raise
        return Check(name, False, f"{type(exc).__name__}: {exc}")


def check_kafka(settings: Settings) -> Check:
    from headrace.kafka import cluster_metadata, make_admin  # noqa: PLC0415 - librdkafka when used

    def probe() -> str:
        kafka = settings.kafka
        meta = cluster_metadata(make_admin(kafka), kafka, timeout_s=settings.health.check_timeout_s)
        return (
            f"{len(meta.brokers)} broker(s) at {kafka.bootstrap_servers}, {len(meta.topics)} topics"
        )

    return _run("kafka", probe)


def check_registry(settings: Settings) -> Check:
    from schemas.registry import Registry  # noqa: PLC0415 - the client only when used

    def probe() -> str:
        with Registry(settings.registry) as registry:
            return f"{len(registry.subjects())} subjects at {settings.registry.url}"

    return _run("registry", probe)


def check_bucket(settings: Settings, bucket: str, what: str) -> Check:
    from storage.objectstore import open_storage  # noqa: PLC0415 - the SDK only when used

    def probe() -> str:
        store = open_storage(settings.object_store, bucket)
        try:
            there = store.bucket_exists()  # a signed request: the credentials are checked
        finally:
            store.close()
        where = f"{store.location} at {settings.object_store.endpoint}"
        return where if there else f"{where} (not created yet: the first write creates it)"

    return _run(f"object store ({what})", probe)


def check_postgres(name: str, conninfo: str, address: str, secrets: list[str]) -> Check:
    def probe() -> str:
        from storage.db.postgres import check_connection  # noqa: PLC0415 - psycopg when used

        return f"{check_connection(conninfo, f'PostgreSQL at {address}', secrets)} at {address}"

    return _run(name, probe)


def check_database(settings: Settings) -> Check:
    pg = settings.postgres
    secrets = [pg.password.get_secret_value()]
    return check_postgres("load database", pg.conninfo(), pg.address, secrets)


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent: where it would be created."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(setting: str, path: Path) -> Check:
    """A file can be made in ``path`` (or, before it exists, in the parent that would
    hold it): a temporary file is created and removed. Creates no directory."""

    def probe() -> str:
        base = _existing(path)
        if not base.is_dir():
            raise HeadraceError(f"{base} is not a directory")
        try:
            fd, name = tempfile.mkstemp(prefix=".headrace-doctor-", dir=base)
        except OSError as exc:
            raise HeadraceError(f"{path} is not writable ({exc.strerror})") from None
        os.close(fd)
        os.unlink(name)
        return f"{path} writable" if base == path.absolute() else f"{path} can be created"

    return _run(f"path {setting}", probe)


def check_free(paths: dict[str, Path], min_free_gb: float) -> list[Check]:
    """One check per disk holding any of ``paths``: its free space against the bound."""
    disks: dict[int, tuple[Path, list[str]]] = {}
    for setting, path in paths.items():
        base = _existing(path)
        disks.setdefault(base.stat().st_dev, (base, []))[1].append(setting)
    checks = []
    for base, settings in disks.values():
        free = shutil.disk_usage(base).free / GB
        ok = free >= min_free_gb
        detail = f"{free:.1f} GB free at {base}, {'at least' if ok else 'below'} {min_free_gb:g} GB"
        checks.append(Check(f"disk ({', '.join(settings)})", ok, detail))
    return checks


def writable_paths(settings: Settings) -> dict[str, Path]:
    """The directories headrace writes to, by setting."""
    paths = {
        "archive.root" if settings.archive.backend == "local" else "archive.staging": (
            settings.archive.root
            if settings.archive.backend == "local"
            else settings.archive.staging
        ),
        "cache.dir": settings.cache.dir,
        "git.cache_dir": settings.git.cache_dir,
        "consumer.instances_dir": settings.consumer.instances_dir,
        "ingest.state_dir": settings.ingest.state_dir,
        "tables.state_dir": settings.tables.state_dir,
        "verify.repairs_dir": settings.verify.repairs_dir,
        "load.backups_dir": settings.load.backups_dir,
    }
    if settings.load.backend == "sqlite":
        paths["load.sqlite_path (its directory)"] = settings.load.sqlite_path.parent
    return paths


def disk_paths(settings: Settings) -> dict[str, Path]:
    """The archive, the caches and the database: the paths that grow."""
    paths = writable_paths(settings)
    keep = ("archive.", "cache.dir", "git.cache_dir", "load.sqlite_path", "load.backups_dir")
    return {name: path for name, path in paths.items() if name.startswith(keep)}


def doctor(settings: Settings, min_free_gb: float | None = None) -> list[Check]:
    """Every check of the configuration ``settings``, in a fixed order."""
    bound = settings.health.min_free_gb if min_free_gb is None else min_free_gb
    checks = [
        Check("settings", True, "valid"),
        check_kafka(settings),
        check_registry(settings),
        check_bucket(settings, settings.object_store.bucket, "object_store.bucket"),
    ]
    if settings.archive.backend == "object_store":
        checks.append(check_bucket(settings, settings.archive.bucket, "archive.bucket"))
    checks.append(check_bucket(settings, settings.archive.cold_bucket, "archive.cold_bucket"))
    if settings.load.backend == "postgres":
        checks.append(check_database(settings))
    for name, source in sorted(settings.sources.items()):
        secrets = [source.password.get_secret_value()] if source.password else []
        checks.append(check_postgres(f"source {name}", source.conninfo(), source.address, secrets))
    checks += [check_writable(setting, path) for setting, path in writable_paths(settings).items()]
    return checks + check_free(disk_paths(settings), bound)


def group_checks(settings: Settings, group: str) -> list[Check]:
    """What the group ``group`` needs to do its work: the broker, the registry, and
    its sink's store and disk (a group of one's own: the broker and the registry)."""
    checks = [check_kafka(settings), check_registry(settings)]
    bound = settings.health.min_free_gb
    if group == "archive":
        if settings.archive.backend == "object_store":
            checks.append(check_bucket(settings, settings.archive.bucket, "archive.bucket"))
            disk = {"archive.staging": settings.archive.staging}
        else:
            disk = {"archive.root": settings.archive.root}
        checks += check_free(disk, bound)
    elif group == "load":
        if settings.load.backend == "postgres":
            checks.append(check_database(settings))
        else:
            path = settings.load.sqlite_path
            checks.append(check_writable("load.sqlite_path (its directory)", path.parent))
            checks += check_free({"load.sqlite_path": path.parent}, bound)
    elif group in ("cache", "verify"):
        checks.append(check_bucket(settings, settings.object_store.bucket, "object_store.bucket"))
        if group == "cache":
            checks += check_free(
                {"cache.dir": settings.cache.dir, "git.cache_dir": settings.git.cache_dir}, bound
            )
    return checks
