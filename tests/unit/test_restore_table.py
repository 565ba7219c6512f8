"""restore-table's hermetic parts: choosing archived rows, fitting them to a target, the
time options and the summary line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from producers.errors import RestoreRefused
from producers.tables import rows
from producers.tables.archived import Collector
from producers.tables.catalog import TableRef
from producers.tables.restore import RestoreSummary, aligned, fit
from producers.tables.restore_cli import line, parse_time
from producers.tables.target import Window, Written
from schemas.models import Column, RowEvent
from tests.unit.test_archive_table import event as archived_event

REF = TableRef("public", "events")


def event(i: int, note: str = "x", **changes: Any) -> dict[str, Any]:
    """tests.unit.test_archive_table's event as archived, its note (and checksum) changed."""
    row = [
        Column(name="id", type="int8", value=str(i)),
        Column(name="note", type="text", value=note),
    ]
    found = archived_event(i).to_avro()
    found.update(row=[c.model_dump() for c in row], checksum=rows.checksum(row), event_id="")
    return {**RowEvent.model_validate(found).to_avro(), **changes}


def test_duplicates_collapse_and_the_latest_version_of_a_key_is_chosen() -> None:
    collector = Collector()
    collector.add(event(1, "old"), (10, 0, 5))
    collector.add(event(1, "old"), (20, 1, 7))  # a retried batch: same event id
    collector.add(event(1, "new"), (30, 0, 9))  # deleted, re-inserted, archived again
    collector.add(event(1, "older"), (5, 2, 1))  # read later, archived earlier
    collector.add(event(2), (10, 0, 6))
    found = collector.result()
    assert (found.events, found.duplicates, found.versions, found.bad_checksums) == (5, 1, 1, 0)
    chosen = {r.key: r.row[1].value for r in found.rows}
    assert chosen == {(("id", "1"),): "new", (("id", "2"),): "x"}


def test_a_later_place_breaks_a_tie_in_event_time() -> None:
    collector = Collector()
    collector.add(event(1, "b"), (10, 0, 6))
    collector.add(event(1, "a"), (10, 0, 5))
    assert [r.row[1].value for r in collector.result().rows] == ["b"]


def test_rows_that_fail_their_checksum_or_key_are_counted_never_chosen() -> None:
    good = event(1)
    tampered = {**good, "row": [{**good["row"][0]}, {**good["row"][1], "value": "evil"}]}
    wrong_key = event(2, key=[{"name": "id", "type": "int8", "value": "3"}])
    collector = Collector()
    collector.add(tampered, (10, 0, 1))
    collector.add(wrong_key, (10, 0, 2))
    collector.add({"event_id": "junk", "row": [{"nonsense": 1}]}, (10, 0, 3))
    collector.add(good, (10, 0, 4))  # the same event id as the tampered one, but good
    found = collector.result()
    assert (found.events, found.bad_checksums, found.duplicates) == (4, 3, 0)
    assert found.first_bad == (good["event_id"], wrong_key["event_id"], "junk")
    assert [r.row[1].value for r in found.rows] == ["x"]


def columns(*pairs: tuple[str, str]) -> list[Column]:
    return [Column(name=n, type=t) for n, t in pairs]


ARCHIVED = columns(("id", "int8"), ("note", "text"), ("at", "timestamptz"))


def test_fit_gives_the_targets_order_and_lets_it_have_more_columns() -> None:
    target = columns(("at", "timestamptz"), ("extra", "int4"), ("note", "text"), ("id", "int8"))
    assert fit(REF, target, ["id"], [ARCHIVED], Window("at")) == ["at", "note", "id"]
    assert fit(REF, target, ["id"], []) == []  # nothing archived: nothing to fit


@pytest.mark.parametrize(
    ("target", "key", "window", "message"),
    [
        (columns(("id", "int8"), ("at", "timestamptz")), ["id"], None, "has no column 'note'"),
        (
            columns(("id", "int4"), ("note", "text"), ("at", "timestamptz")),
            ["id"],
            None,
            "public.events.id is int4 but was archived as int8",
        ),
        (
            columns(*((c.name, c.type) for c in ARCHIVED), ("k", "int4")),
            ["k"],
            None,
            "public.events.k is not a column of the archived rows",
        ),
        (
            columns(*((c.name, c.type) for c in ARCHIVED), ("ts", "timestamp")),
            ["id"],
            Window("ts", since="2024-01-01"),
            "public.events.ts is not a column of the archived rows",
        ),
    ],
)
def test_fit_refuses_what_would_not_restore_faithfully(
    target: list[Column], key: list[str], window: Window | None, message: str
) -> None:
    with pytest.raises(RestoreRefused, match=message):
        fit(REF, target, key, [ARCHIVED], window)


def test_aligned_values_are_null_for_a_column_the_row_lacks() -> None:
    row = [Column(name="id", type="int8", value="1"), Column(name="note", type="text", value=None)]
    assert aligned(["note", "at", "id"], row) == [None, None, "1"]


@pytest.mark.parametrize(
    ("text", "when"),
    [
        ("2024-01-31", datetime(2024, 1, 31, tzinfo=UTC)),
        ("2024-01-31T12:30:00", datetime(2024, 1, 31, 12, 30, tzinfo=UTC)),
        ("2024-01-31 12:30:00Z", datetime(2024, 1, 31, 12, 30, tzinfo=UTC)),
        (
            "2024-01-31T12:30:00+02:00",
            datetime(2024, 1, 31, 12, 30, tzinfo=timezone(timedelta(hours=2))),
        ),
    ],
)
def test_times_are_iso_dates_or_timestamps_utc_by_default(text: str, when: datetime) -> None:
    assert parse_time(text) == when


@pytest.mark.parametrize("text", ["", "yesterday", "31/01/2024", "2024-13-01"])
def test_bad_times(text: str) -> None:
    with pytest.raises(ValueError, match="not an ISO date or timestamp"):
        parse_time(text)


def test_the_summary_line_names_what_differs_and_is_not_clean() -> None:
    collector = Collector()
    for i in range(1, 5):
        collector.add(event(i), (10, 0, i))
    written = Written(rows=4, inserted=1, present=1, differ=2, differ_keys=(("2",), ("3",)))
    summary = RestoreSummary(REF, TableRef("public", "other"), collector.result(), written, 1.25)
    assert not summary.clean
    text = line(summary)
    assert text.startswith("public.events into public.other: 1 rows restored, 1 already present")
    assert "2 differ from the table's (not overwritten; keys 2; 3)" in text
    assert summary.to_json()["differ_keys"] == [["2"], ["3"]]
    dry = RestoreSummary(REF, REF, collector.result(), Written(rows=4, inserted=4), dry_run=True)
    assert dry.clean and "4 rows would be restored" in line(dry) and "nothing changed" in line(dry)
