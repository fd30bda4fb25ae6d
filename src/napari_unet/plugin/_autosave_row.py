"""The Fine-tune dock's autosave controls: the autosave folder (a line and "Change…"), the annotations saved
before each run, and the offer to restore the autosaved annotations of an image opened again (`_autosave`
finds and writes the files)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QFileDialog, QPushButton

from napari_unet.metadata import PixelSize

from . import _autosave, _settings
from ._form import row, wrapped_label
from ._layers import METADATA_KEY, layer_pixel_size, placed_like, stored_axes
from ._workers import alive

SETTINGS_KEY = "autosave"  # the settings file's section of the autosave folder chosen with "Change…"


class AutosaveRow:
    """root: the autosave folder (None: the one chosen with "Change…" in an earlier session, if it is still a
    folder, else `_autosave.default_root()`); restored: called with the Labels layer of restored annotations and
    the image layer they annotate (None when it was removed meanwhile). `annotations_path`: where the last run's
    annotations were saved."""

    def __init__(self, dock: Any, viewer: Any, root: str | Path | None, restored: Callable[[Any, Any], Any]):
        self.dock, self.viewer, self.restored = dock, viewer, restored
        self.root = Path(root) if root is not None else _chosen_root() or _autosave.default_root()
        self.annotations_path: Path | None = None
        self.offered: tuple[Path, Path] | None = None  # (image file, annotations file)
        self.offered_layer: Any = None  # the image layer they were offered for
        self.label = wrapped_label(f"autosave: {self.root}")
        self.change_button = QPushButton("Change…")
        self.restore_button = QPushButton("")
        self.restore_button.hide()
        self.change_button.clicked.connect(self._ask_root)
        self.restore_button.clicked.connect(self.restore)
        viewer.layers.events.inserted.connect(self._layer_added)
        for layer in list(viewer.layers):  # images opened before the dock: offered too (the latest one wins)
            self._offer(layer)

    def row(self) -> Any:
        return row(self.label, self.change_button, stretch=(1,))

    def model_folder(self, name: str) -> Path:
        """A new folder for the model of a run on the image `name`."""
        return _autosave.model_folder(self.root, name)

    def save_annotations(self, labels: np.ndarray, image_layer: Any) -> None:
        """Autosave the annotations of `image_layer` (beside its file when it has one); a failure is a warning."""
        source = _own_file(image_layer)  # None: autosaved in the autosave folder, by the layer's name
        try:
            info = layer_pixel_size(image_layer)  # what the image layer says beats what its file said
            pixel_size = PixelSize(**info) if info else None
            image_axes = stored_axes(image_layer)  # a time series' annotations are T, Y, X, not Z, Y, X
            self.annotations_path = _autosave.save_annotations(
                labels,
                self.root,
                source,
                image_layer.name,
                pixel_size=pixel_size,
                on_kept=self._kept,
                axes=image_axes.replace("C", "") if image_axes else None,
            )
        except (OSError, ValueError) as error:
            show_warning(f"Could not autosave the annotations: {error}")

    def _kept(self, path: Path) -> None:
        show_info(
            f"The annotations saved earlier beside the image differ from these: the earlier ones are kept as {path}"
        )

    def restore(self) -> Any:
        """Open the autosaved annotations offered for the last opened image, as a Labels layer."""
        if self.offered is None:
            return None
        image_path, labels_path = self.offered
        try:
            labels = _autosave.load_annotations(labels_path)
        except (OSError, ValueError) as error:
            show_error(f"Cannot read the autosaved annotations {labels_path}: {error}")
            return None
        image_layer = self.offered_layer
        placement = placed_like(image_layer, labels.ndim) if image_layer in self.viewer.layers else {}
        layer = self.viewer.add_labels(labels, name=f"{image_path.stem} annotations", **placement)
        self.restore_button.hide()
        self.offered = None
        self.restored(layer, image_layer if image_layer in self.viewer.layers else None)
        return layer

    def _layer_added(self, event: Any) -> None:
        if not alive(self.dock):
            return
        self._offer(event.value)

    def _offer(self, layer: Any) -> None:
        """Offer the autosaved annotations of `layer`'s file, if it is an image with some."""
        path = _own_file(layer)
        if not isinstance(layer, Image) or not path or _autosave.is_annotation_file(path):
            return
        found = _autosave.find_annotations(path, self.root)
        if found is None:
            return
        self.offered, self.offered_layer = (Path(path), found), layer
        self.restore_button.setText(f"Restore the autosaved annotations of {Path(path).name}")
        self.restore_button.show()
        show_info(
            f"Autosaved annotations for {Path(path).name} found ({found.name}): click 'Restore' in the Fine-tune dock"
        )

    def _ask_root(self) -> None:
        path = QFileDialog.getExistingDirectory(self.dock, "Autosave folder", str(self.root))
        if path:
            self.root = Path(path)
            self.label.setText(f"autosave: {self.root}")
            try:  # the next session saves there and finds what was saved there
                _settings.write_dock_settings(_settings.default_path(), SETTINGS_KEY, {"folder": str(self.root)})
            except OSError as error:
                show_warning(f"The autosave folder will not be remembered in the next session: {error}")


def _chosen_root() -> Path | None:
    """The autosave folder chosen in an earlier session, if it is still a folder."""
    folder = _settings.read_settings(_settings.default_path()).get(SETTINGS_KEY, {}).get("folder")
    return Path(folder) if isinstance(folder, str) and folder and Path(folder).is_dir() else None


def _own_file(layer: Any) -> str | None:
    """The file `layer` holds the data of, whose annotations are autosaved beside it: its source, but for files
    opened as a stack (File > Open Files as Stack…), whose source is the first file, not its data."""
    path = getattr(getattr(layer, "source", None), "path", None)
    metadata = getattr(layer, "metadata", None) or {}
    info = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
    return None if isinstance(info, dict) and info.get("stacked") else path
