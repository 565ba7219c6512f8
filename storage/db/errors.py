"""The database layer's errors.

::

    StorageError (headrace.errors)
     └── DatabaseError            the load database failed
          ├── DatabaseUnavailable  no connection, connection lost, locked too long  (transient)
          ├── ConstraintViolation  a row the schema refuses                         (terminal)
          │    └── LedgerConflict   a ledger entry for offsets loaded already        (terminal)
          └── UnresolvableEvent    an event that cannot become a row                (terminal)
               ├── WrongContent     content that is not the event's (bytes, size)    (terminal)
               └── InvalidEvent     a field no event can have (size, checksum, NUL)  (terminal)

Every message is one line. It never holds SQL, row data or a connection
string: the backends build it from the driver's primary message and the
names of the constraint and table.
"""

from __future__ import annotations

from headrace.errors import StorageError, Terminal, Transient

MAX_MESSAGE = 300


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class DatabaseError(StorageError):
    """Any failure of the load database."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class DatabaseUnavailable(DatabaseError, Transient):
    """The database did not answer, dropped the connection or stayed locked: retry later.
    The next call reconnects."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"database {where} is unavailable: {reason}")
        self.where = where
        self.reason = one_line(reason)


class ConstraintViolation(DatabaseError, Terminal):
    """The database refused a row (a check, a key, a NOT NULL, a value it cannot store).
    Nothing of the write landed; the connection stays usable."""

    def __init__(self, reason: str, *, constraint: str | None = None) -> None:
        super().__init__(f"the database refused the write: {reason}")
        self.reason = one_line(reason)
        self.constraint = constraint


class LedgerConflict(ConstraintViolation):
    """A ledger entry that is there already: those offsets were loaded (a replay that
    did not start from :meth:`Database.positions`, or a second writer)."""


class UnresolvableEvent(DatabaseError, Terminal):
    """An event that cannot be turned into a row; the message says why."""

    dead_letter_reason = "PAYLOAD_MISSING"  # what a row needs is not in the event

    def __init__(self, topic: str, partition: int, offset: int, reason: str) -> None:
        super().__init__(f"cannot load {topic}[{partition}]@{offset}: {reason}")
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.reason = reason


class WrongContent(UnresolvableEvent):
    """The event's content does not match its own checksum or size: never loaded."""

    dead_letter_reason = "CHECKSUM_MISMATCH"


class InvalidEvent(UnresolvableEvent):
    """A field no event can have: a negative size, a checksum that is not a sha256, a NUL
    in a text. The consumer runtime refuses these before any sink (schemas.validation);
    this is the row builder's own line, for callers that bypass the runtime."""

    dead_letter_reason = "INVALID_EVENT"
