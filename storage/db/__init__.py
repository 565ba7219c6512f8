"""The load group's database: file, run and ledger rows in SQLite or PostgreSQL.

:func:`open_database` picks the backend from ``settings.load``; callers use
the :class:`~storage.db.base.Database` contract only. :mod:`.rows` turns
decoded events into rows, :mod:`.migrations` holds the schema. Errors::

    StorageError (headrace.errors)
     └── DatabaseError            the load database failed
          ├── DatabaseUnavailable  no connection, connection lost, locked too long  (transient)
          ├── ConstraintViolation  a row the schema refuses                         (terminal)
          │    └── LedgerConflict   a ledger entry for offsets loaded already        (terminal)
          └── UnresolvableEvent    an event that cannot become a row                (terminal)
               ├── WrongContent     content that is not the event's                (terminal)
               └── InvalidEvent     a field no event can have                      (terminal)
"""

from __future__ import annotations

from headrace.settings import Settings
from storage.db.base import (
    Database,
    DatabaseCapabilities,
    DbStats,
    DeleteMode,
    TopicPartition,
    WriteResult,
)
from storage.db.errors import (
    ConstraintViolation,
    DatabaseError,
    DatabaseUnavailable,
    InvalidEvent,
    LedgerConflict,
    UnresolvableEvent,
    WrongContent,
)
from storage.db.rows import ContentMode, FileRow, LedgerEntry, RunRow, file_row, run_row

__all__ = [
    "ConstraintViolation",
    "ContentMode",
    "Database",
    "DatabaseCapabilities",
    "DatabaseError",
    "DatabaseUnavailable",
    "DbStats",
    "DeleteMode",
    "FileRow",
    "LedgerConflict",
    "LedgerEntry",
    "RunRow",
    "TopicPartition",
    "InvalidEvent",
    "UnresolvableEvent",
    "WrongContent",
    "WriteResult",
    "file_row",
    "open_database",
    "run_row",
]


def open_database(settings: Settings, *, migrate: bool = False) -> Database:
    """The database ``settings.load.backend`` names; with ``migrate``, its schema brought
    up to date (closed again if that fails)."""
    database = _open(settings)
    if migrate:
        try:
            database.migrate()
        except BaseException:
            database.close()
            raise
    return database


def _open(settings: Settings) -> Database:
    load = settings.load
    if load.backend == "postgres":
        from storage.db.postgres import PostgresDatabase  # psycopg only when it is used

        return PostgresDatabase(
            settings.postgres, deletes=load.deletes, schema=load.postgres_schema
        )
    from storage.db.sqlite import SqliteDatabase

    return SqliteDatabase(load.sqlite_path, deletes=load.deletes)
