"""Retention: old days move to a cold tier in object storage; nothing is ever deleted.

:func:`retain` moves every day directory older than ``older_than_days`` to a
:class:`ColdStore`, under plain keys (these are archive files, not content)::

    archive/<topic>/dt=YYYY-MM-DD/<segment file name>
    archive/<topic>/dt=YYYY-MM-DD/_manifest.json

A day moves under its manifest lock, in an order that a crash at any point
leaves safe and a later run finishes:

1. every local segment is checked against its manifest entry (size, sha256); a
   day with an unreadable manifest or a missing, unlisted or damaged segment does
   not move (logged as an error: run ``verify``);
2. each segment, then the manifest (rewritten with ``"tier": "cold"``), is
   uploaded and verified with ``stat`` (size and sha256). A key already in the
   store with the same bytes is not uploaded again; with other bytes, the day
   stops with :class:`ArchiveConflict`: a cold object is never overwritten;
3. the local manifest is replaced by the uploaded one, then ``_cold.json`` is
   written listing every object moved (name, key, size, sha256);
4. only then are the local segment files removed.

A day with ``_cold.json`` is cold: :func:`~storage.archive.read` and
:func:`~storage.archive.verify` read its segments from the cold store. A
segment published into a cold day afterwards (a very late record) stays local
and is read from disk; retention leaves it alone.

Deleting archived data is never done here: :func:`request_deletion` only
records who asked for a day's deletion, why and when, in
``_deletion_request.json``, for a person to act on.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
import socket
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from storage.archive.layout import (
    MANIFEST,
    ArchiveConflict,
    ArchiveCorrupt,
    SegmentName,
    day_dir,
    day_dirs,
    parse_segment_name,
    segment_files,
    topics,
    valid_topic,
)
from storage.archive.manifest import (
    VERSION,
    SegmentInfo,
    create_temp,
    file_sha256,
    fsync_dir,
    locked,
    read_manifest,
)
from storage.objectstore import ObjectStorage
from storage.objectstore.memory import MemoryStorage

log = logging.getLogger(__name__)

COLD_MARKER = "_cold.json"
DELETION_REQUEST = "_deletion_request.json"
KEY_PREFIX = "archive"


def cold_key(topic: str, day: str, name: str) -> str:
    """``archive/<topic>/dt=YYYY-MM-DD/<name>``: where a day's file lives in the cold store."""
    return f"{KEY_PREFIX}/{topic}/dt={day}/{name}"


class ColdStore:
    """The cold tier: one bucket of object storage, plain keys, written once, never
    deleted. The bucket is created at first use if missing; each object carries its
    sha256 as metadata, hashed from the bytes as they are sent (an upload whose file
    changed under it fails)."""

    def __init__(self, storage: ObjectStorage) -> None:
        self.storage = storage
        self.bucket = storage.bucket
        self.endpoint = storage.endpoint
        self._bucket_ready = False

    def _ready(self) -> ObjectStorage:
        if not self._bucket_ready:
            self.storage.ensure_bucket()
            self._bucket_ready = True
        return self.storage

    def put(self, key: str, path: Path) -> None:
        """Upload the file under ``key``, verified as sent."""
        storage = self._ready()
        sha256, size = file_sha256(path)
        with path.open("rb") as file:
            storage.put(key, file, size, sha256=sha256)

    def get(self, key: str) -> BinaryIO:
        """The object's bytes as a stream; ObjectNotFound if there is none."""
        return self.storage.open(key)

    def stat(self, key: str) -> tuple[int, str] | None:
        """(size, sha256 metadata, "" if none) of the object, or None if there is none."""
        found = self._ready().stat(key)
        return None if found is None else (found.size, found.sha256 or "")


# --- the marker ----------------------------------------------------------------------


@dataclass(frozen=True)
class ColdObject:
    """One file of a day that moved: its name in the day directory and its cold copy."""

    name: str
    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ColdMarker:
    """A cold day's ``_cold.json``."""

    topic: str
    date: str
    moved_at: str
    objects: tuple[ColdObject, ...]

    def __contains__(self, name: object) -> bool:
        return any(o.name == name for o in self.objects)

    def segments(self) -> list[tuple[ColdObject, SegmentName]]:
        """The segment files that moved (not the manifest), with their names' parts."""
        found = [(o, parse_segment_name(o.name)) for o in self.objects]
        return [(o, parsed) for o, parsed in found if parsed is not None]

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "version": VERSION,
                "topic": self.topic,
                "date": self.date,
                "tier": "cold",
                "moved_at": self.moved_at,
                "objects": [vars(o) for o in self.objects],
            },
            option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE,
        )


def read_cold_marker(day: Path) -> ColdMarker | None:
    """The day's cold marker, None if the day is local; ArchiveCorrupt if unreadable."""
    path = day / COLD_MARKER
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        obj = orjson.loads(data)
        if not isinstance(obj, dict) or obj.get("version") != VERSION:
            raise ValueError(f"not a version {VERSION} marker")
        objects = []
        for entry in obj["objects"]:
            if not isinstance(entry, dict):
                raise ValueError("an object entry is not an object")
            name, key, size, sha256 = entry["name"], entry["key"], entry["size"], entry["sha256"]
            if not (isinstance(name, str) and isinstance(key, str) and isinstance(sha256, str)):
                raise ValueError(f"an object entry has a non-string field: {entry}")
            if type(size) is not int:
                raise ValueError(f"an object entry has a non-integer size: {entry}")
            objects.append(ColdObject(name, key, size, sha256))
        topic, day_name, moved_at = obj["topic"], obj["date"], obj["moved_at"]
        if not all(isinstance(v, str) for v in (topic, day_name, moved_at)):
            raise ValueError("topic, date or moved_at is not a string")
        return ColdMarker(topic, day_name, moved_at, tuple(objects))
    except (ValueError, KeyError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise ArchiveCorrupt(f"cold marker {path} cannot be read: {exc}") from None


# --- retention -----------------------------------------------------------------------


def retain(
    root: Path, store: ColdStore, *, older_than_days: int, today: date | None = None
) -> list[str]:
    """Move every day older than ``older_than_days`` (before ``today`` minus that many days;
    today is the UTC date by default) to ``store``; the dates moved, sorted, once each.

    Days already cold are left as they are. A store failure stops the run with nothing of
    the failing day removed; days moved before it stay moved.
    """
    if older_than_days < 0:
        raise ValueError(f"older_than_days must not be negative: {older_than_days}")
    today = today if today is not None else datetime.now(UTC).date()
    cutoff = (today - timedelta(days=older_than_days)).isoformat()
    moved: set[str] = set()
    for topic in topics(root):
        for day, directory in day_dirs(root, topic):
            if day < cutoff and _retain_day(topic, day, directory, store):
                moved.add(day)
    return sorted(moved)


def _retain_day(topic: str, day: str, directory: Path, store: ColdStore) -> bool:
    with locked(directory):
        try:
            marker = read_cold_marker(directory)
            segments = read_manifest(directory)
        except ArchiveCorrupt as exc:
            log.error("%s does not move to the cold tier: %s", directory, exc)
            return False
        if marker is not None:
            return _remove_moved(directory, marker, store)
        local = {name for name, _ in segment_files(directory)}
        listed = {s.name for s in segments}
        if not segments and not local:
            return False
        if local != listed:
            log.error(
                "%s does not move to the cold tier: segments unlisted %s, missing %s (verify it)",
                directory,
                sorted(local - listed),
                sorted(listed - local),
            )
            return False
        for s in segments:
            sha256, size = file_sha256(directory / s.name)
            if (size, sha256) != (s.size, s.sha256):
                log.error("%s does not move: %s differs from its manifest", directory, s.name)
                return False
        objects = [
            _upload(store, topic, day, directory / s.name, s.size, s.sha256) for s in segments
        ]
        temp, file = create_temp(directory, MANIFEST)
        try:
            with file:
                data = _cold_manifest(topic, day, segments)
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
                sha256 = hashlib.sha256(data).hexdigest()
                objects.append(_upload(store, topic, day, temp, len(data), sha256, MANIFEST))
                os.replace(temp, directory / MANIFEST)  # the local manifest is the cold one
        finally:
            temp.unlink(missing_ok=True)
        fsync_dir(directory)
        moved_at = datetime.now(UTC).isoformat(timespec="seconds")
        marker = ColdMarker(topic, day, moved_at, tuple(objects))
        _write_file(directory, COLD_MARKER, marker.to_json())
        _remove_moved(directory, marker, store)
        log.info("moved %s to the cold tier (%s objects)", directory, len(objects))
        return True


def _remove_moved(directory: Path, marker: ColdMarker, store: ColdStore) -> bool:
    """Remove the local segment files the marker lists whose cold copy is verified (a run
    that stopped after the marker leaves some); whether any was removed."""
    removed = False
    for o, _ in marker.segments():
        path = directory / o.name
        if not path.exists():
            continue
        if file_sha256(path) != (o.sha256, o.size) or store.stat(o.key) != (o.size, o.sha256):
            log.error("%s is kept: it or its cold copy %s differs from the marker", path, o.key)
            continue
        path.unlink()
        removed = True
    if removed:
        fsync_dir(directory)
    return removed


def _upload(
    store: ColdStore,
    topic: str,
    day: str,
    path: Path,
    size: int,
    sha256: str,
    name: str | None = None,
) -> ColdObject:
    """Put one file (unless its key holds these bytes already) and verify it by ``stat``."""
    name = name or path.name
    key = cold_key(topic, day, name)
    found = store.stat(key)
    if found is None:
        store.put(key, path)
        found = store.stat(key)
    elif found != (size, sha256):
        raise ArchiveConflict(
            f"cold object {key} exists with other bytes (size {found[0]}, sha256 {found[1]},"
            f" not {size}, {sha256}); it is never overwritten"
        )
    if found != (size, sha256):
        raise ArchiveCorrupt(
            f"cold object {key} does not verify after upload: {found} stored, not {size}, {sha256}"
        )
    return ColdObject(name, key, size, sha256)


def _cold_manifest(topic: str, day: str, segments: list[SegmentInfo]) -> bytes:
    """The day's manifest, marked cold, in the manifest's own layout (one entry a line)."""
    head = {"version": VERSION, "date": day, "topic": topic, "tier": "cold"}
    entries = b",\n".join(orjson.dumps(s.to_json()) for s in segments)
    return orjson.dumps(head)[:-1] + b',"segments":[\n' + entries + b"\n]}\n"


def _write_file(directory: Path, name: str, data: bytes) -> None:
    """Write ``directory/name`` atomically (temporary file, fsync, rename, directory fsync)."""
    temp, file = create_temp(directory, name)
    try:
        with file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
            os.replace(temp, directory / name)
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(directory)


# --- deletion requests ---------------------------------------------------------------


def request_deletion(root: Path, *, topic: str, date: str, reason: str) -> Path:
    """Record a request to delete a day of a topic (who, why, when) in the day's
    ``_deletion_request.json``, after any earlier requests; deletes nothing."""
    if not valid_topic(topic):
        raise ValueError(f"not a topic name: {topic!r}")
    day = _date(date).isoformat()
    if not reason.strip():
        raise ValueError("a deletion request needs a reason")
    directory = day_dir(root, topic, day)
    if not directory.is_dir():
        raise FileNotFoundError(f"no archived day {directory}")
    path = directory / DELETION_REQUEST
    request = {
        "requested_by": _user(),
        "host": socket.gethostname(),
        "reason": reason,
        "requested_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with locked(directory):
        earlier: list[Any] = []
        if path.exists():
            try:
                earlier = list(orjson.loads(path.read_bytes())["requests"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ArchiveCorrupt(f"deletion request {path} cannot be read: {exc}") from None
        body = {"version": VERSION, "topic": topic, "date": day, "requests": [*earlier, request]}
        _write_file(directory, DELETION_REQUEST, orjson.dumps(body, option=orjson.OPT_INDENT_2))
    log.warning("deletion of %s requested by %s: %s", directory, request["requested_by"], reason)
    return path


def _date(text: str) -> date:
    return date.fromisoformat(text)  # ValueError for anything but a date


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (a bare container)
        return f"uid {os.getuid()}"


# --- stores --------------------------------------------------------------------------


class MemoryColdStore(ColdStore):
    """A :class:`ColdStore` on a bucket in memory, for tests (``storage.objects`` may be
    edited to damage one)."""

    storage: MemoryStorage

    def __init__(self, bucket: str = "headrace-archive") -> None:
        super().__init__(MemoryStorage(bucket))
