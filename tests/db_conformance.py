"""One conformance suite for every load-database backend.

A test module subclasses :class:`DatabaseConformance` and provides a
``backend`` fixture (a :class:`Backend`: fresh, migrated databases and a raw
view of their tables). ``tests/unit/test_db_sqlite.py`` runs it on SQLite,
``tests/integration/test_db_conformance.py`` on PostgreSQL.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, ClassVar, Protocol

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headrace.errors import Terminal, is_transient
from storage.db import (
    ConstraintViolation,
    Database,
    DeleteMode,
    FileRow,
    LedgerConflict,
    LedgerEntry,
    RunRow,
)
from storage.db.migrations import LATEST, MIGRATIONS

TOPIC = "headrace.file-events"
TABLES = ("files", "runs", "load_ledger", "file_tombstones")


class Backend(Protocol):
    def open(self, deletes: DeleteMode = DeleteMode.MARK) -> Database:
        """A new, empty, migrated database (closed and removed after the test)."""

    def table(self, db: Database, name: str) -> list[tuple[Any, ...]]:
        """Every row of a table, every column, in a fixed order."""


def version(
    path: str,
    t: int,
    offset: int,
    *,
    deleted: bool = False,
    project: str = "p",
    content: bytes | None = None,
    partition: int = 0,
) -> FileRow:
    """A version of ``path`` (inline content derived from its place) or its deletion."""
    if deleted:
        return FileRow(
            project, path, "", 0, None, None, None, None, None, True,
            f"e{offset}", t, "run", TOPIC, partition, offset,
        )  # fmt: skip
    data = content if content is not None else f"{path}@{t}/{offset}".encode()
    return FileRow(
        project, path, hashlib.sha256(data).hexdigest(), len(data), "INLINE", data, None,
        "UTF_8", None, False, f"e{offset}", t, "run", TOPIC, partition, offset,
    )  # fmt: skip


def run(run_id: str, kind: str, t: int, offset: int) -> RunRow:
    counts = '{"files":1}' if kind == "COMPLETED" else None
    return RunRow(
        run_id, kind, "p", "/src", None, t, counts, None, "headrace.run-events", 0, offset
    )


def snapshot(backend: Backend, db: Database) -> dict[str, list[tuple[Any, ...]]]:
    return {name: backend.table(db, name) for name in TABLES}


def files(db: Database, project: str = "p") -> list[dict[str, Any]]:
    """The project's rows as the contract returns them, without updated_at."""
    rows = []
    for row in db.query(project, include_deleted=True):
        del row["updated_at"]
        rows.append(row)
    return rows


def as_dict(row: FileRow) -> dict[str, Any]:
    return row._asdict()


def newest_rows(events: list[FileRow]) -> list[FileRow]:
    """The model: per path, the version with the greatest (event_time, offset)."""
    newest: dict[str, FileRow] = {}
    for e in events:
        old = newest.get(e.path)
        if old is None or (e.event_time_ms, e.source_offset) > (
            old.event_time_ms,
            old.source_offset,
        ):
            newest[e.path] = e
    return sorted(newest.values(), key=lambda e: e.path.encode())


def newest_wins(events: list[FileRow], deletes: DeleteMode) -> list[dict[str, Any]]:
    """What ``files`` holds after ``events``, in any order: deleted rows only when marked."""
    kept = newest_rows(events)
    return [as_dict(e) for e in kept if not (deletes is DeleteMode.REMOVE and e.deleted)]


both_modes = pytest.mark.parametrize("deletes", list(DeleteMode))


class DatabaseConformance:
    """The behaviour every backend must show. Subclasses provide ``backend``."""

    max_examples: ClassVar[int] = 60

    # --- duplicates and order ---------------------------------------------------------

    @both_modes
    def test_a_repeated_event_changes_nothing(self, backend: Backend, deletes: DeleteMode) -> None:
        db = backend.open(deletes)
        batch = [version("a", 10, 1), version("b", 10, 2), version("gone", 10, 3, deleted=True)]
        db.write(batch, [run("r1", "STARTED", 5, 0)])
        before = snapshot(backend, db)
        time.sleep(0.02)  # an updated_at written now would differ
        result = db.write(batch, [run("r1", "STARTED", 5, 0)])
        assert (result.files_written, result.files_skipped_older, result.runs_written) == (0, 3, 0)
        assert snapshot(backend, db) == before

    @both_modes
    def test_the_newest_version_wins_within_one_batch(
        self, backend: Backend, deletes: DeleteMode
    ) -> None:
        db = backend.open(deletes)
        newest = version("a", 30, 2)
        result = db.write([version("a", 10, 5), newest, version("a", 20, 9), version("a", 30, 1)])
        assert (result.files_written, result.files_skipped_older) == (1, 3)
        assert files(db) == [as_dict(newest)]

    @both_modes
    def test_an_older_version_never_overwrites_a_newer_one(
        self, backend: Backend, deletes: DeleteMode
    ) -> None:
        db = backend.open(deletes)
        newest = version("a", 20, 7)
        assert db.write([newest]).files_written == 1
        for older in (version("a", 10, 50), version("a", 20, 6), version("a", 19, 8)):
            assert db.write([older]).files_skipped_older == 1
        assert files(db) == [as_dict(newest)]
        tie_broken_by_offset = version("a", 20, 8)
        assert db.write([tie_broken_by_offset]).files_written == 1
        assert files(db) == [as_dict(tie_broken_by_offset)]

    @both_modes
    def test_replace_stores_exactly_the_rows_given_whatever_is_stored(
        self, backend: Backend, deletes: DeleteMode
    ) -> None:
        db = backend.open(deletes)
        newer, other = version("a", 30, 9), version("b", 10, 2)
        db.write([newer, other, version("gone", 40, 3, deleted=True)])
        older = version("a", 10, 1)  # what a restore of an older backup puts back
        back = version("gone", 5, 4)  # under a newer delete (and, removed, its tombstone)
        assert db.replace([older, back]) == 2
        assert files(db) == [as_dict(older), as_dict(other), as_dict(back)]
        if deletes is DeleteMode.REMOVE:
            assert backend.table(db, "file_tombstones") == []
        assert db.replace([], absent=[("p", "b")]) == 0
        assert [r["path"] for r in files(db)] == ["a", "gone"]

    # --- deletes -----------------------------------------------------------------------

    def test_mark_keeps_a_deleted_row_in_order(self, backend: Backend) -> None:
        db = backend.open(DeleteMode.MARK)
        db.write([version("a", 10, 1)])
        delete = version("a", 20, 2, deleted=True)
        assert db.write([delete]).files_written == 1
        assert files(db) == [as_dict(delete)]
        assert list(db.query("p")) == []
        assert db.write([version("a", 15, 3)]).files_skipped_older == 1  # older: stays deleted
        assert files(db) == [as_dict(delete)]
        back = version("a", 25, 4)
        assert db.write([back]).files_written == 1
        assert files(db) == [as_dict(back)]

    def test_remove_drops_the_row_and_keeps_a_tombstone(self, backend: Backend) -> None:
        db = backend.open(DeleteMode.REMOVE)
        db.write([version("a", 10, 1), version("b", 10, 2)])
        assert db.write([version("a", 20, 3, deleted=True)]).files_written == 1
        assert [r["path"] for r in files(db)] == ["b"]
        assert [t[:4] for t in backend.table(db, "file_tombstones")] == [("p", "a", 20, 3)]
        assert db.write([version("a", 15, 9)]).files_skipped_older == 1  # no resurrection
        assert [r["path"] for r in files(db)] == ["b"]
        back = version("a", 20, 4)
        assert db.write([back]).files_written == 1
        assert files(db)[0] == as_dict(back)
        assert backend.table(db, "file_tombstones") == []

    def test_remove_ignores_a_delete_older_than_the_row(self, backend: Backend) -> None:
        db = backend.open(DeleteMode.REMOVE)
        row = version("a", 20, 5)
        db.write([row])
        assert db.write([version("a", 10, 6, deleted=True)]).files_skipped_older == 1
        assert files(db) == [as_dict(row)]
        assert backend.table(db, "file_tombstones") == []

    def test_remove_keeps_the_newest_tombstone(self, backend: Backend) -> None:
        db = backend.open(DeleteMode.REMOVE)
        db.write([version("a", 30, 1, deleted=True)])  # a file never seen
        assert db.write([version("a", 20, 2, deleted=True)]).files_skipped_older == 1
        assert db.write([version("a", 25, 3)]).files_skipped_older == 1
        assert files(db) == []
        assert [t[:4] for t in backend.table(db, "file_tombstones")] == [("p", "a", 30, 1)]

    @both_modes
    def test_a_delete_and_an_upsert_in_one_batch(
        self, backend: Backend, deletes: DeleteMode
    ) -> None:
        db = backend.open(deletes)
        events = [version("a", 10, 1), version("a", 20, 2, deleted=True), version("b", 20, 3)]
        events += [version("b", 10, 4, deleted=True)]
        db.write(events)
        assert files(db) == newest_wins(events, deletes)

    # --- replay, ledger, atomicity -------------------------------------------------------

    @both_modes
    def test_a_replay_from_offset_zero_leaves_every_table_equal(
        self, backend: Backend, deletes: DeleteMode
    ) -> None:
        db = backend.open(deletes)
        events = [
            version("a", 10, 0), version("b", 10, 1), version("a", 30, 2),
            version("c", 10, 3, deleted=True), version("a", 20, 4),
            version("b", 40, 5, deleted=True), version("c", 50, 6), version("d", 10, 7),
            version("d", 10, 8, deleted=True),
        ]  # fmt: skip
        runs = [run("r1", "STARTED", 1, 0), run("r1", "COMPLETED", 2, 1)]
        for start in range(0, len(events), 4):
            chunk = events[start : start + 4]
            entry = LedgerEntry("g", TOPIC, 0, start, start + len(chunk) - 1, len(chunk))
            db.write(chunk, runs if start == 0 else (), [entry])
        before = snapshot(backend, db)
        time.sleep(0.02)
        for start in range(0, len(events), 3):  # a replay need not split where the load did
            db.write(events[start : start + 3], runs)
        assert snapshot(backend, db) == before
        assert files(db) == newest_wins(events, deletes)

    def test_positions_are_past_the_last_loaded_offset(self, backend: Backend) -> None:
        db = backend.open()
        db.write([], [], [LedgerEntry("g", TOPIC, 0, 0, 99, 100)])
        db.write([], [], [LedgerEntry("g", TOPIC, 3, 10, 19, 10)])
        db.write([], [], [LedgerEntry("g", TOPIC, 0, 100, 149, 50)])
        db.write([], [], [LedgerEntry("other", TOPIC, 1, 0, 5, 6)])
        db.write([], [], [LedgerEntry("g", "another-topic", 0, 0, 0, 1)])
        wanted = [(TOPIC, 0), (TOPIC, 1), (TOPIC, 3), (TOPIC, 7)]
        assert db.positions("g", wanted) == {(TOPIC, 0): 150, (TOPIC, 3): 20}
        assert db.positions("other", wanted) == {(TOPIC, 1): 6}
        assert db.positions("nobody", wanted) == {}
        assert db.positions("g", []) == {}

    @both_modes
    def test_rows_and_ledger_land_together_or_not_at_all(
        self, backend: Backend, deletes: DeleteMode
    ) -> None:
        db = backend.open(deletes)
        db.write([version("a", 10, 0)], [], [LedgerEntry("g", TOPIC, 0, 0, 0, 1)])
        before = snapshot(backend, db)
        again = LedgerEntry("g", TOPIC, 0, 0, 1, 2)  # the same first offset: refused
        with pytest.raises(LedgerConflict) as refused:
            db.write(
                [version("a", 20, 1), version("b", 20, 1, deleted=True), version("c", 20, 1)],
                [run("r2", "STARTED", 1, 0)],
                [LedgerEntry("g", TOPIC, 1, 0, 0, 1), again],
            )
        assert isinstance(refused.value, Terminal) and not is_transient(refused.value)
        assert snapshot(backend, db) == before
        assert db.positions("g", [(TOPIC, 0), (TOPIC, 1)]) == {(TOPIC, 0): 1}
        db.write([version("c", 20, 1)], [], [LedgerEntry("g", TOPIC, 0, 1, 1, 1)])  # usable
        assert db.positions("g", [(TOPIC, 0)]) == {(TOPIC, 0): 2}

    @pytest.mark.parametrize(
        ("change", "constraint"),
        [
            ({"sha256": "NOT-A-SHA"}, "files_sha256_check"),
            ({"sha256": ""}, "files_sha256_check"),  # only a deleted row may have no sha256
            ({"size": -1}, "files_size_check"),
            ({"content_strategy": "CARRIER_PIGEON"}, "files_strategy_check"),
        ],
    )
    def test_a_refused_row_is_a_one_line_terminal_error(
        self, backend: Backend, change: dict[str, Any], constraint: str
    ) -> None:
        db = backend.open()
        good = version("good", 10, 1, content=b"secret-content-bytes")
        bad = version("bad", 10, 2, content=b"secret-content-bytes")._replace(**change)
        with pytest.raises(ConstraintViolation) as refused:
            db.write([good, bad])
        message = str(refused.value)
        assert not isinstance(refused.value, LedgerConflict)
        assert isinstance(refused.value, Terminal) and not is_transient(refused.value)
        assert "\n" not in message and constraint in message
        assert "secret-content-bytes" not in message and "INSERT" not in message
        assert files(db) == []  # the good row of the batch did not land either
        assert db.write([good]).files_written == 1  # the database is usable

    def test_a_refused_ledger_entry_is_a_constraint_violation(self, backend: Backend) -> None:
        db = backend.open()
        with pytest.raises(ConstraintViolation):
            db.write([version("a", 1, 1)], [], [LedgerEntry("g", TOPIC, 0, 5, 4, 0)])
        assert files(db) == []

    # --- runs, stats, query, content ---------------------------------------------------

    def test_runs_follow_the_same_order_rule(self, backend: Backend) -> None:
        db = backend.open()
        assert (
            db.write([], [run("r1", "STARTED", 10, 0), run("r1", "STARTED", 5, 9)]).runs_written
            == 1
        )
        assert db.write([], [run("r1", "STARTED", 10, 0)]).runs_written == 0
        assert db.write([], [run("r1", "COMPLETED", 20, 3)]).runs_written == 1
        rows = backend.table(db, "runs")
        assert [(r[0], r[1], r[5], r[6]) for r in rows] == [
            ("r1", "COMPLETED", 20, '{"files":1}'),
            ("r1", "STARTED", 10, None),
        ]

    def test_stats_count_what_is_stored(self, backend: Backend) -> None:
        db = backend.open()
        empty = db.stats()
        assert (empty.files, empty.deleted, empty.runs, empty.ledger_rows) == (0, 0, 0, 0)
        assert empty.schema_version == LATEST and empty.last_committed_at is None
        git = version("g", 1, 3)._replace(content_strategy="GIT_REFERENCE")
        db.write(
            [
                version("a", 1, 1),
                version("b", 1, 2, deleted=True),
                git,
                version("x", 1, 4, project="q"),
            ],
            [run("r", "STARTED", 1, 0)],
            [LedgerEntry("g", TOPIC, 0, 1, 4, 4)],
        )
        stats = db.stats()
        assert (stats.files, stats.deleted, stats.tombstones) == (3, 1, 0)
        assert stats.by_strategy == {"GIT_REFERENCE": 1, "INLINE": 2}
        assert (stats.runs, stats.projects, stats.ledger_rows) == (1, 2, 1)
        assert stats.last_committed_at is not None and stats.last_committed_at.tzinfo is not None
        assert stats.size_bytes is None or stats.size_bytes > 0
        assert stats.to_json()["by_strategy"] == {"GIT_REFERENCE": 1, "INLINE": 2}

    def test_query_matches_paths_like_fnmatch(self, backend: Backend) -> None:
        db = backend.open()
        paths = [
            "README.md",
            "a%b.py",
            "a_b.py",
            "src/x.py",
            "src/deep/y.py",
            "src/Z.PY",
            "src/z.txt",
        ]
        db.write([version(p, 1, i) for i, p in enumerate(paths)])
        db.write([version("src/gone.py", 1, 99, deleted=True), version("x", 1, 1, project="q")])

        def found(glob: str | None, **kwargs: Any) -> list[str]:
            return [r["path"] for r in db.query("p", glob, **kwargs)]

        assert found(None) == sorted(paths, key=str.encode)
        assert found("src/*.py") == ["src/deep/y.py", "src/x.py"]  # '*' crosses '/'
        assert found("src/?.py") == ["src/x.py"]
        assert found("src/[xy].py") == ["src/x.py"]
        assert found("a%b.py") == ["a%b.py"] and found("a_b.py") == ["a_b.py"]  # no LIKE wildcards
        assert found("src/*.PY") == ["src/Z.PY"]  # case-sensitive
        assert found("*.py", limit=2) == ["a%b.py", "a_b.py"]
        assert found(None, limit=1) == ["README.md"]
        assert found("src/g*") == [] and found("src/g*", include_deleted=True) == ["src/gone.py"]
        assert [r["path"] for r in db.query("q")] == ["x"]
        assert list(db.query("nobody")) == []

    def test_content_and_values_round_trip(self, backend: Backend) -> None:
        db = backend.open()
        data = bytes(range(256)) * 8
        row = FileRow(
            "projekt ü", "dír/ñame with spaces/🙂.bin", hashlib.sha256(data).hexdigest(),
            len(data), "INLINE", data, None, "BINARY", None, False, "e" * 32,
            -86_400_000, None, TOPIC, 2**31 - 1, 2**62,
        )  # fmt: skip
        ref = FileRow(
            "p", "obj", "0" * 64, 10**12, "OBJECT_STORAGE", None, '{"bucket":"b","key":"k"}',
            None, None, False, "e", 2**53, "run", TOPIC, 0, 0,
        )  # fmt: skip
        db.write([row, ref])
        (got,) = files(db, "projekt ü")
        assert got == as_dict(row) and isinstance(got["content"], bytes)
        assert files(db) == [as_dict(ref)]
        (with_time,) = db.query("p")
        assert with_time["updated_at"].tzinfo is not None

    def test_migrate_again_does_nothing(self, backend: Backend) -> None:
        db = backend.open()
        assert db.migrate() == []
        assert db.stats().schema_version == LATEST == MIGRATIONS[-1].version

    # --- the property ------------------------------------------------------------------

    @both_modes
    def test_any_order_any_batches_any_replays_newest_wins(
        self, backend: Backend, deletes: DeleteMode
    ) -> None:
        @settings(
            max_examples=self.max_examples,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(data=st.data())
        def check(data: st.DataObject) -> None:
            specs = data.draw(
                st.lists(
                    st.tuples(
                        st.sampled_from(["a", "b", "dir/c"]),
                        st.integers(0, 4),  # event time: ties are common
                        st.booleans(),  # delete?
                    ),
                    min_size=1,
                    max_size=24,
                )
            )
            events = [
                version(path, t, offset, deleted=deleted)
                for offset, (path, t, deleted) in enumerate(specs)
            ]
            arrival = data.draw(st.permutations(events))
            cuts = sorted(data.draw(st.sets(st.integers(1, len(arrival)), max_size=6)))
            batches = [
                arrival[i:j]
                for i, j in zip([0, *cuts], [*cuts, len(arrival)], strict=True)
                if i < j
            ]
            replays = data.draw(st.lists(st.integers(0, len(batches) - 1), max_size=4))
            with backend.open(deletes) as db:
                for i, batch in enumerate(batches):
                    result = db.write(batch)
                    assert result.files_written + result.files_skipped_older == len(batch)
                    if i in replays:
                        assert db.write(batches[data.draw(st.integers(0, i))]).files_written == 0
                assert files(db) == newest_wins(events, deletes)
                tombstones = [t[:4] for t in backend.table(db, "file_tombstones")]
                if deletes is DeleteMode.REMOVE:
                    expected = [
                        (e.project, e.path, e.event_time_ms, e.source_offset)
                        for e in newest_rows(events)
                        if e.deleted
                    ]
                    assert tombstones == expected
                else:
                    assert tombstones == []

        check()
