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
from consumers.errors import RecordsRefused
from consumers.load.sink import LoadSink
from headrace.errors import Terminal
from storage.content.download import Downloader
from storage.content.resolver import ContentResolver, ResolverPolicy
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


def test_an_event_that_cannot_be_a_row_is_refused_by_index_with_its_reason(
    sink: LoadSink,
) -> None:
    with pytest.raises(RecordsRefused) as caught:
        sink.write([decoded(0, "a"), decoded(1, "b", content_strategy="OBJECT_STORAGE")])
    assert isinstance(caught.value, Terminal)
    [(index, error)] = caught.value.refused
    assert index == 1 and isinstance(error, UnresolvableEvent)
    assert error.dead_letter_reason == "PAYLOAD_MISSING"
    assert list(sink.db.query("p")) == [] and sink.durable() == {}  # nothing of the batch


def test_inline_bytes_that_do_not_hash_to_the_checksum_are_refused_in_every_mode(
    tmp_path: Path,
) -> None:
    bad = {"inline": {"data": b"content of X", "encoding": "UTF_8"}}  # same size, other bytes
    for mode in ("inline_and_refs", "refs_only", "resolve_all"):
        db = SqliteDatabase(tmp_path / f"{mode}.sqlite3")
        db.migrate()
        sink = LoadSink(db, "g", file_topic=FILES, run_topic=RUNS, content=mode,
                        resolver=resolver(tmp_path))  # fmt: skip
        with pytest.raises(RecordsRefused) as caught:
            sink.write([decoded(0, "a"), decoded(1, "b", **bad)])
        [(index, error)] = caught.value.refused
        assert (index, error.dead_letter_reason) == (1, "CHECKSUM_MISMATCH")
        assert "does not hash" in str(error)


def test_an_object_reference_to_a_missing_bucket_is_refused(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "load.sqlite3")
    db.migrate()
    asked: list[str] = []

    def exists(bucket: str) -> bool:
        asked.append(bucket)
        return bucket == "headrace-content"

    sink = LoadSink(db, "g", file_topic=FILES, run_topic=RUNS, bucket_exists=exists)

    def obj(offset: int, bucket: str) -> Decoded:
        ref = {"bucket": bucket, "key": "k", "url": None, "expires_at": None}
        return decoded(offset, f"o{offset}", content_strategy="OBJECT_STORAGE", object_ref=ref)

    with pytest.raises(RecordsRefused) as caught:
        sink.write([obj(0, "headrace-content"), obj(1, "nowhere"), obj(2, "headrace-content")])
    [(index, error)] = caught.value.refused
    assert index == 1 and "'nowhere', which does not exist" in str(error)
    assert error.dead_letter_reason == "PAYLOAD_MISSING"
    sink.write([obj(0, "headrace-content"), obj(2, "headrace-content")])
    assert asked == ["headrace-content", "nowhere"]  # a bucket seen once is known


def legacy(offset: int, path: str, local: Path, data: bytes) -> Decoded:
    fields: dict[str, Any] = {
        "project": "p",
        "path": path,
        "size": len(data),
        "checksum": hashlib.sha256(data).hexdigest(),
        "local_path": str(local),
    }
    record = Record(FILES, 0, offset, 1_767_225_600_000, path.encode(), b"", ())
    return Decoded(record, None, 1, fields)


def resolver(tmp_path: Path) -> ContentResolver:
    policy = ResolverPolicy(stream_threshold=1 << 20, max_object_size=1 << 30, endpoints=(),
                            buckets=())  # fmt: skip
    return ContentResolver(policy, downloader=Downloader(timeout_s=1, attempts=1, max_size=1))


def test_a_v1_event_loads_with_the_record_time_and_its_local_content(tmp_path: Path) -> None:
    here = tmp_path / "here.txt"
    here.write_bytes(b"v1 bytes")
    db = SqliteDatabase(tmp_path / "load.sqlite3")
    db.migrate()
    sink = LoadSink(db, "g", file_topic=FILES, run_topic=RUNS, resolver=resolver(tmp_path))
    sink.write([legacy(0, "here.txt", here, b"v1 bytes"),
                legacy(1, "gone.txt", tmp_path / "gone.txt", b"elsewhere")])  # fmt: skip
    rows = {r["path"]: r for r in db.query("p")}
    assert rows["here.txt"]["content"] == b"v1 bytes"
    assert rows["gone.txt"]["content"] is None  # not readable here: loaded without
    assert rows["here.txt"]["event_time_ms"] == 1_767_225_600_000
    assert sink.without_content == 1


def test_resolve_all_stores_every_files_bytes_and_refuses_what_it_cannot_resolve(
    tmp_path: Path,
) -> None:
    here = tmp_path / "here.txt"
    here.write_bytes(b"v1 bytes")
    db = SqliteDatabase(tmp_path / "load.sqlite3")
    db.migrate()
    sink = LoadSink(db, "g", file_topic=FILES, run_topic=RUNS, content="resolve_all",
                    resolver=resolver(tmp_path))  # fmt: skip
    batch = [decoded(0, "a"), legacy(1, "here.txt", here, b"v1 bytes"),
             legacy(2, "gone.txt", tmp_path / "gone.txt", b"elsewhere")]  # fmt: skip
    with pytest.raises(RecordsRefused) as caught:
        sink.write(batch)
    [(index, error)] = caught.value.refused
    assert (index, error.dead_letter_reason) == (2, "PAYLOAD_MISSING")
    sink.write(batch[:2])
    rows = {r["path"]: r["content"] for r in db.query("p")}
    assert rows == {"a": b"content of a", "here.txt": b"v1 bytes"}


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


def test_the_database_metrics_count_rows_written_skipped_and_time_each_transaction(
    tmp_path: Path,
) -> None:
    from prometheus_client import CollectorRegistry  # noqa: PLC0415 - this test only

    from consumers.load.metrics import LoadMetrics  # noqa: PLC0415

    registry = CollectorRegistry()
    db = SqliteDatabase(tmp_path / "load.sqlite3")
    db.migrate()
    sink = LoadSink(
        db, "g", file_topic=FILES, run_topic=RUNS, metrics=LoadMetrics(registry, "g", "sqlite")
    )
    sink.write([decoded(0, "a"), decoded(1, "b")])
    sink.write([decoded(2, "a", event_time=datetime(2025, 1, 1, tzinfo=UTC))])  # older: skipped
    value = registry.get_sample_value
    assert value("headrace_db_rows_written_total", {"group": "g", "table": "files"}) == 2
    assert value("headrace_db_rows_skipped_total", {"group": "g"}) == 1
    count = value("headrace_db_transaction_seconds_count", {"group": "g", "backend": "sqlite"})
    assert count == 2
