"""The object-storage contract: one bucket of one service, whatever the backend.

Every backend (:mod:`.minio` for MinIO and S3, :mod:`.memory` for unit tests)
implements :class:`ObjectStorage`; callers type against it and get one from
:func:`storage.objectstore.open_storage`. The base class owns the upload
invariant: :meth:`ObjectStorage.put` hands the backend a :class:`VerifyingReader`,
so bytes that do not hash to the sha256 given with them (or are fewer or more than
``size``) fail the upload before its last byte is handed over, and nothing is
ever completed under a wrong sha256. Failures are the errors of
:mod:`storage.errors`; nothing here retries.
"""

from __future__ import annotations

import hashlib
import io
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import BinaryIO

from storage.errors import ContentMismatch

CONTENT_TYPE = "application/octet-stream"
SHA256_METADATA = "x-amz-meta-sha256"  # every object carries the sha256 of its bytes
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ObjectInfo:
    """What a ``stat`` (or a ``put``) says about one object."""

    key: str
    size: int
    etag: str  # without quotes; a multipart upload's ends in -<parts>
    sha256: str | None  # its x-amz-meta-sha256 metadata; None if it has none


class ObjectStorage(ABC):
    """One bucket of one object-storage service.

    Constructors do no I/O: the first call is where a network failure belongs.
    Writes need the bucket to exist (:meth:`ensure_bucket`); a missing key is
    ``None`` from :meth:`stat` and :class:`~storage.errors.ObjectNotFound` from
    :meth:`open`, :meth:`get` and :meth:`get_with_etag`.
    """

    endpoint: str  # host:port, or "memory"
    bucket: str
    location: str  # s3://<bucket> (memory://<bucket>), for messages

    @abstractmethod
    def bucket_exists(self) -> bool:
        """Whether the bucket exists (one request)."""

    @abstractmethod
    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (another process creating it too is fine)."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """The object's size, ETag and sha256 metadata, or None if there is none."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """The object's bytes as a stream (close it); read failures are storage errors."""

    def get(self, key: str) -> bytes:
        """The object's bytes."""
        with self.open(key) as stream:
            return stream.read()

    @abstractmethod
    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and ETag, read in one request (for a compare-and-swap)."""

    def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        size: int | None = None,
        *,
        sha256: str,
        if_absent: bool = False,
        if_match: str | None = None,
    ) -> ObjectInfo:
        """Write ``size`` bytes (all of ``data`` if bytes) under ``key``, with ``sha256`` as
        its metadata; what was written.

        The bytes are hashed as they are sent: if they are not exactly ``size`` bytes
        hashing to ``sha256``, :class:`~storage.errors.ContentMismatch` is raised before
        the upload completes. ``if_absent`` (``If-None-Match: *``) and ``if_match``
        (``If-Match: <etag>``) make the write conditional (one request):
        :class:`~storage.errors.PreconditionFailed` if the object exists, or its ETag is
        not ``if_match``. An OSError reading ``data`` is raised as it is (the source's
        failure, not the store's).
        """
        if isinstance(data, bytes):
            size = len(data) if size is None else size
            data = io.BytesIO(data)
        elif size is None:
            raise ValueError("put needs the size of a stream")
        if size < 0:
            raise ValueError(f"size must not be negative: {size}")
        if not isinstance(sha256, str) or not SHA256.fullmatch(sha256):
            raise ValueError(f"not a sha256 hex digest (64 lowercase hex): {sha256!r:.80}")

        def fail(reason: str) -> ContentMismatch:
            return ContentMismatch(self.endpoint, self.bucket, key, reason)

        reader = VerifyingReader(data, sha256, size, fail)
        try:
            return self._write(key, reader, size, sha256, if_absent=if_absent, if_match=if_match)
        except SourceReadError as exc:
            raise exc.error from None

    @abstractmethod
    def _write(
        self,
        key: str,
        reader: VerifyingReader,
        size: int,
        sha256: str,
        *,
        if_absent: bool,
        if_match: str | None,
    ) -> ObjectInfo:
        """Send ``reader`` (exactly ``size`` bytes, checked as read) as the object."""

    @abstractmethod
    def list(self, prefix: str) -> tuple[list[str], list[str]]:
        """The sub-prefixes (without the trailing ``/``) and object names directly under
        ``prefix`` (which ends with ``/``, or is empty), relative to it, sorted."""

    @abstractmethod
    def presign(self, key: str, expires: timedelta = timedelta(hours=24)) -> tuple[str, datetime]:
        """A GET URL for the object, valid for ``expires`` (1 second to 7 days, else
        ValueError), and when it expires (UTC, whole seconds). Makes no request."""

    def close(self) -> None:  # noqa: B027 - a hook: backends with connections close them
        """Release the backend's connections; the storage stays usable (it reconnects)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a missing one is no error. The pipeline never deletes
        content; a repair removes a damaged archive segment after copying it out
        (:meth:`storage.archive.Backend.set_aside`), and smoke checks and tests
        clean up."""


class SourceReadError(Exception):
    """Carries an OSError of the bytes' source through the backend, which is not the
    store's fault; :meth:`ObjectStorage.put` raises the OSError itself."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class VerifyingReader:
    """Reads exactly ``size`` bytes, hashing them; raises before the last byte is handed
    over if they are short, followed by more, or do not hash to ``sha256``, so that a
    wrong object is never completed.
    """

    def __init__(
        self, raw: BinaryIO, sha256: str, size: int, fail: Callable[[str], ContentMismatch]
    ) -> None:
        self._raw, self._sha256, self._size, self._fail = raw, sha256, size, fail
        self._hash = hashlib.sha256()
        self._read = 0
        if size == 0:
            self._verify()

    def read(self, n: int = -1) -> bytes:
        remaining = self._size - self._read
        if remaining <= 0:
            return b""
        data = self._source_read(remaining if n < 0 else min(n, remaining))
        self._hash.update(data)
        self._read += len(data)
        if not data:
            raise self._fail(f"content ended after {self._read} of {self._size} bytes")
        if self._read == self._size:
            self._verify()
        return data

    def read_all(self) -> bytes:
        """Every byte (verified), for a backend that sends one buffer."""
        chunks = []
        while chunk := self.read():
            chunks.append(chunk)
        return b"".join(chunks)

    def _source_read(self, n: int) -> bytes:
        try:
            return self._raw.read(n)
        except OSError as exc:
            raise SourceReadError(exc) from exc

    def _verify(self) -> None:
        if self._source_read(1):
            raise self._fail(f"content is longer than its {self._size} bytes")
        if self._hash.hexdigest() != self._sha256:
            raise self._fail(f"its {self._size} bytes hash to {self._hash.hexdigest()}")
