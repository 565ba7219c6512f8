"""MinIO and S3 behind :class:`~storage.objectstore.base.ObjectStorage`: the only module
of headrace that imports the ``minio`` SDK.

:func:`make_minio` makes a client that fails fast: the SDK's default HTTP pool
waits minutes and retries on its own, while headrace retries with its own policy,
so the pool here has short timeouts and no retries. The region is given so that
the first use of a bucket costs no extra lookup and presigning never needs the
network. :class:`MinioStorage` makes its client on first use.

Uploads stream from their source: up to ``multipart_threshold`` one PUT holds the
object in memory; above it the SDK holds the parts being sent, at most
``(parallel_uploads + 2) * part_size`` (its worker threads keep their last part
until they take the next). A conditional write (``if_absent``, ``if_match``) is
always one PUT of the whole object.

The SDK's and the HTTP pool's failures become the errors of :mod:`storage.errors`
(:meth:`MinioStorage._classify`), with the secret key and presigned-URL signatures
redacted from every message.

Two private members of the SDK are used, both here and nowhere else, which is why
``pyproject.toml`` bounds minio to the 7.2 series tested (the pin is in
``constraints.txt``): ``Minio._put_object``, because the public ``put_object``
turns any header it does not know (``If-Match``, ``If-None-Match``) into
``x-amz-meta-`` metadata; and ``InvalidResponseError._code``, its HTTP status,
which it exposes no other way.
"""

from __future__ import annotations

import io
import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, BinaryIO, cast

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import MAX_MULTIPART_COUNT, MAX_PART_SIZE, MIN_PART_SIZE, check_bucket_name
from urllib3.exceptions import HTTPError, MaxRetryError, NewConnectionError, ProtocolError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from headrace.errors import HeadraceError
from headrace.settings import ObjectStoreSettings
from storage.errors import (
    ObjectNotFound,
    ObjectStoreError,
    ObjectStoreRefused,
    ObjectStoreUnavailable,
    PreconditionFailed,
)
from storage.objectstore.base import (
    CONTENT_TYPE,
    SHA256_METADATA,
    ObjectInfo,
    ObjectStorage,
    VerifyingReader,
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from urllib3.response import BaseHTTPResponse

log = logging.getLogger(__name__)

_MIB = 1024 * 1024
# S3 codes worth retrying; any 5xx status is too.
_BUSY_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "OperationAborted"}
    | {"NoSuchUpload", "XMinioServerNotInitialized"}  # an upload aborted under us: start again
)
# 412 on If-Match/If-None-Match; S3 says 409 ConditionalRequestConflict when two race.
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_SIGNED_QUERY = re.compile(r"(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s]*", re.I)

Translate = Callable[[str, str | None], AbstractContextManager[None]]


def fail_fast_pool(timeout_s: float = 10.0) -> urllib3.PoolManager:
    """The HTTP pool of headrace's clients: short timeouts, no retries of its own."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=min(timeout_s, 3.0), read=timeout_s),
        retries=urllib3.Retry(total=0, redirect=0),
        maxsize=8,
    )


def make_minio(
    settings: ObjectStoreSettings,
    *,
    timeout_s: float = 10.0,
    pool: urllib3.PoolManager | None = None,
) -> Minio:
    """A MinIO SDK client for ``settings`` that fails fast (no request is made here)."""
    pool = pool if pool is not None else fail_fast_pool(timeout_s)
    return Minio(
        settings.endpoint,
        access_key=settings.access_key,
        secret_key=settings.secret_key.get_secret_value(),
        secure=settings.secure,
        region=settings.region,
        http_client=pool,
    )


class MinioStorage(ObjectStorage):
    """:class:`ObjectStorage` on MinIO or any S3 service: ``bucket`` (by default the
    settings' own) of the service ``settings`` names. Thread-safe: one storage may serve
    several upload threads."""

    def __init__(
        self,
        settings: ObjectStoreSettings,
        bucket: str | None = None,
        *,
        multipart_threshold: int = 16 * _MIB,
        part_size: int = 8 * _MIB,
        parallel_uploads: int = 2,
    ) -> None:
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ValueError(f"part_size must be between 5 MiB and 5 GiB, not {part_size}")
        if not 0 <= multipart_threshold <= MAX_PART_SIZE:
            raise ValueError(f"multipart_threshold must be at most 5 GiB: {multipart_threshold}")
        if parallel_uploads < 1:
            raise ValueError(f"parallel_uploads must be at least 1: {parallel_uploads}")
        self.endpoint = settings.endpoint
        self.bucket = settings.bucket if bucket is None else bucket
        self.location = f"s3://{self.bucket}"
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.parallel_uploads = parallel_uploads
        self._settings = settings
        self._secret = settings.secret_key.get_secret_value()
        self._client: Minio | None = None
        self._pool: urllib3.PoolManager | None = None
        self._client_lock = threading.Lock()
        try:
            check_bucket_name(self.bucket, strict=True)  # a check of the name: no request
        except ValueError as exc:
            raise self._refused_configuration(exc) from None

    @property
    def client(self) -> Minio:
        """The SDK client, made on first use (making it sends no request)."""
        if self._client is not None:
            return self._client
        with self._client_lock:
            if self._client is None:
                pool = fail_fast_pool()
                try:
                    self._client = make_minio(self._settings, pool=pool)
                except ValueError as exc:  # an endpoint the SDK cannot parse
                    raise self._refused_configuration(exc) from None
                self._pool = pool
            return self._client

    def close(self) -> None:
        """Close the client's connections (a later call makes a new client)."""
        with self._client_lock:
            if self._pool is not None:
                self._pool.clear()
            self._client = self._pool = None

    def bucket_exists(self) -> bool:
        with self._translating("check bucket"):
            return self.client.bucket_exists(self.bucket)

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

    def stat(self, key: str) -> ObjectInfo | None:
        with self._translating("stat", key):
            try:
                found = self.client.stat_object(self.bucket, key)
            except S3Error as exc:
                if exc.code == "NoSuchKey":
                    return None
                raise
        sha256 = (found.metadata or {}).get(SHA256_METADATA)
        etag = (found.etag or "").strip('"')
        return ObjectInfo(key, int(found.size or 0), etag, str(sha256) if sha256 else None)

    def open(self, key: str) -> BinaryIO:
        with self._translating("get", key):
            response = self.client.get_object(self.bucket, key)
        raw = _ResponseStream(key, response, self._translating)
        return io.BufferedReader(raw, buffer_size=256 * 1024)

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        with self._translating("read", key):
            response = self.client.get_object(self.bucket, key)
            try:
                return response.read(), response.headers.get("ETag", "").strip('"')
            finally:
                response.close()
                response.release_conn()

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
        if if_absent or if_match is not None:
            return self._write_conditionally(key, reader, size, sha256, if_absent, if_match)
        multipart = size > self.multipart_threshold
        if multipart:  # at most 10,000 parts: very large objects need larger ones
            needed = -(-size // MAX_MULTIPART_COUNT)
            part_size = max(self.part_size, -(-needed // _MIB) * _MIB)
        else:  # a part as large as the object: one PUT
            part_size = max(size, MIN_PART_SIZE)
        with self._translating("upload", key):
            result = self.client.put_object(
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
        return ObjectInfo(key, size, str(result.etag or "").strip('"'), sha256)

    def _write_conditionally(
        self,
        key: str,
        reader: VerifyingReader,
        size: int,
        sha256: str,
        if_absent: bool,
        if_match: str | None,
    ) -> ObjectInfo:
        """One PUT with ``If-None-Match: *`` or ``If-Match: "<etag>"``."""
        if size > MAX_PART_SIZE:
            raise ValueError(f"a conditional write is one PUT of at most 5 GiB, not {size} bytes")
        headers: dict[str, str | list[str] | tuple[str]] = {
            "Content-Type": CONTENT_TYPE,
            SHA256_METADATA: sha256,
        }
        if if_match is not None:
            headers["If-Match"] = f'"{if_match}"'
        if if_absent:
            headers["If-None-Match"] = "*"
        data = reader.read_all()  # verified before anything is sent
        with self._translating("upload", key):
            try:
                # Private SDK call (bounded by pyproject's minio<7.3): the public put_object
                # turns If-Match and If-None-Match into x-amz-meta- metadata headers.
                result = self.client._put_object(  # noqa: SLF001
                    self.bucket, key, data, headers=headers
                )
            except S3Error as exc:
                # If-Match on an object that is gone is 404 NoSuchKey: the condition fails
                gone = if_match is not None and exc.code == "NoSuchKey"
                if exc.code in _PRECONDITION_CODES or gone:
                    condition = "If-None-Match: *" if if_absent else f"If-Match: {if_match}"
                    raise PreconditionFailed(self.endpoint, self.bucket, key, condition) from None
                raise
        return ObjectInfo(key, size, str(result.etag or "").strip('"'), sha256)

    def list(self, prefix: str) -> tuple[list[str], list[str]]:
        prefixes, names = [], []
        with self._translating("list", prefix):
            for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=False):
                rest = (obj.object_name or "")[len(prefix) :]
                if obj.is_dir:
                    prefixes.append(rest.rstrip("/"))
                elif rest:
                    names.append(rest)
        return sorted(prefixes), sorted(names)

    def presign(self, key: str, expires: timedelta = timedelta(hours=24)) -> tuple[str, datetime]:
        now = datetime.now(UTC).replace(microsecond=0)  # signatures count whole seconds
        with self._translating("presign", key):  # the region is set: no request is made
            url = self.client.presigned_get_object(
                self.bucket, key, expires=expires, request_date=now
            )
        return url, now + expires

    def delete(self, key: str) -> None:
        with self._translating("delete", key):
            self.client.remove_object(self.bucket, key)

    # -- errors ----------------------------------------------------------------------------

    def _refused_configuration(self, exc: ValueError) -> ObjectStoreRefused:
        reason = self._redact(str(exc))
        return ObjectStoreRefused(self.endpoint, self.bucket, "configuration", reason)

    @contextmanager
    def _translating(self, operation: str, key: str | None = None) -> Iterator[None]:
        """Turn the SDK's and the HTTP pool's failures into storage errors."""
        try:
            yield
        except HeadraceError:
            raise
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
            # Private SDK attribute (bounded by pyproject's minio<7.3): InvalidResponseError
            # keeps its HTTP status only in _code.
            status = exc.status_code if isinstance(exc, ServerError) else exc._code  # noqa: SLF001
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
    """A GET response as a raw stream, its read failures translated to storage errors."""

    def __init__(self, key: str, response: BaseHTTPResponse, translate: Translate) -> None:
        self._key, self._response, self._translate = key, response, translate

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        with self._translate("read", self._key):
            data = self._response.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._response.close()
                self._response.release_conn()
            finally:
                super().close()
