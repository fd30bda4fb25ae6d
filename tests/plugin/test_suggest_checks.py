"""Fine-tune's "Suggest where to annotate": the annotations checked as Start checks them, the "not annotated" value,
single planes stored as stacks, the plane the viewer shows, planes too large for the uncertainty."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet import scale
from napari_unet.plugin import _start_from, _suggest
from napari_unet.plugin._finetune import FineTuneWidget
from napari_unet.plugin._state import session_for

pytestmark = pytest.mark.viewer


def few_cells(labels: np.ndarray, count: int = 6) -> np.ndarray:
    """The annotations of `count` cells near the image centre, as a user annotating a few would paint them."""
    ids = [i for i in np.unique(labels[64:128, 64:160]) if i][:count]
    return np.where(np.isin(labels, ids), labels, 0).astype(np.int32)


def dock(viewer, tmp_path, bundle, image_layer, labels_layer) -> FineTuneWidget:
    session_for(viewer).set_model(bundle)
    widget = FineTuneWidget(viewer, autosave_root=tmp_path / "autosave", start_from=_start_from.START_SESSION)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    widget.image_combo.value, widget.labels_combo.value = image_layer, labels_layer
    return widget


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    shown: list[str] = []
    monkeypatch.setattr(_suggest, "show_error", shown.append)
    return shown


def suggest(widget, qtbot) -> list[tuple[int, int, int, int]]:
    with qtbot.waitSignal(widget.suggested, timeout=60_000) as done:
        assert widget.suggest() is not None
    return done.args[0]


def test_a_labels_layer_of_another_size_is_refused_as_start_refuses_it(
    make_napari_viewer_proxy, tmp_path, cells, tiny_bundle, errors
):
    """A Labels layer of another shape was silently left out: the boxes then fell on the painted cells."""
    image, labels = cells
    viewer = make_napari_viewer_proxy()
    padded = np.zeros((200, 230), np.int32)
    padded[: image.shape[0], : image.shape[1]] = few_cells(labels)
    widget = dock(viewer, tmp_path, tiny_bundle, viewer.add_image(image), viewer.add_labels(padded, name="painted"))
    assert widget.suggest() is None
    assert "annotate on a Labels layer of the image's size" in errors[-1]
    assert widget.status.text() == f"No suggestions: {errors[-1]}", "the status line keeps the reason"


def test_the_not_annotated_value_of_16_bit_labels_is_no_painted_cell(
    make_napari_viewer_proxy, qtbot, tmp_path, cells, tiny_bundle
):
    """uint16 labels whose unpainted pixels hold 65535 ("not annotated", docs/formats.md) counted as annotated
    everywhere: no region was ever suggested."""
    image, labels = cells
    painted = few_cells(labels)
    sparse = np.where(painted > 0, painted, 65535).astype(np.uint16)
    viewer = make_napari_viewer_proxy()
    widget = dock(viewer, tmp_path, tiny_bundle, viewer.add_image(image), viewer.add_labels(sparse, name="sparse"))
    boxes = suggest(widget, qtbot)
    assert boxes
    for y0, x0, y1, x1 in boxes:
        assert not painted[y0:y1, x0:x1].any()


def test_a_single_plane_stored_as_a_stack_gets_suggestions(
    make_napari_viewer_proxy, qtbot, tmp_path, cells, tiny_bundle
):
    """A (1, H, W) image was refused as "a stack"."""
    image, labels = cells
    painted = few_cells(labels)
    viewer = make_napari_viewer_proxy()
    widget = dock(viewer, tmp_path, tiny_bundle, viewer.add_image(image[None]), viewer.add_labels(painted[None]))
    boxes = suggest(widget, qtbot)
    assert boxes and len(widget.suggestions.layer.data) == len(boxes)
    for (y0, x0, y1, x1), rectangle in zip(boxes, widget.suggestions.layer.data):
        assert not painted[y0:y1, x0:x1].any()
        np.testing.assert_array_equal(rectangle[:, 0], 0)  # on the image's only plane
    assert "of plane" not in widget.status.text()


def test_suggestions_for_a_stack_are_made_on_the_plane_the_viewer_shows(
    make_napari_viewer_proxy, qtbot, tmp_path, cells, tiny_bundle, monkeypatch
):
    image, labels = cells
    stack = np.stack([image, image[::-1], image[:, ::-1]])
    annotations = np.zeros(stack.shape, np.int32)
    annotations[0] = few_cells(labels)
    annotations[2, 10:20, 30:40] = 65535  # int32: not the "not annotated" value (-1), a painted cell
    asked, answers = [], [[(100, 120, 164, 184)], []]

    def recorded(model, plane, annotated, device):
        asked.append((plane, annotated))
        return answers[len(asked) - 1]

    monkeypatch.setattr(_suggest, "suggest_annotation", recorded)
    viewer = make_napari_viewer_proxy()
    widget = dock(viewer, tmp_path, tiny_bundle, viewer.add_image(stack), viewer.add_labels(annotations))
    viewer.dims.set_current_step(0, 2)
    assert suggest(widget, qtbot) == [(100, 120, 164, 184)]
    ((plane, annotated),) = asked
    np.testing.assert_array_equal(plane, stack[2][None])
    np.testing.assert_array_equal(annotated, annotations[2] > 0)
    (rectangle,) = widget.suggestions.layer.data
    np.testing.assert_array_equal(rectangle, [[2, 100, 120], [2, 100, 184], [2, 164, 184], [2, 164, 120]])
    assert "of plane 2" in widget.status.text()
    assert suggest(widget, qtbot) == []  # no box: an empty layer of the stack's dimensions
    assert len(widget.suggestions.layer.data) == 0 and widget.suggestions.layer.ndim == 3
    assert widget.status.text() == "No uncertain region of plane 2 found away from the annotations"


def test_a_plane_too_large_for_the_uncertainty_is_refused_before_the_work(
    make_napari_viewer_proxy, tmp_path, cells, tiny_bundle, errors, monkeypatch
):
    """The Segment dock's test-time augmentation refused planes too large to hold in memory; the suggestions, which
    hold the plane and its probabilities as it does, tried them."""
    image, labels = cells
    monkeypatch.setattr(scale, "MAX_RESCALE_BYTES", image.size * 8 - 1)  # one (2, H, W) float32 array is too much
    viewer = make_napari_viewer_proxy()
    widget = dock(viewer, tmp_path, tiny_bundle, viewer.add_image(image), viewer.add_labels(few_cells(labels)))
    assert widget.suggest() is None
    assert errors[-1].startswith("the uncertainty holds a plane of 192x224 px")
