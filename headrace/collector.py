"""Python's cycle collector, paused while a batch is in hand."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run without Python's cycle collector. A batch (the consumer runtime's, or
    archive-table's) makes tens of thousands of containers that all live until its
    end, so the collector would run many times over them for nothing, and move them
    to older generations whose full collections then take tens of milliseconds:
    about 15% of an archive's drain. Reference counting frees the batch when it is
    done; the collector then finds little that is young. Nested, it leaves the
    collector as the outer one set it."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
