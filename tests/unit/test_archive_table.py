"""archive-table's hermetic parts: the age option and the verification of a read-back batch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from headrace.settings import load_settings
from producers.errors import VerificationFailed
from producers.tables import rows
from producers.tables.archiver import _Run, transactional_id
from producers.tables.catalog import TableRef
from producers.tables.cli import parse_age
from producers.tables.confirm import ArchiveConfirm, days_around
from schemas.models import Column, RowEvent
from storage.archive import Archive, ArchiveRecord


@pytest.mark.parametrize(
    ("text", "age"),
    [
        ("90d", timedelta(days=90)),
        ("12h", timedelta(hours=12)),
        ("30m", timedelta(minutes=30)),
        ("45s", timedelta(seconds=45)),
        ("1d12h", timedelta(days=1, hours=12)),
    ],
)
def test_ages(text: str, age: timedelta) -> None:
    assert parse_age(text) == age


@pytest.mark.parametrize("text", ["", "90", "d", "9x", "-1d", "1.5d", "90 days"])
def test_bad_ages(text: str) -> None:
    with pytest.raises(ValueError, match="not an age"):
        parse_age(text)


def event(i: int) -> RowEvent:
    row = [Column(name="id", type="int8", value=str(i)), Column(name="t", type="text", value="x")]
    return RowEvent(
        run_id="r",
        batch_id="r-1",
        source="s",
        table_schema="public",
        table="events",
        key=row[:1],
        row=row,
        checksum=rows.checksum(row),
        event_time=datetime.now(UTC),
    )


def archived(e: RowEvent) -> dict[str, Any]:
    return e.to_avro()


def test_a_batch_archived_whole_verifies() -> None:
    events = [event(i) for i in range(3)]
    _Run._verify("b", events, [archived(e) for e in events])


def test_a_missing_row_fails_verification() -> None:
    events = [event(i) for i in range(3)]
    with pytest.raises(VerificationFailed, match="3 rows published but 2 archived"):
        _Run._verify("b", events, [archived(e) for e in events[:2]])


def test_an_archived_row_that_differs_fails_verification() -> None:
    events = [event(i) for i in range(3)]
    changed = [archived(e) for e in events]
    changed[1]["row"][1]["value"] = "y"  # the row as archived is not the row selected
    with pytest.raises(VerificationFailed, match="1 archived rows do not match"):
        _Run._verify("b", events, changed)


def test_a_checksum_field_that_disagrees_with_its_row_fails_verification() -> None:
    events = [event(i) for i in range(2)]
    changed = [archived(e) for e in events]
    changed[0]["checksum"] = "0" * 64
    with pytest.raises(VerificationFailed, match="do not match"):
        _Run._verify("b", events, changed)


def test_the_transactional_id_is_per_source_and_table() -> None:
    a = transactional_id("s", TableRef("public", "events"))
    assert a != transactional_id("s", TableRef("public", "other"))
    assert a != transactional_id("t", TableRef("public", "events"))


def test_confirm_waits_for_published_segments_and_reads_back_those_offsets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADRACE_ARCHIVE__ROOT", str(tmp_path / "archive"))
    settings = load_settings()
    topic = settings.kafka.topics.row_events
    now = datetime.now(UTC)
    ms = int(now.timestamp() * 1000)
    archive = Archive(tmp_path / "archive")
    events = [event(i) for i in range(4)]
    records = [
        ArchiveRecord(topic, 0, o, ms, ms, None, None, e.to_avro()) for o, e in enumerate(events)
    ]
    archive.append(records)  # written to an open segment: not durable yet
    confirm = ArchiveConfirm(settings, poll_s=0.01)
    days = days_around(now.date())
    placed = [(0, 1), (0, 2)]
    assert confirm.wait_durable(placed, days, timeout_s=0.05) is None
    archive.close_all()
    segments = confirm.wait_durable(placed, days, timeout_s=1)
    assert segments is not None
    got = confirm.read_back(placed, segments)
    assert [e["event_id"] for e in got] == [events[1].event_id, events[2].event_id]
