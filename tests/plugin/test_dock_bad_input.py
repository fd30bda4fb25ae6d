"""The docks' part of the bad-input catalogue (issue 10): wrong layer types, empty layers, bad values, and closing a
dock or the viewer mid-run. Each case ends in a notification that says what is wrong (never an exception out of a
slot) or in the documented behaviour, and nothing is written to the autosave folder by a refused run.

More dock cases: test_segment.py / test_finetune.py `test_bad_situations_are_notifications`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from napari_unet.model import UNet
from napari_unet.modelfile import ModelBundle, load_model
from napari_unet.plugin import _autosave, _finetune, _segment
from napari_unet.plugin._finetune import FineTuneWidget
from napari_unet.plugin._segment import SegmentWidget
from napari_unet.plugin._start_from import START_NEW
from napari_unet.plugin._state import session_for
from napari_unet.synthetic import make_cells

pytestmark = pytest.mark.viewer

TINY = {"depth": 2, "base_channels": 4, "dropout": 0.0}
QUICK = {"tile_size": 44, "learning_rate": 5e-3}


def snapshot(root: Path) -> dict[str, str]:
    return (
        {str(p): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}
        if root.exists()
        else {}
    )


@pytest.fixture
def small() -> tuple[np.ndarray, np.ndarray]:
    return make_cells((64, 64), seed=4)


def finetune_dock(viewer, qtbot, root: Path, iterations: int = 2) -> FineTuneWidget:
    widget = FineTuneWidget(
        viewer, autosave_root=root, net_overrides=TINY, train_overrides=QUICK, start_from=START_NEW
    )  # a tiny new network: these tests are about the inputs
    with qtbot.waitSignal(widget.estimated, timeout=60_000):
        viewer.window.add_dock_widget(widget, name="Fine-tune")
    widget.iterations_spin.setValue(iterations)
    return widget


# ----------------------------------------------------------------------------------------------- Segment dock


def nan_image(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float32)
    image[5, 5] = np.nan
    return image


SEGMENT_CASES = {
    "an image with one NaN pixel": (lambda image: nan_image(image), "NaN"),
    "an image with infinite values": (lambda image: np.where(image > 0.5, np.inf, image).astype(np.float32), "NaN"),
    "a constant image": (lambda image: np.full(image.shape, 3.0, np.float32), "constant"),
}


@pytest.mark.parametrize("case", list(SEGMENT_CASES), ids=list(SEGMENT_CASES))
def test_segment_dock_refuses_images_it_cannot_segment(make_napari_viewer_proxy, qtbot, monkeypatch, small, case):
    make, message = SEGMENT_CASES[case]
    messages = []
    monkeypatch.setattr(_segment, "show_error", messages.append)
    viewer = make_napari_viewer_proxy()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    session_for(viewer).set_model(ModelBundle(UNet(**TINY)))
    viewer.add_image(make(small[0]), name="bad")
    widget.reset_choices()
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30_000)
    assert messages and message in messages[-1]
    assert not session_for(viewer).segmenting


def test_segment_dock_offers_only_image_layers_and_checks_channels(make_napari_viewer_proxy, monkeypatch, small):
    messages = []
    monkeypatch.setattr(_segment, "show_error", messages.append)
    viewer = make_napari_viewer_proxy()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    viewer.add_labels(small[1], name="labels")
    viewer.add_points(np.zeros((3, 2)), name="points")
    widget.reset_choices()
    assert widget.image_combo.value is None  # wrong layer types are not offered
    session_for(viewer).set_model(ModelBundle(UNet(in_channels=2, **TINY)))
    assert widget.run() is None and "No image layer" in messages[-1]
    viewer.add_image(small[0], name="grey")
    widget.reset_choices()
    assert widget.run() is None and "expects 2 channel(s)" in messages[-1]


def test_closing_the_segment_dock_mid_run_stops_cleanly(make_napari_viewer_proxy, qtbot, monkeypatch):
    errors = []
    monkeypatch.setattr(_segment, "show_error", errors.append)
    viewer = make_napari_viewer_proxy()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment")
    session = session_for(viewer)
    session.set_model(ModelBundle(UNet(**TINY)))
    viewer.add_image(
        make_cells((256, 256), seed=1)[0], name="cells"
    )  # 512 x 512 hits a RecursionError inside napari (Cancel too)
    widget.reset_choices()
    widget.tile_spin.setValue(32)
    worker = widget.run()
    qtbot.waitUntil(lambda: widget.tiles_written >= 2, timeout=30_000)
    viewer.window.remove_dock_widget(widget)
    widget.deleteLater()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=30_000)
    assert not errors


# --------------------------------------------------------------------------------------------- Fine-tune dock


def test_finetune_dock_refuses_empty_and_mismatched_layers(
    make_napari_viewer_proxy, qtbot, tmp_path, monkeypatch, small
):
    messages = []
    monkeypatch.setattr(_finetune, "show_error", messages.append)
    image, labels = small
    viewer = make_napari_viewer_proxy()
    root = tmp_path / "autosave"
    widget = finetune_dock(viewer, qtbot, root)
    assert widget.start() is None and "No image layer" in messages[-1]
    viewer.add_image(image, name="cells")
    widget.reset_choices()
    assert widget.start() is None and "No Labels layer" in messages[-1]
    viewer.add_labels(np.zeros_like(labels), name="empty")
    widget.reset_choices()
    assert widget.start() is None and "No annotations" in messages[-1]
    viewer.layers["empty"].data = labels[:40]
    assert widget.start() is None and "40 x 64" in messages[-1]
    viewer.layers["empty"].data = labels.astype(np.int32)
    viewer.add_shapes(name="region")
    widget.reset_choices()
    widget.region_combo.value = viewer.layers["region"]
    assert widget.start() is None and "has no shapes" in messages[-1]
    viewer.add_labels(np.zeros_like(labels), name="region mask")
    widget.reset_choices()
    widget.region_combo.value = viewer.layers["region mask"]
    assert widget.start() is None and "is empty" in messages[-1]
    assert widget.worker is None and not session_for(viewer).training
    assert snapshot(root) == {}  # a refused run writes nothing


def test_finetune_dock_with_a_nan_image_fails_clearly_and_keeps_the_annotations(
    make_napari_viewer_proxy, qtbot, tmp_path, monkeypatch, small
):
    messages = []
    monkeypatch.setattr(_finetune, "show_error", messages.append)
    image, labels = small
    viewer = make_napari_viewer_proxy()
    root = tmp_path / "autosave"
    widget = finetune_dock(viewer, qtbot, root)
    viewer.add_image(nan_image(image), name="cells")
    viewer.add_labels(labels.astype(np.int32), name="annotations")
    widget.reset_choices()
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert "NaN" in messages[-1]
    saved = list((root / "annotations").glob(f"*{_autosave.SIDECAR_SUFFIX}"))
    assert len(saved) == 1 and np.array_equal(_autosave.load_annotations(saved[0]), labels)
    assert not (root / "models").exists() or not [p for p in (root / "models").iterdir()]  # nothing trained


def test_finetune_dock_trains_on_ids_above_2_31(make_napari_viewer_proxy, qtbot, tmp_path, small):
    image, labels = small
    viewer = make_napari_viewer_proxy()
    widget = finetune_dock(viewer, qtbot, tmp_path / "autosave")
    viewer.add_image(image, name="cells")
    viewer.add_labels(np.where(labels > 0, labels.astype(np.int64) + 2**31, 0), name="annotations")
    widget.reset_choices()
    widget.whole_check.setChecked(True)
    with qtbot.waitSignal(widget.finished, timeout=120_000) as done:
        assert widget.start() is not None
    assert load_model(done.args[0]).metadata["iterations"] == 2


def test_closing_the_viewer_mid_training_keeps_the_annotations_and_a_model(
    make_napari_viewer_proxy, qtbot, tmp_path, small
):
    image, labels = small
    viewer = make_napari_viewer_proxy()
    root = tmp_path / "autosave"
    widget = finetune_dock(viewer, qtbot, root, iterations=100_000)
    session = session_for(viewer)
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels.astype(np.int32), name="annotations")
    widget.reset_choices()
    widget.start()
    qtbot.waitUntil(lambda: len(widget.history.losses) >= 2, timeout=60_000)
    viewer.close()
    qtbot.waitUntil(lambda: not session.training, timeout=60_000)
    saved = list((root / "annotations").glob(f"*{_autosave.SIDECAR_SUFFIX}"))
    assert len(saved) == 1 and np.array_equal(_autosave.load_annotations(saved[0]), labels)
    models = [p for p in (root / "models").iterdir() if not p.name.startswith(".")]
    assert len(models) == 1 and load_model(models[0]).metadata["iterations"] >= 2
