"""Logging for the CLI: configured once, every record carrying its run id.

Library code only calls ``logging.getLogger(__name__)`` with lazy ``%s``
arguments; :func:`configure_logging` is called by the CLI and nowhere else.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from headrace.redact import REDACTOR, RedactingFilter

_run_id: contextvars.ContextVar[str] = contextvars.ContextVar("headrace_run_id", default="-")
_STD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "run_id"}


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def set_run_id(run_id: str) -> None:
    _run_id.set(run_id)


def current_run_id() -> str:
    return _run_id.get()


class RunIdFilter(logging.Filter):
    """Stamps every record with the run id of the invocation that made it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = _run_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, run id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "run_id": getattr(record, "run_id", "-"),
        }
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_text:  # already formatted, and redacted, by RedactingFilter
            entry["exception"] = record.exc_text
        elif record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(
    level: str = "INFO", fmt: Literal["text", "json"] = "text", run_id: str | None = None
) -> str:
    """Install one stderr handler on the root logger; return the run id in force."""
    set_run_id(run_id or new_run_id())
    handler: logging.Handler
    if fmt == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    elif sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s  (run %(run_id)s)"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s run=%(run_id)s %(message)s")
        )
    handler.addFilter(RunIdFilter())
    handler.addFilter(RedactingFilter(REDACTOR))  # no credential reaches a log line
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Client libraries log every request at INFO; their warnings are enough.
    for noisy in ("httpx", "httpx2", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # librdkafka is chatty about every reconnect; its warnings are enough.
    logging.getLogger("headrace.librdkafka").setLevel(max(logging.WARNING, root.level))
    return current_run_id()
