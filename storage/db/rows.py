"""The rows of the load database, and how a decoded event becomes one.

:func:`file_row` and :func:`run_row` take the plain dict fastavro decodes
(``Decoded.as_dict()``) plus the record's place in Kafka. A row never holds a
credential: an object is referenced by bucket and key (a presigned URL's
signature stays out), a git repository by its URL with any user and password
stripped. An event that cannot become a row raises :class:`UnresolvableEvent`
naming the record and why; the database's own constraints are the second line.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

import orjson

from headrace.redact import strip_credentials
from schemas.models import ContentStrategy, Op, derive_event_id
from storage.db.errors import InvalidEvent, UnresolvableEvent, WrongContent

SHA256 = re.compile(r"[0-9a-f]{64}")
_HEX = "0123456789abcdef"
_new = tuple.__new__  # a named tuple's own __new__ is Python code: twice the cost
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


class ContentMode(StrEnum):
    """What of a file's content the database keeps (``load.content``)."""

    INLINE_AND_REFS = "inline_and_refs"  # inline bytes, and the reference of the rest
    REFS_ONLY = "refs_only"  # references only: no bytes, even for inline content
    RESOLVE_ALL = "resolve_all"  # every file's bytes, through the content resolver


class FileRow(NamedTuple):
    """A file's newest known version, or its deletion (``deleted``, ``sha256 == ''``).

    A named tuple, not a frozen dataclass: one is made per record loaded, and a
    frozen dataclass's ``__init__`` (``object.__setattr__`` per field) costs 2 us of
    the loader's time where a tuple costs a tenth of that."""

    project: str
    path: str
    sha256: str
    size: int
    content_strategy: str | None  # INLINE, OBJECT_STORAGE, GIT_REFERENCE; None: delete or v1
    content: bytes | None  # the inline bytes (content mode inline_and_refs)
    content_ref: str | None  # JSON: {"bucket", "key"} or {"url", "commit", "path", "blob_id"}
    text_encoding: str | None  # UTF_8, LATIN_1, BINARY for inline content
    git_commit: str | None
    deleted: bool
    event_id: str
    event_time_ms: int
    run_id: str | None
    source_topic: str
    source_partition: int
    source_offset: int


class RunRow(NamedTuple):
    """One bracket of an ingest run: STARTED or COMPLETED."""

    run_id: str
    kind: str
    project: str
    source: str
    commit: str | None
    event_time_ms: int
    counts: str | None  # JSON of RunCounts, COMPLETED only
    digest: str | None
    source_topic: str
    source_partition: int
    source_offset: int


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """Offsets ``first_offset..last_offset`` of a partition, loaded by ``group`` in one write."""

    group: str
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    row_count: int


def ledger_values(entry: LedgerEntry) -> tuple[str, str, int, int, int, int]:
    return (
        entry.group,
        entry.topic,
        entry.partition,
        entry.first_offset,
        entry.last_offset,
        entry.row_count,
    )


FILE_COLUMNS: tuple[str, ...] = FileRow._fields
RUN_COLUMNS: tuple[str, ...] = RunRow._fields


def _json(value: dict[str, Any]) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _millis(value: Any) -> int | None:
    """timestamp-millis as fastavro decodes it (an aware datetime), or plain millis."""
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return (aware - _EPOCH) // _MS
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _content(
    fields: dict[str, Any], strategy: str, size: int, mode: ContentMode
) -> tuple[bytes | None, str | None, str | None, str | None]:
    """``(content, content_ref, text_encoding, git_commit)``; ValueError says what is missing."""
    if strategy == ContentStrategy.INLINE:
        inline = fields.get("inline")
        if inline is None:
            raise ValueError("content_strategy INLINE without inline content")
        data = inline["data"]
        if len(data) != size:
            raise _Wrong(f"inline content is {len(data)} bytes, size says {size}")
        if hashlib.sha256(data).hexdigest() != fields["checksum"]:
            raise _Wrong("inline content does not hash to the event's checksum")
        keep = data if mode is not ContentMode.REFS_ONLY else None
        return keep, None, str(inline["encoding"]), None
    if strategy == ContentStrategy.OBJECT_STORAGE:
        ref = fields.get("object_ref")
        if ref is None:
            raise ValueError("content_strategy OBJECT_STORAGE without object_ref")
        return None, _json({"bucket": ref["bucket"], "key": ref["key"]}), None, None
    if strategy == ContentStrategy.GIT_REFERENCE:
        git = fields.get("git_ref")
        if git is None:
            raise ValueError("content_strategy GIT_REFERENCE without git_ref")
        ref_json = _json(
            {
                "url": strip_credentials(git["url"]),
                "commit": git["commit"],
                "path": git["path"],
                "blob_id": git["blob_id"],
            }
        )
        return None, ref_json, None, git["commit"]
    raise ValueError(f"unknown content_strategy {strategy!r}")


class _Wrong(ValueError):
    """Content that is not what the event says it is."""


class _Invalid(ValueError):
    """A field no event can have."""


def file_row(
    fields: dict[str, Any],
    topic: str,
    partition: int,
    offset: int,
    content_mode: ContentMode | str = ContentMode.INLINE_AND_REFS,
    timestamp_ms: int | None = None,
) -> FileRow:
    """The row of a decoded FileEvent (v1 or v2) consumed at ``topic[partition]@offset``;
    ``timestamp_ms`` (the Kafka record's) is the event time of an event without one (v1).
    Inline bytes are checked against the event's checksum (:class:`WrongContent`)."""
    mode = content_mode if type(content_mode) is ContentMode else ContentMode(content_mode)
    try:
        return _file_row(fields, topic, partition, offset, mode, timestamp_ms)
    except _Wrong as exc:
        raise WrongContent(topic, partition, offset, str(exc)) from None
    except _Invalid as exc:
        raise InvalidEvent(topic, partition, offset, str(exc)) from None
    except (ValueError, KeyError, TypeError) as exc:
        reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise UnresolvableEvent(topic, partition, offset, reason) from None


def _file_row(
    fields: dict[str, Any],
    topic: str,
    partition: int,
    offset: int,
    mode: ContentMode,
    timestamp_ms: int | None,
) -> FileRow:
    project, path, size = fields["project"], fields["path"], fields["size"]
    checksum, run_id = fields.get("checksum") or "", fields.get("run_id")
    event_time_ms = _millis(fields.get("event_time"))
    if event_time_ms is None and timestamp_ms is not None and timestamp_ms >= 0:
        event_time_ms = timestamp_ms  # a v1 event: when Kafka took it
    if event_time_ms is None:
        raise ValueError("no event_time: versions of the file cannot be ordered")
    if not isinstance(size, int) or size < 0:
        raise _Invalid(f"size {size!r} is not a byte count")
    op_value = fields.get("op")  # the Avro enum's symbol, as a str
    op = Op.UPSERT if op_value in (None, "UPSERT") else Op(str(op_value))
    strategy = fields.get("content_strategy")
    content = content_ref = encoding = commit = None
    if op is Op.DELETE:
        strategy = None
    else:
        if len(checksum) != 64 or checksum.strip(_HEX):  # SHA256, without a regex call
            raise _Invalid("checksum is not a sha256 (64 lowercase hex digits)")
        if strategy is not None:
            strategy = str(strategy)
            content, content_ref, encoding, commit = _content(fields, strategy, size, mode)
        elif fields.get("local_path") is None:  # v1 data has only the producer's path
            raise ValueError("an UPSERT without content_strategy")
        else:
            content_ref = _json({"local_path": fields["local_path"]})
    event_id = fields.get("event_id") or derive_event_id(run_id or "", project, path, op, checksum)
    if "\x00" in f"{project}{path}{event_id}{run_id or ''}{commit or ''}":
        _no_nul(project, path, event_id, run_id, commit)  # names the text
    return _new(FileRow, (
        project, path, checksum, size, strategy, content, content_ref, encoding, commit,
        op is Op.DELETE, event_id, event_time_ms, run_id, topic, partition, offset,
    ))  # fmt: skip


def run_row(fields: dict[str, Any], topic: str, partition: int, offset: int) -> RunRow:
    """The row of a decoded RunEvent consumed at ``topic[partition]@offset``."""
    try:
        event_time_ms = _millis(fields.get("event_time"))
        if event_time_ms is None:
            raise ValueError("no event_time")
        if not fields["run_id"]:
            raise ValueError("an empty run_id")
        counts = fields.get("counts")
        row = RunRow(
            run_id=fields["run_id"],
            kind=str(fields["kind"]),
            project=fields["project"],
            source=strip_credentials(fields["source"]),
            commit=fields.get("commit"),
            event_time_ms=event_time_ms,
            counts=_json(dict(counts)) if counts is not None else None,
            digest=fields.get("digest"),
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
        )
        _no_nul(row.run_id, row.kind, row.project, row.source, row.commit, row.digest)
        return row
    except _Invalid as exc:
        raise InvalidEvent(topic, partition, offset, str(exc)) from None
    except (ValueError, KeyError, TypeError) as exc:
        reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise UnresolvableEvent(topic, partition, offset, reason) from None


def _no_nul(*texts: str | None) -> None:
    """PostgreSQL text cannot hold NUL: refuse it here, for every backend alike."""
    for text in texts:
        if text is not None and "\x00" in text:
            raise _Invalid(f"a NUL character in {text[:40]!r}")
