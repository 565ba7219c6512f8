"""Writing archived rows back into a table, in one transaction: the psycopg adapter of
``headrace restore-table``.

:meth:`RestoreTarget.write` runs, in one transaction with ``SET LOCAL`` ``lock_timeout``
and ``statement_timeout`` (``[tables]``)::

    CREATE TEMP TABLE ... AS SELECT <columns> FROM target WITH NO DATA   the target's types
    COPY tmp FROM STDIN                 the text forms, read by the target's input functions
    DELETE FROM tmp WHERE NOT (ts >= since AND ts < until)      --since/--until, if given
    SELECT * FROM tmp                   each row must read back as the text archived,
                                        else nothing is written (RestoreRefused)
    INSERT INTO target SELECT ... FROM tmp ON CONFLICT (pk) DO NOTHING
    compare the rows whose key was already there, as text forms: present or differ
    COMMIT                              (a dry run: ROLLBACK)

The INSERT takes the lock every INSERT takes (``ROW EXCLUSIVE``: readers and writers go
on); a writer of a key being restored waits for the COMMIT. A row already in the table
is never changed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from headrace.errors import ServiceUnavailable
from headrace.settings import SourceSettings
from producers.errors import RestoreRefused, RestoreTimeout
from producers.tables import rows
from producers.tables.catalog import TableRef, read_keyed, relation
from producers.tables.source import Limits
from schemas.models import Column

Values = Sequence[str | None]
SHOWN = 5  # keys of differing rows named in the summary
_TEMP = sql.Identifier("headrace_restore")


@dataclass(frozen=True)
class Window:
    """``--since``/``--until`` on the timestamp column, as PostgreSQL compares them."""

    column: str
    since: str | None = None
    until: str | None = None


@dataclass(frozen=True)
class Written:
    """What one restore transaction did (a dry run: would do, then rolled back)."""

    rows: int = 0  # rows copied: one per archived key
    outside: int = 0  # of those, outside --since/--until (or with a NULL timestamp)
    inserted: int = 0
    present: int = 0  # the key was in the table with the same values
    differ: int = 0  # the key was in the table with other values: left as it is
    differ_keys: tuple[tuple[str | None, ...], ...] = ()  # the first few, primary key order


class RestoreTarget:
    """The table rows are restored into; connects on :meth:`open`, not before."""

    def __init__(
        self, source: SourceSettings, source_name: str, ref: TableRef, limits: Limits
    ) -> None:
        self.source = source
        self.source_name = source_name
        self.ref = ref
        self.limits = limits
        self.columns: tuple[Column, ...] = ()
        self.key: tuple[str, ...] = ()
        self._conn: psycopg.Connection[Any] | None = None

    def open(self) -> None:
        """Connect, fix the session (rows.prepare) and read the table's columns and key."""
        self.close()
        with self._translated("connecting"):
            conn = psycopg.connect(self.source.conninfo())
        try:
            with self._translated("reading the catalog"):
                rows.prepare(conn)
                conn.commit()
                why = "rows could not be restored idempotently"
                self.columns, self.key = read_keyed(conn, self.ref, why)
                conn.rollback()
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> RestoreTarget:
        self.open()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def write(
        self,
        names: Sequence[str],
        values: Sequence[Values],
        window: Window | None = None,
        *,
        dry_run: bool = False,
    ) -> Written:
        """Restore ``values`` (text forms of the columns ``names``) as the module says."""
        conn = self._conn
        if conn is None:
            raise RuntimeError("RestoreTarget.open() first")
        n, new = (_unused(names, base) for base in ("restore_n", "restore_new"))
        try:
            with self._translated("restoring"):
                self._begin(conn)
                self._copy(conn, names, values, n, new)
                outside = self._outside(conn, window)
                self._check_read_back(conn, names, values, n)
                inserted = 0 if dry_run else self._insert(conn, names, new)
                present, differ, keys = self._compare(conn, names, n, new)
                if dry_run:
                    inserted = len(values) - outside - present - differ
                    conn.rollback()
                else:
                    conn.commit()
        except BaseException:
            with suppress(psycopg.Error):  # a lost connection: the server rolled back
                conn.rollback()
            raise
        return Written(len(values), outside, inserted, present, differ, keys)

    def _begin(self, conn: psycopg.Connection[Any]) -> None:
        for name, seconds in (
            ("lock_timeout", self.limits.lock_timeout_s),
            ("statement_timeout", self.limits.statement_timeout_s),
        ):  # SET LOCAL: this transaction only
            conn.execute("SELECT set_config(%s, %s, true)", (name, f"{int(seconds * 1000)}ms"))

    def _copy(
        self,
        conn: psycopg.Connection[Any],
        names: Sequence[str],
        values: Sequence[Values],
        n: sql.Identifier,
        new: sql.Identifier,
    ) -> None:
        columns = _columns(names)
        conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE {tmp} ON COMMIT DROP AS SELECT {columns} FROM {target}"
                " WITH NO DATA"
            ).format(tmp=_TEMP, columns=columns, target=relation(self.ref))
        )
        conn.execute(
            sql.SQL(
                "ALTER TABLE {tmp} ADD COLUMN {n} bigint, ADD COLUMN {new} boolean"
                " NOT NULL DEFAULT false"
            ).format(tmp=_TEMP, n=n, new=new)
        )
        copy = sql.SQL("COPY {} ({}, {}) FROM STDIN").format(_TEMP, n, columns)
        with conn.cursor().copy(copy) as writer:
            for number, row in enumerate(values):
                writer.write_row([str(number), *row])

    def _outside(self, conn: psycopg.Connection[Any], window: Window | None) -> int:
        if window is None or (window.since is None and window.until is None):
            return 0
        ts = sql.Identifier(window.column)
        bounds, params = [], []
        if window.since is not None:
            bounds.append(sql.SQL("{} >= %s").format(ts))
            params.append(window.since)
        if window.until is not None:
            bounds.append(sql.SQL("{} < %s").format(ts))
            params.append(window.until)
        query = sql.SQL("DELETE FROM {} WHERE NOT coalesce({}, false)").format(
            _TEMP, sql.SQL(" AND ").join(bounds)
        )
        return conn.execute(query, params).rowcount

    def _check_read_back(
        self,
        conn: psycopg.Connection[Any],
        names: Sequence[str],
        values: Sequence[Values],
        n: sql.Identifier,
    ) -> None:
        """Each copied row, read back from the temporary table (the target's types), must
        be the text archived: else the types differ (a typmod: numeric(10,2) rounds)."""
        query = sql.SQL("SELECT {}, {} FROM {} ORDER BY 1").format(n, _columns(names), _TEMP)
        for number, *found in conn.cursor().stream(query):
            wanted = values[int(number)]
            for name, got, value in zip(names, found, wanted, strict=True):
                if got != value:
                    raise RestoreRefused(
                        f"{self.ref}.{name} does not hold the archived value {value!r} as it"
                        f" is (it reads back as {got!r}): its type differs from the archived"
                        " column's; nothing was written"
                    )

    def _insert(
        self, conn: psycopg.Connection[Any], names: Sequence[str], new: sql.Identifier
    ) -> int:
        key = sql.SQL(", ").join(map(sql.Identifier, self.key))
        query = sql.SQL(
            "WITH ins AS (INSERT INTO {target} ({columns}) SELECT {columns} FROM {tmp}"
            " ON CONFLICT ({key}) DO NOTHING RETURNING {key}),"
            " marked AS (UPDATE {tmp} s SET {new} = true FROM ins WHERE {same_key})"
            " SELECT count(*) FROM ins"
        ).format(
            target=relation(self.ref),
            columns=_columns(names),
            tmp=_TEMP,
            key=key,
            new=new,
            same_key=self._same_key("ins"),
        )
        found = conn.execute(query).fetchone()
        return int(found[0]) if found else 0

    def _compare(
        self,
        conn: psycopg.Connection[Any],
        names: Sequence[str],
        n: sql.Identifier,
        new: sql.Identifier,
    ) -> tuple[int, int, tuple[tuple[str | None, ...], ...]]:
        """(present, differ, the first differing keys) of the rows not inserted whose key
        the table has: the same when every restored column's text form is the same."""
        as_text = [
            sql.SQL("{}.{}::text").format(sql.Identifier(side), sql.Identifier(c))
            for side in ("t", "s")
            for c in names
        ]
        half = len(names)
        joined = sql.SQL("FROM {tmp} s JOIN {target} t ON {same_key} WHERE NOT s.{new}").format(
            tmp=_TEMP, target=relation(self.ref), same_key=self._same_key("t"), new=new
        )
        same = sql.SQL("(ROW({}) IS NOT DISTINCT FROM ROW({}))").format(
            sql.SQL(", ").join(as_text[:half]), sql.SQL(", ").join(as_text[half:])
        )
        counts = conn.execute(
            sql.SQL(
                "SELECT count(*) FILTER (WHERE {same}), count(*) FILTER (WHERE NOT {same}) {joined}"
            ).format(same=same, joined=joined)
        ).fetchone()
        present, differ = (int(counts[0]), int(counts[1])) if counts else (0, 0)
        keys: list[tuple[str | None, ...]] = []
        if differ:
            key = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(k)) for k in self.key)
            found = conn.execute(
                sql.SQL("SELECT {key} {joined} AND NOT {same} ORDER BY s.{n} LIMIT %s").format(
                    key=key, joined=joined, same=same, n=n
                ),
                (SHOWN,),
            )
            keys = [tuple(r) for r in found.fetchall()]
        return present, differ, tuple(keys)

    def _same_key(self, other: str) -> sql.Composed:
        return sql.SQL(" AND ").join(
            sql.SQL("s.{c} = {o}.{c}").format(c=sql.Identifier(k), o=sql.Identifier(other))
            for k in self.key
        )

    @contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        """psycopg's errors as headrace's, one line each; the transaction is rolled back."""
        try:
            yield
        except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as exc:
            raise RestoreTimeout(
                f"{self.ref}: {doing}: {exc.diag.message_primary}: rolled back, nothing written"
            ) from None
        except psycopg.OperationalError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "connection lost"
            raise ServiceUnavailable(
                f"PostgreSQL source {self.source_name}", self.source.address, f"{doing}: {reason}"
            ) from None
        except psycopg.Error as exc:
            message = exc.diag.message_primary or str(exc).strip().splitlines()[0]
            raise RestoreRefused(
                f"{self.ref}: {doing}: {message}: rolled back, nothing written"
            ) from None


def _columns(names: Sequence[str]) -> sql.Composed:
    return sql.SQL(", ").join(map(sql.Identifier, names))


def _unused(names: Sequence[str], base: str) -> sql.Identifier:
    """A column name for the temporary table's own bookkeeping, not one of ``names``."""
    name = base
    while name in names:
        name = "_" + name
    return sql.Identifier(name)
