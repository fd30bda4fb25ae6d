"""The Batch dock segments a zarr on local worker processes in the background and opens the result lazily."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("distributed", reason="needs dask.distributed: pip install 'napari-unet-2015[distributed]'")

from napari_unet.distributed import create_ome_zarr, ngff_attributes  # noqa: E402
from napari_unet.plugin._reader import PLUGIN  # noqa: E402
from napari_unet.plugin._state import session_for  # noqa: E402
from napari_unet.postprocess import PostprocessConfig  # noqa: E402

pytestmark = pytest.mark.viewer


def test_batch_dock_segments_a_zarr_and_opens_the_labels_lazily(
    make_napari_viewer, qtbot, tiny_bundle, cells, tmp_path
):
    import dask.array as da
    import zarr

    image = (cells[0] * 1000).astype(np.uint16)
    source = tmp_path / "slide.zarr"
    create_ome_zarr(
        source,
        image.shape,
        np.uint16,
        (64, 64),
        ngff_attributes("slide", "YX", (0.25, 0.25), "micrometer", label=False),
    )["0"][:] = image
    viewer = make_napari_viewer()
    from dataclasses import replace

    # an untrained network: a threshold of 0 makes sure there are objects for the labels to hold
    session_for(viewer).set_model(replace(tiny_bundle, postprocess=PostprocessConfig(threshold=0.0, min_size=0)))
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Batch")
    widget.input_edit.setText(str(source))
    widget.output_edit.setText(str(tmp_path / "out"))
    widget.workers_spin.setValue(1)
    widget.block_spin.setValue(64)
    widget.device_combo.setCurrentText("cpu")
    with qtbot.waitSignal(widget.finished, timeout=180_000) as finished:
        assert widget.run() is not None
    layers = finished.args[0]
    assert [layer.name for layer in layers] == ["slide_labels"]
    layer = layers[0]
    assert isinstance(layer.data, da.Array) and tuple(layer.scale) == (0.25, 0.25)
    written = np.asarray(zarr.open_group(str(tmp_path / "out" / "slide_labels.ome.zarr"))["0"])
    assert np.array_equal(np.asarray(layer.data), written)
    events = widget.events
    assert events[-1].done == events[-1].total == 2 and widget.progress.value() == events[-1].total
    assert int(np.asarray(layer.data).max()) > 0
    assert "finished" in widget.status.text()
    from napari_unet.plugin._layers import is_users_labels, made_from

    assert made_from(layer) == "slide" and not is_users_labels(layer)  # a segmentation, not annotations to train on
    from napari_unet.plugin._layers import layer_pixel_size

    assert layer_pixel_size(layer) == {"y": 0.25, "x": 0.25, "unit": "um"}  # measured in µm, as the image
    assert tuple(str(unit) for unit in layer.units) == ("micrometer", "micrometer")


def test_batch_dock_explains_what_is_missing(make_napari_viewer, tiny_bundle, tmp_path):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Batch")
    assert widget.run() is None  # no model
    from dataclasses import replace

    # an untrained network: a threshold of 0 makes sure there are objects for the labels to hold
    session_for(viewer).set_model(replace(tiny_bundle, postprocess=PostprocessConfig(threshold=0.0, min_size=0)))
    widget.input_edit.setText(str(tmp_path / "missing"))
    assert widget.run() is None
    widget.input_edit.setText(str(tmp_path))
    widget.where_combo.setCurrentIndex(1)
    widget.output_edit.setText(str(tmp_path / "out"))
    assert not widget.workers_spin.isEnabled() and widget.address_edit.isEnabled()
    assert widget.run() is None  # no scheduler address
    assert widget.worker is None


def test_batch_dock_names_and_leaves_out_an_earlier_runs_outputs_in_the_input_folder(
    make_napari_viewer, qtbot, tiny_bundle, tmp_path, monkeypatch
):
    """Segmenting a folder into itself a second time listed its own outputs as inputs (and was refused): the
    dock gives the job the images only, and a notification names what it left out, as `predict` notes it."""
    from napari_unet.distributed import BatchProgress
    from napari_unet.plugin import _batch

    for name in ("a.tif", "a_labels.tif", "b.tif", "b_labels.ome.zarr/.zgroup"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")  # names only: the job below reads nothing
    given, infos = [], []

    def job(bundle, inputs, out, **options):
        given.extend(inputs)
        yield BatchProgress(len(inputs), len(inputs), "done")

    monkeypatch.setattr(_batch, "run_batch", job)
    monkeypatch.setattr(_batch, "show_info", infos.append)
    viewer = make_napari_viewer()
    session_for(viewer).set_model(tiny_bundle)
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Batch")
    widget.input_edit.setText(str(tmp_path))
    widget.output_edit.setText(str(tmp_path))
    with qtbot.waitSignal(widget.finished, timeout=30_000):
        assert widget.run() is not None
    assert given == [tmp_path / "a.tif", tmp_path / "b.tif"]
    assert infos[0] == "skipped 2 files that are predict's outputs of other inputs: a_labels.tif, b_labels.ome.zarr"


@pytest.fixture
def idle_cluster():
    """A scheduler without workers, in this process: a batch sent there waits for ever for its tasks."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster:
        yield cluster


@pytest.fixture
def scheduler():
    """The address of a cluster of one worker thread in this process (ready in a second, unlike processes)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


def batch_dock(viewer, bundle, inputs, out, address):
    """The Batch dock of `viewer` with `bundle` as the session's model, set to segment `inputs` into `out` on the
    cluster at `address`; returns (its dock widget, the dock)."""
    session_for(viewer).set_model(bundle)
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Batch")
    widget.input_edit.setText(str(inputs))
    widget.output_edit.setText(str(out))
    widget.where_combo.setCurrentIndex(1)
    widget.address_edit.setText(address)
    widget.device_combo.setCurrentText("cpu")
    return dock, widget


def small_tiff(folder, cells) -> None:
    from napari_unet.io import write_tiff

    folder.mkdir()
    write_tiff(folder / "a.tif", (cells[0][:64, :72] * 1000).astype(np.uint16), "YX")


def test_cancel_stops_a_batch_at_once_while_no_worker_is_free(
    make_napari_viewer, qtbot, tiny_bundle, cells, tmp_path, idle_cluster
):
    """Cancel only asked the worker thread to quit, which it could not until a task finished: on a cluster whose
    workers are all busy (here: none), the run went on for ever. Now Cancel returns at once and the run ends,
    its tasks cancelled on the scheduler."""
    import time

    small_tiff(tmp_path / "in", cells)
    viewer = make_napari_viewer()
    _dock, widget = batch_dock(viewer, tiny_bundle, tmp_path / "in", tmp_path / "out", idle_cluster.scheduler_address)
    assert widget.run() is not None
    qtbot.waitUntil(lambda: bool(idle_cluster.scheduler.tasks), timeout=60_000)  # submitted, waiting for a worker
    start = time.monotonic()
    widget.cancel()
    assert time.monotonic() - start < 0.5
    qtbot.waitUntil(lambda: widget.worker is None, timeout=15_000)
    assert widget.status.text().startswith("stopped (run again to resume)")
    qtbot.waitUntil(lambda: not idle_cluster.scheduler.tasks, timeout=15_000)  # cancelled and released


def test_closing_the_batch_dock_or_the_window_stops_its_run(
    make_napari_viewer, qtbot, tiny_bundle, cells, tmp_path, idle_cluster
):
    """The dock's 'x' takes it out of the window without destroying it, and the run went on out of sight (a
    second run from a reopened dock then ran beside it); closing the window asked the worker to quit, which it
    could not while it waited for tasks. Both stop the run now."""
    from qtpy.QtCore import QCoreApplication, QEvent

    small_tiff(tmp_path / "in", cells)
    viewer = make_napari_viewer()
    dock, widget = batch_dock(viewer, tiny_bundle, tmp_path / "in", tmp_path / "out", idle_cluster.scheduler_address)
    assert widget.run() is not None
    qtbot.waitUntil(lambda: bool(idle_cluster.scheduler.tasks), timeout=60_000)
    dock.destroyOnClose()  # what the dock's 'x' does
    qtbot.waitUntil(lambda: widget.worker is None, timeout=15_000)
    assert widget.status.text().startswith("stopped")

    _dock, widget = batch_dock(viewer, tiny_bundle, tmp_path / "in", tmp_path / "out", idle_cluster.scheduler_address)
    worker = widget.run()
    qtbot.waitUntil(lambda: bool(idle_cluster.scheduler.tasks), timeout=60_000)
    with qtbot.waitSignal(worker.finished, timeout=15_000):
        viewer.close()
        QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete.value)  # the window and its docks go
    qtbot.waitUntil(lambda: not idle_cluster.scheduler.tasks, timeout=15_000)


def test_overwrite_redoes_the_results_of_an_earlier_run(
    make_napari_viewer, qtbot, tiny_bundle, cells, tmp_path, scheduler, monkeypatch
):
    """A rerun into the same folder after the model changed was refused ("replace it with --overwrite"), and the
    dock had no way to overwrite: now its 'overwrite finished results' box does (not remembered: a new dock starts
    without it)."""
    from copy import deepcopy

    import torch

    from napari_unet.pipeline import model_digest, read_settings
    from napari_unet.plugin import _batch

    errors = []
    monkeypatch.setattr(_batch, "show_error", errors.append)
    small_tiff(tmp_path / "in", cells)
    viewer = make_napari_viewer()
    _dock, widget = batch_dock(viewer, tiny_bundle, tmp_path / "in", tmp_path / "out", scheduler)
    with qtbot.waitSignal(widget.finished, timeout=120_000):
        assert widget.run() is not None
    output = tmp_path / "out" / "a_labels.tif"
    assert read_settings(output)["weights"] == model_digest(tiny_bundle)
    changed = deepcopy(tiny_bundle)  # fine-tuned further, say
    with torch.no_grad():
        next(changed.net.parameters()).mul_(1.5)
    session_for(viewer).set_model(changed)
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert "exists from a run with" in errors[-1] and "tick 'overwrite finished results'" in errors[-1]
    assert read_settings(output)["weights"] == model_digest(tiny_bundle)
    widget.overwrite_box.setChecked(True)
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert widget.status.text().startswith("finished") and read_settings(output)["weights"] == model_digest(changed)
    assert not _batch.BatchWidget(viewer).overwrite_box.isChecked()


def test_a_model_with_an_object_diameter_runs_only_at_its_scale(
    make_napari_viewer, qtbot, tiny_bundle, cells, tmp_path, scheduler, monkeypatch
):
    """The workers segment at the images' own scale: `predict --workers` refuses a model trained at a scale
    unless --diameter says the objects are that size; the dock ran it on images of any scale. Now it refuses it,
    and runs it once its object diameter is the model's."""
    from dataclasses import replace

    from napari_unet.pipeline import read_settings
    from napari_unet.plugin import _batch

    errors = []
    monkeypatch.setattr(_batch, "show_error", errors.append)
    small_tiff(tmp_path / "in", cells)
    viewer = make_napari_viewer()
    scaled = replace(tiny_bundle, object_diameter=20.0)
    _dock, widget = batch_dock(viewer, scaled, tmp_path / "in", tmp_path / "out", scheduler)
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert "this model expects objects 20 px across" in errors[-1] and "object diameter of 20 px" in errors[-1]
    assert not (tmp_path / "out" / "a_labels.tif").exists()
    widget.diameter_spin.setValue(20.0)
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert widget.status.text().startswith("finished")
    assert read_settings(tmp_path / "out" / "a_labels.tif")["diameter"] == 20.0
