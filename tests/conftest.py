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


# --- synthetic SpaRED-like dataset (issue 3, spared_lib.data) -------------------------------------
SYNTHETIC_TEST_SPOTS = 300  # per slide: small enough that every module's tests stay fast


@pytest.fixture(scope="session")
def synthetic_info(tmp_path_factory):
    """A 3-slide synthetic Visium dataset (300 spots x 1,000 genes per slide, train/val/test),
    written once per session in Space Ranger 2.x layout; its :class:`DatasetInfo`."""
    from spared_lib.data import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic") / "synthetic"
    return make_synthetic_dataset(root, n_slides=3, n_spots=SYNTHETIC_TEST_SPOTS, n_genes=1000, seed=0)


@pytest.fixture(scope="session")
def synthetic_adata(synthetic_info):
    """``load_dataset`` of :func:`synthetic_info` (session-scoped: call ``.copy()`` before
    modifying it)."""
    from spared_lib.data import load_dataset

    return load_dataset(synthetic_info)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One OpenMP thread for tiny models: on the shared 2-core CI machine two spinning threads are
    far slower than one. Restores the previous setting afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
