"""The operational history's contract: what a sample is, and the store that keeps them.

A sample is one figure of one component at one time: ``(ts, component, metric,
value)``, ``ts`` in seconds since the epoch (UTC). Every store (one sibling file per
backend: sqlite.py, postgres.py) keeps them in one table and answers the same
queries with the same results; callers import only this module and
:func:`headrace.history.open_store`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

# (ts, component, metric, value): what a flush writes, as plain tuples (cheap to make).
Row = tuple[float, str, str, float]


@dataclass(frozen=True)
class Sample:
    ts: float
    component: str
    metric: str
    value: float


@dataclass(frozen=True)
class Bucket:
    """The samples of one metric of one component in ``[start, start + width)``."""

    start: float
    component: str
    metric: str
    count: int
    min: float
    max: float
    sum: float

    @property
    def avg(self) -> float:
        return self.sum / self.count


@dataclass(frozen=True)
class Component:
    name: str
    first: float  # the first sample's time
    last: float  # the last sample's time
    samples: int


class HistoryStore(ABC):
    """Samples in one table. Constructors do no I/O: the first call connects (a read-only
    store never creates anything, and says so when there is no history yet)."""

    where: str  # the database, for messages (no password)

    @abstractmethod
    def write(self, rows: Sequence[Row]) -> None:
        """Append ``rows`` in one transaction."""

    @abstractmethod
    def delete_before(self, ts: float) -> int:
        """Delete the samples older than ``ts``; how many went."""

    @abstractmethod
    def samples(self, since: float, until: float, component: str | None) -> list[Sample]:
        """The samples in ``[since, until)``, by time, then component and metric."""

    @abstractmethod
    def buckets(
        self, since: float, until: float, component: str | None, width_s: float | None
    ) -> list[Bucket]:
        """Per component, metric and bucket (``floor(ts / width_s) * width_s``; one bucket
        starting at ``since`` when ``width_s`` is None): count, min, max, sum, in order."""

    @abstractmethod
    def last(self, metric: str, since: float, until: float) -> dict[str, Sample]:
        """Per component, its last sample of ``metric`` in ``[since, until)``."""

    @abstractmethod
    def components(self) -> list[Component]:
        """Every component with samples, by name."""

    @abstractmethod
    def close(self) -> None: ...
