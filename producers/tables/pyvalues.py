"""Text forms of the Python values psycopg's default loaders return.

``producers.tables.rows`` reads every column as PostgreSQL's text form, which
passes through unchanged. A caller holding loaded values (``Decimal``,
``datetime``, ``UUID``, ``list``...) gets a text that PostgreSQL reads back as
the same value, close to its own output (``t``/``f``, ISO dates with a space,
``+05:30`` offsets, ``NaN``/``Infinity``), but not always byte-identical to it
(intervals, json spacing, quoted array elements). A value of any other Python
type is refused with its type named: nothing is silently dropped.
"""

from __future__ import annotations

import ipaddress
import json
import math
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from uuid import UUID

from psycopg.types.range import Range

_JSON = ("json", "jsonb")
_ADDRESSES = (
    ipaddress.IPv4Address,
    ipaddress.IPv6Address,
    ipaddress.IPv4Interface,
    ipaddress.IPv6Interface,
    ipaddress.IPv4Network,
    ipaddress.IPv6Network,
)


def text_form(value: object, type_name: str) -> str:
    """``value`` (not None) of a column of type ``type_name``, as PostgreSQL input text."""
    if isinstance(value, str):
        return value
    if type_name in _JSON:
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple) and type_name.endswith("[]"):
        return _array(list(value), type_name[:-2])
    if isinstance(value, Range):
        return _range(value, type_name)
    return _scalar(value, type_name)


def _scalar(value: object, type_name: str) -> str:
    match value:
        case bool():
            return "t" if value else "f"
        case int():
            return str(value)
        case float():
            return _special(value) or repr(value)
        case Decimal():
            return _special(value) or format(value, "f")
        case bytes() | bytearray() | memoryview() if type_name == "bytea":
            return "\\x" + bytes(value).hex()
        case UUID():
            return str(value)
        case datetime():
            return f"{value.date().isoformat()} {_clock(value.timetz())}"
        case date():
            return value.isoformat()
        case time():
            return _clock(value)
        case timedelta():
            return f"{value.days} days {value.seconds} seconds {value.microseconds} microseconds"
        case _ if isinstance(value, _ADDRESSES):
            return str(value)
    # bytes in another type's column are a binary-format value, not its text
    raise TypeError(
        f"no text form for a {type(value).__name__} in a {type_name} column: "
        "read the table as text (producers.tables.rows.prepare)"
    )


def _special(value: float | Decimal) -> str | None:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return None


def _clock(value: time) -> str:
    """``HH:MM:SS[.ffffff]`` with trailing zeros trimmed, then a PostgreSQL-style offset."""
    text = value.replace(tzinfo=None).isoformat()
    if "." in text:
        text = text.rstrip("0")
    offset = value.utcoffset()
    if offset is None:
        return text
    sign = "-" if offset < timedelta(0) else "+"
    seconds = int(abs(offset).total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    zone = f"{sign}{hours:02d}"
    if minutes or secs:
        zone += f":{minutes:02d}"
    if secs:
        zone += f":{secs:02d}"
    return text + zone


def _array(items: list[object], element: str) -> str:
    """A PostgreSQL array literal: nested lists are dimensions, None is NULL, every
    other element quoted (always valid input, whatever characters it holds)."""
    parts = []
    for item in items:
        if item is None:
            parts.append("NULL")
        elif isinstance(item, list):
            parts.append(_array(item, element))
        else:
            parts.append(_quoted(text_form(item, element)))
    return "{" + ",".join(parts) + "}"


_RANGE_ELEMENTS = {
    "int4range": "int4",
    "int8range": "int8",
    "numrange": "numeric",
    "daterange": "date",
    "tsrange": "timestamp",
    "tstzrange": "timestamptz",
}


def _range(value: Range[object], type_name: str) -> str:
    """A range literal, bounds quoted; an unbounded side is empty."""
    if value.isempty:
        return "empty"
    element = _RANGE_ELEMENTS.get(type_name, type_name)
    lower, upper = (
        "" if bound is None else _quoted(text_form(bound, element))
        for bound in (value.lower, value.upper)
    )
    return f"{value.bounds[0]}{lower},{upper}{value.bounds[1]}"


def _quoted(text: str) -> str:
    """An array element or range bound in double quotes: valid whatever it holds."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
