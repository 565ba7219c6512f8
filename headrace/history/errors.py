"""The operational history's exceptions::

HeadraceError
 └── HistoryError          the history's store cannot be read or written
"""

from __future__ import annotations

from headrace.errors import HeadraceError


class HistoryError(HeadraceError):
    """The operational history's store cannot be opened, read or written."""
