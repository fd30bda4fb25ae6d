"""From napari layers to the arrays the core expects, and the layer pickers of the docks.

An image layer is read as a stack of 2-D planes, each (C, H, W): Y and X are the last two axes, the channel
axis is found from the layer (RGB, our reader's metadata, or a size equal to the model's input channels) and
every other leading axis (Z, T, ...) is a plane index, segmented plane by plane. Lazy data (dask, zarr) stays
lazy: a plane is a view, read window by window by the tiling code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox
from psygnal import Signal

METADATA_KEY = "napari_unet"  # layer.metadata[METADATA_KEY] = {"axes": "CYX", "channel": i, "channels": n, ...}


class LayerProblem(ValueError):
    """A layer the dock cannot use; the message is shown to the user as a napari notification."""


class LayerComboBox(ComboBox):
    """A magicgui drop-down that emits `assigned` whenever code sets its `value`, also to the value it shows (a
    layer set on the user's behalf is a choice all the same); the user's own picks are Qt's `native.activated`."""

    assigned = Signal(object)

    @ComboBox.value.setter
    def value(self, value: Any) -> None:
        ComboBox.value.fset(self, value)
        self.assigned.emit(value)


def layer_combo(viewer: Any, kind: type | tuple[type, ...], label: str, *, optional: str | None = None) -> Any:
    """A magicgui drop-down of the viewer's layers of `kind` (refreshed by the dock's `reset_choices`, or a
    `LayerPicker`); `optional`: the text of the "no layer" entry (value None), for optional layers."""

    def choices(_widget: Any) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, kind)]

    combo = LayerComboBox(label=label, choices=choices, nullable=optional is not None)
    if optional is not None:
        combo.null_string = optional
    return combo


class LayerPicker:
    """Keeps a layer drop-down (`layer_combo`) in step with the viewer's layers, telling a layer the user chose
    from one the dock preselected.

    A value picked by the user in the drop-down, or set by code on the user's behalf (`combo.value = layer`), is
    chosen: it stays while its layer is in the viewer (renamed, moved, others added). Until then (and after the
    chosen layer is removed) the value is preselected, and each layer added that `follows(layer)` accepts becomes
    the value. When the dock opens, the first layer is preselected, or the last one `follows` accepts when it
    refuses the first (a segmentation listed before the Labels layer the user paints in), or, when it refuses them
    all, none in a drop-down that offers none (`layer_combo`'s `optional`; else the first stays).
    """

    def __init__(self, combo: Any, follows: Callable[[Any], bool] | None = None):
        """follows: which added layers become the value while none is chosen (None: none do)."""
        self.combo = combo
        self.follows = follows
        self.chosen = False  # the value is the user's choice, not a preselection
        self._known: set[Any] | None = None  # unique ids of the layers offered at the last refresh
        self.added: list[Any] = []  # the layers offered since the refresh before the last (none when the dock opens)
        self._preselecting = False
        combo.assigned.connect(self._assigned)
        combo.native.activated.connect(self._activated)  # the user's pick, also of the item already shown

    def refresh(self) -> Any:
        """Offer the viewer's layers again (napari's layers changed); returns the value before (None: none)."""
        before = self.combo.value
        self._preselecting = True
        try:
            self.combo.reset_choices()
            layers = [layer for layer in self.combo.choices if layer is not None]
            if before is not None and before in layers:
                if self.combo.value != before:  # == : the viewer proxy wraps each layer anew
                    self.combo.value = before  # the drop-down matches names: a rename or a move lost it
            elif before is not None:
                self.chosen = False  # removed: what replaces it is not the user's choice
            if self._known is None:  # the dock opens
                self.added = []
                if self.follows is not None and layers:
                    self.combo.value = self._opening_value(layers)
            else:
                self.added = [layer for layer in layers if layer.unique_id not in self._known]
                followed = [layer for layer in self.added if self.follows is not None and self.follows(layer)]
                if followed and not self.chosen:
                    self.combo.value = followed[-1]
            self._known = {layer.unique_id for layer in layers}
        finally:
            self._preselecting = False
        return before

    def _opening_value(self, layers: list[Any]) -> Any:
        """The value when the dock opens: the first layer, unless `follows` refuses it: then the last one it accepts,
        else none when the drop-down offers none (a segmentation alone is no annotation), else the first."""
        if self.follows(layers[0]):
            return layers[0]
        accepted = [layer for layer in layers if self.follows(layer)]
        if accepted:
            return accepted[-1]
        return None if None in self.combo.choices else layers[0]

    def preselect(self, layer: Any) -> None:
        """Make `layer` (None: no layer, in an optional picker) the value, unless the user chose one."""
        if self.chosen:
            return
        self._preselecting = True
        try:
            self.combo.value = layer
        finally:
            self._preselecting = False

    def _assigned(self, _value: Any) -> None:
        if not self._preselecting:
            self.chosen = True

    def _activated(self, _index: int) -> None:
        self.chosen = True


def made_from(layer: Any) -> str | None:
    """The name of the layer `layer` was computed from by a dock (`result_metadata`), or None."""
    return (layer.metadata.get(METADATA_KEY) or {}).get("made_from")


def result_metadata(source: Any) -> dict[str, Any]:
    """Metadata of a layer a dock computes from `source` (labels, probabilities, a weight map): `source`'s name
    (`made_from`) and physical pixel size (`pixel_size_metadata`)."""
    return {METADATA_KEY: {**pixel_size_metadata(source).get(METADATA_KEY, {}), "made_from": source.name}}


def preview_metadata(source: Any) -> dict[str, Any]:
    """`result_metadata` of a layer that only shows something (the Augmentation preview's): never a layer to
    train on, segment or measure (`is_preview`)."""
    metadata = result_metadata(source)
    metadata[METADATA_KEY]["preview"] = True
    return metadata


def is_preview(layer: Any) -> bool:
    """A layer a dock shows for a look only (`preview_metadata`)."""
    return bool((layer.metadata.get(METADATA_KEY) or {}).get("preview"))


def is_users_labels(layer: Any) -> bool:
    """A Labels layer the user added or opened (to paint annotations in), not one a dock computed."""
    from napari.layers import Labels

    return isinstance(layer, Labels) and made_from(layer) is None


def is_original_image(layer: Any) -> bool:
    """An image layer opened or added by the user, not one a dock computed (probabilities, a weight map...)."""
    from napari.layers import Image

    return isinstance(layer, Image) and made_from(layer) is None


def source_image(labels_layer: Any, layers: Any) -> Any | None:
    """The image layer among `layers` that `labels_layer` was made from, when that can be known; None otherwise.

    Only an image of the labels' size (Y, X) qualifies: the one named by the labels' metadata (the Segment dock's
    result, `result_metadata`), else the one the labels are named after ("<image> labels", "<image> labels
    (retuned)"), else the only image of that size that no dock computed.
    """
    from napari.layers import Image

    if labels_layer is None:
        return None
    size = tuple(layer_data(labels_layer).shape[-2:])
    images = [layer for layer in layers if isinstance(layer, Image) and pixel_shape(layer)[-2:] == size]
    named = [layer for layer in images if layer.name == made_from(labels_layer)]
    named = named or [layer for layer in images if labels_layer.name.startswith(f"{layer.name} labels")]
    if named:
        return max(named, key=lambda layer: len(layer.name))  # "cells 2 labels": "cells 2", not "cells"
    originals = [layer for layer in images if made_from(layer) is None]
    return originals[0] if len(originals) == 1 else None


def layer_data(layer: Any) -> Any:
    """The full-resolution array of a layer (level 0 of a multiscale layer)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def pixel_shape(layer: Any) -> tuple[int, ...]:
    """The shape of a layer's pixels: its data's, less the colours of an RGB layer (kept last by napari)."""
    shape = tuple(int(n) for n in layer_data(layer).shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape


def layer_pixel_size(layer: Any) -> dict[str, Any] | None:
    """The physical pixel size our reader stored with `layer` (`metadata.PixelSize.to_dict`), or None."""
    return (layer.metadata.get(METADATA_KEY) or {}).get("pixel_size") if layer is not None else None


def pixel_size_metadata(layer: Any) -> dict[str, Any]:
    """Layer metadata that carries `layer`'s physical pixel size (set by our reader) to a layer made from it,
    so that measuring that layer alone reports physical units; {} when `layer` has none."""
    info = layer_pixel_size(layer)
    return {METADATA_KEY: {"pixel_size": info}} if info else {}


def placed_like(layer: Any, ndim: int) -> dict[str, Any]:
    """`add_labels` keywords that place an array of `ndim` dimensions over `layer`'s last ones: its scale,
    translate, units and pixel size (an RGB layer's colours are not among its dimensions in napari)."""
    pad = max(0, ndim - len(layer.scale))
    return {
        "scale": (1.0,) * pad + tuple(layer.scale)[-ndim:],
        "translate": (0.0,) * pad + tuple(layer.translate)[-ndim:],
        "units": ("pixel",) * pad + tuple(layer.units)[-ndim:],
        "metadata": pixel_size_metadata(layer),
    }


def stored_axes(layer: Any) -> str | None:
    """The axes string our reader stored with the layer, when it still matches the layer's dimensions."""
    info = layer.metadata.get(METADATA_KEY) or {}
    axes = info.get("axes")
    if isinstance(axes, str) and len(axes) == layer_data(layer).ndim:
        return axes
    return None


@dataclass(frozen=True)
class PlaneStack:
    """An image layer as planes of (C, H, W).

    data: the layer's array; channel_axis: its channel axis (None: one channel); leading: the shape of the
    plane axes (() for a single 2-D image), in the order they appear in `data`; choice: a
    `channels.ChannelChoice` applied to each plane (channels picked, or grey), None for all channels as they are.
    """

    data: Any
    channel_axis: int | None
    leading: tuple[int, ...]
    choice: Any = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape[-2:])  # type: ignore[return-value]

    @property
    def channels(self) -> int:
        """Channels of each plane the network sees (after the choice)."""
        stored = 1 if self.channel_axis is None else int(self.data.shape[self.channel_axis])
        return stored if self.choice is None else self.choice.output_channels(stored)

    @property
    def planes(self) -> list[tuple[int, ...]]:
        return list(np.ndindex(*self.leading))

    def plane(self, index: tuple[int, ...]) -> Any:
        """The (C, H, W) plane at `index` over the leading axes: a view (lazy for dask, zarr and memmaps),
        except with a channel choice, which reads the plane (a copy, grey or with the chosen channels)."""
        data = self.data
        if self.channel_axis is None:
            from napari_unet.tiling import with_channel_axis  # torch: imported when a plane is segmented

            return with_channel_axis(data[index] if index else data)
        key: list[Any] = []
        remaining = iter(index)
        for axis in range(data.ndim - 2):
            key.append(slice(None) if axis == self.channel_axis else next(remaining))
        plane = data[tuple(key)]
        if self.choice is None or self.choice.is_identity:
            return plane
        plane, axes = self.choice.apply(plane if hasattr(plane, "compute") else np.asarray(plane), "CYX")
        return plane if axes == "CYX" else plane[None]

    def output_shape(self) -> tuple[int, ...]:
        """Shape of a labels layer for this stack: leading axes, then (H, W)."""
        return (*self.leading, *self.shape)

    def spatial(self, values: Any) -> tuple[Any, ...]:
        """A layer's per-axis `values` (scale, translate, units) for the output: without the channel axis."""
        values = tuple(values)
        if len(values) == len(self.output_shape()):
            return values
        return tuple(v for axis, v in enumerate(values) if axis != self.channel_axis)


class ChannelGroup:
    """The single-channel layers of one multi-channel file (our reader splits channels into layers) seen as
    one array (C, ...) without copying: indexing indexes each layer's array; `np.asarray` stacks them."""

    def __init__(self, arrays: list[Any]):
        self.arrays = arrays

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.arrays), *self.arrays[0].shape)

    @property
    def ndim(self) -> int:
        return 1 + self.arrays[0].ndim

    @property
    def dtype(self) -> np.dtype:
        return np.result_type(*[a.dtype for a in self.arrays])

    def __getitem__(self, key: Any) -> Any:
        key = key if isinstance(key, tuple) else (key,)
        if key and key[0] is Ellipsis:
            channels, rest = slice(None), key
        else:
            channels, rest = (key[0] if key else slice(None)), key[1:]
        if isinstance(channels, (int, np.integer)):
            return self.arrays[channels][rest]
        return ChannelGroup([a[rest] for a in self.arrays[channels]])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.stack([np.asarray(a) for a in self.arrays]).astype(dtype or self.dtype, copy=False)


def channel_group(layer: Any, layers: Any) -> list[Any]:
    """The layers holding the channels of `layer`'s file, in channel order ([] if `layer` is not one)."""
    info = layer.metadata.get(METADATA_KEY) or {}
    count, source = info.get("channels"), info.get("source")
    if not count or count < 2 or source is None:
        return []
    found: dict[int, Any] = {}
    for other in layers:
        other_info = other.metadata.get(METADATA_KEY) or {}
        if other_info.get("source") == source and other_info.get("channels") == count:
            found.setdefault(int(other_info.get("channel", -1)), other)
    group = [found.get(i) for i in range(count)]
    if any(g is None for g in group) or len({tuple(layer_data(g).shape) for g in group}) != 1:
        return []
    return group


def channels_of(layer: Any, layers: Any = ()) -> int:
    """Channels of this layer: RGB colours, its channel axis, or its file's channel layers (1 if none)."""
    if getattr(layer, "rgb", False):
        return 3
    axes = stored_axes(layer)
    if axes is not None and "C" in axes[:-2]:
        return int(layer_data(layer).shape[axes.index("C")])
    return len(channel_group(layer, layers)) or 1


def plane_stack(layer: Any, in_channels: int = 1, layers: Any = (), choice: Any = None) -> PlaneStack:
    """Read an image layer as planes for a model with `in_channels` inputs; LayerProblem says what is wrong.

    layers: the viewer's layers, where the other channels of a file split by our reader are found.
    choice: a `channels.ChannelChoice` (channels picked, or grey) applied to every plane; None: all channels.
    RGB layers (colours last) are read with the colours as channels (alpha dropped).
    """
    data = layer_data(layer)
    if data.ndim < 2:
        raise LayerProblem(f"layer '{layer.name}' has {data.ndim} dimension(s); an image needs Y and X")
    picking = choice is not None and choice.channels is not None  # a grey conversion alone reads the chosen layer
    if getattr(layer, "rgb", False):
        data = np.moveaxis(data[..., :3], -1, -3)
        channel_axis: int | None = data.ndim - 3
        return _checked(PlaneStack(data, channel_axis, _leading(data, channel_axis), choice), layer, in_channels)
    axes = stored_axes(layer)
    group = channel_group(layer, layers) if in_channels > 1 or picking else []
    if group and (picking or len(group) == in_channels):
        data = ChannelGroup([layer_data(g) for g in group])
        return _checked(PlaneStack(data, 0, tuple(int(n) for n in data.shape[1:-2]), choice), layer, in_channels)
    if group:  # a file of another channel count, opened one layer per channel: say so, not "put the channels…"
        todo = (
            f"choose {in_channels} of them in the dock's channels box (e.g. "
            f"{','.join(str(c) for c in range(in_channels))})"
            if len(group) > in_channels
            else "this model cannot take it"
        )
        raise LayerProblem(
            f"the model expects {in_channels} channels but layer '{layer.name}' is one of the {len(group)} "
            f"channels of its file: {todo}"
        )
    if axes is not None and "C" in axes[:-2]:
        channel_axis = axes.index("C")
    elif in_channels > 1 and data.ndim >= 3 and data.shape[-3] == in_channels:
        channel_axis = data.ndim - 3
    else:
        channel_axis = None
    return _checked(PlaneStack(data, channel_axis, _leading(data, channel_axis), choice), layer, in_channels)


def _leading(data: Any, channel_axis: int | None) -> tuple[int, ...]:
    return tuple(int(n) for axis, n in enumerate(data.shape[:-2]) if axis != channel_axis)


def _checked(stack: PlaneStack, layer: Any, in_channels: int) -> PlaneStack:
    """`stack`, if its planes have the model's channel count; else a LayerProblem that says what to change."""
    if stack.choice is not None:
        stored = 1 if stack.channel_axis is None else int(stack.data.shape[stack.channel_axis])
        if stack.choice.channels is not None and max(stack.choice.channels) >= stored:
            raise LayerProblem(
                f"channel {max(stack.choice.channels)} was chosen but layer '{layer.name}' has {stored} "
                f"channel(s) (0 to {stored - 1})"
            )
    if stack.channels != in_channels:
        hint = (
            "choose its channels or grey conversion in the dock"
            if stack.channels > in_channels
            else "put the channels on the axis before Y and X, or open the file with the napari-unet reader"
        )
        raise LayerProblem(
            f"the model expects {in_channels} channel(s) but layer '{layer.name}' "
            f"(shape {tuple(layer_data(layer).shape)}) gives {stack.channels}: {hint}"
        )
    return stack


def region_mask(layer: Any, shape: tuple[int, int], image_layer: Any) -> np.ndarray | None:
    """The region a Shapes layer outlines or a 2-D Labels layer paints (nonzero), as an (H, W) bool mask of
    `shape` in the pixels of `image_layer`; None without a layer. An empty region is a LayerProblem.

    Shapes are placed where they are seen: their vertices go through world coordinates into the image's pixels,
    so a Shapes layer of another scale or translation than the image's (napari gives a new Shapes layer scale 1,
    a calibrated image has its pixel size) outlines the pixels it is drawn over."""
    from napari.layers import Shapes

    if layer is None:
        return None
    if isinstance(layer, Shapes):
        if not len(layer.data):
            raise LayerProblem(f"the region layer '{layer.name}' has no shapes: draw the annotated region")
        in_pixels = Shapes(
            [[image_layer.world_to_data(layer.data_to_world(vertex))[-2:] for vertex in data] for data in layer.data],
            shape_type=list(layer.shape_type),
        )
        masks = np.asarray(in_pixels.to_masks(mask_shape=shape))
        mask = masks.reshape(-1, *shape).any(axis=0)
    else:
        data = np.asarray(layer.data)
        if data.shape[-2:] != tuple(shape) or data.ndim != 2:
            raise LayerProblem(f"the region layer '{layer.name}' must be a 2-D layer of shape {shape}")
        mask = data != 0
    if not mask.any():
        raise LayerProblem(f"the region layer '{layer.name}' is empty")
    return mask


def annotations_of(labels_layer: Any, image_layer: Any, stack: PlaneStack) -> np.ndarray:
    """The instance labels (..., H, W) painted on `labels_layer` for the planes `stack` of `image_layer`: integers,
    of the stack's output shape (`check_layer_pair` first), else a LayerProblem that says what to annotate on."""
    check_layer_pair(image_layer, labels_layer)
    labels = np.asarray(labels_layer.data)
    if labels.dtype.kind not in "iu":
        raise LayerProblem(f"'{labels_layer.name}' must hold integer labels, got {labels.dtype}")
    if labels.shape != stack.output_shape():
        if labels.ndim == 2 and stack.leading:
            raise LayerProblem(
                f"'{image_layer.name}' is a stack of {len(stack.planes)} planes (shape "
                f"{tuple(layer_data(image_layer).shape)}) but the annotations are one 2-D plane: annotate on "
                f"a Labels layer of shape {stack.output_shape()}, or train on a single 2-D image"
            )
        raise LayerProblem(
            f"the annotations '{labels_layer.name}' have shape {labels.shape}, the image needs {stack.output_shape()}"
        )
    return labels


def check_layer_pair(image_layer: Any, labels_layer: Any) -> None:
    """Image and annotation layers must cover the same pixels."""
    image_shape = pixel_shape(image_layer)
    labels_shape = tuple(labels_layer.data.shape)
    if image_shape[-2:] != labels_shape[-2:]:
        raise LayerProblem(
            f"the image '{image_layer.name}' is {_size(image_shape)} pixels but the labels "
            f"'{labels_layer.name}' are {_size(labels_shape)}: annotate on a Labels layer of the image's size"
        )


def _size(shape: tuple[int, ...]) -> str:
    return " x ".join(str(n) for n in shape[-2:])


def throttled(callback: Callable[[], None], interval_ms: int, parent: Any) -> Callable[[], None]:
    """A function that asks for `callback` at most once per `interval_ms` (a single-shot QTimer)."""
    timer = _single_shot(callback, interval_ms, parent)

    def request() -> None:
        if not timer.isActive():
            timer.start()

    request.timer = timer  # type: ignore[attr-defined]
    return request


def debounced(callback: Callable[[], None], interval_ms: int, parent: Any) -> Callable[[], None]:
    """A function that runs `callback` once, `interval_ms` after the last of a burst of calls."""
    timer = _single_shot(callback, interval_ms, parent)

    def request() -> None:
        timer.start()

    request.timer = timer  # type: ignore[attr-defined]
    return request


def _single_shot(callback: Callable[[], None], interval_ms: int, parent: Any) -> Any:
    from qtpy.QtCore import QTimer

    timer = QTimer(parent)
    timer.setSingleShot(True)
    timer.setInterval(interval_ms)
    timer.timeout.connect(callback)
    return timer
