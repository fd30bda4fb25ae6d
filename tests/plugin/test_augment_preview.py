"""Augmentation preview dock: shows `augment`'s sample of the window in view; its settings go to training."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.augment import AugmentConfig, augment
from napari_unet.io import apply_normalization, percentiles
from napari_unet.jobs.augment_preview import grid_lines
from napari_unet.plugin._augment_preview import AugmentPreviewWidget
from napari_unet.plugin._state import session_for
from napari_unet.tiling import read_window

pytestmark = pytest.mark.viewer


def test_new_sample_shows_what_augment_makes_of_the_window(make_napari_viewer_proxy, qtbot, cells, screenshot):
    image, labels = cells
    viewer = make_napari_viewer_proxy(show=True)
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels, name="cells labels")
    widget = AugmentPreviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Augmentation preview")
    widget.labels_combo.value = viewer.layers["cells labels"]
    widget.window_spin.setValue(124)

    widget.new_sample()
    qtbot.waitUntil(lambda: not widget.pending(), timeout=20_000)
    shown_image, shown_labels, grid = widget.sample
    assert {"augmented image", "augmented labels", "deformation grid"} <= {layer.name for layer in viewer.layers}
    assert shown_image.shape == (1, 124, 124) and shown_labels.shape == grid.shape == (124, 124)
    assert set(np.unique(shown_labels)) <= set(np.unique(labels)), "labels are moved, never blended"
    assert not np.array_equal(grid, grid_lines((124, 124))), "the default elastic deformation bends the grid"
    origin = widget.origin
    viewer.reset_view()
    screenshot(viewer, "augmentation_preview")

    # the preview is augment()'s own sample for this seed: the same rng draws in the same order
    lo, hi = percentiles(image[None], 1.0, 99.8, "CYX")
    window = apply_normalization(read_window(image[None], origin, (124, 124)), lo, hi)
    target = read_window(labels[None].astype(np.float32), origin, (124, 124))[0].astype(np.int32)
    expected = augment(window, target, grid_lines((124, 124)), np.random.default_rng(widget.seed), widget.config())
    np.testing.assert_allclose(shown_image, expected[0], atol=1e-5)
    np.testing.assert_array_equal(shown_labels, expected[1])

    # no deformation, no rotation, shift, flips or gray-value changes: the window as it is
    viewer.camera.center = (0.0, *origin_centre(origin, 124))
    widget.sigma_slider.setValue(0.0)
    widget.rotation_slider.setValue(0.0)
    widget.shift_slider.setValue(0.0)
    widget.flip_check.setChecked(False)
    widget.gray_check.setChecked(False)
    qtbot.waitUntil(lambda: not widget.pending(), timeout=20_000)
    assert widget.origin == origin
    shown_image, shown_labels, grid = widget.sample
    np.testing.assert_allclose(shown_image, window, atol=1e-6)
    np.testing.assert_array_equal(shown_labels, target)
    np.testing.assert_array_equal(grid, grid_lines((124, 124)))
    assert session_for(viewer).augment == widget.config()
    assert session_for(viewer).augment.rotation == 0.0 and isinstance(widget.config(), AugmentConfig)


def origin_centre(origin: tuple[int, int], size: int) -> tuple[float, float]:
    """The view centre whose window starts at `origin`."""
    return (origin[0] + size / 2, origin[1] + size / 2)


def test_the_preview_of_an_rgb_image_lies_beside_it_and_outlines_its_window(make_napari_viewer_proxy, qtbot, cells):
    """An RGB layer's last axis is its colours: the preview was placed 3 px past the image's start, over it; and
    the window's outline lies on the pixels' edges at any scale."""
    from napari_unet.plugin._augment_preview import GAP

    image, _ = cells
    viewer = make_napari_viewer_proxy()
    rgb = np.repeat((255 * (image - image.min()) / np.ptp(image)).astype(np.uint8)[..., None], 3, axis=-1)
    layer = viewer.add_image(rgb, name="rgb", rgb=True, scale=(2.0, 2.0), translate=(10.0, 20.0), units=("um", "um"))
    widget = AugmentPreviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Augmentation preview")
    widget.image_combo.value = layer
    widget.window_spin.setValue(64)
    widget.new_sample()
    qtbot.waitUntil(lambda: not widget.pending(), timeout=20_000)
    width = image.shape[1]
    assert viewer.layers["augmented image"].translate[-1] == 20.0 + (width + GAP) * 2.0
    corners = viewer.layers["preview window"].data[0]
    start = (np.asarray(widget.origin) - 0.5) * 2.0 + (10.0, 20.0)
    np.testing.assert_allclose(corners.min(axis=0), start)
    np.testing.assert_allclose(corners.max(axis=0), start + 64 * 2.0)
    shown = ("augmented image", "augmented labels", "deformation grid", "preview window")
    assert all(tuple(str(u) for u in viewer.layers[name].units) == ("micrometer",) * 2 for name in shown)
    picture = viewer.layers["augmented image"]  # in colour, as the image (the red channel alone, in grey, before)
    assert picture.rgb and picture.data.shape == (64, 64, 3)
    np.testing.assert_allclose(picture.data, np.clip(np.moveaxis(widget.sample[0], 0, -1), 0, 1))


def still(widget: AugmentPreviewWidget) -> None:
    """No deformation, rotation, shift, flips or gray-value changes: the preview is the window as it is."""
    widget.sigma_slider.setValue(0.0)
    widget.rotation_slider.setValue(0.0)
    widget.shift_slider.setValue(0.0)
    widget.flip_check.setChecked(False)
    widget.gray_check.setChecked(False)


def test_the_preview_of_a_stack_is_of_the_plane_in_view(make_napari_viewer_proxy, qtbot, cells):
    """A Z stack was previewed at plane 0 whatever plane the viewer showed; the plane in view is read through
    each layer's own scale and translate (world z = translate + scale * index), and the status names it."""
    image, labels = cells
    planes = np.stack([image, image[::-1], image[:, ::-1]])
    label_planes = np.stack([labels, labels[::-1], labels[:, ::-1]])
    viewer = make_napari_viewer_proxy()
    layer = viewer.add_image(planes, name="stack", scale=(2.0, 1.0, 1.0), translate=(10.0, 0.0, 0.0))
    labels_layer = viewer.add_labels(label_planes, name="stack labels", scale=(2.0, 1.0, 1.0), translate=(10.0, 0, 0))
    widget = AugmentPreviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Augmentation preview")
    widget.image_combo.value = layer
    widget.labels_combo.value = labels_layer
    widget.window_spin.setValue(64)
    still(widget)
    qtbot.waitUntil(lambda: not widget.pending(), timeout=20_000)
    for index in (2, 1):
        viewer.dims.set_point(0, 10.0 + 2.0 * index)
        widget.new_sample()
        qtbot.waitUntil(lambda: not widget.pending(), timeout=20_000)
        shown_image, shown_labels, _ = widget.sample
        plane = planes[index][None]
        lo, hi = percentiles(plane, 1.0, 99.8, "CYX")
        window = apply_normalization(read_window(plane, widget.origin, (64, 64)), lo, hi)
        np.testing.assert_allclose(shown_image, window, atol=1e-6)
        target = read_window(label_planes[index][None].astype(np.float32), widget.origin, (64, 64))[0]
        np.testing.assert_array_equal(shown_labels, target.astype(np.int32))
        assert f"plane {index}" in widget.status.text()


def test_the_preview_moves_label_ids_past_float32_exactly(make_napari_viewer_proxy, qtbot, cells):
    """float32 holds integers up to 2**24 and int32 up to 2**31: larger ids came out merged or wrapped."""
    image, labels = cells
    offset = 2**40
    large = np.where(labels > 0, labels.astype(np.int64) + offset, 0)
    viewer = make_napari_viewer_proxy()
    viewer.add_image(image, name="cells")
    viewer.add_labels(large, name="large ids")
    widget = AugmentPreviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Augmentation preview")
    widget.labels_combo.value = viewer.layers["large ids"]
    widget.window_spin.setValue(96)
    widget.new_sample()
    qtbot.waitUntil(lambda: not widget.pending(), timeout=20_000)
    _, shown_labels, _ = widget.sample
    lo, hi = percentiles(image[None], 1.0, 99.8, "CYX")
    window = apply_normalization(read_window(image[None], widget.origin, (96, 96)), lo, hi)
    target = read_window(labels[None].astype(np.float32), widget.origin, (96, 96))[0].astype(np.int64)
    _, expected, _ = augment(window, target, grid_lines((96, 96)), np.random.default_rng(widget.seed), widget.config())
    np.testing.assert_array_equal(shown_labels, np.where(expected > 0, expected + offset, 0))
    np.testing.assert_array_equal(viewer.layers["augmented labels"].data, shown_labels)


def test_the_plane_in_view_of_a_stack_with_a_channel_axis(make_napari_viewer_proxy, qtbot, cells):
    """A (Z, C, Y, X) layer: the channel axis is not a plane axis; Z picks the plane, both channels shown."""
    image, _ = cells
    planes = np.stack([np.stack([np.roll(image, 17 * z, axis=1), image[::-1]]) for z in range(3)])
    viewer = make_napari_viewer_proxy()
    layer = viewer.add_image(planes, name="zc", metadata={"napari_unet": {"axes": "ZCYX"}})
    widget = AugmentPreviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Augmentation preview")
    widget.image_combo.value = layer
    widget.window_spin.setValue(64)
    still(widget)
    qtbot.waitUntil(lambda: not widget.pending(), timeout=20_000)
    viewer.dims.set_point(0, 2)
    viewer.dims.set_point(1, 1)  # the channel the viewer shows does not matter
    widget.new_sample()
    qtbot.waitUntil(lambda: not widget.pending(), timeout=20_000)
    lo, hi = percentiles(planes[2], 1.0, 99.8, "CYX")
    window = apply_normalization(read_window(planes[2], widget.origin, (64, 64)), lo, hi)
    np.testing.assert_allclose(widget.sample[0], window, atol=1e-6)
    assert widget.plane == (2,) and "plane 2" in widget.status.text()
    shown = viewer.layers["augmented image"].data  # both channels: red and green
    np.testing.assert_allclose(shown[..., :2], np.clip(np.moveaxis(window, 0, -1), 0, 1), atol=1e-6)
    assert not shown[..., 2].any() and "2 channels as red, green" in widget.status.text()


def test_the_preview_follows_the_plane_slider(make_napari_viewer_proxy, qtbot, cells):
    """Moving the Z slider left the preview on the plane it was drawn from; it now redraws the new plane's window
    (same sample, same window), and moving a slider that does not change the plane draws nothing."""
    image, labels = cells
    planes = np.stack([image, image[::-1], image[:, ::-1]])
    label_planes = np.stack([labels, labels[::-1], labels[:, ::-1]])
    viewer = make_napari_viewer_proxy()
    layer = viewer.add_image(planes, name="stack")
    labels_layer = viewer.add_labels(label_planes, name="stack labels")
    widget = AugmentPreviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Augmentation preview")
    widget.image_combo.value = layer
    widget.labels_combo.value = labels_layer
    widget.window_spin.setValue(64)
    widget.new_sample()
    qtbot.waitUntil(lambda: not widget.pending() and widget.sample is not None, timeout=20_000)
    assert widget.plane == (1,), "napari opens a stack at its middle plane"
    seed, origin = widget.seed, widget.origin

    for index in (2, 0):
        viewer.dims.current_step = (index, *viewer.dims.current_step[1:])
        qtbot.waitUntil(lambda index=index: widget.plane == (index,) and not widget.pending(), timeout=20_000)
        assert widget.seed == seed and widget.origin == origin, "the same sample of the same window"
        plane = planes[index][None]
        lo, hi = percentiles(plane, 1.0, 99.8, "CYX")
        window = apply_normalization(read_window(plane, origin, (64, 64)), lo, hi)
        target = read_window(label_planes[index][None].astype(np.float32), origin, (64, 64))[0].astype(np.int32)
        expected = augment(window, target, grid_lines((64, 64)), np.random.default_rng(seed), widget.config())
        np.testing.assert_allclose(widget.sample[0], expected[0], atol=1e-5)
        np.testing.assert_array_equal(widget.sample[1], expected[1])
        assert f"plane {index}" in widget.status.text()


def test_a_preview_of_a_single_plane_ignores_the_sliders(make_napari_viewer_proxy, qtbot, cells):
    """A 2-D image and labels beside a stack: the stack's slider does not change their window, so no redraw."""
    image, labels = cells
    viewer = make_napari_viewer_proxy()
    viewer.add_image(np.stack([image] * 3), name="another stack")
    layer = viewer.add_image(image, name="cells")
    widget = AugmentPreviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Augmentation preview")
    widget.image_combo.value = layer
    widget.labels_combo.value = viewer.add_labels(labels, name="cells labels")
    widget.window_spin.setValue(64)
    widget.new_sample()
    qtbot.waitUntil(lambda: not widget.pending() and widget.sample is not None, timeout=20_000)
    drawn: list[object] = []
    widget.shown.connect(drawn.append)
    viewer.dims.current_step = (2, *viewer.dims.current_step[1:])
    qtbot.wait(500)
    assert not widget.pending() and drawn == []


def test_the_pickers_follow_what_the_user_opens_not_the_previews_layers(make_napari_viewer_proxy, qtbot, cells):
    """An image opened and a Labels layer added become the ones previewed until the user chooses; the preview's
    own layers (augmented image and labels, grid) are never picked."""
    image, labels = cells
    viewer = make_napari_viewer_proxy()
    viewer.add_image(image, name="first")
    widget = AugmentPreviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Augmentation preview")
    second = viewer.add_image(image[::-1].copy(), name="second")
    painted = viewer.add_labels(labels.astype(np.int32), name="painted")
    assert widget.image_combo.value == second and widget.labels_combo.value == painted
    widget.window_spin.setValue(64)
    widget.new_sample()
    qtbot.waitUntil(lambda: not widget.pending() and widget.sample is not None, timeout=20_000)
    assert "augmented labels" in viewer.layers and "augmented image" in viewer.layers
    assert widget.image_combo.value == second and widget.labels_combo.value == painted


def test_a_closed_preview_does_not_redraw_on_the_slider(make_napari_viewer_proxy, qtbot, cells):
    """napari's close button takes a dock out of the window without deleting it: the preview redrew (and re-added
    its layers) on every slider move."""
    image, labels = cells
    viewer = make_napari_viewer_proxy()
    viewer.add_image(np.stack([image, image[::-1], image[:, ::-1]]), name="stack")
    widget = AugmentPreviewWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name="Augmentation preview")
    widget.window_spin.setValue(64)
    widget.new_sample()
    qtbot.waitUntil(lambda: not widget.pending() and widget.sample is not None, timeout=20_000)
    viewer.window.remove_dock_widget(dock)
    drawn: list[object] = []
    widget.shown.connect(drawn.append)
    viewer.dims.current_step = (2, *viewer.dims.current_step[1:])
    qtbot.wait(500)
    assert drawn == [] and not widget.pending()
