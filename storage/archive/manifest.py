"""Per-day manifests, and the file-system steps that make publishing atomic.

A day directory's ``_manifest.json`` lists its published segments::

    {"version": 1, "date": "YYYY-MM-DD", "topic": "...", "segments": [
    {<SegmentInfo fields>},          one entry a line, sorted by (partition, first_offset)
    ...
    ]}

Every change is a read-modify-write under an ``fcntl.flock`` of the day's
``_manifest.lock``, so archives in different processes (owning different
partitions of one topic) never lose each other's entries; the new manifest is
written to a temporary file, fsynced, renamed over the old one and the
directory fsynced. :func:`publish` does the whole of a segment's publication
under that lock: the conflict checks, the hard link of the finished temporary
file to its final name (which fails, never overwrites, if the name exists),
the directory fsync and the manifest entry.

The functions below the manifest's are the only file-system calls of the
write path besides plain open/write/read: a second backend replaces these.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from storage.archive.layout import (
    LOCK,
    MANIFEST,
    ArchiveConflict,
    ArchiveCorrupt,
    Compression,
    day_dirs,
    is_temp,
    topics,
)

log = logging.getLogger(__name__)

VERSION = 1
_INTS = ("partition", "first_offset", "last_offset", "records", "size")


@dataclass(frozen=True)
class SegmentInfo:
    """One published segment, as its day's manifest lists it."""

    topic: str
    partition: int
    date: str  # YYYY-MM-DD
    first_offset: int
    last_offset: int
    records: int
    name: str  # the file name
    size: int  # bytes of the published (compressed) file
    sha256: str  # of the published file's bytes
    compression: Compression
    # The partition's last archived offset when this segment was opened (None for its first
    # segment): a chain the verifier follows, because offsets alone cannot show a gap.
    previous_last_offset: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "compression": self.compression.value}

    @classmethod
    def from_json(cls, obj: Any) -> SegmentInfo:
        """ValueError if ``obj`` is not a segment entry."""
        if not isinstance(obj, dict):
            raise ValueError("a segment entry is not an object")
        if any(type(obj.get(k)) is not int for k in _INTS):
            raise ValueError(f"a segment entry has a non-integer field: {obj}")
        if any(not isinstance(obj.get(k), str) for k in ("topic", "date", "name", "sha256")):
            raise ValueError(f"a segment entry has a non-string field: {obj}")
        previous = obj.get("previous_last_offset")
        if previous is not None and type(previous) is not int:
            raise ValueError(f"a segment entry has a bad previous_last_offset: {obj}")
        return cls(
            obj["topic"],
            obj["partition"],
            obj["date"],
            obj["first_offset"],
            obj["last_offset"],
            obj["records"],
            obj["name"],
            obj["size"],
            obj["sha256"],
            Compression(str(obj.get("compression"))),
            previous,
        )


def read_manifest(day: Path) -> list[SegmentInfo]:
    """The segments a day's manifest lists ([] without one); ArchiveCorrupt if unreadable."""
    path = day / MANIFEST
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return parse_manifest(data, str(path))


def parse_manifest(data: bytes, where: str) -> list[SegmentInfo]:
    """The segments of a manifest's bytes; ArchiveCorrupt (naming ``where``) if it is not one."""
    try:
        obj = orjson.loads(data)
        if not isinstance(obj, dict) or obj.get("version") != VERSION:
            raise ValueError(f"not a version {VERSION} manifest")
        segments = obj["segments"]
        if not isinstance(segments, list):
            raise ValueError("segments is not a list")
        return [SegmentInfo.from_json(entry) for entry in segments]
    except (ValueError, KeyError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise ArchiveCorrupt(f"manifest {where} cannot be read: {exc}") from None


def manifest_bytes(topic: str, day: str, segments: list[SegmentInfo]) -> bytes:
    """A manifest listing ``segments`` (sorted by partition and first offset), one a line."""
    ordered = sorted(segments, key=lambda s: (s.partition, s.first_offset))
    head = {"version": VERSION, "date": day, "topic": topic}
    entries = b",\n".join(orjson.dumps(s.to_json()) for s in ordered)
    return orjson.dumps(head)[:-1] + b',"segments":[\n' + entries + b"\n]}\n"


def publish(day: Path, temp: Path, info: SegmentInfo) -> None:
    """Move a finished, fsynced ``temp`` file to ``info.name`` and list it in the manifest.

    A file already there under that name with the same sha256 counts as published
    (a replay made it again); with other bytes, or with offsets overlapping another
    segment of the partition, ArchiveConflict, and nothing changes.
    """
    with locked(day):
        segments = read_manifest(day)
        check_entry(str(day), segments, info)
        final = day / info.name
        if not link_new(temp, final):
            existing, _ = file_sha256(final)
            if existing != info.sha256:
                raise ArchiveConflict(
                    f"segment {final} exists with other bytes (sha256 {existing},"
                    f" not {info.sha256}); it is never overwritten"
                )
            log.info("segment %s was already published with the same bytes", final)
        fsync_dir(day)
        if all(s.name != info.name for s in segments):
            _write(day, info, [*segments, info])


def adopt(day: Path, info: SegmentInfo) -> bool:
    """List a complete segment file that is missing from its manifest (a crash between
    its rename and the manifest update); False if it is listed already."""
    with locked(day):
        segments = read_manifest(day)
        if any(s.name == info.name for s in segments):
            return False
        check_entry(str(day), segments, info)
        _write(day, info, [*segments, info])
        return True


def replace_entry(day: Path, name: str, info: SegmentInfo) -> None:
    """Replace the manifest entry of segment ``name`` by ``info`` (the same segment in
    another file, see :mod:`.compaction`); the caller holds :func:`locked`. KeyError if
    ``name`` is not listed."""
    segments = read_manifest(day)
    if all(s.name != name for s in segments):
        raise KeyError(f"{day / name} is not listed")
    _write(day, info, [info if s.name == name else s for s in segments])


def check_entry(day: str, segments: list[SegmentInfo], info: SegmentInfo) -> None:
    """ArchiveConflict if ``info`` would change a listed segment's bytes or overlap one."""
    for s in segments:
        if s.partition != info.partition:
            continue
        if s.name == info.name and s.sha256 != info.sha256:
            raise ArchiveConflict(
                f"{day}/{s.name} is published with other bytes (sha256 {s.sha256},"
                f" not {info.sha256}); it is never overwritten"
            )
        if (
            s.name != info.name
            and s.first_offset <= info.last_offset
            and info.first_offset <= s.last_offset
        ):
            raise ArchiveConflict(
                f"{day}/{info.name} (offsets {info.first_offset}-{info.last_offset}) overlaps"
                f" {s.name} ({s.first_offset}-{s.last_offset})"
            )


def _write(day: Path, info: SegmentInfo, segments: list[SegmentInfo]) -> None:
    body = manifest_bytes(info.topic, info.date, segments)
    path, file = create_temp(day, MANIFEST)
    with file:
        file.write(body)
        file.flush()
        os.fsync(file.fileno())
        os.replace(path, day / MANIFEST)
    fsync_dir(day)


# --- file-system primitives ----------------------------------------------------------


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path) -> None:
    """Create ``path`` and missing parents, fsyncing each parent so the new names last."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        fsync_dir(directory.parent)


def create_temp(directory: Path, base: str, buffering: int = -1) -> tuple[Path, BinaryIO]:
    """A new temporary file ``.<base>.<pid>-<token>.tmp``, open for writing and flock'd for
    as long as it is open, so that :func:`remove_stale_temps` leaves it alone."""
    while True:
        path = directory / f".{base}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.stat(path).st_ino == os.fstat(fd).st_ino:  # not removed before we locked it
                return path, os.fdopen(fd, "wb", buffering=buffering)
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def remove_stale_temps(root: Path) -> int:
    """Delete the temporary files under ``root`` that no live process holds (a crash's)."""
    removed = 0
    for topic in topics(root):
        for _, day in day_dirs(root, topic):
            for entry in os.scandir(day):
                if is_temp(entry.name) and entry.is_file(follow_symlinks=False):
                    removed += _remove_if_unlocked(Path(entry.path))
    return removed


def _remove_if_unlocked(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path).st_ino != os.fstat(fd).st_ino:
            return 0
        path.unlink()
        log.info("removed %s, left by a process that stopped while writing it", path)
        return 1
    except (BlockingIOError, FileNotFoundError):  # held by a live writer, or gone
        return 0
    finally:
        os.close(fd)


def link_new(temp: Path, final: Path) -> bool:
    """Give ``temp`` the name ``final`` unless that name exists (False); drop ``temp``."""
    try:
        os.link(temp, final)
        return True
    except FileExistsError:
        return False
    finally:
        temp.unlink(missing_ok=True)


def file_sha256(path: Path) -> tuple[str, int]:
    """The sha256 and size of a file's bytes."""
    with path.open("rb") as file:
        digest = hashlib.file_digest(file, "sha256")
        return digest.hexdigest(), os.fstat(file.fileno()).st_size


@contextmanager
def locked(day: Path) -> Iterator[None]:
    """Hold the day directory's manifest lock (blocking)."""
    fd = os.open(day / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
