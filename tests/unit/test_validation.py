"""The checks every group's records pass after decoding (schemas.validation): hostile
names, impossible fields and event times too far in the future are refused with the
dead-letter reason that names them, on models and plain dicts alike."""

from __future__ import annotations

import os
import posixpath
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.serialization import MessageField, SerializationContext
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.dlq import REASON_OF
from schemas.catalog import EventType
from schemas.errors import DeserializationError, DeserializationReason
from schemas.models import (
    DeadLetter,
    DeadLetterReason,
    FileEvent,
    RunEvent,
    VerificationEvent,
)
from schemas.serde import EventDeserializer, EventSerializer
from schemas.validation import DEFAULT_MAX_SKEW_S, check_for, name_problem

SHA = "ab" * 32
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
DAY_MS = int(DEFAULT_MAX_SKEW_S * 1000)
CTX = SerializationContext("unit.validation", MessageField.VALUE)
INVALID, SKEW = DeadLetterReason.INVALID_EVENT, DeadLetterReason.EVENT_TIME_SKEW

HOSTILE_PATHS = [
    "../../etc/passwd",
    "/abs/path",
    "",
    "x/../../../y.txt",
    "..",
    ".",
    "a/./b",
    "a//b",
    "a/",
    "a\x00b",
    "\x00",
    "..\\..\\windows\\win.ini",
    "\\abs",
    "\uff0e\uff0e/etc/passwd",  # fullwidth full stops: '..' once folded
    "a\uff0f\uff0e\uff0e\uff0fb",  # fullwidth solidus and full stops: 'a/../b'
    "\u2025/x",  # TWO DOT LEADER folds to '..'
    "x" * 256,  # a segment longer than NAME_MAX
    "\u00e9" * 128,  # 256 UTF-8 bytes in one segment
    "/".join(["x" * 200] * 21),  # over 4096 bytes in all
    "a\ud800b",  # a lone surrogate
]
GOOD_PATHS = [
    "src/a.py",
    "README",
    ".github/workflows/ci.yml",
    "...",
    "a..b/..c",
    "caf\u00e9/na\u0131ve.txt",
    "x" * 255,
    "/".join(["x" * 200] * 20),
    "with space/and\nnewline",
]


def fields(**change: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "project": "p",
        "path": "src/a.py",
        "size": 3,
        "checksum": SHA,
        "op": "UPSERT",
        "event_time": NOW,
    }
    base.update(change)
    return base


def check_file(values: dict[str, Any], record_ms: int = NOW_MS) -> None:
    check = check_for(FileEvent, DAY_MS)
    assert check is not None
    check(values, record_ms)


def refused(values: dict[str, Any], record_ms: int = NOW_MS) -> DeserializationError:
    with pytest.raises(DeserializationError) as caught:
        check_file(values, record_ms)
    return caught.value


@pytest.mark.parametrize("path", HOSTILE_PATHS, ids=repr)
def test_a_hostile_path_is_an_invalid_event(path: str) -> None:
    error = refused(fields(path=path))
    assert error.reason is DeserializationReason.INVALID_EVENT
    assert str(error).startswith("invalid_event: path ")
    assert REASON_OF[error.reason] is DeadLetterReason.INVALID_EVENT


@pytest.mark.parametrize("project", ["../../escape", "/abs", "", "a\x00", "p/", ".."], ids=repr)
def test_a_hostile_project_is_an_invalid_event(project: str) -> None:
    error = refused(fields(project=project))
    assert error.reason is DeserializationReason.INVALID_EVENT
    assert "project" in str(error)


@pytest.mark.parametrize("path", GOOD_PATHS, ids=repr)
def test_ordinary_names_pass(path: str) -> None:
    check_file(fields(path=path, project="org/repo"))


def test_a_negative_size_is_an_invalid_event_not_a_missing_payload() -> None:
    error = refused(fields(size=-1))
    assert error.reason is DeserializationReason.INVALID_EVENT
    assert "size -1" in str(error)


@pytest.mark.parametrize("checksum", ["", "abc", "AB" * 32, "g" * 64, SHA + "0"])
def test_an_upsert_checksum_that_is_not_a_sha256_is_an_invalid_event(checksum: str) -> None:
    assert refused(fields(checksum=checksum)).reason is DeserializationReason.INVALID_EVENT


def test_a_delete_may_have_no_checksum_but_not_a_bad_one() -> None:
    check_file(fields(op="DELETE", checksum="", size=0))
    check_file(fields(op="DELETE", checksum=SHA, size=0))
    assert refused(fields(op="DELETE", checksum="zz")).reason is DeserializationReason.INVALID_EVENT


def test_an_event_time_beyond_the_skew_is_its_own_reason() -> None:
    error = refused(fields(event_time=datetime(2100, 1, 1, tzinfo=UTC)))
    assert error.reason is DeserializationReason.EVENT_TIME_SKEW
    assert REASON_OF[error.reason] is DeadLetterReason.EVENT_TIME_SKEW
    assert "consumer.max_event_time_skew_s" in str(error)
    just_over = NOW + timedelta(milliseconds=DAY_MS + 1)
    assert refused(fields(event_time=just_over)).reason is DeserializationReason.EVENT_TIME_SKEW


def test_an_event_time_within_the_skew_or_in_the_past_passes() -> None:
    check_file(fields(event_time=NOW + timedelta(milliseconds=DAY_MS)))
    check_file(fields(event_time=NOW + timedelta(hours=1)))
    check_file(fields(event_time=datetime(2001, 1, 1, tzinfo=UTC)))
    check_file(fields(event_time=None))  # a v1 event: the load group takes the record's time
    check_file(fields(event_time=datetime(2100, 1, 1, tzinfo=UTC)), record_ms=-1)  # no timestamp


def test_the_skew_is_configurable() -> None:
    check = check_for(FileEvent, 60_000)
    assert check is not None
    check(fields(event_time=NOW + timedelta(seconds=60)), NOW_MS)
    with pytest.raises(DeserializationError, match="event_time_skew"):
        check(fields(event_time=NOW + timedelta(seconds=61)), NOW_MS)


def test_run_and_verification_events_are_checked_too() -> None:
    run = check_for(RunEvent, DAY_MS)
    verification = check_for(VerificationEvent, DAY_MS)
    assert run is not None and verification is not None
    with pytest.raises(DeserializationError, match="project '../../escape'"):
        run({"project": "../../escape", "event_time": NOW}, NOW_MS)
    with pytest.raises(DeserializationError, match="event_time_skew"):
        run({"project": "p", "event_time": datetime(2100, 1, 1, tzinfo=UTC)}, NOW_MS)
    with pytest.raises(DeserializationError, match="path '/etc/shadow'"):
        verification({"project": "p", "path": "/etc/shadow", "verified_at": NOW}, NOW_MS)
    assert check_for(DeadLetter, DAY_MS) is None  # no group reads dead letters


def mock_registry() -> SchemaRegistryClient:
    return SchemaRegistryClient.new_client({"url": "mock://"})


@pytest.mark.parametrize("path", ["../../etc/passwd", "a\x00b", "/abs/path", "ok/file"])
def test_models_and_plain_dicts_are_checked_alike(path: str) -> None:
    """The runtime hands a sink a model or (needs_models False) the decoded dict: the
    check sees the same fields either way."""
    registry = mock_registry()
    event = FileEvent(project="p", path=path, size=1, checksum=SHA, event_time=NOW)
    payload = EventSerializer(registry, EventType.FILE_EVENT)(event, CTX)
    decoder = EventDeserializer(registry, FileEvent)
    outcomes: list[DeserializationReason | None] = []
    for form in (decoder.decode(payload), decoder(payload).__dict__):
        try:
            check_file(form)
            outcomes.append(None)
        except DeserializationError as exc:
            outcomes.append(exc.reason)
    expected = None if path == "ok/file" else DeserializationReason.INVALID_EVENT
    assert outcomes == [expected, expected]


def test_a_negative_size_is_an_invalid_event_as_a_model_and_as_a_dict() -> None:
    registry = mock_registry()
    good = FileEvent(project="p", path="a", size=0, checksum=SHA, event_time=NOW)
    bad = FileEvent.model_construct(**(good.__dict__ | {"size": -5}))  # bypasses the model
    payload = EventSerializer(registry, EventType.FILE_EVENT)(bad, CTX)
    decoder = EventDeserializer(registry, FileEvent)
    with pytest.raises(DeserializationError, match="size") as as_model:
        decoder(payload)
    assert as_model.value.reason is DeserializationReason.INVALID_EVENT
    assert refused(decoder.decode(payload)).reason is DeserializationReason.INVALID_EVENT


def test_tombstones_and_empty_values_are_named() -> None:
    decoder = EventDeserializer(mock_registry(), FileEvent)
    with pytest.raises(DeserializationError, match="tombstone") as tombstone:
        decoder(None)
    with pytest.raises(DeserializationError, match="0 bytes") as empty:
        decoder(b"")
    for caught in (tombstone, empty):
        assert REASON_OF[caught.value.reason] is DeadLetterReason.DESERIALIZATION


PIECES = ["..", ".", "", "a", "\uff0e\uff0e", "\u2025", "b\\..", "x" * 256, "\x00", "\u00e9", "/"]
NAMES = st.lists(
    st.sampled_from(PIECES) | st.text(st.characters(codec="utf-8"), max_size=8), min_size=1
).map("/".join)


@settings(max_examples=500, deadline=None)
@given(NAMES | st.text(st.characters(codec="utf-8") | st.sampled_from("./\\\x00\uff0e\uff0f")))
def test_an_accepted_name_never_leaves_its_directory(name: str) -> None:
    """Whatever text passes, joined under a root it stays under the root, NFKC-folded
    too, and is already normalised."""
    if name_problem(name) is not None:
        return
    for form in (name, unicodedata.normalize("NFKC", name)):
        assert not form.startswith("/")
        assert posixpath.normpath(form) == form
        root = "/srv/root"
        joined = posixpath.normpath(posixpath.join(root, form.replace("\\", "/")))
        assert joined.startswith(root + "/")
        assert "\x00" not in form
    assert all(len(s.encode()) <= 255 for s in name.split("/"))
    assert len(os.fsencode(name)) <= 4096


@pytest.mark.parametrize("reason", [INVALID, SKEW])
def test_the_new_reasons_read_as_other_for_an_older_reader(reason: DeadLetterReason) -> None:
    registry = mock_registry()
    letter = DeadLetter(
        topic="t",
        partition=0,
        offset=1,
        reason=reason,
        error="x",
        group="g",
        attempts=1,
        failed_at=NOW,
    )
    payload = EventSerializer(registry, EventType.DEAD_LETTER)(letter, CTX)
    old = EventDeserializer(registry, DeadLetter, reader_version=2)(payload, CTX)
    assert old.reason is DeadLetterReason.OTHER
    assert EventDeserializer(registry, DeadLetter)(payload, CTX).reason is reason
