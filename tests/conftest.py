"""Shared fixtures. torch is imported before anything Qt (avoids a DLL clash on Windows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch  # noqa: F401  (import order: torch before Qt)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: opt in with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` beside the repository; skips the test when it is absent (a user's fresh clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (only present on the developers' machines)")
    return SHARED_DATA


def _membrane_mask(shape: tuple[int, int], n: int, seed: int) -> np.ndarray:
    """A binary mask as ISBI 2012's: cells (1) that tile the image, parted by 2-pixel membranes (0)."""
    from scipy.spatial import cKDTree
    from skimage.segmentation import find_boundaries

    rng = np.random.default_rng(seed)
    points = rng.random((n, 2)) * shape
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    cells = cKDTree(points).query(np.stack([yy.ravel(), xx.ravel()], 1))[1].reshape(shape)
    return (~find_boundaries(cells, mode="thick")).astype(np.uint8)


@pytest.fixture
def membrane_mask():
    """`(shape, n, seed) -> mask`: a binary mask of n cells that tile the image, as ISBI 2012's."""
    return _membrane_mask
