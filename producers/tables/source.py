"""One table of a PostgreSQL source, read in locked batches for archiving: the psycopg adapter.

A batch is one transaction, held open by the caller::

    source = TableSource(settings.source("orders"), "orders", TableRef("public", "events"),
                         cursors=CursorStore(settings.tables.state_dir))
    source.open()
    batch = source.select_batch(timedelta(days=90))   # BEGIN; rows locked
    ...publish batch.rows, wait for the archive, verify...
    assert source.delete(batch.keys) == len(batch)    # by primary key
    source.commit()                                   # COMMIT; then the cursor advances
    # or source.rollback(): the rows stay, the cursor stays

:meth:`TableSource.select_batch` selects, in (timestamp column, primary key...)
order after the cursor, at most ``batch_size`` rows whose timestamp is older
than ``now() - older_than``, ``FOR UPDATE SKIP LOCKED``: rows another
transaction holds (a writer, a second archiver) are skipped, never waited for
and never taken twice. Its transaction runs with ``SET LOCAL`` ``lock_timeout``
and ``statement_timeout``, and with ``idle_in_transaction_session_timeout`` (and
``transaction_timeout`` from PostgreSQL 17) at ``batch_timeout_s``: a caller
that never comes back has its session ended and the batch rolled back by the
server. :meth:`delete` and :meth:`commit` also check that deadline themselves
(:class:`BatchTimeout`, after a rollback). Rows come back as the codec's
columns (``producers.tables.rows``: text forms under its fixed session).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from typing import Any

import psycopg
from psycopg import sql

from headrace.errors import ServiceUnavailable
from headrace.failpoints import failpoint
from headrace.settings import SourceSettings, TablesSettings
from producers.errors import BatchTimeout
from producers.tables import rows
from producers.tables.catalog import TableRef, TableShape, dsn_source_name, read_shape, relation
from producers.tables.cursors import Cursor, CursorStore, Position
from schemas.models import Column

log = logging.getLogger(__name__)

DELETE_CHUNK = 1000  # rows per DELETE statement: bound parameters stay under 65,535
# Key types deleted by ``key = ANY(%s::type[])`` (one statement; the others go by
# ``(key...) IN ((%s, ...), ...)``, DELETE_CHUNK rows a statement): built-in types
# whose text input reads the text forms rows.py writes, spelt as Column.type has them.
ARRAY_KEY_TYPES = frozenset(
    ["int2", "int4", "int8", "numeric", "text", "varchar", "uuid", "date", "timestamp"]
    + ["timestamptz"]
)


@dataclass(frozen=True)
class Limits:
    """A batch's size and how long its statements, locks and transaction may last."""

    batch_size: int = 10_000
    lock_timeout_s: float = 10.0
    statement_timeout_s: float = 300.0
    batch_timeout_s: float = 1800.0

    @classmethod
    def from_settings(cls, tables: TablesSettings) -> Limits:
        return cls(
            tables.batch_size,
            tables.lock_timeout_s,
            tables.statement_timeout_s,
            tables.batch_timeout_s,
        )


@dataclass(frozen=True)
class Batch:
    """Rows selected and locked in the open transaction, in keyset order."""

    values: tuple[tuple[str | None, ...], ...]  # each row's text forms, in column order
    keys: tuple[tuple[str, ...], ...]  # each row's primary key values, text forms
    last: Position | None  # the last row's place: the cursor once committed
    columns: tuple[Column, ...] = ()  # the table's columns (names and types, no values)

    def __len__(self) -> int:
        return len(self.values)

    @cached_property
    def rows(self) -> tuple[tuple[Column, ...], ...]:
        """Each row's columns, with values (rows.encode_row), made when first asked for."""
        return tuple(tuple(rows.encode_row(self.columns, v)) for v in self.values)


@dataclass(frozen=True)
class DryRun:
    """What a run would archive now: nothing was locked or changed to find it."""

    rows: int
    oldest: str | None  # the timestamp column's text form (UTC)
    newest: str | None
    batches: int
    cutoff: str  # now() - older_than, as the database computed it
    resumes_after: Position | None  # the kept cursor a run would continue after


class TableSource:
    """One (source, schema.table); connects on :meth:`open`, not before."""

    def __init__(
        self,
        source: SourceSettings,
        source_name: str,
        ref: TableRef,
        *,
        timestamp_column: str | None = None,
        limits: Limits | None = None,
        cursors: CursorStore | None = None,
    ) -> None:
        self.source = source
        self.source_name = source_name
        self.ref = ref
        self.timestamp_column = timestamp_column
        self.limits = limits or Limits()
        self.cursors = cursors
        self._conn: psycopg.Connection[Any] | None = None
        # What an error names: a --dsn source's name is its address already.
        named = source_name != dsn_source_name(source)
        self._what = f"PostgreSQL source {source_name}" if named else "PostgreSQL (--dsn)"
        self._shape: TableShape | None = None
        self._after: Position | None = None
        self._batch: Batch | None = None
        self._deadline = 0.0

    # -- connection ---------------------------------------------------------------

    def open(self) -> TableShape:
        """Connect, fix the session (rows.prepare), read the table's shape and cursor.

        Called again, it reconnects: after a ServiceUnavailable or a BatchTimeout whose
        session the server ended (an open batch is rolled back by then)."""
        self.close()
        try:
            conn = psycopg.connect(self.source.conninfo())
        except psycopg.OperationalError as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "no answer"
            raise ServiceUnavailable(self._what, self.source.address, reason) from None
        try:
            rows.prepare(conn)
            conn.commit()
            self._shape = read_shape(conn, self.ref, self.timestamp_column)
            conn.rollback()
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._after = self._kept_cursor(self._shape)
        return self._shape

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()  # an open batch is rolled back by the server
            self._conn = None
            self._batch = None

    def __enter__(self) -> TableSource:
        self.open()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def shape(self) -> TableShape:
        if self._shape is None:
            raise RuntimeError("TableSource.open() first")
        return self._shape

    @property
    def after(self) -> Position | None:
        """Where the next batch starts (exclusive): the last committed batch's last row."""
        return self._after

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None:
            raise RuntimeError("TableSource.open() first")
        return self._conn

    # -- the cursor ---------------------------------------------------------------

    def _kept_cursor(self, shape: TableShape) -> Position | None:
        if self.cursors is None:
            return None
        kept = self.cursors.load(self.source_name, self.ref.schema, self.ref.table)
        if kept is None:
            return None
        if (kept.timestamp_column, kept.primary_key) != (shape.timestamp_column, shape.primary_key):
            log.warning("%s: the kept cursor was taken in another order: starting over", self.ref)
            return None
        return kept.after

    def reset_cursor(self) -> None:
        """Start the next batch from the beginning: a run that found nothing more calls it."""
        self._after = None
        if self.cursors is not None:
            self.cursors.clear(self.source_name, self.ref.schema, self.ref.table)

    # -- a batch ------------------------------------------------------------------

    def select_batch(
        self, older_than: timedelta, limit: int | None = None, *, after: Position | None = None
    ) -> Batch:
        """BEGIN, and lock the next rows older than ``now() - older_than`` (module docstring).

        ``after``: start after this place, not after :attr:`after` (the kept cursor): an
        archiver that selects the next batch while the one before is still open
        (``producers.tables.archiver``) passes that batch's last row."""
        conn, shape = self._connection(), self.shape
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            raise RuntimeError("a batch is already open: commit() or rollback() it first")
        where, params = self._eligible(shape, older_than, after or self._after)
        query = sql.SQL(
            "SELECT {columns} FROM {table} WHERE {where} ORDER BY {order} LIMIT %s"
            " FOR UPDATE SKIP LOCKED"
        ).format(
            columns=sql.SQL(", ").join(sql.Identifier(c.name) for c in shape.columns),
            table=relation(self.ref),
            where=where,
            order=sql.SQL(", ").join(sql.Identifier(c) for c in shape.order),
        )
        params.append(limit or self.limits.batch_size)
        with self._translated("selecting a batch"):
            self._begin(conn)
            fetched = conn.execute(query, params).fetchall()
        self._batch = self._as_batch(shape, fetched)
        return self._batch

    def _eligible(
        self, shape: TableShape, older_than: timedelta, after: Position | None
    ) -> tuple[sql.Composed, list[object]]:
        """``ts < now() - older_than AND (ts, pk...) > (cursor...)``, and its parameters.

        The cursor's text forms are bound as untyped literals: PostgreSQL reads each
        with its column's input function, so the comparison is the columns' own."""
        ts = sql.Identifier(shape.timestamp_column)
        where = [sql.SQL("{} < now() - %s::interval").format(ts)]
        params: list[object] = [older_than]
        if after is not None:
            order = sql.SQL(", ").join(sql.Identifier(c) for c in shape.order)
            marks = sql.SQL(", ").join(sql.Placeholder() * len(shape.order))
            where.append(sql.SQL("({}) > ({})").format(order, marks))
            params.extend([after.timestamp, *after.key])
        return sql.SQL(" AND ").join(where), params

    def _begin(self, conn: psycopg.Connection[Any]) -> None:
        limits = self.limits
        local = {
            "lock_timeout": limits.lock_timeout_s,
            "statement_timeout": limits.statement_timeout_s,
            "idle_in_transaction_session_timeout": limits.batch_timeout_s,
        }
        if conn.info.server_version >= 170000:
            local["transaction_timeout"] = limits.batch_timeout_s
        for name, seconds in local.items():  # SET LOCAL: this transaction only
            conn.execute("SELECT set_config(%s, %s, true)", (name, f"{int(seconds * 1000)}ms"))
        self._deadline = time.monotonic() + limits.batch_timeout_s

    def _as_batch(self, shape: TableShape, fetched: Sequence[Sequence[Any]]) -> Batch:
        columns = tuple(shape.columns)
        kinds = {type(v) for values in fetched for v in values}
        if kinds <= {str, type(None)}:  # every column loads as text (rows.prepare)
            texts: tuple[tuple[str | None, ...], ...] = tuple(tuple(v) for v in fetched)
        else:
            texts = tuple(tuple(rows.text_forms(columns, values)) for values in fetched)
        places = [shape.index(c) for c in shape.order]
        keys = tuple(tuple(str(values[i]) for i in places[1:]) for values in texts)
        last = None
        if texts:
            ts, *key = (str(texts[-1][i]) for i in places)
            last = Position(ts, tuple(key))
        return Batch(texts, keys, last, columns)

    @contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        """psycopg's errors as headrace's: a timeout is a BatchTimeout, a lost server
        ServiceUnavailable; the batch is abandoned (rolled back, its rows stay), except
        that a connection lost *during* COMMIT leaves the outcome unknown (see commit)."""
        try:
            yield
        except (
            psycopg.errors.LockNotAvailable,
            psycopg.errors.QueryCanceled,
            psycopg.errors.IdleInTransactionSessionTimeout,
        ) as exc:
            self._abandon()
            raise BatchTimeout(
                f"{self.ref}: {doing}: {exc.diag.message_primary}: rolled back, its rows stay"
            ) from None
        except psycopg.OperationalError as exc:
            self._abandon()
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "connection lost"
            raise ServiceUnavailable(
                self._what, self.source.address, f"{doing}: {reason}"
            ) from None

    def _abandon(self) -> None:
        self._batch = None
        if self._conn is not None and not self._conn.closed:
            try:
                self._conn.rollback()
            except psycopg.Error:  # the connection is gone: the server rolled back
                log.debug("%s: the rollback after a failure failed too", self.ref)

    def remaining_s(self) -> float:
        """Seconds left before the open batch's transaction timeout."""
        return self._deadline - time.monotonic()

    def _check_deadline(self, doing: str) -> None:
        if self.remaining_s() <= 0:
            self._abandon()  # the server may have ended the session already
            raise BatchTimeout(
                f"{self.ref}: the batch outlived its {self.limits.batch_timeout_s:g} s "
                f"transaction timeout before {doing}: rolled back, its rows stay"
            )

    def delete(self, keys: Sequence[Sequence[str]]) -> int:
        """DELETE exactly these rows of the open batch by primary key; the count deleted."""
        conn, shape = self._connection(), self.shape
        if self._batch is None:
            raise RuntimeError("no batch is open")
        locked = set(self._batch.keys)
        wanted = [tuple(k) for k in keys]
        if any(k not in locked for k in wanted):
            raise ValueError("delete() takes keys of the open batch only (the rows it locked)")
        self._check_deadline("its DELETE")
        key_type = shape.columns[shape.index(shape.primary_key[0])].type
        if len(shape.primary_key) == 1 and key_type in ARRAY_KEY_TYPES:
            # One statement, one parameter: the keys as an array of the key's type, each
            # element read by the type's input function, as an untyped literal would be.
            query = sql.SQL("DELETE FROM {} WHERE {} = ANY(%s::{}[])").format(
                relation(self.ref), sql.Identifier(shape.primary_key[0]), sql.SQL(key_type)
            )
            with self._translated("deleting a batch"):
                return conn.execute(query, [[k[0] for k in wanted]]).rowcount
        pk = sql.SQL(", ").join(sql.Identifier(c) for c in shape.primary_key)
        one = sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() * len(shape.primary_key)))
        deleted = 0
        for start in range(0, len(wanted), DELETE_CHUNK):
            chunk = wanted[start : start + DELETE_CHUNK]
            query = sql.SQL("DELETE FROM {} WHERE ({}) IN ({})").format(
                relation(self.ref), pk, sql.SQL(", ").join([one] * len(chunk))
            )
            with self._translated("deleting a batch"):
                deleted += conn.execute(query, [v for k in chunk for v in k]).rowcount
        return deleted

    def commit(self) -> None:
        """COMMIT the open batch, then advance the kept cursor past its last row.

        A ServiceUnavailable here means the outcome is unknown: the rows are deleted or
        kept, and both are safe once the archive holds them (the cursor stays: the next
        batch rescans, and a kept row is archived again as a duplicate by event id)."""
        conn = self._connection()
        batch = self._batch
        failpoint("archive_table.before_commit")  # deleted, not committed: a test dies here
        self._check_deadline("its COMMIT")
        with self._translated("committing a batch"):
            conn.commit()
        self._batch = None
        if batch is not None and batch.last is not None:
            self._after = batch.last
            if self.cursors is not None:
                shape = self.shape
                cursor = Cursor(shape.timestamp_column, shape.primary_key, batch.last)
                self.cursors.save(self.source_name, self.ref.schema, self.ref.table, cursor)

    def rollback(self) -> None:
        """ROLLBACK the open batch: its rows stay in the table, unlocked; the cursor stays.

        A session the server already ended has rolled back: that is no error here."""
        self._connection()
        self._abandon()

    # -- dry run ------------------------------------------------------------------

    def dry_run(self, older_than: timedelta, batch_size: int | None = None) -> DryRun:
        """What a run would archive (rows, time range, batches), READ ONLY, no row locked."""
        conn, shape = self._connection(), self.shape
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            raise RuntimeError("a batch is open: commit() or rollback() it first")
        ts = sql.Identifier(shape.timestamp_column)
        where, params = self._eligible(shape, older_than, self._after)
        query = sql.SQL(
            "SELECT count(*), min({ts}), max({ts}), now() - %s::interval FROM {table} WHERE {where}"
        ).format(ts=ts, table=relation(self.ref), where=where)
        with self._translated("a dry run"):
            conn.execute("SET TRANSACTION READ ONLY")
            conn.execute(
                "SELECT set_config('statement_timeout', %s, true)",
                (f"{int(self.limits.statement_timeout_s * 1000)}ms",),
            )
            found = conn.execute(query, [older_than, *params]).fetchone()
        conn.rollback()
        assert found is not None  # noqa: S101 - an aggregate always returns a row
        count, oldest, newest, cutoff = found
        size = batch_size or self.limits.batch_size
        return DryRun(int(count), oldest, newest, -(-int(count) // size), str(cutoff), self._after)
