"""Class targets from annotations: touching cells separated by background borders, sparse annotation masks.

Vocabulary: `labels` (H, W) are instance ids (0 = background, one positive id per cell); `target` (H, W) uint8
holds the class ids of the loss (0 = background, 1 = foreground); `mask` (H, W) bool is the region where the
loss is defined (the annotated region).

Binary masks, whose only values are 0 and one other value (ISBI 2012: membrane 0, cells 255), are used as they
are: foreground = nonzero, and the cells of the weight map are the 4-connected components of the foreground.

Sparse annotation, in label files: the value `unannotated_value(labels.dtype)` marks "not annotated" pixels:
-1 for signed integer dtypes, the dtype's maximum for unsigned dtypes of 16 bits or more (65535 for uint16),
unless it is the only nonzero value (a 0/65535 binary mask: `reserved_value`).
8-bit unsigned label files have no reserved value, because 255 is the usual foreground of binary masks; save
sparse annotations as int16/uint16 or give a separate mask file (nonzero = annotated). Reserved pixels are
background in the target and outside `annotation_mask(labels)`, so they get weight 0.

For a user who annotated only a few cells and left the rest of the image unlabelled, `mask_around_cells`
keeps the annotated cells and a margin of background around them; pixels farther away get weight 0.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .validation import check_labels


def unannotated_as_background(labels: np.ndarray) -> np.ndarray:
    """`labels` with the "not annotated" value (`unannotated_value`) as background, 0: what measuring takes it for
    (the array itself when it holds none)."""
    reserved = reserved_value(labels)
    if reserved is None or not np.any(labels == reserved):
        return labels
    return np.where(labels == reserved, 0, labels)


def unannotated_value(dtype: np.dtype | type) -> int | None:
    """The value reserved for "not annotated" pixels in label files of this dtype, or None.

    -1 for signed integers, the maximum for unsigned integers of >= 16 bits, None for bool and uint8
    (where 255 is the foreground of binary masks).

    >>> unannotated_value(np.uint16), unannotated_value(np.int32), unannotated_value(np.uint8)
    (65535, -1, None)
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "i":
        return -1
    if dtype.kind == "u" and dtype.itemsize >= 2:
        return int(np.iinfo(dtype).max)
    return None


def reserved_value(labels: np.ndarray) -> int | None:
    """The "not annotated" value of the label array `labels`: `unannotated_value` of its dtype, except in a
    binary mask whose only nonzero value is that maximum (0/65535: what scikit-image's `img_as_uint` and
    MATLAB's `im2uint16` make of a mask), which is a mask of cells, not an image with nothing annotated.

    >>> reserved_value(np.array([[0, 65535]], np.uint16)), reserved_value(np.array([[0, 3, 65535]], np.uint16))
    (None, 65535)
    """
    reserved = unannotated_value(labels.dtype)
    if reserved is None or reserved < 0:
        return reserved
    found = labels == reserved
    return None if found.any() and not np.any(labels[~found]) else reserved


def _check_labels(labels: np.ndarray) -> np.ndarray:
    """`validation.check_labels`: 2-D integers or bool, >= 0 or the reserved -1; ids >= 2**31 renumbered."""
    return check_labels(labels)


def _annotated_cells(labels: np.ndarray) -> np.ndarray:
    """Labels with the reserved "not annotated" value replaced by 0 (background)."""
    return unannotated_as_background(labels)


def is_binary(labels: np.ndarray) -> bool:
    """True when `labels` holds at most one nonzero value (a binary mask such as ISBI's 0/255).

    The reserved "not annotated" value does not count.
    """
    cells = _annotated_cells(_check_labels(labels))
    nonzero = cells[cells != 0]
    return nonzero.size == 0 or bool(np.all(nonzero == nonzero.flat[0]))


def is_binary_mask(labels: np.ndarray) -> bool:
    """True when `labels` is a binary mask that cannot be instance labels: one nonzero value over several
    separate (4-connected) regions, as ISBI's cells or Fiji's 0/255 masks. One cell painted with one id is as
    much an instance labelling as a mask, and is trained as one (`train_config.label_kind`).

    >>> is_binary_mask(np.array([[255, 0, 255]])), is_binary_mask(np.array([[7, 7, 0]]))
    (True, False)
    """
    if not is_binary(labels):
        return False
    cells = _annotated_cells(_check_labels(labels))
    return ndimage.label(cells != 0)[1] > 1


THIN_BACKGROUND_PX = 8.0  # background farther than this from every cell is not a membrane between cells
TILING_SHARE = 0.1  # cells tile the image when at most this share of the background is that far from a cell


def cells_tile_image(target: np.ndarray) -> bool:
    """True when the foreground of `target` (H, W; nonzero = cell) tiles the image: the background is a thin
    network of membranes between the cells, as in ISBI 2012's masks of electron micrographs, rather than space
    around separate objects (nuclei). Measured: at most `TILING_SHARE` of the background pixels lie more than
    `THIN_BACKGROUND_PX` px from every cell (ISBI 2012's 20 slices: 0.9 % to 6.8 %; DSB 2018's 100 fluorescence
    training masks: 37 % to 99 %; tests/test_real_data.py). A target without foreground or background does not
    tile.

    >>> membranes = np.ones((40, 40), np.uint8); membranes[::10] = 0; membranes[:, ::10] = 0
    >>> cells_tile_image(membranes), cells_tile_image(np.pad(np.ones((5, 5), np.uint8), 30))
    (True, False)
    """
    foreground = np.asarray(target) != 0
    if foreground.all() or not foreground.any():
        return False
    distance = ndimage.distance_transform_edt(~foreground)
    return bool(np.mean(distance[~foreground] > THIN_BACKGROUND_PX) <= TILING_SHARE)


def separate_cells(labels: np.ndarray, border: int = 1) -> np.ndarray:
    """Instance ids with background borders of width `border` cut between touching cells.

    labels: (H, W) integer instance ids (0 = background). Returns (H, W) int32 ids 1..n (0 = background).

    A pixel of cell a becomes background when a different cell b != 0 lies in its (2r+1) x (2r+1) square
    neighbourhood, with r = ceil(border / 2) for b > a and r = floor(border / 2) for b < a: a straight
    boundary loses `border` pixels, ceil(border / 2) of them on the lower id's side. For every pair of
    8-adjacent pixels of different cells, at least one becomes background, so no 8-connected (a fortiori
    4-connected) path within the foreground joins two cells.
    Binary masks are used as they are, and their cells are the 4-connected components of the foreground.
    border = 0 cuts nothing: touching cells stay touching (their ids are kept, relabelled 1..n), and the
    post-processing has to split them (`PostprocessConfig.watershed`).

    >>> separate_cells(np.array([[1, 1, 2, 2]]))
    array([[1, 0, 2, 2]], dtype=int32)
    >>> separate_cells(np.array([[1, 1, 2, 2]]), border=0)
    array([[1, 1, 2, 2]], dtype=int32)
    """
    labels = _check_labels(labels)
    if border < 0 or int(border) != border:
        raise ValueError(f"border must be a whole number of pixels >= 0; got {border}")
    cells = _annotated_cells(labels)
    if is_binary(cells):
        components, _ = ndimage.label(cells != 0)
        return components.astype(np.int32)
    if border == 0:
        return _relabel_sequential(cells.astype(np.int64))
    cells = cells.astype(np.int64)
    background = cells == 0
    higher = ndimage.maximum_filter(cells, size=2 * ((border + 1) // 2) + 1, mode="constant", cval=0)
    remove = higher > cells
    if border // 2 >= 1:
        above_all = int(cells.max()) + 1
        lower = ndimage.minimum_filter(
            np.where(background, above_all, cells), size=2 * (border // 2) + 1, mode="constant", cval=above_all
        )
        remove |= lower < cells
    return _relabel_sequential(np.where(remove | background, 0, cells))


def _relabel_sequential(cells: np.ndarray) -> np.ndarray:
    """Ids 1..n in increasing order of the original ids (0 stays 0), as int32."""
    top = int(cells.max(initial=0))
    if top > 4 * cells.size:
        ids, inverse = np.unique(cells, return_inverse=True)
        return (inverse.reshape(cells.shape) + (ids[0] != 0)).astype(np.int32)
    present = np.zeros(top + 1, bool)
    present[cells] = True
    present[0] = False
    return np.cumsum(present, dtype=np.int32)[cells]


def make_target(labels: np.ndarray, border: int = 1) -> np.ndarray:
    """The class target of the loss: (H, W) uint8, 0 = background, 1 = foreground.

    Touching cells are separated by background borders of `border` pixels (see `separate_cells`); binary
    masks are used as they are (foreground = nonzero); "not annotated" pixels are 0 (they are excluded from
    the loss by `annotation_mask`).

    >>> make_target(np.array([[1, 1, 2, 2, 0, 3]]))
    array([[1, 0, 1, 1, 0, 1]], dtype=uint8)
    """
    return (separate_cells(labels, border) != 0).astype(np.uint8)


def annotation_mask(labels: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Where the loss is defined: (H, W) bool, False at the reserved "not annotated" value of `labels`.

    mask: optional (H, W) array (e.g. a separate mask file or a napari layer), nonzero = annotated; the
    result is its intersection with the annotated part of `labels`.
    """
    labels = _check_labels(labels)
    reserved = reserved_value(labels)
    annotated = np.ones(labels.shape, bool) if reserved is None else labels != reserved
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != labels.shape:
            raise ValueError(f"mask must have the shape of labels {labels.shape}; got {mask.shape}")
        annotated &= mask != 0
    return annotated


def mask_around_cells(labels: np.ndarray, margin: float = 10.0) -> np.ndarray:
    """For an image where only a few cells are annotated: (H, W) bool, True within `margin` pixels
    (Euclidean) of an annotated cell, the cells included.

    Pixels farther than `margin` from every annotated cell are treated as not annotated (weight 0), so
    unlabelled cells elsewhere in the image do not teach the network that they are background. Choose a
    margin that reaches the background around the annotated cells but not the unlabelled ones.
    """
    labels = _check_labels(labels)
    if margin < 0:
        raise ValueError(f"margin must be >= 0 pixels; got {margin}")
    cells = _annotated_cells(labels) != 0
    if not cells.any():
        return np.zeros(labels.shape, bool)
    return ndimage.distance_transform_edt(~cells) <= margin
