"""Content-addressed object store: bytes stored once, under the sha256 of their content.

The bulk-ingest producer uploads files above the inline limit here and puts a
presigned GET URL in the event; consumers fetch content back by key. The key
is :func:`content_key` of the sha256 (``sha256/ab/cd/abcd...``), so an object
that is already there is never uploaded again (``uploaded=False``) and two
writers racing on one key write the same bytes.

:class:`MinioObjectStore` is the real store (the MinIO SDK over the fail-fast
client of :mod:`headrace.s3`); :class:`MemoryObjectStore` keeps the same
contract in memory for unit tests. Uploads stream from the open file: below
the multipart threshold one PUT holds the object in memory; above it the SDK
holds the parts being sent, at most ``(parallel_uploads + 2) * part_size`` (its
worker threads keep their last part until they take the next). Bytes are hashed as
they are read: content that does not hash to its key fails the upload before
it completes (:class:`~storage.errors.ContentMismatch`), and content read back
through a content key is checked at its end. Nothing here retries: failures
are typed (transient or terminal, see :mod:`storage.errors`) for the caller.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, cast

from minio.datatypes import Object
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import MAX_MULTIPART_COUNT, MAX_PART_SIZE, MIN_PART_SIZE, check_bucket_name
from urllib3.exceptions import HTTPError, MaxRetryError, NewConnectionError, ProtocolError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from headrace.errors import HeadraceError
from headrace.s3 import make_minio
from headrace.settings import ObjectStoreSettings
from storage.errors import (
    ContentMismatch,
    ObjectNotFound,
    ObjectStoreError,
    ObjectStoreRefused,
    ObjectStoreUnavailable,
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from urllib3.response import BaseHTTPResponse

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/octet-stream"
SHA256_METADATA = "x-amz-meta-sha256"
_MIB = 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_KEY = re.compile(r"sha256/[0-9a-f]{2}/[0-9a-f]{2}/([0-9a-f]{64})")
# S3 codes worth retrying; any 5xx status is too.
_BUSY_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "OperationAborted"}
    | {"NoSuchUpload", "XMinioServerNotInitialized"}  # an upload aborted under us: start again
)
_SIGNED_QUERY = re.compile(r"(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s]*", re.I)


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


class _CountingStore:
    """Run-summary counters, safe to bump from several upload threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.uploads = 0
        self.deduplicated = 0
        self.uploaded_bytes = 0

    def _count(self, stored: StoredObject) -> StoredObject:
        with self._lock:
            if stored.uploaded:
                self.uploads += 1
                self.uploaded_bytes += stored.size
            else:
                self.deduplicated += 1
        return stored


class _LocalReadError(Exception):
    """Carries an OSError of the local file through the SDK, which is not the store's fault."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _VerifyingReader:
    """Reads exactly ``size`` bytes, hashing them; raises before the last byte is handed
    over if they are short or do not hash to ``sha256``, so a wrong object is never completed.
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
        try:
            data = self._raw.read(remaining if n < 0 else min(n, remaining))
        except OSError as exc:
            raise _LocalReadError(exc) from exc
        self._hash.update(data)
        self._read += len(data)
        if not data:
            raise self._fail(f"content ended after {self._read} of {self._size} bytes")
        if self._read == self._size:
            self._verify()
        return data

    def _verify(self) -> None:
        if self._hash.hexdigest() != self._sha256:
            raise self._fail(f"its {self._size} bytes hash to {self._hash.hexdigest()}")


class MinioObjectStore(_CountingStore):
    """:class:`ObjectStore` on MinIO or any S3 service, through the ``minio`` SDK.

    The client is thread-safe: one store may serve several upload threads.
    """

    def __init__(
        self,
        settings: ObjectStoreSettings,
        *,
        multipart_threshold: int = 16 * _MIB,
        part_size: int = 8 * _MIB,
        parallel_uploads: int = 2,
    ) -> None:
        super().__init__()
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ValueError(f"part_size must be between 5 MiB and 5 GiB, not {part_size}")
        if not 0 <= multipart_threshold <= MAX_PART_SIZE:
            raise ValueError(f"multipart_threshold must be at most 5 GiB: {multipart_threshold}")
        if parallel_uploads < 1:
            raise ValueError(f"parallel_uploads must be at least 1: {parallel_uploads}")
        self.bucket = settings.bucket
        self.endpoint = settings.endpoint
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.parallel_uploads = parallel_uploads
        self._secret = settings.secret_key.get_secret_value()
        try:
            check_bucket_name(settings.bucket, strict=True)
            self.client = make_minio(settings)
        except ValueError as exc:
            raise ObjectStoreRefused(
                self.endpoint, self.bucket, "configuration", self._redact(str(exc))
            ) from None

    def ensure_bucket(self) -> None:
        with self._translating("create bucket"):
            if self.client.bucket_exists(self.bucket):
                return
            try:
                self.client.make_bucket(self.bucket)
                log.info("created bucket %s at %s", self.bucket, self.endpoint)
            except S3Error as exc:
                if exc.code != "BucketAlreadyOwnedByYou":  # another process won the race
                    raise

    def exists(self, sha256: str) -> bool:
        return self._stat(content_key(sha256)) is not None

    def put_file(self, path: Path, sha256: str, size: int) -> StoredObject:
        key = content_key(sha256)
        if size < 0:
            raise ValueError(f"size must not be negative: {size}")
        if (found := self._stat(key)) is not None:
            return self._deduplicated(key, sha256, size, found)
        with path.open("rb") as file:  # an OSError here is the file's, not the store's
            self._upload(file, key, sha256, size)
        return self._count(StoredObject(self.bucket, key, size, sha256, uploaded=True))

    def put_bytes(self, data: bytes, sha256: str) -> StoredObject:
        key = content_key(sha256)
        if (found := self._stat(key)) is not None:
            return self._deduplicated(key, sha256, len(data), found)
        self._upload(io.BytesIO(data), key, sha256, len(data))
        return self._count(StoredObject(self.bucket, key, len(data), sha256, uploaded=True))

    def presign(self, key: str, expires: timedelta = timedelta(hours=24)) -> tuple[str, datetime]:
        now = datetime.now(UTC).replace(microsecond=0)  # signatures count whole seconds
        with self._translating("presign", key):  # the region is set: no request is made
            url = self.client.presigned_get_object(
                self.bucket, key, expires=expires, request_date=now
            )
        return url, now + expires

    def open(self, key: str) -> BinaryIO:
        with self._translating("get", key):
            response = self.client.get_object(self.bucket, key)
        return io.BufferedReader(_ResponseStream(self, key, response), buffer_size=256 * 1024)

    def get(self, key: str) -> bytes:
        with self.open(key) as stream:
            return stream.read()

    # -- internals -------------------------------------------------------------------------

    def stat_sha256(self, key: str) -> tuple[int, str] | None:
        """(size, the sha256 its metadata records) of an object under any key, or None."""
        found = self._stat(key)
        if found is None:
            return None
        return int(found.size or 0), str((found.metadata or {}).get(SHA256_METADATA, ""))

    def _stat(self, key: str) -> Object | None:
        with self._translating("stat", key):
            try:
                return self.client.stat_object(self.bucket, key)
            except S3Error as exc:
                if exc.code == "NoSuchKey":
                    return None
                raise

    def _deduplicated(self, key: str, sha256: str, size: int, found: Object) -> StoredObject:
        if found.size != size:
            raise self._mismatch(key, f"the stored object has {found.size} bytes, not {size}")
        log.debug("%s is already in %s: not uploaded", key, self.bucket)
        return self._count(StoredObject(self.bucket, key, size, sha256, uploaded=False))

    def _upload(self, raw: BinaryIO, key: str, sha256: str, size: int) -> None:
        multipart = size > self.multipart_threshold
        if multipart:  # at most 10,000 parts: very large objects need larger ones
            needed = -(-size // MAX_MULTIPART_COUNT)
            part_size = max(self.part_size, -(-needed // _MIB) * _MIB)
        else:  # a part as large as the object: one PUT
            part_size = max(size, MIN_PART_SIZE)
        reader = _VerifyingReader(raw, sha256, size, lambda why: self._mismatch(key, why))
        with self._translating("upload", key):
            self.client.put_object(
                self.bucket,
                key,
                cast(BinaryIO, reader),
                size,
                content_type=CONTENT_TYPE,
                metadata={SHA256_METADATA: sha256},
                part_size=part_size,
                num_parallel_uploads=self.parallel_uploads if multipart else 1,
            )
        log.debug("uploaded %s (%s bytes, %s)", key, size, "multipart" if multipart else "one put")

    def _mismatch(self, key: str, reason: str) -> ContentMismatch:
        return ContentMismatch(self.endpoint, self.bucket, key, reason)

    @contextmanager
    def _translating(self, operation: str, key: str | None = None) -> Iterator[None]:
        """Turn the SDK's and the HTTP pool's failures into storage errors."""
        try:
            yield
        except HeadraceError:
            raise
        except _LocalReadError as exc:
            raise exc.error from None
        except (S3Error, ServerError, InvalidResponseError, HTTPError, OSError) as exc:
            raise self._classify(exc, operation, key) from exc

    def _classify(self, exc: Exception, operation: str, key: str | None) -> ObjectStoreError:
        args = (self.endpoint, self.bucket, operation)
        if isinstance(exc, S3Error):
            if exc.code == "NoSuchKey" and key is not None:
                return ObjectNotFound(self.endpoint, self.bucket, key)
            reason = self._redact(f"{exc.code}: {exc.message}")
            if exc.code == "NoSuchBucket":
                reason += " (the bucket must exist first: ensure_bucket)"
            status = getattr(exc.response, "status", 0) or 0
            if exc.code in _BUSY_CODES or status >= 500:
                return ObjectStoreUnavailable(*args, reason, key=key)
            return ObjectStoreRefused(*args, reason, key=key)
        if isinstance(exc, ServerError | InvalidResponseError):
            status = exc.status_code if isinstance(exc, ServerError) else exc._code
            reason = f"HTTP {status} without an S3 error"
            if status >= 500 or status == 429:
                return ObjectStoreUnavailable(*args, reason, key=key)
            return ObjectStoreRefused(*args, reason, key=key)
        return ObjectStoreUnavailable(*args, self._redact(_transport_reason(exc)), key=key)

    def _redact(self, text: str) -> str:
        if self._secret:
            text = text.replace(self._secret, "**********")
        return _SIGNED_QUERY.sub(r"\1**********", text)


def _transport_reason(exc: BaseException) -> str:
    """A short reason for a connection failure: the socket's own words where there are any."""
    if isinstance(exc, MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 8:
        seen.append(current)
        for candidate in (current, *(a for a in current.args if isinstance(a, OSError))):
            if isinstance(candidate, OSError) and candidate.strerror:
                return f"{candidate.strerror.lower()} ({type(exc).__name__})"
        current = current.__cause__ or current.__context__
    if isinstance(exc, Urllib3Timeout | TimeoutError) and not isinstance(exc, NewConnectionError):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, ProtocolError):
        return f"connection broken ({type(exc).__name__})"
    return type(exc).__name__


class _ResponseStream(io.RawIOBase):
    """A GET response as a raw stream: failures typed, content keys checked at the end."""

    def __init__(self, store: MinioObjectStore, key: str, response: BaseHTTPResponse) -> None:
        self._store, self._key, self._response = store, key, response
        self._expected = _digest_of(key)
        self._hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        with self._store._translating("read", self._key):
            data = self._response.read(len(view))
        view[: len(data)] = data
        if self._expected is not None:
            self._hash.update(data)
            if not data and len(view) and self._hash.hexdigest() != self._expected:
                self._expected = None  # report once
                raise self._store._mismatch(self._key, "the stored bytes hash differently")
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._response.close()
                self._response.release_conn()
            finally:
                super().close()


class MemoryObjectStore(_CountingStore):
    """:class:`ObjectStore` in memory, for unit tests: same keys, checks, counters and errors.

    As on a real store, objects can only be written once :meth:`ensure_bucket` has run.
    """

    endpoint = "memory"

    def __init__(self, bucket: str = "headrace-content") -> None:
        super().__init__()
        self.bucket = bucket
        self.bucket_created = False
        self.objects: dict[str, bytes] = {}

    def ensure_bucket(self) -> None:
        self.bucket_created = True

    def exists(self, sha256: str) -> bool:
        return content_key(sha256) in self.objects

    def put_file(self, path: Path, sha256: str, size: int) -> StoredObject:
        key = content_key(sha256)
        if key not in self.objects:
            with path.open("rb") as file:
                data = file.read(size + 1)
            if len(data) != size:
                raise ContentMismatch(self.endpoint, self.bucket, key, f"not {size} bytes")
            return self.put_bytes(data, sha256)
        return self._put(key, self.objects[key], sha256, size)

    def put_bytes(self, data: bytes, sha256: str) -> StoredObject:
        return self._put(content_key(sha256), data, sha256, len(data))

    def _put(self, key: str, data: bytes, sha256: str, size: int) -> StoredObject:
        with self._lock:
            stored = self.objects.get(key)
            if stored is not None:
                if len(stored) != size:
                    reason = f"the stored object has {len(stored)} bytes, not {size}"
                    raise ContentMismatch(self.endpoint, self.bucket, key, reason)
            elif not self.bucket_created:
                reason = "NoSuchBucket: (the bucket must exist first: ensure_bucket)"
                raise ObjectStoreRefused(self.endpoint, self.bucket, "upload", reason, key=key)
            elif hashlib.sha256(data).hexdigest() != sha256:
                raise ContentMismatch(self.endpoint, self.bucket, key, "bytes hash differently")
            else:
                self.objects[key] = data
        return self._count(StoredObject(self.bucket, key, size, sha256, stored is None))

    def presign(self, key: str, expires: timedelta = timedelta(hours=24)) -> tuple[str, datetime]:
        if not 1 <= expires.total_seconds() <= 7 * 24 * 3600:
            raise ValueError("expires must be between 1 second and 7 days")
        expiry = datetime.now(UTC).replace(microsecond=0) + expires
        return f"memory://{self.bucket}/{key}?expires={int(expiry.timestamp())}", expiry

    def open(self, key: str) -> BinaryIO:
        return io.BytesIO(self.get(key))

    def get(self, key: str) -> bytes:
        try:
            return self.objects[key]
        except KeyError:
            raise ObjectNotFound(self.endpoint, self.bucket, key) from None
