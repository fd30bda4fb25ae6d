"""The electron-microscopy scores of the ISBI 2012 challenge (V_rand, V_info) and pixel scores (pixel error,
foreground IoU).

ISBI 2012 (Arganda-Carreras et al. 2015), foreground-restricted scores. T = segments of the truth: the
4-connected components of its foreground (nonzero = cell interior, 0 = membrane); only pixels with T != 0
count, n of them. S = segments of the prediction, where prediction background (S = 0) pixels are singletons,
each its own segment. With p_ij = |{T = i, S = j}| / n, t_i = sum_j p_ij, s_j = sum_i p_ij (j >= 1) and
c = sum_i p_i0:
    A = sum_{i, j>=1} p_ij^2 + c/n,  B_S = sum_{j>=1} s_j^2 + c/n,  B_T = sum_i t_i^2,
    V_rand merge = A / B_S, split = A / B_T, V_rand = 2A / (B_S + B_T);
    H(T) = -sum t_i ln t_i,  H(S) = -sum_{j>=1} s_j ln s_j + c ln n,  H(S,T) = -sum_{i,j>=1} p_ij ln p_ij + c ln n,
    I = H(S) + H(T) - H(S,T), V_info merge = I / H(T), split = I / H(S), V_info = 2 I / (H(S) + H(T));
    if H(T) = 0: merge 0, split 1; if H(S) = 0: merge 1, split 0 (this rule wins when both are 0);
    V_info is then the harmonic mean of merge and split (0 when both are 0).
The protocol (`isbi_scores`) binarises a probability map at thresholds 0.0, 0.1, ..., 1.0 (cell interior =
probability > threshold), takes 4-connected components, optionally thins the borders (`thin_boundaries`), and
keeps the maximum over thresholds; over several slices, the curves are averaged before the maximum is taken
(`average_scores`), as the challenge's Fiji script does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..validation import check_instance_labels, check_probabilities
from .overlap import as_mask, check_pair, compact, components, contingency, sizes

ISBI_THRESHOLDS = tuple(float(t) for t in np.round(np.linspace(0.0, 1.0, 11), 2))
CURVES = ("vrand", "vrand_merge", "vrand_split", "vinfo", "vinfo_merge", "vinfo_split")


def thin_boundaries(segments: np.ndarray) -> np.ndarray:
    """Thin the background of a segmentation to 1-pixel lines, as the ISBI "thinned" protocol does.

    segments: integer labels (0 = background). Returns int32 labels where every background pixel joins the
    segment it is nearest to (geodesic distance in 4-connectivity, through the background), except a
    1-pixel watershed line (0) where two segments meet.

    This is the challenge's step: its Fiji script floods the binarised prediction with the classic
    Vincent-Soille watershed (4-connectivity, FIFO queue), whose basins are the prediction's 4-connected
    components. Here: `skimage.segmentation.watershed` of a flat landscape, seeded by the segments, with
    `watershed_line=True`; on a flat landscape its queue is first-in first-out too, so both grow the
    segments breadth-first and differ at most in where a line runs when two fronts meet at the same step.
    As in Fiji, an image without any segment becomes a single segment covering everything (a flat image is
    one basin).
    """
    from skimage.segmentation import watershed

    segments = check_instance_labels(np.asarray(segments), "segments")
    if not segments.any():
        return np.ones(segments.shape, np.int32)
    segments = compact(segments.ravel())[0].reshape(segments.shape)  # ids >= 2**31 must not wrap in int32
    landscape = np.zeros(segments.shape, np.uint8)
    thinned = watershed(landscape, markers=segments, connectivity=1, watershed_line=True)
    return thinned.astype(np.int32)


def _rand_info(segments: np.ndarray, truth_segments: np.ndarray) -> dict[str, float]:
    counted = truth_segments != 0
    n = int(np.count_nonzero(counted))
    if n == 0:
        raise ValueError("the truth has no foreground pixels (all 0 = membrane): the ISBI scores are undefined")
    t = truth_segments[counted]
    s = segments[counted]
    singles = s == 0
    n_singles = int(np.count_nonzero(singles))
    _, _, pair_counts = contingency(t[~singles], s[~singles])
    t_counts = sizes(t)
    s_counts = sizes(s[~singles])

    pair_counts = pair_counts.astype(np.float64)
    t_counts = t_counts.astype(np.float64)
    s_counts = s_counts.astype(np.float64)
    a = (np.sum(pair_counts**2) + n_singles) / n**2
    b_s = (np.sum(s_counts**2) + n_singles) / n**2
    b_t = np.sum(t_counts**2) / n**2
    rand_merge, rand_split = a / b_s, a / b_t

    def entropy(counts: np.ndarray) -> float:
        p = counts / n
        return float(-np.sum(p * np.log(p)))

    singles_entropy = n_singles / n * np.log(n)
    h_t = entropy(t_counts)
    h_s = entropy(s_counts) + singles_entropy
    h_st = entropy(pair_counts) + singles_entropy
    information = h_s + h_t - h_st
    if h_s <= 0:  # checked first: this rule wins when both entropies are 0
        info_merge, info_split = 1.0, 0.0
    elif h_t <= 0:
        info_merge, info_split = 0.0, 1.0
    else:
        info_merge, info_split = information / h_t, information / h_s
    scores = {
        "vrand_merge": rand_merge,
        "vrand_split": rand_split,
        "vinfo_merge": info_merge,
        "vinfo_split": info_split,
    }
    scores = {key: float(np.clip(value, 0.0, 1.0)) for key, value in scores.items()}
    scores["vrand"] = _harmonic_mean(scores["vrand_merge"], scores["vrand_split"])
    scores["vinfo"] = _harmonic_mean(scores["vinfo_merge"], scores["vinfo_split"])
    return {key: scores[key] for key in CURVES}


def _harmonic_mean(a: float, b: float) -> float:
    return 2.0 * a * b / (a + b) if a + b > 0 else 0.0


def rand_info_scores(
    pred: np.ndarray,
    truth: np.ndarray,
    *,
    threshold: float = 0.5,
    thinned: bool = False,
    truth_is_labels: bool = False,
) -> dict[str, float]:
    """ISBI 2012 foreground-restricted Rand and information scores of one segmentation.

    pred: (H, W) integer labels used as they are (0 = background: every such pixel is a singleton), a bool
        mask, or float probabilities binarised at `threshold` (cell interior = probs > threshold); masks
        are split into 4-connected components.
    truth: (H, W) ground truth; by default binarised (nonzero = cell interior, 0 = membrane) and split into
        4-connected components (the ISBI convention); with `truth_is_labels=True` its ids are used as they are.
    thinned: first thin the prediction's background to 1-pixel lines (`thin_boundaries`).
    Returns {"vrand", "vrand_merge", "vrand_split", "vinfo", "vinfo_merge", "vinfo_split"}, floats in [0, 1].
    Formulas in the module docstring.

    >>> truth = np.array([[1, 1, 0, 2, 2]])
    >>> rand_info_scores(np.array([[1, 1, 1, 1, 1]]), truth)["vrand_split"]  # a pure merge: split score 1
    1.0
    """
    pred, truth = check_pair(pred, truth)
    if pred.dtype.kind == "f":
        segments = components(check_probabilities(pred, "pred") > threshold)
    elif pred.dtype == bool:
        segments = components(pred)
    else:
        segments = check_instance_labels(pred, "pred")
    if truth_is_labels:
        truth_segments = check_instance_labels(truth, "truth", ground_truth=True)
    else:
        truth_segments = components(as_mask(truth, "truth"))
    if thinned:
        segments = thin_boundaries(segments)
    return _rand_info(segments, truth_segments)


def isbi_scores(
    probs: np.ndarray,
    truth: np.ndarray,
    thresholds: Sequence[float] = ISBI_THRESHOLDS,
    thinned: bool = True,
) -> dict[str, Any]:
    """The ISBI 2012 challenge scores of one probability map: best V_rand and V_info over thresholds.

    probs: (H, W) float probability of cell interior in [0, 1]; truth: (H, W) ground truth, nonzero = cell
    interior, 0 = membrane. At each threshold the map is binarised (probs > threshold), split into
    4-connected components and, when `thinned` (the challenge's ranking variant), its background thinned to
    1-pixel lines (`thin_boundaries`); then scored by `rand_info_scores`.

    Returns "vrand" and "vinfo" (the maxima over thresholds), "vrand_threshold" / "vinfo_threshold" (the
    first threshold reaching each), the merge and split parts at that threshold ("vrand_merge", ...), and
    the whole curves: "thresholds" and "<score>_curve" lists, which `average_scores` averages over slices
    before taking the maximum.
    """
    probs, truth = check_pair(probs, truth)
    probs = check_probabilities(probs)
    thresholds = [float(t) for t in thresholds]
    if not thresholds:
        raise ValueError("thresholds must hold at least one value")
    truth_segments = components(as_mask(truth, "truth"))
    curves: dict[str, list[float]] = {key: [] for key in CURVES}
    for threshold in thresholds:
        segments = components(probs > threshold)
        if thinned:
            segments = thin_boundaries(segments)
        for key, value in _rand_info(segments, truth_segments).items():
            curves[key].append(value)
    return best_over_thresholds(thresholds, curves)


def best_over_thresholds(thresholds: Sequence[float], curves: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    scores: dict[str, Any] = {}
    for name in ("vrand", "vinfo"):
        best = int(np.argmax(curves[name]))
        scores[name] = float(curves[name][best])
        scores[f"{name}_threshold"] = float(thresholds[best])
        scores[f"{name}_merge"] = float(curves[f"{name}_merge"][best])
        scores[f"{name}_split"] = float(curves[f"{name}_split"][best])
    scores["thresholds"] = [float(t) for t in thresholds]
    for key in CURVES:
        scores[f"{key}_curve"] = [float(v) for v in curves[key]]
    return scores


def pixel_scores(pred_mask: np.ndarray, true_mask: np.ndarray) -> dict[str, float]:
    """Foreground IoU (Jaccard) and pixel error (1 - accuracy) of two masks.

    pred_mask, true_mask: same-shape bool masks or integer labels (nonzero = foreground).
    iou = |P & T| / |P | T| (1 when both are empty); pixel_error = fraction of pixels where they differ.
    """
    pred_mask, true_mask = check_pair(pred_mask, true_mask)
    pred_mask, true_mask = as_mask(pred_mask, "pred_mask"), as_mask(true_mask, "true_mask")
    union = np.count_nonzero(pred_mask | true_mask)
    intersection = np.count_nonzero(pred_mask & true_mask)
    return {
        "iou": intersection / union if union else 1.0,
        "pixel_error": float(np.count_nonzero(pred_mask != true_mask) / pred_mask.size),
    }
