"""Post-processing is local: a window that holds a group of touching objects whole labels it as the whole image does.

Labels by blocks (`distributed.label_window`) rest on this: each block post-processes itself plus a margin, and
its labels must equal the whole image's up to renumbering wherever no object is reported cut. A watershed that
floods the whole image at once breaks ties (a pixel reached from two objects at one value) in an order that depends
on every object in the image, so the same two touching nuclei could part along a tie differently in two windows.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_unet.postprocess import FOUR_CONNECTED, PostprocessConfig, probs_to_labels

# Pixels a window keeps around the objects it compares: more than post-processing looks beyond an object
# (border_width + grow_distance when growing, `distributed.blocks.context_radius`), at most 1 + 5 + 1 here.
MARGIN = 8


def mirrored_pairs(rows: int, cols: int, cell: int, seed: int) -> np.ndarray:
    """(rows * cell, cols * cell) float32 probabilities: in each cell two equal nuclei that touch, mirror images of
    each other about a column, so the pixels of that column are ties between them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: rows * cell, : cols * cell].astype(np.float64)
    probs = np.zeros(yy.shape)
    for i in range(rows):
        for j in range(cols):
            radius = int(rng.integers(5, 9))
            half = radius - int(rng.integers(1, 3))  # the centres are 2 * half apart: the nuclei overlap
            cy, cx = i * cell + cell // 2, j * cell + cell // 2
            for x0 in (cx - half, cx + half):
                bump = 0.98 * np.exp(-0.7 * (((yy - cy) ** 2 + (xx - x0) ** 2) / radius**2) ** 2)
                probs = np.maximum(probs, bump)
    return probs.astype(np.float32)


def groups_held_whole(labels: np.ndarray, window: tuple[slice, slice], margin: int) -> list[tuple[slice, slice]]:
    """Bounding boxes of the groups of touching objects (4-connected components of the foreground of `labels`)
    that lie within `window` with `margin` pixels to spare, unless the window's edge is the image's."""
    groups, _ = ndimage.label(labels > 0, structure=FOUR_CONNECTED)
    held = []
    for box in ndimage.find_objects(groups):
        if all(
            (b.start - margin >= w.start or w.start == 0) and (b.stop + margin <= w.stop or w.stop == size)
            for b, w, size in zip(box, window, labels.shape)
        ):
            held.append(box)
    return held


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label arrays of the same pixels have the same background and the same objects, ids aside."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]).astype(np.int64), axis=1)
    return np.array_equal(a == 0, b == 0) and len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


@pytest.mark.parametrize(
    ("config", "cell"),
    [
        (PostprocessConfig(watershed=True), 32),
        (PostprocessConfig(seed_threshold=0.8), 32),
        (PostprocessConfig(watershed=True, seed_threshold=0.8), 32),  # the built-in `nuclei` model's settings
        (PostprocessConfig(watershed=True, grow_threshold=0.2), 40),
    ],
    ids=["watershed", "cores", "cores-watershed", "growth"],
)
def test_a_window_that_holds_touching_nuclei_whole_parts_them_as_the_whole_image_does(config, cell):
    probs = mirrored_pairs(4, 4, cell, seed=0)
    whole = probs_to_labels(probs, config)
    size = probs.shape[0]
    compared = 0
    for y0 in range(0, size - cell, cell // 2):
        for x0 in range(0, size - cell, cell // 2):
            for height, width in ((2 * cell, 2 * cell), (cell + cell // 2, 3 * cell)):
                window = (slice(y0, min(size, y0 + height)), slice(x0, min(size, x0 + width)))
                labels = probs_to_labels(probs[window], config)
                for box in groups_held_whole(whole, window, MARGIN):
                    inner = tuple(slice(b.start - w.start, b.stop - w.start) for b, w in zip(box, window))
                    assert same_partition(whole[box], labels[inner]), f"window {window}, objects at {box}"
                    compared += 1
    assert compared > 100


@pytest.mark.parametrize(
    "config",
    [PostprocessConfig(watershed=True), PostprocessConfig(watershed=True, seed_threshold=0.8)],
    ids=["watershed", "cores-watershed"],
)
def test_labels_by_blocks_part_touching_nuclei_as_the_whole_image_when_none_is_reported_cut(config):
    """What docs/distributed.md promises, on nuclei that touch along ties: 0 objects cut, labels equal."""
    pytest.importorskip("distributed", reason="needs dask.distributed: pip install 'napari-unet-2015[distributed]'")
    from napari_unet.distributed import block_regions, label_window

    probs = mirrored_pairs(4, 4, 32, seed=0)
    whole = probs_to_labels(probs, config)
    blocks, cut = np.zeros(probs.shape, np.uint32), 0
    for region in block_regions(probs.shape, (48, 48)):
        window = tuple(slice(max(0, r.start - 32), min(n, r.stop + 32)) for r, n in zip(region, probs.shape))
        labels, n_cut = label_window(probs[window], (window[0].start, window[1].start), probs.shape, region, config)
        blocks[region] = labels
        cut += n_cut
    assert cut == 0
    assert same_partition(whole, blocks)
