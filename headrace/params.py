"""Click parameter types that several commands share.

A value that does not parse is click's own one-line usage error (exit 2),
naming the option, before the command runs.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import click


class Day(click.ParamType):  # type: ignore[type-arg]  # generic in click's stubs only
    """A day, ``YYYY-MM-DD``, passed on as that string (the archive's day names)."""

    name = "YYYY-MM-DD"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        try:
            date.fromisoformat(text)
        except ValueError:
            self.fail(f"{text!r} is not a YYYY-MM-DD date", param, ctx)
        if len(text) != len("YYYY-MM-DD"):  # fromisoformat also reads 20240101
            self.fail(f"{text!r} is not a YYYY-MM-DD date", param, ctx)
        return text


DAY = Day()
