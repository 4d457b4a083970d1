"""Fixtures for the local stack tests: a clean environment (no real servers configured)."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a minute (still part of the default suite)")


@pytest.fixture
def clean_environ() -> dict[str, str]:
    """os.environ without CSCORE_*/AIRFLOW* variables, so every part is started locally."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("CSCORE_", "AIRFLOW"))}
