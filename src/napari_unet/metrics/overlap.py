"""What every score counts with: the sparse contingency table of two id arrays, connected components, and the
checks every score makes of its inputs (`check_pair`, `as_mask`; labels and probabilities are checked by
`validation`)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def check_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The prediction and the truth as arrays, of one non-empty shape."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction and truth must have the same shape; got {pred.shape} and {truth.shape}")
    if pred.ndim < 1 or pred.size == 0:
        raise ValueError(f"expected non-empty images; got shape {pred.shape}")
    return pred, truth


def as_mask(array: np.ndarray, name: str) -> np.ndarray:
    """A bool mask as it is, integer labels as nonzero = foreground; floats are refused (threshold them first)."""
    if array.dtype == bool:
        return array
    if array.dtype.kind in "iu":
        return array != 0
    raise TypeError(
        f"{name} must be a bool mask or integer labels (nonzero = foreground); got dtype {array.dtype} "
        "(threshold probabilities first, e.g. probs > 0.5)"
    )


def components(mask: np.ndarray) -> np.ndarray:
    """4-connected (face-connected in n-D) components of a mask: int32 labels 1..n, 0 = background."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return ndimage.label(mask, structure=structure)[0].astype(np.int32)


def as_objects(plane: np.ndarray, what: str) -> tuple[np.ndarray, bool]:
    """(objects, whether `plane` was a mask): a binary mask (bool, or one value over many separate regions, as
    Fiji's 0/255 masks) becomes its 4-connected components; other integer labels stay as they are; an image
    (many values, each over many regions) is refused, naming `what` (`validation.check_instance_regions`).
    Floats are returned as they are, for the caller to say what to do with probabilities."""
    from ..validation import check_instance_regions

    if plane.dtype.kind not in "biu":
        return plane, False
    if plane.dtype == bool or check_instance_regions(plane, what):
        return components(plane != 0), True
    return plane, False


def compact(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Non-negative ids as int64 small enough that pair keys do not overflow (0 stays 0).

    Returns (compacted ids, the original id of each compacted one), or (ids, None) when they were small.
    """
    if ids.size == 0 or int(ids.max()) < 2**31:
        return ids.astype(np.int64, copy=False), None
    unique = np.unique(ids)
    if unique[0] != 0:
        unique = np.concatenate([np.zeros(1, unique.dtype), unique])
    return np.searchsorted(unique, ids).astype(np.int64), unique


def contingency(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse contingency table of two id arrays of the same shape.

    Returns (a_ids, b_ids, counts), each (K,): the K distinct pairs (a, b) that occur and how many pixels
    hold each. Never builds the dense n_a x n_b table.

    >>> contingency(np.array([1, 1, 2, 2]), np.array([5, 5, 5, 0]))
    (array([1, 2, 2]), array([5, 0, 5]), array([2, 1, 1]))
    """
    (a, a_ids), (b, b_ids) = compact(np.ravel(a)), compact(np.ravel(b))
    if a.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    width = int(b.max()) + 1
    keys = a * width + b
    span = (int(a.max()) + 1) * width
    if span <= 4 * a.size + 1024:
        counts = np.bincount(keys, minlength=span)
        keys = np.flatnonzero(counts)
        counts = counts[keys]
    else:
        keys, counts = np.unique(keys, return_counts=True)
    first, second = keys // width, keys % width
    # ids of any size come back as given (uint64 ids above 2**63 too), never as their compacted numbers
    return (first if a_ids is None else a_ids[first]), (second if b_ids is None else b_ids[second]), counts


def sizes(ids: np.ndarray) -> np.ndarray:
    """How many times each distinct id occurs (in increasing order of id)."""
    ids = compact(ids)[0]
    if ids.size and ids.max() <= 4 * ids.size + 1024:
        counts = np.bincount(ids)
        return counts[counts > 0]
    return np.unique(ids, return_counts=True)[1]
