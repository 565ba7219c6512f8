"""An inline file's event, made from its bytes: read, hashed, its encoding detected and
Avro-encoded, in one function that a worker process runs as well as the ingest itself.

:func:`prepare_inline` is what a run does for every file sent inline, with one worker
or with many (:mod:`producers.pool`): the event, its deterministic id and its Avro body
are the same wherever it ran. What it gives back is an :class:`EncodedFile` (the few
fields the run needs, and the body) or a :class:`~producers.policy.Skip`: never an
exception for a file that cannot be read, so a worker reports one as the run itself does.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cache, lru_cache
from typing import Any, BinaryIO, NamedTuple

import fastavro

from producers.base import file_signature
from producers.policy import FilePolicy, Skip, detect_encoding
from schemas import catalog
from schemas.avro_writer import avro_long, avro_string
from schemas.catalog import EventType
from schemas.models import (
    ContentStrategy,
    FileEvent,
    Op,
    SkipReason,
    TextEncoding,
    derive_event_id,
    inline_file_record,
    to_millis,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """What every file event of a run shares."""

    project: str
    run_id: str
    producer: str
    now: datetime
    inline_limit: int
    encode: bool = True  # False: nothing will publish the body (a dry run without a sink)


class EncodedFile(NamedTuple):
    """An inline file's event as the run needs it: its path, size, sha256, the file's
    modification time as read, and the event's Avro body (without the wire-format
    header, which the publisher adds: the schema id is the registry's). A tuple: a
    worker sends 64 of them in a few microseconds (a dataclass takes ten times as long)."""

    project: str
    path: str
    size: int
    checksum: str
    mtime_ns: int | None
    body: bytes

    @property
    def op(self) -> Op:
        return Op.UPSERT

    @property
    def content_strategy(self) -> ContentStrategy:
        return ContentStrategy.INLINE

    def event(self) -> FileEvent:
        """The FileEvent the body holds (for sinks that take events, not bodies)."""
        record = fastavro.schemaless_reader(io.BytesIO(self.body), file_schema(), None)
        return FileEvent.from_avro(record)  # type: ignore[arg-type]


@cache
def file_schema() -> Any:
    """The parsed FileEvent schema events are written with (the latest local version,
    as :class:`schemas.serde.EventSerializer` writes them)."""
    return fastavro.parse_schema(catalog.latest(EventType.FILE_EVENT).json)


# One file to prepare: its path in the run, how to open it, where it is on disk (None:
# a git blob), its size and its signature as the walk saw them.
Task = tuple[str, Callable[[], BinaryIO], str | None, int, tuple[int, int, int, int] | None]


def prepare_inline(task: Task, ctx: Context) -> EncodedFile | Skip:
    """The file's event, from bytes that did not change while they were read: a file
    whose size, times or inode differ after the read is read once more, then skipped as
    CHANGED_WHILE_READ; one that cannot be read is skipped as UNREADABLE, with why."""
    path, opener, local, size, signature = task
    if size > ctx.inline_limit:
        return Skip(SkipReason.TOO_LARGE, f"{size} bytes > --inline-limit")
    try:
        for attempt in range(2):
            # the walk's stat is the first "before"; a file changed since reads again
            before = signature if attempt == 0 and signature else _signature(local)
            with opener() as stream:
                data = stream.read(ctx.inline_limit + 1)
            if before == _signature(local):
                return _encoded(path, data, before[1] if before else None, ctx)
    except OSError as exc:  # refused, gone since the walk, an I/O error
        reason = (exc.strerror or type(exc).__name__).lower()
        return Skip(SkipReason.UNREADABLE, f"cannot be read: {reason}")
    return Skip(SkipReason.CHANGED_WHILE_READ, "it changed while it was read, twice")


def prepare_many(tasks: list[Task], ctx: Context) -> list[EncodedFile | Skip]:
    """:func:`prepare_inline` for each task, in order: one worker's share."""
    return [prepare_inline(task, ctx) for task in tasks]


def _signature(local: str | None) -> tuple[int, int, int, int] | None:
    return None if local is None else file_signature(os.stat(local))


def _encoded(path: str, data: bytes, mtime_ns: int | None, ctx: Context) -> EncodedFile | Skip:
    if (skip := FilePolicy.by_content(data[:64], len(data))) is not None:
        return skip
    checksum = hashlib.sha256(data).hexdigest()
    body = body_writer(ctx)(path, checksum, data, detect_encoding(data)) if ctx.encode else b""
    return EncodedFile(ctx.project, path, len(data), checksum, mtime_ns, body)


Writer = Callable[[str, str, bytes, TextEncoding], bytes]


@lru_cache(maxsize=4)  # a run's, in each process
def body_writer(ctx: Context) -> Writer:
    """The run's writer of inline bodies: :class:`_InlineWriter` if it writes what
    fastavro writes (checked on probes, once a run and process), else fastavro."""
    fast = _InlineWriter(ctx)

    def slow(path: str, checksum: str, data: bytes, encoding: TextEncoding) -> bytes:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, file_schema(), fast.record(path, checksum, data, encoding))
        return out.getvalue()

    probes = [("p/é.py", "0" * 64, bytes(range(256)) * 80, e) for e in TextEncoding]
    if all(fast(*probe) == slow(*probe) for probe in (*probes, ("", "", b"", TextEncoding.UTF_8))):
        return fast
    log.warning("the FileEvent schema's layout is not the one expected: fastavro writes bodies")
    return slow


class _InlineWriter:
    """An inline upsert's Avro body, written straight from its bytes: what fastavro
    writes of its record (about 2 us a file, against 20 us for fastavro, which
    interprets the schema's unions and logical types anew for every record). The run's
    constant fields are encoded once; :func:`body_writer` checks it against fastavro."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._millis = to_millis(ctx.now)
        epoch_ms = int(self._millis.timestamp() * 1000)
        self._head = avro_string(ctx.project)
        # local_path null; then after the event id: run_id, op UPSERT, strategy INLINE,
        # the inline branch
        self._mid = b"\x02" + avro_string(ctx.run_id) + b"\x00" + b"\x02\x00" + b"\x02"
        # object_ref and git_ref null, producer_version and event_time
        self._tail = b"\x00\x00\x02" + avro_string(ctx.producer) + b"\x02" + avro_long(epoch_ms)
        self._encodings = {e: avro_long(i) for i, e in enumerate(TextEncoding)}

    def __call__(self, path: str, checksum: str, data: bytes, encoding: TextEncoding) -> bytes:
        ctx = self.ctx
        event_id = derive_event_id(ctx.run_id, ctx.project, path, Op.UPSERT, checksum)
        return b"".join(
            (
                self._head,
                avro_string(path),
                avro_long(len(data)),
                avro_string(checksum),
                b"\x00",
                avro_string(event_id),
                self._mid,
                avro_long(len(data)),
                data,
                self._encodings[encoding],
                self._tail,
            )
        )

    def record(self, path: str, checksum: str, data: bytes, encoding: TextEncoding) -> Any:
        ctx = self.ctx
        return inline_file_record(
            project=ctx.project,
            path=path,
            checksum=checksum,
            run_id=ctx.run_id,
            producer_version=ctx.producer,
            event_time=self._millis,
            data=data,
            encoding=encoding,
        )
