"""The producer's contract: sources offer candidate files; the policy and the
content planner decide what each becomes.

A :class:`Candidate` is one file a source offers, before any decision. A
source also says what it is (:class:`SourceInfo`) and, for incremental
ingests, which paths were deleted.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, runtime_checkable

from producers.runs import Probe
from schemas.models import FileEvent, RunEvent

if TYPE_CHECKING:
    from producers.prepare import EncodedFile


def file_signature(found: os.stat_result) -> tuple[int, int, int, int]:
    """What changes when a file is written: size, modification time, inode, and the
    status change time (which also moves when the modification time is set back)."""
    return found.st_size, found.st_mtime_ns, found.st_ino, found.st_ctime_ns


class SourceKind(StrEnum):
    DIRECTORY = "directory"
    GIT = "git"  # a local git repository
    GIT_URL = "git_url"  # a remote repository, cloned through the git cache


@dataclass(frozen=True)
class SourceInfo:
    kind: SourceKind
    location: str  # a directory, or a credential-free URL: safe to publish
    project: str  # the default project name
    commit: str | None = None
    ref: str | None = None


@dataclass(frozen=True)
class Candidate:
    """One file as the source offers it."""

    path: str  # '/'-separated, relative to the source root
    size: int
    open: Callable[[], BinaryIO]  # a fresh stream of the file's bytes
    local_path: Path | None = None  # where it is on this disk, if it is
    blob_id: str | None = None  # its git blob id, for git sources
    skip: str | None = None  # a reason the source already knows (symlink outside the root)
    detail: str | None = None  # words for that reason
    # (size, mtime_ns, inode, ctime_ns) of local_path as the walk saw it: a change since
    # shows when the file is read, without a stat of its own before the read
    signature: tuple[int, int, int, int] | None = None


class Source(Protocol):
    def info(self) -> SourceInfo: ...

    def candidates(self) -> Iterator[Candidate]:
        """The files to consider, in a stable order."""
        ...

    def deleted(self) -> list[str]:
        """Paths deleted since the incremental base (empty for a full ingest)."""
        ...

    def changes_since(self, commit: str) -> bool:
        """Offer only what changed since ``commit`` (git sources); False if it cannot
        (a directory, or a commit the repository does not have): a full run."""
        ...


class EventSink(Protocol):
    """Where a run's events go: Kafka (:class:`producers.publisher.Publisher`) or a test."""

    def file(self, event: FileEvent) -> None: ...

    def run(self, event: RunEvent) -> None: ...

    def flush(self, timeout_s: float = 120.0) -> dict[str, str]:
        """Wait for delivery; return what was not delivered, and why."""
        ...

    def prepare(self, timeout_s: float = 120.0) -> tuple[dict[str, str], Probe | None]:
        """Flush the open batch: what was not delivered, and where its first record is."""
        ...

    def commit(self) -> None:
        """Commit the open batch; TransactionAborted if it could not (then aborted)."""
        ...

    def abort(self) -> None:
        """Abort the open batch: none of it becomes visible."""
        ...

    def committed(self, probe: Probe, timeout_s: float = 60.0) -> bool:
        """Whether the batch whose first record is at ``probe`` committed."""
        ...


@runtime_checkable
class EncodedSink(EventSink, Protocol):
    """A sink that publishes an inline file's event as the Avro body a worker encoded
    (:class:`producers.prepare.EncodedFile`), not encoding it again; a sink without
    this method is given the event the body holds."""

    def encoded(self, file: EncodedFile) -> None: ...
