"""headrace.startup.when_up: a start asked again while its service restarts, for a bound."""

from __future__ import annotations

import pytest

from headrace.errors import ConfigError
from headrace.startup import when_up
from storage.db.errors import DatabaseUnavailable


class _Start:
    """Fails with ``errors`` in turn, then returns "started"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors, self.calls = list(errors), 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "started"


def test_a_database_restarting_is_waited_for(caplog: pytest.LogCaptureFixture) -> None:
    down = DatabaseUnavailable("PostgreSQL at 127.0.0.1:15432", "the system is starting up")
    start = _Start(down, down)
    assert when_up("the database", start, wait_s=30) == "started"
    assert start.calls == 3
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2
    assert said[0].startswith("the database is not available yet (database PostgreSQL at")
    assert "asking again for up to" in said[0]


def test_what_retrying_cannot_help_is_raised_at_once() -> None:
    start = _Start(ConfigError("no such schema"))
    with pytest.raises(ConfigError, match="no such schema"):
        when_up("the database", start, wait_s=30)
    assert start.calls == 1


def test_a_service_that_stays_away_ends_with_its_own_error() -> None:
    down = DatabaseUnavailable("PostgreSQL at 127.0.0.1:15432", "connection refused")
    start = _Start(*[down] * 100)
    with pytest.raises(DatabaseUnavailable, match="connection refused"):
        when_up("the database", start, wait_s=1.5)
    assert start.calls == 2  # at 0 s and 1 s; one at 2 s would begin after the bound
