"""Redrawing part of a Labels layer whose array was written in place.

`layer.refresh()` colour-maps the whole displayed plane and uploads it as one texture: for a 1024x1024 layer
that is tens of milliseconds on the main thread, and much more when the canvas is drawn by a software OpenGL
(a headless machine, a remote desktop). A finished tile changes a small region, so `refresh_region` redraws
only that region: its colour mapping and a sub-texture upload, the way napari's own brush does.

napari's one public way to do this, `Labels.data_setitem`, also records every change in the undo history
(24 bytes per changed pixel, up to 100 tiles' worth, and Ctrl+Z would then undo tiles of the segmentation);
so this uses the internals that `data_setitem` and the brush use. napari 0.9 warns (FutureWarning) that
plugins may lose access to private attributes from napari 0.10 on; the warning is silenced here and any
failure to reach the internals makes `refresh_region` return False: the caller then refreshes the whole layer,
which is slower but correct. `partial_refresh_supported` lets the tests pin this down for the napari they
run with, so that the day the internals go is noticed.

`TileDrawing` is how the Segment dock draws its result layers while tiles stream in: each tile's region at
once, throttled whole refreshes where regions cannot be drawn alone, and the final labels band by band.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import numpy as np

REFRESH_MS = 100  # at most ~10 whole-layer refreshes per second while tiles stream in
REFRESH_BUDGET = 8  # ...and at least 8x the time a refresh takes between two (large layers redraw slowly)
_LABELS_INTERNALS = (
    "_slice",
    "_slice_input",
    "_accumulate_updated_slice",
    "_partial_labels_refresh",
    "_get_pt_not_disp",
    "colormap",
)


@contextmanager
def _internals() -> Any:
    """Silence napari's FutureWarning about private attributes (see the module docstring)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def partial_refresh_supported(layer: Any) -> bool:
    """True when `layer` (a Labels layer) offers the internals `refresh_region` relies on."""
    with _internals():
        try:
            if not all(hasattr(layer, name) for name in _LABELS_INTERNALS):
                return False
            image = getattr(layer._slice, "image", None)
            return hasattr(image, "raw") and hasattr(image, "view") and hasattr(layer.colormap, "_data_to_texture")
        except Exception:  # a proxy that refuses private access may raise anything
            return False


def refresh_region(layer: Any, key: tuple[Any, ...]) -> bool:
    """Redraw the region `key` of a Labels layer after its data was written in place there.

    key: one int or slice per axis of `layer.data` (ints for the leading plane axes, slices with explicit
    start and stop for the spatial axes). Returns True when the region is redrawn, or when it lies in a plane
    that is not shown (napari slices it afresh when the user moves there); False when the caller must call
    `layer.refresh()` instead: napari without the internals, a multiscale layer, data other than a NumPy
    array, a 3-D view, contours drawn, or a slice not loaded yet.
    """
    if getattr(layer, "multiscale", False) or layer.contour != 0 or not partial_refresh_supported(layer):
        return False
    with _internals():
        try:
            return _refresh_region(layer, key)
        except (AttributeError, TypeError, IndexError):  # internals changed shape: the caller redraws it all
            return False


def _refresh_region(layer: Any, key: tuple[Any, ...]) -> bool:
    slice_input = layer._slice_input
    if slice_input.ndisplay != 2 or len(key) != layer.ndim:
        return False
    slicing = getattr(layer, "_slicing_state", None)
    if slicing is not None and not getattr(slicing, "loaded", True):
        return False
    shown = layer._get_pt_not_disp()  # {axis: index} of the plane on screen
    for axis, index in shown.items():
        wanted = key[axis]
        if isinstance(wanted, slice):
            if not (wanted.start or 0) <= index < (layer.data.shape[axis] if wanted.stop is None else wanted.stop):
                return True
        elif int(wanted) != int(index):
            return True
    region = tuple(key[axis] for axis in slice_input.displayed)
    if not all(isinstance(part, slice) for part in region):
        return False
    image = layer._slice.image
    if image.raw.ndim != 2 or not np.shares_memory(image.raw, layer.data):
        return False  # the shown plane is a copy (not a NumPy array in memory): it needs slicing afresh
    image.view[region] = layer.colormap._data_to_texture(image.raw[region])
    whole = tuple(part if isinstance(part, slice) else slice(int(part), int(part) + 1) for part in key)
    layer._accumulate_updated_slice(whole)
    layer._partial_labels_refresh()
    return True


def refresh_thumbnail(layer: Any) -> None:
    """Update the layer list's thumbnail of `layer` alone (a full refresh where napari lacks the internal)."""
    with _internals():
        update = getattr(layer, "_update_thumbnail", None)
        if callable(update):
            try:
                update()
                return
            except (AttributeError, TypeError):
                pass
    layer.refresh(extent=False)


def bands(key: tuple[Any, ...], shape: tuple[int, ...], pixels: int = 1 << 18) -> list[tuple[Any, ...]]:
    """`key` (a plane index followed by the whole Y and X ranges) cut into bands of rows of about `pixels`
    pixels, to redraw a large region over several turns of the event loop.

    >>> bands((slice(0, 4), slice(0, 8)), (4, 8), pixels=16)
    [(slice(0, 2, None), slice(0, 8, None)), (slice(2, 4, None), slice(0, 8, None))]
    """
    *plane, rows, cols = key
    start, stop = rows.start or 0, shape[-2] if rows.stop is None else rows.stop
    width = (shape[-1] if cols.stop is None else cols.stop) - (cols.start or 0)
    step = max(1, pixels // max(width, 1))
    return [(*plane, slice(y, min(y + step, stop)), cols) for y in range(start, stop, step)]


class RegionRedraws:
    """A queue of regions of Labels layers to redraw, one region per turn of the event loop, so that no turn
    redraws a whole large layer. A layer that cannot be redrawn in part is refreshed whole, once."""

    def __init__(self, parent: Any):
        from qtpy.QtCore import QTimer

        self.pending: list[tuple[Any, tuple[Any, ...]]] = []
        self.then: Callable[[], None] | None = None
        self.timer = QTimer(parent)
        self.timer.setSingleShot(True)
        self.timer.setInterval(0)
        self.timer.timeout.connect(self._next)

    def start(self, layer: Any, keys: list[tuple[Any, ...]], then: Callable[[], None] | None = None) -> None:
        """Redraw `keys` of `layer` (replacing what is queued), then call `then`."""
        self.pending = [(layer, key) for key in keys]
        self.then = then
        self.timer.start()

    def busy(self) -> bool:
        return bool(self.pending) or self.timer.isActive()

    def _next(self) -> None:
        if self.pending:
            layer, key = self.pending.pop(0)
            if not refresh_region(layer, key):
                self.pending = [(other, k) for other, k in self.pending if other is not layer]
                layer.refresh(extent=False, thumbnail=False)
        if self.pending:
            self.timer.start()
            return
        then, self.then = self.then, None
        if then is not None:
            then()


class TileDrawing:
    """Draws a segmentation's layers while their arrays are written in place, tile by tile, on the main thread.

    Each tile's region of the Labels layer is redrawn at once (`refresh_region`); where that fails, and for the
    probability layer (napari redraws an Image layer only whole), whole refreshes are throttled: at most one per
    `REFRESH_MS`, and at least `REFRESH_BUDGET` times as long as the last one took in between. The final labels
    are redrawn band by band, one band per turn of the event loop (`RegionRedraws`).
    """

    def __init__(self, parent: Any, viewer: Any):
        from ._layers import throttled

        self.viewer = viewer
        self.labels_layer: Any = None
        self.probs_layer: Any = None
        self.stale = False  # the Labels layer needs a whole refresh (its regions could not be redrawn)
        self.refreshes = 0  # whole-layer refreshes since `start` (regions redrawn alone not counted)
        self._refresh_soon = throttled(self.refresh, REFRESH_MS, parent)
        self._redraws = RegionRedraws(parent)

    def start(self, labels_layer: Any, probs_layer: Any = None) -> None:
        """Draw these layers from now on (`probs_layer`: None when not shown)."""
        self.labels_layer, self.probs_layer = labels_layer, probs_layer
        self.stale, self.refreshes = False, 0

    def shown(self, layer: Any) -> bool:
        return layer is not None and layer in self.viewer.layers

    def tile(self, key: tuple[Any, ...]) -> None:
        """The region `key` of both arrays was written."""
        if self.shown(self.labels_layer) and not refresh_region(self.labels_layer, key):
            self.stale = True
        if self.stale or self.shown(self.probs_layer):
            self._refresh_soon()

    def refresh(self, thumbnail: bool = False) -> None:
        """Redraw the whole probability layer, and the Labels layer if its regions could not be redrawn alone,
        from their arrays; thumbnails only at the end (`thumbnail`)."""
        started = time.perf_counter()
        if self.shown(self.probs_layer):
            self.probs_layer.refresh(extent=False, thumbnail=thumbnail)
        if self.shown(self.labels_layer):
            if self.stale:
                self.labels_layer.refresh(extent=False, thumbnail=thumbnail)
                self.stale = False
            elif thumbnail:
                refresh_thumbnail(self.labels_layer)
        self.refreshes += 1
        spent_ms = (time.perf_counter() - started) * 1000
        self._refresh_soon.timer.setInterval(max(REFRESH_MS, int(REFRESH_BUDGET * spent_ms)))

    def final(self, planes: list[tuple[int, ...]], shape: tuple[int, ...], then: Callable[[], None]) -> None:
        """The Labels layer's array (`shape`) holds the final labels of `planes`: redraw them band by band, then
        its thumbnail, then call `then` (at once when the layer is not shown)."""
        if not self.shown(self.labels_layer):
            then()
            return
        whole = (slice(0, shape[-2]), slice(0, shape[-1]))
        keys = [band for index in planes for band in bands((*index, *whole), shape)]

        def done() -> None:
            if self.shown(self.labels_layer):
                refresh_thumbnail(self.labels_layer)
            then()

        self._redraws.start(self.labels_layer, keys, then=done)

    def pending(self) -> bool:
        """True while written tiles or final labels wait to be drawn."""
        return self._refresh_soon.timer.isActive() or self._redraws.busy()
