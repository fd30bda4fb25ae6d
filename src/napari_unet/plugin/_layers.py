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

METADATA_KEY = "napari_unet"  # layer.metadata[METADATA_KEY] = {"axes": "CYX", "channel": i, "channels": n, ...}


class LayerProblem(ValueError):
    """A layer the dock cannot use; the message is shown to the user as a napari notification."""


def layer_combo(viewer: Any, kind: type | tuple[type, ...], label: str, *, optional: str | None = None) -> Any:
    """A magicgui drop-down of the viewer's layers of `kind` (refreshed by the dock's `reset_choices`);
    `optional`: the text of the "no layer" entry (value None), for optional layers."""
    from magicgui.widgets import ComboBox

    def choices(_widget: Any) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, kind)]

    combo = ComboBox(label=label, choices=choices, nullable=optional is not None)
    if optional is not None:
        combo.null_string = optional
    return combo


def layer_data(layer: Any) -> Any:
    """The full-resolution array of a layer (level 0 of a multiscale layer)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


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
    plane axes (() for a single 2-D image), in the order they appear in `data`.
    """

    data: Any
    channel_axis: int | None
    leading: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape[-2:])  # type: ignore[return-value]

    @property
    def channels(self) -> int:
        return 1 if self.channel_axis is None else int(self.data.shape[self.channel_axis])

    @property
    def planes(self) -> list[tuple[int, ...]]:
        return list(np.ndindex(*self.leading))

    def plane(self, index: tuple[int, ...]) -> Any:
        """The (C, H, W) plane at `index` over the leading axes: a view (lazy for dask, zarr and memmaps)."""
        data = self.data
        if self.channel_axis is None:
            return data[index][None] if index else data[None]
        key: list[Any] = []
        remaining = iter(index)
        for axis in range(data.ndim - 2):
            key.append(slice(None) if axis == self.channel_axis else next(remaining))
        return data[tuple(key)]

    def output_shape(self) -> tuple[int, ...]:
        """Shape of a labels layer for this stack: leading axes, then (H, W)."""
        return (*self.leading, *self.shape)

    def spatial(self, values: Any) -> tuple[float, ...]:
        """A layer's per-axis `values` (scale, translate) for the output: without the channel axis."""
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
    """Input channels a new model needs for this layer: its channel axis, or its file's channel layers."""
    axes = stored_axes(layer)
    if axes is not None and "C" in axes[:-2]:
        return int(layer_data(layer).shape[axes.index("C")])
    return len(channel_group(layer, layers)) or 1


def plane_stack(layer: Any, in_channels: int = 1, layers: Any = ()) -> PlaneStack:
    """Read an image layer as planes for a model with `in_channels` inputs; LayerProblem says what is wrong.

    layers: the viewer's layers, where the other channels of a file split by our reader are found.
    """
    data = layer_data(layer)
    if data.ndim < 2:
        raise LayerProblem(f"layer '{layer.name}' has {data.ndim} dimension(s); an image needs Y and X")
    if getattr(layer, "rgb", False):
        raise LayerProblem(
            f"layer '{layer.name}' is an RGB image (colours last, shape {tuple(data.shape)}) and the model expects "
            f"{in_channels} channel(s): open the file with the napari-unet reader (a grey PNG saved as RGB "
            "becomes one grey layer) or convert the image to grey first"
        )
    axes = stored_axes(layer)
    group = channel_group(layer, layers) if in_channels > 1 else []
    if len(group) == in_channels:
        data = ChannelGroup([layer_data(g) for g in group])
        return PlaneStack(data, 0, tuple(int(n) for n in data.shape[1:-2]))
    if axes is not None and "C" in axes[:-2]:
        channel_axis: int | None = axes.index("C")
    elif in_channels > 1 and data.ndim >= 3 and data.shape[-3] == in_channels:
        channel_axis = data.ndim - 3
    else:
        channel_axis = None
    channels = 1 if channel_axis is None else data.shape[channel_axis]
    if channels != in_channels:
        raise LayerProblem(
            f"the model expects {in_channels} channel(s) but layer '{layer.name}' (shape {tuple(data.shape)}) has "
            f"{channels}" + (": put the channels on the axis before Y and X" if in_channels > 1 else "")
        )
    leading = tuple(n for axis, n in enumerate(data.shape[:-2]) if axis != channel_axis)
    return PlaneStack(data, channel_axis, tuple(int(n) for n in leading))


def check_layer_pair(image_layer: Any, labels_layer: Any) -> None:
    """Image and annotation layers must cover the same pixels."""
    image_shape = tuple(layer_data(image_layer).shape)
    labels_shape = tuple(labels_layer.data.shape)
    if getattr(image_layer, "rgb", False):
        image_shape = image_shape[:-1]
    if image_shape[-2:] != labels_shape[-2:]:
        raise LayerProblem(
            f"the image '{image_layer.name}' is {_size(image_shape)} pixels but the labels "
            f"'{labels_layer.name}' are {_size(labels_shape)}: annotate on a Labels layer of the image's size"
        )


def _size(shape: tuple[int, ...]) -> str:
    return " x ".join(str(n) for n in shape[-2:])


def throttled(callback: Callable[[], None], interval_ms: int, parent: Any) -> Callable[[], None]:
    """A function that asks for `callback` at most once per `interval_ms` (a single-shot QTimer)."""
    from qtpy.QtCore import QTimer

    timer = QTimer(parent)
    timer.setSingleShot(True)
    timer.setInterval(interval_ms)
    timer.timeout.connect(callback)

    def request() -> None:
        if not timer.isActive():
            timer.start()

    request.timer = timer  # type: ignore[attr-defined]
    return request


def debounced(callback: Callable[[], None], interval_ms: int, parent: Any) -> Callable[[], None]:
    """A function that runs `callback` once, `interval_ms` after the last of a burst of calls."""
    from qtpy.QtCore import QTimer

    timer = QTimer(parent)
    timer.setSingleShot(True)
    timer.setInterval(interval_ms)
    timer.timeout.connect(callback)

    def request() -> None:
        timer.start()

    request.timer = timer  # type: ignore[attr-defined]
    return request


def wrapped_label(text: str = "", lines: int = 2) -> Any:
    """A word-wrapped QLabel tall enough for `lines` lines (dock layouts otherwise clip wrapped text)."""
    from qtpy.QtWidgets import QLabel

    label = QLabel(text)
    label.setWordWrap(True)
    label.setMinimumHeight(label.fontMetrics().lineSpacing() * lines + 4)
    return label

