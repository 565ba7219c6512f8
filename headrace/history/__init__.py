"""The operational history: every headrace process records its own figures (groups per
batch, commands at their end, the process every ``process_interval_s``) into SQLite or
PostgreSQL (``[history]``), read back by ``headrace metrics``.

:func:`open_recorder` gives a running :class:`Recorder`, or None when the history is
disabled (a caller checks one attribute); :func:`record_final` writes a short-lived
command's figures at its end; :func:`open_store` opens the store for queries.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from headrace.history.base import HistoryStore
from headrace.history.errors import HistoryError
from headrace.history.recorder import Recorder
from headrace.settings import Settings

__all__ = [
    "HistoryError",
    "HistoryStore",
    "Recorder",
    "open_recorder",
    "open_store",
    "record_final",
]
log = logging.getLogger(__name__)


def open_store(settings: Settings, *, readonly: bool = False) -> HistoryStore:
    """The history's store as settings say (no I/O until its first call)."""
    config = settings.history
    if config.backend == "postgres":
        from headrace.history.postgres import PostgresHistory  # noqa: PLC0415 - the driver

        return PostgresHistory(settings.postgres, config.postgres_schema, readonly=readonly)
    from headrace.history.sqlite import SqliteHistory  # noqa: PLC0415

    return SqliteHistory(config.sqlite_path, readonly=readonly)


def make_recorder(settings: Settings, component: str) -> Recorder | None:
    """A recorder for ``component``, not started; None when the history is disabled."""
    config = settings.history
    if not config.enabled:
        return None
    return Recorder(
        open_store(settings),
        component,
        flush_interval_s=config.flush_interval_s,
        queue_size=config.queue_size,
        retention_days=config.retention_days,
        process_interval_s=config.process_interval_s,
    )


def open_recorder(settings: Settings, component: str) -> Recorder | None:
    """A started recorder for ``component`` (close it when done); None when disabled."""
    recorder = make_recorder(settings, component)
    return recorder.start() if recorder is not None else None


def record_final(settings: Settings, component: str, figures: Mapping[str, float]) -> None:
    """A short-lived command's final figures, and a process sample, written now (one
    transaction, after deleting the samples past retention). The history never fails a
    command: a store that cannot be written is a warning."""
    recorder = make_recorder(settings, component)
    if recorder is None:
        return
    recorder.record_many(figures)
    recorder.retain()  # a host that only runs commands deletes old samples too
    recorder.close()  # never started: samples the process and flushes here
    if recorder.flushed == 0:
        log.warning("the final figures of %s are not in the operational history", component)
