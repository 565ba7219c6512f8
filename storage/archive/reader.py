"""Reading the archive back: segments in order, decompressed as they stream.

:func:`read` yields every archived record of a root in (topic, date, partition,
offset) order, as an :class:`ArchivedLine` equal field by field to the
:class:`~storage.archive.layout.ArchiveRecord` that was appended (bytes, times
and decimals restored, see :mod:`storage.archive.layout`). It reads the
published segment files of each day directory (never the temporary files of a
writer at work), so it may run while archives write. zstd, gzip and plain
segments are read alike; a segment that is truncated, does not decompress or
holds a line that is not a record raises :class:`ArchiveCorrupt`.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Protocol

import zstandard

from storage.archive.backend import Backend, as_backend
from storage.archive.layout import (
    ArchiveCorrupt,
    ArchiveError,
    ArchiveRecord,
    Compression,
    SegmentName,
    decode_line,
    valid_topic,
)
from storage.archive.retention import ColdMarker, ColdStore

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024


class DecompressionError(ArchiveCorrupt):
    """A segment's bytes do not decompress: corrupt, truncated, or another format."""


class PartialLine(ArchiveCorrupt):
    """A segment ends inside a line (a truncated file)."""


@dataclass(slots=True)  # as ArchiveRecord, not frozen (a frozen one cannot extend it)
class ArchivedLine(ArchiveRecord):
    """A record read back, and the segment file it was read from."""

    segment: str

    @property
    def record(self) -> ArchiveRecord:
        """The record as it was appended (ArchiveRecord and ArchivedLine never compare equal)."""
        return ArchiveRecord(
            self.topic,
            self.partition,
            self.offset,
            self.timestamp_ms,
            self.event_time_ms,
            self.key,
            self.schema_id,
            self.event,
        )


def read(
    root: Path | Backend,
    *,
    topic: str | None = None,
    since: str | None = None,
    until: str | None = None,
    predicate: Callable[[dict[str, Any]], bool] | None = None,
    cold: ColdStore | None = None,
    contains: bytes | None = None,
) -> Generator[ArchivedLine, None, None]:
    """Stream the archived records of ``root`` (a directory or a backend): one topic or
    all, dates from ``since`` to ``until`` (``YYYY-MM-DD``, both included), those whose
    event ``predicate`` accepts. Lines without the bytes ``contains`` are skipped
    undecoded: a cheap first filter (a field as orjson writes it, ``b'"table":"t"'``).
    Days moved to the cold tier (:mod:`.retention`) are streamed from ``cold``; without it
    such a day raises :class:`ArchiveError` rather than be skipped.
    A generator: ``close()`` it to release the open file when stopping early."""
    if topic is not None and not valid_topic(topic):
        raise ValueError(f"not a topic name: {topic!r}")
    for bound in (since, until):
        if bound is not None:
            date.fromisoformat(bound)  # ValueError for anything but a date
    backend = as_backend(root)
    for name in [topic] if topic is not None else backend.topics():
        for day in backend.days(name):
            if (since is not None and day < since) or (until is not None and day > until):
                continue
            marker = backend.cold_marker(name, day)
            if marker is None:
                for file_name, parsed in backend.segment_files(name, day):
                    yield from _read_segment(
                        backend, name, day, file_name, parsed, predicate, contains
                    )
                continue
            if cold is None:
                where = backend.where(name, day)
                raise ArchiveError(f"{where} is in the cold tier: read it with a cold store")
            for file_name, parsed, key in day_sources(backend, name, day, marker):
                if key is None:
                    yield from _read_segment(
                        backend, name, day, file_name, parsed, predicate, contains
                    )
                else:
                    with cold.get(key) as file:
                        yield from _read_lines(
                            file, key, file_name, parsed.compression, predicate, contains
                        )


def day_sources(
    backend: Backend, topic: str, day: str, marker: ColdMarker
) -> list[tuple[str, SegmentName, str | None]]:
    """A cold day's segments, in reading order: (file name, its parts, its cold key, or None
    for a local file: one published into the day after it moved)."""
    found: list[tuple[str, SegmentName, str | None]] = [
        (o.name, parsed, o.key) for o, parsed in marker.segments()
    ]
    found += (
        (name, parsed, None)
        for name, parsed in backend.segment_files(topic, day)
        if name not in marker
    )
    found.sort(key=lambda item: (item[1].partition, item[1].first_offset, item[0]))
    return found


def _read_segment(
    backend: Backend,
    topic: str,
    day: str,
    name: str,
    parsed: SegmentName,
    predicate: Callable[[dict[str, Any]], bool] | None,
    contains: bytes | None = None,
) -> Iterator[ArchivedLine]:
    with backend.open(topic, day, name) as file:
        where = backend.where(topic, day, name)
        yield from _read_lines(file, where, name, parsed.compression, predicate, contains)


def _read_lines(
    file: Readable,
    where: str,
    name: str,
    compression: Compression,
    predicate: Callable[[dict[str, Any]], bool] | None,
    contains: bytes | None = None,
) -> Iterator[ArchivedLine]:
    for number, line in enumerate(iter_lines(file, compression, where), 1):
        if contains is not None and contains not in line:
            continue
        try:
            r = decode_line(line)
        except ValueError as exc:
            raise ArchiveCorrupt(f"{where} line {number} is not a record: {exc}") from None
        if predicate is None or predicate(r.event):
            yield ArchivedLine(
                r.topic,
                r.partition,
                r.offset,
                r.timestamp_ms,
                r.event_time_ms,
                r.key,
                r.schema_id,
                r.event,
                name,
            )


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


class _Decompressor(Protocol):
    def decompress(self, data: bytes, /) -> bytes: ...

    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...


def _decompressor(compression: Compression) -> _Decompressor:
    if compression is Compression.ZSTD:
        return zstandard.ZstdDecompressor().decompressobj()
    return zlib.decompressobj(wbits=31)  # gzip


def chunks(file: Readable, compression: Compression, path: Path | str) -> Iterator[bytes]:
    """The decompressed bytes of a segment file, in chunks; every frame (zstd) or member
    (gzip) must end: a file that stops inside one raises DecompressionError."""
    if compression is Compression.NONE:
        while chunk := file.read(CHUNK):
            yield chunk
        return
    decompressor, inside, frames = _decompressor(compression), False, 0
    while data := file.read(CHUNK):
        while data:
            inside = True
            try:
                out = decompressor.decompress(data)
            except (zstandard.ZstdError, zlib.error) as exc:
                raise DecompressionError(f"{path} does not decompress: {exc}") from None
            if out:
                yield out
            if decompressor.eof:
                data, frames, inside = decompressor.unused_data, frames + 1, False
                decompressor = _decompressor(compression)
            else:
                data = b""
    if inside or frames == 0:
        raise DecompressionError(f"{path} ends inside a {compression} frame (truncated)")


def iter_lines(file: Readable, compression: Compression, path: Path | str) -> Iterator[bytes]:
    """The lines of a segment file, without their newlines; PartialLine if the last one has
    none, DecompressionError if the file does not decompress."""
    rest = b""
    for chunk in chunks(file, compression, path):
        lines = (rest + chunk).split(b"\n") if rest else chunk.split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        raise PartialLine(f"{path} ends inside a line (truncated)")
