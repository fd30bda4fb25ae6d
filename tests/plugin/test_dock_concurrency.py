"""Docks used while other work runs: a model loaded during a Segment or a Fine-tune run, the result layer of a
running segmentation removed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.model import UNet
from napari_unet.modelfile import ModelBundle, save_model
from napari_unet.plugin import _state
from napari_unet.plugin._segment import SegmentWidget
from napari_unet.plugin._state import session_for
from napari_unet.postprocess import PostprocessConfig, probs_to_labels
from napari_unet.synthetic import make_cells

pytestmark = pytest.mark.viewer

TILE = 48


def open_segment(viewer, bundle):
    widget = SegmentWidget(viewer, default_model=None)
    viewer.window.add_dock_widget(widget, name="Segment")
    session_for(viewer).set_model(bundle)
    widget.tile_spin.setValue(TILE)
    return widget


def paused_run(widget, qtbot, tiles: int = 2):
    """Start a segmentation and hold its worker after `tiles` tiles; returns the worker."""
    worker = widget.run()
    worker.yielded.connect(lambda _update: widget.tiles_written == tiles and worker.pause())
    with qtbot.waitSignal(worker.paused, timeout=30_000):
        pass
    return worker


def strict_model(folder):
    """A model saved in `folder` whose post-processing keeps no object (threshold 0.99, 100000 px at least)."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        net = UNet(depth=3, base_channels=8, dropout=0.0)
    return save_model(folder, ModelBundle(net, postprocess=PostprocessConfig(threshold=0.99, min_size=100_000)))


def test_a_model_loaded_during_a_segmentation_applies_to_the_next_run(
    make_napari_viewer_proxy, qtbot, tiny_bundle, tmp_path
):
    """The run ends with the post-processing it started with; the model loaded meanwhile segments the next run."""
    image, _ = make_cells((256, 256), seed=1)
    viewer = make_napari_viewer_proxy()
    viewer.add_image(image, name="cells")
    widget = open_segment(viewer, tiny_bundle)
    started_with = widget.postprocess_config()
    folder = strict_model(tmp_path / "strict")

    with qtbot.waitSignal(widget.segmented, timeout=60_000) as done:
        worker = paused_run(widget, qtbot)
        assert widget.load_model(folder)
        assert widget.postprocess_fields.threshold.value() == pytest.approx(0.99)  # the next run's settings
        worker.resume()
    labels = done.args[0]
    expected = probs_to_labels(widget.probs_fg, started_with)
    assert expected.max() > 0, "the first model finds objects in this image"
    np.testing.assert_array_equal(labels, expected)
    assert widget.status.text().startswith(f"Done: {expected.max()} object(s)")
    assert "next run" in widget.status.text()

    with qtbot.waitSignal(widget.segmented, timeout=60_000) as done:
        widget.run()
    assert done.args[0].max() == 0  # the loaded model's post-processing keeps nothing


def test_a_threshold_changed_during_a_segmentation_is_the_one_its_result_uses(
    make_napari_viewer_proxy, qtbot, tiny_bundle
):
    image, _ = make_cells((192, 192), seed=2)
    viewer = make_napari_viewer_proxy()
    viewer.add_image(image, name="cells")
    widget = open_segment(viewer, tiny_bundle)
    with qtbot.waitSignal(widget.segmented, timeout=60_000) as done:
        worker = paused_run(widget, qtbot)
        widget.postprocess_fields.threshold.setValue(0.3)
        worker.resume()
    config = widget.postprocess_config()
    assert config.threshold == pytest.approx(0.3)
    np.testing.assert_array_equal(done.args[0], probs_to_labels(widget.probs_fg, config))


def test_loading_a_model_during_fine_tuning_is_refused(
    make_napari_viewer_proxy, qtbot, tmp_path, cells, tiny_bundle, monkeypatch
):
    """Fine-tune puts its model in the session when it ends: a model loaded meanwhile would be replaced without a
    word. So loading is refused (a notification), and Segment's "Load model…" is disabled while it runs."""
    from test_finetune import few_cells
    from test_finetune import open_dock as open_finetune

    warnings = []
    monkeypatch.setattr(_state, "show_warning", warnings.append)
    image, labels = cells
    folder = save_model(tmp_path / "saved", tiny_bundle)
    viewer = make_napari_viewer_proxy()
    finetune = open_finetune(viewer, qtbot, tmp_path, image, few_cells(labels), iterations=100_000)
    segment = SegmentWidget(viewer, default_model=None)
    viewer.window.add_dock_widget(segment, name="Segment")
    session = session_for(viewer)
    assert segment.model_row.load_button.isEnabled()

    finetune.start()
    qtbot.waitUntil(lambda: len(finetune.history.losses) >= 2, timeout=30_000)
    assert not segment.model_row.load_button.isEnabled()
    assert segment.load_model(folder) is False
    assert "A Fine-tune run is using the model" in warnings[-1]
    assert session.model_path != folder

    with qtbot.waitSignal(finetune.finished, timeout=30_000):
        finetune.stop()
    assert session.bundle.net is finetune.job.trainer.model
    assert segment.model_row.load_button.isEnabled()
    assert segment.load_model(folder) and session.model_path == folder


def test_a_dock_opened_during_fine_tuning_has_load_model_disabled(make_napari_viewer_proxy, tiny_bundle):
    viewer = make_napari_viewer_proxy()
    session = session_for(viewer)
    session.training = True  # as the Fine-tune dock sets it
    segment = open_segment(viewer, tiny_bundle)
    assert not segment.model_row.load_button.isEnabled()
    session.training = False
    assert segment.model_row.load_button.isEnabled()


def test_removing_the_result_layer_during_a_segmentation_is_said(make_napari_viewer_proxy, qtbot, tiny_bundle):
    """A result layer removed mid-run is not re-added, and the dock does not say "Done" as if it were shown."""
    image, _ = make_cells((256, 256), seed=1)
    viewer = make_napari_viewer_proxy()
    viewer.add_image(image, name="cells")
    widget = open_segment(viewer, tiny_bundle)
    with qtbot.waitSignal(widget.stopped, timeout=60_000):
        worker = paused_run(widget, qtbot)
        viewer.layers.remove(widget.labels_layer)
        worker.resume()
    qtbot.waitUntil(lambda: "All tiles in" not in widget.status.text(), timeout=30_000)
    assert not widget.status.text().startswith("Done")
    assert "'cells labels' was removed" in widget.status.text()
    assert [layer.name for layer in viewer.layers] == ["cells"]
