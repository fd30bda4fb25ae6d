"""The per-pixel loss weights of the U-Net paper (Ronneberger et al. 2015, eq. 2).

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

computed on the target of `make_target(labels, border)`: touching cells are first separated by background
borders, and the cells are the separated instances (for binary masks: the 4-connected components of the
foreground). d1 and d2 are the Euclidean distances to the nearest and the second-nearest cell. As in the
paper, the border term is added to background pixels only (target 0), where it is largest in the thin gaps
between touching cells; cell pixels get w_c alone. With fewer than two cells the border term is 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from scipy import ndimage

from napari_unet.targets import annotation_mask, separate_cells
from napari_unet.validation import DtypeError, check_labels


def class_weights_of(
    target: np.ndarray, mask: np.ndarray, class_weights: str | tuple[float, float] | None = "balanced"
) -> np.ndarray:
    """w_c per class, as a float64 array of length 2 (background, foreground).

    "balanced": w_c = n / (k * n_c), with n_c the number of pixels of class c inside `mask`, n their sum
    and k the number of classes present; the mean of w_c over the mask is then 1 (a class absent from the
    mask gets weight 1, which no pixel uses). None: w_c = 1. A tuple: (w_background, w_foreground) as given.
    """
    if class_weights is None:
        return np.ones(2)
    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise ValueError(
                f"class_weights must be 'balanced', None or a (background, foreground) tuple; got {class_weights!r}"
            )
        counts = np.bincount(target[mask], minlength=2)[:2].astype(np.float64)
        present = counts > 0
        weights = np.ones(2)
        weights[present] = counts.sum() / (present.sum() * counts[present])
        return weights
    weights = np.asarray(class_weights, dtype=np.float64)
    if weights.shape != (2,) or np.any(weights < 0) or not np.all(np.isfinite(weights)):
        raise ValueError(
            f"class_weights must be two finite weights >= 0 (background, foreground); got {class_weights!r}"
        )
    return weights


def border_margin(w0: float, sigma: float, tol: float) -> float:
    """Distance beyond which a cell cannot change the border term by more than `tol`.

    A cell at distance d from x is at best the nearest or second-nearest one, so d1 + d2 >= d and its
    term is at most w0 * exp(-d^2 / (2 sigma^2)); this falls below tol for d > sigma * sqrt(2 ln(w0 / tol)).
    (w0 = 10, sigma = 5, tol = 1e-6: 28.4 px.)
    """
    if w0 <= tol:
        return 0.0
    return sigma * math.sqrt(2.0 * math.log(w0 / tol))


def two_nearest_distances(cells: np.ndarray, margin: float = math.inf) -> tuple[np.ndarray, np.ndarray]:
    """d1, d2: (H, W) float64 distances to the nearest and the second-nearest cell (inf where none).

    cells: (H, W) ids 0..n (0 = background). Each cell's Euclidean distance transform is computed only on
    its bounding box grown by `margin` pixels; beyond it the cell is treated as absent (distance inf), which
    changes d1 and d2 only where they exceed `margin`. With margin = inf this is exact everywhere.
    """
    d1 = np.full(cells.shape, np.inf)
    d2 = np.full(cells.shape, np.inf)
    grow = cells.shape[0] + cells.shape[1] if math.isinf(margin) else math.ceil(margin)
    for index, box in enumerate(ndimage.find_objects(cells), start=1):
        if box is None:
            continue
        box = tuple(slice(max(s.start - grow, 0), min(s.stop + grow, size)) for s, size in zip(box, cells.shape))
        distance = ndimage.distance_transform_edt(cells[box] != index)
        if not math.isinf(margin):
            distance[distance > margin] = np.inf
        nearest, second = d1[box], d2[box]
        np.minimum(second, np.maximum(nearest, distance), out=second)
        np.minimum(nearest, distance, out=nearest)
    return d1, d2


def weight_map(
    labels: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: str | tuple[float, float] | None = "balanced",
    mask: np.ndarray | None = None,
    border: int = 1,
    tol: float = 1e-6,
) -> np.ndarray:
    """Per-pixel loss weights w(x) = w_c(x) + w0 * exp(-(d1 + d2)^2 / (2 sigma^2)): (H, W) float32.

    labels: (H, W) instance ids (0 = background) or a binary mask. The target is `make_target(labels,
    border)`; w_c balances its classes inside the mask (see `class_weights_of`); the border term is added on
    background pixels (as in the paper), with d1, d2 the distances to the nearest and second-nearest
    separated cell. mask: (H, W), nonzero = annotated; weights are 0 outside it and at the reserved
    "not annotated" value of `labels` (see `napari_unet.targets`). Terms below `tol` are dropped, so the
    result is within `tol` of the exact formula (see `border_margin`).

    >>> labels = np.zeros((1, 7), int); labels[0, :3] = 1; labels[0, 3:] = 2
    >>> weight_map(labels, class_weights=None).round(2)  # the cut pixel: d1 = d2 = 1
    array([[ 1.  ,  1.  , 10.23,  1.  ,  1.  ,  1.  ,  1.  ]], dtype=float32)
    """
    if w0 < 0 or sigma <= 0 or tol <= 0:
        raise ValueError(f"need w0 >= 0, sigma > 0 and tol > 0; got w0={w0}, sigma={sigma}, tol={tol}")
    cells = separate_cells(labels, border)
    target = (cells != 0).astype(np.uint8)
    annotated = annotation_mask(labels, mask)
    weights = class_weights_of(target, annotated, class_weights)[target]
    if w0 > 0:
        d1, d2 = two_nearest_distances(cells, border_margin(w0, sigma, tol))
        gaps = (target == 0) & np.isfinite(d2)
        weights[gaps] += w0 * np.exp(-((d1[gaps] + d2[gaps]) ** 2) / (2.0 * sigma**2))
    weights[~annotated] = 0.0
    return weights.astype(np.float32)


def stack_weight_maps(
    labels: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: str | tuple[float, float] | None = "balanced",
    border: int = 1,
    tol: float = 1e-6,
    first: int = 0,
) -> Iterator[tuple[int, np.ndarray]]:
    """`weight_map` of a stack of label planes, one plane at a time: yields (p, weights (H, W) float32).

    labels: (P, H, W) instance ids, a plane per Z slice or time point. Only the planes that hold a nonzero label
    are yielded: training leaves the others out (`jobs.finetune.annotated_planes`), so they weigh 0. The planes
    come nearest `first` first (first, first + 1, first - 1, ...), so that a viewer shows the plane in view
    soonest; a consumer that stops asking stops the work.

    >>> stack = np.zeros((3, 1, 7), int); stack[0, 0, :3] = 1; stack[0, 0, 3:] = 2; stack[2] = stack[0]
    >>> [p for p, _ in stack_weight_maps(stack, first=1)]
    [0, 2]
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be a stack (P, H, W) of 2-D planes, got shape {labels.shape}")
    if labels.dtype != bool and labels.dtype.kind not in "iu":
        raise DtypeError(f"labels must be integers (instance ids, 0 = background), got dtype {labels.dtype}")
    if w0 < 0 or sigma <= 0 or tol <= 0:
        raise ValueError(f"need w0 >= 0, sigma > 0 and tol > 0; got w0={w0}, sigma={sigma}, tol={tol}")
    for plane in sorted(range(labels.shape[0]), key=lambda p: (abs(p - first), p)):
        if labels[plane].any():
            cells = check_labels(labels[plane], f"plane {plane} of the labels")
            yield plane, weight_map(cells, w0, sigma, class_weights, border=border, tol=tol)
