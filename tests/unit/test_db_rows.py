"""Decoded events become rows: content, references without credentials, typed refusals."""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime
from typing import Any

import fastavro
import orjson
import pytest
from hypothesis import given

from headrace.errors import HeadraceError, Terminal, is_transient
from headrace.redact import strip_credentials
from schemas.catalog import latest
from schemas.models import (
    ContentStrategy,
    FileEvent,
    GitReference,
    InlineContent,
    ObjectReference,
    Op,
    RunCounts,
    RunEvent,
    RunEventKind,
    TextEncoding,
    derive_event_id,
)
from storage.db import ContentMode, FileRow, UnresolvableEvent, WrongContent, file_row, run_row
from tests.unit.strategies import file_events

SHA = hashlib.sha256(b"hello").hexdigest()
WHEN = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
WHEN_MS = 1_714_979_289_123
PRESIGNED = (
    "https://minio:9000/b/ab/cd?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F"
    "&X-Amz-Signature=deadbeef&X-Amz-Expires=3600"
)


def decoded(event: FileEvent | RunEvent) -> dict[str, Any]:
    """The dict fastavro decodes from the event's bytes (latest schema)."""
    schema = fastavro.parse_schema(latest(event.event_type).json)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, event.to_avro())
    buffer.seek(0)
    found = fastavro.schemaless_reader(buffer, schema, schema)
    assert isinstance(found, dict)
    return found


def event(**changes: Any) -> FileEvent:
    fields: dict[str, Any] = dict(
        project="proj", path="src/a.py", size=5, checksum=SHA, run_id="run-1",
        content_strategy=ContentStrategy.INLINE,
        inline=InlineContent(data=b"hello", encoding=TextEncoding.UTF_8), event_time=WHEN,
    )  # fmt: skip
    return FileEvent(**{**fields, **changes})


def row(fields: dict[str, Any], mode: ContentMode | str = ContentMode.INLINE_AND_REFS) -> FileRow:
    return file_row(fields, "headrace.file-events", 3, 42, mode)


def test_an_inline_version() -> None:
    found = row(decoded(event()))
    assert found == FileRow(
        project="proj", path="src/a.py", sha256=SHA, size=5, content_strategy="INLINE",
        content=b"hello", content_ref=None, text_encoding="UTF_8", git_commit=None,
        deleted=False, event_id=event().event_id, event_time_ms=WHEN_MS, run_id="run-1",
        source_topic="headrace.file-events", source_partition=3, source_offset=42,
    )  # fmt: skip


def test_refs_only_keeps_no_bytes() -> None:
    found = row(decoded(event()), ContentMode.REFS_ONLY)
    assert (found.content, found.content_strategy, found.text_encoding) == (None, "INLINE", "UTF_8")
    assert row(decoded(event()), "refs_only") == found


def test_an_object_reference_is_bucket_and_key_never_the_presigned_url() -> None:
    ref = ObjectReference(bucket="content", key="ab/cd/" + SHA, url=PRESIGNED, expires_at=WHEN)
    found = row(decoded(event(content_strategy="OBJECT_STORAGE", inline=None, object_ref=ref)))
    assert found.content_strategy == "OBJECT_STORAGE" and found.content is None
    assert orjson.loads(found.content_ref or "") == {"bucket": "content", "key": "ab/cd/" + SHA}
    for secret in ("Signature", "deadbeef", "Credential", "AKIA", "?"):
        assert secret not in (found.content_ref or "")


@pytest.mark.parametrize(
    ("url", "clean"),
    [
        ("https://user:hunter22@git.example/r.git", "https://git.example/r.git"),
        ("https://ghp_tokentoken@github.com/o/r", "https://github.com/o/r"),
        ("ssh://git:pw12345@host/r.git", "ssh://git@host/r.git"),
        ("https://host/r.git?private_token=abcd1234", "https://host/r.git"),
        ("/srv/repos/r", "/srv/repos/r"),
    ],
)
def test_a_git_reference_carries_no_credentials(url: str, clean: str) -> None:
    git = GitReference(url=url, commit="c" * 40, ref="main", path="src/a.py", blob_id="b" * 40)
    found = row(decoded(event(content_strategy="GIT_REFERENCE", inline=None, git_ref=git)))
    assert orjson.loads(found.content_ref or "") == {
        "url": clean,
        "commit": "c" * 40,
        "path": "src/a.py",
        "blob_id": "b" * 40,
    }
    assert found.git_commit == "c" * 40 and found.content is None
    for secret in ("hunter22", "ghp_tokentoken", "pw12345", "abcd1234"):
        assert secret not in (found.content_ref or "")


def test_a_delete() -> None:
    gone = FileEvent(project="p", path="x", size=0, checksum="", op=Op.DELETE, event_time=WHEN)
    found = row(decoded(gone))
    assert (found.deleted, found.sha256, found.size) == (True, "", 0)
    assert (found.content_strategy, found.content, found.content_ref) == (None, None, None)
    assert found.event_id == derive_event_id("", "p", "x", Op.DELETE, "")


def test_a_v1_event_loads_with_its_path_as_the_reference() -> None:
    legacy = {"project": "p", "path": "x", "size": 3, "checksum": SHA, "local_path": "/home/u/x"}
    found = row({**legacy, "event_id": "", "event_time": WHEN})
    assert (found.content_strategy, found.content) == (None, None)
    assert found.content_ref == '{"local_path":"/home/u/x"}'
    assert found.event_id == derive_event_id("", "p", "x", Op.UPSERT, SHA)


def test_an_event_without_event_time_takes_the_records_timestamp() -> None:
    legacy = {"project": "p", "path": "x", "size": 3, "checksum": SHA, "local_path": "/home/u/x"}
    found = file_row(legacy, "headrace.file-events", 3, 42, timestamp_ms=WHEN_MS)
    assert found.event_time_ms == WHEN_MS
    with pytest.raises(UnresolvableEvent, match="no event_time"):
        file_row(legacy, "headrace.file-events", 3, 42, timestamp_ms=-1)  # no timestamp


def test_inline_bytes_must_hash_to_the_checksum() -> None:
    with pytest.raises(WrongContent, match="does not hash") as caught:
        row(decoded(event(checksum="cd" * 32)))
    assert caught.value.dead_letter_reason == "CHECKSUM_MISMATCH"


@pytest.mark.parametrize(
    ("value", "millis"),
    [
        (WHEN, WHEN_MS),
        (WHEN.replace(tzinfo=None), WHEN_MS),  # naive: taken as UTC
        (datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC), -1),
        (WHEN_MS, WHEN_MS),  # already millis (logical types off)
    ],
)
def test_event_time_becomes_exact_millis(value: Any, millis: int) -> None:
    assert row({**decoded(event()), "event_time": value}).event_time_ms == millis


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        (
            {"content_strategy": "OBJECT_STORAGE", "inline": None},
            "OBJECT_STORAGE without object_ref",
        ),
        ({"content_strategy": "GIT_REFERENCE", "inline": None}, "GIT_REFERENCE without git_ref"),
        ({"inline": None}, "INLINE without inline"),
        ({"content_strategy": None, "inline": None}, "without content_strategy"),
        ({"content_strategy": "TELEPATHY"}, "unknown content_strategy"),
        ({"event_time": None}, "no event_time"),
        ({"checksum": "AB" * 32}, "not a sha256"),
        ({"checksum": ""}, "not a sha256"),
        ({"size": -1}, "not a byte count"),
        ({"size": 6}, "inline content is 5 bytes, size says 6"),
        ({"path": "a\x00b"}, "NUL"),
        ({"op": "TRUNCATE"}, "TRUNCATE"),
    ],
)
def test_an_event_that_cannot_become_a_row_says_why(changes: dict[str, Any], why: str) -> None:
    with pytest.raises(UnresolvableEvent) as refused:
        row({**decoded(event()), **changes})
    error = refused.value
    assert isinstance(error, Terminal) and isinstance(error, HeadraceError)
    assert not is_transient(error)
    assert why in str(error) and "headrace.file-events[3]@42" in str(error)
    assert (error.topic, error.partition, error.offset) == ("headrace.file-events", 3, 42)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"size": -1}, "INVALID_EVENT"),
        ({"path": "a\x00b"}, "INVALID_EVENT"),
        ({"checksum": "AB" * 32}, "INVALID_EVENT"),
        ({"size": 6}, "CHECKSUM_MISMATCH"),
        ({"event_time": None}, "PAYLOAD_MISSING"),
        ({"inline": None}, "PAYLOAD_MISSING"),
    ],
)
def test_each_refusal_names_its_dead_letter_reason(changes: dict[str, Any], reason: str) -> None:
    """A negative size or a NUL is not a missing payload (the runtime's checks refuse
    them first; this is the row builder's own line)."""
    with pytest.raises(UnresolvableEvent) as refused:
        row({**decoded(event()), **changes})
    assert refused.value.dead_letter_reason == reason


def test_a_missing_field_is_unresolvable() -> None:
    fields = decoded(event())
    del fields["project"]
    with pytest.raises(UnresolvableEvent, match="missing field 'project'"):
        row(fields)


@given(file_events())
def test_any_event_is_a_row_or_a_refusal(found_event: FileEvent) -> None:
    fields = found_event.to_avro()
    try:
        result = row(fields)
    except UnresolvableEvent:
        return
    assert result.project == found_event.project and result.path == found_event.path
    if result.content_strategy == "OBJECT_STORAGE":
        assert set(orjson.loads(result.content_ref or "")) == {"bucket", "key"}
    if result.content_strategy == "GIT_REFERENCE":
        assert found_event.git_ref is not None
        url = orjson.loads(result.content_ref or "")["url"]
        assert url == strip_credentials(found_event.git_ref.url)


def test_a_run_event() -> None:
    completed = RunEvent(
        run_id="run-1", kind=RunEventKind.COMPLETED, project="p",
        source="https://u:secret99@git.example/r.git", commit="c" * 40, event_time=WHEN,
        counts=RunCounts(files=2, bytes=10, inline=2), digest="d" * 64,
    )  # fmt: skip
    found = run_row(decoded(completed), "headrace.run-events", 0, 7)
    assert (found.run_id, found.kind, found.commit) == ("run-1", "COMPLETED", "c" * 40)
    assert found.source == "https://git.example/r.git"
    assert orjson.loads(found.counts or "") == RunCounts(files=2, bytes=10, inline=2).model_dump()
    assert (found.event_time_ms, found.source_offset, found.digest) == (WHEN_MS, 7, "d" * 64)
    started = RunEvent(
        run_id="run-1", kind=RunEventKind.STARTED, project="p", source="/src", event_time=WHEN
    )
    assert run_row(decoded(started), "t", 0, 1).counts is None


@pytest.mark.parametrize(
    ("changes", "why"), [({"event_time": None}, "no event_time"), ({"run_id": ""}, "empty run_id")]
)
def test_a_run_event_that_cannot_become_a_row(changes: dict[str, Any], why: str) -> None:
    started = RunEvent(
        run_id="r", kind=RunEventKind.STARTED, project="p", source="/src", event_time=WHEN
    )
    with pytest.raises(UnresolvableEvent, match=why):
        run_row({**decoded(started), **changes}, "headrace.run-events", 0, 1)
