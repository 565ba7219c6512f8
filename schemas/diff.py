"""Field-by-field differences between two versions of an Avro record schema, in plain words.

``diff(old, new)`` walks both records together, matching each new field to an old one by name
or by one of the new field's aliases, and recurses into nested records (also inside unions,
arrays and maps). Paths are dotted field names (``inline.encoding``); ``""`` is the root.
Changes: "added", "removed", "renamed", "type changed", "default added", "default removed",
"default changed", "aliases changed", "doc changed", and for enums "symbols added" and
"symbols removed" (at the path of the field holding the enum, or the enum's name at the root).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from schemas.avro_schema import Field, Schema, SchemaSource, parse, type_label

_DIFFED = ("record", "enum", "fixed")


@dataclass(frozen=True)
class FieldChange:
    change: str
    path: str
    detail: str


def diff(old: SchemaSource, new: SchemaSource) -> list[FieldChange]:
    """What changed from `old` to `new` (anything ``compat.parse`` accepts), field by field."""
    old_schema, new_schema = parse(old), parse(new)
    differ = _Differ()
    differ.type_change(old_schema, new_schema, "")
    differ.nested(old_schema, new_schema, "")
    return differ.changes


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _summary(field: Field) -> str:
    default = f"default {_dump(field.default)}" if field.has_default else "no default"
    return f"type {type_label(field.type)} ({default})"


def _reachable(schema: Schema) -> list[Schema]:
    """Records, enums and fixeds in a type without passing through a record."""
    s = schema.resolve()
    if s.type in _DIFFED:
        return [s]
    inner = [s.items] if s.items else [s.values] if s.values else list(s.branches)
    return [found for each in inner for found in _reachable(each)]


def _same(old: Schema, new: Schema) -> bool:
    return old.name == new.name or old.full_name in new.aliases


def _pairs(olds: list[Schema], news: list[Schema]) -> list[tuple[Schema, Schema]]:
    """Match named types by name or alias; a lone one of a kind on each side matches too."""
    pairs = []
    for new in news:
        candidates = [old for old in olds if old.type == new.type]
        named = [old for old in candidates if _same(old, new)]
        alone = len(candidates) == 1 and sum(n.type == new.type for n in news) == 1
        if named or alone:
            pairs.append(((named or candidates)[0], new))
    return pairs


class _Differ:
    def __init__(self) -> None:
        self.changes: list[FieldChange] = []
        self.seen: set[tuple[int, int]] = set()  # recursive types are diffed once

    def add(self, change: str, path: str, detail: str) -> None:
        self.changes.append(FieldChange(change, path, detail))

    def type_change(self, old: Schema, new: Schema, path: str) -> None:
        before, after = type_label(old), type_label(new)
        if before != after:
            self.add("type changed", path, f"{before} -> {after}")

    def nested(self, old: Schema, new: Schema, path: str) -> None:
        for o, n in _pairs(_reachable(old), _reachable(new)):
            if (id(o), id(n)) in self.seen:
                continue
            self.seen.add((id(o), id(n)))
            if n.type == "record":
                self.record(o, n, f"{path}." if path else "")
            elif n.type == "enum":
                self.enum(o, n, path or n.name)
            elif o.size != n.size:
                self.add(
                    "type changed", path or n.name, f"fixed {n.name} size {o.size} -> {n.size}"
                )

    def record(self, old: Schema, new: Schema, prefix: str) -> None:
        by_name = {f.name: f for f in old.fields}
        matched: set[str] = set()
        for field in new.fields:
            path = prefix + field.name
            names = [n for n in (field.name, *field.aliases) if n in by_name and n not in matched]
            if not names:
                self.add("added", path, _summary(field))
                continue
            before = by_name[names[0]]
            matched.add(before.name)
            if before.name != field.name:
                self.add("renamed", path, f"{before.name} -> {field.name} (alias '{before.name}')")
            self.field(before, field, path)
        for field in old.fields:
            if field.name not in matched:
                self.add("removed", prefix + field.name, _summary(field))

    def field(self, old: Field, new: Field, path: str) -> None:
        self.type_change(old.type, new.type, path)
        if old.has_default and not new.has_default:
            self.add("default removed", path, f"default {_dump(old.default)}")
        elif new.has_default and not old.has_default:
            self.add("default added", path, f"default {_dump(new.default)}")
        elif new.has_default and _dump(old.default) != _dump(new.default):
            self.add(
                "default changed", path, f"default {_dump(old.default)} -> {_dump(new.default)}"
            )
        if sorted(old.aliases) != sorted(new.aliases):
            self.add("aliases changed", path, f"{_dump(old.aliases)} -> {_dump(new.aliases)}")
        if old.doc != new.doc:
            self.add("doc changed", path, f"doc {_dump(old.doc)} -> {_dump(new.doc)}")
        self.nested(old.type, new.type, path)

    def enum(self, old: Schema, new: Schema, path: str) -> None:
        added = [s for s in new.symbols if s not in old.symbols]
        removed = [s for s in old.symbols if s not in new.symbols]
        if added:
            self.add("symbols added", path, f"enum {new.name}: {', '.join(added)}")
        if removed:
            self.add("symbols removed", path, f"enum {new.name}: {', '.join(removed)}")
