"""Measure dock: per-object measurements of a Labels layer as the layer's `features` (napari shows them in the
status bar when the mouse is over an object), a table view, "Save CSV…", and ImageJ ROI export and import.

The numbers come from `napari_unet.measure` (scikit-image's regionprops_table); physical units from the pixel
size our reader stored with the image layer (OME-TIFF, ImageJ or TIFF resolution metadata).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFileDialog, QPushButton, QTableWidget, QTableWidgetItem, QWidget

from napari_unet.io import to_canonical
from napari_unet.measure import MASK_NOTE, Table, instance_labels, measure_planes, write_csv
from napari_unet.metadata import PixelSize

from ._form import dock_layout, form, row, wrapped_label
from ._layers import (
    LayerPicker,
    LayerProblem,
    channel_group,
    is_preview,
    layer_combo,
    layer_data,
    layer_pixel_size,
    pixel_shape,
    placed_like,
    source_image,
    stored_axes,
)

SHOWN_ROWS = 1000  # the table view shows at most this many rows; the CSV holds them all


class MeasureWidget(QWidget):
    """Measure a Labels layer (with the intensities of an optional image layer); save the table or its ROIs."""

    def __init__(self, napari_viewer: Any):
        super().__init__()
        self.viewer = napari_viewer
        self.tables: list[tuple[dict[str, object], Table]] = []
        self.measured_name = ""  # the name of the Labels layer `tables` were measured on, for the CSV
        self.labels_combo = layer_combo(napari_viewer, Labels, "labels")
        self.image_combo = layer_combo(napari_viewer, Image, "image", optional="(no intensities)")
        self.labels_picker = LayerPicker(self.labels_combo, follows=lambda layer: not is_preview(layer))
        self.image_picker = LayerPicker(self.image_combo)
        self.measure_button = QPushButton("Measure")
        self.save_button = QPushButton("Save CSV…")
        self.save_button.setEnabled(False)
        self.export_button = QPushButton("Export ROIs…")
        self.import_button = QPushButton("Import ROIs…")
        self.table = QTableWidget()
        self.status = wrapped_label(lines=2)
        dock_layout(
            self,
            form(("labels", self.labels_combo), ("image", self.image_combo)),
            row(self.measure_button, self.save_button),
            row(self.export_button, self.import_button),
            self.status,
            (self.table, 1),
        )
        self.measure_button.clicked.connect(self.measure)
        self.save_button.clicked.connect(self._ask_csv)
        self.export_button.clicked.connect(self._ask_roi_export)
        self.import_button.clicked.connect(self._ask_roi_import)
        self.labels_combo.changed.connect(self._preselect_image)
        self.reset_choices()

    def reset_choices(self, _event: Any = None) -> None:
        """Refresh the pickers (napari calls this when layers change): until the user chooses labels, a Labels layer
        added (a segmentation, imported ROIs) becomes the one to measure; until the user chooses an image (or no
        image), the image is the one the labels were made from when that can be known (`source_image`)."""
        self.labels_picker.refresh()
        self.image_picker.refresh()
        self._preselect_image()

    # -- public ---------------------------------------------------------------------------------------------

    def measure(self) -> list[tuple[dict[str, object], Table]] | None:
        """Measure the chosen layers; fills the Labels layer's features (2-D layers) and the table view."""
        labels_layer, image_layer = self.labels_combo.value, self.image_combo.value
        if labels_layer is None:
            show_error("No Labels layer: segment an image or open labels first")
            return None
        self.tables = []  # a failed measure leaves no earlier table to save under this layer's name
        self.save_button.setEnabled(False)
        try:
            # "not annotated" (-1, the uint16+ maximum) is background, as in training; a binary mask is its components
            labels, was_mask = instance_labels(np.asarray(labels_layer.data), f"layer '{labels_layer.name}'")
            image, image_axes = self._intensities(image_layer, labels.shape)
            pixel_size = self._pixel_size(image_layer, labels_layer)
            axes = "TZYX"[4 - labels.ndim :] if labels.ndim <= 4 else None
            if axes is None:
                raise LayerProblem(f"layer '{labels_layer.name}' has {labels.ndim} dimensions; at most T, Z, Y, X")
            self.tables = measure_planes(labels, axes, image, image_axes, pixel_size)
        except ValueError as error:
            show_error(f"Cannot measure: {error}")
            self.status.setText(f"Cannot measure '{labels_layer.name}': {error}")
            return None
        self.measured_name = labels_layer.name
        hover = labels.ndim == 2 and not was_mask  # a mask's layer holds one value, not the components' ids
        if hover:
            ((_, table),) = self.tables
            labels_layer.features = _features(table)
        self._show_table()
        count = sum(len(t["label"]) for _, t in self.tables)
        unit = f"; physical units: {pixel_size.unit}" if pixel_size is not None else "; pixel units"
        source = f"; intensities of '{image_layer.name}'" if image_layer is not None else "; no intensities"
        mask = f" '{labels_layer.name}' {MASK_NOTE}." if was_mask else ""
        read_out = " Hover over an object to read its values." if hover else ""
        self.status.setText(f"{count} object(s) measured{unit}{source}.{mask}{read_out}")
        self.save_button.setEnabled(bool(self.tables))
        return self.tables

    def save_csv(self, path: str | Path) -> Path:
        if not self.tables:
            raise ValueError("nothing measured yet: press Measure first")
        return write_csv([({"layer": self.measured_name, **extra}, table) for extra, table in self.tables], path)

    def export_rois(self, path: str | Path) -> int:
        """Write the chosen Labels layer as an ImageJ ROI zip, one ROI per object (a binary mask: per connected
        component, said in the status line); returns how many."""
        from napari_unet.roi import write_rois

        layer = self.labels_combo.value
        if layer is None:
            raise ValueError("no Labels layer to export")
        labels, was_mask = instance_labels(np.asarray(layer.data), f"layer '{layer.name}'")
        count = write_rois(path, labels)
        if was_mask:
            self.status.setText(f"{count} ROIs, one per connected component: '{layer.name}' {MASK_NOTE}.")
        return count

    def import_rois(self, path: str | Path) -> Any:
        """A new Labels layer from an ImageJ ROI zip, the size of the chosen image (or labels) layer."""
        from napari_unet.roi import read_rois

        like = self.image_combo.value or self.labels_combo.value
        if like is None:
            raise ValueError("choose the image the ROIs belong to (its size is the labels' size)")
        shape = pixel_shape(like)
        labels = read_rois(path, shape[-3:] if len(shape) >= 3 else shape)
        return self.viewer.add_labels(labels, name=f"{Path(path).stem} ROIs", **placed_like(like, labels.ndim))

    # -- internals ------------------------------------------------------------------------------------------

    def _preselect_image(self, _labels: Any = None) -> None:
        self.image_picker.preselect(source_image(self.labels_combo.value, self.viewer.layers))

    def _intensities(self, layer: Any, shape: tuple[int, ...]) -> tuple[Any, str | None]:
        """The image layer as (C, ...) or (...) matching the labels, with its axes; (None, None) without one."""
        if layer is None:
            return None, None
        spatial = "TZYX"[4 - len(shape) :]
        group = channel_group(layer, self.viewer.layers)
        if group:
            return _channels_first(np.stack([np.asarray(layer_data(g)) for g in group]), spatial)
        data = np.asarray(layer_data(layer))
        if getattr(layer, "rgb", False):
            if data.shape[:-1] != shape:
                raise LayerProblem(
                    f"the image '{layer.name}' is {_size(data.shape[:-1])} pixels (RGB) but the labels are "
                    f"{_size(shape)}: choose the image the labels were made from, or no image"
                )
            return _channels_first(np.moveaxis(data[..., :3], -1, 0), spatial)
        axes = stored_axes(layer)
        if axes is not None and "C" in axes:
            data, axes = to_canonical(data, axes)
            return data, axes
        if data.ndim == len(shape) + 1 and data.shape[1:] == shape and data.shape[0] <= 4:
            return _channels_first(data, spatial)  # as the docks read an unlabelled (C, H, W)
        if data.shape != shape:
            raise LayerProblem(f"the image '{layer.name}' has shape {data.shape} but the labels have {shape}")
        return data, spatial

    def _pixel_size(self, image_layer: Any, labels_layer: Any) -> PixelSize | None:
        info = layer_pixel_size(image_layer) or layer_pixel_size(labels_layer)
        return PixelSize(**info) if info else None

    def _show_table(self) -> None:
        columns: list[str] = []
        for extra, table in self.tables:
            columns += [c for c in [*extra, *table] if c not in columns]
        rows = [
            {**extra, **{k: v[i] for k, v in table.items()}}
            for extra, table in self.tables
            for i in range(len(table["label"]))
        ][:SHOWN_ROWS]
        self.table.clear()
        self.table.setColumnCount(len(columns))
        self.table.setRowCount(len(rows))
        self.table.setHorizontalHeaderLabels(columns)
        for r, values in enumerate(rows):
            for c, name in enumerate(columns):
                value = values.get(name, "")
                text = f"{value:.4g}" if isinstance(value, (float, np.floating)) else str(value)
                self.table.setItem(r, c, QTableWidgetItem(text))

    def _ask_csv(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save measurements", "measurements.csv", "CSV (*.csv)")
        if path:
            try:
                show_info(f"Measurements saved to {self.save_csv(path)}")
            except (OSError, ValueError) as error:  # a folder, a read-only place, a full disk
                show_error(f"Cannot save the measurements: {error}")

    def _ask_roi_export(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export ImageJ ROIs", "RoiSet.zip", "ImageJ ROI set (*.zip)")
        if path:
            try:
                show_info(f"{self.export_rois(path)} ROIs written to {path} (open it in Fiji's ROI Manager)")
            except (ImportError, OSError, ValueError) as error:
                show_error(f"Cannot export ROIs: {error}")

    def _ask_roi_import(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import ImageJ ROIs", "", "ImageJ ROIs (*.zip *.roi)")
        if path:
            try:
                self.import_rois(path)
            except (ImportError, OSError, ValueError) as error:
                show_error(f"Cannot import ROIs: {error}")


def _size(shape: tuple[int, ...]) -> str:
    return " x ".join(str(n) for n in shape)


def _channels_first(data: np.ndarray, spatial: str) -> tuple[np.ndarray, str]:
    """(C, *spatial) data in canonical order, the channels after T and Z, with its axes: (2, 3, 32, 32) of "ZYX"
    -> (3, 2, 32, 32), "ZCYX" (read as "ZCYX" as it was, the channels were taken for the planes)."""
    lead = "".join(a for a in spatial if a in "TZ")
    return np.moveaxis(data, 0, len(lead)), lead + "C" + spatial[len(lead) :]


def _features(table: Table) -> Any:
    """A napari Labels `features` table: one row per object, the label id in the "index" column."""
    import pandas as pd

    frame = pd.DataFrame({"index": table["label"], **table})
    return frame
