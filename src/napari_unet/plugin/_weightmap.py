"""Weight-map dock: the paper's loss weights (eq. 2) of a Labels layer, shown as an Image layer.

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

Moving a slider recomputes the map in a worker thread (debounced), so the bright ridges between touching cells
follow w0 and sigma live without freezing the window.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QWidget

from napari_unet.training import PRESETS
from napari_unet.weights import weight_map

from ._form import check, dock_layout, form, slider, spin, wrapped_label
from ._layers import debounced, layer_combo
from ._workers import alive, start_worker

UPDATE_MS = 150
LAYER_NAME = "weight map"


class WeightMapWidget(QWidget):
    """Show `weight_map(labels, w0, sigma, class_weights, border)` of a 2-D Labels layer; `updated` is emitted
    with the new map after each recomputation."""

    updated = Signal(object)

    def __init__(self, napari_viewer: Any):
        super().__init__()
        self.viewer = napari_viewer
        self.layer: Any = None
        self.weights: np.ndarray | None = None
        self._runs = 0

        # start from the paper's loss (the fast preset trains without the border term: w0 0)
        training = PRESETS["paper"][1]
        self.labels_combo = layer_combo(napari_viewer, Labels, "labels")
        self.w0_slider = slider(0.0, 100.0, training.w0)
        self.sigma_slider = slider(0.5, 25.0, training.sigma)
        self.balance_check = check("class balance w_c", True)
        self.border_spin = spin(
            1, 8, training.border, tooltip="Background border (px) cut between touching cells in the target"
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
        self.labels_combo.reset_choices()

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
        labels = np.asarray(labels_layer.data)
        if labels.ndim != 2:
            show_error(f"The weight map needs a 2-D Labels layer; '{labels_layer.name}' has shape {labels.shape}")
            return None
        self._runs += 1
        run = self._runs
        worker = create_worker(weight_map, labels.copy(), **self.parameters(), _ignore_errors=True, _start_thread=False)
        worker.returned.connect(lambda weights: alive(self) and self._show(weights, labels_layer, run))
        worker.errored.connect(lambda error: show_error(f"Weight map failed: {error}"))
        start_worker(worker, self)
        return worker

    def _show(self, weights: np.ndarray, labels_layer: Any, run: int) -> None:
        if run != self._runs:
            return  # a newer request is on its way
        self.weights = weights
        limits = (0.0, max(float(weights.max()), 1e-6))
        if self.layer is not None and self.layer in self.viewer.layers and self.layer.data.shape == weights.shape:
            self.layer.data = weights
            self.layer.contrast_limits = limits
            self.layer.scale, self.layer.translate = tuple(labels_layer.scale), tuple(labels_layer.translate)
        else:
            if self.layer is not None and self.layer in self.viewer.layers:
                self.viewer.layers.remove(self.layer)  # a map of labels of another size: replaced, not left stale
            self.layer = self.viewer.add_image(
                weights,
                name=LAYER_NAME,
                colormap="magma",
                contrast_limits=limits,
                scale=tuple(labels_layer.scale),
                translate=tuple(labels_layer.translate),
            )
        p = self.parameters()
        self.status.setText(
            f"max {weights.max():.2f} (w0 = {p['w0']:g}, sigma = {p['sigma']:g} px): the bright ridges between "
            "touching cells are where the loss weighs most"
        )
        self.updated.emit(weights)
