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
import io
import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from minio import Minio
from minio.error import S3Error

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
from storage.objects import CONTENT_TYPE, SHA256_METADATA, MinioObjectStore

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


# --- object storage ------------------------------------------------------------------


class PreconditionFailed(Exception):
    """A conditional PUT found the object in another state (HTTP 412)."""


class Bucket(ABC):
    """The few object-storage calls the archive needs, conditional writes included."""

    location: str

    @abstractmethod
    def get(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and ETag, or None if there is none."""

    @abstractmethod
    def put(
        self,
        key: str,
        data: bytes,
        *,
        sha256: str,
        if_match: str | None = None,
        if_absent: bool = False,
    ) -> None:
        """Write the object (its sha256 as metadata); PreconditionFailed if ``if_match`` is
        not its ETag, or ``if_absent`` and it exists."""

    @abstractmethod
    def stat(self, key: str) -> tuple[int, str] | None:
        """(size, sha256 metadata) of the object, or None if there is none."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """The object's bytes as a stream."""

    @abstractmethod
    def list(self, prefix: str) -> tuple[list[str], list[str]]:
        """The sub-prefixes (without the trailing ``/``) and object names directly under
        ``prefix`` (which ends with ``/``), relative to it."""


@dataclass
class MemoryBucket(Bucket):
    """A bucket in memory, with the same conditional-write rules (tests, dry runs)."""

    location: str = "memory://archive"
    objects: dict[str, tuple[bytes, str, str]] = field(default_factory=dict)  # data, etag, sha
    _version: int = 0

    def get(self, key: str) -> tuple[bytes, str] | None:
        found = self.objects.get(key)
        return None if found is None else (found[0], found[1])

    def put(
        self,
        key: str,
        data: bytes,
        *,
        sha256: str,
        if_match: str | None = None,
        if_absent: bool = False,
    ) -> None:
        found = self.objects.get(key)
        if (if_absent and found is not None) or (
            if_match is not None and (found is None or found[1] != if_match)
        ):
            raise PreconditionFailed(key)
        self._version += 1
        self.objects[key] = (bytes(data), f"etag-{self._version}", sha256)

    def stat(self, key: str) -> tuple[int, str] | None:
        found = self.objects.get(key)
        return None if found is None else (len(found[0]), found[2])

    def open(self, key: str) -> BinaryIO:
        found = self.objects.get(key)
        if found is None:
            raise FileNotFoundError(key)
        return io.BytesIO(found[0])

    def list(self, prefix: str) -> tuple[list[str], list[str]]:
        prefixes: set[str] = set()
        names: set[str] = set()
        for key in self.objects:
            if key.startswith(prefix):
                rest = key[len(prefix) :]
                head, sep, _ = rest.partition("/")
                (prefixes if sep else names).add(head)
        return sorted(prefixes), sorted(names)


class ObjectBackend(Backend):
    """The archive in a bucket, under ``prefix``; open segments staged under ``staging``."""

    CAS_ATTEMPTS = 50  # manifest compare-and-swap: archives of one topic race on a day

    def __init__(self, bucket: Bucket, staging: Path, prefix: str = "") -> None:
        self.bucket, self._staging = bucket, Path(staging)
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.location = f"{bucket.location}/{self.prefix}".rstrip("/")

    def _key(self, topic: str, day: str, name: str = "") -> str:
        return f"{self.prefix}{topic}/dt={day}/{name}"

    def topics(self) -> list[str]:
        prefixes, _ = self.bucket.list(self.prefix)
        return sorted(p for p in prefixes if p[:1] not in "._")

    def days(self, topic: str) -> list[str]:
        prefixes, _ = self.bucket.list(f"{self.prefix}{topic}/")
        return sorted(d for d in (parse_day_dir(p) for p in prefixes) if d is not None)

    def read_manifest(self, topic: str, day: str) -> list[SegmentInfo]:
        return self._manifest(topic, day)[0]

    def _manifest(self, topic: str, day: str) -> tuple[list[SegmentInfo], str | None]:
        key = self._key(topic, day, MANIFEST)
        with self._errors("read", key):
            found = self.bucket.get(key)
        if found is None:
            return [], None
        return parse_manifest(found[0], self.where(topic, day, MANIFEST)), found[1]

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
            return self.bucket.list(key)[1]

    def open(self, topic: str, day: str, name: str) -> BinaryIO:
        key = self._key(topic, day, name)
        with self._errors("read", key):
            return self.bucket.open(key)

    def where(self, topic: str, day: str, name: str = "") -> str:
        return f"{self.bucket.location}/{self._key(topic, day, name)}".rstrip("/")

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
                self.bucket.put(key, data, sha256=sha256, if_absent=True)
        except PreconditionFailed:
            stat = self.bucket.stat(key)
            if stat is None or stat[1] != info.sha256:
                raise ArchiveConflict(
                    f"segment {self.where(info.topic, info.date, info.name)} exists with other"
                    f" bytes (sha256 {stat[1] if stat else '?'}, not {info.sha256});"
                    " it is never overwritten"
                ) from None
            log.info("segment %s was already published with the same bytes", key)
        self._add(info)

    def adopt(self, info: SegmentInfo) -> bool:
        return self._add(info)

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
                    self.bucket.put(
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
        """Object-store failures as the archive's errors (transient: retried)."""
        try:
            yield
        except (PreconditionFailed, FileNotFoundError, ArchiveCorrupt, ArchiveConflict):
            raise
        except OSError as exc:
            raise ArchiveWriteError(f"{operation} {key} in {self.bucket.location}: {exc}") from exc


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def as_backend(root: Path | Backend) -> Backend:
    """A backend as given, or the local one of a directory."""
    return root if isinstance(root, Backend) else LocalBackend(Path(root))


class MinioBucket(Bucket):
    """:class:`Bucket` on MinIO or S3 (created at first use if missing). Conditional
    writes are S3's ``If-Match``/``If-None-Match`` headers on PutObject, which the SDK's
    public ``put_object`` does not pass: this goes through its ``_put_object`` (one PUT;
    the SDK version is pinned in constraints.txt)."""

    def __init__(self, settings: ObjectStoreSettings) -> None:
        self._store = MinioObjectStore(settings)  # its client, bucket check, error types
        self.name = settings.bucket
        self.location = f"s3://{settings.bucket}"
        self._ready = False

    def _client(self) -> Minio:
        if not self._ready:
            self._store.ensure_bucket()
            self._ready = True
        return self._store.client

    def get(self, key: str) -> tuple[bytes, str] | None:
        client = self._client()
        with self._store._translating("read", key):
            try:
                response = client.get_object(self.name, key)
            except S3Error as exc:
                if exc.code == "NoSuchKey":
                    return None
                raise
            try:
                return response.read(), response.headers.get("ETag", "").strip('"')
            finally:
                response.close()
                response.release_conn()

    def put(
        self,
        key: str,
        data: bytes,
        *,
        sha256: str,
        if_match: str | None = None,
        if_absent: bool = False,
    ) -> None:
        headers: dict[str, str | list[str] | tuple[str]] = {
            "Content-Type": CONTENT_TYPE,
            SHA256_METADATA: sha256,
        }
        if if_match is not None:
            headers["If-Match"] = f'"{if_match}"'
        if if_absent:
            headers["If-None-Match"] = "*"
        client = self._client()
        with self._store._translating("upload", key):
            try:
                client._put_object(self.name, key, data, headers=headers)
            except S3Error as exc:
                if exc.code in _PRECONDITION_CODES:
                    raise PreconditionFailed(key) from None
                raise

    def stat(self, key: str) -> tuple[int, str] | None:
        self._client()
        return self._store.stat_sha256(key)

    def open(self, key: str) -> BinaryIO:
        self._client()
        return self._store.open(key)

    def list(self, prefix: str) -> tuple[list[str], list[str]]:
        client = self._client()
        prefixes, names = [], []
        with self._store._translating("list", prefix):
            for obj in client.list_objects(self.name, prefix=prefix, recursive=False):
                rest = (obj.object_name or "")[len(prefix) :]
                if obj.is_dir:
                    prefixes.append(rest.rstrip("/"))
                elif rest:
                    names.append(rest)
        return sorted(prefixes), sorted(names)


# 412 on If-Match/If-None-Match; S3 says 409 ConditionalRequestConflict when two race.
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})


def open_backend(archive: ArchiveSettings, object_store: ObjectStoreSettings) -> Backend:
    """The archive's backend as the settings choose it."""
    if archive.backend == "local":
        return LocalBackend(archive.root)
    bucket = MinioBucket(object_store.model_copy(update={"bucket": archive.bucket}))
    return ObjectBackend(bucket, archive.staging, archive.prefix)
