"""Augmentation preview dock: one training window of the image and labels, augmented as training would.

The window (the training tile size, centred on the view, of the plane in view for a Z or T stack, drawn again
from the same sample when a slider moves to another plane) is warped by `augment`'s own steps — gray-value
changes, then one sampling map for elastic deformation, rotation, shift and flips — and shown beside the image
with a grid warped the same way, so the deformation is visible at a glance. The settings are the session's: the
Fine-tune dock trains with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QPushButton, QWidget

from napari_unet.augment import AugmentConfig
from napari_unet.jobs.augment_preview import preview_sample
from napari_unet.training import PRESETS

from ._form import check, dock_layout, form, slider, spin, wrapped_label
from ._layers import (
    LayerPicker,
    LayerProblem,
    channels_of,
    debounced,
    is_original_image,
    is_users_labels,
    layer_combo,
    layer_data,
    pixel_shape,
    plane_stack,
    preview_metadata,
)
from ._state import Session, session_for
from ._workers import alive, start_worker

GAP = 16  # px between the image and the preview


def shown_plane(viewer: Any, layer: Any, axes: Sequence[int], sizes: Sequence[int]) -> tuple[int, ...]:
    """The index over `layer`'s data axes `axes` (of `sizes` planes) of the plane the viewer shows: the viewer's
    point in the layer's data coordinates (its own scale, translate and affine), rounded as napari slices it
    and kept inside the layer.

    A (Z, Y, X) layer of scale (2, 1, 1) and translate (10, 0, 0) shows plane 2 at world z = 14.
    """
    if not sizes:
        return ()
    position = np.asarray(layer.world_to_data(viewer.dims.point))
    return tuple(int(np.clip(np.round(position[axis]), 0, size - 1)) for axis, size in zip(axes, sizes))


def shown_stack_plane(viewer: Any, layer: Any, stack: Any) -> tuple[int, ...]:
    """The index over `stack`'s leading axes (`_layers.plane_stack` of the image `layer`) of the plane the viewer
    shows: () for a 2-D image, (0, ...) when each leading axis has one plane. The layer's own channel axis, if it
    has one, is not among the stack's leading axes."""
    own_axes = len(pixel_shape(layer)) - 2  # the leading axes of the layer itself (its channel axis too)
    axes = [a for a in range(own_axes) if own_axes == len(stack.leading) or a != stack.channel_axis]
    return shown_plane(viewer, layer, axes, stack.leading)


def plane_words(plane: tuple[int, ...]) -> str:
    """The status's words for the plane: ' of plane 3', ' of plane (1, 3)' over two axes, '' for a 2-D image."""
    if not plane:
        return ""
    return f" of plane {plane[0]}" if len(plane) == 1 else f" of plane {plane}"


class AugmentPreviewWidget(QWidget):
    """Show an augmented training window; `New sample` draws another. `shown` is emitted with
    (image, labels, grid) after each preview."""

    shown = Signal(object)

    def __init__(self, napari_viewer: Any, session: Session | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.session = session or session_for(napari_viewer)
        self.seed = 0
        self.origin: tuple[int, int] | None = None  # (y, x) of the last previewed window
        self.plane: tuple[int, ...] = ()  # the index of its plane over the image's Z, T, ... axes
        self.sample: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # the last shown (image, labels, grid)
        self._in_flight = 0
        self._shown_planes: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())  # image's and labels' in the preview
        self.layers: dict[str, Any] = {}
        self._runs = 0
        base = self.session.augment or AugmentConfig()

        self.image_combo = layer_combo(napari_viewer, Image, "image")
        self.labels_combo = layer_combo(napari_viewer, Labels, "labels", optional="(none)")
        self.image_picker = LayerPicker(self.image_combo, follows=is_original_image)
        self.labels_picker = LayerPicker(self.labels_combo, follows=is_users_labels)
        self.window_spin = spin(
            16, 2048, PRESETS["fast"][1].tile_size, tooltip="Side of the training window (the preset's tile size)"
        )
        self.grid_spin = spin(2, 12, base.elastic_grid)
        self.sigma_slider = slider(0.0, 40.0, base.elastic_sigma)
        self.rotation_slider = slider(0.0, 180.0, base.rotation)
        self.shift_slider = slider(0.0, 64.0, base.shift)
        self.flip_check = check("flips", base.flip_p > 0)
        self.gray_check = check(
            "gray-value changes (contrast, brightness, gamma)",
            base.contrast_p > 0 or base.brightness_p > 0 or base.gamma_p > 0,
        )
        self.new_button = QPushButton("New sample")
        self.status = wrapped_label(lines=2)
        dock_layout(
            self,
            form(
                ("image", self.image_combo),
                ("labels", self.labels_combo),
                ("window (px)", self.window_spin),
                ("elastic grid", self.grid_spin),
                ("elastic sigma (px)", self.sigma_slider),
                ("rotation (±deg)", self.rotation_slider),
                ("shift (±px)", self.shift_slider),
                ("", self.flip_check),
                ("", self.gray_check),
            ),
            self.new_button,
            self.status,
            None,
        )

        self._preview_soon = debounced(self.preview, 150, self)
        self.new_button.clicked.connect(self.new_sample)
        napari_viewer.dims.events.current_step.connect(self._plane_moved)
        for signal in (
            self.window_spin.valueChanged,
            self.grid_spin.valueChanged,
            self.sigma_slider.valueChanged,
            self.rotation_slider.valueChanged,
            self.shift_slider.valueChanged,
            self.flip_check.toggled,
            self.gray_check.toggled,
        ):
            signal.connect(lambda *_args: self._settings_changed())
        self.reset_choices()

    def reset_choices(self, _event: Any = None) -> None:
        """Refresh the pickers: until the user chooses, an image opened or added and a Labels layer the user adds
        become the ones previewed (as in the Fine-tune dock), never the preview's own layers."""
        self.image_picker.refresh()
        self.labels_picker.refresh()

    def config(self) -> AugmentConfig:
        """The session's augmentation (the paper's defaults at first) with the dock's settings."""
        base = self.session.augment or AugmentConfig()
        gray = {} if self.gray_check.isChecked() else {"contrast_p": 0.0, "brightness_p": 0.0, "gamma_p": 0.0}
        if self.gray_check.isChecked() and not (base.contrast_p or base.brightness_p or base.gamma_p):
            defaults = AugmentConfig()
            gray = {
                "contrast_p": defaults.contrast_p,
                "brightness_p": defaults.brightness_p,
                "gamma_p": defaults.gamma_p,
            }
        flip_p = (base.flip_p or AugmentConfig().flip_p) if self.flip_check.isChecked() else 0.0
        return replace(
            base,
            elastic_grid=self.grid_spin.value(),
            elastic_sigma=float(self.sigma_slider.value()),
            rotation=float(self.rotation_slider.value()),
            shift=float(self.shift_slider.value()),
            flip_p=flip_p,
            **gray,
        )

    def new_sample(self) -> Any:
        self.seed += 1
        return self.preview()

    def preview(self) -> Any:
        """Augment the window at the centre of the view in a worker; returns the worker (None: nothing to do)."""
        layer = self.image_combo.value
        if layer is None:
            return None
        try:
            index, plane, labels, origin = self._source(layer)
        except LayerProblem as error:
            show_error(str(error))
            return None
        self._runs += 1
        run = self._runs
        self.origin, self.plane = origin, index
        self._shown_planes = self._planes_in_view(layer)
        worker = create_worker(
            preview_sample,
            plane,
            labels,
            origin,
            self.window_spin.value(),
            self.config(),
            self.seed,
            _ignore_errors=True,
            _start_thread=False,
        )
        worker.returned.connect(lambda result: alive(self) and self._show(result, layer, origin, index, run))
        worker.errored.connect(lambda error: show_error(f"Augmentation preview failed: {error}"))
        worker.finished.connect(lambda: alive(self) and self._worker_done())
        self._in_flight += 1
        start_worker(worker, self)
        return worker

    def pending(self) -> bool:
        """True while a preview is scheduled or computing."""
        return self._preview_soon.timer.isActive() or self._in_flight > 0

    def _worker_done(self) -> None:
        self._in_flight -= 1

    def _settings_changed(self) -> None:
        self.session.augment = self.config()
        self._preview_soon()

    def _plane_moved(self, _event: Any = None) -> None:
        """A slider moved: redraw the same sample of the same window on the plane now in view, if it changed."""
        if not alive(self) or self.parent() is None:  # closed: napari takes the dock out without deleting it
            return
        layer = self.image_combo.value
        if self.sample is None or layer is None:
            return
        try:
            planes = self._planes_in_view(layer)
        except LayerProblem:
            return  # said by the next preview
        if planes != self._shown_planes:
            self._preview_soon()

    def _planes_in_view(self, layer: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The index of the plane of `layer` the viewer shows, and that of the chosen labels (() without)."""
        index = self._image_plane(layer)[1]
        labels_layer = self.labels_combo.value
        return index, () if labels_layer is None else self._labels_plane(labels_layer)

    def _image_plane(self, layer: Any) -> tuple[Any, tuple[int, ...]]:
        """`layer`'s stack of (C, H, W) planes and the index of the one the viewer shows."""
        layers = self.viewer.layers
        stack = plane_stack(layer, channels_of(layer, layers), layers)
        return stack, shown_stack_plane(self.viewer, layer, stack)

    def _labels_plane(self, labels_layer: Any) -> tuple[int, ...]:
        """The index of the plane of the labels layer the viewer shows (() for 2-D labels)."""
        leading = tuple(int(n) for n in layer_data(labels_layer).shape[:-2])
        return shown_plane(self.viewer, labels_layer, range(len(leading)), leading)

    def _source(self, layer: Any) -> tuple[tuple[int, ...], Any, np.ndarray | None, tuple[int, int]]:
        """The index of the plane of `layer` the viewer shows (over its Z, T, ... axes; () for a 2-D image), that
        (C, H, W) plane, the labels plane (H, W) the viewer shows or None, and the origin (y, x) of the window
        centred on the view."""
        stack, index = self._image_plane(layer)
        plane = stack.plane(index)
        n = self.window_spin.value()
        height, width = stack.shape
        scale, translate = np.asarray(layer.scale[-2:]), np.asarray(layer.translate[-2:])
        camera = self.viewer.scene.camera if hasattr(self.viewer, "scene") else self.viewer.camera  # napari < 0.9
        centre = (np.asarray(camera.center[-2:]) - translate) / scale
        origin = tuple(
            int(np.clip(round(c - n / 2), -(n // 2), side - n // 2)) for c, side in zip(centre, (height, width))
        )
        labels_layer = self.labels_combo.value
        if labels_layer is None:
            return index, plane, None, origin  # type: ignore[return-value]
        data = layer_data(labels_layer)
        if tuple(data.shape[-2:]) != (height, width):
            raise LayerProblem(
                f"the labels '{labels_layer.name}' {tuple(data.shape)} do not match the image "
                f"'{layer.name}' ({height} x {width})"
            )
        labels = np.asarray(data[self._labels_plane(labels_layer)])
        return index, plane, labels, origin  # type: ignore[return-value]

    def _show(
        self,
        result: tuple[np.ndarray, np.ndarray, np.ndarray],
        layer: Any,
        origin: tuple[int, int],
        plane: tuple[int, ...],
        run: int,
    ) -> None:
        if run != self._runs:
            return
        image, labels, grid = self.sample = result
        scale, units = tuple(layer.scale[-2:]), tuple(layer.units)[-2:]  # the image's units: else napari drops all
        width = pixel_shape(layer)[-1]
        translate = (layer.translate[-2] + origin[0] * scale[0], layer.translate[-1] + (width + GAP) * scale[1])
        picture = shown_channels(image)
        colour = picture.ndim == 3
        shown = {
            "augmented image": (picture, "image"),
            "augmented labels": (labels, "labels"),
            "deformation grid": (grid, "image"),
        }
        for name, (data, kind) in shown.items():
            existing = self.layers.get(name)
            if existing is not None and existing in self.viewer.layers:
                if name != "augmented image" or bool(existing.rgb) == colour:
                    existing.data = data
                    existing.translate = translate
                    continue
                self.viewer.layers.remove(existing)  # grey to colour or back: napari fixes that when it adds a layer
            if kind == "labels":
                self.layers[name] = self.viewer.add_labels(
                    data, name=name, scale=scale, translate=translate, units=units, metadata=preview_metadata(layer)
                )
            elif name == "deformation grid":
                self.layers[name] = self.viewer.add_image(
                    data,
                    name=name,
                    scale=scale,
                    translate=translate,
                    units=units,
                    colormap="cyan",
                    blending="additive",
                    opacity=0.6,
                    contrast_limits=(0.0, 1.0),
                    metadata=preview_metadata(layer),
                )
            else:  # made from the image: never an image to segment or train on (`is_original_image`)
                self.layers[name] = self.viewer.add_image(
                    data,
                    name=name,
                    scale=scale,
                    translate=translate,
                    units=units,
                    rgb=colour,
                    **({"contrast_limits": (0.0, 1.0)} if colour else {"colormap": "gray"}),
                    metadata=preview_metadata(layer),
                )
        self._outline(layer, origin)
        channels = image.shape[0] if image.ndim == 3 else 1
        colours = (
            f" (its {channels} channels as red, green{', blue' if channels > 2 else ''}"
            f"{'; the first three of them' if channels > 3 else ''})"
            if channels > 1
            else ""
        )
        self.status.setText(
            f"sample {self.seed}: the window at ({origin[0]}, {origin[1]}){plane_words(plane)} as training sees "
            f"it{colours}; the Fine-tune dock trains with these settings"
        )
        self.shown.emit(result)

    def _outline(self, layer: Any, origin: tuple[int, int]) -> None:
        """A rectangle on the image around the window being previewed."""
        n = self.window_spin.value()
        corners = np.array([[origin[0], origin[1]], [origin[0] + n, origin[1] + n]], float)
        corners = (corners - 0.5) * np.asarray(layer.scale[-2:]) + np.asarray(layer.translate[-2:])  # pixel edges
        existing = self.layers.get("preview window")
        if existing is not None and existing in self.viewer.layers:
            existing.data = [corners]
            return
        self.layers["preview window"] = self.viewer.add_shapes(
            [corners],
            shape_type="rectangle",
            name="preview window",
            units=tuple(layer.units)[-2:],  # the corners are in the image's world coordinates
            edge_color="yellow",
            face_color="transparent",
            edge_width=2,
        )


def shown_channels(image: np.ndarray) -> np.ndarray:
    """The augmented window as a picture: (H, W) for one channel; (H, W, 3) colour for several, channels 1, 2, 3
    as red, green, blue (two channels: red and green), the normalised values clipped to [0, 1].

    >>> shown_channels(np.ones((2, 4, 5), np.float32)).shape, shown_channels(np.ones((1, 4, 5))).shape
    ((4, 5, 3), (4, 5))
    """
    if image.ndim == 2:
        return image
    if image.shape[0] == 1:
        return image[0]
    picture = np.zeros((*image.shape[1:], 3), np.float32)
    picture[..., : min(3, image.shape[0])] = np.moveaxis(image[:3], 0, -1)
    return np.clip(picture, 0.0, 1.0)
