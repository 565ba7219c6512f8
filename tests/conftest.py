"""Shared fixtures: settings read once, hermetic from the developer's environment."""

from __future__ import annotations

import pytest

from headrace.settings import Settings, load_settings


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    return load_settings()
