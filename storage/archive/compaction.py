"""Compaction: old days' plain segments are compressed in place.

With :attr:`~storage.archive.ArchivePolicy.plain_days` the writer publishes segments
plain (cheap to write, easy to inspect); :func:`compress_old` later compresses the
plain segments of every local day older than ``older_than_days``. Each segment moves
under its day's manifest lock, in an order that a crash at any point leaves with the
plain or the compressed file listed and present, never neither:

1. the plain file is checked against its manifest entry (size, sha256);
2. the compressed file is written to a temporary file, fsynced and linked to its
   final name (the directory fsynced);
3. it is decompressed in full and its bytes' sha256 compared with the plain file's;
4. the manifest entry is replaced (name, size, sha256, compression), atomically;
5. only then is the plain file removed.

A run that finds both files (a crash after 2 or after 4) finishes the job: a
compressed file that decompresses to the plain bytes is kept, one that does not is
an :class:`ArchiveConflict` and nothing changes. Cold days (:mod:`.retention`) are
left alone. Between steps 2 and 5 a concurrent :func:`~storage.archive.read` may see
the segment's records twice (it reads the files on disk).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from storage.archive.layout import (
    ArchiveConflict,
    ArchiveCorrupt,
    Compression,
    day_dirs,
    segment_name,
    topics,
)
from storage.archive.manifest import (
    SegmentInfo,
    create_temp,
    file_sha256,
    fsync_dir,
    link_new,
    locked,
    read_manifest,
    replace_entry,
)
from storage.archive.reader import chunks
from storage.archive.retention import read_cold_marker
from storage.archive.segments import compress_file

log = logging.getLogger(__name__)


def compress_old(
    root: Path,
    *,
    older_than_days: int,
    compression: Compression = Compression.ZSTD,
    today: date | None = None,
) -> list[str]:
    """Compress the plain segments of every local day older than ``older_than_days``
    (before ``today`` minus that many days; today is the UTC date by default); the dates
    changed, sorted, once each. A second run does nothing."""
    if older_than_days < 0:
        raise ValueError(f"older_than_days must not be negative: {older_than_days}")
    compression = Compression(compression)
    if compression is Compression.NONE:
        raise ValueError("compress_old needs a codec, not Compression.NONE")
    today = today if today is not None else datetime.now(UTC).date()
    cutoff = (today - timedelta(days=older_than_days)).isoformat()
    changed: set[str] = set()
    for topic in topics(root):
        for day, directory in day_dirs(root, topic):
            if day < cutoff and _compress_day(directory, compression):
                changed.add(day)
    return sorted(changed)


def _compress_day(directory: Path, compression: Compression) -> bool:
    with locked(directory):
        try:
            if read_cold_marker(directory) is not None:
                return False
            segments = read_manifest(directory)
        except ArchiveCorrupt as exc:
            log.error("%s is not compressed: %s", directory, exc)
            return False
        changed = False
        for s in segments:
            if s.compression is Compression.NONE:
                changed |= _compress_segment(directory, s, compression)
            else:
                changed |= _remove_leftover_plain(directory, s)
        return changed


def _compress_segment(directory: Path, s: SegmentInfo, compression: Compression) -> bool:
    plain = directory / s.name
    try:
        sha256, size = file_sha256(plain)
    except FileNotFoundError:
        log.error("%s is listed but missing: not compressed (verify it)", plain)
        return False
    if (size, sha256) != (s.size, s.sha256):
        log.error("%s differs from its manifest entry: not compressed (verify it)", plain)
        return False
    name = segment_name(s.topic, s.partition, s.first_offset, compression)
    final = directory / name
    if not final.exists():
        temp, out = create_temp(directory, name)
        try:
            with out:
                compress_file(plain, out, compression)
            link_new(temp, final)  # drops temp; the name is free under the lock
        finally:
            temp.unlink(missing_ok=True)
        fsync_dir(directory)
    else:
        log.warning("%s exists already (a run stopped midway): finishing", final)
    if _decompressed_sha256(final, compression) != sha256:
        raise ArchiveConflict(
            f"{final} does not decompress to the bytes of {plain}; neither is changed"
        )
    packed_sha256, packed_size = file_sha256(final)
    info = replace(s, name=name, size=packed_size, sha256=packed_sha256, compression=compression)
    replace_entry(directory, s.name, info)  # atomic, fsynced
    _remove(plain)
    fsync_dir(directory)
    log.info("compressed %s to %s (%s -> %s bytes)", s.name, name, size, packed_size)
    return True


def _remove_leftover_plain(directory: Path, s: SegmentInfo) -> bool:
    """Remove the plain file of a listed compressed segment (a run stopped after the
    manifest update) once the compressed file is checked to hold its bytes."""
    plain = directory / segment_name(s.topic, s.partition, s.first_offset, Compression.NONE)
    if not plain.exists():
        return False
    packed = directory / s.name
    if file_sha256(packed)[0] != s.sha256 or (
        _decompressed_sha256(packed, s.compression) != file_sha256(plain)[0]
    ):
        log.error("%s is left: %s does not hold its bytes (verify it)", plain, s.name)
        return False
    _remove(plain)
    fsync_dir(directory)
    log.warning("removed %s, left by a run that stopped after compressing it", plain)
    return True


def _remove(path: Path) -> None:
    path.unlink()


def _decompressed_sha256(path: Path, compression: Compression) -> str:
    """The sha256 of a segment file's decompressed bytes; ArchiveCorrupt if it does not
    decompress."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in chunks(file, compression, path):
            digest.update(chunk)
    return digest.hexdigest()
