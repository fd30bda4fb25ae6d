"""Weight-map dock: the paper's loss weights (eq. 2) of a Labels layer, shown as an Image layer.

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

Moving a slider recomputes the map in a worker thread (debounced), so the bright ridges between touching cells
follow w0 and sigma live without freezing the window. A stack of planes (Z, Y, X), such as cells painted in a Z
stack or a time series, gets a map per plane (`weights.stack_weight_maps`), shown as it comes, the plane in view
first; planes without painted cells weigh 0, since training leaves them out.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from napari.layers import Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QWidget

from napari_unet.train_config import label_kind
from napari_unet.training import PRESETS
from napari_unet.weights import stack_weight_maps, weight_map

from ._augment_preview import shown_plane
from ._form import check, dock_layout, form, slider, spin, wrapped_label
from ._layers import LayerPicker, debounced, is_users_labels, layer_combo, layer_data, result_metadata, throttled
from ._workers import alive, start_worker

BINARY_NOTE = (
    " This is a binary mask (one value over many regions, as ISBI's membranes): training weighs such masks without "
    "border term and class balance (w0 0, w_c off), whatever the preset."
)
UPDATE_MS = 150
REFRESH_MS = 100  # at most ~10 redraws per second while the planes of a stack come in
LAYER_NAME = "weight map"


class WeightMapWidget(QWidget):
    """Show `weight_map(labels, w0, sigma, class_weights, border)` of a Labels layer: one 2-D plane, or a stack
    (planes, H, W) plane by plane. `updated` is emitted with the new map after each recomputation."""

    updated = Signal(object)

    def __init__(self, napari_viewer: Any):
        super().__init__()
        self.viewer = napari_viewer
        self.layer: Any = None
        self.weights: np.ndarray | None = None
        self._runs = 0
        self._stack_worker: Any = None  # the stack run in progress, stopped when a newer one starts

        # start from the paper's loss (the fast preset trains without the border term: w0 0)
        training = PRESETS["paper"][1]
        self.labels_combo = layer_combo(napari_viewer, Labels, "labels")
        self.labels_picker = LayerPicker(self.labels_combo, follows=is_users_labels)
        self.w0_slider = slider(0.0, 100.0, training.w0)
        self.sigma_slider = slider(0.5, 25.0, training.sigma)
        self.balance_check = check("class balance w_c", True)
        self.border_spin = spin(
            0,
            8,
            training.border,
            tooltip="Background border (px) cut between touching cells in the target (0: none, the fast preset's)",
        )
        self.status = wrapped_label(lines=3)
        dock_layout(
            self,
            form(
                ("labels", self.labels_combo),
                ("w0", self.w0_slider),
                ("sigma (px)", self.sigma_slider),
                ("", self.balance_check),
                ("border (px)", self.border_spin),
            ),
            self.status,
            None,
        )

        self._update_soon = debounced(self.update_map, UPDATE_MS, self)
        self._refresh_soon = throttled(self._refresh_layer, REFRESH_MS, self)
        for signal in (
            self.w0_slider.valueChanged,
            self.sigma_slider.valueChanged,
            self.balance_check.toggled,
            self.border_spin.valueChanged,
        ):
            signal.connect(lambda *_args: self._update_soon())
        self.labels_combo.changed.connect(lambda *_args: self._update_soon())
        self.reset_choices()
        self._update_soon()

    def reset_choices(self, _event: Any = None) -> None:
        """Refresh the picker: until the user chooses labels, a Labels layer the user adds or opens (annotations
        to paint) becomes the one shown, not a segmentation or a preview the docks compute."""
        self.labels_picker.refresh()

    def parameters(self) -> dict[str, Any]:
        return {
            "w0": float(self.w0_slider.value()),
            "sigma": float(self.sigma_slider.value()),
            "class_weights": "balanced" if self.balance_check.isChecked() else None,
            "border": int(self.border_spin.value()),
        }

    def update_map(self) -> Any:
        """Recompute the map of the chosen layer in a worker; returns the worker (None when nothing to do)."""
        labels_layer = self.labels_combo.value
        if labels_layer is None:
            return None
        labels = layer_data(labels_layer)
        if labels.ndim not in (2, 3):
            show_error(
                f"The weight map needs a 2-D Labels layer or a stack of 2-D planes (planes, H, W); "
                f"'{labels_layer.name}' has shape {tuple(labels.shape)}"
            )
            return None
        self._runs += 1
        run = self._runs
        if self._stack_worker is not None:
            self._stack_worker.quit()  # stops at its next plane
            self._stack_worker = None
        if labels.ndim == 3:
            return self._update_stack(labels_layer, np.array(labels), run)
        worker = create_worker(
            _map_and_kind, np.array(labels), **self.parameters(), _ignore_errors=True, _start_thread=False
        )
        worker.returned.connect(lambda result: alive(self) and self._show(result[0], result[1], labels_layer, run))
        worker.errored.connect(lambda error: show_error(f"Weight map failed: {error}"))
        start_worker(worker, self)
        return worker

    def _update_stack(self, labels_layer: Any, labels: np.ndarray, run: int) -> Any:
        """The map of a stack (planes, H, W), plane by plane from the plane in view; each plane is drawn as it
        comes, over the previous map, and the planes without cells are 0."""
        planes = labels.shape[0]
        painted = int(np.count_nonzero(labels.reshape(planes, -1).any(axis=1)))
        first = shown_plane(self.viewer, labels_layer, [0], [planes])[0]
        weights = np.zeros(labels.shape, np.float32)
        progress = {"done": 0, "painted": painted}
        worker = create_worker(
            _stack_maps_and_kind, labels, **self.parameters(), first=first, _ignore_errors=True, _start_thread=False
        )
        worker.yielded.connect(
            lambda item: alive(self) and self._plane_done(item, weights, labels_layer, run, progress)
        )
        worker.returned.connect(lambda kind: alive(self) and self._show(weights, kind, labels_layer, run, painted))
        worker.errored.connect(lambda error: show_error(f"Weight map failed: {error}"))
        self._stack_worker = worker
        start_worker(worker, self)
        return worker

    def _plane_done(
        self, item: tuple[int, np.ndarray], weights: np.ndarray, labels_layer: Any, run: int, progress: dict
    ) -> None:
        if run != self._runs:
            return
        index, plane = item
        weights[index] = plane
        progress["done"] += 1
        if self._showing(weights.shape):
            if self.layer.data is not weights:
                self.layer.data[index] = plane  # over the previous map until the new one is complete
            self._refresh_soon()
        else:
            self._place(weights, labels_layer, (0.0, max(float(plane.max()), 1e-6)))
        self.status.setText(f"computing: {progress['done']} of {progress['painted']} planes with cells")

    def _refresh_layer(self) -> None:
        if self.layer is not None and self.layer in self.viewer.layers:
            self.layer.refresh()

    def _showing(self, shape: tuple[int, ...]) -> bool:
        """True when the map's layer is in the viewer with data of this shape."""
        return self.layer is not None and self.layer in self.viewer.layers and self.layer.data.shape == shape

    def _place(self, weights: np.ndarray, labels_layer: Any, limits: tuple[float, float]) -> None:
        """Show `weights` over `labels_layer`: in the map's layer when its shape fits, else in a new one."""
        if self._showing(weights.shape):
            self.layer.data = weights
            self.layer.contrast_limits = limits
            self.layer.scale, self.layer.translate = tuple(labels_layer.scale), tuple(labels_layer.translate)
            self.layer.units = tuple(labels_layer.units)
            return
        if self.layer is not None and self.layer in self.viewer.layers:
            self.viewer.layers.remove(self.layer)  # a map of labels of another size: replaced, not left stale
        self.layer = self.viewer.add_image(
            weights,
            name=LAYER_NAME,
            colormap="magma",
            contrast_limits=limits,
            scale=tuple(labels_layer.scale),
            translate=tuple(labels_layer.translate),
            units=tuple(labels_layer.units),  # else napari stops using units for every layer
            metadata=result_metadata(labels_layer),  # a map, never an image to segment
        )

    def _show(self, weights: np.ndarray, kind: str, labels_layer: Any, run: int, painted: int | None = None) -> None:
        """The finished map of labels of `kind` (`label_kind`); `painted`: for a stack, how many of its planes hold
        cells."""
        if run != self._runs:
            return  # a newer request is on its way
        self._stack_worker = None
        self.weights = weights
        self._refresh_soon.timer.stop()
        self._place(weights, labels_layer, (0.0, max(float(weights.max()), 1e-6)))
        p = self.parameters()
        planes = (
            ""
            if painted is None
            else f" over {painted} of {weights.shape[0]} planes (those with painted cells; training leaves the "
            "others out: they weigh 0)"
        )
        self.status.setText(
            f"max {weights.max():.2f} (w0 = {p['w0']:g}, sigma = {p['sigma']:g} px){planes}: the bright ridges "
            f"between touching cells are where the loss weighs most.{BINARY_NOTE if kind == 'binary' else ''}"
        )
        self.updated.emit(weights)


def _map_and_kind(labels: np.ndarray, **parameters: Any) -> tuple[np.ndarray, str]:
    """The worker's job for a 2-D layer: its weight map and the kind of its labels (`label_kind`), both off the
    main thread (the kind takes a pass over the values and a labelling of the components)."""
    return weight_map(labels, **parameters), label_kind([labels])


def _stack_maps_and_kind(labels: np.ndarray, **parameters: Any) -> Iterator[tuple[int, np.ndarray]]:
    """The worker's job for a stack: yields `stack_weight_maps`' planes, then returns the labels' kind."""
    yield from stack_weight_maps(labels, **parameters)
    return label_kind(list(labels))
