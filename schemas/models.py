"""The events as typed, frozen models, and their Avro records.

Enum members are their Avro symbols, in name and value (``Op.UPSERT`` is
``"UPSERT"``), so a model dumps straight to the dict fastavro writes:
``to_avro`` and ``from_avro`` are pydantic's own dump and validation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from schemas.catalog import EventType


class Op(StrEnum):
    UPSERT = "UPSERT"
    DELETE = "DELETE"


class ContentStrategy(StrEnum):
    INLINE = "INLINE"
    OBJECT_STORAGE = "OBJECT_STORAGE"
    GIT_REFERENCE = "GIT_REFERENCE"


class TextEncoding(StrEnum):
    UTF_8 = "UTF_8"
    LATIN_1 = "LATIN_1"
    BINARY = "BINARY"


class RunEventKind(StrEnum):
    STARTED = "STARTED"
    COMPLETED = "COMPLETED"


class SkipReason(StrEnum):
    OTHER = "OTHER"
    TOO_LARGE = "TOO_LARGE"
    EXCLUDED = "EXCLUDED"
    LFS_POINTER = "LFS_POINTER"
    SYMLINK_OUTSIDE_ROOT = "SYMLINK_OUTSIDE_ROOT"
    UNREADABLE = "UNREADABLE"
    CHANGED_WHILE_READ = "CHANGED_WHILE_READ"  # v2
    OBJECT_STORE_UNAVAILABLE = "OBJECT_STORE_UNAVAILABLE"  # v2


class VerificationStatus(StrEnum):
    ERROR = "ERROR"
    OK = "OK"
    MISMATCH = "MISMATCH"
    MISSING = "MISSING"


class DeadLetterReason(StrEnum):
    OTHER = "OTHER"
    DESERIALIZATION = "DESERIALIZATION"
    SCHEMA = "SCHEMA"
    PAYLOAD_MISSING = "PAYLOAD_MISSING"
    CHECKSUM_MISMATCH = "CHECKSUM_MISMATCH"
    STORAGE_CONSTRAINT = "STORAGE_CONSTRAINT"
    REFUSED = "REFUSED"  # v2: a hostile or disallowed content reference
    INVALID_EVENT = "INVALID_EVENT"  # v3: decodes, but a field is impossible or hostile
    EVENT_TIME_SKEW = "EVENT_TIME_SKEW"  # v3: the event's time is too far in the future


def to_millis(value: datetime) -> datetime:
    """Avro's timestamp-millis keeps milliseconds in UTC: so does the model."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).replace(microsecond=aware.microsecond // 1000 * 1000)


Millis = Annotated[datetime, AfterValidator(to_millis)]


class AvroRecord(BaseModel):
    """A frozen model that converts to and from its Avro record."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_avro(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_avro(cls, record: dict[str, Any]) -> Self:
        return cls.model_validate(record)


class Event(AvroRecord):
    """An event with a schema of its own in schemas/avro/."""

    event_type: ClassVar[EventType]


# --- FileEvent -------------------------------------------------------------------


class InlineContent(AvroRecord):
    data: bytes
    encoding: TextEncoding


class ObjectReference(AvroRecord):
    bucket: str
    key: str
    url: str | None = None
    expires_at: Millis | None = None


class GitReference(AvroRecord):
    url: str
    commit: str
    ref: str | None = None
    path: str
    blob_id: str


def derive_event_id(run_id: str, project: str, path: str, op: Op, checksum: str) -> str:
    """The deterministic event id: a retry, a resumed run or a replay makes the same one."""
    material = "\x1f".join((run_id, project, path, op.name, checksum)).encode()
    return hashlib.sha256(material).hexdigest()[:32]


class FileEvent(Event):
    """A file's version or deletion (v2 shape); v1 data arrives with ``local_path`` set."""

    event_type: ClassVar[EventType] = EventType.FILE_EVENT

    project: str
    path: str
    size: int = Field(ge=0)
    checksum: str
    local_path: str | None = None
    event_id: str = ""
    run_id: str | None = None
    op: Op = Op.UPSERT
    content_strategy: ContentStrategy | None = None
    inline: InlineContent | None = None
    object_ref: ObjectReference | None = None
    git_ref: GitReference | None = None
    producer_version: str | None = None
    event_time: Millis | None = None

    @model_validator(mode="after")
    def _fill_event_id(self) -> Self:
        if not self.event_id:
            derived = derive_event_id(
                self.run_id or "", self.project, self.path, self.op, self.checksum
            )
            object.__setattr__(self, "event_id", derived)
        return self

    @property
    def is_legacy(self) -> bool:
        """Written as v1: only the producer's disk path tells where the content is."""
        return self.local_path is not None and self.content_strategy is None


def inline_file_record(
    *,
    project: str,
    path: str,
    checksum: str,
    run_id: str,
    producer_version: str,
    event_time: datetime,
    data: bytes,
    encoding: TextEncoding,
) -> dict[str, Any]:
    """``FileEvent(...).to_avro()`` of an inline file's upsert, without the model: the
    same dict (tests/unit/test_ingest_workers.py holds them equal), at a fifth of the
    cost, for the ingest's tiny files (about 15 us a file less)."""
    return {
        "project": project,
        "path": path,
        "size": len(data),
        "checksum": checksum,
        "local_path": None,
        "event_id": derive_event_id(run_id, project, path, Op.UPSERT, checksum),
        "run_id": run_id,
        "op": Op.UPSERT,
        "content_strategy": ContentStrategy.INLINE,
        "inline": {"data": data, "encoding": encoding},
        "object_ref": None,
        "git_ref": None,
        "producer_version": producer_version,
        "event_time": to_millis(event_time),
    }


# --- RunEvent --------------------------------------------------------------------


class RunCounts(AvroRecord):
    files: int = 0
    bytes: int = 0
    inline: int = 0
    object_storage: int = 0
    git_reference: int = 0
    deleted: int = 0
    skipped: int = 0


class SkippedFile(AvroRecord):
    path: str
    reason: SkipReason
    detail: str | None = None


def run_digest(files: Iterable[tuple[str, str]]) -> str:
    """sha256 over the sorted ``path NUL sha256 LF`` lines: proves a sink holds exactly a run."""
    digest = hashlib.sha256()
    for path, checksum in sorted(files):
        digest.update(f"{path}\0{checksum}\n".encode())
    return digest.hexdigest()


class RunEvent(Event):
    event_type: ClassVar[EventType] = EventType.RUN_EVENT

    run_id: str
    kind: RunEventKind
    project: str
    source: str
    commit: str | None = None
    event_time: Millis
    producer_version: str | None = None
    counts: RunCounts | None = None
    skipped: list[SkippedFile] = Field(default_factory=list)
    skip_counts: dict[str, int] = Field(default_factory=dict)  # v2: per reason, all of them
    digest: str | None = None


# --- VerificationEvent and DeadLetter ----------------------------------------------


class VerificationEvent(Event):
    event_type: ClassVar[EventType] = EventType.VERIFICATION_EVENT

    event_id: str
    run_id: str | None = None
    project: str
    path: str
    status: VerificationStatus
    expected_checksum: str
    actual_checksum: str | None = None
    expected_size: int
    actual_size: int | None = None
    detail: str | None = None
    source_topic: str
    source_partition: int
    source_offset: int
    verifier: str
    verified_at: Millis


class Header(AvroRecord):
    key: str
    value: bytes | None = None


class DeadLetter(Event):
    event_type: ClassVar[EventType] = EventType.DEAD_LETTER

    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    value: bytes | None = None
    headers: list[Header] = Field(default_factory=list)
    reason: DeadLetterReason
    error: str
    group: str
    attempts: int
    failed_at: Millis


# --- RowEvent --------------------------------------------------------------------


class Column(AvroRecord):
    """One column of a row: its name, PostgreSQL type name and text form (None: NULL).

    The encoding is producers/tables/rows.py's; the model only carries it.
    """

    name: str
    type: str
    value: str | None = None


def derive_row_event_id(
    source: str, schema: str, table: str, key: Iterable[Column], checksum: str
) -> str:
    """The deterministic row event id: the same row archived again (a rolled-back batch
    retried, a resumed run) makes the same id, whatever the run or batch."""
    return row_event_id(source, schema, table, [(c.name, c.value) for c in key], checksum)


def row_event_id(
    source: str, schema: str, table: str, key: Iterable[tuple[str, str | None]], checksum: str
) -> str:
    """:func:`derive_row_event_id` of the key as (name, value) pairs: sha256 of the compact
    JSON ``[source, schema, table, checksum, [name, value]...]`` (non-ASCII literal), its
    first 32 hex digits. orjson writes what ``json.dumps(..., ensure_ascii=False,
    separators=(",", ":"))`` writes, byte for byte (tests/unit/test_row_codec_speed.py)."""
    material = [source, schema, table, checksum, *([n, v] for n, v in key)]
    try:
        text = orjson.dumps(material)
    except orjson.JSONEncodeError:  # a lone surrogate: fail as json fails
        text = json.dumps(material, ensure_ascii=False, separators=(",", ":")).encode()
    return hashlib.sha256(text).hexdigest()[:32]


class RowEvent(Event):
    """One archived row of a PostgreSQL table (v1)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    event_type: ClassVar[EventType] = EventType.ROW_EVENT

    event_id: str = ""
    run_id: str
    batch_id: str
    source: str
    # ``schema`` in Avro; the attribute is renamed, ``BaseModel.schema`` exists.
    table_schema: str = Field(alias="schema")
    table: str
    key: list[Column]
    row: list[Column]
    checksum: str
    producer_version: str | None = None
    event_time: Millis

    @model_validator(mode="after")
    def _fill_event_id(self) -> Self:
        if not self.event_id:
            derived = derive_row_event_id(
                self.source, self.table_schema, self.table, self.key, self.checksum
            )
            object.__setattr__(self, "event_id", derived)
        return self

    def to_avro(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


EVENT_MODELS: dict[EventType, type[Event]] = {
    model.event_type: model
    for model in (FileEvent, RunEvent, VerificationEvent, DeadLetter, RowEvent)
}
