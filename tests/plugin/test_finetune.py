"""Fine-tune dock: a short run on a few annotated cells, Pause/Resume, Stop keeps a model, clear notifications."""

from __future__ import annotations

import re

import numpy as np
import pytest

from napari_unet.io import write_tiff
from napari_unet.modelfile import load_model
from napari_unet.plugin import _finetune, _start_from
from napari_unet.plugin._autosave import find_annotations
from napari_unet.plugin._finetune import FineTuneWidget
from napari_unet.plugin._segment import SegmentWidget
from napari_unet.plugin._state import session_for

pytestmark = pytest.mark.viewer

TINY = {"depth": 3, "base_channels": 8, "dropout": 0.0}
QUICK = {"tile_size": 124, "learning_rate": 5e-3}


def few_cells(labels: np.ndarray, count: int = 6) -> np.ndarray:
    """Keep the annotations of `count` cells near the image centre, as a user annotating a few would."""
    ids = [i for i in np.unique(labels[64:128, 64:160]) if i][:count]
    return np.where(np.isin(labels, ids), labels, 0).astype(np.int32)


def open_dock(viewer, qtbot, tmp_path, image, labels, iterations):
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels, name="annotations")
    widget = FineTuneWidget(
        viewer,
        autosave_root=tmp_path / "autosave",
        net_overrides=TINY,
        train_overrides=QUICK,
        start_from=_start_from.START_NEW,
    )
    with qtbot.waitSignal(widget.estimated, timeout=30_000):
        viewer.window.add_dock_widget(widget, name="Fine-tune")
    widget.iterations_spin.setValue(iterations)
    return widget


def test_short_run_lowers_the_loss_and_hands_the_model_to_segment(make_napari_viewer_proxy, qtbot, tmp_path, cells):
    image, labels = cells
    sparse = few_cells(labels)
    viewer = make_napari_viewer_proxy(show=True)
    # 80 steps: with plain cross-entropy (the fast preset) this tiny network at 5e-3 sits near log 2 for its
    # first ~40 steps, then learns (the preset's own network learns from the first steps)
    widget = open_dock(viewer, qtbot, tmp_path, image, sparse, iterations=80)
    assert "per step (measured)" in widget.estimate.label.text()
    segment = SegmentWidget(viewer)  # not docked: it only has to see the session's model

    with qtbot.waitSignal(widget.finished, timeout=180_000) as done:
        assert widget.start() is not None
    folder = done.args[0]

    losses = [loss for _, loss in widget.history.losses]
    assert len(losses) == 80
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10]), f"the loss did not fall: {losses}"
    assert widget.history.scores, "validation scores are plotted"
    assert widget.plot.losses == widget.history.losses
    session = session_for(viewer)
    assert session.bundle.net is widget.job.trainer.model  # the trained network itself, not a copy
    assert session.model_path == folder and "80 iterations" in segment.model_row.label.text()
    assert load_model(folder).metadata["iterations"] == 80
    assert widget.autosave.annotations_path is not None and widget.autosave.annotations_path.is_relative_to(
        tmp_path / "autosave"
    )
    segment.close()


def test_a_run_with_a_time_budget_fills_the_bar_and_counts_down_the_budget(
    make_napari_viewer_proxy, qtbot, tmp_path, cells
):
    image, labels = cells
    viewer = make_napari_viewer_proxy()
    widget = open_dock(viewer, qtbot, tmp_path, image, few_cells(labels), iterations=100_000)
    widget.budget_spin.setValue(3 / 60)
    assert widget.budget_spin.text() == "3 s"  # not "0.1 min"
    seen = []  # (bar value, bar maximum, status line) after each step, as the dock shows them

    def shown(event) -> None:  # connected after the dock's own slot: it sees what the dock made of the event
        if event.kind == "step":
            seen.append((widget.progress.value(), widget.progress.maximum(), widget.status.text()))

    with qtbot.waitSignal(widget.finished, timeout=180_000):
        widget.start().yielded.connect(shown)
    trainer = widget.job.trainer
    assert trainer.elapsed >= 3.0 and trainer.iteration < 100_000  # the budget ended the run
    assert len(seen) == trainer.iteration
    values = [value for value, _, _ in seen]
    # the bar counts the budget's seconds, not steps of 100 000 (it ended at 0.3 %)
    assert values == sorted(values) and values[-1] == seen[-1][1] > 0, f"the bar did not fill: {seen}"
    for _, _, text in seen:  # never more left than the budget (it said half an hour: 100 000 iterations' worth)
        left = re.search(r"about (\d+) s left$", text)
        assert " of a 3 s budget" in text and left and int(left.group(1)) <= 3, text
    assert widget.plot.total == trainer.iteration  # the plot's axis ends where the run did


def test_pause_resume_and_stop_keep_a_loadable_model(make_napari_viewer_proxy, qtbot, tmp_path, cells):
    image, labels = cells
    viewer = make_napari_viewer_proxy()
    widget = open_dock(viewer, qtbot, tmp_path, image, few_cells(labels), iterations=100_000)
    worker = widget.start()
    qtbot.waitUntil(lambda: len(widget.history.losses) >= 3, timeout=30_000)

    with qtbot.waitSignal(worker.paused, timeout=10_000):
        widget.toggle_pause()
    paused_at = len(widget.history.losses)
    qtbot.wait(300)
    assert len(widget.history.losses) == paused_at and widget.pause_button.text() == "Resume"
    with qtbot.waitSignal(worker.resumed, timeout=10_000):
        widget.toggle_pause()
    qtbot.waitUntil(lambda: len(widget.history.losses) > paused_at, timeout=10_000)

    with qtbot.waitSignal(widget.finished, timeout=30_000) as done:
        widget.stop()
    trainer = widget.job.trainer
    assert 3 <= trainer.iteration < 100_000 and widget.history.stopped
    bundle = load_model(done.args[0])
    assert bundle.metadata["iterations"] == trainer.iteration
    for name, tensor in trainer.model.state_dict().items():
        np.testing.assert_array_equal(bundle.net.state_dict()[name].numpy(), tensor.cpu().numpy())
    assert session_for(viewer).bundle is not None and not session_for(viewer).training
    assert widget.start_button.isEnabled() and not widget.stop_button.isEnabled()


def test_bad_situations_are_notifications(make_napari_viewer_proxy, qtbot, tmp_path, cells, monkeypatch):
    messages = []
    monkeypatch.setattr(_finetune, "show_error", messages.append)
    image, labels = cells
    viewer = make_napari_viewer_proxy()
    widget = open_dock(viewer, qtbot, tmp_path, image, np.zeros_like(labels), iterations=5)

    assert widget.start() is None and "No annotations" in messages[-1]
    assert widget.status.text() == f"Not started: {messages[-1]}", "said where it stays, not only in a notification"
    viewer.layers["annotations"].data = few_cells(labels)[:100]
    assert widget.start() is None and "pixels" in messages[-1]  # shape mismatch
    viewer.layers.clear()
    viewer.add_image(np.stack([image] * 5), name="stack")
    viewer.add_labels(few_cells(labels), name="annotations")
    widget.reset_choices()
    assert widget.start() is None and "stack of 5 planes" in messages[-1]
    viewer.add_image(np.zeros((*image.shape, 3), np.uint8), name="photo", rgb=True)
    widget.reset_choices()
    widget.image_combo.value = viewer.layers["photo"]
    widget.channel_fields.edit.setText("0,5")  # RGB has channels 0, 1, 2
    assert widget.start() is None and "channel 5 was chosen but layer 'photo' has 3" in messages[-1]
    assert widget.worker is None and not session_for(viewer).training


def test_autosaved_annotations_are_offered_back(make_napari_viewer_proxy, qtbot, tmp_path, cells):
    image, labels = cells
    path = tmp_path / "data" / "cells.tif"
    path.parent.mkdir()
    write_tiff(path, (image * 1000).astype(np.uint16), "YX")
    viewer = make_napari_viewer_proxy()
    widget = FineTuneWidget(
        viewer,
        autosave_root=tmp_path / "autosave",
        net_overrides=TINY,
        train_overrides=QUICK,
        start_from=_start_from.START_NEW,
    )
    with qtbot.waitSignal(widget.estimated, timeout=30_000):
        viewer.window.add_dock_widget(widget, name="Fine-tune")
    (layer,) = viewer.open(path)
    widget.reset_choices()
    widget.image_combo.value = layer
    viewer.add_labels(few_cells(labels), name="annotations")
    widget.reset_choices()
    widget.iterations_spin.setValue(2)
    with qtbot.waitSignal(widget.finished, timeout=180_000):
        widget.start()
    assert find_annotations(path, tmp_path / "autosave") == path.with_name("cells.tif.unet-labels.tif")

    viewer.layers.clear()
    assert widget.autosave.restore_button.isHidden()
    viewer.open(path)
    assert not widget.autosave.restore_button.isHidden() and "cells.tif" in widget.autosave.restore_button.text()
    restored = widget.autosave.restore()
    np.testing.assert_array_equal(restored.data, few_cells(labels))
    assert widget.labels_combo.value is restored or widget.labels_combo.value == restored


def test_closing_the_dock_during_training_keeps_the_model(make_napari_viewer_proxy, qtbot, tmp_path, cells):
    image, labels = cells
    viewer = make_napari_viewer_proxy()
    widget = open_dock(viewer, qtbot, tmp_path, image, few_cells(labels), iterations=100_000)
    session = session_for(viewer)
    widget.start()
    qtbot.waitUntil(lambda: len(widget.history.losses) >= 2, timeout=30_000)
    job = widget.job
    viewer.window.remove_dock_widget(widget)
    widget.deleteLater()
    qtbot.waitUntil(lambda: not session.training, timeout=30_000)
    assert session.bundle is not None and session.bundle.net is job.trainer.model
    assert load_model(session.model_path).metadata["iterations"] == job.trainer.iteration


@pytest.fixture
def tiny_builtin(tmp_path, monkeypatch):
    """A tiny stand-in for the built-in `nuclei` model (object diameter 20 px), installed in a temporary folder."""
    import torch

    from napari_unet import builtin
    from napari_unet.model import UNet
    from napari_unet.modelfile import ModelBundle, save_model
    from napari_unet.postprocess import PostprocessConfig

    torch.manual_seed(0)
    folder = tmp_path / "builtin_models"
    save_model(
        folder / "nuclei",
        ModelBundle(
            UNet(depth=3, base_channels=8, dropout=0.0), postprocess=PostprocessConfig(min_size=4), object_diameter=20.0
        ),
    )
    monkeypatch.setattr(builtin, "BUILTIN_DIR", folder)
    return folder / "nuclei"


def test_fine_tuning_starts_from_the_builtin_and_rescales_the_painted_cells_to_its_object_size(
    make_napari_viewer_proxy, qtbot, tmp_path, tiny_builtin
):
    from test_diameter import disks

    truth = disks((240, 240), 20, 80)  # cells 40 px across: twice the model's 20
    image = (truth > 0).astype(np.float32) * 100 + np.random.default_rng(0).random(truth.shape).astype(np.float32)
    viewer = make_napari_viewer_proxy()
    viewer.add_image(image, name="cells")
    viewer.add_labels(np.where(np.isin(truth, [1, 2, 5]), truth, 0).astype(np.int32), name="annotations")
    widget = FineTuneWidget(viewer, autosave_root=tmp_path / "autosave", train_overrides={"tile_size": 124})
    with qtbot.waitSignal(widget.estimated, timeout=30_000):
        viewer.window.add_dock_widget(widget, name="Fine-tune")
    assert widget.start_from.text() == _start_from.START_BUILTIN == "nuclei (built-in)"
    widget.iterations_spin.setValue(3)
    with qtbot.waitSignal(widget.finished, timeout=120_000) as done:
        widget.start()
    assert widget.job.few_shot is not None and widget.budget_spin.value() == 1.0  # the recipe's minute
    assert widget.job.trainer.config.learning_rate == widget.job.few_shot.learning_rate
    tuned = load_model(done.args[0])
    assert tuned.object_diameter == 20.0 and session_for(viewer).bundle.object_diameter == 20.0
    assert tuned.metadata["annotated_diameter"] == pytest.approx(40, rel=0.05)  # rescaled by 20 / 40
    shipped = load_model(tiny_builtin)
    for name, tensor in widget.start_from.builtin.net.state_dict().items():  # the built-in itself is not trained
        np.testing.assert_array_equal(tensor.cpu().numpy(), shipped.net.state_dict()[name].numpy())


def test_suggest_where_to_annotate_adds_rectangles_away_from_the_painted_cells(
    make_napari_viewer_proxy, qtbot, tmp_path, cells, tiny_builtin
):
    image, labels = cells
    viewer = make_napari_viewer_proxy()
    viewer.add_image(image, name="cells")
    painted = viewer.add_labels(few_cells(labels), name="annotations")
    widget = FineTuneWidget(viewer, autosave_root=tmp_path / "autosave")
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    with qtbot.waitSignal(widget.suggested, timeout=60_000) as done:
        assert widget.suggest() is not None
    boxes = done.args[0]
    layer = widget.suggestions.layer
    assert boxes and layer in viewer.layers and len(layer.data) == len(boxes)
    assert set(layer.shape_type) == {"rectangle"}
    for y0, x0, y1, x1 in boxes:
        assert not np.asarray(painted.data)[y0:y1, x0:x1].any()


def test_suggestions_on_an_rgb_image_use_the_models_grey_conversion(
    make_napari_viewer_proxy, qtbot, tmp_path, cells, tiny_builtin
):
    """The dock's channel choice (else the model's: grey for the built-in) applies, as when training: suggestions
    refused every RGB image for a grey model, the channels box's grey conversion ticked or not."""
    image, labels = cells
    viewer = make_napari_viewer_proxy()
    rgb = np.repeat((255 * (image - image.min()) / np.ptp(image)).astype(np.uint8)[..., None], 3, axis=-1)
    viewer.add_image(rgb, name="rgb", rgb=True)
    painted = viewer.add_labels(few_cells(labels), name="annotations")
    widget = FineTuneWidget(viewer, autosave_root=tmp_path / "autosave")
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    widget.channel_fields.grey.setChecked(True)  # the stand-in for the built-in model records no channel choice
    session = session_for(viewer)
    session.training = True  # a run trains the model: asking it meanwhile crashed napari now and then
    assert widget.suggest() is None
    session.training = False
    with qtbot.waitSignal(widget.suggested, timeout=60_000) as done:
        assert widget.suggest() is not None
        assert session.busy and widget.start() is None, "the model is in use: no training meanwhile"
    boxes = done.args[0]
    qtbot.waitUntil(lambda: not session.busy, timeout=10_000)
    assert boxes and len(widget.suggestions.layer.data) == len(boxes)
    for y0, x0, y1, x1 in boxes:
        assert not np.asarray(painted.data)[y0:y1, x0:x1].any()


def test_annotations_of_an_image_opened_before_the_dock_are_offered_too(make_napari_viewer_proxy, tmp_path, cells):
    """The usual order: open the image, then the Fine-tune dock. Its autosaved annotations are offered then."""
    from napari_unet.plugin._autosave import save_annotations

    image, labels = cells
    path = tmp_path / "data" / "cells.tif"
    path.parent.mkdir()
    write_tiff(path, (image * 1000).astype(np.uint16), "YX")
    save_annotations(few_cells(labels), tmp_path / "autosave", path, "cells")
    viewer = make_napari_viewer_proxy()
    (opened,) = viewer.open(path)
    opened.scale, opened.translate = (0.5, 0.5), (10.0, 20.0)  # as a file with a pixel size, moved
    widget = FineTuneWidget(viewer, autosave_root=tmp_path / "autosave", start_from=_start_from.START_NEW)
    assert not widget.autosave.restore_button.isHidden() and "cells.tif" in widget.autosave.restore_button.text()
    restored = widget.autosave.restore()
    np.testing.assert_array_equal(restored.data, few_cells(labels))
    assert tuple(restored.scale) == (0.5, 0.5) and tuple(restored.translate) == (10.0, 20.0), "over the image"


def test_the_batch_dock_waits_for_a_running_fine_tune(make_napari_viewer_proxy, tmp_path, monkeypatch, tiny_bundle):
    pytest.importorskip("distributed")
    from napari_unet.plugin import _batch

    warnings = []
    monkeypatch.setattr(_batch, "show_warning", warnings.append)
    viewer = make_napari_viewer_proxy()
    widget = _batch.BatchWidget(viewer)
    session = session_for(viewer)
    session.set_model(tiny_bundle)
    session.training = True
    widget.input_edit.setText(str(tmp_path))
    widget.output_edit.setText(str(tmp_path / "out"))
    assert widget.run() is None and "being trained" in warnings[-1]
    assert widget.worker is None and not (tmp_path / "out").exists()


def test_an_image_opened_later_is_the_one_to_train_on_until_the_user_chooses_one(
    make_napari_viewer_proxy, qtbot, tmp_path, cells
):
    """As in the Segment dock: the image picker stayed on the first image opened."""
    from napari_unet.plugin._layers import result_metadata

    image, labels = cells
    viewer = make_napari_viewer_proxy()
    widget = open_dock(viewer, qtbot, tmp_path, image, few_cells(labels), iterations=2)
    second = viewer.add_image(image[::-1].copy(), name="second")
    assert widget.image_combo.value == second
    viewer.add_image(image, name="second probability", metadata=result_metadata(second))  # a map a dock computed
    assert widget.image_combo.value == second
    widget.image_combo.value = viewer.layers["cells"]
    viewer.add_image(image, name="third")
    assert widget.image_combo.value == viewer.layers["cells"]


def test_a_labels_layer_added_to_paint_in_becomes_the_annotations_until_the_user_chooses(
    make_napari_viewer_proxy, qtbot, tmp_path, cells
):
    """Layers > New Labels Layer, then paint: the annotations picker stayed on the first Labels layer. It follows a
    Labels layer the user adds, not a segmentation or a preview the docks compute (uncorrected cells are no
    annotations); a choice is kept."""
    from napari_unet.plugin._layers import preview_metadata, result_metadata

    image, labels = cells
    viewer = make_napari_viewer_proxy()
    widget = open_dock(viewer, qtbot, tmp_path, image, few_cells(labels), iterations=2)
    source = viewer.layers["cells"]
    painted = viewer.add_labels(np.zeros(image.shape, np.int32), name="painted")
    assert widget.labels_combo.value == painted
    viewer.add_labels(labels.astype(np.int32), name="cells labels", metadata=result_metadata(source))
    viewer.add_labels(labels.astype(np.int32), name="augmented labels", metadata=preview_metadata(source))
    assert widget.labels_combo.value == painted
    first = viewer.layers["annotations"]
    widget.labels_combo.value = first
    viewer.add_labels(np.zeros(image.shape, np.int32), name="painted 2")
    assert widget.labels_combo.value == first


def test_a_dock_opened_after_segmenting_and_adding_a_labels_layer_preselects_the_users_labels(
    make_napari_viewer_proxy, tmp_path, cells
):
    """Open the image, segment it, add a Labels layer and paint, then open Fine-tune: the annotations were the
    uncorrected segmentation (the first Labels layer), not the painted one. A segmentation alone was preselected
    too, and Start trained on its uncorrected cells: now nothing is, and Start says there is no Labels layer to
    train on (a segmentation corrected to train on is chosen in the drop-down)."""
    from napari_unet.plugin._layers import result_metadata

    image, labels = cells
    viewer = make_napari_viewer_proxy()
    source = viewer.add_image(image, name="cells")
    segmentation = viewer.add_labels(labels.astype(np.int32), name="cells labels", metadata=result_metadata(source))
    alone = FineTuneWidget(viewer, autosave_root=tmp_path / "autosave", start_from=_start_from.START_NEW)
    assert alone.labels_combo.value is None
    assert alone.start() is None and alone.status.text().startswith("Not started: No Labels layer")
    alone.labels_combo.value = segmentation  # corrected, then chosen to train on
    assert alone.labels_combo.value == segmentation
    painted = viewer.add_labels(few_cells(labels), name="Labels")
    widget = FineTuneWidget(viewer, autosave_root=tmp_path / "autosave", start_from=_start_from.START_NEW)
    assert widget.labels_combo.value == painted
    assert widget.image_combo.value == source


def test_closing_the_dock_with_its_close_button_stops_the_run_and_keeps_the_model(
    make_napari_viewer_proxy, qtbot, tmp_path, cells
):
    """The dock's 'x' (napari's `remove_dock_widget`) takes the dock out of the window without destroying it: the
    run went on, invisible and unstoppable, to its last iteration, and Segment refused to run meanwhile."""
    image, labels = cells
    viewer = make_napari_viewer_proxy()
    widget = open_dock(viewer, qtbot, tmp_path, image, few_cells(labels), iterations=100_000)
    session = session_for(viewer)
    widget.start()
    qtbot.waitUntil(lambda: len(widget.history.losses) >= 2, timeout=30_000)
    job = widget.job
    viewer.window.remove_dock_widget(widget)
    qtbot.waitUntil(lambda: not session.training, timeout=30_000)
    assert job.trainer.iteration < 100_000
    assert session.bundle is not None and session.bundle.net is job.trainer.model
    assert load_model(session.model_path).metadata["iterations"] == job.trainer.iteration


def test_a_model_that_cannot_be_saved_stays_in_the_session_and_the_base_is_untouched(
    make_napari_viewer_proxy, qtbot, tmp_path, cells, tiny_bundle
):
    """An autosave folder that cannot be written failed the final save: the run's trained weights were thrown
    away, and a run from the session's model had trained that model in place (the session kept the failed run's
    weights under the saved folder's name). The trained model now stays in the session, unsaved, with a warning;
    the model a run starts from is never changed."""
    import torch

    from napari_unet.modelfile import save_model

    image, labels = cells
    save_model(tmp_path / "mine", tiny_bundle)
    blocker = tmp_path / "share"
    blocker.write_text("not a folder")  # every write under it fails
    viewer = make_napari_viewer_proxy()
    session = session_for(viewer)
    assert session.load_model(tmp_path / "mine")
    base = session.bundle
    before = {k: v.clone() for k, v in base.net.state_dict().items()}
    viewer.add_image(image, name="cells")
    viewer.add_labels(few_cells(labels), name="annotations")
    widget = FineTuneWidget(
        viewer, autosave_root=blocker / "autosave", train_overrides=QUICK, start_from=_start_from.START_SESSION
    )
    warnings = []
    widget.iterations_spin.setValue(3)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_finetune, "show_warning", warnings.append)
        assert widget.start() is not None
        qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert warnings and "could not be saved" in warnings[-1] and "Save model" in warnings[-1]
    assert session.bundle is not base and session.model_path is None
    assert all(torch.equal(before[k], v) for k, v in base.net.state_dict().items())  # the base as it was
    trained = session.bundle.net.state_dict()
    assert any(not torch.equal(before[k], trained[k]) for k in before)  # the run's weights, kept


def test_a_saved_model_to_start_from_is_asked_for_each_time_it_is_chosen(
    make_napari_viewer_proxy, qtbot, tmp_path, monkeypatch, tiny_bundle
):
    """The folder dialog came once in a dock's life: choosing 'a saved model…' again after a run (the choice had
    moved to the session's model) started from the first folder's bundle, without asking."""
    from napari_unet.modelfile import save_model

    for name in ("A", "B"):
        save_model(tmp_path / name, tiny_bundle)
    answers = [str(tmp_path / "A"), str(tmp_path / "B"), ""]
    monkeypatch.setattr(_start_from.QFileDialog, "getExistingDirectory", lambda *_args: answers.pop(0))
    viewer = make_napari_viewer_proxy()
    widget = FineTuneWidget(viewer, autosave_root=tmp_path / "autosave", start_from=_start_from.START_NEW)
    widget.start_from.choose(_start_from.START_FILE)
    assert widget.start_from.saved_path == tmp_path / "A"
    widget.start_from.choose(_start_from.START_SESSION)  # as the end of a run does
    widget.start_from.choose(_start_from.START_FILE)
    assert widget.start_from.saved_path == tmp_path / "B" and len(answers) == 1
    qtbot.wait(10)
    widget.start_from.combo.activated.emit(widget.start_from.combo.currentIndex())  # picked again, cancelled
    assert answers == [] and widget.start_from.text() == _start_from.START_FILE
    assert widget.start_from.saved_path == tmp_path / "B"  # the folder chosen before stays


def test_fine_tune_waits_for_a_running_batch(
    make_napari_viewer_proxy, qtbot, tmp_path, monkeypatch, cells, tiny_bundle
):
    """The Batch dock did not mark the model as in use: a Fine-tune run started during a batch, whose tasks were
    then sent weights between the model at Run and the trained one."""
    import threading

    from napari_unet.io import write_tiff
    from napari_unet.plugin import _batch

    release = threading.Event()

    def slow_batch(*_args, **_kwargs):
        release.wait(30)
        yield from ()

    monkeypatch.setattr(_batch, "run_batch", slow_batch)
    warnings = []
    monkeypatch.setattr(_finetune, "show_warning", warnings.append)
    image, labels = cells
    write_tiff(tmp_path / "in" / "a.tif", image, "YX") if (tmp_path / "in").mkdir() is None else None
    viewer = make_napari_viewer_proxy()
    session = session_for(viewer)
    session.set_model(tiny_bundle)
    batch = _batch.BatchWidget(viewer)
    batch.input_edit.setText(str(tmp_path / "in"))
    batch.output_edit.setText(str(tmp_path / "out"))
    viewer.add_image(image, name="cells")
    viewer.add_labels(few_cells(labels), name="annotations")
    tune = FineTuneWidget(viewer, autosave_root=tmp_path / "autosave", start_from=_start_from.START_SESSION)
    assert batch.run() is not None
    assert session.busy and tune.start() is None and "a batch" in warnings[-1]
    release.set()
    qtbot.waitUntil(lambda: batch.worker is None and not session.busy, timeout=30_000)


def test_a_stop_whose_save_fails_says_the_model_is_not_saved(
    make_napari_viewer_proxy, qtbot, tmp_path, cells, monkeypatch
):
    """A checkpoint at step 3, then a full disk: the Stop at step 4 or later cannot save. The status said "model
    saved to <folder>" (the folder held step 3's) and the session named that folder; now the model of the last
    step is kept in the session, unsaved, and the status says so."""
    import napari_unet.training as training

    image, labels = cells
    real, disk = training.save_model, {"full": False}

    def save(path, *args, **kwargs):
        if disk["full"]:
            raise OSError(28, "No space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(training, "save_model", save)
    errors = []
    monkeypatch.setattr(_finetune, "show_error", errors.append)
    viewer = make_napari_viewer_proxy()
    viewer.add_image(image, name="cells")
    viewer.add_labels(few_cells(labels), name="annotations")
    widget = FineTuneWidget(
        viewer,
        autosave_root=tmp_path / "autosave",
        net_overrides=TINY,
        train_overrides={**QUICK, "checkpoint_every": 3, "validate_every": 1000},
        start_from=_start_from.START_NEW,
    )
    widget.iterations_spin.setValue(100_000)
    worker = widget.start()
    qtbot.waitUntil(lambda: len(widget.history.losses) >= 4, timeout=60_000)
    with qtbot.waitSignal(worker.paused, timeout=10_000):
        widget.toggle_pause()
    trainer = widget.job.trainer
    if trainer.iteration % 3 == 0:  # paused right after a checkpoint: one step more, so the folder is behind
        with qtbot.waitSignal(worker.resumed, timeout=10_000):
            widget.toggle_pause()
        target = trainer.iteration + 1
        qtbot.waitUntil(lambda: len(widget.history.losses) >= target, timeout=10_000)
        with qtbot.waitSignal(worker.paused, timeout=10_000):
            widget.toggle_pause()
    disk["full"] = True
    widget.stop()
    qtbot.waitUntil(lambda: widget.worker is None and "Stopped" in widget.status.text(), timeout=60_000)
    on_disk = load_model(widget.job.checkpoint).metadata["iterations"]
    assert on_disk < trainer.iteration and errors and "No space left" in errors[-1]
    assert "not saved" in widget.status.text() and session_for(viewer).model_path is None
    assert session_for(viewer).bundle.metadata["iterations"] == trainer.iteration  # the last step's model, kept


def test_a_refused_start_from_a_saved_model_keeps_the_sessions_model(
    make_napari_viewer_proxy, qtbot, tmp_path, cells, monkeypatch
):
    """Start from a saved model with an object size, refused (two annotated planes): the session's model (here
    unsaved, the one the docs say to keep with Save model…) was replaced by the saved one all the same."""
    from napari_unet.model import UNet
    from napari_unet.modelfile import ModelBundle, save_model

    image, labels = cells
    save_model(tmp_path / "sized", ModelBundle(UNet(depth=2, base_channels=4), object_diameter=20.0))
    monkeypatch.setattr(_start_from.QFileDialog, "getExistingDirectory", lambda *_args: str(tmp_path / "sized"))
    viewer = make_napari_viewer_proxy()
    session = session_for(viewer)
    unsaved = ModelBundle(UNet(depth=2, base_channels=4))
    session.set_model(unsaved, None)
    viewer.add_image(np.stack([image, image]), name="stack")
    viewer.add_labels(np.stack([few_cells(labels)] * 2), name="annotations")
    widget = FineTuneWidget(viewer, autosave_root=tmp_path / "autosave", start_from=_start_from.START_NEW)
    widget.start_from.choose(_start_from.START_FILE)
    assert widget.start() is None and "2 planes are annotated" in widget.status.text()
    assert session.bundle is unsaved and session.model_path is None


def test_quitting_napari_during_a_run_saves_its_last_step(make_napari_viewer_proxy, qtbot, tmp_path, cells):
    """At exit napari's event loop has stopped, so the slot that closes a quit run's generator (and saves its model)
    never ran: nothing after the last checkpoint was kept, nothing at all for a run without one (the few-shot
    recipe's). The exit hook (`await_workers`) now closes the generators once their threads have ended."""
    from napari_unet.plugin._workers import await_workers

    image, labels = cells
    viewer = make_napari_viewer_proxy()
    widget = open_dock(viewer, qtbot, tmp_path, image, few_cells(labels), iterations=100_000)
    widget.start()
    qtbot.waitUntil(lambda: len(widget.history.losses) >= 3, timeout=30_000)
    assert not (widget.job.checkpoint / "config.json").exists()  # no checkpoint yet
    assert await_workers(60_000)  # what the exit hook does, without the event loop
    trainer = widget.job.trainer
    assert trainer.saved and load_model(widget.job.checkpoint).metadata["iterations"] == trainer.iteration >= 3


def test_a_model_the_user_loads_anywhere_is_the_one_fine_tune_starts_from(
    make_napari_viewer_proxy, tmp_path, tiny_builtin, tiny_bundle
):
    """A model dropped on the window ("it is now the model of the Segment and Fine-tune docks") or loaded with the
    Segment dock's Load model… left Fine-tune starting from the built-in model: only its own Load model… switched
    "start from". The built-in model the Segment dock puts in an empty session is no load of the user's."""
    from napari_unet.modelfile import save_model

    folder = save_model(tmp_path / "mine", tiny_bundle)
    viewer = make_napari_viewer_proxy()
    session = session_for(viewer)
    widget = FineTuneWidget(viewer, autosave_root=tmp_path / "autosave")
    assert widget.start_from.text() == _start_from.START_BUILTIN
    segment = SegmentWidget(viewer)  # puts the built-in model in the empty session
    assert session.bundle is not None and widget.start_from.text() == _start_from.START_BUILTIN

    assert segment.load_model(folder)  # the Segment dock's Load model…
    assert widget.start_from.text() == _start_from.START_SESSION and widget.start_from.bundle() is session.bundle
    assert session.model_path == folder

    widget.start_from.choose(_start_from.START_NEW)
    viewer.open(folder / "config.json", plugin=None)  # dropped on the window
    assert widget.start_from.text() == _start_from.START_SESSION and widget.start_from.bundle() is session.bundle
    segment.close()


def test_suggested_boxes_leave_the_image_active_and_take_its_units(
    make_napari_viewer_proxy, qtbot, tmp_path, cells, tiny_bundle
):
    """The "annotate here" Shapes layer became the active layer, so napari's New Labels Layer made a Labels layer
    the size of the boxes (Start then refused it); and it had no units, so napari warned of inconsistent units
    across layers and stopped showing the calibrated image's."""
    from napari._app_model import get_app_model

    from napari_unet.plugin._layers import annotations_of, plane_stack

    image, labels = cells
    viewer = make_napari_viewer_proxy()
    session_for(viewer).set_model(tiny_bundle)
    shown = viewer.add_image(image, name="cells", scale=(0.65, 0.65), units=("um", "um"))
    widget = FineTuneWidget(viewer, autosave_root=tmp_path / "autosave", start_from=_start_from.START_SESSION)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    with qtbot.waitSignal(widget.suggested, timeout=60_000) as done:
        assert widget.suggest() is not None
    assert done.args[0] and widget.suggestions.layer in viewer.layers
    assert widget.suggestions.layer.units == shown.units
    assert viewer.layers.selection.active == shown and list(viewer.layers.selection) == [shown]

    get_app_model().commands.execute_command("napari.window.file.new_layer.new_labels").result()  # the menu
    added = viewer.layers[-1]
    assert added.data.shape == image.shape and tuple(added.scale) == (0.65, 0.65)
    assert widget.labels_combo.value == added
    added.data = few_cells(labels)
    annotations_of(added, shown, plane_stack(shown))  # what Start checks: the annotations cover the image


def test_a_region_drawn_over_a_calibrated_image_outlines_the_pixels_it_covers(make_napari_viewer_proxy):
    """A new Shapes layer has scale 1: drawn over an image of pixel size 0.65, its rectangle was read in its own
    data coordinates, a region a third smaller and shifted. The shapes are now placed in the image's pixels."""
    from napari_unet.plugin._layers import region_mask

    viewer = make_napari_viewer_proxy()
    shape = (96, 120)
    image_layer = viewer.add_image(np.zeros(shape, np.float32), scale=(0.65, 0.65), translate=(5.0, -3.0))
    corners = np.array([[20.25, 30.25], [20.25, 60.25], [40.25, 60.25], [40.25, 30.25]])  # image pixels
    drawn = viewer.add_shapes(name="region")  # Layers > New Shapes Layer, then a rectangle over those pixels
    drawn.add_rectangles(np.array([drawn.world_to_data(image_layer.data_to_world(corner)) for corner in corners]))
    assert tuple(drawn.scale) == (1.0, 1.0)
    placed = viewer.add_shapes([corners], shape_type="rectangle", scale=(0.65, 0.65), translate=(5.0, -3.0))

    mask = region_mask(drawn, shape, image_layer)
    np.testing.assert_array_equal(mask, region_mask(placed, shape, image_layer))
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (21, 40, 31, 60)
    assert mask.sum() == 20 * 30


def test_a_start_refused_while_the_model_is_in_use_says_so_in_the_status_line(
    make_napari_viewer_proxy, qtbot, tmp_path, cells, monkeypatch
):
    """docs/plugin.md: a Start refused says why in the status line too; one refused because a segmentation (or
    suggestions, a batch) was using the model only showed a notification, which fades."""
    warnings = []
    monkeypatch.setattr(_finetune, "show_warning", warnings.append)
    image, labels = cells
    viewer = make_napari_viewer_proxy()
    widget = open_dock(viewer, qtbot, tmp_path, image, few_cells(labels), iterations=2)
    release = session_for(viewer).hold()  # a worker reads the model
    assert widget.start() is None and "using the model" in warnings[-1]
    assert widget.status.text() == f"Not started: {warnings[-1]}"
    release()
