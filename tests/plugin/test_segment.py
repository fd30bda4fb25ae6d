"""Segment dock: tiles stream into the layer from a worker, the end result is the core's, cancel is clean."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_unet.plugin._segment import SegmentWidget
from napari_unet.plugin._state import session_for
from napari_unet.postprocess import probs_to_labels
from napari_unet.synthetic import make_cells
from napari_unet.tiling import tile_grid

pytestmark = pytest.mark.viewer

TILE = 48  # small tiles: many of them, so the streaming is observable


def open_dock(viewer, bundle):
    widget = SegmentWidget(viewer, default_model=None)
    viewer.window.add_dock_widget(widget, name="Segment")
    session_for(viewer).set_model(bundle)
    widget.tile_spin.setValue(TILE)
    return widget


def watch_layer_threads(layer) -> list[str]:
    """Names of the threads that emitted data/refresh events of `layer`."""
    threads: list[str] = []
    for emitter in (layer.events.data, layer.events.set_data):
        emitter.connect(lambda _event: threads.append(threading.current_thread().name))
    return threads


def test_tiles_stream_into_the_layer_and_the_result_is_predict_tiled_plus_postprocessing(
    make_napari_viewer_proxy, qtbot, tiny_bundle
):
    image, _ = make_cells((384, 384), seed=1)
    viewer = make_napari_viewer_proxy(show=True)
    viewer.add_image(image, name="cells")
    widget = open_dock(viewer, tiny_bundle)
    widget.probs_check.setChecked(True)
    widget.tile_spin.setValue(32)
    total = len(tile_grid(tiny_bundle.net, image.shape, 32))

    # pause the worker twice mid-run: what the canvas shows then is the streamed, partial result
    pause_at = [total // 8, total // 2]
    canvases, written = [], []
    yields = 0

    def pause_when_due(_update):
        # runs in the worker's thread (direct connection), so the pause holds before its next tile: counted on the
        # main thread, a busy machine let the worker finish before the pause was asked for
        nonlocal yields
        yields += 1
        if pause_at and yields >= pause_at[0]:
            pause_at.pop(0)
            worker.pause()

    with qtbot.waitSignal(widget.segmented, timeout=60_000) as final:
        worker = widget.run()
        worker.yielded.connect(pause_when_due, Qt.ConnectionType.DirectConnection)
        threads = watch_layer_threads(widget.labels_layer)
        for _ in range(2):
            with qtbot.waitSignal(worker.paused, timeout=30_000):
                pass
            qtbot.waitUntil(lambda: not widget.refresh_pending(), timeout=5_000)
            written.append(widget.tiles_written)
            canvases.append(viewer.screenshot(canvas_only=True, flash=False))
            worker.resume()
    labels = final.args[0]
    canvases.append(viewer.screenshot(canvas_only=True, flash=False))
    assert written[0] < written[1] < total, written
    assert not np.array_equal(canvases[0], canvases[1]) and not np.array_equal(canvases[1], canvases[2])
    assert (widget.probs_fg > 0).sum() == image.size

    assert widget.tiles_written == total
    assert set(threads) <= {threading.main_thread().name}

    probs = tiny_bundle.predict(image, tile_size=32, device="cpu")
    np.testing.assert_array_equal(widget.probs_fg, probs[1])
    expected = probs_to_labels(probs[1], widget.postprocess_config())
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(widget.labels_layer.data, expected)
    assert widget.labels_layer.data is widget.labels and widget.probs_layer.data is widget.probs_fg

    # retune: new parameters re-post-process the kept probabilities without running the network
    with qtbot.waitSignal(widget.segmented, timeout=10_000) as retuned:
        widget.postprocess_fields.threshold.setValue(0.7)
        widget.postprocess_fields.grow.setValue(0.3)
        widget.postprocess_fields.split.setChecked(True)
    config = widget.postprocess_config()
    assert config.threshold == pytest.approx(0.7) and config.watershed and config.grow_threshold == pytest.approx(0.3)
    np.testing.assert_array_equal(retuned.args[0], probs_to_labels(probs[1], config))


def test_test_time_augmentation_shows_each_orientation_and_ends_with_predict_tta(
    make_napari_viewer_proxy, qtbot, tiny_bundle
):
    image, _ = make_cells((160, 160), seed=2)
    viewer = make_napari_viewer_proxy()
    viewer.add_image(image, name="cells")
    widget = open_dock(viewer, tiny_bundle)
    widget.tta_check.setChecked(True)
    with qtbot.waitSignal(widget.segmented, timeout=60_000) as final:
        widget.run()
    assert widget.tiles_written == widget.progress.maximum() == 8  # one update of the plane per orientation
    probs = tiny_bundle.predict(image, tile_size=TILE, device="cpu", tta=True)
    np.testing.assert_array_equal(widget.probs_fg, probs[1])
    np.testing.assert_array_equal(final.args[0], probs_to_labels(probs[1], widget.postprocess_config()))
    assert not np.array_equal(probs[1], tiny_bundle.predict(image, tile_size=TILE, device="cpu")[1])


def test_cancel_midway_leaves_every_tile_written_or_untouched(make_napari_viewer_proxy, qtbot, tiny_bundle):
    image = np.random.default_rng(0).random((320, 320), dtype=np.float32)
    viewer = make_napari_viewer_proxy()
    viewer.add_image(image, name="noise")
    widget = open_dock(viewer, tiny_bundle)
    with qtbot.waitSignal(widget.stopped, timeout=60_000):
        worker = widget.run()
        worker.yielded.connect(lambda _update: widget.tiles_written == 3 and worker.pause())
        with qtbot.waitSignal(worker.paused, timeout=30_000):
            pass  # held after a few tiles (a tiny network would otherwise finish before the click lands)
        widget.cancel()
    grid = tile_grid(tiny_bundle.net, image.shape, TILE)
    assert 3 <= widget.tiles_written < len(grid), "the run finished before the cancel took effect"

    expected = tiny_bundle.predict(image, tile_size=TILE, device="cpu")[1]
    written = untouched = 0
    for tile in grid:
        probs, labels = widget.probs_fg[tile.region], widget.labels[tile.region]
        if np.array_equal(probs, expected[tile.region]):
            written += 1
        else:
            assert not probs.any() and not labels.any(), f"tile {tile.index} is partly written"
            untouched += 1
    assert written == widget.tiles_written and untouched == len(grid) - written
    assert "Cancelled" in widget.status.text()


def test_bad_situations_are_notifications(make_napari_viewer_proxy, qtbot, tiny_bundle, monkeypatch):
    from napari_unet.plugin import _segment, _state

    messages = []
    monkeypatch.setattr(_segment, "show_error", messages.append)
    monkeypatch.setattr(_state, "show_error", messages.append)  # the session loads models for the docks
    viewer = make_napari_viewer_proxy()
    widget = SegmentWidget(viewer, default_model=None)
    viewer.window.add_dock_widget(widget)
    assert widget.run() is None and "No model" in messages[-1]
    session_for(viewer).set_model(tiny_bundle)
    assert widget.run() is None and "No image layer" in messages[-1]
    viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="photo", rgb=True)
    widget.reset_choices()
    assert widget.run() is None and "gives 3: choose its channels or grey" in messages[-1]  # RGB, grey model
    assert widget.load_model("/nonexistent/model") is False and "Cannot load" in messages[-1]

    viewer.add_image(np.full((64, 64), np.nan, np.float32), name="empty")
    widget.reset_choices()
    widget.image_combo.value = viewer.layers["empty"]
    worker = widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=20_000)
    assert worker is not None and "NaN" in messages[-1]

    monkeypatch.setattr("napari_unet.scale.MAX_RESCALE_BYTES", 1000)  # so that a 32 x 32 plane is "too large"
    widget.image_combo.value = viewer.layers["photo"]
    widget.channel_fields.grey.setChecked(True)
    widget.tta_check.setChecked(True)
    layers = len(viewer.layers)
    assert widget.run() is None and "test-time augmentation" in messages[-1]
    assert len(viewer.layers) == layers  # refused before any layer was made


def test_a_lazy_stack_is_segmented_plane_by_plane(make_napari_viewer_proxy, qtbot, tiny_bundle):
    import dask.array as da

    planes = [make_cells((96, 128), seed=seed)[0] for seed in range(3)]
    stack = da.from_array(np.stack(planes), chunks=(1, 48, 64))
    viewer = make_napari_viewer_proxy()
    viewer.add_image(stack, name="time series")
    widget = open_dock(viewer, tiny_bundle)
    with qtbot.waitSignal(widget.segmented, timeout=60_000) as done:
        widget.run()
    labels = done.args[0]
    assert labels.shape == (3, 96, 128) and widget.labels_layer.data.shape == (3, 96, 128)
    for plane, image in zip(labels, planes):
        probs = tiny_bundle.predict(image, tile_size=TILE, device="cpu")
        np.testing.assert_array_equal(plane, probs_to_labels(probs[1], widget.postprocess_config()))


def test_object_diameter_rescales_for_the_network_and_the_result_keeps_the_image_size(make_napari_viewer_proxy, qtbot):
    from test_diameter import bundle as threshold_bundle
    from test_diameter import disks

    from napari_unet.metrics import instance_scores

    truth = disks((200, 240), 16, 60)
    viewer = make_napari_viewer_proxy()
    viewer.add_image((truth > 0).astype(np.float32) * 100, name="disks")
    widget = open_dock(viewer, threshold_bundle(20.0))
    assert widget.diameter_spin.isEnabled() and widget.diameter() == "auto"
    with qtbot.waitSignal(widget.segmented, timeout=60_000) as done:
        widget.run()
    assert done.args[0].shape == truth.shape
    assert instance_scores(done.args[0], truth)["ap50"] == 1.0
    assert widget.estimated_diameter == pytest.approx(32, rel=0.15)
    assert widget.factor == pytest.approx(20 / widget.estimated_diameter)
    assert "estimated" in widget.diameter_label.text() and "x0.6" in widget.diameter_label.text()

    widget.diameter_spin.setValue(40.0)  # a given diameter: no estimate, rescaled by 20 / 40
    with qtbot.waitSignal(widget.segmented, timeout=60_000) as done:
        widget.run()
    assert widget.factor == 0.5 and "given" in widget.diameter_label.text()
    assert instance_scores(done.args[0], truth)["ap50"] == 1.0


def test_a_model_without_object_diameter_disables_the_control(make_napari_viewer_proxy, tiny_bundle):
    viewer = make_napari_viewer_proxy()
    widget = open_dock(viewer, tiny_bundle)
    assert not widget.diameter_spin.isEnabled()


def test_a_new_dock_has_the_builtin_model_and_segments_right_away(make_napari_viewer_proxy, qtbot):
    from napari_unet import builtin

    if "nuclei" not in builtin.names():
        pytest.skip("the built-in nuclei model's weights are not in this checkout (src/napari_unet/builtin_models)")
    from test_diameter import disks

    image = (disks((256, 256), 10, 40) > 0).astype(np.float32) * 200 + 20
    viewer = make_napari_viewer_proxy()
    viewer.add_image(image, name="nuclei")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment")
    assert "built-in: nuclei" in widget.model_row.label.text()
    with qtbot.waitSignal(widget.segmented, timeout=120_000) as done:
        widget.run()
    assert done.args[0].shape == image.shape and done.args[0].max() > 0


def test_the_uncertainty_layer_follows_the_segmentation(make_napari_viewer_proxy, qtbot, tiny_bundle):
    image, _ = make_cells((96, 112), seed=2)
    viewer = make_napari_viewer_proxy()
    viewer.add_image(image, name="cells")
    widget = open_dock(viewer, tiny_bundle)
    widget.uncertainty_check.setChecked(True)
    busy = []  # while the uncertainty is computed the model is in use: training it meanwhile crashed napari

    def starting_uncertainty(start=widget._start_uncertainty):
        worker = start()
        busy.append(session_for(viewer).busy)
        return worker

    widget._start_uncertainty = starting_uncertainty
    with qtbot.waitSignal(widget.segmented, timeout=60_000):
        widget.run()
    assert busy == [True]
    qtbot.waitUntil(lambda: not session_for(viewer).busy, timeout=10_000)
    layer = widget.uncertainty_layer
    assert layer is not None and layer in viewer.layers and layer.name == "cells uncertainty"
    assert layer.data.shape == image.shape and 0 <= layer.data.min() and 0 < layer.data.max() <= 1


def test_cancel_during_the_diameter_estimate_frees_the_dock_and_the_session(make_napari_viewer_proxy, qtbot):
    """A Cancel while the object diameter is estimated ended nothing (a quit worker sends no `returned`):
    Run stayed disabled and Fine-tune refused to train. Now the dock says it was cancelled and runs again."""
    from test_diameter import bundle as threshold_bundle
    from test_diameter import disks

    truth = disks((200, 240), 16, 60)
    viewer = make_napari_viewer_proxy()
    viewer.add_image((truth > 0).astype(np.float32) * 100, name="disks")
    widget = open_dock(viewer, threshold_bundle(20.0))
    started = threading.Event()
    release = threading.Event()
    estimate = widget.session.bundle.estimate_diameter

    def slow_estimate(*args, **kwargs):  # held until the Cancel has been clicked
        started.set()
        release.wait(30)
        return estimate(*args, **kwargs)

    widget.session.bundle.estimate_diameter = slow_estimate
    with qtbot.waitSignal(widget.stopped, timeout=60_000):
        worker = widget.run()
        assert started.wait(30)
        widget.cancel()
        release.set()
    qtbot.waitUntil(lambda: worker.is_running is False, timeout=30_000)
    assert widget.worker is None and not widget.session.segmenting
    assert widget.status.text() == "Cancelled before the first tile"
    del widget.session.bundle.estimate_diameter
    with qtbot.waitSignal(widget.segmented, timeout=60_000):
        assert widget.run() is not None  # Run works again


def test_closing_the_dock_mid_run_frees_the_session(make_napari_viewer_proxy, qtbot, tiny_bundle):
    image = np.random.default_rng(0).random((320, 320), dtype=np.float32)
    viewer = make_napari_viewer_proxy()
    viewer.add_image(image, name="noise")
    widget = open_dock(viewer, tiny_bundle)
    session = widget.session
    worker = widget.run()
    worker.yielded.connect(lambda _update: widget.tiles_written == 2 and worker.pause())
    with qtbot.waitSignal(worker.paused, timeout=30_000):
        pass
    assert session.segmenting
    with qtbot.waitSignal(worker.finished, timeout=30_000):
        viewer.window.remove_dock_widget(widget)  # deletes the widget: its slots are gone
        widget.deleteLater()
        worker.resume()
    qtbot.waitUntil(lambda: not session.segmenting, timeout=10_000)


def test_retuning_after_painting_keeps_the_corrections(make_napari_viewer_proxy, qtbot, tiny_bundle):
    """Touching a post-processing control re-post-processes the kept probabilities; if the result layer was
    painted meanwhile, the corrections stay and the retuned labels go to a new layer."""
    image, _ = make_cells((128, 128), seed=1)
    viewer = make_napari_viewer_proxy()
    viewer.add_image(image, name="cells")
    widget = open_dock(viewer, tiny_bundle)
    with qtbot.waitSignal(widget.segmented, timeout=60_000):
        widget.run()
    layer = widget.labels_layer
    with qtbot.waitSignal(widget.segmented, timeout=60_000):  # an untouched result is retuned in place
        widget.retune()
    assert widget.labels_layer is layer and len(viewer.layers) == 2
    layer.data[:10, :10] = 77  # a correction painted by hand
    corrected = layer.data.copy()
    with qtbot.waitSignal(widget.segmented, timeout=60_000):
        widget.retune()
    np.testing.assert_array_equal(layer.data, corrected)
    assert widget.labels_layer is not layer and widget.labels_layer.name == "cells labels (retuned)"
    assert not (widget.labels_layer.data[:10, :10] == 77).all()


def test_the_result_layers_keep_the_images_scale_and_units(make_napari_viewer_proxy, qtbot, tiny_bundle, tmp_path):
    """A calibrated stack opened by our reader (Z step 2 um, pixels 0.5 um): the labels and probability layers lie
    over it with its scale and units, and measured alone the labels keep its pixel size."""
    from napari_unet.io import write_tiff
    from napari_unet.metadata import PixelSize, StackSpacing
    from napari_unet.plugin._layers import layer_pixel_size

    planes = np.stack([make_cells((64, 72), seed=seed)[0] for seed in range(2)]).astype(np.float32)
    path = tmp_path / "stack.tif"
    write_tiff(path, planes, "ZYX", pixel_size=PixelSize(0.5, 0.5, "um"), spacing=StackSpacing(z=2.0))
    viewer = make_napari_viewer_proxy()
    (image,) = viewer.open(path, plugin="napari-unet-2015")
    widget = open_dock(viewer, tiny_bundle)
    widget.probs_check.setChecked(True)
    with qtbot.waitSignal(widget.segmented, timeout=60_000):
        widget.run()
    for layer in (widget.labels_layer, widget.probs_layer):
        assert tuple(layer.scale) == (2.0, 0.5, 0.5)
        assert tuple(layer.units) == tuple(image.units) and str(image.units[0]) == "micrometer"
    assert layer_pixel_size(widget.labels_layer) == {"y": 0.5, "x": 0.5, "unit": "um"}


def test_the_image_picker_keeps_the_users_choice_and_says_when_that_image_is_removed(
    make_napari_viewer_proxy, tiny_bundle
):
    """Layers added, moved or renamed leave the chosen image chosen; when it is removed, the status says so and
    names the image the dock would now segment."""
    from napari.layers import Image

    viewer = make_napari_viewer_proxy()
    for name in ("a", "b"):
        viewer.add_image(np.zeros((32, 32), np.float32), name=name)
    widget = open_dock(viewer, tiny_bundle)
    chosen = widget.image_combo.value = viewer.layers["b"]
    viewer.layers.insert(0, Image(np.zeros((32, 32), np.float32), name="c"))
    viewer.add_labels(np.zeros((32, 32), np.int32), name="painted")
    viewer.layers.move(1, 3)
    chosen.name = "b renamed"
    assert widget.image_combo.value == chosen  # == : the viewer proxy wraps each layer anew
    viewer.layers.remove(chosen)
    assert widget.image_combo.value is not None
    assert f"'b renamed' was removed: '{widget.image_combo.value.name}' is" in widget.status.text()


def test_an_image_opened_later_is_the_one_segmented_until_the_user_chooses_one(
    make_napari_viewer_proxy, qtbot, tiny_bundle
):
    """The picker stayed on the first image opened, so Run segmented it again after a second image was opened. Now an
    image added becomes the image to segment while the picker holds a preselection (not the probability map a Run
    adds); an image the user chose stays chosen when others are opened."""
    viewer = make_napari_viewer_proxy()
    viewer.add_image(make_cells((64, 64), seed=1)[0], name="first")
    widget = open_dock(viewer, tiny_bundle)
    widget.probs_check.setChecked(True)
    second = viewer.add_image(make_cells((64, 72), seed=2)[0], name="second")
    assert widget.image_combo.value == second
    with qtbot.waitSignal(widget.segmented, timeout=60_000) as done:
        widget.run()
    assert widget.labels_layer.name == "second labels" and done.args[0].shape == (64, 72)
    assert widget.probs_layer.name == "second probability" and widget.image_combo.value == second

    widget.image_combo.native.activated.emit(widget.image_combo.native.currentIndex())  # the user picks it
    viewer.add_image(np.zeros((32, 32), np.float32), name="third")
    assert widget.image_combo.value == second
    widget.image_combo.value = viewer.layers["first"]  # a choice made for the user
    viewer.add_image(np.zeros((32, 32), np.float32), name="fourth")
    assert widget.image_combo.value == viewer.layers["first"]


def test_a_refused_run_says_why_in_the_status_line(make_napari_viewer_proxy, qtbot, tiny_bundle, monkeypatch):
    """After a finished run, a Run refused for its settings (an object diameter out of the model's range) left
    "Done: N object(s)" in the status line, as if the new settings had been applied."""
    from napari_unet.modelfile import ModelBundle
    from napari_unet.plugin import _segment

    errors = []
    monkeypatch.setattr(_segment, "show_error", errors.append)
    viewer = make_napari_viewer_proxy()
    viewer.add_image(make_cells((64, 64), seed=1)[0], name="cells")
    sized = ModelBundle(tiny_bundle.net, postprocess=tiny_bundle.postprocess, object_diameter=20.0)
    widget = open_dock(viewer, sized)
    widget.diameter_spin.setValue(20.0)
    with qtbot.waitSignal(widget.segmented, timeout=60_000):
        widget.run()
    assert widget.status.text().startswith("Done:"), widget.status.text()

    widget.diameter_spin.setValue(2.0)
    assert widget.run() is None and errors
    assert widget.status.text() == f"Not run: {errors[-1]}" and "2.0 px" in errors[-1], widget.status.text()
    viewer.layers.remove("cells")
    assert widget.run() is None and widget.status.text() == "Not run: No image layer: open an image first"


def test_images_opened_with_segment_each_image_ticked_are_segmented_one_after_the_other(
    make_napari_viewer_proxy, qtbot, tiny_bundle
):
    """Drop images on the window and see them segmented: with the box ticked, each image opened or added from then on
    is segmented in turn (the maps the dock computes are not); an image open before, or opened with the box
    unticked, is not; Cancel drops the images still waiting."""
    viewer = make_napari_viewer_proxy()
    viewer.add_image(make_cells((64, 64), seed=1)[0], name="before")
    widget = open_dock(viewer, tiny_bundle)
    widget.probs_check.setChecked(True)
    viewer.add_image(make_cells((64, 64), seed=2)[0], name="unticked")
    qtbot.wait(50)
    assert widget.worker is None and widget.labels_layer is None
    widget.on_open_check.setChecked(True)
    results = []
    widget.segmented.connect(lambda labels: results.append(widget.labels_layer.name))
    viewer.add_image(make_cells((64, 72), seed=3)[0], name="first")
    viewer.add_image(make_cells((72, 64), seed=4)[0], name="second")
    qtbot.waitUntil(lambda: len(results) == 2, timeout=60_000)
    qtbot.wait(100)  # nothing more starts: the probability maps the runs added are not images to segment
    assert results == ["first labels", "second labels"] and widget.worker is None
    assert viewer.layers["second labels"].data.shape == (72, 64)
    assert "before labels" not in viewer.layers and "unticked labels" not in viewer.layers

    viewer.add_image(make_cells((64, 64), seed=5)[0], name="third")
    viewer.add_image(make_cells((64, 64), seed=6)[0], name="fourth")
    qtbot.waitUntil(lambda: widget.worker is not None, timeout=10_000)
    widget.cancel()
    assert widget._waiting == []  # "fourth" is dropped
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30_000)
    viewer.add_image(make_cells((64, 64), seed=7)[0], name="fifth")  # the queue still works after a Cancel
    qtbot.waitUntil(lambda: len(results) == 3, timeout=60_000)
    assert results[-1] == "fifth labels" and "fourth labels" not in viewer.layers


def test_segment_as_it_opens_waits_for_the_whole_result_and_skips_an_image_it_cannot_use(
    make_napari_viewer_proxy, qtbot, tiny_bundle, monkeypatch
):
    """An image opened while the previous one was post-processed started its run at once, and the previous image
    lost its final labels (only the tile previews stayed); an image refused for itself (RGB for a one-channel
    model) dropped every image waiting after it. Now each run ends with its result before the next starts, and
    only that image is skipped."""
    import time

    from napari_unet.plugin import _segment

    slow = _segment.postprocess_planes

    def slow_postprocess(*args, **kwargs):
        time.sleep(0.5)  # room to open the next image while this one is post-processed
        return slow(*args, **kwargs)

    monkeypatch.setattr(_segment, "postprocess_planes", slow_postprocess)
    viewer = make_napari_viewer_proxy()
    widget = open_dock(viewer, tiny_bundle)
    widget.on_open_check.setChecked(True)
    done = []
    widget.segmented.connect(lambda labels: done.append((widget.labels_layer.name, labels.copy())))
    viewer.add_image(make_cells((64, 64), seed=1)[0], name="first")
    qtbot.waitUntil(lambda: "post-processing" in widget.status.text(), timeout=30_000)
    viewer.add_image(np.zeros((48, 48, 3), np.uint8), name="rgb", rgb=True)
    viewer.add_image(make_cells((64, 72), seed=2)[0], name="second")
    qtbot.waitUntil(lambda: len(done) == 2, timeout=60_000)
    assert [name for name, _ in done] == ["first labels", "second labels"]
    first = viewer.layers["first labels"].data
    np.testing.assert_array_equal(first, done[0][1])  # the whole-image result, not the tiles' previews
    assert "rgb labels" not in viewer.layers


def uncertainty_on_open(make_viewer, bundle, monkeypatch, before):
    """A viewer and a Segment dock with `bundle` that segments images as they open and shows their uncertainty;
    `before()` is called in the worker as each uncertainty starts (to slow it down or hold it)."""
    from napari_unet.plugin import _segment

    uncertainty = _segment.stream_uncertainty

    def delayed(*args, **kwargs):
        before()
        return (yield from uncertainty(*args, **kwargs))

    monkeypatch.setattr(_segment, "stream_uncertainty", delayed)
    viewer = make_viewer()
    widget = open_dock(viewer, bundle)
    widget.uncertainty_check.setChecked(True)
    widget.on_open_check.setChecked(True)
    return viewer, widget


def test_segment_as_it_opens_waits_for_the_uncertainty_even_through_a_retune(
    make_napari_viewer_proxy, qtbot, tiny_bundle, monkeypatch
):
    """A retune while the uncertainty was computed emitted the result, so the next image waiting started before the
    uncertainty came (and the late uncertainty then ended the next run early). The next image now starts after
    the uncertainty layer is shown."""
    import time

    viewer, widget = uncertainty_on_open(make_napari_viewer_proxy, tiny_bundle, monkeypatch, lambda: time.sleep(1.0))
    seen_when_second_started = []
    viewer.layers.events.inserted.connect(
        lambda event: (
            event.value.name == "second labels"
            and seen_when_second_started.append("first uncertainty" in viewer.layers)
        )
    )
    done = []
    widget.segmented.connect(lambda labels: done.append(widget.labels_layer.name))
    viewer.add_image(make_cells((64, 64), seed=1)[0], name="first")
    qtbot.waitUntil(lambda: "Computing the uncertainty" in widget.status.text(), timeout=30_000)
    viewer.add_image(make_cells((64, 64), seed=2)[0], name="second")
    widget.retune()
    qtbot.waitUntil(lambda: "second uncertainty" in viewer.layers, timeout=60_000)
    qtbot.waitUntil(lambda: done[-1:] == ["second labels"], timeout=10_000)
    assert seen_when_second_started == [True]


def test_a_run_started_while_the_previous_image_is_post_processed_leaves_it_its_whole_result(
    make_napari_viewer_proxy, qtbot, tiny_bundle, monkeypatch
):
    """Run clicked on a second image while the first one's whole-image post-processing was under way superseded
    it: the first image's layer kept the tile previews (cells cut at tile borders). Its result now lands in its
    own layer, and the second run goes on."""
    import time

    from napari_unet.plugin import _segment

    slow = _segment.postprocess_planes

    def slow_postprocess(*args, **kwargs):
        time.sleep(0.5)  # room to click Run on the next image while this one is post-processed
        return slow(*args, **kwargs)

    monkeypatch.setattr(_segment, "postprocess_planes", slow_postprocess)
    viewer = make_napari_viewer_proxy()
    widget = open_dock(viewer, tiny_bundle)
    first = viewer.add_image(make_cells((64, 64), seed=1)[0], name="first")
    second = viewer.add_image(make_cells((64, 72), seed=2)[0], name="second")
    done = []
    widget.segmented.connect(lambda labels: done.append((widget.labels_layer.name, labels.copy())))
    widget.image_combo.value = first
    widget.run()
    qtbot.waitUntil(lambda: "post-processing" in widget.status.text(), timeout=30_000)
    widget.image_combo.value = second
    assert widget.run() is not None
    qtbot.waitUntil(lambda: len(done) == 1, timeout=60_000)
    assert done[0][0] == "second labels"
    qtbot.waitUntil(lambda: viewer.layers["first labels"].data.max() > 0, timeout=10_000)
    probs = tiny_bundle.predict(first.data, tile_size=32, device="cpu")  # what the first run's tiles add up to
    expected = probs_to_labels(probs[1], widget.postprocess_config())
    qtbot.waitUntil(lambda: np.array_equal(viewer.layers["first labels"].data, expected), timeout=10_000)


def test_corrections_painted_while_the_whole_image_is_post_processed_are_kept(
    make_napari_viewer_proxy, qtbot, tiny_bundle
):
    """A brush stroke made once the tiles were in, while the whole image was post-processed, was overwritten by
    the result (only a retune kept edits). The painted layer now keeps them and the result gets its own layer."""
    viewer = make_napari_viewer_proxy()
    widget = open_dock(viewer, tiny_bundle)
    viewer.add_image(make_cells((128, 128), seed=1)[0], name="cells")
    widget.stopped.connect(lambda: widget.labels_layer.paint((5, 5), 77, refresh=True))  # the user corrects
    with qtbot.waitSignal(widget.segmented, timeout=60_000):
        widget.run()
    assert viewer.layers["cells labels"].data[5, 5] == 77
    assert widget.labels_layer.name == "cells labels (result)" and widget.labels_layer.data[5, 5] != 77


def test_a_black_plane_of_a_stack_is_left_empty_and_the_others_are_segmented(
    make_napari_viewer_proxy, qtbot, tiny_bundle, monkeypatch
):
    """A stack with a black first frame failed as a whole ("image is constant") where `napari-unet predict`
    segments it: the black plane has no object, the others are segmented; one black image is still refused."""
    from napari_unet.plugin import _segment

    errors = []
    monkeypatch.setattr(_segment, "show_error", errors.append)
    image = make_cells((96, 96), seed=1)[0]
    viewer = make_napari_viewer_proxy()
    widget = open_dock(viewer, tiny_bundle)
    widget.uncertainty_check.setChecked(True)
    viewer.add_image(np.stack([np.zeros_like(image), image, image]).astype(np.float32), name="stack")
    with qtbot.waitSignal(widget.segmented, timeout=90_000):
        widget.run()
    assert not errors
    assert widget.labels[0].max() == 0 and widget.labels[1].max() > 0 and widget.labels[2].max() > 0
    assert viewer.layers["stack uncertainty"].data[0].max() == 0
    viewer.add_image(np.zeros((96, 96), np.float32), name="black")
    widget.image_combo.value = viewer.layers["black"]
    with qtbot.waitSignal(widget.stopped, timeout=30_000):
        widget.run()
    qtbot.waitUntil(lambda: bool(errors), timeout=10_000)
    assert "constant" in errors[-1]


@pytest.mark.parametrize("how", ["rescaled", "tta"])
def test_a_black_frame_of_a_tiff_stack_opened_by_the_reader_is_left_empty(
    make_napari_viewer_proxy, qtbot, tiny_bundle, tmp_path, monkeypatch, how
):
    """The plugin's reader opens an uncompressed TIFF as a memory map: a black frame of it failed the whole run
    ("image is constant") when the image was rescaled (a model with an object diameter) or averaged over 8
    orientations. It is now left empty, as in memory and as `predict` does."""
    from napari_unet.io import write_tiff
    from napari_unet.modelfile import ModelBundle
    from napari_unet.plugin import _segment

    errors = []
    monkeypatch.setattr(_segment, "show_error", errors.append)
    image = make_cells((96, 96), seed=1)[0]
    path = tmp_path / "frames.tif"
    write_tiff(path, np.stack([image, np.zeros_like(image), image]).astype(np.float32), "TYX")
    viewer = make_napari_viewer_proxy()
    (layer,) = viewer.open(path, plugin="napari-unet-2015")
    assert isinstance(layer.data, np.memmap)
    sized = ModelBundle(tiny_bundle.net, postprocess=tiny_bundle.postprocess, object_diameter=20.0)
    widget = open_dock(viewer, sized if how == "rescaled" else tiny_bundle)
    widget.diameter_spin.setValue(30.0)  # rescaled x0.67 (no effect on a model without an object diameter)
    widget.tta_check.setChecked(how == "tta")
    with qtbot.waitSignal(widget.stopped, timeout=90_000):  # a failure is said before the tiles' end
        widget.run()
    assert not errors
    qtbot.waitUntil(lambda: not widget._busy, timeout=30_000)  # the whole-image result
    assert widget.factor == (pytest.approx(2 / 3) if how == "rescaled" else 1.0)
    assert not widget.labels_layer.data[1].any() and not widget.probs_fg[1].any()
    assert widget.probs_fg[0].any() and widget.probs_fg[2].any()


def test_the_auto_diameter_of_a_stack_with_a_black_first_frame_is_estimated_on_the_next(
    make_napari_viewer_proxy, qtbot
):
    """ "auto" estimated the objects' size on the first plane only: a stack whose first frame is black found no
    object and was segmented at scale 1. The estimate now uses the first plane that is not black."""
    from test_diameter import bundle as threshold_bundle
    from test_diameter import disks

    truth = disks((200, 240), 16, 60)
    image = (truth > 0).astype(np.float32) * 100
    viewer = make_napari_viewer_proxy()
    viewer.add_image(np.stack([np.zeros_like(image), image, image]), name="frames")
    widget = open_dock(viewer, threshold_bundle(20.0))
    with qtbot.waitSignal(widget.segmented, timeout=90_000) as done:
        widget.run()
    assert widget.estimated_diameter == pytest.approx(32, rel=0.15)
    assert (
        widget.factor == pytest.approx(20 / widget.estimated_diameter) and "estimated" in widget.diameter_label.text()
    )
    assert not done.args[0][0].any() and done.args[0][1].max() > 0


def test_corrections_painted_while_the_tiles_stream_are_kept(make_napari_viewer_proxy, qtbot, tiny_bundle):
    """A correction painted in a finished plane of a stack while its later planes were computed was overwritten by
    the whole-image result. Painting during the stream now counts as an edit: the painted layer keeps it and the
    result gets a layer of its own."""
    image = make_cells((96, 96), seed=1)[0]
    viewer = make_napari_viewer_proxy()
    viewer.add_image(np.stack([image, image, image]), name="z")
    widget = open_dock(viewer, tiny_bundle)
    per_plane = len(tile_grid(tiny_bundle.net, image.shape, TILE))
    yields = 0

    def pause_after_the_first_plane(_update):  # in the worker's thread: the pause holds before its next tile
        nonlocal yields
        yields += 1
        if yields == per_plane:
            worker.pause()

    with qtbot.waitSignal(widget.segmented, timeout=60_000) as done:
        worker = widget.run()
        worker.yielded.connect(pause_after_the_first_plane, Qt.ConnectionType.DirectConnection)
        with qtbot.waitSignal(worker.paused, timeout=30_000):
            pass
        painted = widget.labels_layer
        qtbot.waitUntil(lambda: widget.tiles_written == per_plane, timeout=10_000)
        painted.paint((0, 15, 15), 77, refresh=True)  # the user corrects plane 0; planes 1 and 2 are to come
        worker.resume()
    assert painted.data[0, 15, 15] == 77 and painted.data[2].any()  # the later planes' previews came in
    assert widget.labels_layer is not painted and widget.labels_layer.name == "z labels (result)"
    assert widget.labels_layer.data is done.args[0] and done.args[0][0, 15, 15] != 77


def test_cancel_stops_the_uncertainty_and_drops_the_images_waiting(
    make_napari_viewer_proxy, qtbot, tiny_bundle, monkeypatch
):
    """While the uncertainty (4x the time) was computed, Cancel was disabled: it could neither stop it nor drop
    the images waiting to be segmented as they opened. It now does both; the result stays, without the layer."""
    computing, release = threading.Event(), threading.Event()
    viewer, widget = uncertainty_on_open(  # the uncertainty held in the worker until Cancel was clicked
        make_napari_viewer_proxy, tiny_bundle, monkeypatch, lambda: (computing.set(), release.wait(30))
    )
    viewer.add_image(make_cells((64, 64), seed=1)[0], name="first")
    qtbot.waitUntil(computing.is_set, timeout=60_000)
    run_button, cancel_button = widget.controls.buttons
    assert cancel_button.isEnabled() and run_button.isEnabled()
    viewer.add_image(make_cells((64, 64), seed=2)[0], name="next")  # opened while the uncertainty is computed
    qtbot.waitUntil(lambda: len(widget._waiting) == 1, timeout=10_000)
    with qtbot.waitSignal(widget.segmented, timeout=60_000) as done:
        cancel_button.click()
        assert widget._waiting == []
        release.set()
    assert done.args[0] is viewer.layers["first labels"].data
    qtbot.waitUntil(lambda: not cancel_button.isEnabled(), timeout=10_000)
    qtbot.wait(200)
    assert "Uncertainty cancelled" in widget.status.text()
    assert "first uncertainty" not in viewer.layers and "next labels" not in viewer.layers


def test_a_model_loaded_after_a_run_does_not_retune_its_result_with_its_settings(
    make_napari_viewer_proxy, qtbot, tiny_bundle
):
    """A model loaded while a run's result is shown puts its post-processing in the controls (for the next run);
    touching one control then retuned the result with all of the new model's settings. Only the touched setting
    now changes the result's post-processing."""
    from napari_unet.modelfile import ModelBundle
    from napari_unet.postprocess import PostprocessConfig

    image = make_cells((96, 96), seed=1)[0]
    viewer = make_napari_viewer_proxy()
    viewer.add_image(image, name="cells")
    widget = open_dock(viewer, tiny_bundle)
    with qtbot.waitSignal(widget.segmented, timeout=60_000):
        widget.run()
    result = widget._postprocess
    membranes = PostprocessConfig(threshold=0.3, min_size=40, flood=True)
    session_for(viewer).set_model(ModelBundle(tiny_bundle.net, postprocess=membranes))
    assert widget.postprocess_config() == membranes  # the controls show the new model's, for the next run
    with qtbot.waitSignal(widget.segmented, timeout=60_000) as retuned:
        widget.postprocess_fields.min_size.setValue(41)
    assert widget._postprocess == PostprocessConfig(threshold=result.threshold, min_size=41)
    np.testing.assert_array_equal(retuned.args[0], probs_to_labels(widget.probs_fg, widget._postprocess))


def test_segment_as_it_opens_segments_a_file_split_into_channel_layers_once(make_napari_viewer_proxy, qtbot, tmp_path):
    """With a model of two channels, each channel layer of a file opened one layer per channel was queued, and the
    file was segmented once per layer, with identical results. It is now segmented once."""
    import tifffile
    import torch

    from napari_unet.model import UNet
    from napari_unet.modelfile import ModelBundle
    from napari_unet.postprocess import PostprocessConfig

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = ModelBundle(UNet(in_channels=2, depth=2, base_channels=4), postprocess=PostprocessConfig(min_size=4))
    image = make_cells((96, 96), seed=1)[0]
    path = tmp_path / "two.tif"
    channels = (np.stack([image, image[::-1]]) * 1000).astype(np.uint16)
    tifffile.imwrite(path, channels, imagej=True, metadata={"axes": "CYX"})
    viewer = make_napari_viewer_proxy()
    widget = open_dock(viewer, model)
    widget.on_open_check.setChecked(True)
    runs = []
    widget.segmented.connect(lambda _labels: runs.append(widget.labels_layer.name))
    layers = viewer.open(path, plugin="napari-unet-2015")
    assert len(layers) == 2
    qtbot.waitUntil(lambda: len(runs) == 1, timeout=60_000)
    qtbot.wait(300)
    assert runs == [f"{layers[0].name} labels"] and widget.worker is None and widget._waiting == []
    assert f"{layers[1].name} labels" not in viewer.layers
