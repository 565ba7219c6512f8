"""The verifier: does the archive hold what its manifests say, and nothing else?

:func:`verify` reads every segment file of every day (or of one) in full and
returns one :class:`Problem` per finding, never raising on bad data:

- ``bad_manifest``: a manifest that does not parse;
- ``missing_segment``: listed in the manifest, not on disk;
- ``unlisted_segment``: on disk, not in the manifest (a crash between a
  segment's rename and its manifest update leaves one; the archive adopts it
  when it next reads that partition's position);
- ``manifest_mismatch``: an entry whose name, records, offsets, size or sha256
  differ from the file's;
- ``decompression_error``, ``unparsable_line`` (a truncated plain file ends
  inside a line), ``order`` (offsets not strictly increasing in a segment),
  ``wrong_partition`` (a line whose topic, partition or date is not its
  segment's);
- ``overlap``: two listed segments of a partition whose offset ranges meet;
- ``gap``: a listed segment that does not follow the segment before it.
  Offsets alone cannot show a gap (transaction markers and aborted records
  take offsets), so each segment records the partition's last archived offset
  when it was opened (``previous_last_offset``) and a gap is a break in that
  chain: the segment it follows is not the one before it. Checked across all
  days, or within the day when ``date`` is given (then a chain's head is not);
- ``unknown_file``: any other file in a day directory (temporary files of a
  writer at work are expected and ignored).

A cold day (``_cold.json``, see :mod:`.retention`) has its segments in the cold
store: the marker is checked against the manifest, and with ``cold`` each object
is checked with ``stat`` and read in full like a local file (its problems name
``cold:<key>``); without ``cold``, the marker is all there is to check.

One problem per kind and segment at most, with the count and the first line.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date as Date
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from storage.archive.backend import Backend, as_backend
from storage.archive.layout import (
    MANIFEST,
    ArchiveCorrupt,
    SegmentName,
    date_of,
    decode_line,
    parse_segment_name,
    segment_name,
)
from storage.archive.manifest import SegmentInfo
from storage.archive.reader import CHUNK, DecompressionError, PartialLine, iter_lines
from storage.archive.retention import COLD_MARKER, ColdMarker, ColdStore, cold_key

log = logging.getLogger(__name__)


class ProblemKind(StrEnum):
    BAD_MANIFEST = "bad_manifest"
    MISSING_SEGMENT = "missing_segment"
    UNLISTED_SEGMENT = "unlisted_segment"
    MANIFEST_MISMATCH = "manifest_mismatch"
    DECOMPRESSION_ERROR = "decompression_error"
    UNPARSABLE_LINE = "unparsable_line"
    ORDER = "order"
    WRONG_PARTITION = "wrong_partition"
    OVERLAP = "overlap"
    GAP = "gap"
    UNKNOWN_FILE = "unknown_file"


@dataclass(frozen=True)
class Problem:
    path: str
    kind: ProblemKind
    message: str


def verify(
    root: Path | Backend, *, date: str | None = None, cold: ColdStore | None = None
) -> list[Problem]:
    """Every problem of the archive in ``root`` (a directory or a backend), all days or one
    (``YYYY-MM-DD``).

    A cold day (moved by :func:`~storage.archive.retention.retain`) is checked against its
    ``_cold.json`` marker; with ``cold``, each of its objects is also checked with ``stat``
    (size, sha256) and read in full like a local segment."""
    if date is not None:
        Date.fromisoformat(date)  # ValueError for anything but a date
    backend = as_backend(root)
    problems: list[Problem] = []
    for topic in backend.topics():
        chains: dict[int, list[tuple[str, SegmentInfo]]] = defaultdict(list)
        for day in backend.days(topic):
            if date is None or day == date:
                problems += _verify_day(backend, topic, day, chains, cold)
        for chain in chains.values():
            problems += _check_chain(chain, whole=date is None)
    log.debug("verified %s: %s problems", backend.location, len(problems))
    return problems


def _verify_day(
    backend: Backend,
    topic: str,
    day: str,
    chains: dict[int, list[tuple[str, SegmentInfo]]],
    cold: ColdStore | None,
) -> list[Problem]:
    problems: list[Problem] = []

    def where(name: str = "") -> str:
        return backend.where(topic, day, name)

    try:
        listed: list[SegmentInfo] | None = backend.read_manifest(topic, day)
    except ArchiveCorrupt as exc:
        problems.append(Problem(where(MANIFEST), ProblemKind.BAD_MANIFEST, str(exc)))
        listed = None
    try:
        marker = backend.cold_marker(topic, day)
    except ArchiveCorrupt as exc:
        problems.append(Problem(where(COLD_MARKER), ProblemKind.BAD_MANIFEST, str(exc)))
        marker = None
    by_name = {s.name: s for s in listed or ()}
    on_disk = backend.segment_files(topic, day)
    names = {name for name, _ in on_disk}
    moved = {o.name for o, _ in marker.segments()} if marker is not None else set()
    for name in backend.unknown_files(topic, day):
        problems.append(Problem(where(name), ProblemKind.UNKNOWN_FILE, "not a segment"))
    for s in listed or ():
        path = where(s.name)
        expected = segment_name(s.topic, s.partition, s.first_offset, s.compression)
        if (s.topic, s.date, s.name) != (topic, day, expected):
            problems.append(
                Problem(path, ProblemKind.MANIFEST_MISMATCH, "entry names another place")
            )
        if s.name not in names and s.name not in moved:
            problems.append(Problem(path, ProblemKind.MISSING_SEGMENT, "listed, not on disk"))
        chains[s.partition].append((path, s))
    if marker is not None:
        problems += _verify_cold(topic, day, where, marker, by_name, listed, chains, cold)
    for name, parsed in on_disk:
        path = where(name)
        facts = _scan(backend, topic, day, name, parsed)
        problems += facts.problems
        info = by_name.get(name)
        if info is None:
            if listed is not None:
                problems.append(Problem(path, ProblemKind.UNLISTED_SEGMENT, "not listed"))
            if facts.first >= 0:  # its records are there: no gap around it
                chains[parsed.partition].append((path, _info(parsed, day, name, facts)))
            continue
        wrong = _differences(info, facts)
        if wrong:
            problems.append(Problem(path, ProblemKind.MANIFEST_MISMATCH, "; ".join(wrong)))
    return problems


def _verify_cold(
    topic: str,
    day: str,
    local: Callable[[str], str],
    marker: ColdMarker,
    by_name: dict[str, SegmentInfo],
    listed: list[SegmentInfo] | None,
    chains: dict[int, list[tuple[str, SegmentInfo]]],
    cold: ColdStore | None,
) -> list[Problem]:
    """The segments of a cold day: the marker against the manifest and, with ``cold``, each
    object's ``stat`` and content against both."""
    problems: list[Problem] = []
    for o, parsed in marker.segments():
        where = f"cold:{o.key}"
        info = by_name.get(o.name)
        wrong = []
        if o.key != cold_key(topic, day, o.name):
            wrong.append(f"key {o.key} is not this day's")
        if info is None:
            if listed is not None:
                problems.append(Problem(where, ProblemKind.UNLISTED_SEGMENT, "moved, not listed"))
        elif (o.size, o.sha256) != (info.size, info.sha256):
            wrong.append(f"the marker has size {o.size}, sha256 {o.sha256}")
        if cold is not None:
            stat = cold.stat(o.key)
            if stat is None:
                problems.append(Problem(where, ProblemKind.MISSING_SEGMENT, "not in the store"))
                continue
            if stat != (o.size, o.sha256):
                wrong.append(f"the store has size {stat[0]}, sha256 {stat[1]}")
            with cold.get(o.key) as file:
                facts = _scan_file(file, where, parsed, topic, day)
            problems += facts.problems
            if info is not None:
                wrong += _differences(info, facts)
            elif facts.first >= 0:
                chains[parsed.partition].append((local(o.name), _info(parsed, day, o.name, facts)))
        if wrong:
            problems.append(Problem(where, ProblemKind.MANIFEST_MISMATCH, "; ".join(wrong)))
    return problems


def _differences(info: SegmentInfo, facts: _Facts) -> list[str]:
    found = (facts.records, facts.first, facts.last, facts.size, facts.sha256)
    wanted = (info.records, info.first_offset, info.last_offset, info.size, info.sha256)
    fields = ("records", "first_offset", "last_offset", "size", "sha256")
    return [
        f"{f} {w} listed, {v} found"
        for f, w, v in zip(fields, wanted, found, strict=True)
        if w != v
    ]


@dataclass
class _Facts:
    sha256: str = ""
    size: int = 0
    records: int = 0
    first: int = -1
    last: int = -1
    problems: list[Problem] = field(default_factory=list)


class _Hashing:
    """Reads a file, hashing the bytes as they go by."""

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.digest, self.size = file, hashlib.sha256(), 0

    def read(self, size: int, /) -> bytes:
        data = self.file.read(size)
        self.digest.update(data)
        self.size += len(data)
        return data


def _scan(backend: Backend, topic: str, day: str, name: str, parsed: SegmentName) -> _Facts:
    with backend.open(topic, day, name) as file:
        return _scan_file(file, backend.where(topic, day, name), parsed, topic, day)


def _scan_file(file: BinaryIO, where: str, parsed: SegmentName, topic: str, day: str) -> _Facts:
    facts = _Facts()
    bad: Counter[ProblemKind] = Counter()
    first_bad: dict[ProblemKind, str] = {}

    def found(kind: ProblemKind, detail: str) -> None:
        bad[kind] += 1
        first_bad.setdefault(kind, detail)

    if parsed.topic != topic:
        found(ProblemKind.WRONG_PARTITION, f"a segment of topic {parsed.topic} under {topic}")
    highest = -1
    hashing = _Hashing(file)
    try:
        for number, line in enumerate(iter_lines(hashing, parsed.compression, where), 1):
            facts.records += 1
            try:
                r = decode_line(line)
            except ValueError as exc:
                found(ProblemKind.UNPARSABLE_LINE, f"line {number}: {exc}")
                continue
            if (r.topic, r.partition, date_of(r.event_time_ms)) != (
                topic,
                parsed.partition,
                day,
            ):
                found(ProblemKind.WRONG_PARTITION, f"line {number}: {r.topic}[{r.partition}]")
            if r.offset <= highest:
                found(ProblemKind.ORDER, f"line {number}: offset {r.offset} after {highest}")
            facts.first = r.offset if facts.first < 0 else facts.first
            facts.last, highest = r.offset, max(highest, r.offset)
    except DecompressionError as exc:
        found(ProblemKind.DECOMPRESSION_ERROR, str(exc))
    except PartialLine as exc:
        facts.records += 1
        found(ProblemKind.UNPARSABLE_LINE, f"last line: {exc}")
    while hashing.read(CHUNK):  # the rest, after an error, for the size and sha256
        pass
    facts.sha256, facts.size = hashing.digest.hexdigest(), hashing.size
    if facts.first not in (-1, parsed.first_offset):
        found(ProblemKind.MANIFEST_MISMATCH, f"first offset {facts.first} is not its name's")
    for kind, count in bad.items():
        message = f"{count} time(s), first: {first_bad[kind]}"
        facts.problems.append(Problem(where, kind, message))
    return facts


@dataclass(frozen=True)
class Damage:
    """A listed segment whose file is gone or does not hold what its entry says."""

    segment: SegmentInfo
    where: str
    reason: str


def damaged(root: Path | Backend, topic: str) -> list[Damage]:
    """The listed segments of ``topic`` (days in place, not cold ones) that are missing or
    whose file differs from its manifest entry or does not read back whole: what
    re-archiving can rebuild, entry by entry. Unreadable manifests are not here (there is
    no entry to rebuild by); :func:`verify` reports them."""
    backend = as_backend(root)
    found: list[Damage] = []
    if topic not in backend.topics():
        return found
    for day in backend.days(topic):
        try:
            listed = backend.read_manifest(topic, day)
        except ArchiveCorrupt:
            continue
        on_disk = dict(backend.segment_files(topic, day))
        for s in listed:
            where = backend.where(topic, day, s.name)
            parsed = on_disk.get(s.name)
            if parsed is None:
                if backend.cold_marker(topic, day) is None:
                    found.append(Damage(s, where, "listed, not on disk"))
                continue
            facts = _scan(backend, topic, day, s.name, parsed)
            wrong = [p.message for p in facts.problems] + _differences(s, facts)
            if wrong:
                found.append(Damage(s, where, "; ".join(wrong)))
    return found


def describe(
    backend: Backend, topic: str, day: str, name: str, others: Sequence[SegmentInfo] = ()
) -> SegmentInfo:
    """The manifest entry of a published segment file, from its content; ArchiveCorrupt
    unless the verifier finds nothing wrong with it. ``others``, the partition's other
    segments, give ``previous_last_offset``."""
    parsed = parse_segment_name(name)
    if parsed is None:
        raise ArchiveCorrupt(f"{backend.where(topic, day, name)} is not a segment's name")
    facts = _scan(backend, topic, day, name, parsed)
    if facts.problems or facts.records == 0:
        found = facts.problems[0].message if facts.problems else "no record"
        raise ArchiveCorrupt(f"{backend.where(topic, day, name)} is not a sound segment: {found}")
    before = [s.last_offset for s in others if s.last_offset < facts.first]
    return _info(parsed, day, name, facts, max(before) if before else None)


def _info(
    parsed: SegmentName, day: str, name: str, facts: _Facts, previous: int | None = None
) -> SegmentInfo:
    return SegmentInfo(
        parsed.topic,
        parsed.partition,
        day,
        facts.first,
        facts.last,
        facts.records,
        name,
        facts.size,
        facts.sha256,
        parsed.compression,
        previous,
    )


def _check_chain(chain: list[tuple[str, SegmentInfo]], *, whole: bool) -> list[Problem]:
    problems = []
    chain.sort(key=lambda item: (item[1].first_offset, item[1].last_offset))
    before: SegmentInfo | None = None
    for path, s in chain:
        if before is not None and s.first_offset <= before.last_offset:
            message = f"offsets {s.first_offset}-{s.last_offset} overlap {before.name}"
            problems.append(Problem(path, ProblemKind.OVERLAP, message))
        elif s.previous_last_offset is not None and (before is not None or whole):
            ends = None if before is None else before.last_offset
            if s.previous_last_offset != ends:
                message = f"follows offset {s.previous_last_offset}; the one before ends at {ends}"
                problems.append(Problem(path, ProblemKind.GAP, message))
        before = s if before is None or s.last_offset > before.last_offset else before
    return problems
