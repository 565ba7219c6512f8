"""The queries both SQL stores share: one ``samples`` table, the same SQL but for the
parameter marker and the bucket expression, which each backend names (its class
attributes). A backend implements :meth:`_execute`, :meth:`write` and :meth:`last`."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

from headrace.history.base import Bucket, Component, HistoryStore, Sample


class SqlHistory(HistoryStore):
    marker: str  # the driver's parameter marker: "?" or "%s"
    bucket: str  # the bucket index of ts, with one parameter: the width in seconds

    @abstractmethod
    def _execute(self, query: str, args: Sequence[object]) -> tuple[list[tuple[Any, ...]], int]:
        """The query's rows and its rowcount; a failure is a HistoryError."""

    def delete_before(self, ts: float) -> int:
        delete = f"DELETE FROM samples WHERE ts < {self.marker}"  # noqa: S608 - a marker
        return self._execute(delete, (ts,))[1]

    def samples(self, since: float, until: float, component: str | None) -> list[Sample]:
        where, args = self._where(since, until, component)
        rows, _ = self._execute(
            f"SELECT ts, component, metric, value FROM samples WHERE {where}"  # noqa: S608 - no input in it
            " ORDER BY ts, component, metric",
            args,
        )
        return [Sample(*row) for row in rows]

    def buckets(
        self, since: float, until: float, component: str | None, width_s: float | None
    ) -> list[Bucket]:
        where, args = self._where(since, until, component)
        index = "0" if width_s is None else self.bucket.format(self.marker)
        rows, _ = self._execute(
            f"SELECT {index} AS b, component, metric, count(*), min(value), max(value),"  # noqa: S608
            f" sum(value) FROM samples WHERE {where}"
            " GROUP BY b, component, metric ORDER BY component, metric, b",
            (() if width_s is None else (width_s,)) + args,
        )
        return [
            Bucket(since if width_s is None else b * width_s, c, m, n, lo, hi, total)
            for b, c, m, n, lo, hi, total in rows
        ]

    def components(self) -> list[Component]:
        rows, _ = self._execute(
            "SELECT component, min(ts), max(ts), count(*) FROM samples"
            " GROUP BY component ORDER BY component",
            (),
        )
        return [Component(*row) for row in rows]

    def _where(
        self, since: float, until: float, component: str | None
    ) -> tuple[str, tuple[object, ...]]:
        p = self.marker
        if component is None:
            return f"ts >= {p} AND ts < {p}", (since, until)
        return f"component = {p} AND ts >= {p} AND ts < {p}", (component, since, until)
