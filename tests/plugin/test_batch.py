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
