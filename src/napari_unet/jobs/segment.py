"""The Segment dock's work: tile-by-tile prediction of a stack of planes, and the whole-image post-processing.

Object size: with a rescale factor (model diameter / object diameter), each plane is rescaled before the
network and every tile's result is resized back to its region of the image (`rescaled_region`), so the outputs
keep the image's size; the post-processing's sizes are then those of the image (`scale.scale_postprocess`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

import numpy as np
import torch

from ..io import channel_values
from ..modelfile import ModelBundle
from ..postprocess import PostprocessConfig, probs_to_labels
from ..scale import resize_probs, scaled_shape
from ..tiling import dihedral_transforms, iter_predict_tiles, iter_predict_tta, prepare_model, tile_grid

TTA_ORIENTATIONS = len(dihedral_transforms())  # test-time augmentation: the 8 symmetries of the square
BLOCK_VALUES = 2**24  # a plane is scanned for a black frame in slabs of rows of at most this many values


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
    1), runs the network, labels each tile. A black frame of a stack (`_blank_in_a_stack`) is not predicted: its
    updates are empty.
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
        plane = stack.plane(index)
        values = channel_values(plane, "CYX")  # read once: for the black-frame check and the percentiles
        if _blank_in_a_stack(stack, plane, values):  # a black frame of a time series: no object, the others go on
            for tile in grid:
                region = rescaled_region(tile.region, scaled, stack.shape)
                size = (region[0].stop - region[0].start, region[1].stop - region[1].start)
                done += 1
                yield TileUpdate(index, region, np.zeros(size, np.float32), np.zeros(size, np.int32), done, total)
            continue
        # NaN, infinite or constant planes in memory or read whole to be rescaled: a clear error (at scale 1 lazy
        # planes are read window by window and not scanned for NaN beforehand)
        plane, preprocess = bundle.network_input(plane, factor, check=True, values=values)
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
        plane = stack.plane(index)
        values = channel_values(plane, "CYX")
        if _blank_in_a_stack(stack, plane, values):
            blank = (np.zeros(stack.shape, np.float32), np.zeros(stack.shape, np.int32))
            for _ in range(TTA_ORIENTATIONS):
                done += 1
                yield TileUpdate(index, whole, *blank, done, total)
            continue
        small, preprocess = bundle.network_input(plane, factor, tta=True, check=True, values=values)
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


def _blank_in_a_stack(stack: Planes, plane: Any, sample: np.ndarray | None = None) -> bool:
    """Whether `plane` (C, H, W), one of `stack`'s, is constant (a black frame) in a stack of several planes: it has
    no object, while a constant image of one plane is refused (`validation.check_image`), as `predict` does.

    Every kind of plane (in memory, memmap, dask, zarr, a file's channel layers) is judged on the bounded strided
    sample its normalisation reads anyway (`io.channel_values`; `sample` when the caller has it); only a plane
    whose sample is constant is read whole, slab by slab, to be sure (a lazy plane is never loaded at once).
    """
    if len(stack.planes) < 2 or not all(plane.shape):
        return False
    sample = channel_values(plane, "CYX") if sample is None else sample
    if not sample.size or sample.min() != sample.max():  # NaN: not blank, and the check refuses it in memory
        return False
    value = sample.flat[0]
    rows = max(1, BLOCK_VALUES // (plane.shape[0] * plane.shape[2]))
    for start in range(0, plane.shape[1], rows):
        block = np.asarray(plane[:, start : start + rows])
        if block.min() != value or block.max() != value:
            return False
    return True


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


def stream_uncertainty(
    bundle: ModelBundle, stack: Planes, factor: float, device: torch.device
) -> Generator[int, None, np.ndarray]:
    """The test-time-augmentation uncertainty (..., H, W) float32 of every plane (`uncertainty.tta_uncertainty`,
    4 flips, at the rescale factor the segmentation used): where the model's answers disagree. Yields the number
    of planes done after each plane (where a worker can stop) and returns the array; a black frame of a stack
    (`_blank_in_a_stack`) has no object, nothing to be unsure of: 0. Each plane is held in memory with its
    probabilities, as test-time augmentation does: planes too large for that are refused before any is read
    (`uncertainty.check_uncertainty_size`)."""
    from ..uncertainty import check_uncertainty_size, tta_uncertainty

    planes = stack.planes
    check_uncertainty_size(stack.plane(planes[0]), factor, bundle.net.config.num_classes)  # planes share a shape
    leading = [max(axis) + 1 for axis in zip(*planes)]  # () for one 2-D plane
    out = np.zeros((*leading, *stack.shape), np.float32)
    for done, index in enumerate(planes, 1):
        plane = stack.plane(index)
        if not _blank_in_a_stack(stack, plane):
            out[index] = tta_uncertainty(bundle, np.asarray(plane), factor=factor, transforms=4, device=device)[1]
        yield done
    return out


def estimate_stack_diameter(bundle: ModelBundle, stack: Planes, device: torch.device) -> float | None:
    """The objects' diameter (px) in `stack` (`ModelBundle.estimate_diameter`; None when no object is found),
    estimated on its first plane that is not constant, as `napari-unet predict` does (`pipeline._sized_plane`):
    a black first frame has nothing to measure."""
    from ..pipeline import _sized_plane

    return bundle.estimate_diameter(_sized_plane(_ByIndex(stack), stack.planes, "CYX"), device=device)


@dataclass(frozen=True)
class _ByIndex:
    """A stack's planes by their index, `stack[index]`: the (C, H, W) plane, as `pipeline._sized_plane` reads them."""

    stack: Planes

    def __getitem__(self, index: tuple[int, ...]) -> Any:
        return self.stack.plane(index)


def retuned_config(config: PostprocessConfig, before: PostprocessConfig, after: PostprocessConfig) -> PostprocessConfig:
    """`config` (a result's post-processing) with the settings the user changed: those that differ between
    `before` and `after` (the dock's controls before and after a change), from `after`. The others stay the
    result's, even when the controls show another model's (loaded since the result was computed).

    >>> retuned_config(PostprocessConfig(min_size=4), PostprocessConfig(min_size=40, flood=True),
    ...                PostprocessConfig(min_size=41, flood=True)) == PostprocessConfig(min_size=41)
    True
    """
    changed = {
        f.name: getattr(after, f.name) for f in fields(after) if getattr(after, f.name) != getattr(before, f.name)
    }
    return replace(config, **changed)


class PreviewLabels:
    """The labels (..., H, W) that a stream of `TileUpdate`s writes its previews into while the user may paint
    in them: each write is remembered as a digest of its region, so that painting is noticed whatever tool made
    it (a brush, a fill, a script writing into the array).

    Updates of one plane are disjoint tiles, or a whole plane over earlier ones (`stream_tiles`: a rescaled
    plane's, each orientation's). A region painted since the stream wrote it, or before its tile came, keeps
    the painting: the update's labels are not written there and the labels count as `edited`.
    """

    def __init__(self, labels: np.ndarray):
        self.labels = labels
        self._kept = False  # an update was left out to keep painting
        self._written: dict[tuple[int, ...], dict[tuple[tuple[int, int], ...], bytes]] = {}  # plane: {region: digest}

    def write(self, update: TileUpdate) -> bool:
        """Write `update.labels` into its region unless that region was painted; True when written."""
        records = self._written.setdefault(update.plane, {})
        region = _bounds(update.region)
        window = self.labels[update.key]  # a view: written in place
        earlier = [r for r in records if _overlap(r, region)]
        outside = np.ones(window.shape, bool)  # of the region, where no earlier update wrote: still 0 unless painted
        for bounds in earlier:
            outside[_slices(_overlap(bounds, region), region)] = False
        painted = window[outside].any() or any(self._painted(update.plane, r, records[r]) for r in earlier)
        if painted:
            self._kept = True
            return False
        for bounds in earlier:
            del records[bounds]
        window[...] = update.labels
        records[region] = labels_digest(update.labels)
        return True

    def edited(self) -> bool:
        """Whether the labels were painted since the stream wrote them (one look at every region written)."""
        return self._kept or any(
            self._painted(plane, region, digest)
            for plane, records in self._written.items()
            for region, digest in records.items()
        )

    def _painted(self, plane: tuple[int, ...], region: tuple[tuple[int, int], ...], digest: bytes) -> bool:
        return labels_digest(self.labels[(*plane, *_slices(region))]) != digest


def _bounds(region: tuple[slice, ...]) -> tuple[tuple[int, int], ...]:
    return tuple((int(s.start), int(s.stop)) for s in region)


def _slices(bounds: tuple[tuple[int, int], ...], within: tuple[tuple[int, int], ...] | None = None) -> tuple:
    """Slices of `bounds`, relative to the start of the region `within` when given."""
    origin = [start for start, _ in within] if within else [0] * len(bounds)
    return tuple(slice(start - o, stop - o) for (start, stop), o in zip(bounds, origin))


def _overlap(a: tuple[tuple[int, int], ...], b: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...] | None:
    """The intersection of two regions, None when they do not meet."""
    both = tuple((max(a0, b0), min(a1, b1)) for (a0, a1), (b0, b1) in zip(a, b))
    return both if all(start < stop for start, stop in both) else None


def labels_digest(labels: np.ndarray) -> bytes:
    """A fingerprint of a label array (to tell whether the user painted into it)."""
    return hashlib.blake2b(np.ascontiguousarray(labels).data, digest_size=16).digest()
