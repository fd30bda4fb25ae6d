"""The Fine-tune dock's autosave controls: the autosave folder (a line and "Change…"), the annotations saved
before each run, and the offer to restore the autosaved annotations of an image opened again (`_autosave`
finds and writes the files)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QFileDialog, QPushButton

from napari_unet.metadata import PixelSize

from . import _autosave, _settings
from ._form import row, wrapped_label
from ._layers import METADATA_KEY, layer_pixel_size, pixel_shape, placed_like, stored_axes
from ._workers import alive

SETTINGS_KEY = "autosave"  # the settings file's section of the autosave folder chosen with "Change…"


class AutosaveRow:
    """root: the autosave folder (None: the one chosen with "Change…" in an earlier session, if it is still a
    folder, else `_autosave.default_root()`); restored: called with the Labels layer of restored annotations and
    the image layer they annotate. `annotations_path`: where the last run's annotations were saved; `saved`: for each
    image (its file or URL, else its layer), the annotations this dock last wrote or restored: its next save replaces
    those it wrote without keeping a copy, those it restored with a copy (they are an earlier session's)."""

    def __init__(self, dock: Any, viewer: Any, root: str | Path | None, restored: Callable[[Any, Any], Any]):
        self.dock, self.viewer, self.restored = dock, viewer, restored
        self.root = Path(root) if root is not None else _chosen_root() or _autosave.default_root()
        self.annotations_path: Path | None = None
        self.saved: dict[Hashable, _autosave.Saved] = {}
        self.model_folders: list[Path] = []  # handed out by `model_folder`
        self.offered: tuple[str, Path] | None = None  # (image file or URL, annotations file)
        self.offered_layer: Any = None  # the image layer they were offered for
        self.label = wrapped_label(f"autosave: {self.root}")
        self.change_button = QPushButton("Change…")
        self.restore_button = QPushButton("")
        self.restore_button.hide()
        self.change_button.clicked.connect(self._ask_root)
        self.restore_button.clicked.connect(self.restore)
        viewer.layers.events.inserted.connect(self._layer_added)
        viewer.layers.events.removed.connect(self._layer_removed)
        for layer in list(viewer.layers):  # images opened before the dock: offered too (the latest one wins)
            self._offer(layer)

    def row(self) -> Any:
        return row(self.label, self.change_button, stretch=(1,))

    def model_folder(self, name: str) -> Path:
        """A new folder for the model of a run on the image `name` (another than those of the dock's earlier runs,
        started in the same second, which may have saved nothing yet)."""
        folder = _autosave.model_folder(self.root, name, taken=self.model_folders)
        self.model_folders.append(folder)
        return folder

    def save_annotations(self, labels: np.ndarray, image_layer: Any) -> None:
        """Autosave the annotations of `image_layer` (beside its file when it has one); a failure is a warning.
        On the main thread, as Start is pressed (nothing painted is lost if the run then fails), and cheap when
        the labels are those saved or restored last: a hash of them, no file read back."""
        source = _own_source(image_layer)  # None: autosaved in the autosave folder, by the layer's name
        key = _image_key(source, image_layer)
        try:
            info = layer_pixel_size(image_layer)  # what the image layer says beats what its file said
            pixel_size = PixelSize(**info) if info else None
            image_axes = stored_axes(image_layer)  # a time series' annotations are T, Y, X, not Z, Y, X
            saved = _autosave.autosave_annotations(
                labels,
                self.root,
                source,
                image_layer.name,
                pixel_size=pixel_size,
                on_kept=self._kept,
                axes=image_axes.replace("C", "") if image_axes else None,
                last=self.saved.get(key),
            )
        except (OSError, ValueError) as error:
            show_warning(f"Could not autosave the annotations: {error}")
            return
        self.saved[key], self.annotations_path = saved, saved.path

    def _kept(self, path: Path) -> None:
        show_info(f"Annotations saved for this image in an earlier session differ from these: they are kept as {path}")

    def restore(self) -> Any:
        """Open the autosaved annotations offered for the last opened image (still open: the offer goes with it),
        as a Labels layer over it; annotations of another size than the image are refused (a notification)."""
        if self.offered is None:
            return None
        source, labels_path = self.offered
        image_layer = self.offered_layer
        stamp = _autosave.file_stamp(labels_path)  # before reading: a file written meanwhile is not taken for it
        try:
            labels = _autosave.load_annotations(labels_path)
        except (OSError, ValueError) as error:
            show_error(f"Cannot read the autosaved annotations {labels_path}: {error}")
            return None
        image_shape = pixel_shape(image_layer)
        axes = stored_axes(image_layer)
        if axes is not None and getattr(image_layer, "rgb", False):
            axes = axes[:-1]  # an RGB layer's colours (last) are not among its pixels
        if not fits_image(labels.shape, image_shape, axes):
            show_warning(
                f"The autosaved annotations {labels_path.name} have shape {labels.shape} but the image "
                f"'{image_layer.name}' has shape {image_shape}: they belong to another image, not restored"
            )
            self._withdraw()
            return None
        layer = self.viewer.add_labels(
            labels, name=f"{Path(source).stem} annotations", **placed_like(image_layer, labels.ndim)
        )
        # read, not written: an earlier session's, copied before a save first replaces them with other labels
        self.saved[_image_key(source, image_layer)] = _autosave.Saved(
            labels_path, stamp, _autosave.labels_digest(labels), restored=True
        )
        self._withdraw()
        self.restored(layer, image_layer)
        return layer

    def _withdraw(self) -> None:
        self.restore_button.hide()
        self.offered, self.offered_layer = None, None

    def _layer_added(self, event: Any) -> None:
        if not alive(self.dock):
            return
        self._offer(event.value)

    def _layer_removed(self, _event: Any) -> None:
        """The image whose annotations are offered was closed: the offer goes with it (restored, they would be
        paired with another image, and saved as its annotations)."""
        if alive(self.dock) and self.offered is not None and self.offered_layer not in self.viewer.layers:
            self._withdraw()

    def _offer(self, layer: Any) -> None:
        """Offer the autosaved annotations of `layer`'s file or URL, if it is an image with some."""
        path = _own_source(layer)
        if not isinstance(layer, Image) or not path or _autosave.is_annotation_file(path):
            return
        found = _autosave.find_annotations(path, self.root)
        if found is None:
            return
        self.offered, self.offered_layer = (path, found), layer
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


def fits_image(labels_shape: tuple[int, ...], image_shape: tuple[int, ...], image_axes: str | None = None) -> bool:
    """Whether labels of `labels_shape` can annotate an image of `image_shape` (its pixels: `_layers.pixel_shape`)
    and `image_axes` (its stored axes, None when they are not known): the image's shape, or that shape without its
    channels (C); of an image of unknown axes, the same Y and X and its leading axes, all of them or all but one
    (its channels, maybe).

    >>> fits_image((64, 64), (3, 64, 64)), fits_image((64, 64), (3, 64, 64), "CYX")
    (True, True)
    >>> fits_image((64, 64), (3, 64, 64), "ZYX"), fits_image((512, 512), (128, 128))
    (False, False)
    """
    labels_shape, image_shape = tuple(labels_shape), tuple(image_shape)
    if image_axes is not None and len(image_axes) == len(image_shape):
        without_channels = tuple(n for n, axis in zip(image_shape, image_axes) if axis != "C")
        return labels_shape in (image_shape, without_channels)
    if len(labels_shape) < 2 or labels_shape[-2:] != image_shape[-2:]:
        return False
    leading, image_leading = labels_shape[:-2], image_shape[:-2]
    without_one = (image_leading[:axis] + image_leading[axis + 1 :] for axis in range(len(image_leading)))
    return leading == image_leading or leading in without_one


def _image_key(source: str | None, layer: Any) -> Hashable:
    """What identifies an image across its layers: its file or URL (opened again, the same image), else its layer."""
    return _autosave.image_id(source) if source else ("layer", getattr(layer, "unique_id", id(layer)))


def _own_source(layer: Any) -> str | None:
    """The local file `layer` holds the data of, whose annotations are autosaved beside it, or the URL it was
    opened from (its annotations go to the autosave folder, recorded under that URL): its source, but for files
    opened as a stack (File > Open Files as Stack…), whose source is the first file, not its data, and for a file
    that is not here (gone since)."""
    path = getattr(getattr(layer, "source", None), "path", None)
    metadata = getattr(layer, "metadata", None) or {}
    info = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
    if not path or (isinstance(info, dict) and info.get("stacked")):
        return None
    return str(path) if _autosave.is_url(path) or Path(path).exists() else None
