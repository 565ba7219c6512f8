"""Why a file's content could not be had.

::

    StorageError (headrace.errors)
     └── ContentError                 content could not be resolved
          ├── ContentUnavailable       store or remote down, timed out (transient)
          ├── PayloadMissing           nothing holds the bytes any more (terminal)
          ├── ChecksumMismatch         bytes that are not the event's (terminal)
          └── ContentRefused           a hostile or disallowed reference (terminal)

Each names the dead-letter reason a consumer gives the event it failed on.
Messages are one line and never hold a credential or a presigned signature.
"""

from __future__ import annotations

from headrace.errors import StorageError, Terminal, Transient


class ContentError(StorageError):
    """Content could not be resolved; ``path`` is the event's file path."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(" ".join(f"content of {path!r}: {reason}".split()))
        self.path = path
        self.reason = reason


class ContentUnavailable(ContentError, Transient):
    """The store or the remote did not answer, or answered with a server error."""


class PayloadMissing(ContentError, Terminal):
    """No place holds the bytes: an object or blob that is gone, an expired URL with
    no credentials to sign again, a v1 event's path that is not readable here."""

    dead_letter_reason = "PAYLOAD_MISSING"


class ChecksumMismatch(ContentError, Terminal):
    """Bytes were found, but their sha256 or size is not the event's: never handed out.
    What was found is kept where it is known (all of it was read)."""

    dead_letter_reason = "CHECKSUM_MISMATCH"

    def __init__(
        self,
        path: str,
        reason: str,
        *,
        actual_sha256: str | None = None,
        actual_size: int | None = None,
    ) -> None:
        super().__init__(path, reason)
        self.actual_sha256, self.actual_size = actual_sha256, actual_size


class ContentRefused(ContentError, Terminal):
    """A reference that is not fetched: a host that is not a configured object store,
    a git scheme not allowed, a ref or path that looks like an option or escapes the
    tree, a size above the configured maximum."""

    dead_letter_reason = "REFUSED"
