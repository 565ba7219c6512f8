"""Schema evolution against the real registry: registration, rejection, and the
offline checker agreeing with the registry's own verdicts."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from headrace.cli import main
from headrace.settings import RegistrySettings
from schemas import catalog
from schemas.catalog import EventType
from schemas.compat import check, parse
from schemas.errors import RegistryRefused
from schemas.registry import Registry


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 0), out, err


@pytest.fixture
def fresh_topics(monkeypatch: pytest.MonkeyPatch, registry: RegistrySettings) -> str:
    """Point the CLI at the test registry and at topic names no other test uses."""
    prefix = f"test.evolution-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("HEADRACE_REGISTRY__URL", registry.url)
    for key in ("FILE_EVENTS", "RUN_EVENTS", "VERIFICATIONS", "DEAD_LETTER"):
        monkeypatch.setenv(f"HEADRACE_KAFKA__TOPICS__{key}", f"{prefix}.{key.lower()}")
    return prefix


def record(name: str, *fields: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "type": "record",
        "name": name,
        "namespace": "dev.headrace.test",
        "fields": list(fields),
        **extra,
    }


def incompatible_v3() -> dict[str, Any]:
    """file_event v2 plus a field without a default: new readers cannot read old data."""
    v3: dict[str, Any] = catalog.latest(EventType.FILE_EVENT).json
    v3["fields"].append({"name": "owner", "type": "string"})
    return v3


def test_register_v1_then_v2_and_reject_an_incompatible_v3(
    fresh_topics: str,
    registry: RegistrySettings,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    code, out, _ = run_cli(["schemas", "register"], capsys)
    assert code == 0
    subject = f"{fresh_topics}.file_events-value"
    assert f"{subject} v1: schema id" in out and f"{subject} v2: schema id" in out
    # Idempotent: a second run registers nothing new.
    code, again, _ = run_cli(["schemas", "register"], capsys)
    local = sum(len(catalog.versions(event)) for event in EventType)
    assert code == 0 and "(registered)" not in again and again.count("already registered") == local

    with Registry(registry) as client:
        assert [v.version for v in client.versions(subject)] == [1, 2]

    code, out, _ = run_cli(["schemas", "check"], capsys)
    assert code == 0, out
    assert out.count("ok    ") == len(EventType)

    candidate = tmp_path / "v3.avsc"
    candidate.write_text(json.dumps(incompatible_v3()))
    code, out, _ = run_cli(["schemas", "check", "--subject", subject, str(candidate)], capsys)
    assert code == 1
    assert "FAIL" in out and "'owner'" in out and "default" in out

    with Registry(registry) as client, pytest.raises(RegistryRefused) as refused:
        client.register(subject, candidate.read_text())
    assert refused.value.status == 409
    assert str(refused.value).startswith(f"registering {subject}: incompatible")


def test_offline_check_of_the_v3_candidate_explains_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = []
    for number in (1, 2):
        path = tmp_path / f"v{number}.avsc"
        path.write_text(catalog.version(EventType.FILE_EVENT, number).text)
        files.append(path)
    candidate = tmp_path / "v3.avsc"
    candidate.write_text(json.dumps(incompatible_v3()))
    code, out, _ = run_cli(
        [
            "schemas",
            "check",
            "--offline",
            "--level",
            "BACKWARD_TRANSITIVE",
            str(candidate),
            str(files[1]),
            str(files[0]),
        ],
        capsys,
    )
    assert code == 1
    lines = [line for line in out.splitlines() if "'owner'" in line]
    assert len(lines) == 2  # against v1 and against v2: transitive
    code, out, _ = run_cli(
        ["schemas", "check", "--offline", "--level", "NONE", str(candidate), str(files[1])], capsys
    )
    assert code == 0 and out.startswith("ok")


# --- the offline checker agrees with the registry ---------------------------------

ID = {"name": "id", "type": "string"}
SIZE_INT = {"name": "size", "type": "int"}
SIZE_LONG = {"name": "size", "type": "long"}
OWNER = {"name": "owner", "type": "string"}
OWNER_DEFAULT = {"name": "owner", "type": "string", "default": "nobody"}
NULLABLE_OWNER = {"name": "owner", "type": ["null", "string"], "default": None}
STATE = {"name": "state", "type": {"type": "enum", "name": "State", "symbols": ["A", "B"]}}
STATE_ABC = {"name": "state", "type": {"type": "enum", "name": "State", "symbols": ["A", "B", "C"]}}
STATE_ABC_DEFAULT = {
    "name": "state",
    "type": {"type": "enum", "name": "State", "symbols": ["A", "B", "C"], "default": "A"},
}
STATE_A = {"name": "state", "type": {"type": "enum", "name": "State", "symbols": ["A"]}}
VALUE_UNION = {"name": "value", "type": ["null", "string"], "default": None}
VALUE_UNION_WIDER = {"name": "value", "type": ["null", "string", "long"], "default": None}
RENAMED = {"name": "identifier", "type": "string", "aliases": ["id"]}
RENAMED_NO_ALIAS = {"name": "identifier", "type": "string"}


def nested(*fields: dict[str, Any]) -> dict[str, Any]:
    return {"name": "meta", "type": {"type": "record", "name": "Meta", "fields": list(fields)}}


V = record  # shorthand in the table

CASES: list[tuple[str, list[dict[str, Any]], dict[str, Any], str]] = [
    # (case, older versions oldest first, new version, level)
    ("add field with default", [V("R", ID)], V("R", ID, OWNER_DEFAULT), "BACKWARD"),
    ("add field without default", [V("R", ID)], V("R", ID, OWNER), "BACKWARD"),
    ("add field without default, forward", [V("R", ID)], V("R", ID, OWNER), "FORWARD"),
    ("add field without default, full", [V("R", ID)], V("R", ID, OWNER), "FULL"),
    ("add field with default, full", [V("R", ID)], V("R", ID, OWNER_DEFAULT), "FULL"),
    ("remove field without default", [V("R", ID, OWNER)], V("R", ID), "BACKWARD"),
    ("remove field without default, forward", [V("R", ID, OWNER)], V("R", ID), "FORWARD"),
    ("remove field with default, forward", [V("R", ID, OWNER_DEFAULT)], V("R", ID), "FORWARD"),
    ("widen int to long", [V("R", SIZE_INT)], V("R", SIZE_LONG), "BACKWARD"),
    ("widen int to long, forward", [V("R", SIZE_INT)], V("R", SIZE_LONG), "FORWARD"),
    ("narrow long to int", [V("R", SIZE_LONG)], V("R", SIZE_INT), "BACKWARD"),
    ("narrow long to int, forward", [V("R", SIZE_LONG)], V("R", SIZE_INT), "FORWARD"),
    ("add enum symbol", [V("R", STATE)], V("R", STATE_ABC), "BACKWARD"),
    ("add enum symbol, forward", [V("R", STATE)], V("R", STATE_ABC), "FORWARD"),
    ("remove enum symbol", [V("R", STATE)], V("R", STATE_A), "BACKWARD"),
    ("remove enum symbol, forward", [V("R", STATE)], V("R", STATE_A), "FORWARD"),
    ("add union branch", [V("R", VALUE_UNION)], V("R", VALUE_UNION_WIDER), "BACKWARD"),
    ("add union branch, forward", [V("R", VALUE_UNION)], V("R", VALUE_UNION_WIDER), "FORWARD"),
    ("make field nullable", [V("R", OWNER_DEFAULT)], V("R", NULLABLE_OWNER), "BACKWARD"),
    ("make field nullable, forward", [V("R", OWNER_DEFAULT)], V("R", NULLABLE_OWNER), "FORWARD"),
    ("rename with alias", [V("R", ID)], V("R", RENAMED), "BACKWARD"),
    ("rename without alias", [V("R", ID)], V("R", RENAMED_NO_ALIAS), "BACKWARD"),
    (
        "change a default",
        [V("R", ID, OWNER_DEFAULT)],
        V("R", ID, {**OWNER_DEFAULT, "default": "someone"}),
        "FULL",
    ),
    (
        "nested field added without default",
        [V("R", ID, nested(ID))],
        V("R", ID, nested(ID, OWNER)),
        "BACKWARD",
    ),
    (
        "nested field added with default",
        [V("R", ID, nested(ID))],
        V("R", ID, nested(ID, OWNER_DEFAULT)),
        "FULL",
    ),
    ("record renamed", [V("R", ID)], V("S", ID), "BACKWARD"),
    (
        "record renamed with alias",
        [V("R", ID)],
        V("S", ID, aliases=["dev.headrace.test.R"]),
        "BACKWARD",
    ),
    (
        "default dropped after v2, non-transitive",
        [V("R", ID), V("R", ID, OWNER_DEFAULT)],
        V("R", ID, OWNER),
        "BACKWARD",
    ),
    (
        "default dropped after v2, transitive",
        [V("R", ID), V("R", ID, OWNER_DEFAULT)],
        V("R", ID, OWNER),
        "BACKWARD_TRANSITIVE",
    ),
    (
        "field removed after v2, forward transitive",
        [V("R", ID, OWNER), V("R", ID, OWNER_DEFAULT)],
        V("R", ID),
        "FORWARD_TRANSITIVE",
    ),
    (
        "enum grows with default, full transitive",
        [V("R", STATE), V("R", STATE)],
        V("R", STATE_ABC_DEFAULT),
        "FULL_TRANSITIVE",
    ),
    ("anything goes", [V("R", SIZE_LONG)], V("R", {"name": "size", "type": "string"}), "NONE"),
]


def registry_verdict(
    client: Registry, subject: str, older: list[dict[str, Any]], new: dict[str, Any], level: str
) -> bool:
    client.set_level(subject, "NONE")
    for schema in older:
        client.register(subject, json.dumps(schema))
    client.set_level(subject, level)
    try:
        client.register(subject, json.dumps(new))
    except RegistryRefused as refused:
        assert refused.status == 409, str(refused)
        return False
    return True


@pytest.mark.parametrize(("case", "older", "new", "level"), CASES, ids=[c[0] for c in CASES])
def test_offline_check_agrees_with_the_registry(
    registry: RegistrySettings,
    case: str,
    older: list[dict[str, Any]],
    new: dict[str, Any],
    level: str,
) -> None:
    subject = f"test.compat-{uuid.uuid4().hex[:12]}-value"
    with Registry(registry) as client:
        try:
            accepted = registry_verdict(client, subject, older, new, level)
        finally:
            client.delete_subject(subject)
    previous = [(f"v{n}", parse(json.dumps(s))) for n, s in enumerate(older, start=1)]
    problems = check(parse(json.dumps(new)), previous, level)
    assert (not problems) == accepted, (case, [p.message for p in problems])


def test_the_table_covers_every_level() -> None:
    assert {c[3] for c in CASES} == {
        "BACKWARD",
        "BACKWARD_TRANSITIVE",
        "FORWARD",
        "FORWARD_TRANSITIVE",
        "FULL",
        "FULL_TRANSITIVE",
        "NONE",
    }
    assert len(CASES) >= 20
