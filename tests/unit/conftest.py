"""Unit tests are hermetic: no service, and none of the developer's HEADRACE_* settings."""

import os

import pytest


@pytest.fixture(autouse=True)
def hermetic_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    for var in list(os.environ):
        if var.startswith("HEADRACE_") or var == "CI":
            monkeypatch.delenv(var)
    # An ingest remembers its runs: in the test's own directory, not the developer's.
    monkeypatch.setenv("HEADRACE_INGEST__STATE_DIR", str(tmp_path_factory.mktemp("runs")))
    # ... and every process its operational history.
    history = tmp_path_factory.mktemp("history") / "history.sqlite3"
    monkeypatch.setenv("HEADRACE_HISTORY__SQLITE_PATH", str(history))
