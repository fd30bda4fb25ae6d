"""The Segment dock's work: tile-by-tile prediction of a stack of planes, and the whole-image post-processing."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ..io import check_image
from ..modelfile import ModelBundle
from ..postprocess import PostprocessConfig, probs_to_labels
from ..tiling import iter_predict_tiles, prepare_model, tile_grid


class Planes(Protocol):
    """A stack of (C, H, W) planes (the plugin's `PlaneStack`): `shape` (H, W), `planes` (indices over the
    leading axes, `[()]` for one 2-D image) and `plane(index)`, a (C, H, W) array, possibly lazy."""

    @property
    def shape(self) -> tuple[int, int]: ...

    @property
    def planes(self) -> list[tuple[int, ...]]: ...

    def plane(self, index: tuple[int, ...]) -> Any: ...


@dataclass(frozen=True)
class TileUpdate:
    """One finished tile. plane: index over the leading (Z, T, ...) axes; region: (slice_y, slice_x);
    probs_fg: (h, w) float32 foreground probability; labels: (h, w) int32 preview ids of this tile alone
    (offset so that tiles do not share ids); done / total: tiles finished / in all planes."""

    plane: tuple[int, ...]
    region: tuple[slice, slice]
    probs_fg: np.ndarray
    labels: np.ndarray
    done: int
    total: int

    @property
    def key(self) -> tuple[Any, ...]:
        """The index of this tile in an output array (leading axes, H, W)."""
        return (*self.plane, *self.region)


def stream_tiles(
    bundle: ModelBundle, stack: Planes, stride: int, device: torch.device, postprocess: PostprocessConfig
) -> Iterator[TileUpdate]:
    """Predict every plane of `stack` tile by tile; each plane is normalised with its own global percentiles.

    Runs in the worker thread: reads windows (lazily for dask/zarr), runs the network, labels each tile.
    """
    net = prepare_model(bundle.net, device)
    grid = tile_grid(net, stack.shape, stride)
    total = len(grid) * len(stack.planes)
    done = next_id = 0
    for index in stack.planes:
        plane = stack.plane(index)
        if isinstance(plane, np.ndarray) and not isinstance(plane, np.memmap):
            check_image(plane, "CYX")  # NaN, infinite or constant: a clear error (lazy planes are not scanned twice)
        preprocess = bundle.preprocessor(plane, "CYX")
        for result in iter_predict_tiles(net, plane, grid, device, preprocess=preprocess):
            probs_fg = np.ascontiguousarray(result.probs[1], dtype=np.float32)
            labels = probs_to_labels(probs_fg, postprocess)
            count = int(labels.max(initial=0))
            labels[labels > 0] += next_id
            next_id += count
            done += 1
            yield TileUpdate(index, result.tile.region, probs_fg, labels, done, total)


def postprocess_planes(probs_fg: np.ndarray, planes: list[tuple[int, ...]], config: PostprocessConfig) -> np.ndarray:
    """Labels (..., H, W) of the stitched foreground probabilities (..., H, W), plane by plane."""
    labels = np.zeros(probs_fg.shape, dtype=np.int32)
    for index in planes:
        labels[index] = probs_to_labels(probs_fg[index], config)
    return labels
