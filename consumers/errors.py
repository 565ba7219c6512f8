"""The consumer runtime's errors.

::

    ConsumeError (headrace.errors)
     └── StopConsuming   the group cannot go on (bad configuration, fatal broker error)
"""

from __future__ import annotations

from headrace.errors import ConsumeError, Terminal


class StopConsuming(ConsumeError, Terminal):
    """The group cannot go on; the message says why."""
