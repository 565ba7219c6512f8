"""Open segments: appending records, rotation, and atomic publication.

:class:`Archive` keeps **one open segment per (topic, partition)**, a temporary
file named by its first offset. A record goes into its partition's open
segment unless adding it would pass ``max_segment_records`` or
``max_segment_bytes`` (uncompressed), or its date (UTC, of ``event_time_ms``)
is not the segment's: then the open segment is published first and a new one
opened. Segments also close by age (:meth:`Archive.close_due`, the idle
timer), on revocation and at shutdown (:meth:`Archive.close_all`).

Why one open segment per partition and not per (partition, date): a
partition's durable position is the end of its highest published segment. With
two open segments of one partition, offsets would interleave between them
(10 and 12 on one date, 11 on the next), and publishing either one first
would make a position that skips records still waiting in the other, which a
crash would lose. With one, a partition's segments are published in offset
order and never interleave, so every record below the durable position is
published. The price is short segments when dates alternate (around midnight).

Publishing (streamed, never the whole segment in memory): flush and fsync the
temporary file, or compress it into a second one and fsync that; then
:func:`storage.archive.manifest.publish` links it to its final name, fsyncs the
directory and lists it in the day's manifest, under the day's lock.

Idempotence: records at or below a partition's last archived offset (published
or open) are skipped. A partition's position is read from the manifests the
first time it is seen and again by :meth:`Archive.durable_position`; segment
files that a crash left published but unlisted are adopted into their manifest
then. On construction, temporary files that no live process holds (each
writer flocks its own) are deleted. An Archive is not thread-safe.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import zstandard

from headrace.errors import StorageError
from storage.archive.backend import Backend, LocalBackend, as_backend
from storage.archive.layout import (
    DAY_MS,
    ArchiveRecord,
    ArchiveRecordError,
    ArchiveWriteError,
    Compression,
    day_string,
    encode_line,
    segment_name,
    valid_topic,
)
from storage.archive.manifest import (
    SegmentInfo,
    create_temp,
    ensure_dir,
    file_sha256,
    remove_stale_temps,
)
from storage.archive.reader import CHUNK
from storage.archive.verify import describe

log = logging.getLogger(__name__)

Key = tuple[str, int]


@dataclass(frozen=True)
class ArchivePolicy:
    """How segments are compressed and when they close."""

    compression: Compression = Compression.ZSTD
    max_segment_bytes: int = 64 * 1024 * 1024  # uncompressed bytes of an open segment
    max_segment_records: int = 100_000
    max_segment_age_s: float = 300.0  # since the segment's first record; closes idle partitions
    # Topics whose segments close sooner: a reader waits for them (the table archiver
    # deletes a batch only once the archive holds it).
    topic_ages: Mapping[str, float] = field(default_factory=dict)
    # > 0: publish segments plain (Compression.NONE) and leave ``compression`` to
    # :func:`storage.archive.compress_old`, run for days older than this many.
    plain_days: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "compression", Compression(self.compression))
        limits = (self.max_segment_bytes, self.max_segment_records, self.max_segment_age_s)
        if min(*limits, *self.topic_ages.values()) <= 0:
            raise ValueError(f"segment limits must be positive: {self}")
        if self.plain_days < 0:
            raise ValueError(f"plain_days must not be negative: {self}")

    @property
    def publish_compression(self) -> Compression:
        """The compression segments are published with."""
        return Compression.NONE if self.plain_days > 0 else self.compression


DEFAULT_POLICY = ArchivePolicy()


class _Open:
    """A partition's open segment: a temporary file, flock'd while open."""

    __slots__ = (
        "path",
        "file",
        "day",
        "first_offset",
        "last_offset",
        "records",
        "size",
        "opened_at",
        "previous_last_offset",
    )

    def __init__(self, path: Path, file: BinaryIO, day: int, first: int, opened_at: float) -> None:
        self.path, self.file, self.day, self.opened_at = path, file, day, opened_at
        self.first_offset = self.last_offset = first
        self.records = self.size = 0
        self.previous_last_offset: int | None = None


class _Partition:
    __slots__ = ("last_offset", "published_last", "open")

    def __init__(self, published_last: int) -> None:
        self.last_offset = self.published_last = published_last  # -1: nothing archived
        self.open: _Open | None = None


class Archive:
    """Append-only, date-partitioned, compressed segments of Kafka records, under a local
    directory (``root`` a Path) or in object storage (an :class:`ObjectBackend`)."""

    def __init__(
        self,
        root: Path | Backend,
        policy: ArchivePolicy = DEFAULT_POLICY,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend, self.policy, self._clock = as_backend(root), policy, clock
        if policy.plain_days and not isinstance(self.backend, LocalBackend):
            raise ValueError("plain_days keeps days plain on local disk: not for object storage")
        self._partitions: dict[Key, _Partition] = {}
        self._zstd = zstandard.ZstdCompressor(level=3, write_checksum=True)
        self.skipped = 0  # records skipped because they were archived already
        staging = self.backend.staging_root
        try:
            ensure_dir(staging)
        except OSError as exc:  # a root that cannot be made: one line, before any record
            raise StorageError(f"cannot create the archive directory {staging}: {exc}") from None
        removed = remove_stale_temps(staging)
        if removed:
            log.info("removed %s temporary files left under %s", removed, staging)

    def append(self, records: Sequence[ArchiveRecord]) -> list[SegmentInfo]:
        """Write records into their partitions' open segments; the segments published.

        Records of one partition come in increasing offset order; one at or below the
        partition's last archived offset is skipped. A record whose event cannot be
        encoded raises ArchiveRecordError before anything of the batch is written.
        """
        try:
            lines = [encode_line(r) for r in records]
        except TypeError:  # orjson.JSONEncodeError is one: find the record and say why
            for r in records:
                try:
                    encode_line(r)
                except TypeError as exc:
                    raise ArchiveRecordError(r.topic, r.partition, r.offset, str(exc)) from None
            raise
        published: list[SegmentInfo] = []
        max_records, max_bytes = self.policy.max_segment_records, self.policy.max_segment_bytes
        partitions = self._partitions
        topic: str | None = None  # no record's topic: the first record loads its partition
        partition, state = -1, _Partition(-1)
        for r, line in zip(records, lines, strict=True):
            if r.partition != partition or r.topic != topic:
                topic, partition = r.topic, r.partition
                state = partitions.get((topic, partition)) or self._load(r)
            if r.offset <= state.last_offset:
                self.skipped += 1
                continue
            day = r.event_time_ms // DAY_MS
            seg = state.open
            if seg is not None and (
                seg.day != day or seg.records >= max_records or seg.size + len(line) > max_bytes
            ):
                published.append(self._publish((r.topic, partition), state))
                seg = None
            try:
                if seg is None:
                    seg = self._open(r, state, day)
                seg.file.write(line)
            except OSError as exc:
                raise self._failed((r.topic, partition), exc) from exc
            seg.size += len(line)
            seg.records += 1
            seg.last_offset = state.last_offset = r.offset
        return published

    def close_due(self) -> list[SegmentInfo]:
        """Publish the open segments older than ``max_segment_age_s``, or their topic's
        age in ``topic_ages`` (call it periodically)."""
        now, policy = self._clock(), self.policy
        ages, default = policy.topic_ages, policy.max_segment_age_s
        return [
            self._publish(key, state)
            for key, state in sorted(self._partitions.items())
            if state.open is not None and now - state.open.opened_at >= ages.get(key[0], default)
        ]

    def close_all(self, partitions: Iterable[Key] | None = None) -> list[SegmentInfo]:
        """Publish the open segments of ``partitions`` (default all) and forget their
        positions: they are read from the manifests again when next needed."""
        keys = sorted(self._partitions) if partitions is None else list(partitions)
        published = []
        for key in keys:
            state = self._partitions.get(key)
            if state is not None and state.open is not None:
                published.append(self._publish(key, state))
            self._partitions.pop(key, None)
        return published

    def abandon(self, partitions: Iterable[Key]) -> None:
        """Drop the open segments of ``partitions`` unpublished, and forget their positions."""
        for key in partitions:
            state = self._partitions.pop(key, None)
            if state is not None and state.open is not None:
                log.info("abandoning the open segment of %s[%s]", *key)
                _discard(state.open)

    def durable_position(self, topic: str, partition: int) -> int | None:
        """The next offset to consume: after the partition's highest published segment."""
        last = max((s.last_offset for s in self._recover(topic, partition)), default=-1)
        state = self._partitions.get((topic, partition))
        if state is None or state.open is None:
            self._partitions[(topic, partition)] = _Partition(last)
        return None if last < 0 else last + 1

    def published(self, topic: str, partition: int) -> list[SegmentInfo]:
        """The partition's published segments, in offset order."""
        return self._recover(topic, partition)

    # --- internals ---------------------------------------------------------------

    def _load(self, r: ArchiveRecord) -> _Partition:
        if not valid_topic(r.topic) or r.partition < 0:
            raise ArchiveRecordError(r.topic, r.partition, r.offset, "not a topic and partition")
        segments = self._recover(r.topic, r.partition)
        state = _Partition(max((s.last_offset for s in segments), default=-1))
        self._partitions[(r.topic, r.partition)] = state
        return state

    def _open(self, r: ArchiveRecord, state: _Partition, day: int) -> _Open:
        directory = self.backend.staging(r.topic, day_string(day))
        ensure_dir(directory)
        base = segment_name(r.topic, r.partition, r.offset, Compression.NONE)
        path, file = create_temp(directory, base, buffering=CHUNK)
        seg = _Open(path, file, day, r.offset, self._clock())
        seg.previous_last_offset = None if state.published_last < 0 else state.published_last
        state.open = seg
        return seg

    def _publish(self, key: Key, state: _Partition) -> SegmentInfo:
        seg, state.open = state.open, None
        if seg is None:  # callers check first
            raise RuntimeError(f"{key[0]}[{key[1]}] has no open segment")
        try:
            info = self._finish(key, seg)
        except OSError as exc:
            raise self._failed(key, exc) from exc
        except BaseException:
            self._partitions.pop(key, None)  # its position is unsure now: read it again
            raise
        finally:
            _discard(seg)
        state.published_last = seg.last_offset
        log.debug("published %s (%s records, %s bytes)", info.name, info.records, info.size)
        return info

    def _finish(self, key: Key, seg: _Open) -> SegmentInfo:
        topic, partition = key
        compression = self.policy.publish_compression
        directory = seg.path.parent
        seg.file.flush()
        if compression is Compression.NONE:
            os.fsync(seg.file.fileno())
            sha256, size = file_sha256(seg.path)
            temp, out = seg.path, None
        else:
            temp, out = create_temp(directory, segment_name(*key, seg.first_offset, compression))
        try:
            if out is not None:
                sha256, size = self._compress(seg.path, out, compression)
            info = SegmentInfo(
                topic,
                partition,
                day_string(seg.day),
                seg.first_offset,
                seg.last_offset,
                seg.records,
                segment_name(topic, partition, seg.first_offset, compression),
                size,
                sha256,
                compression,
                seg.previous_last_offset,
            )
            self.backend.publish(temp, info)
            return info
        finally:
            if out is not None:
                out.close()
                temp.unlink(missing_ok=True)

    def _compress(self, source: Path, out: BinaryIO, compression: Compression) -> tuple[str, int]:
        return compress_file(source, out, compression, self._zstd)

    def _failed(self, key: Key, exc: OSError) -> ArchiveWriteError:
        self.abandon([key])
        where = self.backend.location
        return ArchiveWriteError(f"archiving {key[0]}[{key[1]}] in {where} failed: {exc}")

    def _recover(self, topic: str, partition: int) -> list[SegmentInfo]:
        """The partition's segments from the manifests, adopting the files they miss."""
        if not valid_topic(topic):
            raise ValueError(f"not a topic name: {topic!r}")
        backend = self.backend
        listed: list[SegmentInfo] = []
        orphans: list[tuple[str, str]] = []
        for day in backend.days(topic):
            segments = backend.read_manifest(topic, day)
            names = {s.name for s in segments}
            firsts = {s.first_offset for s in segments if s.partition == partition}
            listed += (s for s in segments if s.partition == partition)
            orphans += (
                (day, name)
                for name, parsed in backend.segment_files(topic, day)
                if parsed.partition == partition
                and parsed.topic == topic
                and name not in names
                # the other form of a listed segment: compress_old stopped midway (it
                # finishes on its next run), not a published segment left unlisted
                and parsed.first_offset not in firsts
            )
        for day, name in orphans:
            info = describe(backend, topic, day, name, listed)
            if backend.adopt(info):
                log.warning("adopted %s into its manifest (published, then unlisted)", name)
            listed.append(info)
        return sorted(listed, key=lambda s: s.first_offset)


def compress_file(
    source: Path,
    out: BinaryIO,
    compression: Compression,
    zstd: zstandard.ZstdCompressor | None = None,
) -> tuple[str, int]:
    """Compress ``source`` into ``out`` chunk by chunk and fsync it; the sha256 and size
    written."""
    digest, size = hashlib.sha256(), 0
    if compression is Compression.NONE:
        raise ValueError("Compression.NONE is not a codec")
    compressor = (
        (zstd or zstandard.ZstdCompressor(level=3, write_checksum=True)).compressobj()
        if compression is Compression.ZSTD
        else zlib.compressobj(6, zlib.DEFLATED, 31)  # gzip; mtime 0: same bytes every time
    )
    with source.open("rb") as src:
        while True:
            chunk = src.read(CHUNK)
            data = compressor.compress(chunk) if chunk else compressor.flush()
            digest.update(data)
            size += len(data)
            out.write(data)
            if not chunk:
                break
    out.flush()
    os.fsync(out.fileno())
    return digest.hexdigest(), size


def _discard(seg: _Open) -> None:
    seg.file.close()
    seg.path.unlink(missing_ok=True)
