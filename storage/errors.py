"""The storage package's errors.

::

    HeadraceError
     └── StorageError (headrace.errors)
          └── ObjectStoreError          the content-addressed object store failed
               ├── ObjectStoreUnavailable   no answer, timeout, 5xx, SlowDown       (transient)
               ├── ObjectStoreRefused       access denied, bad credentials or bucket (terminal)
               ├── ObjectNotFound           no object under that key                 (terminal)
               └── ContentMismatch          bytes that do not hash to their key      (terminal)

Every message is one line naming the endpoint and the bucket. Messages are
built from what the caller passes in: the object store module redacts its
details first, so that no secret key or presigned-URL signature reaches them.
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
    """Bytes do not match their content key: the file changed after it was hashed, or
    the stored object is not what its key says. Nothing is stored under a wrong key."""

    def __init__(self, endpoint: str, bucket: str, key: str, reason: str) -> None:
        super().__init__(
            f"content of {bucket}/{key} at {endpoint} does not match its key: {reason}",
            endpoint=endpoint,
            bucket=bucket,
            key=key,
        )
        self.reason = reason
