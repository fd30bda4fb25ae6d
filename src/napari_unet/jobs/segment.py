"""The Segment dock's work: tile-by-tile prediction of a stack of planes, and the whole-image post-processing.

Object size: with a rescale factor (model diameter / object diameter), each plane is rescaled before the
network and every tile's result is resized back to its region of the image (`rescaled_region`), so the outputs
keep the image's size; the post-processing's sizes are then those of the image (`scale.scale_postprocess`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ..modelfile import ModelBundle
from ..postprocess import PostprocessConfig, probs_to_labels
from ..scale import resize_probs, scaled_shape
from ..tiling import dihedral_transforms, iter_predict_tiles, iter_predict_tta, prepare_model, tile_grid

TTA_ORIENTATIONS = len(dihedral_transforms())  # test-time augmentation: the 8 symmetries of the square


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


def count_tiles(net: Any, stack: Planes, stride: int, factor: float = 1.0, tta: bool = False) -> int:
    """How many updates `stream_tiles` yields: the tiles of one plane resized by `factor`, times the planes;
    with `tta`, the 8 orientations of each plane."""
    if tta:
        return TTA_ORIENTATIONS * len(stack.planes)
    return len(tile_grid(net, scaled_shape(stack.shape, factor), stride)) * len(stack.planes)


def describe_scale(object_diameter: float | None, factor: float, *, estimated: bool, found: bool = True) -> str:
    """The status line of the object size: what it was, how it was found, how the image was rescaled by
    `factor`; "" for a model without an object diameter. estimated: the size was estimated ("auto"), not given;
    found: the estimate found objects.

    >>> describe_scale(17.0, 0.5, estimated=True)
    "objects ~34.0 px (estimated); image rescaled x0.50 to the model's 17 px"
    """
    if object_diameter is None:
        return ""
    if estimated and not found:
        return "no objects found to estimate their size: segmented at the image's scale"
    how = "estimated" if estimated else "given"
    rescale = f"image rescaled x{factor:.2f}" if abs(factor - 1) > 1e-9 else "not rescaled"
    return f"objects ~{object_diameter / factor:.1f} px ({how}); {rescale} to the model's {object_diameter:g} px"


def stream_tiles(
    bundle: ModelBundle,
    stack: Planes,
    stride: int,
    device: torch.device,
    postprocess: PostprocessConfig,
    factor: float = 1.0,
    tta: bool = False,
) -> Iterator[TileUpdate]:
    """Predict every plane of `stack` tile by tile; each plane is normalised with its own global percentiles.

    factor: each plane is resized by it before the network (read whole and rescaled in memory; planes too large
    for that are refused, `scale.check_rescalable`), and each tile's result resized back to its region (a
    preview: tiles resized alone differ a little at their borders); once a plane's tiles are all in, one more
    update brings the whole plane, its stitched probabilities resized at once (what `ModelBundle.predict` gives).
    postprocess: for the image's size. Runs in the worker thread: reads windows (lazily for dask/zarr at factor
    1), runs the network, labels each tile.
    tta: test-time augmentation, as `ModelBundle.predict(..., tta=True)` (`tiling.predict_tta`): each plane is
    predicted in its 8 orientations, and each orientation brings one update of the whole plane, the mean of the
    orientations so far (the last one is the mean of all 8: what `predict --tta` gives); its labels are those of
    the first orientation until the last brings its own (post-processing a whole plane 8 times would add up). The plane and its
    probabilities are held in memory: planes too large for that are refused (`scale.check_tta_size`).
    """
    if tta:
        yield from _stream_tta(bundle, stack, stride, device, postprocess, factor)
        return
    net = prepare_model(bundle.net, device)
    scaled = scaled_shape(stack.shape, factor)
    grid = tile_grid(net, scaled, stride)
    total = len(grid) * len(stack.planes)
    done = next_id = 0
    for index in stack.planes:
        if _blank_in_a_stack(stack, index):  # a black frame of a time series: no object, the other planes go on
            for tile in grid:
                region = rescaled_region(tile.region, scaled, stack.shape)
                size = (region[0].stop - region[0].start, region[1].stop - region[1].start)
                done += 1
                yield TileUpdate(index, region, np.zeros(size, np.float32), np.zeros(size, np.int32), done, total)
            continue
        # NaN, infinite or constant planes in memory or read whole to be rescaled: a clear error (at scale 1 lazy
        # planes are read window by window and not scanned beforehand)
        plane, preprocess = bundle.network_input(stack.plane(index), factor, check=True)
        if factor != 1.0:
            stitched = np.zeros(scaled, np.float32)
        for result in iter_predict_tiles(net, plane, grid, device, preprocess=preprocess):
            if factor != 1.0:
                stitched[result.tile.region] = result.probs[1]
            region = rescaled_region(result.tile.region, scaled, stack.shape)
            size = (region[0].stop - region[0].start, region[1].stop - region[1].start)
            probs_fg = np.ascontiguousarray(result.probs[1], dtype=np.float32)
            if factor != 1.0:
                probs_fg = resize_probs(probs_fg[None], size)[0] if min(size) else np.zeros(size, np.float32)
            labels = probs_to_labels(probs_fg, postprocess) if min(size) else np.zeros(size, np.int32)
            count = int(labels.max(initial=0))
            labels[labels > 0] += next_id
            next_id += count
            done += 1
            yield TileUpdate(index, region, probs_fg, labels, done, total)
        if factor != 1.0:
            whole = (slice(0, stack.shape[0]), slice(0, stack.shape[1]))
            probs_fg = resize_probs(stitched[None], stack.shape)[0]
            labels = probs_to_labels(probs_fg, postprocess)
            labels[labels > 0] += next_id
            next_id += int(labels.max(initial=0))
            yield TileUpdate(index, whole, probs_fg, labels, done, total)


def _stream_tta(
    bundle: ModelBundle,
    stack: Planes,
    stride: int,
    device: torch.device,
    postprocess: PostprocessConfig,
    factor: float,
) -> Iterator[TileUpdate]:
    """`stream_tiles` with test-time augmentation: one whole-plane update per orientation."""
    net = prepare_model(bundle.net, device)
    total = TTA_ORIENTATIONS * len(stack.planes)
    whole = (slice(0, stack.shape[0]), slice(0, stack.shape[1]))
    done = next_id = 0
    for index in stack.planes:
        if _blank_in_a_stack(stack, index):
            blank = (np.zeros(stack.shape, np.float32), np.zeros(stack.shape, np.int32))
            for _ in range(TTA_ORIENTATIONS):
                done += 1
                yield TileUpdate(index, whole, *blank, done, total)
            continue
        small, preprocess = bundle.network_input(stack.plane(index), factor, tta=True, check=True)
        labels = None
        for count, summed in iter_predict_tta(net, small, stride, device=device, preprocess=preprocess):
            probs_fg = resize_probs(summed[1:2] / np.float32(count), stack.shape)[0]
            if labels is None or count == TTA_ORIENTATIONS:  # labelled twice: a first look, then the mean of all
                labels = probs_to_labels(probs_fg, postprocess)
                labels[labels > 0] += next_id
            done += 1
            if count == TTA_ORIENTATIONS:
                next_id += int(labels.max(initial=0))
            yield TileUpdate(index, whole, probs_fg, labels, done, total)


def _blank_in_a_stack(stack: Planes, index: tuple[int, ...]) -> bool:
    """Whether plane `index` of a stack of several planes is in memory and constant (a black frame): it has no
    object, while a constant image of one plane is refused (`validation.check_image`), as `predict` does. Lazy
    planes are not scanned (they are read window by window)."""
    if len(stack.planes) < 2:
        return False
    plane = stack.plane(index)
    if not isinstance(plane, np.ndarray) or isinstance(plane, np.memmap) or not plane.size:
        return False
    low, high = plane.min(), plane.max()
    return bool(low == high)  # NaN: False, and the check refuses it


def rescaled_region(
    region: tuple[slice, slice], scaled: tuple[int, int], shape: tuple[int, int]
) -> tuple[slice, slice]:
    """A region (rows, cols) of a plane of shape `scaled`, mapped onto the same plane at `shape`: edges scale by
    shape / scaled and are rounded, so neighbouring tiles still meet exactly and the last edge is the border.

    >>> rescaled_region((slice(0, 48), slice(48, 60)), (60, 60), (30, 31))
    (slice(0, 24, None), slice(25, 31, None))
    """
    return tuple(
        slice(round(r.start * n / m), round(r.stop * n / m))  # type: ignore[return-value]
        for r, m, n in zip(region, scaled, shape)
    )


def postprocess_planes(probs_fg: np.ndarray, planes: list[tuple[int, ...]], config: PostprocessConfig) -> np.ndarray:
    """Labels (..., H, W) of the stitched foreground probabilities (..., H, W), plane by plane."""
    labels = np.zeros(probs_fg.shape, dtype=np.int32)
    for index in planes:
        labels[index] = probs_to_labels(probs_fg[index], config)
    return labels


def uncertainty_planes(bundle: ModelBundle, stack: Planes, factor: float, device: torch.device) -> np.ndarray:
    """The test-time-augmentation uncertainty (..., H, W) float32 of every plane (`uncertainty.tta_uncertainty`,
    4 flips, at the rescale factor the segmentation used): where the model's answers disagree."""
    from ..uncertainty import tta_uncertainty

    planes = stack.planes
    leading = [max(axis) + 1 for axis in zip(*planes)]  # () for one 2-D plane
    out = np.zeros((*leading, *stack.shape), np.float32)
    for index in planes:
        if _blank_in_a_stack(stack, index):  # no object, nothing to be unsure of
            continue
        out[index] = tta_uncertainty(
            bundle, np.asarray(stack.plane(index)), factor=factor, transforms=4, device=device
        )[1]
    return out
