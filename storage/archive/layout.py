"""What the archive looks like on disk: errors, names, paths and the line format.

Layout under a root directory::

    <root>/<topic>/dt=YYYY-MM-DD/<topic>+<partition>+<first_offset:020d>.jsonl[.zst|.gz]
    <root>/<topic>/dt=YYYY-MM-DD/_manifest.json     the day's published segments
    <root>/<topic>/dt=YYYY-MM-DD/_manifest.lock     flock'd around manifest updates
    <root>/<topic>/dt=YYYY-MM-DD/.<name>.<pid>-<token>.tmp   files being written

The date is the UTC date of the record's ``event_time_ms``. Names starting with
``.`` are temporary and never read; names starting with ``_`` are the day's
bookkeeping.

One line per record, one JSON object (orjson)::

    {"topic": ..., "partition": ..., "offset": ..., "timestamp_ms": ...,
     "event_time_ms": ..., "key": <base64> | null, "schema_id": ... | null, "event": {...}}

JSON has no bytes or times, so values of those types in the event are written
as one-key objects whose key is a tag, and read back as the same Python value:
``{"$bytes": <base64>}``, ``{"$datetime": <RFC 3339, microseconds, offset if
aware>}``, ``{"$date": ...}``, ``{"$time": ...}``, ``{"$decimal": <str>}``.
The tags are spelt ``"\\u0024bytes"`` in the file: the same JSON string, but a
spelling orjson never writes for a key of the event's own, so the writer sees
at once (one memchr) whether a map of the event has a ``$`` key. An event map
that itself has exactly one key starting with ``$`` is wrapped as ``{"$map":
{...}}`` so that it cannot be read as a tag. Enums are written as their value,
UUIDs as their string, tuples as lists and non-finite floats as null
(orjson's rules), and read back as such.
"""

from __future__ import annotations

import os
import re
from base64 import b64decode, b64encode
from binascii import b2a_base64
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from headrace.errors import StorageError, Terminal, Transient

# --- errors ------------------------------------------------------------------------
#   StorageError (headrace.errors)
#    └── ArchiveError               the archive failed
#         ├── ArchiveConflict       a segment exists with other bytes, or offsets overlap (terminal)
#         ├── ArchiveCorrupt        a published file or manifest does not read back     (terminal)
#         ├── ArchiveRecordError    a record that cannot be archived as given            (terminal)
#         └── ArchiveWriteError     the file system refused a write (disk full, I/O)     (transient)


class ArchiveError(StorageError):
    """Any failure of the archive."""


class ArchiveConflict(ArchiveError, Terminal):
    """Publishing would overwrite a segment with other bytes, or archive offsets twice."""


class ArchiveCorrupt(ArchiveError, Terminal):
    """A published segment or a manifest cannot be read back as it was written."""


class ArchiveRecordError(ArchiveError, Terminal):
    """A record that cannot be archived: its event is not JSON-able, its topic not a name."""

    def __init__(self, topic: str, partition: int, offset: int, reason: str) -> None:
        super().__init__(f"cannot archive {topic}[{partition}]@{offset}: {reason}")
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.reason = reason


class ArchiveWriteError(ArchiveError, Transient):
    """Writing a segment failed; its open segment is dropped: seek to the durable position."""


# --- names and paths ---------------------------------------------------------------


class Compression(StrEnum):
    ZSTD = "zstd"
    GZIP = "gzip"
    NONE = "none"


SUFFIXES = {Compression.ZSTD: ".zst", Compression.GZIP: ".gz", Compression.NONE: ""}
MANIFEST = "_manifest.json"
LOCK = "_manifest.lock"
DAY_MS = 86_400_000
_EPOCH = date(1970, 1, 1)
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_SEGMENT = re.compile(
    r"(?P<topic>[A-Za-z0-9._-]+)\+(?P<partition>\d+)\+(?P<first>\d{20})\.jsonl(?P<ext>\.zst|\.gz)?"
)
_DAY = re.compile(r"dt=(\d{4}-\d{2}-\d{2})")


def valid_topic(topic: str) -> bool:
    """Whether ``topic`` is a Kafka topic name (and so a safe directory name)."""
    return _TOPIC.fullmatch(topic) is not None and topic not in (".", "..")


@lru_cache(maxsize=65536)
def day_string(day: int) -> str:
    """``YYYY-MM-DD`` of a day number (days since 1970-01-01, UTC)."""
    return (_EPOCH + timedelta(days=day)).isoformat()


def date_of(ms: int) -> str:
    """The UTC date of epoch milliseconds, as a day directory names it."""
    return day_string(ms // DAY_MS)


def day_dir(root: Path, topic: str, day: str) -> Path:
    return root / topic / f"dt={day}"


def segment_name(topic: str, partition: int, first_offset: int, compression: Compression) -> str:
    return f"{topic}+{partition}+{first_offset:020d}.jsonl{SUFFIXES[compression]}"


@dataclass(frozen=True)
class SegmentName:
    """What a segment's file name says about it."""

    topic: str
    partition: int
    first_offset: int
    compression: Compression


def parse_segment_name(name: str) -> SegmentName | None:
    """The parts of a segment file name, or None for any other name."""
    match = _SEGMENT.fullmatch(name)
    if match is None:
        return None
    ext = match["ext"] or ""
    compression = next(c for c, suffix in SUFFIXES.items() if suffix == ext)
    return SegmentName(match["topic"], int(match["partition"]), int(match["first"]), compression)


def parse_day_dir(name: str) -> str | None:
    """The date of a ``dt=YYYY-MM-DD`` directory name, or None."""
    match = _DAY.fullmatch(name)
    return match[1] if match else None


def is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def topics(root: Path) -> list[str]:
    """The topic directories of a root, sorted."""
    return [p.name for p in _subdirs(root)]


def day_dirs(root: Path, topic: str) -> list[tuple[str, Path]]:
    """A topic's day directories as (date, path), by date."""
    days = [(parse_day_dir(p.name), p) for p in _subdirs(root / topic)]
    return [(d, p) for d, p in days if d is not None]


def segment_files(day: Path) -> list[tuple[str, SegmentName]]:
    """The published segment files of a day directory, by (partition, first offset)."""
    found = []
    for entry in os.scandir(day):
        parsed = parse_segment_name(entry.name)
        if parsed is not None and entry.is_file():
            found.append((entry.name, parsed))
    found.sort(key=lambda item: (item[1].partition, item[1].first_offset, item[0]))
    return found


def _subdirs(path: Path) -> list[Path]:
    if not path.is_dir():
        return []
    found = (Path(e.path) for e in os.scandir(path) if e.is_dir() and e.name[0] not in "._")
    return sorted(found)


# --- the line format ---------------------------------------------------------------


# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__,
# 1.36 us for these eight against 0.45 us (the archive group builds one per record: 4%
# of its drain's Python time under py-spy). Nothing changes a record once built.
@dataclass(slots=True)
class ArchiveRecord:
    """One Kafka record as the archive keeps it."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    event_time_ms: int  # the event's own time, for the date directory
    key: bytes | None
    schema_id: int | None  # None for records that were not Confluent wire format
    event: dict[str, Any]


_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_PASSTHROUGH_DATETIME
# Tags are written with their "$" escaped (\u0024), which orjson never writes for a key of
# the event's own: so a raw '{"$' in a line can only be an event map that must be wrapped.
_RAW_TAG = b'{"$'
_DOLLAR = ord("$")  # an int: "in" is a memchr, where bytes go through the buffer protocol
_ESCAPED_TAG = b'{"\\u0024'


# The line of a record whose numbers are plain non-negative ints below 2**63 (every
# record from Kafka), written without the line's dict: the same bytes orjson writes
# for it (compact, keys in this order), with only the event going through orjson.
_LINE = (
    b'{"topic":%b,"partition":%d,"offset":%d,"timestamp_ms":%d,"event_time_ms":%d,'
    b'"key":%b,"schema_id":%b,"event":%b}\n'
)
_EVENT_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME
_TOPICS: dict[str, bytes] = {}  # topic -> its JSON string


def encode_line(r: ArchiveRecord) -> bytes:
    """The record's line, newline included; TypeError if the event is not JSON-able."""
    topic, partition, offset = r.topic, r.partition, r.offset
    timestamp_ms, event_time_ms, schema_id = r.timestamp_ms, r.event_time_ms, r.schema_id
    if (
        type(topic) is not str
        or type(partition) is not int
        or type(offset) is not int
        or type(timestamp_ms) is not int
        or type(event_time_ms) is not int
        or (schema_id is not None and type(schema_id) is not int)
        # negative, or past orjson's 64 bits: leave to orjson
        or (partition | offset | timestamp_ms | event_time_ms | (schema_id or 0)) >> 63
    ):
        return _encode_line_dict(r)
    event = orjson.dumps(r.event, default=_default, option=_EVENT_OPTIONS)
    if _DOLLAR in event and _RAW_TAG in event:  # a map with one "$" key would read as a tag
        event = orjson.dumps(_escape(r.event), default=_default, option=_EVENT_OPTIONS)
    topic_json = _TOPICS.get(topic)
    if topic_json is None:
        topic_json = orjson.dumps(topic)
        if len(_TOPICS) < 4096:
            _TOPICS[topic] = topic_json
    key = r.key
    return _LINE % (
        topic_json,
        partition,
        offset,
        timestamp_ms,
        event_time_ms,
        b"null" if key is None else b'"%b"' % b2a_base64(key, newline=False),
        b"null" if schema_id is None else b"%d" % schema_id,
        event,
    )


def _encode_line_dict(r: ArchiveRecord) -> bytes:
    """``encode_line`` for any record: the line as a dict, through orjson."""
    line = orjson.dumps(_line(r, r.event), default=_default, option=_OPTIONS)
    if _DOLLAR in line and _RAW_TAG in line:  # a map with one "$" key would read as a tag: wrap
        line = orjson.dumps(_line(r, _escape(r.event)), default=_default, option=_OPTIONS)
    return line


def _default(value: Any) -> orjson.Fragment:
    kind = type(value)
    if kind is bytes:  # the common cases first, inline
        return orjson.Fragment(b'{"\\u0024bytes":"%b"}' % b2a_base64(value, newline=False))
    if kind is datetime:  # orjson's RFC 3339, which datetime.fromisoformat reads back
        return orjson.Fragment(b'{"\\u0024datetime":' + orjson.dumps(value) + b"}")
    if isinstance(value, bytes | bytearray | memoryview):
        return _tag(b"bytes", b'"' + b64encode(value) + b'"')
    if isinstance(value, datetime):  # before date: a datetime is a date
        return _tag(b"datetime", orjson.dumps(value.isoformat()))
    if isinstance(value, date):
        return _tag(b"date", orjson.dumps(value.isoformat()))
    if isinstance(value, time):
        return _tag(b"time", orjson.dumps(value.isoformat()))
    if isinstance(value, Decimal):
        return _tag(b"decimal", orjson.dumps(str(value)))
    raise TypeError(f"{kind.__name__} is not JSON-able")


def _tag(name: bytes, json: bytes) -> orjson.Fragment:
    return orjson.Fragment(b'{"\\u0024' + name + b'":' + json + b"}")


def _line(r: ArchiveRecord, event: Any) -> dict[str, Any]:
    return {
        "topic": r.topic,
        "partition": r.partition,
        "offset": r.offset,
        "timestamp_ms": r.timestamp_ms,
        "event_time_ms": r.event_time_ms,
        "key": None if r.key is None else b2a_base64(r.key, newline=False).decode("ascii"),
        "schema_id": r.schema_id,
        "event": event,
    }


def _escape(value: Any) -> Any:
    if isinstance(value, dict):
        escaped = {k: _escape(v) for k, v in value.items()}
        if len(value) == 1 and str(next(iter(value))).startswith("$"):
            return {"$map": escaped}
        return escaped
    if isinstance(value, list | tuple):
        return [_escape(v) for v in value]
    return value


_UNTAG: dict[str, Callable[[str], Any]] = {
    "$bytes": lambda text: b64decode(text, validate=True),
    "$datetime": datetime.fromisoformat,
    "$date": date.fromisoformat,
    "$time": time.fromisoformat,
    "$decimal": Decimal,
}


def _restore(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1:
            ((key, inner),) = value.items()
            if key == "$map" and isinstance(inner, dict):
                return {k: _restore(v) for k, v in inner.items()}
            if key.startswith("$"):
                if key not in _UNTAG or not isinstance(inner, str):
                    raise ValueError(f"unknown tag {key}")
                return _UNTAG[key](inner)
        return {k: _restore(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v) for v in value]
    return value


def restore(value: Any) -> Any:
    """A value of an event as the JSON of a line has it, its tags read back (what
    :func:`decode_line` does to the event); ValueError for an unknown tag."""
    return _restore(value)


def decode_line(line: bytes) -> ArchiveRecord:
    """The record of one line; ValueError (orjson.JSONDecodeError is one) if it is not one."""
    obj = orjson.loads(line)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    try:
        topic, partition, offset = obj["topic"], obj["partition"], obj["offset"]
        timestamp_ms, event_time_ms = obj["timestamp_ms"], obj["event_time_ms"]
        key, schema_id, event = obj["key"], obj["schema_id"], obj["event"]
    except KeyError as exc:
        raise ValueError(f"no field {exc}") from None
    ints = (partition, offset, timestamp_ms, event_time_ms)
    if not isinstance(topic, str) or not all(type(i) is int for i in ints):
        raise ValueError("topic, partition, offset or a timestamp of the wrong type")
    if not (key is None or isinstance(key, str)) or not (
        schema_id is None or type(schema_id) is int
    ):
        raise ValueError("key or schema_id of the wrong type")
    if not isinstance(event, dict):
        raise ValueError("event is not an object")
    try:
        if _ESCAPED_TAG in line or _RAW_TAG in line:
            event = _restore(event)
        raw_key = None if key is None else b64decode(key, validate=True)
    except (ValueError, TypeError, ArithmeticError) as exc:  # binascii.Error is a ValueError
        raise ValueError(f"bad tagged value: {exc}") from None
    except RecursionError:  # orjson reads 1024 levels, more than restoring them can
        raise ValueError("event nested too deeply") from None
    return ArchiveRecord(
        topic, partition, offset, timestamp_ms, event_time_ms, raw_key, schema_id, event
    )
