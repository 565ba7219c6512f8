"""An :class:`~storage.objectstore.base.ObjectStorage` in memory, for unit tests.

It keeps the rules of the real service: writes need the bucket (:meth:`ensure_bucket`),
every write is verified as sent (see :mod:`.base`), conditional writes raise
:class:`~storage.errors.PreconditionFailed`, ETags are the MD5 of the bytes (as S3's
for one PUT) and ``stat`` reports the sha256 metadata given at upload, not a hash of
the bytes held. Reads of a bucket not yet made find nothing.

``objects`` may be edited by tests; :meth:`MemoryStorage.overwrite` changes an
object's bytes behind the store's back (ETag and metadata kept), as a disk fault or
another writer would.
"""

from __future__ import annotations

import hashlib
import io
import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import BinaryIO

from storage.errors import ObjectNotFound, ObjectStoreRefused, PreconditionFailed
from storage.objectstore.base import ObjectInfo, ObjectStorage, VerifyingReader

MAX_PRESIGN = timedelta(days=7)


@dataclass(frozen=True)
class MemoryObject:
    """One stored object: its bytes, ETag and sha256 metadata."""

    data: bytes
    etag: str
    sha256: str | None


class MemoryStorage(ObjectStorage):
    """A bucket in memory with the service's rules (unit tests, dry runs)."""

    endpoint = "memory"

    def __init__(self, bucket: str = "headrace-test") -> None:
        self.bucket = bucket
        self.location = f"memory://{bucket}"
        self.bucket_created = False
        self.objects: dict[str, MemoryObject] = {}
        self._lock = threading.Lock()

    def bucket_exists(self) -> bool:
        return self.bucket_created

    def ensure_bucket(self) -> None:
        self.bucket_created = True

    def stat(self, key: str) -> ObjectInfo | None:
        found = self.objects.get(key)
        return None if found is None else ObjectInfo(key, len(found.data), found.etag, found.sha256)

    def open(self, key: str) -> BinaryIO:
        return io.BytesIO(self._found(key).data)

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        found = self._found(key)
        return found.data, found.etag

    def _found(self, key: str) -> MemoryObject:
        try:
            return self.objects[key]
        except KeyError:
            raise ObjectNotFound(self.endpoint, self.bucket, key) from None

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
        if not self.bucket_created:
            reason = "NoSuchBucket: no such bucket (the bucket must exist first: ensure_bucket)"
            raise ObjectStoreRefused(self.endpoint, self.bucket, "upload", reason, key=key)
        data = reader.read_all()  # verified: ContentMismatch before anything is stored
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        with self._lock:
            found = self.objects.get(key)
            if if_absent and found is not None:
                raise PreconditionFailed(self.endpoint, self.bucket, key, "If-None-Match: *")
            if if_match is not None and (found is None or found.etag != if_match):
                raise PreconditionFailed(self.endpoint, self.bucket, key, f"If-Match: {if_match}")
            self.objects[key] = MemoryObject(data, etag, sha256)
        return ObjectInfo(key, size, etag, sha256)

    def list(self, prefix: str) -> tuple[list[str], list[str]]:
        prefixes: set[str] = set()
        names: set[str] = set()
        for key in list(self.objects):
            if key.startswith(prefix):
                head, sep, _ = key[len(prefix) :].partition("/")
                (prefixes if sep else names).add(head)
        return sorted(prefixes), sorted(names)

    def presign(self, key: str, expires: timedelta = timedelta(hours=24)) -> tuple[str, datetime]:
        if not timedelta(seconds=1) <= expires <= MAX_PRESIGN:
            raise ValueError("expires must be between 1 second and 7 days")
        expiry = datetime.now(UTC).replace(microsecond=0) + expires
        return f"memory://{self.bucket}/{key}?expires={int(expiry.timestamp())}", expiry

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    def overwrite(self, key: str, data: bytes) -> None:
        """Replace an object's bytes behind the store's back: its ETag and sha256 metadata
        stay, so that only reading the bytes shows the change (tests of verification)."""
        self.objects[key] = replace(self._found(key), data=bytes(data))
