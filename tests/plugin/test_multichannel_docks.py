"""RGB (H&E-like) and two-channel images in the docks: Fine-tune -> Segment -> Measure, with the channel choice
(all channels, or grey) saved with the model and shown by the Segment dock."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.modelfile import load_model
from napari_unet.plugin._finetune import FineTuneWidget
from napari_unet.plugin._layers import LayerProblem, plane_stack
from napari_unet.plugin._measure import MeasureWidget
from napari_unet.plugin._segment import SegmentWidget
from napari_unet.plugin._start_from import START_NEW

pytestmark = pytest.mark.viewer

TINY = {"depth": 2, "base_channels": 4, "dropout": 0.0}
QUICK = {"tile_size": 60, "learning_rate": 5e-3}


def he_like(grey: np.ndarray) -> np.ndarray:
    pink, purple = np.array([235, 180, 215]), np.array([90, 40, 140])
    t = np.clip(grey, 0, 1)[..., None]
    return ((1 - t) * pink + t * purple).astype(np.uint8)


@pytest.mark.parametrize(("kind", "grey"), [("rgb", False), ("rgb", True), ("two", False)])
def test_multichannel_images_through_the_docks(make_napari_viewer_proxy, qtbot, tmp_path, cells, kind, grey):
    image, labels = cells
    viewer = make_napari_viewer_proxy(show=True)
    if kind == "rgb":
        layer = viewer.add_image(he_like(image), name="he", rgb=True)
    else:
        layer = viewer.add_image(np.stack([image, np.roll(image, 3, axis=1)]).astype(np.float32), name="two")
        layer.metadata["napari_unet"] = {"axes": "CYX"}
    annotations = viewer.add_labels(labels.astype(np.int32), name="annotations")

    finetune = FineTuneWidget(
        viewer, autosave_root=tmp_path / "autosave", net_overrides=TINY, train_overrides=QUICK, start_from=START_NEW
    )  # a new network with the image's channels
    with qtbot.waitSignal(finetune.estimated, timeout=60_000):
        viewer.window.add_dock_widget(finetune, name="Fine-tune")
    finetune.image_combo.value = layer
    finetune.labels_combo.value = annotations
    finetune.whole_check.setChecked(True)
    finetune.iterations_spin.setValue(3)
    finetune.channel_fields.grey.setChecked(grey)
    with qtbot.waitSignal(finetune.finished, timeout=180_000) as done:
        assert finetune.start() is not None
    bundle = load_model(done.args[0])
    assert bundle.net.config.in_channels == (1 if grey else 3 if kind == "rgb" else 2)
    assert bundle.channels.grey == grey

    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment", tabify=True)
    assert segment.channel_fields.grey.isChecked() == grey  # the model's choice is shown
    segment.image_combo.value = layer
    # three steps of training: make sure there are objects to measure
    segment.postprocess_fields.threshold.setValue(0.01)
    segment.postprocess_fields.min_size.setValue(0)
    with qtbot.waitSignal(segment.segmented, timeout=120_000) as result:
        assert segment.run() is not None
    segmented = result.args[0]
    assert segmented.shape == labels.shape and segmented.max() > 0

    measure = MeasureWidget(viewer)
    measure.labels_combo.value = segment.labels_layer
    measure.image_combo.value = layer
    ((_, table),) = measure.measure()
    channels = 3 if kind == "rgb" else 2
    assert {f"intensity_mean_c{c}" for c in range(channels)} <= set(table)
    assert list(segment.labels_layer.features["label"]) == list(table["label"])


def test_a_model_refuses_images_with_other_channels_and_says_what_to_do(make_napari_viewer_proxy, cells):
    from napari_unet.channels import ChannelChoice

    image, _ = cells
    viewer = make_napari_viewer_proxy()
    rgb = viewer.add_image(he_like(image), rgb=True)
    with pytest.raises(LayerProblem, match="expects 1 channel.*gives 3: choose its channels or grey"):
        plane_stack(rgb, 1, viewer.layers)
    assert plane_stack(rgb, 1, viewer.layers, ChannelChoice(grey=True)).plane(()).shape == (1, *image.shape)
    assert plane_stack(rgb, 2, viewer.layers, ChannelChoice((2, 0))).plane(()).shape == (2, *image.shape)
    with pytest.raises(LayerProblem, match="channel 5 was chosen"):
        plane_stack(rgb, 1, viewer.layers, ChannelChoice((5,)))


def test_a_file_of_more_channels_than_the_model_says_to_choose_them(make_napari_viewer_proxy, tmp_path):
    """A 3-channel file opened one layer per channel, a 2-channel model: the refusal told the user to put the
    channels on the axis before Y and X or open the file with the napari-unet reader, which they had done."""
    import tifffile

    from napari_unet.channels import ChannelChoice
    from napari_unet.plugin._reader import PLUGIN

    path = tmp_path / "three.tif"
    data = np.random.default_rng(0).integers(0, 1000, (3, 64, 64), dtype=np.uint16)
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "CYX"})
    viewer = make_napari_viewer_proxy()
    first = viewer.open(path, plugin=PLUGIN)[0]
    with pytest.raises(LayerProblem, match=r"one of the 3 channels of its file: choose 2 of them .*\(e\.g\. 0,1\)"):
        plane_stack(first, 2, viewer.layers)
    assert plane_stack(first, 2, viewer.layers, ChannelChoice((0, 2))).plane(()).shape == (2, 64, 64)
    with pytest.raises(LayerProblem, match="one of the 3 channels of its file: this model cannot take it"):
        plane_stack(first, 4, viewer.layers)
