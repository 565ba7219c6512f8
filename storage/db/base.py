"""The contract of a load database, and the rules every backend shares.

A write is one transaction: file rows, run rows and the ledger entries that
say which offsets they came from land together or not at all, so a consumer
that starts from :meth:`Database.positions` loads every record exactly once
in effect. Versions are ordered by ``(event_time_ms, source_offset)``: a row
is replaced only by a strictly newer one, so a repeated event changes nothing
(not even ``updated_at``) and an older one never overwrites a newer one.
:meth:`Database.write` keeps only the newest version of each file (and run)
of a batch before a backend sees it.

Deletes (:class:`DeleteMode`): ``mark`` keeps a deleted file as a row with
``deleted`` set, ``sha256 = ''``; ``remove`` drops the row and keeps a
tombstone with the delete's order key, so that an older version arriving
later does not bring the file back (a newer one does, and clears it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

from storage.db.rows import FileRow, LedgerEntry, RunRow

TopicPartition = tuple[str, int]
_Row = TypeVar("_Row", FileRow, RunRow)


class DeleteMode(StrEnum):
    MARK = "mark"
    REMOVE = "remove"


@dataclass(frozen=True)
class DatabaseCapabilities:
    """What a backend offers, read by generic code instead of isinstance checks."""

    name: str
    bulk_copy: bool  # rows travel by COPY, not one statement per row
    concurrent_writers: bool  # several processes can write at once without waiting
    max_batch: int = 50_000


@dataclass(frozen=True)
class WriteResult:
    files_written: int  # inserted, replaced, marked deleted or removed
    files_skipped_older: int  # not newer than what is stored (duplicates included)
    runs_written: int


@dataclass(frozen=True)
class DbStats:
    backend: str
    schema_version: int
    files: int  # live files (not deleted)
    deleted: int  # rows marked deleted
    tombstones: int  # removed files (deletes = remove)
    by_strategy: dict[str, int] = field(default_factory=dict)  # live files; "NONE" for v1 data
    runs: int = 0
    projects: int = 0  # with a live file
    ledger_rows: int = 0
    last_committed_at: datetime | None = None
    size_bytes: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        when = self.last_committed_at
        data["last_committed_at"] = when.isoformat(timespec="seconds") if when else None
        return data


def order_key(row: FileRow | RunRow) -> tuple[int, int]:
    """Which of two versions is newer: event time, then the offset."""
    return (row.event_time_ms, row.source_offset)


def _file_key(row: FileRow) -> Hashable:
    return (row.project, row.path)


def _run_key(row: RunRow) -> Hashable:
    return (row.run_id, row.kind)


def newest_only(rows: Iterable[_Row]) -> list[_Row]:
    """The newest version of each file (or run), sorted by key: one statement may
    touch a row only once, and a fixed order keeps concurrent writers from deadlocking."""
    newest: dict[Any, _Row] = {}
    for row in rows:
        key = _file_key(row) if isinstance(row, FileRow) else _run_key(row)
        old = newest.get(key)
        if old is None or order_key(row) > order_key(old):
            newest[key] = row
    return [newest[key] for key in sorted(newest)]


class Database(ABC):
    """A load database. Backends implement the abstract methods; :meth:`write`
    reduces the batch and counts what was skipped."""

    capabilities: ClassVar[DatabaseCapabilities]

    def __init__(self, deletes: DeleteMode | str = DeleteMode.MARK) -> None:
        self.deletes = DeleteMode(deletes)

    @abstractmethod
    def migrate(self, target: int | None = None) -> list[int]:
        """Apply the missing migrations (up to ``target``), one transaction each; the
        versions applied now. Safe to call from several processes at once."""

    def write(
        self,
        files: Sequence[FileRow],
        runs: Sequence[RunRow] = (),
        ledger: Sequence[LedgerEntry] = (),
    ) -> WriteResult:
        """Everything in one transaction: rows and ledger entries land together or not at all."""
        newest_files, newest_runs = newest_only(files), newest_only(runs)
        written, runs_written = self._write(newest_files, newest_runs, ledger)
        return WriteResult(written, len(files) - written, runs_written)

    def replace(self, files: Sequence[FileRow], absent: Sequence[tuple[str, str]] = ()) -> int:
        """Store exactly these rows, whatever is stored for their paths, and no row for
        the (project, path) keys in ``absent`` (a repair, the restore of a backup): the
        paths' rows and tombstones go first, in the same transaction. Unlike
        :meth:`write` this is not order-safe: it is for operators. Returns the rows
        written."""
        return self._replace(newest_only(files), list(absent))

    @abstractmethod
    def _replace(self, files: list[FileRow], absent: list[tuple[str, str]]) -> int:
        """One transaction: remove the rows and tombstones of ``files``' paths and of
        ``absent``, write ``files``."""

    @abstractmethod
    def _write(
        self, files: list[FileRow], runs: list[RunRow], ledger: Sequence[LedgerEntry]
    ) -> tuple[int, int]:
        """One transaction; ``files`` and ``runs`` hold one version per key, sorted.
        Returns (file rows changed, run rows changed)."""

    @abstractmethod
    def positions(
        self, group: str, topic_partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """Per partition with ledger entries of ``group``: the next offset to load."""

    @abstractmethod
    def stats(self) -> DbStats: ...

    @abstractmethod
    def query(
        self,
        project: str,
        path_glob: str | None = None,
        include_deleted: bool = False,
        limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Rows of ``project`` in path order, as dicts of the FileRow fields and
        ``updated_at`` (an aware datetime). ``path_glob`` has fnmatch semantics
        (case-sensitive, ``*`` crosses ``/``): its literal prefix narrows the query
        in SQL, the whole pattern is matched in Python."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def glob_prefix(pattern: str) -> str:
    """The literal start of an fnmatch pattern, before its first ``*``, ``?`` or ``[``."""
    cut = min((i for i in (pattern.find(c) for c in "*?[") if i >= 0), default=len(pattern))
    return pattern[:cut]
