"""The consumer runtime's errors.

::

    ConsumeError (headrace.errors)
     ├── StopConsuming   the group cannot go on (bad configuration, fatal broker error)
     └── RecordsRefused  a sink refuses some records of a batch, each with its error
"""

from __future__ import annotations

from collections.abc import Sequence

from headrace.errors import ConsumeError, Terminal


class StopConsuming(ConsumeError, Terminal):
    """The group cannot go on; the message says why."""


class RecordsRefused(ConsumeError, Terminal):
    """Raised by ``Sink.write`` before it writes anything: these records (by index in the
    batch) cannot be written, each for its own terminal error. The runtime dead-letters
    them, each with its error's reason, and writes the rest of the batch again."""

    def __init__(self, refused: Sequence[tuple[int, Terminal]]) -> None:
        if not refused:
            raise ValueError("RecordsRefused needs at least one refused record")
        first = refused[0][1]
        super().__init__(f"{len(refused)} records refused; the first: {first}")
        self.refused = list(refused)
