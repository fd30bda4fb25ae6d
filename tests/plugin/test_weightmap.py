"""Weight-map dock: the layer is the core's weight map and follows the sliders."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.plugin._weightmap import WeightMapWidget
from napari_unet.synthetic import touching_pairs
from napari_unet.targets import make_target
from napari_unet.training import PRESETS
from napari_unet.weights import weight_map

pytestmark = pytest.mark.viewer


def test_sliders_update_the_weight_map_layer(make_napari_viewer_proxy, qtbot, cells, screenshot):
    image, labels = cells
    assert touching_pairs(labels), "the sample should have touching cells"
    viewer = make_napari_viewer_proxy(show=True)
    viewer.add_image(image, name="cells")
    with qtbot.waitSignal(viewer.layers.events.inserted, timeout=5_000):
        viewer.add_labels(labels, name="cells labels")
    widget = WeightMapWidget(viewer)
    with qtbot.waitSignal(widget.updated, timeout=20_000) as first:
        viewer.window.add_dock_widget(widget, name="Weight map")
    layer = widget.layer
    training = PRESETS["paper"][1]  # the dock shows the paper's loss (the fast preset has no border term)
    assert training.w0 > 0 and training.border == 1
    np.testing.assert_allclose(layer.data, weight_map(labels, training.w0, training.sigma), rtol=1e-6)
    assert first.args[0] is layer.data
    screenshot(viewer, "weight_map")

    before = layer.data.copy()
    with qtbot.waitSignal(widget.updated, timeout=20_000):
        widget.w0_slider.setValue(training.w0 + 20.0)
    assert widget.layer is layer, "the same layer is updated, not a new one added"
    np.testing.assert_allclose(layer.data, weight_map(labels, training.w0 + 20.0, training.sigma), rtol=1e-6)
    increased = layer.data > before + 1e-4
    assert increased.any(), "a larger w0 should raise the border ridges"
    assert (make_target(labels)[increased] == 0).all(), "only background (the gaps between cells) may change"

    with qtbot.waitSignal(widget.updated, timeout=20_000):
        widget.sigma_slider.setValue(2.0)
        widget.balance_check.setChecked(False)
    np.testing.assert_allclose(layer.data, weight_map(labels, training.w0 + 20.0, 2.0, class_weights=None), rtol=1e-6)
    assert layer.colormap.name == "magma"
    assert len([x for x in viewer.layers if x.name == "weight map"]) == 1


def test_the_weight_map_lies_over_the_labels_layer_chosen(make_napari_viewer_proxy, qtbot, cells):
    """Switching to another Labels layer of the same shape kept the first one's scale and translate."""
    _, labels = cells
    viewer = make_napari_viewer_proxy()
    first = viewer.add_labels(labels, name="first")
    second = viewer.add_labels(labels, name="second", scale=(2.0, 2.0), translate=(100.0, 50.0))
    widget = WeightMapWidget(viewer)
    widget.labels_combo.value = first
    with qtbot.waitSignal(widget.updated, timeout=20_000):
        viewer.window.add_dock_widget(widget, name="Weight map")
    layer = widget.layer
    with qtbot.waitSignal(widget.updated, timeout=20_000):
        widget.labels_combo.value = second
    assert widget.layer is layer
    assert tuple(layer.scale) == (2.0, 2.0) and tuple(layer.translate) == (100.0, 50.0)
    smaller = viewer.add_labels(labels[:40, :50], name="smaller")
    with qtbot.waitSignal(widget.updated, timeout=20_000):
        widget.labels_combo.value = smaller
    assert [x.name for x in viewer.layers if x.name.startswith("weight map")] == ["weight map"], "no stale map"
    assert widget.layer.data.shape == (40, 50)


@pytest.mark.parametrize("dtype, offset", [(np.int32, 2**24), (np.int64, 2**40), (np.uint64, 2**63)])
def test_label_ids_past_float32_give_the_same_map(make_napari_viewer_proxy, qtbot, cells, dtype, offset):
    """Ids past 2**24 (float32) or 2**31 (int32) are other ids of the same cells: the map is the same."""
    _, labels = cells
    large = np.where(labels > 0, labels.astype(object) + offset, 0).astype(dtype)
    viewer = make_napari_viewer_proxy()
    viewer.add_labels(large, name="large ids")
    widget = WeightMapWidget(viewer)
    with qtbot.waitSignal(widget.updated, timeout=20_000):
        viewer.window.add_dock_widget(widget, name="Weight map")
    training = PRESETS["paper"][1]
    np.testing.assert_array_equal(widget.layer.data, weight_map(labels, training.w0, training.sigma))
