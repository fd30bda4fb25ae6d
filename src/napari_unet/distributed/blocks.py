"""Blocks of a large image: whole tiles of its single tile grid, and labels joined across block borders.

Probabilities: a block is a rectangle of whole tiles of the image's `TileGrid` (the block side is a multiple
of the tile stride), and each tile reads its input window from the whole image, so every tile sees exactly
the input and the pooling grid of the single-process `predict_tiled`: equal in fp32, bit for bit.

Labels: a block runs `probs_to_labels` on its probabilities plus a margin of real neighbouring pixels and
keeps only its own pixels (`label_window`). Every object gets a global id from its position, the first pixel
of the object in raster order (y * W + x + 1), so the blocks on either side of a border that both see an
object whole give it the same id: objects crossing block borders are joined, never split or duplicated, with
no merge step. Guarantee: the labels equal the single-process `probs_to_labels` up to renumbering whenever
every object, with the context its post-processing looks at (`context_radius`), fits within the margin. An
object that reaches the edge of a block's window is counted as cut, never silently: so is a piece of one that
the window's edge left smaller than `min_size` (removed in the window, where the whole image keeps the object).
The watersheds that part touching objects run on each 4-connected component of the mask (when growing, of the
pixels the objects grow into) by itself (`postprocess.flood_components`), so a window that holds such a group
of touching objects whole parts it as the whole image does, ties included. A group wider than the margin (a
clump of nuclei) is counted cut only where its objects come near the window's edge: further in, where its
watershed meets a tie, two of its objects may part differently from the whole-image run (and one of them get
two ids across a block border); a margin wider than the largest clump rules this out.
Flooded labels (cells that tile the image, `PostprocessConfig.flood`) take their ids from their seeds' first
pixel, since where a flood's line runs across a flat stretch of probability depends on the window's queue order:
each cell keeps one id across blocks, and such a line may run a pixel apart from the whole-image run's. Neurites
in electron micrographs can run further than the default margin: the count of cut objects says so.

>>> [tuple((s.start, s.stop) for s in region) for region in block_regions((100, 150), (64, 64))][:3]
[((0, 64), (0, 64)), ((0, 64), (64, 128)), ((0, 64), (128, 150))]
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..postprocess import FOUR_CONNECTED, PostprocessConfig, labels_from_seeds, object_seeds
from ..tiling import Tile, TileGrid


def block_regions(shape: tuple[int, int], block: tuple[int, int]) -> list[tuple[slice, slice]]:
    """The (slice_y, slice_x) regions of `block`-sized blocks covering `shape` (H, W), row by row."""
    return [
        (slice(y, min(y + block[0], shape[0])), slice(x, min(x + block[1], shape[1])))
        for y in range(0, shape[0], block[0])
        for x in range(0, shape[1], block[1])
    ]


def block_shape(grid: TileGrid, block_size: int) -> tuple[int, int]:
    """`block_size` rounded up to whole tiles of `grid` on each axis (so blocks never split a tile)."""
    if block_size < 1:
        raise ValueError(f"the block size must be >= 1 pixel, got {block_size}")
    return tuple(math.ceil(block_size / s) * s for s in grid.stride)  # type: ignore[return-value]


def tiles_in(grid: TileGrid, region: tuple[slice, slice]) -> list[Tile]:
    """The tiles of `grid` whose output starts inside `region` (a block made of whole tiles)."""
    ry, rx = region
    return [t for t in grid if ry.start <= t.region[0].start < ry.stop and rx.start <= t.region[1].start < rx.stop]


def object_anchors(labels: np.ndarray, origin: tuple[int, int], width: int) -> np.ndarray:
    """(n + 1,) lookup: label i of a window at `origin` -> 1 + the global raster index of its first pixel
    (y * width + x in the whole image); 0 -> 0. The same object seen whole in two windows gets the same id."""
    n = int(labels.max(initial=0))
    lookup = np.zeros(n + 1, np.int64)
    if n == 0:
        return lookup
    rows = np.arange(labels.shape[0], dtype=np.int64)[:, None] + origin[0]
    cols = np.arange(labels.shape[1], dtype=np.int64)[None, :] + origin[1]
    raster = rows * width + cols
    lookup[1:] = np.asarray(ndimage.minimum(raster, labels, np.arange(1, n + 1)), dtype=np.int64) + 1
    return lookup


def context_radius(config: PostprocessConfig) -> int:
    """How far (pixels) the post-processing of an object looks beyond it: growth and border filling."""
    return int(math.ceil(config.border_width + (config.grow_distance if config.grows else 0))) + 1


def label_window(
    probs_fg: np.ndarray,
    origin: tuple[int, int],
    image_shape: tuple[int, int],
    core: tuple[slice, slice],
    config: PostprocessConfig,
) -> tuple[np.ndarray, int]:
    """(labels of `core` with global ids, cut objects) from the foreground probabilities of a window.

    probs_fg: (h, w) the window at `origin` (y, x) of an image of `image_shape`; core: the block (image
    coordinates) inside it. Cut objects: objects in the core that come within `context_radius` of an edge
    of the window that is not an edge of the image (their labels may differ from a whole-image run), and the
    pieces of the foreground removed for their size (`min_size`) that come within `context_radius` of both such
    an edge and the core (cut by the window, a piece may be what remains of an object the whole image keeps).
    """
    seeds = object_seeds(probs_fg, config)
    labels = labels_from_seeds(seeds, probs_fg, config)
    dtype = np.uint32 if image_shape[0] * image_shape[1] < np.iinfo(np.uint32).max else np.uint64
    # A flood fills the window, and where its lines run across a flat stretch of probability depends on the
    # order in which the window's pixels queue: an object's first pixel may move between two windows that both
    # see it whole. Its seed's first pixel does not.
    anchored = np.where(seeds > 0, labels, 0) if config.flood else labels
    ids = object_anchors(anchored, origin, image_shape[1]).astype(dtype)
    inner = (
        slice(core[0].start - origin[0], core[0].stop - origin[0]),
        slice(core[1].start - origin[1], core[1].stop - origin[1]),
    )
    block = labels[inner]
    r = context_radius(config)
    h, w = labels.shape
    band = np.zeros(labels.shape, bool)
    if origin[0] > 0:
        band[:r] = True
    if origin[1] > 0:
        band[:, :r] = True
    if origin[0] + h < image_shape[0]:
        band[h - r :] = True
    if origin[1] + w < image_shape[1]:
        band[:, w - r :] = True
    cut = np.intersect1d(np.unique(labels[band]), np.unique(block))
    near_core = np.zeros(labels.shape, bool)
    near_core[max(0, inner[0].start - r) : inner[0].stop + r, max(0, inner[1].start - r) : inner[1].stop + r] = True
    removed, _ = ndimage.label((probs_fg > config.threshold) & (seeds == 0), structure=FOUR_CONNECTED)
    removed_cut = np.intersect1d(np.unique(removed[band]), np.unique(removed[near_core]))
    return ids[block], int(np.count_nonzero(cut)) + int(np.count_nonzero(removed_cut))
