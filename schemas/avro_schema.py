"""Avro schemas parsed as Java Avro 1.12 parses them (what Apicurio 3.3 runs).

Names and namespaces are validated, references may come before their
definition, defaults are validated (a union default may match any branch),
and a name may not be defined twice. :func:`parse` turns JSON text or loaded
JSON into :class:`Schema` nodes; :mod:`schemas.compat` checks them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
NAMED = frozenset({"record", "enum", "fixed"})
_ORDERS = {"ASCENDING", "DESCENDING", "IGNORE"}
_JAVA_DOUBLE = re.compile(r"[+-]?(?:NaN|Infinity|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[fFdD]?)")


class SchemaParseError(ValueError):
    """The text is not a valid Avro schema; the message says why, in one line."""


@dataclass(frozen=True, eq=False)
class Field:
    """A record field; ``default`` is meaningful only when ``has_default`` (it may be null)."""

    name: str
    type: Schema
    aliases: tuple[str, ...] = ()
    has_default: bool = False
    default: Any = None
    doc: str | None = None
    order: str = "ascending"


@dataclass(frozen=True, eq=False)
class Schema:
    """A parsed schema node. ``type`` is an Avro type, or ``"ref"`` for a use of a named type by
    name: call ``resolve()`` to get the definition. Nodes compare by identity, like Java's."""

    type: str
    name: str = ""  # simple name of a named type; the name as written for a "ref"
    namespace: str = ""  # "" is the null namespace
    aliases: frozenset[str] = frozenset()  # full names
    doc: str | None = None
    fields: tuple[Field, ...] = ()
    symbols: tuple[str, ...] = ()
    enum_default: str | None = None
    size: int = 0
    items: Schema | None = None  # array
    values: Schema | None = None  # map
    branches: tuple[Schema, ...] = ()  # union
    logical_type: str | None = None
    registry: Mapping[str, Schema] | None = None  # the names a "ref" resolves in

    @property
    def full_name(self) -> str:
        return f"{self.namespace}.{self.name}" if self.namespace else self.name

    def resolve(self) -> Schema:
        """The definition a "ref" names (full name first, then the null namespace); else self."""
        if self.type != "ref":
            return self
        names = self.registry or {}
        found = names.get(self.full_name) or names.get(self.name)
        if found is None:
            raise SchemaParseError(f"undefined name: {self.full_name}")
        return found


SchemaSource: TypeAlias = Schema | str | Mapping[str, Any] | Sequence[Any]


def type_label(schema: Schema) -> str:
    """One-line name of a type: ``long``, ``Inline``, ``array<int>``, ``["null", "string"]``."""
    s = schema.resolve()
    if s.type in PRIMITIVES:
        return f"{s.type}({s.logical_type})" if s.logical_type else s.type
    if s.type in NAMED:
        return s.name
    if s.type == "array" and s.items is not None:
        return f"array<{type_label(s.items)}>"
    if s.type == "map" and s.values is not None:
        return f"map<{type_label(s.values)}>"
    labels = (type_label(b) for b in s.branches)
    return "[" + ", ".join(lb if "<" in lb or "[" in lb else json.dumps(lb) for lb in labels) + "]"


# --- parsing -------------------------------------------------------------------------------------


def parse(text_or_obj: SchemaSource) -> Schema:
    """Parse Avro schema JSON text, or already-loaded JSON, into a ``Schema``."""
    if isinstance(text_or_obj, Schema):
        return text_or_obj
    obj: Any = text_or_obj
    if isinstance(obj, str):
        obj = obj.strip()
        if not obj:
            raise SchemaParseError("the schema is empty")
        if obj[:1] in ("{", "[", '"'):
            try:
                obj = json.loads(obj)
            except json.JSONDecodeError as exc:
                raise SchemaParseError(f"schema is not valid JSON: {exc}") from None
    parser = _Parser()
    root = parser.node(obj, "")
    parser.finish()
    return root


def _check_name(name: str, what: str) -> None:
    ok = bool(name) and (name[0].isalpha() or name[0] == "_")
    if not ok or not all(c.isalpha() or c.isdecimal() or c == "_" for c in name[1:]):
        raise SchemaParseError(f"invalid {what} {name!r}: use letters, digits and _")


def _java_double(text: str, field: str) -> float:
    value = text.strip()
    if not _JAVA_DOUBLE.fullmatch(value):
        raise SchemaParseError(f"invalid default for field '{field}': {text!r} is not a number")
    return float(value.rstrip("fFdD"))


class _Parser:
    def __init__(self) -> None:
        self.names: dict[str, Schema] = {}
        self.refs: list[Schema] = []
        self.unions: list[Schema] = []
        self.fields: list[Field] = []

    def node(self, obj: Any, ns: str) -> Schema:
        if isinstance(obj, str):
            if obj in PRIMITIVES:
                return Schema(obj)
            ref = Schema("ref", obj, "" if "." in obj else ns, registry=self.names)
            self.refs.append(ref)
            return ref
        if isinstance(obj, list | tuple):
            union = Schema("union", branches=tuple(self.node(b, ns) for b in obj))
            self.unions.append(union)
            return union
        if not isinstance(obj, Mapping):
            raise SchemaParseError(f"not a schema: {json.dumps(obj)}")
        kind = obj.get("type")
        if not isinstance(kind, str):
            raise SchemaParseError("a schema object needs a string 'type'")
        logical = obj.get("logicalType")
        logical = logical if isinstance(logical, str) else None
        if kind in PRIMITIVES:
            return Schema(kind, logical_type=logical)
        if kind in ("array", "map"):
            key = "items" if kind == "array" else "values"
            if key not in obj:
                raise SchemaParseError(f"{kind} has no '{key}'")
            inner = self.node(obj[key], ns)
            if kind == "array":
                return Schema(kind, items=inner, logical_type=logical)
            return Schema(kind, values=inner, logical_type=logical)
        if kind in ("record", "error", "enum", "fixed"):
            return self.named(obj, "record" if kind == "error" else kind, ns, logical)
        return self.node(kind, ns)  # {"type": "SomeName"} refers to a named type

    def named(self, obj: Mapping[str, Any], kind: str, ns: str, logical: str | None) -> Schema:
        name, space = _name(obj, ns)
        common: dict[str, Any] = {
            "aliases": _aliases(obj, space),
            "doc": obj.get("doc") if isinstance(obj.get("doc"), str) else None,
            "logical_type": logical,
        }
        if kind == "record":
            node = Schema(
                "record", name, space, fields=self.record_fields(obj, name, space), **common
            )
        elif kind == "enum":
            symbols, default = _enum(obj, name)
            node = Schema("enum", name, space, symbols=symbols, enum_default=default, **common)
        else:
            node = Schema("fixed", name, space, size=_fixed_size(obj, name), **common)
        if node.full_name in self.names:
            raise SchemaParseError(f"name {node.full_name} is defined twice")
        self.names[node.full_name] = node
        return node

    def record_fields(self, obj: Mapping[str, Any], name: str, ns: str) -> tuple[Field, ...]:
        raw = obj.get("fields")
        if not isinstance(raw, list):
            raise SchemaParseError(f"record '{name}' has no 'fields' list")
        fields = tuple(self.field(f, ns) for f in raw)
        seen: set[str] = set()
        for f in fields:
            if f.name in seen:
                raise SchemaParseError(f"record '{name}' has field '{f.name}' twice")
            seen.add(f.name)
        self.fields.extend(fields)
        return fields

    def field(self, raw: Any, ns: str) -> Field:
        if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
            raise SchemaParseError("a record field has no string 'name'")
        name = raw["name"]
        _check_name(name, "field name")
        if "type" not in raw:
            raise SchemaParseError(f"field '{name}' has no 'type'")
        ftype = self.node(raw["type"], ns)
        order = raw.get("order", "ascending")
        if not isinstance(order, str) or order.upper() not in _ORDERS:
            raise SchemaParseError(f"field '{name}' has an invalid order {order!r}")
        default = raw.get("default")
        if ftype.type in ("float", "double") and isinstance(default, str):
            default = _java_double(default, name)
        aliases = raw.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise SchemaParseError(f"aliases of field '{name}' must be a list of strings")
        doc = raw.get("doc") if isinstance(raw.get("doc"), str) else None
        return Field(name, ftype, tuple(dict.fromkeys(aliases)), "default" in raw, default, doc)

    def finish(self) -> None:
        for ref in self.refs:
            ref.resolve()
        for union in self.unions:
            seen: set[str] = set()
            for branch in (b.resolve() for b in union.branches):
                if branch.type == "union":
                    raise SchemaParseError("a union may not directly contain another union")
                key = branch.full_name if branch.type in NAMED else branch.type
                if key in seen:
                    raise SchemaParseError(f"union has {key} twice")
                seen.add(key)
        for f in self.fields:
            if f.has_default and not _valid_default(f.type, f.default, 0):
                dumped = json.dumps(f.default)
                raise SchemaParseError(
                    f"invalid default for field '{f.name}': {dumped} is not a {type_label(f.type)}"
                )


def _name(obj: Mapping[str, Any], ns: str) -> tuple[str, str]:
    name = obj.get("name")
    if not isinstance(name, str):
        raise SchemaParseError(f"a {obj.get('type')} needs a string 'name'")
    space = obj["namespace"] if isinstance(obj.get("namespace"), str) else ns
    if "." in name:
        space, name = name.rsplit(".", 1)
    _check_name(name, "name")
    for part in space.split(".") if space else ():
        _check_name(part, "namespace part")
    if (f"{space}.{name}" if space else name) in PRIMITIVES:
        raise SchemaParseError(f"a named type may not be called {name}")
    return name, space


def _aliases(obj: Mapping[str, Any], ns: str) -> frozenset[str]:
    if "aliases" not in obj:
        return frozenset()
    raw = obj["aliases"]
    if not isinstance(raw, list) or not all(isinstance(a, str) for a in raw):
        raise SchemaParseError(f"aliases of '{obj.get('name')}' must be a list of strings")
    full: set[str] = set()
    for alias in raw:
        space, simple = alias.rsplit(".", 1) if "." in alias else (ns, alias)
        _check_name(simple, "alias")
        full.add(f"{space}.{simple}" if space else simple)
    return frozenset(full)


def _enum(obj: Mapping[str, Any], name: str) -> tuple[tuple[str, ...], str | None]:
    raw = obj.get("symbols")
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise SchemaParseError(f"enum '{name}' needs a 'symbols' list of strings")
    for symbol in raw:
        _check_name(symbol, "enum symbol")
    if len(set(raw)) != len(raw):
        raise SchemaParseError(f"enum '{name}' has a symbol twice")
    default = obj.get("default")
    if not isinstance(default, str):
        return tuple(raw), None  # Java ignores a default that is not a string
    if default not in raw:
        raise SchemaParseError(f"enum '{name}' default {default!r} is not one of its symbols")
    return tuple(raw), default


def _fixed_size(obj: Mapping[str, Any], name: str) -> int:
    size = obj.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not -(2**31) <= size < 2**31:
        raise SchemaParseError(f"fixed '{name}' needs an integer 'size'")
    if size < 0:
        raise SchemaParseError(f"fixed '{name}' has a negative size")
    return size


def _is_int(value: Any, bits: int) -> bool:
    ok = isinstance(value, int) and not isinstance(value, bool)
    return ok and -(2 ** (bits - 1)) <= value < 2 ** (bits - 1)


def _valid_default(schema: Schema, value: Any, depth: int) -> bool:
    """Java 1.12 ``Schema.isValidDefault``: a union default may match any of its branches."""
    s = schema.resolve()
    if depth > 64:
        return False
    if s.type == "record":
        if not isinstance(value, dict):
            return False
        return all(_valid_field_value(f, value, depth) for f in s.fields)
    if s.type in ("enum", "fixed", "string", "bytes"):
        return isinstance(value, str)
    if s.type == "array" and s.items is not None:
        items = s.items
        return isinstance(value, list) and all(_valid_default(items, v, depth + 1) for v in value)
    if s.type == "map" and s.values is not None:
        vals = s.values
        ok = isinstance(value, dict)
        return ok and all(_valid_default(vals, v, depth + 1) for v in value.values())
    if s.type == "union":
        return any(_valid_default(b, value, depth + 1) for b in s.branches)
    if s.type in ("int", "long"):
        return _is_int(value, 32 if s.type == "int" else 64)
    if s.type in ("float", "double"):
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, bool) if s.type == "boolean" else value is None


def _valid_field_value(f: Field, record: dict[str, Any], depth: int) -> bool:
    if f.name in record:
        return _valid_default(f.type, record[f.name], depth + 1)
    return f.has_default and _valid_default(f.type, f.default, depth + 1)
