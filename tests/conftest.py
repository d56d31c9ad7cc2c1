"""Shared pytest fixtures.

``fixtures`` is the folder of real Visium/ST data (``../shared/data`` beside the repository, or
``$SPARED_FIXTURES_DIR``). Tests that need it skip with a clear reason where it is absent (a user's
clone); CI always has it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _fixtures_dir() -> Path | None:
    env = os.environ.get("SPARED_FIXTURES_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def fixtures() -> Path:
    """The real-data fixtures folder; skips the test when it is absent."""
    path = _fixtures_dir()
    if path is None:
        pytest.skip("real fixtures not found: ../shared/data is absent (set SPARED_FIXTURES_DIR to use them)")
    return path


def pytest_collection_modifyitems(config, items):
    """Build the book last, after the notebooks it shows have been executed."""
    items.sort(key=lambda item: item.get_closest_marker("book") is not None)
