"""docs/events.md documents every field of every schema version."""

from typing import Any

import pytest

from headrace.settings import PROJECT_ROOT
from schemas import catalog
from schemas.catalog import EventType

DOC = (PROJECT_ROOT / "docs" / "events.md").read_text()


def field_names(schema: Any) -> set[str]:
    """Every field name, nested records included."""
    names: set[str] = set()
    if isinstance(schema, list):
        for branch in schema:
            names |= field_names(branch)
    elif isinstance(schema, dict):
        for field in schema.get("fields", []):
            names.add(field["name"])
            names |= field_names(field["type"])
        names |= field_names(schema.get("items")) | field_names(schema.get("values"))
    return names


@pytest.mark.parametrize(
    "local",
    [s for event in EventType for s in catalog.versions(event)],
    ids=lambda s: f"{s.event.value}-{s.label}",
)
def test_every_field_is_documented(local: catalog.LocalSchema) -> None:
    missing = sorted(name for name in field_names(local.json) if f"`{name}`" not in DOC)
    assert missing == []
