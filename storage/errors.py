"""The storage package's errors.

::

    HeadraceError
     └── StorageError (headrace.errors)
          └── ObjectStoreError          object storage (storage.objectstore) failed
               ├── ObjectStoreUnavailable   no answer, timeout, 5xx, SlowDown       (transient)
               ├── ObjectStoreRefused       access denied, bad credentials or bucket (terminal)
               ├── ObjectNotFound           no object under that key                 (terminal)
               ├── ContentMismatch          bytes that do not hash to their sha256   (terminal)
               └── PreconditionFailed       a conditional write found the object changed
                                            (412, ConditionalRequestConflict): read it
                                            again and retry the compare-and-swap     (terminal)

Every message is one line naming the endpoint and the bucket. Messages are
built from what the caller passes in: the object-storage adapter
(:mod:`storage.objectstore.minio`) redacts its details first, so that no secret
key or presigned-URL signature reaches them.
"""

from __future__ import annotations

from headrace.errors import StorageError, Terminal, Transient


def _one_line(text: str) -> str:
    return " ".join(text.split())


class ObjectStoreError(StorageError):
    """Any failure of the object store; names where it happened."""

    def __init__(self, message: str, *, endpoint: str, bucket: str, key: str | None) -> None:
        super().__init__(_one_line(message))
        self.endpoint = endpoint
        self.bucket = bucket
        self.key = key


class _OperationFailed(ObjectStoreError):
    """A failed operation on a bucket or key; subclasses say how it failed."""

    _template = "object store at {endpoint} failed {operation} {where}: {reason}"

    def __init__(
        self, endpoint: str, bucket: str, operation: str, reason: str, *, key: str | None = None
    ) -> None:
        where = f"{bucket}/{key}" if key else bucket
        super().__init__(
            self._template.format(
                endpoint=endpoint, operation=operation, where=where, reason=reason
            ),
            endpoint=endpoint,
            bucket=bucket,
            key=key,
        )
        self.operation = operation
        self.reason = reason


class ObjectStoreUnavailable(_OperationFailed, Transient):
    """The store did not answer, timed out, or said it is busy or failing (5xx, SlowDown)."""

    _template = "object store at {endpoint} is unavailable ({operation} {where}): {reason}"


class ObjectStoreRefused(_OperationFailed, Terminal):
    """The store refused the request: credentials, permissions, bucket name or bucket missing."""

    _template = "object store at {endpoint} refused {operation} {where}: {reason}"


class ObjectNotFound(ObjectStoreError, Terminal):
    """No object is stored under the key asked for."""

    def __init__(self, endpoint: str, bucket: str, key: str) -> None:
        super().__init__(
            f"object store at {endpoint} has no object {key} in bucket {bucket}",
            endpoint=endpoint,
            bucket=bucket,
            key=key,
        )


class ContentMismatch(ObjectStoreError, Terminal):
    """Bytes do not match their sha256 (a content key, or the sha256 given with an upload):
    the file changed after it was hashed, or the stored object is not what its key says.
    Nothing is stored under a wrong key."""

    def __init__(self, endpoint: str, bucket: str, key: str, reason: str) -> None:
        super().__init__(
            f"content of {bucket}/{key} at {endpoint} does not match its key: {reason}",
            endpoint=endpoint,
            bucket=bucket,
            key=key,
        )
        self.reason = reason


class PreconditionFailed(ObjectStoreError, Terminal):
    """A conditional write (``if_absent`` or ``if_match``) found the object in another
    state: it exists, or its ETag changed. Not retried as such: the caller reads the
    object again and decides (a compare-and-swap loop)."""

    def __init__(self, endpoint: str, bucket: str, key: str, condition: str) -> None:
        super().__init__(
            f"object store at {endpoint} did not write {bucket}/{key}: {condition} does not hold",
            endpoint=endpoint,
            bucket=bucket,
            key=key,
        )
        self.condition = condition
