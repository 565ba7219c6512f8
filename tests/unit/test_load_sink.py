"""The load sink on SQLite, without Kafka: a batch is one transaction with its ledger
entries, positions come from the ledger, a refused event fails the batch as terminal
with the reason to dead-letter it under, and a batch retried after a commit whose
answer was lost is recognised as loaded."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from consumers.base import Decoded, Record
from consumers.load.sink import LoadSink
from headrace.errors import Terminal
from storage.db import LedgerConflict, UnresolvableEvent
from storage.db.sqlite import SqliteDatabase

FILES, RUNS = "t.files", "t.runs"


def decoded(offset: int, path: str, partition: int = 0, **change: Any) -> Decoded:
    data = f"content of {path}".encode()
    fields: dict[str, Any] = {
        "project": "p",
        "path": path,
        "size": len(data),
        "checksum": hashlib.sha256(data).hexdigest(),
        "event_id": f"e{offset}",
        "run_id": "r",
        "op": "UPSERT",
        "content_strategy": "INLINE",
        "inline": {"data": data, "encoding": "UTF_8"},
        "event_time": datetime(2026, 1, 1, tzinfo=UTC),
        **change,
    }
    record = Record(FILES, partition, offset, 0, path.encode(), b"", ())
    return Decoded(record, None, 1, fields)


@pytest.fixture
def sink(tmp_path: Path) -> LoadSink:
    db = SqliteDatabase(tmp_path / "load.sqlite3")
    db.migrate()
    return LoadSink(db, "g", file_topic=FILES, run_topic=RUNS)


def test_a_batch_is_durable_at_once_and_its_ledger_gives_the_positions(sink: LoadSink) -> None:
    sink.write([decoded(0, "a"), decoded(1, "b"), decoded(5, "c", partition=1)])
    assert sink.durable() == {(FILES, 0): 2, (FILES, 1): 6}
    again = LoadSink(sink.db, "g", file_topic=FILES, run_topic=RUNS)
    assert again.positions([(FILES, 0), (FILES, 1), (FILES, 2)]) == {(FILES, 0): 2, (FILES, 1): 6}
    assert [r["path"] for r in sink.db.query("p")] == ["a", "b", "c"]


def test_an_event_that_cannot_be_a_row_fails_the_batch_and_names_its_reason(
    sink: LoadSink,
) -> None:
    with pytest.raises(UnresolvableEvent) as caught:
        sink.write([decoded(0, "a"), decoded(1, "b", content_strategy="OBJECT_STORAGE")])
    assert isinstance(caught.value, Terminal)
    assert caught.value.dead_letter_reason == "PAYLOAD_MISSING"
    assert list(sink.db.query("p")) == [] and sink.durable() == {}  # nothing of the batch


def test_a_batch_retried_after_its_commit_is_recognised_as_loaded(sink: LoadSink) -> None:
    batch = [decoded(0, "a"), decoded(1, "b")]
    sink.write(batch)
    rows = list(sink.db.query("p"))
    sink.write(batch)  # the first commit's answer was lost: the same batch again
    assert list(sink.db.query("p")) == rows
    assert sink.durable() == {(FILES, 0): 2}


def test_a_ledger_conflict_for_offsets_not_all_loaded_stays_an_error(sink: LoadSink) -> None:
    sink.write([decoded(0, "a")])
    with pytest.raises(LedgerConflict):
        sink.write([decoded(0, "a"), decoded(1, "b")])  # starts at a loaded offset
    assert [r["path"] for r in sink.db.query("p")] == ["a"]
