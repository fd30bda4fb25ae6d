"""Redrawing a region of a Labels layer: what the canvas shows equals a whole refresh, at a fraction of it."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.plugin._redraw import bands, partial_refresh_supported, refresh_region

pytestmark = pytest.mark.viewer


def canvas(viewer) -> np.ndarray:
    return viewer.screenshot(canvas_only=True, flash=False)


def test_this_napari_supports_partial_redraws(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    layer = viewer.add_labels(np.zeros((32, 32), np.int32))
    assert partial_refresh_supported(layer), "napari's internals changed: the Segment dock falls back to refresh()"


def test_a_redrawn_region_shows_what_a_whole_refresh_shows(make_napari_viewer_proxy, qtbot):
    viewer = make_napari_viewer_proxy(show=True)
    data = np.zeros((2, 96, 128), np.int32)
    layer = viewer.add_labels(data)
    viewer.dims.set_point(0, 1)
    before = canvas(viewer)
    uploads = []
    layer.events.labels_update.connect(lambda event: uploads.append(event.data.shape[:2]))
    layer.events.set_data.connect(lambda _event: uploads.append("whole"))

    data[1, 16:48, 32:96] = np.arange(1, 33)[:, None]  # 32 ids in rows
    assert refresh_region(layer, (1, slice(16, 48), slice(32, 96)))
    qtbot.waitUntil(lambda: not np.array_equal(canvas(viewer), before), timeout=5_000)  # drawn (slower when busy)
    qtbot.wait(50)
    partial = canvas(viewer)
    assert uploads == [(32, 64)]  # only the region went to the GPU
    layer.refresh()
    qtbot.waitUntil(lambda: np.array_equal(partial, canvas(viewer)), timeout=5_000)  # what a whole refresh shows

    data[0, :8, :8] = 5  # a plane that is not shown: nothing to draw now, napari slices it when shown
    uploads.clear()
    assert refresh_region(layer, (0, slice(0, 8), slice(0, 8)))
    assert uploads == []
    viewer.dims.set_point(0, 0)  # napari slices plane 0 afresh: the region is there
    qtbot.wait(50)
    assert not np.array_equal(canvas(viewer), partial)


def test_no_partial_redraw_where_it_does_not_apply(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    layer = viewer.add_labels(np.zeros((4, 32, 32), np.int32))
    region = (0, slice(0, 8), slice(0, 8))
    layer.contour = 1
    assert not refresh_region(layer, region)
    layer.contour = 0
    viewer.dims.ndisplay = 3
    assert not refresh_region(layer, region)
    viewer.dims.ndisplay = 2
    assert refresh_region(layer, region)


def test_bands_cover_the_region_once():
    keys = bands((3, slice(0, 100), slice(10, 50)), (5, 100, 60), pixels=1000)
    assert all(key[0] == 3 and key[2] == slice(10, 50) for key in keys)
    rows = [y for key in keys for y in range(key[1].start, key[1].stop)]
    assert rows == list(range(100)) and max(key[1].stop - key[1].start for key in keys) == 25
