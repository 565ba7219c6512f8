"""Offline Avro schema compatibility, giving the verdicts of Java Avro's ``SchemaCompatibility``.

Java Avro (1.11/1.12) is the oracle behind Apicurio Registry and Confluent Schema Registry, so
this module copies its algorithm rather than the prose of the specification:

- named types match when their *unqualified* names are equal, or when a reader alias equals
  the writer's full name (aliases are made full with the reader's namespace, as Java does);
- a reader field is looked up in the writer by its name and then by its own aliases; writer
  aliases play no part; a missing reader field needs a ``default`` (the default symbol of an
  enum-typed field does not count: Java then reports a TYPE_MISMATCH);
- enums: every writer symbol must be a reader symbol unless the reader enum has a default;
- unions: every branch of a writer union must be readable; a reader union reads a non-union
  writer when any of its branches does; a writer union against a non-union reader reports the
  failing branches themselves (so ``"string"`` reading ``["null", "string"]`` is a TYPE_MISMATCH);
- promotions: int -> long, float, double; long -> float, double; float -> double; string <->
  bytes; logical types are ignored;
- recursion: a (reader, writer) pair already being checked counts as compatible.

The parser follows Java Avro 1.12 (what Apicurio 3.3 runs): names and namespaces are validated,
references may come before the definition, defaults are validated (a union default may match
any branch), and a name may not be defined twice.

Inputs: ``check`` and ``reader_problems`` take a ``Schema`` from ``parse`` or anything ``parse``
accepts; anything that is not already a ``Schema`` goes through ``parse`` first. A Python str
is JSON text when it starts with ``{``, ``[`` or ``"``, and a bare type name (``"int"``) otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeAlias

from schemas.avro_schema import (
    NAMED,
    Schema,
    SchemaParseError,
    SchemaSource,
    parse,
    type_label,
)

__all__ = [
    "Incompatibility",
    "Kind",
    "Level",
    "Schema",
    "SchemaParseError",
    "SchemaSource",
    "check",
    "parse",
    "reader_problems",
]

NEW_READS_OLD = "new reads old"
OLD_READS_NEW = "old reads new"
# reader type -> the other writer types it can read
_PROMOTIONS = {
    "long": {"int"},
    "float": {"int", "long"},
    "double": {"int", "long", "float"},
    "bytes": {"string"},
    "string": {"bytes"},
}
_PROMOTABLE = {"int", "long", "float", "double", "bytes", "string"}


class Level(StrEnum):
    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"
    NONE = "NONE"


class Kind(StrEnum):
    """Why a reader cannot read a writer; Java's SchemaIncompatibilityType names."""

    NAME_MISMATCH = "NAME_MISMATCH"
    FIXED_SIZE_MISMATCH = "FIXED_SIZE_MISMATCH"
    MISSING_ENUM_SYMBOLS = "MISSING_ENUM_SYMBOLS"
    READER_FIELD_MISSING_DEFAULT = "READER_FIELD_MISSING_DEFAULT"  # Java: ..._DEFAULT_VALUE
    TYPE_MISMATCH = "TYPE_MISMATCH"
    MISSING_UNION_BRANCH = "MISSING_UNION_BRANCH"


@dataclass(frozen=True)
class Incompatibility:
    version: str
    direction: str
    path: str
    kind: str
    message: str


_Span: TypeAlias = "tuple[Schema, Schema] | None"


@dataclass(frozen=True, eq=False)
class _Problem:
    kind: Kind
    loc: tuple[str, ...]
    reader: Schema
    writer: Schema
    symbols: tuple[str, ...] = ()
    branch: Schema | None = None  # the writer-union branch no reader branch can read
    span: tuple[Schema, Schema] | None = None  # (reader, writer) to describe the change with
    enum_default: bool = False  # Java's quirk: an enum default stands in for a field default
    causes: tuple[_Problem, ...] = ()  # why the likeliest union branch could not read it

    @property
    def path(self) -> str:
        return "/" + "/".join(t.replace("~", "~0").replace("/", "~1") for t in self.loc)


def _likeliest(union: Schema, writer: Schema) -> Schema | None:
    """The reader union's branch most like the writer: same type, and same name if named."""
    same = [b.resolve() for b in union.branches if b.resolve().type == writer.type]
    named = [b for b in same if b.name == writer.name or writer.full_name in b.aliases]
    return next(iter(named or same), None)


class _Checker:
    """Java's ReaderWriterCompatibilityChecker: memoised by node identity, recursion-safe."""

    def __init__(self) -> None:
        self.memo: dict[tuple[int, int], list[_Problem] | None] = {}

    def check(
        self, reader: Schema, writer: Schema, loc: tuple[str, ...], span: _Span = None
    ) -> list[_Problem]:
        reader, writer = reader.resolve(), writer.resolve()
        key = (id(reader), id(writer))
        if key in self.memo:  # None while in progress: compatible unless proven otherwise
            return self.memo[key] or []
        self.memo[key] = None
        result = self.calculate(reader, writer, loc, span)
        self.memo[key] = result
        return result

    def calculate(self, r: Schema, w: Schema, loc: tuple[str, ...], span: _Span) -> list[_Problem]:
        if r.type == w.type:
            return self.same_type(r, w, loc)
        if w.type == "union":  # every writer branch must be readable
            out: list[_Problem] = []
            for i, branch in enumerate(w.branches):
                out += self.check(r, branch, (*loc, str(i)), span or (r, w))
            return out
        if r.type == "union":  # some reader branch must read the writer
            if any(not self.check(branch, w, loc) for branch in r.branches):
                return []
            closest = _likeliest(r, w)
            causes = self.check(closest, w, loc) if closest else []
            return [_Problem(Kind.MISSING_UNION_BRANCH, loc, r, w, causes=tuple(causes))]
        if w.type in _PROMOTIONS.get(r.type, ()):
            return []
        return [_Problem(Kind.TYPE_MISMATCH, loc, r, w, span=span)]

    def same_type(self, r: Schema, w: Schema, loc: tuple[str, ...]) -> list[_Problem]:
        if r.type == "array" and r.items is not None and w.items is not None:
            return self.check(r.items, w.items, (*loc, "items"))
        if r.type == "map" and r.values is not None and w.values is not None:
            return self.check(r.values, w.values, (*loc, "values"))
        if r.type == "union":
            out = []
            for i, branch in enumerate(w.branches):
                if lacking := self.check(r, branch, (*loc, str(i))):
                    causes = tuple(c for p in lacking for c in p.causes)
                    kind = Kind.MISSING_UNION_BRANCH
                    out.append(_Problem(kind, (*loc, str(i)), r, w, branch=branch, causes=causes))
            return out
        if r.type not in NAMED:
            return []
        out = []
        if r.name != w.name and w.full_name not in r.aliases:
            out.append(_Problem(Kind.NAME_MISMATCH, (*loc, "name"), r, w))
        if r.type == "fixed" and r.size != w.size:
            out.append(_Problem(Kind.FIXED_SIZE_MISMATCH, (*loc, "size"), r, w))
        if r.type == "enum":
            missing = tuple(sorted(set(w.symbols) - set(r.symbols)))
            if missing and r.enum_default is None:
                out.append(_Problem(Kind.MISSING_ENUM_SYMBOLS, (*loc, "symbols"), r, w, missing))
        return out + (self.fields(r, w, loc) if r.type == "record" else [])

    def fields(self, r: Schema, w: Schema, loc: tuple[str, ...]) -> list[_Problem]:
        out: list[_Problem] = []
        by_name = {f.name: f for f in w.fields}
        for field in r.fields:
            floc = (*loc, "fields", field.name)
            found = [by_name[n] for n in (field.name, *field.aliases) if n in by_name]
            if len(found) > 1:  # Java throws AvroRuntimeException here
                names = ", ".join(f.name for f in found)
                raise SchemaParseError(f"reader field '{field.name}' matches writer fields {names}")
            ftype = field.type.resolve()
            if found:
                out += self.check(ftype, found[0].type, (*floc, "type"))
            elif field.has_default:
                continue
            elif ftype.type == "enum" and ftype.enum_default is not None:
                out.append(
                    _Problem(Kind.TYPE_MISMATCH, (*floc, "type"), ftype, w, enum_default=True)
                )
            else:
                out.append(_Problem(Kind.READER_FIELD_MISSING_DEFAULT, floc, r, w))
        return out


# --- messages ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Roles:
    reader: str  # "the new schema", a version label, or "the reader schema"
    writer: str
    reader_is_new: bool | None  # None: plain reader/writer wording

    def pick(self, plain: str, new_reads_old: str, old_reads_new: str) -> str:
        if self.reader_is_new is None:
            return plain
        return new_reads_old if self.reader_is_new else old_reads_new

    def old_new(self, reader: Schema, writer: Schema) -> tuple[Schema, Schema]:
        return (writer, reader) if self.reader_is_new else (reader, writer)

    @property
    def so(self) -> str:
        if self.reader_is_new is None:
            return "so the reader schema cannot read data written with the writer schema"
        return f"so a reader of {self.reader} cannot read data written with {self.writer}"


_PLAIN = _Roles("the reader schema", "the writer schema", None)


def _kinded(schema: Schema) -> str:
    s = schema.resolve()
    return f"{s.type} '{s.name}'" if s.type in NAMED else type_label(s)


def _where(loc: tuple[str, ...]) -> tuple[str, str]:
    """(dotted field path, notes such as "array items") of a location."""
    names: list[str] = []
    notes: list[str] = []
    i = 0
    while i < len(loc):
        if loc[i] == "fields" and i + 1 < len(loc):
            names.append(loc[i + 1])
            notes = []
            i += 1
        elif loc[i] in ("items", "values"):
            notes.append("array items" if loc[i] == "items" else "map values")
        i += 1
    return ".".join(names), ", ".join(notes)


def _message(p: _Problem, roles: _Roles) -> str:
    """One line of plain words; a missing union branch also says why the closest branch fails."""
    because = "; ".join(_unique([_sentence(c, roles) for c in p.causes]))
    return _sentence(p, roles) + (f" ({because})" if because else "")


def _sentence(p: _Problem, roles: _Roles) -> str:
    dotted, notes = _where(p.loc)
    subject = (f"field '{dotted}'" if dotted else "the schema") + (f" ({notes})" if notes else "")
    at = f" (field '{dotted}')" if dotted else ""
    r, w = p.reader, p.writer
    old, new = roles.old_new(r, w)
    if p.kind is Kind.READER_FIELD_MISSING_DEFAULT or p.enum_default:
        why = f" (the default symbol of enum '{r.name}' does not count)" if p.enum_default else ""
        return roles.pick(
            f"field '{dotted}' has no default{why} and is missing from the writer schema",
            f"field '{dotted}' was added without a default{why}, {roles.so}",
            f"field '{dotted}' was removed, but {roles.reader} has no default for it{why}, "
            + roles.so,
        )
    if p.kind is Kind.MISSING_ENUM_SYMBOLS:
        what, symbols = f"enum '{r.name}'{at}", ", ".join(p.symbols)
        return roles.pick(
            f"{what} in the reader schema lacks symbols {symbols}, {roles.so}",
            f"{what} lost symbols {symbols}, which data written with {roles.writer} may hold",
            f"{what} gained symbols {symbols}, which {roles.reader} cannot read "
            "(its enum has no default symbol)",
        )
    if p.kind is Kind.NAME_MISMATCH:
        aliases = f" (its aliases: {', '.join(sorted(r.aliases))})" if r.aliases else ""
        return roles.pick(
            f"the reader's {r.type} '{r.name}'{at} does not match the writer's name "
            f"'{w.full_name}' and has no alias for it{aliases}",
            f"{r.type} '{old.name}'{at} was renamed to '{new.name}' without an alias "
            f"'{w.full_name}'{aliases}, {roles.so}",
            f"{r.type} '{old.name}'{at} was renamed to '{new.name}', and {roles.reader} has no "
            f"alias '{w.full_name}'{aliases}, {roles.so}",
        )
    if p.kind is Kind.FIXED_SIZE_MISMATCH:
        change = f"fixed '{r.name}'{at} changed size from {old.size} to {new.size} bytes"
        return roles.pick(
            f"fixed '{r.name}'{at} has size {r.size} but the writer's has size {w.size}",
            f"{change}, {roles.so}",
            f"{change}, {roles.so}",
        )
    if p.branch is not None and p.causes:  # a like branch exists but cannot read this one
        branch = _kinded(p.branch)
        return roles.pick(
            f"{subject}: the reader's union branch for {branch} cannot read the writer's",
            f"{subject}: the new union branch for {branch} cannot read it as written with "
            + roles.writer,
            f"{subject}: the union branch for {branch} in {roles.reader} cannot read it as "
            "written with the new schema",
        )
    if p.branch is not None:  # a branch of the writer's union that the reader's union lacks
        branch = _kinded(p.branch)
        return roles.pick(
            f"{subject}: no branch of the reader's union {type_label(r)} can read {branch}",
            f"{subject} no longer has a union branch that can read {branch}, "
            f"which data written with {roles.writer} may hold",
            f"{subject} now allows {branch}, which {roles.reader} has no union branch to read",
        )
    if p.kind is Kind.MISSING_UNION_BRANCH:
        why = f"no branch of {type_label(r)} can read {_kinded(w)}"
    elif {r.type, w.type} <= _PROMOTABLE:
        why = f"{w.type} cannot be promoted to {r.type}"
    else:
        why = f"{_kinded(w)} cannot be read as {_kinded(r)}"
    old, new = roles.old_new(*(p.span or (r, w)))
    change = f"{subject} changed from {_kinded(old)} to {_kinded(new)}, and {why}"
    return roles.pick(f"{subject}: {why}", change, change)


# --- public checks -------------------------------------------------------------------------------


def _problems(reader: Schema, writer: Schema) -> list[_Problem]:
    return _Checker().check(reader, writer, ())


def _unique(items: list[Any]) -> list[Any]:
    return list(dict.fromkeys(items))


def reader_problems(reader: SchemaSource, writer: SchemaSource) -> list[tuple[str, str, str]]:
    """(path, kind, plain-words message) for each reason `reader` cannot read data written with
    `writer`. Empty list = compatible."""
    found = _problems(parse(reader), parse(writer))
    return _unique([(p.path, str(p.kind), _message(p, _PLAIN)) for p in found])


def _level(level: Level | str) -> Level:
    try:
        return Level(str(level).strip().upper())
    except ValueError:
        known = ", ".join(Level)
        raise ValueError(f"unknown compatibility level {level!r}; use one of {known}") from None


def check(
    new: SchemaSource, previous: Sequence[tuple[str, SchemaSource]], level: Level | str
) -> list[Incompatibility]:
    """Incompatibilities of `new` with `previous` ((label, schema) pairs, oldest first) at
    `level`. Non-transitive levels compare with the latest previous schema only, transitive
    ones with all (reported newest first). BACKWARD: new reads old; FORWARD: old reads new;
    FULL: both; NONE: nothing. An unknown level raises ValueError."""
    lvl = _level(level)
    if lvl is Level.NONE or not previous:
        return []
    targets = previous if lvl.endswith("_TRANSITIVE") else previous[-1:]
    base = lvl.removesuffix("_TRANSITIVE")
    reader = parse(new)
    out: list[Incompatibility] = []
    for label, source in reversed(targets):
        old = parse(source)
        if base in ("BACKWARD", "FULL"):
            roles = _Roles("the new schema", label, True)
            out += _report(_problems(reader, old), label, NEW_READS_OLD, roles)
        if base in ("FORWARD", "FULL"):
            roles = _Roles(label, "the new schema", False)
            out += _report(_problems(old, reader), label, OLD_READS_NEW, roles)
    return _unique(out)


def _report(
    found: list[_Problem], label: str, direction: str, roles: _Roles
) -> list[Incompatibility]:
    return [
        Incompatibility(label, direction, p.path, str(p.kind), _message(p, roles)) for p in found
    ]
