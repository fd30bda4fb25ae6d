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
    second = viewer.add_labels(labels, name="second", scale=(2.0, 2.0), translate=(100.0, 50.0), units=("um", "um"))
    widget = WeightMapWidget(viewer)
    widget.labels_combo.value = first
    with qtbot.waitSignal(widget.updated, timeout=20_000):
        viewer.window.add_dock_widget(widget, name="Weight map")
    layer = widget.layer
    with qtbot.waitSignal(widget.updated, timeout=20_000):
        widget.labels_combo.value = second
    assert widget.layer is layer
    assert tuple(layer.scale) == (2.0, 2.0) and tuple(layer.translate) == (100.0, 50.0)
    assert tuple(str(u) for u in layer.units) == ("micrometer",) * 2  # else napari drops units for all layers
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


def stack_of(labels: np.ndarray) -> np.ndarray:
    """Three planes, each with its own cells: labels, flipped upside down, flipped left to right."""
    return np.stack([labels, labels[::-1], labels[:, ::-1]])


def test_a_stack_shows_the_weight_map_of_each_plane(make_napari_viewer_proxy, qtbot, cells):
    """A (Z, Y, X) Labels layer was refused; its map is an image over the same planes, plane k the map of plane k."""
    _, labels = cells
    planes = stack_of(labels)
    viewer = make_napari_viewer_proxy()
    viewer.add_labels(planes, name="stack labels", scale=(2.0, 1.0, 1.0), translate=(10.0, 0.0, 0.0))
    widget = WeightMapWidget(viewer)
    with qtbot.waitSignal(widget.updated, timeout=30_000):
        viewer.window.add_dock_widget(widget, name="Weight map")
    layer = widget.layer
    training = PRESETS["paper"][1]
    assert layer.data.shape == planes.shape
    assert tuple(layer.scale) == (2.0, 1.0, 1.0) and tuple(layer.translate) == (10.0, 0.0, 0.0)
    for k, plane in enumerate(planes):
        np.testing.assert_allclose(layer.data[k], weight_map(plane, training.w0, training.sigma), rtol=1e-6)
    assert "3 of 3 planes" in widget.status.text()

    with qtbot.waitSignal(widget.updated, timeout=30_000):
        widget.sigma_slider.setValue(2.0)
        widget.balance_check.setChecked(False)
    assert widget.layer is layer
    for k, plane in enumerate(planes):
        expected = weight_map(plane, training.w0, 2.0, class_weights=None)
        np.testing.assert_allclose(layer.data[k], expected, rtol=1e-6)
    assert layer.contrast_limits[1] == pytest.approx(float(layer.data.max()))


def test_planes_without_cells_weigh_nothing(make_napari_viewer_proxy, qtbot, cells):
    """Training leaves out the planes without painted cells (`annotated_planes`): the map shows them as 0."""
    _, labels = cells
    planes = stack_of(labels)
    planes[1] = 0
    viewer = make_napari_viewer_proxy()
    viewer.add_labels(planes, name="stack labels")
    widget = WeightMapWidget(viewer)
    with qtbot.waitSignal(widget.updated, timeout=30_000):
        viewer.window.add_dock_widget(widget, name="Weight map")
    training = PRESETS["paper"][1]
    data = widget.layer.data
    assert data.shape == planes.shape and not data[1].any()
    for k in (0, 2):
        np.testing.assert_allclose(data[k], weight_map(planes[k], training.w0, training.sigma), rtol=1e-6)
    assert "2 of 3 planes" in widget.status.text()


def test_the_plane_in_view_comes_first_and_a_superseded_run_stops(make_napari_viewer_proxy, qtbot, cells):
    """Many planes: the viewer's plane is drawn first, and a run overtaken by a new setting stops computing."""
    _, labels = cells
    planes = np.stack([labels] * 40)
    viewer = make_napari_viewer_proxy()
    viewer.add_labels(planes, name="many planes")
    viewer.dims.set_current_step(0, 25)
    widget = WeightMapWidget(viewer)
    widget._update_soon.timer.stop()
    viewer.window.add_dock_widget(widget, name="Weight map")
    first = widget.update_map()
    drawn: list[int] = []
    first.yielded.connect(lambda item: drawn.append(item[0]))
    qtbot.waitUntil(lambda: widget.layer is not None, timeout=30_000)
    assert drawn[0] == 25, "the plane in view is computed first"
    widget.w0_slider.setValue(40.0)
    widget._update_soon.timer.stop()
    with qtbot.waitSignal(widget.updated, timeout=60_000):
        second = widget.update_map()
    assert len(drawn) < 40, "the first run stopped when the second started"
    assert not first.is_running and second is not first
    expected = weight_map(labels, 40.0, PRESETS["paper"][1].sigma)
    np.testing.assert_allclose(widget.layer.data[0], expected, rtol=1e-6)
    np.testing.assert_allclose(widget.layer.data[39], expected, rtol=1e-6)


def test_layers_the_weight_map_cannot_show_are_notifications(make_napari_viewer_proxy, qtbot, monkeypatch, cells):
    from napari_unet.plugin import _weightmap

    messages: list[str] = []
    monkeypatch.setattr(_weightmap, "show_error", lambda message: messages.append(str(message)))
    _, labels = cells
    viewer = make_napari_viewer_proxy()
    four = viewer.add_labels(np.stack([stack_of(labels)] * 2), name="t z labels")
    widget = WeightMapWidget(viewer)
    widget.labels_combo.value = four
    viewer.window.add_dock_widget(widget, name="Weight map")
    assert widget.update_map() is None
    assert "(planes, H, W)" in messages[-1] and "(2, 3, 192, 224)" in messages[-1]

    bad = stack_of(labels).astype(np.int32)
    bad[2, 0, 0] = -5  # -1 marks "not annotated"; other negative ids are mistakes
    widget.labels_combo.value = viewer.add_labels(bad, name="negative ids")
    assert widget.update_map() is not None  # the values are checked plane by plane, in the worker
    qtbot.waitUntil(lambda: len(messages) == 2, timeout=30_000)
    assert "plane 2" in messages[-1] and "-5" in messages[-1]


def test_stack_weight_maps_refuses_what_is_not_a_stack_of_labels():
    from napari_unet.validation import DtypeError
    from napari_unet.weights import stack_weight_maps

    with pytest.raises(DtypeError, match="integers.*float32"):
        next(stack_weight_maps(np.zeros((3, 8, 8), np.float32)))
    with pytest.raises(ValueError, match=r"\(P, H, W\).*\(8, 8\)"):
        next(stack_weight_maps(np.zeros((8, 8), int)))


def test_the_labels_picker_follows_the_labels_the_user_adds(make_napari_viewer_proxy, cells):
    """A Labels layer added to paint in becomes the one shown until the user chooses one; a segmentation the
    Segment dock made (made_from) does not."""
    from napari_unet.plugin._layers import result_metadata

    image, labels = cells
    viewer = make_napari_viewer_proxy()
    source = viewer.add_image(image, name="cells")
    first = viewer.add_labels(labels.astype(np.int32), name="first")
    widget = WeightMapWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Weight map")
    assert widget.labels_combo.value == first
    painted = viewer.add_labels(np.zeros_like(labels, dtype=np.int32), name="painted")
    assert widget.labels_combo.value == painted
    viewer.add_labels(labels.astype(np.int32), name="cells labels", metadata=result_metadata(source))
    assert widget.labels_combo.value == painted
    widget.labels_combo.value = first
    viewer.add_labels(np.zeros_like(labels, dtype=np.int32), name="painted 2")
    assert widget.labels_combo.value == first


def test_a_binary_mask_is_said_to_train_without_border_term_and_border_0_can_be_shown(make_napari_viewer_proxy, qtbot):
    """ISBI-like membranes: training weighs them without border term and class balance whatever the preset; the
    status line says so (the sliders still show what the paper's term would do). Border 0 is the fast preset's."""
    mask = np.full((64, 64), 255, np.uint8)
    mask[::16] = mask[:, ::16] = 0  # membranes around 16 cells
    viewer = make_napari_viewer_proxy()
    viewer.add_labels(mask, name="membranes")
    widget = WeightMapWidget(viewer)
    with qtbot.waitSignal(widget.updated, timeout=20_000):
        viewer.window.add_dock_widget(widget, name="Weight map")
    assert "binary mask" in widget.status.text() and "w0 0" in widget.status.text()
    assert widget.border_spin.minimum() == 0
    labels = np.zeros((32, 32), np.int32)
    labels[4:12, 4:12], labels[4:12, 12:20] = 1, 2  # touching instance labels
    layer = viewer.add_labels(labels, name="cells")
    widget.labels_combo.value = layer
    with qtbot.waitSignal(widget.updated, timeout=20_000):
        widget.border_spin.setValue(0)
    np.testing.assert_allclose(widget.layer.data, weight_map(labels, border=0), rtol=1e-6)
    assert "binary mask" not in widget.status.text()


@pytest.mark.parametrize("stack", [False, True])
def test_the_kind_of_labels_is_decided_in_the_worker(make_napari_viewer_proxy, qtbot, monkeypatch, stack):
    """Telling a binary mask from instance labels takes a pass over the values and a labelling of the components:
    at every slider move it runs in the worker, beside the map, never on napari's main thread."""
    import threading

    from napari_unet.plugin import _weightmap

    threads = []

    def recording_kind(labels):
        threads.append(threading.current_thread())
        return _weightmap_label_kind(labels)

    _weightmap_label_kind = _weightmap.label_kind
    monkeypatch.setattr(_weightmap, "label_kind", recording_kind)
    mask = np.full((64, 64), 255, np.uint8)
    mask[::16] = mask[:, ::16] = 0
    viewer = make_napari_viewer_proxy()
    viewer.add_labels(np.stack([mask, mask]) if stack else mask, name="membranes")
    widget = WeightMapWidget(viewer)
    with qtbot.waitSignal(widget.updated, timeout=20_000):
        viewer.window.add_dock_widget(widget, name="Weight map")
    with qtbot.waitSignal(widget.updated, timeout=20_000):
        widget.w0_slider.setValue(20)
    assert "binary mask" in widget.status.text()
    assert len(threads) == 2 and threading.main_thread() not in threads
