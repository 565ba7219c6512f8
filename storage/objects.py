"""Content-addressed object store: bytes stored once, under the sha256 of their content.

The bulk-ingest producer uploads files above the inline limit here and puts a
presigned GET URL in the event; consumers fetch content back by key. The key
is :func:`content_key` of the sha256 (``sha256/ab/cd/abcd...``), so an object
that is already there is never uploaded again (``uploaded=False``) and two
writers racing on one key write the same bytes.

:class:`ContentAddressedStore` is that layer over any
:class:`~storage.objectstore.base.ObjectStorage`: :class:`MinioObjectStore` over
MinIO or S3, :class:`MemoryObjectStore` in memory for unit tests. Uploads are
verified as sent (see :mod:`storage.objectstore.base`): content that does not hash
to its key fails the upload before it completes
(:class:`~storage.errors.ContentMismatch`), and content read back through a content
key is checked at its end. Nothing here retries: failures are typed (transient or
terminal, see :mod:`storage.errors`) for the caller.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from headrace.settings import ObjectStoreSettings
from storage.errors import ContentMismatch
from storage.objectstore.base import (
    CONTENT_TYPE,
    SHA256_METADATA,
    ObjectInfo,
    ObjectStorage,
)
from storage.objectstore.memory import MemoryStorage
from storage.objectstore.minio import MinioStorage

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "CONTENT_TYPE",
    "SHA256_METADATA",
    "ContentAddressedStore",
    "MemoryObjectStore",
    "MinioObjectStore",
    "ObjectStore",
    "StoredObject",
    "content_key",
]

log = logging.getLogger(__name__)

_MIB = 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_KEY = re.compile(r"sha256/[0-9a-f]{2}/[0-9a-f]{2}/([0-9a-f]{64})")


def content_key(sha256: str) -> str:
    """``sha256/ab/cd/abcd...``: the key of content with this hex digest."""
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise ValueError(f"not a sha256 hex digest (64 lowercase hex characters): {sha256!r:.80}")
    return f"sha256/{sha256[:2]}/{sha256[2:4]}/{sha256}"


def _digest_of(key: str) -> str | None:
    """The sha256 a content key names, or None for any other key."""
    found = _CONTENT_KEY.fullmatch(key)
    return found.group(1) if found and content_key(found.group(1)) == key else None


@dataclass(frozen=True)
class StoredObject:
    bucket: str
    key: str
    size: int
    sha256: str
    uploaded: bool  # False when the object was already there (deduplicated)


class ObjectStore(Protocol):
    """The narrow port the producer and the consumers use."""

    bucket: str

    def ensure_bucket(self) -> None: ...
    def exists(self, sha256: str) -> bool: ...
    def put_file(self, path: Path, sha256: str, size: int) -> StoredObject: ...
    def put_bytes(self, data: bytes, sha256: str) -> StoredObject: ...
    def presign(
        self, key: str, expires: timedelta = timedelta(hours=24)
    ) -> tuple[str, datetime]: ...
    def open(self, key: str) -> BinaryIO: ...
    def get(self, key: str) -> bytes: ...


class ContentAddressedStore:
    """:class:`ObjectStore` over one bucket of any object storage, with run-summary
    counters (``uploads``, ``deduplicated``, ``uploaded_bytes``) safe to bump from
    several upload threads."""

    def __init__(self, storage: ObjectStorage) -> None:
        self.storage = storage
        self.bucket = storage.bucket
        self.endpoint = storage.endpoint
        self.uploads = 0
        self.deduplicated = 0
        self.uploaded_bytes = 0
        self._lock = threading.Lock()

    def ensure_bucket(self) -> None:
        self.storage.ensure_bucket()

    def close(self) -> None:
        """Close the storage's connections."""
        self.storage.close()

    def exists(self, sha256: str) -> bool:
        return self.storage.stat(content_key(sha256)) is not None

    def put_file(self, path: Path, sha256: str, size: int) -> StoredObject:
        key = content_key(sha256)
        if size < 0:
            raise ValueError(f"size must not be negative: {size}")
        if (found := self.storage.stat(key)) is not None:
            return self._deduplicated(found, sha256, size)
        with path.open("rb") as file:  # an OSError here is the file's, not the store's
            self.storage.put(key, file, size, sha256=sha256)
        return self._count(StoredObject(self.bucket, key, size, sha256, uploaded=True))

    def put_bytes(self, data: bytes, sha256: str) -> StoredObject:
        key = content_key(sha256)
        if (found := self.storage.stat(key)) is not None:
            return self._deduplicated(found, sha256, len(data))
        self.storage.put(key, data, sha256=sha256)
        return self._count(StoredObject(self.bucket, key, len(data), sha256, uploaded=True))

    def presign(self, key: str, expires: timedelta = timedelta(hours=24)) -> tuple[str, datetime]:
        return self.storage.presign(key, expires)

    def open(self, key: str) -> BinaryIO:
        """The object's bytes; under a content key, ContentMismatch at the end of the
        stream if they do not hash to it."""
        stream = self.storage.open(key)
        expected = _digest_of(key)
        if expected is None:
            return stream

        def fail() -> ContentMismatch:
            reason = "the stored bytes hash differently"
            return ContentMismatch(self.endpoint, self.bucket, key, reason)

        checked = _CheckedStream(stream, expected, fail)
        return io.BufferedReader(checked, buffer_size=256 * 1024)

    def get(self, key: str) -> bytes:
        with self.open(key) as stream:
            return stream.read()

    def stat_sha256(self, key: str) -> tuple[int, str] | None:
        """(size, the sha256 its metadata records, "" if none) of an object, or None."""
        found = self.storage.stat(key)
        return None if found is None else (found.size, found.sha256 or "")

    def _deduplicated(self, found: ObjectInfo, sha256: str, size: int) -> StoredObject:
        if found.size != size:
            reason = f"the stored object has {found.size} bytes, not {size}"
            raise ContentMismatch(self.endpoint, self.bucket, found.key, reason)
        log.debug("%s is already in %s: not uploaded", found.key, self.bucket)
        return self._count(StoredObject(self.bucket, found.key, size, sha256, uploaded=False))

    def _count(self, stored: StoredObject) -> StoredObject:
        with self._lock:
            if stored.uploaded:
                self.uploads += 1
                self.uploaded_bytes += stored.size
            else:
                self.deduplicated += 1
        return stored


class MinioObjectStore(ContentAddressedStore):
    """The content store on MinIO or S3: the bucket of ``settings`` (see
    :class:`~storage.objectstore.minio.MinioStorage` for the upload options)."""

    storage: MinioStorage

    def __init__(
        self,
        settings: ObjectStoreSettings,
        *,
        multipart_threshold: int = 16 * _MIB,
        part_size: int = 8 * _MIB,
        parallel_uploads: int = 2,
    ) -> None:
        super().__init__(
            MinioStorage(
                settings,
                multipart_threshold=multipart_threshold,
                part_size=part_size,
                parallel_uploads=parallel_uploads,
            )
        )


class MemoryObjectStore(ContentAddressedStore):
    """The content store in memory, for unit tests: same keys, checks, counters and
    errors; as on a real store, objects can only be written once :meth:`ensure_bucket`
    has run. ``storage.objects`` holds them."""

    storage: MemoryStorage

    def __init__(self, bucket: str = "headrace-content") -> None:
        super().__init__(MemoryStorage(bucket))


class _CheckedStream(io.RawIOBase):
    """A stream whose bytes must hash to ``expected``: ContentMismatch at its end if not."""

    def __init__(self, raw: BinaryIO, expected: str, fail: Callable[[], ContentMismatch]) -> None:
        self._raw, self._expected, self._fail = raw, expected, fail
        self._hash = hashlib.sha256()
        self._checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self._raw.read(len(view))
        view[: len(data)] = data
        self._hash.update(data)
        if not data and len(view) and not self._checked:
            self._checked = True  # report once
            if self._hash.hexdigest() != self._expected:
                raise self._fail()
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._raw.close()
            finally:
                super().close()
