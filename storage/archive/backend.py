"""Where published segments and manifests live: a local directory or object storage.

Both backends keep the same layout (see :mod:`.layout`), as paths under a root
directory or as keys under a prefix of a bucket::

    <root>/<topic>/dt=YYYY-MM-DD/<segment file name>       LocalBackend
    s3://<bucket>/<prefix>/<topic>/dt=YYYY-MM-DD/<name>    ObjectBackend

Open segments are always written to a local file first (the backend's
:meth:`Backend.staging` directory): the local backend stages in the day
directory itself, so that publishing is a hard link there (see
:mod:`.manifest`); the object backend stages under a local directory and
publishes a finished segment with one PUT.

Publishing to object storage is atomic in the same two steps as on disk:

1. the segment object is written with ``If-None-Match: *``, so that an
   existing object is never overwritten (one with the same sha256, kept in
   ``x-amz-meta-sha256``, counts as published: a replay made it again; one
   with other bytes is an :class:`ArchiveConflict`);
2. the day's manifest is read with its ETag, changed, and written back with
   ``If-Match: <etag>`` (``If-None-Match: *`` for a new one), retried on
   ``412 Precondition Failed``: archives in different processes or hosts,
   owning different partitions of one topic, never lose each other's entries
   (the compare-and-swap the local backend gets from ``flock``).

A crash between the two leaves a segment object without its manifest entry;
the archive adopts it when it next reads that partition's position, as on
disk. Days in object storage are never moved to a cold tier nor compressed
later (``plain_days``): they are in object storage already, published in their
final compression.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from headrace.settings import ArchiveSettings, ObjectStoreSettings
from storage.archive.layout import (
    LOCK,
    MANIFEST,
    ArchiveConflict,
    ArchiveCorrupt,
    ArchiveWriteError,
    SegmentName,
    day_dir,
    day_dirs,
    is_temp,
    parse_day_dir,
    parse_segment_name,
    segment_files,
    topics,
)
from storage.archive.manifest import (
    SegmentInfo,
    adopt,
    check_entry,
    fsync_dir,
    manifest_bytes,
    parse_manifest,
    publish,
    read_manifest,
)
from storage.archive.retention import (
    COLD_MARKER,
    DELETION_REQUEST,
    ColdMarker,
    read_cold_marker,
)
from storage.errors import ObjectNotFound, PreconditionFailed
from storage.objectstore import ObjectStorage, open_storage

log = logging.getLogger(__name__)

# The day's bookkeeping files: never segments.
BOOKKEEPING = frozenset({MANIFEST, LOCK, COLD_MARKER, DELETION_REQUEST})


class Backend(ABC):
    """The published side of an archive: days, manifests and segment files of topics."""

    location: str  # for messages: a directory, or s3://bucket/prefix

    @abstractmethod
    def topics(self) -> list[str]:
        """The topics archived, sorted."""

    @abstractmethod
    def days(self, topic: str) -> list[str]:
        """A topic's days (``YYYY-MM-DD``), sorted."""

    @abstractmethod
    def read_manifest(self, topic: str, day: str) -> list[SegmentInfo]:
        """The segments a day's manifest lists ([] without one); ArchiveCorrupt if unreadable."""

    @abstractmethod
    def segment_files(self, topic: str, day: str) -> list[tuple[str, SegmentName]]:
        """The day's published segment files, by (partition, first offset)."""

    @abstractmethod
    def unknown_files(self, topic: str, day: str) -> list[str]:
        """Names in the day that are neither segments, bookkeeping nor a writer's temporaries."""

    @abstractmethod
    def open(self, topic: str, day: str, name: str) -> BinaryIO:
        """A published file of the day, for reading (close it)."""

    @abstractmethod
    def where(self, topic: str, day: str, name: str = "") -> str:
        """A file's (or the day's) path or URL, for messages."""

    @abstractmethod
    def staging(self, topic: str, day: str) -> Path:
        """The local directory where the day's open segments are written."""

    @property
    @abstractmethod
    def staging_root(self) -> Path:
        """The local directory under which every staging directory is."""

    @abstractmethod
    def publish(self, temp: Path, info: SegmentInfo) -> None:
        """Publish a finished, fsynced staging file as ``info`` and list it in its manifest;
        ArchiveConflict if a segment with other bytes or overlapping offsets is there."""

    @abstractmethod
    def adopt(self, info: SegmentInfo) -> bool:
        """List a published file that its manifest misses; False if it is listed already."""

    def cold_marker(self, topic: str, day: str) -> ColdMarker | None:
        """The day's cold-tier marker (see :mod:`.retention`): only local days move."""
        return None

    @abstractmethod
    def set_aside(self, topic: str, day: str, name: str, into: Path) -> Path | None:
        """Move a published segment file out of the archive into the local directory
        ``into`` (its manifest entry stays); None if there is no such file. Only a repair
        does this, before it publishes the segment again from its records (the one way a
        published segment is ever replaced)."""


class LocalBackend(Backend):
    """The archive under a local directory (the default)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.location = str(self.root)

    def topics(self) -> list[str]:
        return topics(self.root)

    def days(self, topic: str) -> list[str]:
        return [day for day, _ in day_dirs(self.root, topic)]

    def dir(self, topic: str, day: str) -> Path:
        return day_dir(self.root, topic, day)

    def read_manifest(self, topic: str, day: str) -> list[SegmentInfo]:
        return read_manifest(self.dir(topic, day))

    def segment_files(self, topic: str, day: str) -> list[tuple[str, SegmentName]]:
        return segment_files(self.dir(topic, day))

    def unknown_files(self, topic: str, day: str) -> list[str]:
        directory = self.dir(topic, day)
        return sorted(
            p.name
            for p in directory.iterdir()
            if p.name not in BOOKKEEPING
            and not is_temp(p.name)
            and parse_segment_name(p.name) is None
        )

    def open(self, topic: str, day: str, name: str) -> BinaryIO:
        return (self.dir(topic, day) / name).open("rb")

    def where(self, topic: str, day: str, name: str = "") -> str:
        directory = self.dir(topic, day)
        return str(directory / name if name else directory)

    def staging(self, topic: str, day: str) -> Path:
        return self.dir(topic, day)  # publishing is a hard link: same directory

    @property
    def staging_root(self) -> Path:
        return self.root

    def publish(self, temp: Path, info: SegmentInfo) -> None:
        publish(self.dir(info.topic, info.date), temp, info)

    def adopt(self, info: SegmentInfo) -> bool:
        return adopt(self.dir(info.topic, info.date), info)

    def cold_marker(self, topic: str, day: str) -> ColdMarker | None:
        return read_cold_marker(self.dir(topic, day))

    def set_aside(self, topic: str, day: str, name: str, into: Path) -> Path | None:
        source = self.dir(topic, day) / name
        target = into / name
        try:
            source.rename(target)
        except FileNotFoundError:
            return None
        except OSError:  # another file system: copy, then remove
            target.write_bytes(source.read_bytes())
            source.unlink()
        fsync_dir(self.dir(topic, day))
        return target


# --- object storage ------------------------------------------------------------------


class ObjectBackend(Backend):
    """The archive in one bucket of object storage, under ``prefix``; open segments
    staged under ``staging``. The bucket is created at first use if missing."""

    CAS_ATTEMPTS = 50  # manifest compare-and-swap: archives of one topic race on a day

    def __init__(self, storage: ObjectStorage, staging: Path, prefix: str = "") -> None:
        self.storage, self._staging = storage, Path(staging)
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.location = f"{storage.location}/{self.prefix}".rstrip("/")
        self._bucket_ready = False

    def _ready(self) -> ObjectStorage:
        if not self._bucket_ready:
            self.storage.ensure_bucket()
            self._bucket_ready = True
        return self.storage

    def _key(self, topic: str, day: str, name: str = "") -> str:
        return f"{self.prefix}{topic}/dt={day}/{name}"

    def topics(self) -> list[str]:
        prefixes, _ = self._ready().list(self.prefix)
        return sorted(p for p in prefixes if p[:1] not in "._")

    def days(self, topic: str) -> list[str]:
        prefixes, _ = self._ready().list(f"{self.prefix}{topic}/")
        return sorted(d for d in (parse_day_dir(p) for p in prefixes) if d is not None)

    def read_manifest(self, topic: str, day: str) -> list[SegmentInfo]:
        return self._manifest(topic, day)[0]

    def _manifest(self, topic: str, day: str) -> tuple[list[SegmentInfo], str | None]:
        key = self._key(topic, day, MANIFEST)
        try:
            with self._errors("read", key):
                data, etag = self._ready().get_with_etag(key)
        except ObjectNotFound:
            return [], None
        return parse_manifest(data, self.where(topic, day, MANIFEST)), etag

    def segment_files(self, topic: str, day: str) -> list[tuple[str, SegmentName]]:
        found = []
        for name in self._names(topic, day):
            parsed = parse_segment_name(name)
            if parsed is not None:
                found.append((name, parsed))
        found.sort(key=lambda item: (item[1].partition, item[1].first_offset, item[0]))
        return found

    def unknown_files(self, topic: str, day: str) -> list[str]:
        return [
            n
            for n in self._names(topic, day)
            if n not in BOOKKEEPING and parse_segment_name(n) is None
        ]

    def _names(self, topic: str, day: str) -> list[str]:
        key = self._key(topic, day)
        with self._errors("list", key):
            return self._ready().list(key)[1]

    def open(self, topic: str, day: str, name: str) -> BinaryIO:
        key = self._key(topic, day, name)
        with self._errors("read", key):
            return self._ready().open(key)

    def where(self, topic: str, day: str, name: str = "") -> str:
        return f"{self.storage.location}/{self._key(topic, day, name)}".rstrip("/")

    def staging(self, topic: str, day: str) -> Path:
        return day_dir(self._staging, topic, day)

    @property
    def staging_root(self) -> Path:
        return self._staging

    def publish(self, temp: Path, info: SegmentInfo) -> None:
        day = self.where(info.topic, info.date)
        check_entry(day, self.read_manifest(info.topic, info.date), info)
        key = self._key(info.topic, info.date, info.name)
        try:
            data = temp.read_bytes()
        finally:
            temp.unlink(missing_ok=True)
        sha256 = _sha256(data)
        if sha256 != info.sha256:  # the staging file changed after it was finished
            raise ArchiveCorrupt(f"{temp} changed before its upload (sha256 {sha256})")
        try:
            with self._errors("upload", key):
                self._ready().put(key, data, sha256=sha256, if_absent=True)
        except PreconditionFailed:
            stat = self.storage.stat(key)
            if stat is None or stat.sha256 != info.sha256:
                raise ArchiveConflict(
                    f"segment {self.where(info.topic, info.date, info.name)} exists with other"
                    f" bytes (sha256 {stat.sha256 if stat else '?'}, not {info.sha256});"
                    " it is never overwritten"
                ) from None
            log.info("segment %s was already published with the same bytes", key)
        self._add(info)

    def adopt(self, info: SegmentInfo) -> bool:
        return self._add(info)

    def set_aside(self, topic: str, day: str, name: str, into: Path) -> Path | None:
        key = self._key(topic, day, name)
        try:
            with self._errors("read", key):
                data = self._ready().get(key)
        except ObjectNotFound:
            return None
        target = into / name
        target.write_bytes(data)
        with self._errors("delete", key):
            self._ready().delete(key)
        return target

    def _add(self, info: SegmentInfo) -> bool:
        """Add ``info`` to its day's manifest by compare-and-swap; False if it was there."""
        key = self._key(info.topic, info.date, MANIFEST)
        for attempt in range(self.CAS_ATTEMPTS):
            segments, etag = self._manifest(info.topic, info.date)
            if any(s.name == info.name for s in segments):
                return False
            check_entry(self.where(info.topic, info.date), segments, info)
            body = manifest_bytes(info.topic, info.date, [*segments, info])
            try:
                with self._errors("write", key):
                    self._ready().put(
                        key,
                        body,
                        sha256=_sha256(body),
                        if_match=etag,
                        if_absent=etag is None,
                    )
                return True
            except PreconditionFailed:  # another archive changed the day: read it again
                time.sleep(random.uniform(0, 0.01 * (attempt + 1)))  # noqa: S311 - jitter
        raise ArchiveWriteError(
            f"{self.where(info.topic, info.date, MANIFEST)} kept changing:"
            f" {self.CAS_ATTEMPTS} attempts to update it failed"
        )

    @contextmanager
    def _errors(self, operation: str, key: str) -> Iterator[None]:
        """Local file-system failures as the archive's errors (transient: retried); the
        object store's own errors are typed already (storage.errors)."""
        try:
            yield
        except (FileNotFoundError, ArchiveCorrupt, ArchiveConflict):
            raise
        except OSError as exc:
            raise ArchiveWriteError(f"{operation} {key} in {self.storage.location}: {exc}") from exc


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def as_backend(root: Path | Backend) -> Backend:
    """A backend as given, or the local one of a directory."""
    return root if isinstance(root, Backend) else LocalBackend(Path(root))


def open_backend(archive: ArchiveSettings, object_store: ObjectStoreSettings) -> Backend:
    """The archive's backend as the settings choose it."""
    if archive.backend == "local":
        return LocalBackend(archive.root)
    storage = open_storage(object_store, archive.bucket)
    return ObjectBackend(storage, archive.staging, archive.prefix)
