"""The archive: append-only, date-partitioned, compressed, self-verifying segments of
Kafka records, under a local directory or in object storage (:mod:`.backend`).

::

    <root>/<topic>/dt=YYYY-MM-DD/<topic>+<partition>+<first_offset:020d>.jsonl[.zst|.gz]
    <root>/<topic>/dt=YYYY-MM-DD/_manifest.json

:class:`Archive` writes (:mod:`.segments`: open segments, rotation, atomic
publish), :mod:`.manifest` keeps each day's list of published segments,
:func:`read` streams records back and :func:`verify` checks files against
manifests. :func:`compress_old` compresses old days' segments that were
published plain (:attr:`ArchivePolicy.plain_days`, :mod:`.compaction`).
:func:`retain` moves old days to a cold tier in object storage
(:mod:`.retention`; never deleting) and :func:`request_deletion` records a
request to delete a day. Names, paths, the line format and the errors are in
:mod:`.layout`::

    StorageError (headrace.errors)
     └── ArchiveError
          ├── ArchiveConflict     a segment exists with other bytes, or offsets overlap (terminal)
          ├── ArchiveCorrupt      a published file or manifest does not read back       (terminal)
          ├── ArchiveRecordError  a record that cannot be archived as given             (terminal)
          └── ArchiveWriteError   the file system refused a write                       (transient)
"""

from storage.archive.backend import (
    Backend,
    LocalBackend,
    ObjectBackend,
    open_backend,
)
from storage.archive.compaction import compress_old
from storage.archive.layout import (
    ArchiveConflict,
    ArchiveCorrupt,
    ArchiveError,
    ArchiveRecord,
    ArchiveRecordError,
    ArchiveWriteError,
    Compression,
)
from storage.archive.manifest import SegmentInfo
from storage.archive.reader import ArchivedLine, read
from storage.archive.retention import (
    ColdMarker,
    ColdObject,
    ColdStore,
    MemoryColdStore,
    read_cold_marker,
    request_deletion,
    retain,
)
from storage.archive.segments import DEFAULT_POLICY, Archive, ArchivePolicy
from storage.archive.verify import Problem, ProblemKind, verify

__all__ = [
    "DEFAULT_POLICY",
    "Archive",
    "ArchiveConflict",
    "ArchiveCorrupt",
    "ArchiveError",
    "ArchivePolicy",
    "ArchiveRecord",
    "ArchiveRecordError",
    "ArchiveWriteError",
    "ArchivedLine",
    "Backend",
    "LocalBackend",
    "ObjectBackend",
    "open_backend",
    "ColdMarker",
    "ColdObject",
    "ColdStore",
    "Compression",
    "MemoryColdStore",
    "Problem",
    "ProblemKind",
    "SegmentInfo",
    "compress_old",
    "read",
    "read_cold_marker",
    "request_deletion",
    "retain",
    "verify",
]
