"""The Fine-tune dock's "Suggest where to annotate": boxes where the starting model is least sure of itself
(`jobs.finetune.suggest_annotation`, in a worker), shown as a Shapes layer of yellow rectangles, on the plane of
the image the viewer shows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_warning
from qtpy.QtWidgets import QPushButton

from napari_unet.device import select_device
from napari_unet.jobs.finetune import suggest_annotation
from napari_unet.targets import unannotated_as_background
from napari_unet.uncertainty import check_uncertainty_size

from ._augment_preview import plane_words, shown_stack_plane
from ._layers import LayerProblem, annotations_of, pixel_shape, plane_stack
from ._workers import alive, start_worker


class Suggestions:
    """The button, its worker and the Shapes layer it fills (replaced at each suggestion).

    status: the dock's status line; suggested: called with the boxes (y0, x0, y1, x1) once they are shown.
    """

    def __init__(self, dock: Any, viewer: Any, status: Any, suggested: Callable[[list], Any]):
        self.dock, self.viewer, self.status, self.suggested = dock, viewer, status, suggested
        self.layer: Any = None
        self.button = QPushButton("Suggest where to annotate")
        self.button.setToolTip(
            "Boxes (a Shapes layer) where the starting model is least sure of itself (its answers disagree when "
            "the image is flipped), away from the cells already painted"
        )

    def start(
        self,
        bundle: Callable[[], Any],
        image_layer: Any,
        labels_layer: Any,
        device: str,
        channels: Callable[[Any], Any] = lambda model: None,
    ) -> Any:
        """Ask the model `bundle()` about the plane of the image layer the viewer shows (the only one of a 2-D image
        or of a (1, H, W) stack), away from the cells painted on it in `labels_layer` (checked as Start checks it,
        `annotations_of`; the "not annotated" value is not a cell), in a worker. Returns the worker, or None after
        a notification and a status line that say why.

        channels: the `channels.ChannelChoice` applied to the image for that model (None: all its channels), as
        for training on it.
        """
        session = self.dock.session
        if session.training:
            show_warning("The model is being trained: wait for the end of the run (or stop it), then ask again")
            return None
        try:
            model = bundle()
            if model is None:
                raise LayerProblem("No model to ask: choose a model to start from (or train one first)")
            if image_layer is None:
                raise LayerProblem("No image layer: open the image to annotate")
            stack = plane_stack(image_layer, model.net.config.in_channels, self.viewer.layers, channels(model))
            index = shown_stack_plane(self.viewer, image_layer, stack)
            # refused before the plane is read; at the model's object size it is checked again (`tta_uncertainty`)
            check_uncertainty_size(stack.plane(index), 1.0, model.net.config.num_classes)
            annotated = None
            if labels_layer is not None:
                annotated = unannotated_as_background(annotations_of(labels_layer, image_layer, stack))[index] > 0
            torch_device = select_device(device)
        except (LayerProblem, ValueError) as error:
            show_error(str(error))
            self.status.setText(f"No suggestions: {error}")  # a notification fades; the status line stays
            return None
        self.button.setEnabled(False)
        self.status.setText("Finding where the model is least sure…")
        worker = create_worker(
            suggest_annotation,
            model,
            np.asarray(stack.plane(index), dtype=np.float32),
            annotated,
            device=torch_device,
            _ignore_errors=True,
            _start_thread=False,
        )
        worker.finished.connect(session.hold())  # the model is in use: training it meanwhile could crash napari
        worker.returned.connect(lambda boxes: alive(self.dock) and self._show(image_layer, stack, index, boxes))
        worker.errored.connect(lambda error: alive(self.dock) and self._failed(error))
        start_worker(worker, self.dock)
        return worker

    def _show(
        self, image_layer: Any, stack: Any, index: tuple[int, ...], boxes: list[tuple[int, int, int, int]]
    ) -> None:
        self.button.setEnabled(True)
        corners = [[(y0, x0), (y0, x1), (y1, x1), (y1, x0)] for y0, x0, y1, x1 in boxes]
        # on the plane `index` of a stack: the rectangles are shown on that plane only (of every channel)
        points, placement = _placed(image_layer, stack, index)
        rectangles = [np.array([[*point, y, x] for y, x in box], float) for box in corners for point in points]
        if self.layer is not None and self.layer in self.viewer.layers:
            self.viewer.layers.remove(self.layer)
        active = self.viewer.layers.selection.active
        self.layer = self.viewer.add_shapes(
            rectangles,
            ndim=len(points[0]) + 2,  # that of the boxes' planes, even without a box
            shape_type="rectangle",
            name="annotate here",
            edge_color="yellow",
            face_color="transparent",
            edge_width=2,
            **placement,
        )
        # the boxes only show where to paint: the layer the user had (else the image) stays the active one, so that
        # Layers > New Labels Layer makes a layer of its size, not of the boxes'
        kept = active if active in self.viewer.layers else image_layer
        if kept in self.viewer.layers:
            self.viewer.layers.selection.active = kept
        where = plane_words(index) if len(stack.planes) > 1 else ""
        self.status.setText(
            f"{len(boxes)} region(s){where} to annotate next: paint the cells in the yellow boxes"
            if boxes
            else f"No uncertain region{where} found away from the annotations"
        )
        self.suggested(boxes)

    def _failed(self, error: Exception) -> None:
        self.button.setEnabled(True)
        show_error(f"Cannot suggest regions: {error}")
        self.status.setText(f"No suggestions: {error}")  # not "Finding where…" still: the notification fades


def _placed(image_layer: Any, stack: Any, index: tuple[int, ...]) -> tuple[list[tuple[int, ...]], dict[str, tuple]]:
    """Where the boxes of the plane `index` go in the Shapes layer (the coordinates before Y and X of each copy),
    and its `scale`, `translate` and `units`.

    napari lines layers up by their last axes: a layer of the image's axes less its channel axis lands on the
    wrong ones when that axis is among the image layer's own and not the first (over (Z, C, Y, X), boxes of
    (Z, Y, X) had their Z on the image's C axis: shown at c=2, a channel that does not exist, for z=2). There the
    layer has the image's axes and each box is drawn on the plane of every channel (a Shapes layer shows a box
    on one plane only). Else (2-D, C first, RGB colours, a file split into channel layers) the layer has the
    image's axes less the channel axis, and one copy of each box.
    """
    axis = stack.channel_axis
    if axis is None or axis == 0 or len(pixel_shape(image_layer)) == len(stack.output_shape()):
        return [index], {key: stack.spatial(getattr(image_layer, key)) for key in ("scale", "translate", "units")}
    points = [(*index[:axis], channel, *index[axis:]) for channel in range(int(stack.data.shape[axis]))]
    return points, {key: tuple(getattr(image_layer, key)) for key in ("scale", "translate", "units")}
