"""A real napari window renders layers: proves that Qt, OpenGL and (in CI) Xvfb work together."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

if sys.platform == "linux" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    pytest.skip(
        "no display ($DISPLAY and $WAYLAND_DISPLAY unset): run the tests with scripts/test.sh, "
        "which starts a virtual X server (xvfb-run)",
        allow_module_level=True,
    )
if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
    pytest.skip("QT_QPA_PLATFORM=offscreen has no OpenGL for the napari canvas", allow_module_level=True)

pytestmark = pytest.mark.viewer


def distinct_colours(pixels: np.ndarray) -> int:
    """Number of distinct RGBA values in `pixels: (..., 4)`."""
    return len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0))


def test_screenshot_shows_image_and_labels(make_napari_viewer) -> None:
    viewer = make_napari_viewer(show=True)
    empty = viewer.screenshot(canvas_only=True, flash=False)
    assert empty.ndim == 3 and empty.shape[0] > 0 and empty.shape[1] > 0
    assert distinct_colours(empty) == 1, "an empty canvas should be one background colour"

    rows, cols = np.mgrid[0:128, 0:128]
    image = (rows + cols).astype(np.float32)
    labels = np.zeros((128, 128), dtype=np.int32)
    labels[32:64, 32:64] = 1
    labels[80:112, 60:100] = 2
    viewer.add_image(image, name="image")
    viewer.add_labels(labels, name="labels")

    shot = viewer.screenshot(canvas_only=True, flash=False)
    red, green, blue = shot[..., 0], shot[..., 1], shot[..., 2]
    grey = (red == green) & (green == blue)
    assert distinct_colours(shot[grey]) > 16, "the grey gradient of the image layer is not on the canvas"
    assert (~grey).mean() > 0.01, "the coloured labels are not on the canvas"
