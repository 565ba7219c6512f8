"""What a decoded event must be before any group acts on it.

An event is input from anyone who can write to a topic. Decoding proves only
that its bytes fit a schema; these checks refuse what fits and is still
hostile or impossible, the same way for every group (the consumer runtime runs
them after decoding, on models and plain dicts alike):

- ``project`` and ``path`` are names: relative, normalised (no empty, ``.`` or
  ``..`` segment, also once Unicode look-alikes are folded with NFKC and with
  ``\\`` read as a separator), no NUL, valid Unicode, at most 255 UTF-8 bytes a
  segment and 4096 in all;
- ``size`` is not negative and an upsert's ``checksum`` is a sha256;
- the event's own time lies at most ``max_skew_ms`` after the Kafka record's
  timestamp: a time in the future would win every later comparison.

A failure raises :class:`~schemas.errors.DeserializationError`, reason
``invalid_event`` or ``event_time_skew``: terminal, so the record is
dead-lettered with that reason and the group goes on.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from schemas.errors import DeserializationError, DeserializationReason
from schemas.models import Event, FileEvent, RunEvent, VerificationEvent

MAX_SEGMENT_BYTES = 255  # NAME_MAX of common file systems
MAX_NAME_BYTES = 4096  # PATH_MAX
DEFAULT_MAX_SKEW_S = 86_400.0
_HEX = b"0123456789abcdef"

Check = Callable[[Mapping[str, Any], int], None]
# Per model checked (others are not): its name fields, the project first, and the field
# of its own time.
_NAMES: dict[type[Event], tuple[tuple[str, ...], str]] = {
    FileEvent: (("project", "path"), "event_time"),
    RunEvent: (("project",), "event_time"),
    VerificationEvent: (("project", "path"), "verified_at"),
}


def name_problem(value: object) -> str | None:
    """Why ``value`` is not a safe relative name (a project or a path), or None."""
    if type(value) is not str:
        return "is not a string"
    if not value:
        return "is empty"
    if "\x00" in value:
        return "holds a NUL character"
    if value.isascii():
        return _segments_problem(value, len(value))
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        return "is not valid Unicode (a lone surrogate)"
    problem = _segments_problem(value, size)
    folded = unicodedata.normalize("NFKC", value)
    if problem is None and folded != value:
        problem = _segments_problem(folded, 0)
        if problem is not None:
            problem += " once Unicode look-alikes are folded (NFKC)"
    return problem


def _segments_problem(value: str, size: int) -> str | None:
    if not value:
        return "is empty"
    if size > MAX_NAME_BYTES:
        return f"is {size} bytes long, over {MAX_NAME_BYTES}"
    if value[0] in "/\\":
        return "is absolute"
    segments = value.split("/")
    if "" in segments:
        return "has an empty segment"
    if "." in segments or ".." in segments:
        return "has a '.' or '..' segment"
    if "\\" in value and any(s in (".", "..") for s in value.split("\\")):
        return "has a '.' or '..' segment between backslashes"
    if size > MAX_SEGMENT_BYTES:
        longest = max(len(s.encode()) for s in segments)
        if longest > MAX_SEGMENT_BYTES:
            return f"has a segment of {longest} bytes, over {MAX_SEGMENT_BYTES}"
    return None


def _plain(value: object) -> bool:
    """The common case, quickly (about 0.3 us): an ASCII name of at most 255 characters,
    no NUL, no backslash, no empty, ``.`` or ``..`` segment, not absolute. False says
    only that :func:`name_problem` must look closer."""
    if type(value) is not str or not value.isascii() or len(value) > MAX_SEGMENT_BYTES:
        return False
    if "\\" in value or "\x00" in value:
        return False
    wrapped = f"/{value}/"  # "" and a leading or trailing "/" make "//"
    return "//" not in wrapped and "/./" not in wrapped and "/../" not in wrapped


def _invalid(message: str) -> DeserializationError:
    return DeserializationError(DeserializationReason.INVALID_EVENT, message)


def _refuse_name(name: str, value: object) -> None:
    problem = name_problem(value)
    if problem is not None:
        shown = repr(value)[:80] if isinstance(value, str) else type(value).__name__
        raise _invalid(f"{name} {shown} {problem}")


def check_for(model: type[Event], max_skew_ms: int) -> Check | None:
    """The check of ``model``'s events (None: nothing to check): a callable taking the
    event's fields (a model's ``__dict__`` or the decoded dict) and the Kafka record's
    timestamp (epoch ms; negative: none). It runs for every record of every group, so
    the common case is short: about 1.5 us for a FileEvent, where the rest of an archive
    drain costs about 12 us an event."""
    if model not in _NAMES:
        return None
    (project_field, *path_fields), time_field = _NAMES[model]
    path_field = path_fields[0] if path_fields else None
    is_file = model is FileEvent
    # The project passed last (a batch is mostly one project), and the latest event time
    # allowed for records of one second of timestamps, made once a second: an event time
    # at most that is within the skew for every record of that second.
    project_ok: object = None
    second, latest = -1, datetime.min.replace(tzinfo=UTC)

    def check(fields: Mapping[str, Any], record_ms: int) -> None:
        nonlocal project_ok, second, latest
        project = fields.get(project_field)
        if project != project_ok or project is None:
            if not _plain(project):
                _refuse_name(project_field, project)
            project_ok = project
        if path_field is not None:
            path = fields.get(path_field)
            if not _plain(path):
                _refuse_name(path_field, path)
        if is_file:
            size, checksum = fields.get("size"), fields.get("checksum")
            if not (
                type(size) is int
                and size >= 0
                and type(checksum) is str
                and len(checksum) == 64
                and checksum.isascii()
                and not checksum.encode().translate(None, _HEX)
            ):
                _check_file(fields)  # says what is wrong (a delete may have no checksum)
        when = fields.get(time_field)
        if record_ms < 0 or not isinstance(when, datetime):
            return
        if record_ms // 1000 != second:
            second = record_ms // 1000
            latest = _at(second * 1000 + max_skew_ms)
        if when <= latest:
            return
        ahead = int(when.timestamp() * 1000) - record_ms
        if ahead > max_skew_ms:
            raise DeserializationError(
                DeserializationReason.EVENT_TIME_SKEW,
                f"{time_field} {when.isoformat()} is {ahead / 1000:.0f} s after the record's"
                f" timestamp, more than consumer.max_event_time_skew_s"
                f" ({max_skew_ms / 1000:.0f} s)",
            )

    return check


def _at(ms: int) -> datetime:
    try:
        return datetime.fromtimestamp(ms / 1000, UTC)
    except (OverflowError, ValueError, OSError):  # beyond year 9999: nothing is too late
        return datetime.max.replace(tzinfo=UTC)


def _check_file(fields: Mapping[str, Any]) -> None:
    size = fields.get("size")
    if type(size) is not int or size < 0:
        raise _invalid(f"size {size!r} is not a byte count")
    checksum = fields.get("checksum")
    if type(checksum) is not str:
        raise _invalid("checksum is not a string")
    if len(checksum) == 64 and checksum.isascii() and not checksum.encode().translate(None, _HEX):
        return  # a sha256: the common case
    if checksum or fields.get("op") != "DELETE":
        raise _invalid(f"checksum {checksum[:80]!r} is not a sha256 (64 lowercase hex digits)")
