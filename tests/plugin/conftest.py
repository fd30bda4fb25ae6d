"""Fixtures of the napari plugin tests: a display check, a tiny model, the synthetic sample, screenshots."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

if sys.platform == "linux" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    NO_VIEWER = "no display ($DISPLAY and $WAYLAND_DISPLAY unset): run the tests under xvfb-run (scripts/test.sh does)"
elif os.environ.get("QT_QPA_PLATFORM") == "offscreen":
    NO_VIEWER = "QT_QPA_PLATFORM=offscreen has no OpenGL for the napari canvas"
else:
    NO_VIEWER = ""


def pytest_collection_modifyitems(config, items):
    """Without a viewer each plugin test is reported skipped, with the reason (a module-level skip in this conftest
    failed a run of `pytest tests/plugin` with a traceback, and hid how many tests did not run)."""
    if NO_VIEWER:
        here = Path(__file__).parent
        for item in items:
            if here in Path(str(item.path)).parents:
                item.add_marker(pytest.mark.skip(reason=NO_VIEWER))


import torch  # noqa: E402  (before Qt, as napari advises)

from napari_unet.model import UNet  # noqa: E402
from napari_unet.modelfile import ModelBundle  # noqa: E402
from napari_unet.postprocess import PostprocessConfig  # noqa: E402
from napari_unet.synthetic import make_cells  # noqa: E402


@pytest.fixture
def cells() -> tuple[np.ndarray, np.ndarray]:
    """A small synthetic image (Y, X) float32 and its instance labels."""
    return make_cells((192, 224), seed=3)


@pytest.fixture
def tiny_bundle() -> ModelBundle:
    """An untrained depth-3, 8-channel U-Net (seeded: the same weights whatever ran before): enough to exercise
    the docks, seconds to run."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = UNet(depth=3, base_channels=8, dropout=0.0)
    return ModelBundle(net, postprocess=PostprocessConfig(min_size=4))


@pytest.fixture
def screenshot(tmp_path: Path):
    """save(viewer, name): a picture of the whole window (canvas and docks) as the user sees it, written to
    $NAPARI_UNET_SCREENSHOTS/<name>.png when set (the docs' images), else to tmp_path. Returns the pixels."""
    from imageio.v3 import imwrite

    folder = Path(os.environ.get("NAPARI_UNET_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)

    def save(viewer, name: str) -> np.ndarray:
        viewer.window.resize(1400, 860)
        viewer.reset_view()
        pixels = viewer.screenshot(canvas_only=False, flash=False)
        imwrite(folder / f"{name}.png", pixels)
        return pixels

    return save


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The docks' tests check behaviour, not speed: one intra-op thread keeps the tiny models quick even when
    other processes load the CPU (two OpenMP threads then wait on each other, up to 30x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def workers_end_with_the_test():
    """After each test (its viewer closed), every worker thread of the docks has ended."""
    yield
    from napari_unet.plugin._workers import await_workers

    assert await_workers(60_000), "worker threads of the docks are still running a minute after the test"


@pytest.fixture(autouse=True)
def dock_settings(tmp_path: Path, monkeypatch) -> Path:
    """The docks remember their settings in a file of the test's own (`_settings.default_path`), never in the
    user's home, and every test starts from the docks' defaults. Returns the file's path."""
    from napari_unet.plugin import _settings

    path = tmp_path / "dock-settings" / _settings.FILE_NAME
    monkeypatch.setattr(_settings, "default_path", lambda: path)
    return path
