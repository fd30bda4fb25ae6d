"""The docks' outputs over the image's own axes, and their status lines after a worker's error: boxes suggested on a
(Z, C, Y, X) stack show on their plane for every channel; a refused uncertainty keeps the segmentation; a
suggestion that fails in its worker says so in the status line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet import scale
from napari_unet.model import UNet, UNetConfig
from napari_unet.modelfile import ModelBundle
from napari_unet.plugin import _segment, _start_from, _suggest
from napari_unet.plugin._finetune import FineTuneWidget
from napari_unet.plugin._layers import METADATA_KEY
from napari_unet.plugin._segment import SegmentWidget
from napari_unet.plugin._state import session_for
from napari_unet.synthetic import make_cells

pytestmark = pytest.mark.viewer

BOX = (10, 20, 40, 50)  # (y0, x0, y1, x1), the one box the model is made to suggest


def bundle_of(channels: int) -> ModelBundle:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return ModelBundle(UNet(UNetConfig(in_channels=channels, depth=2, base_channels=4)))


def finetune_dock(viewer, tmp_path, bundle, image_layer) -> FineTuneWidget:
    session_for(viewer).set_model(bundle)
    widget = FineTuneWidget(viewer, autosave_root=tmp_path / "autosave", start_from=_start_from.START_SESSION)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    widget.image_combo.value = image_layer
    return widget


def stack_layer(viewer, planes: list[np.ndarray], kind: str):
    """A 3-plane stack of `planes` (Z first) laid out as `kind`, a model for it, the channel choice typed in the dock,
    the world axis of Z and that of the channels (None: the channels are not an axis of the viewer)."""
    if kind == "ZCYX, a 2-channel model":
        data = np.stack([np.stack([p, p * 0.5]) for p in planes])
        return viewer.add_image(data, scale=(3.0, 1.0, 0.5, 0.5)), bundle_of(2), "", 0, 1
    if kind == "ZCYX, a channel chosen":
        data = np.stack([np.stack([p * 0.5, p]) for p in planes])
        layer = viewer.add_image(data, metadata={METADATA_KEY: {"axes": "ZCYX"}}, translate=(0, 5, 0, 0))
        return layer, bundle_of(1), "1", 0, 1
    if kind == "CZYX, a 2-channel model":
        data = np.stack([np.stack(planes), np.stack(planes) * 0.5])
        return viewer.add_image(data, metadata={METADATA_KEY: {"axes": "CZYX"}}), bundle_of(2), "", 1, 0
    data = np.stack([np.stack([p, p * 0.5, p * 0.2], -1) for p in planes])  # RGB
    return viewer.add_image(data, rgb=True), bundle_of(3), "", 0, None


@pytest.mark.parametrize(
    "kind", ["ZCYX, a 2-channel model", "ZCYX, a channel chosen", "CZYX, a 2-channel model", "RGB"]
)
def test_suggested_boxes_show_on_their_plane_for_every_channel(
    make_napari_viewer_proxy, qtbot, tmp_path, cells, monkeypatch, kind
):
    """napari lines layers up by their last axes: the boxes of plane z=2 of a (Z, C, Y, X) image, a Shapes layer of
    (Z, Y, X), had their Z on the image's C axis: shown at c=2 (no such channel) only, and the C slider grew."""
    image, _ = cells
    monkeypatch.setattr(_suggest, "suggest_annotation", lambda model, plane, annotated, device: [BOX])
    viewer = make_napari_viewer_proxy()
    layer, bundle, channels, z_axis, c_axis = stack_layer(viewer, [image, image[::-1], image[:, ::-1]], kind)
    widget = finetune_dock(viewer, tmp_path, bundle, layer)
    widget.channel_fields.edit.setText(channels)
    ranges = [tuple(r) for r in viewer.dims.range]
    viewer.dims.set_current_step(z_axis, 2)
    with qtbot.waitSignal(widget.suggested, timeout=60_000):
        assert widget.suggest() is not None, widget.status.text()
    boxes = widget.suggestions.layer
    assert [tuple(r) for r in viewer.dims.range] == ranges, "the boxes add no step to the image's axes"
    assert viewer.dims.ndim == len(ranges)

    y0, x0, y1, x1 = BOX
    inside = layer.data_to_world([*np.zeros(layer.ndim - 2), (y0 + y1) / 2, (x0 + x1) / 2])[-2:]  # the centre
    channel_steps = range(int(viewer.dims.nsteps[c_axis])) if c_axis is not None else [None]
    for z in range(3):
        for c in channel_steps:
            viewer.dims.set_current_step(z_axis, z)
            if c is not None:
                viewer.dims.set_current_step(c_axis, c)
            position = (*viewer.dims.point[:-2], *inside)
            hit = boxes.get_value(position, world=True)[0]  # the box under the cursor there, drawn and selectable
            assert (hit is not None) == (z == 2), f"z={z} c={c}: box {'missing' if z == 2 else 'shown'}"
            if hit is not None:
                np.testing.assert_array_equal(boxes.data[hit][:, -2:], [[y0, x0], [y0, x1], [y1, x1], [y1, x0]])


def test_a_suggestion_that_fails_in_its_worker_says_why_in_the_status_line(
    make_napari_viewer_proxy, qtbot, tmp_path, cells, tiny_bundle, monkeypatch
):
    """An error of the worker (here a NaN in the image) was only a notification: the status line still read
    "Finding where the model is least sure…"."""
    image, _ = cells
    image = image.copy()
    image[3, 3] = np.nan
    errors: list[str] = []
    monkeypatch.setattr(_suggest, "show_error", errors.append)
    viewer = make_napari_viewer_proxy()
    widget = finetune_dock(viewer, tmp_path, tiny_bundle, viewer.add_image(image))
    assert widget.suggest() is not None
    qtbot.waitUntil(lambda: bool(errors), timeout=60_000)
    assert "NaN" in errors[-1]
    assert widget.status.text().startswith("No suggestions: ") and "NaN" in widget.status.text()
    assert widget.suggestions.button.isEnabled()


def test_a_refused_uncertainty_keeps_the_segmentation_and_ends_the_run(
    make_napari_viewer_proxy, qtbot, tiny_bundle, monkeypatch
):
    """A plane too large for the uncertainty (refused in its worker) was reported as a failed segmentation: the
    status read "Failed: ...", `segmented` never came and the dock's run did not end, though the labels were in."""
    image, _ = make_cells((96, 112), seed=2)
    errors: list[str] = []
    warnings: list[str] = []
    monkeypatch.setattr(_segment, "show_error", errors.append)
    monkeypatch.setattr(_segment, "show_warning", warnings.append)
    monkeypatch.setattr(scale, "MAX_RESCALE_BYTES", image.size * 8 - 1)  # one (2, H, W) float32 array is too much
    viewer = make_napari_viewer_proxy()
    viewer.add_image(image, name="cells")
    widget = SegmentWidget(viewer, default_model=None)
    viewer.window.add_dock_widget(widget, name="Segment")
    session_for(viewer).set_model(tiny_bundle)
    widget.uncertainty_check.setChecked(True)
    with qtbot.waitSignal(widget.segmented, timeout=60_000) as done:
        widget.run()
    qtbot.waitUntil(lambda: not session_for(viewer).busy and not widget._uncertainty_workers, timeout=10_000)
    assert done.args[0] is widget.labels and widget.labels_layer in viewer.layers
    assert widget.labels_layer.data.max() > 0, "the labels stay"
    assert widget.uncertainty_layer is None and errors == []
    assert warnings and "the uncertainty holds a plane of 96x112 px" in warnings[-1]
    status = widget.status.text()
    assert status.startswith("Done: ") and "No uncertainty: the uncertainty holds a plane of 96x112 px" in status
    assert not widget._busy, "the run is over: the next image waiting would start"
