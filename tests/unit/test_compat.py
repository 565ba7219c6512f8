"""The offline compatibility checker gives Java Avro's verdicts and explains them in words."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.compat import (
    Incompatibility,
    Level,
    SchemaParseError,
    check,
    parse,
    reader_problems,
)

RFMD = "READER_FIELD_MISSING_DEFAULT"
TM = "TYPE_MISMATCH"
MES = "MISSING_ENUM_SYMBOLS"
MUB = "MISSING_UNION_BRANCH"
NM = "NAME_MISMATCH"
FSM = "FIXED_SIZE_MISMATCH"


def rec(*fields: dict[str, Any], name: str = "Event", ns: str = "com.example", **extra: Any) -> Any:
    return {"type": "record", "name": name, "namespace": ns, "fields": list(fields), **extra}


def fld(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


def op(*symbols: str, **extra: Any) -> dict[str, Any]:
    return fld("op", {"type": "enum", "name": "Op", "symbols": list(symbols), **extra})


ID = fld("id", "string")
OWNER = fld("owner", "string")
OWNER_DEFAULT = fld("owner", "string", default="nobody")
SIZE_INT, SIZE_LONG = fld("size", "int"), fld("size", "long")
VALUE = fld("value", ["null", "string"], default=None)
VALUE_WIDE = fld("value", ["null", "string", "long"], default=None)
NULLABLE_OWNER = fld("owner", ["null", "string"], default=None)
RENAMED = fld("identifier", "string", aliases=["id"])


def inline(*fields: dict[str, Any]) -> dict[str, Any]:
    return fld("inline", {"type": "record", "name": "Inline", "fields": list(fields)})


def node(*extra: dict[str, Any]) -> Any:
    """A linked list: a record that refers to itself."""
    fields = [fld("value", "int"), fld("next", ["null", "Node"], default=None), *extra]
    return rec(*fields, name="Node")


def fixed(size: int) -> dict[str, Any]:
    return fld("digest", {"type": "fixed", "name": "Digest", "size": size})


# (case, older versions oldest first, new version, level, expected kinds, words in a message)
# fmt: off
CASES: list[tuple[str, list[Any], Any, str, list[str], str]] = [
    ("add field with default", [rec(ID)], rec(ID, OWNER_DEFAULT), "BACKWARD", [], ""),
    ("add field without default", [rec(ID)], rec(ID, OWNER), "BACKWARD", [RFMD],
     "field 'owner' was added without a default, so a reader of the new schema cannot read "
     "data written with v1"),
    ("add field without default, forward", [rec(ID)], rec(ID, OWNER), "FORWARD", [], ""),
    ("remove field with default, forward", [rec(ID, OWNER_DEFAULT)], rec(ID), "FORWARD", [], ""),
    ("remove field without default, forward", [rec(ID, OWNER)], rec(ID), "FORWARD", [RFMD],
     "field 'owner' was removed, but v1 has no default for it"),
    ("remove field without default", [rec(ID, OWNER)], rec(ID), "BACKWARD", [], ""),
    ("widen int to long", [rec(SIZE_INT)], rec(SIZE_LONG), "BACKWARD", [], ""),
    ("widen int to long, forward", [rec(SIZE_INT)], rec(SIZE_LONG), "FORWARD", [TM],
     "field 'size' changed from int to long, and long cannot be promoted to int"),
    ("narrow long to int", [rec(SIZE_LONG)], rec(SIZE_INT), "BACKWARD", [TM],
     "field 'size' changed from long to int, and long cannot be promoted to int"),
    ("int to double", [rec(SIZE_INT)], rec(fld("size", "double")), "BACKWARD", [], ""),
    ("float to int", [rec(fld("size", "float"))], rec(SIZE_INT), "BACKWARD", [TM], "'size'"),
    ("string and bytes", [rec(fld("b", "string"))], rec(fld("b", "bytes")), "FULL", [], ""),
    ("add enum symbol", [rec(op("ADD"))], rec(op("ADD", "MOVE")), "BACKWARD", [], ""),
    ("add enum symbol, forward", [rec(op("ADD"))], rec(op("ADD", "MOVE")), "FORWARD", [MES],
     "enum 'Op' (field 'op') gained symbols MOVE, which v1 cannot read"),
    ("add enum symbol, forward, old enum has a default", [rec(op("ADD", "NOP", default="NOP"))],
     rec(op("ADD", "NOP", "MOVE")), "FORWARD", [], ""),
    ("add enum symbol, forward, only the new enum has a default", [rec(op("ADD", "NOP"))],
     rec(op("ADD", "NOP", "MOVE", default="NOP")), "FORWARD", [MES], "MOVE"),
    ("remove enum symbol", [rec(op("ADD", "MOVE"))], rec(op("ADD")), "BACKWARD", [MES],
     "enum 'Op' (field 'op') lost symbols MOVE, which data written with v1 may hold"),
    ("add union branch", [rec(VALUE)], rec(VALUE_WIDE), "BACKWARD", [], ""),
    ("add union branch, forward", [rec(VALUE)], rec(VALUE_WIDE), "FORWARD", [MUB],
     "field 'value' now allows long, which v1 has no union branch to read"),
    ("remove union branch", [rec(VALUE_WIDE)], rec(VALUE), "BACKWARD", [MUB],
     "field 'value' no longer has a union branch that can read long"),
    ("change a union branch", [rec(fld("v", ["null", "int"]))], rec(fld("v", ["null", "string"])),
     "BACKWARD", [MUB], "'v'"),
    ("make field nullable", [rec(OWNER_DEFAULT)], rec(NULLABLE_OWNER), "BACKWARD", [], ""),
    ("make field nullable, forward", [rec(OWNER_DEFAULT)], rec(NULLABLE_OWNER), "FORWARD", [TM],
     'field \'owner\' changed from string to ["null", "string"], and null cannot be read as'),
    ("make field required", [rec(NULLABLE_OWNER)], rec(OWNER_DEFAULT), "BACKWARD", [TM],
     'field \'owner\' changed from ["null", "string"] to string'),
    ("make field required, forward", [rec(NULLABLE_OWNER)], rec(OWNER_DEFAULT), "FORWARD", [], ""),
    ("reader union branch promotes", [rec(SIZE_INT)], rec(fld("size", ["null", "long"])),
     "BACKWARD", [], ""),
    ("rename field with alias", [rec(ID)], rec(RENAMED), "BACKWARD", [], ""),
    ("rename field with alias, forward", [rec(ID)], rec(RENAMED), "FORWARD", [RFMD], "'id'"),
    ("rename field without alias", [rec(ID)], rec(fld("identifier", "string")), "BACKWARD", [RFMD],
     "field 'identifier' was added without a default"),
    ("change a default only", [rec(OWNER_DEFAULT)], rec(fld("owner", "string", default="x")),
     "FULL", [], ""),
    ("nested field added without default", [rec(inline(ID))], rec(inline(ID, OWNER)), "BACKWARD",
     [RFMD], "field 'inline.owner' was added without a default"),
    ("field added to a nullable nested record",
     [rec(fld("inline", ["null", {"type": "record", "name": "Inline", "fields": [ID]}]))],
     rec(fld("inline", ["null", {"type": "record", "name": "Inline", "fields": [ID, OWNER]}])),
     "BACKWARD", [MUB], "field 'inline.owner' was added without a default"),
    ("nested field added with default", [rec(inline(ID))], rec(inline(ID, OWNER_DEFAULT)), "FULL",
     [], ""),
    ("record renamed with alias", [rec(ID)], rec(ID, name="Happening", aliases=["Event"]),
     "BACKWARD", [], ""),
    ("record renamed without alias", [rec(ID)], rec(ID, name="Happening"), "BACKWARD", [NM],
     "record 'Event' was renamed to 'Happening' without an alias 'com.example.Event'"),
    ("alias resolves in the reader's namespace", [rec(ID)],
     rec(ID, name="Happening", ns="com.other", aliases=["Event"]), "BACKWARD", [NM],
     "com.other.Event"),
    ("namespace changed, same name", [rec(ID)], rec(ID, ns="org.elsewhere"), "FULL", [], ""),
    ("fixed size change", [rec(fixed(16))], rec(fixed(32)), "BACKWARD", [FSM],
     "fixed 'Digest' (field 'digest') changed size from 16 to 32 bytes"),
    ("array item promotion", [rec(fld("tags", {"type": "array", "items": "int"}))],
     rec(fld("tags", {"type": "array", "items": "long"})), "BACKWARD", [], ""),
    ("array item promotion, forward", [rec(fld("tags", {"type": "array", "items": "int"}))],
     rec(fld("tags", {"type": "array", "items": "long"})), "FORWARD", [TM],
     "field 'tags' (array items) changed from int to long"),
    ("map value promotion", [rec(fld("m", {"type": "map", "values": "float"}))],
     rec(fld("m", {"type": "map", "values": "double"})), "BACKWARD", [], ""),
    ("linked list unchanged", [node()], node(), "FULL_TRANSITIVE", [], ""),
    ("linked list, field added with default", [node()], node(fld("w", "int", default=0)), "FULL",
     [], ""),
    ("linked list, field added without default", [node()], node(fld("w", "int")), "BACKWARD",
     [RFMD], "'w'"),
    ("enum-typed field with an enum default but no field default", [rec(ID)],
     rec(ID, op("ADD", default="ADD")), "BACKWARD", [TM], "field 'op' was added without a default"),
    ("default dropped after v2, non-transitive", [rec(ID), rec(ID, OWNER_DEFAULT)], rec(ID, OWNER),
     "BACKWARD", [], ""),
    ("default dropped after v2, transitive", [rec(ID), rec(ID, OWNER_DEFAULT)], rec(ID, OWNER),
     "BACKWARD_TRANSITIVE", [RFMD], "data written with v1"),
    ("field removed after v2, forward transitive", [rec(ID, OWNER), rec(ID, OWNER_DEFAULT)],
     rec(ID), "FORWARD_TRANSITIVE", [RFMD], "v1 has no default"),
    ("full, field added without default", [rec(ID)], rec(ID, OWNER), "FULL", [RFMD], "'owner'"),
    ("full, narrow and widen", [rec(SIZE_LONG)], rec(SIZE_INT), "FULL", [TM], "'size'"),
    ("none allows anything", [rec(SIZE_LONG)], rec(fld("size", "string")), "NONE", [], ""),
]
# fmt: on


@pytest.mark.parametrize(
    ("case", "older", "new", "level", "kinds", "words"), CASES, ids=[c[0] for c in CASES]
)
def test_verdicts_match_java_avro(
    case: str, older: list[Any], new: Any, level: str, kinds: list[str], words: str
) -> None:
    previous = [(f"v{n}", parse(schema)) for n, schema in enumerate(older, start=1)]
    found = check(parse(new), previous, level)
    assert sorted(p.kind for p in found) == sorted(kinds), [p.message for p in found]
    if words:
        assert any(words in p.message for p in found), [p.message for p in found]
    assert all("\n" not in p.message for p in found)


def test_the_table_is_large_and_covers_every_level() -> None:
    assert len(CASES) >= 25
    assert {c[3] for c in CASES} == set(Level)


def test_paths_point_into_the_reader_schema() -> None:
    nested = check(
        rec(inline(ID, fld("encoding", "string"))), [("v1", rec(inline(ID)))], "BACKWARD"
    )
    assert [p.path for p in nested] == ["/fields/inline/type/fields/encoding"]
    narrowed = check(rec(SIZE_INT), [("v1", rec(SIZE_LONG))], "BACKWARD")
    assert [p.path for p in narrowed] == ["/fields/size/type"]
    assert [path for path, _, _ in reader_problems("int", "long")] == ["/"]


def test_transitive_reports_each_version_newest_first_with_direction() -> None:
    older = [("v1", rec(ID)), ("v2", rec(ID)), ("v3", rec(ID, OWNER_DEFAULT))]
    found = check(rec(ID, OWNER), older, Level.FULL_TRANSITIVE)
    assert [(p.version, p.direction) for p in found] == [
        ("v2", "new reads old"),
        ("v1", "new reads old"),
    ]
    assert found[0] == Incompatibility(
        "v2",
        "new reads old",
        "/fields/owner",
        RFMD,
        "field 'owner' was added without a default, so a reader of the new schema cannot read "
        "data written with v2",
    )


def test_full_reports_both_directions() -> None:
    found = check(rec(op("ADD", "MOVE"), SIZE_INT), [("v1", rec(op("ADD"), SIZE_LONG))], "FULL")
    assert {(p.direction, p.kind) for p in found} == {
        ("new reads old", TM),
        ("old reads new", MES),
    }


def test_level_is_case_insensitive_and_none_or_no_history_finds_nothing() -> None:
    assert check(rec(SIZE_INT), [("v1", rec(SIZE_LONG))], "backward")
    assert check(rec(SIZE_INT), [("v1", rec(SIZE_LONG))], Level.NONE) == []
    assert check(rec(SIZE_INT), [], "FULL_TRANSITIVE") == []


def test_an_unknown_level_raises_naming_the_seven_levels() -> None:
    with pytest.raises(ValueError, match="SIDEWAYS") as error:
        check(rec(ID), [("v1", rec(ID))], "SIDEWAYS")
    assert all(level in str(error.value) for level in Level)


def test_reader_problems_takes_text_objects_and_bare_names() -> None:
    assert reader_problems("long", "int") == []
    assert reader_problems('"double"', {"type": "float"}) == []
    [(path, kind, message)] = reader_problems(
        rec(SIZE_INT),
        '{"type": "record", "name": "Event", "fields": [{"name": "size", "type": "long"}]}',
    )
    assert (path, kind) == ("/fields/size/type", TM)
    assert message == "field 'size': long cannot be promoted to int"


def test_recursion_through_two_records_terminates() -> None:
    def tree(extra: list[dict[str, Any]]) -> Any:
        branch = {
            "type": "record",
            "name": "Branch",
            "fields": [fld("leaves", {"type": "array", "items": "Tree"}), *extra],
        }
        return rec(
            fld("label", "string"), fld("branch", ["null", branch], default=None), name="Tree"
        )

    assert check(tree([]), [("v1", tree([]))], "FULL") == []
    [found] = check(tree([fld("weight", "int")]), [("v1", tree([]))], "BACKWARD")
    # Java reports the union branch, not the field inside it; the message says why.
    assert (found.kind, found.path) == (MUB, "/fields/branch/type/1")
    assert "field 'branch.weight' was added without a default" in found.message


def test_names_resolve_by_namespace() -> None:
    schema = parse(
        rec(
            fld("x", {"type": "record", "name": "Inner", "fields": [fld("v", "int")]}),
            fld("y", "Inner"),
            fld("z", "com.example.Inner"),
            fld("w", {"type": "enum", "name": "c.d.Kind", "symbols": ["K"]}),
            fld(
                "q",
                {
                    "type": "record",
                    "name": "Deep",
                    "namespace": "c.d",
                    "fields": [fld("k", "Kind")],
                },
            ),
        )
    )
    x, y, z, _, q = (f.type.resolve() for f in schema.fields)
    assert x is y is z and x.full_name == "com.example.Inner"
    assert q.fields[0].type.resolve().full_name == "c.d.Kind"


def test_parse_accepts_forward_references_and_union_defaults_of_any_branch() -> None:
    schema = parse(
        rec(
            fld("later", "Later", default={"n": 1}),
            fld("now", {"type": "record", "name": "Later", "fields": [fld("n", "int")]}),
            fld("tail", ["string", "null"], default=None),
        )
    )
    assert schema.fields[0].type.resolve() is schema.fields[1].type
    assert parse("int").type == parse('"int"').type == parse({"type": "int"}).type == "int"
    assert parse(schema) is schema


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ('{"type": "record", "name": "E", "fields": [', "not valid JSON"),
        (rec(fld("a", "Missing")), "undefined name: com.example.Missing"),
        (rec(fld("a", "int", default="x")), "invalid default for field 'a'"),
        (rec(fld("a", "int", default=2**31)), "invalid default"),
        (rec(fld("a", ["null", "int"], default="x")), "invalid default"),
        (rec(ID, ID), "field 'id' twice"),
        (rec(fld("1st", "int")), "invalid field name '1st'"),
        (rec(ID, name="bad-name"), "invalid name"),
        (rec(ID, ns="com..example"), "invalid namespace part"),
        (rec(op("A", default="B")), "default 'B' is not one of its symbols"),
        (rec(op("A", "A")), "symbol twice"),
        (rec(fld("u", ["null", ["int"]])), "another union"),
        (rec(fld("u", ["int", "int"])), "union has int twice"),
        (rec(fixed(-1)), "negative size"),
        (rec(fld("d", {"type": "fixed", "name": "D", "size": 1.5})), "integer 'size'"),
        ({"type": "record", "name": "int", "fields": []}, "may not be called int"),
        (
            rec(inline(ID), fld("again", {"type": "record", "name": "Inline", "fields": []})),
            "defined twice",
        ),
        ({"type": "record", "name": "E"}, "no 'fields' list"),
        (rec(fld("a", "int", order="sideways")), "invalid order"),
        (rec(fld("f", "float", default="one")), "is not a number"),
        (17, "not a schema"),
        ("  ", "the schema is empty"),
        ({"type": "array"}, "array has no 'items'"),
    ],
)
def test_invalid_schemas_raise_schema_parse_error(source: Any, words: str) -> None:
    with pytest.raises(SchemaParseError, match="^.*$") as error:
        parse(source)
    assert words in str(error.value)
    assert isinstance(error.value, ValueError) and "\n" not in str(error.value)
