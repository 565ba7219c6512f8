"""The producer's errors.

::

    HeadraceError
     ├── ProduceError (headrace.errors)
     │    ├── UndeliveredEvents   some events were not acknowledged by Kafka
     │    ├── TransactionAborted  a batch's transaction could not commit: aborted
     │    └── Fenced              another producer took the run's transactional id
     ├── SourceError              the source cannot be read as given    (terminal)
     ├── TableError               a table cannot be archived as given   (terminal)
     │    ├── TableNotFound       no such table in the source database
     │    ├── NoPrimaryKey        the table has no primary key to delete rows by
     │    └── TimestampColumnError  no usable timestamp column (missing, wrong type, ambiguous)
     ├── BatchTimeout             a batch outlived its transaction timeout  (transient)
     ├── RestoreError             a restore wrote nothing: rolled back
     │    ├── RestoreRefused      the archived rows do not fit the target as given (terminal)
     │    └── RestoreTimeout      a lock or statement outlived its timeout      (transient)
     └── ArchiveUnconfirmed       the archive did not confirm a batch: rolled back, rows kept
          ├── ArchiveNotRunning   no member of the archive group is running (transient)
          ├── ArchiveTimeout      the batch was not durably archived in time  (transient)
          └── VerificationFailed  counts or checksums read back differ        (terminal)
"""

from __future__ import annotations

from headrace.errors import HeadraceError, ProduceError, Terminal, Transient


class SourceError(HeadraceError, Terminal):
    """The source does not exist, is not a repository, or has no such ref."""


class TransactionAborted(ProduceError):
    """A batch's transaction could not commit and was aborted: none of it is visible."""


class Fenced(ProduceError, Terminal):
    """Another producer with the run's transactional id started: this one must stop."""


class UndeliveredEvents(ProduceError):
    """Kafka did not acknowledge every event; names the files."""

    def __init__(self, paths: list[str], reason: str) -> None:
        shown = ", ".join(paths[:10]) + (f" and {len(paths) - 10} more" if len(paths) > 10 else "")
        super().__init__(f"{len(paths)} events were not delivered ({reason}): {shown}")
        self.paths = paths


class TableError(HeadraceError, Terminal):
    """A table cannot be archived as given: the message is one line naming it."""


class TableNotFound(TableError):
    """The source database has no such table (or the user may not see it)."""


class NoPrimaryKey(TableError):
    """The table has no primary key: its rows could not be deleted one by one, exactly."""


class TimestampColumnError(TableError):
    """The timestamp column is missing, not a timestamp, or cannot be chosen alone."""


class BatchTimeout(HeadraceError, Transient):
    """A batch's transaction outlived ``tables.batch_timeout_s``: rolled back, rows kept."""


class RestoreError(HeadraceError):
    """``headrace restore-table`` could not write its rows: rolled back, nothing written."""


class RestoreRefused(RestoreError, Terminal):
    """The archived rows do not fit the target: a column, a type, the key, a constraint."""


class RestoreTimeout(RestoreError, Transient):
    """The restore's transaction waited past ``tables.lock_timeout_s`` for a lock, or a
    statement ran past ``tables.statement_timeout_s``."""


class ArchiveUnconfirmed(HeadraceError):
    """The archive did not confirm a batch: it was rolled back, its rows stay."""

    reason = "unconfirmed"  # the metrics' label


class ArchiveNotRunning(ArchiveUnconfirmed, Transient):
    """The archive group has no running member: nothing would archive the batch."""


class ArchiveTimeout(ArchiveUnconfirmed, Transient):
    """The batch's records were not all durably archived within the archive timeout."""

    reason = "timeout"


class VerificationFailed(ArchiveUnconfirmed, Terminal):
    """What the archive holds differs from the rows selected (counts or checksums)."""

    def __init__(self, message: str, reason: str = "count") -> None:
        super().__init__(message)
        self.reason = reason  # count or checksum
