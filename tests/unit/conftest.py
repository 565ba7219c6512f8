"""Unit tests are hermetic: no service, and none of the developer's HEADRACE_* settings."""

import os

import pytest


@pytest.fixture(autouse=True)
def hermetic_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("HEADRACE_") or var == "CI":
            monkeypatch.delenv(var)
