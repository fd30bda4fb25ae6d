"""The human-in-the-loop workflow end to end, as in docs/plugin.md: open the sample, annotate a few cells,
fine-tune with the "fast" preset as it is, segment the whole image. Slow (minutes on a CPU): opt in with --run-slow.
Its screenshots are the docs' (NAPARI_UNET_SCREENSHOTS=docs/images)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_unet.metrics import instance_scores
from napari_unet.plugin._finetune import FineTuneWidget
from napari_unet.plugin._reader import PLUGIN
from napari_unet.plugin._segment import SegmentWidget
from napari_unet.plugin._start_from import START_NEW

pytestmark = [pytest.mark.viewer, pytest.mark.slow]


def test_annotate_a_few_cells_fine_tune_and_segment(make_napari_viewer_proxy, qtbot, tmp_path, screenshot):
    viewer = make_napari_viewer_proxy(show=True)
    viewer.open_sample(PLUGIN, "cells")
    image_layer, truth_layer = viewer.layers
    truth = np.asarray(truth_layer.data)
    # the user paints a dozen cells in one corner (here copied from the sample's labels)
    corner = truth[:160, :160]
    few = [i for i in np.unique(corner) if i and (truth == i).sum() == (corner == i).sum()][:12]
    annotations = viewer.add_labels(np.where(np.isin(truth, few), truth, 0).astype(np.int32), name="annotations")
    truth_layer.visible = False

    finetune = FineTuneWidget(viewer, autosave_root=tmp_path / "autosave", start_from=START_NEW)
    with qtbot.waitSignal(finetune.estimated, timeout=120_000):
        viewer.window.add_dock_widget(finetune, name="Fine-tune")
    finetune.image_combo.value = image_layer
    finetune.labels_combo.value = annotations
    iterations = finetune.iterations_spin.value()  # the "fast" preset's, what a user gets by clicking Start
    with qtbot.waitSignal(finetune.finished, timeout=1_200_000):
        finetune.start()
    losses = [loss for _, loss in finetune.history.losses]
    assert np.mean(losses[-30:]) < 0.6 * np.mean(losses[:30]), losses
    screenshot(viewer, "finetune")

    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment", tabify=True)
    segment.image_combo.value = image_layer
    with qtbot.waitSignal(segment.segmented, timeout=300_000) as done:
        segment.run()
    name = {False: "threshold", True: "threshold + watershed"}
    first = segment.postprocess_fields.split.isChecked()  # the model's own choice (the fast preset: watershed on)
    scores = {name[first]: instance_scores(done.args[0], truth)}
    with qtbot.waitSignal(segment.segmented, timeout=300_000) as other:
        segment.postprocess_fields.split.setChecked(not first)  # from the kept probabilities, no new prediction
    scores[name[not first]] = instance_scores(other.args[0], truth)
    if scores[name[first]]["f1_50"] > scores[name[not first]]["f1_50"]:
        with qtbot.waitSignal(segment.segmented, timeout=300_000):
            segment.postprocess_fields.split.setChecked(first)  # keep the better one, as a user comparing both would
    annotations.visible = False
    screenshot(viewer, "segment")
    (tmp_path / "scores.json").write_text(json.dumps(scores))
    print(f"\nafter {iterations} iterations on {len(few)} annotated cells: {scores}")
    assert max(s["f1_50"] for s in scores.values()) > 0.75, scores


def test_segment_with_the_builtin_model_then_ask_where_to_annotate(
    make_napari_viewer_proxy, qtbot, tmp_path, screenshot, shared_data
):
    """A real fluorescence image (large nuclei, ~46 px across) segmented by the built-in model with the object size
    estimated, with the uncertainty layer, then the Fine-tune dock's suggestions. Screenshots: segment_builtin,
    suggest."""
    from napari_unet import builtin
    from napari_unet.io import read_labels

    data = shared_data / "dsb2018-fluo" / "train"
    name = "0532c64c2fd0c4d3188cc751cdfd566b1cfba3d269358717295bab1504c7c275.png"
    if "nuclei" not in builtin.names():
        pytest.skip("the built-in nuclei model's weights are not in this checkout (src/napari_unet/builtin_models)")
    viewer = make_napari_viewer_proxy(show=True)
    (image_layer,) = viewer.open(data / "images" / name, plugin=PLUGIN)
    truth = read_labels(data / "labels" / name)
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment")
    segment.uncertainty_check.setChecked(True)
    with qtbot.waitSignal(segment.segmented, timeout=300_000) as done:
        segment.run()
    scores = instance_scores(done.args[0], truth)
    print(f"\nbuilt-in nuclei, diameter estimated {segment.estimated_diameter:.1f} px: {scores}")
    assert scores["ap50"] > 0.5, scores
    screenshot(viewer, "segment_builtin")

    finetune = FineTuneWidget(viewer, autosave_root=tmp_path / "autosave")
    viewer.window.add_dock_widget(finetune, name="Fine-tune", tabify=True)
    finetune.image_combo.value = image_layer
    finetune.labels_combo.value = viewer.add_labels(np.zeros(truth.shape, np.int32), name="annotations")  # to paint
    with qtbot.waitSignal(finetune.suggested, timeout=300_000) as suggested:
        finetune.suggest()
    assert suggested.args[0]
    viewer.layers[segment.uncertainty_layer.name].visible = False
    screenshot(viewer, "suggest")
