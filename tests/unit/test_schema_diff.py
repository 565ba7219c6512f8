"""``schemas.diff`` lists what changed between two record schemas, field by field."""

from __future__ import annotations

import json
from typing import Any

from schemas.diff import FieldChange, diff


def rec(*fields: dict[str, Any], name: str = "Event") -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": "com.example", "fields": list(fields)}


def fld(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


def inline(*fields: dict[str, Any]) -> dict[str, Any]:
    return {"type": "record", "name": "Inline", "fields": list(fields)}


def test_identical_schemas_have_no_changes() -> None:
    schema = rec(fld("id", "string"), fld("next", ["null", "Event"], default=None))
    assert diff(schema, json.dumps(schema)) == []


def test_added_removed_and_changed_fields() -> None:
    old = rec(fld("id", "long"), fld("size", "long", default=0), fld("gone", "int", doc="old"))
    new = rec(
        fld("id", "int", default=0, doc="the id"),
        fld("size", "long", default=1),
        fld("owner", ["null", "string"], default=None),
    )
    assert diff(old, new) == [
        FieldChange("type changed", "id", "long -> int"),
        FieldChange("default added", "id", "default 0"),
        FieldChange("doc changed", "id", 'doc null -> "the id"'),
        FieldChange("default changed", "size", "default 0 -> 1"),
        FieldChange("added", "owner", 'type ["null", "string"] (default null)'),
        FieldChange("removed", "gone", "type int (no default)"),
    ]


def test_nested_records_inside_unions_and_arrays_are_followed() -> None:
    old = rec(
        fld("inline", inline(fld("encoding", "string", default="utf-8"))),
        fld(
            "items",
            {
                "type": "array",
                "items": {"type": "record", "name": "Item", "fields": [fld("sku", "string")]},
            },
        ),
    )
    new = rec(
        fld("inline", ["null", inline(fld("encoding", "string"))], default=None),
        fld(
            "items",
            {
                "type": "array",
                "items": {"type": "record", "name": "Item", "fields": [fld("sku", "long")]},
            },
        ),
    )
    assert diff(old, new) == [
        FieldChange("type changed", "inline", 'Inline -> ["null", "Inline"]'),
        FieldChange("default added", "inline", "default null"),
        FieldChange("default removed", "inline.encoding", 'default "utf-8"'),
        FieldChange("type changed", "items.sku", "string -> long"),
    ]


def test_renamed_field_and_enum_symbols() -> None:
    op = {"type": "enum", "name": "Op", "symbols": ["ADD", "MOVE"]}
    old = rec(fld("id", "string"), fld("op", op))
    new = rec(
        fld("identifier", "string", aliases=["id"]),
        fld("op", {**op, "symbols": ["ADD", "DELETE"]}),
    )
    assert diff(old, new) == [
        FieldChange("renamed", "identifier", "id -> identifier (alias 'id')"),
        FieldChange("aliases changed", "identifier", '[] -> ["id"]'),
        FieldChange("symbols added", "op", "enum Op: DELETE"),
        FieldChange("symbols removed", "op", "enum Op: MOVE"),
    ]


def test_root_enum_and_recursive_records() -> None:
    old = {"type": "enum", "name": "Op", "symbols": ["ADD"]}
    assert diff(old, {**old, "symbols": ["ADD", "MOVE"]}) == [
        FieldChange("symbols added", "Op", "enum Op: MOVE")
    ]
    linked = rec(fld("value", "int"), fld("next", ["null", "Event"], default=None))
    grown = rec(fld("value", "long"), fld("next", ["null", "Event"], default=None))
    assert diff(linked, grown) == [FieldChange("type changed", "value", "int -> long")]
