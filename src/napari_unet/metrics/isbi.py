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
(`average_scores`), as the challenge's Fiji script does. The thresholds and the comparison are the script's
(Trainable Segmentation's `VariationOfInformation`, `RandError`): `for (double th = 0.0; th <= 1.0; th += 0.1)`
accumulates the step in double precision, so the thresholds are 0.30000000000000004, ..., 0.7999999999999999,
0.8999999999999999 and the last is 0.9999999999999999, not 1.0 (a probability of exactly 1.0 is cell interior
there); and each float pixel is compared with them as a double, so a float32 map is compared in float64 (the
8-bit value 204/255 stored as float32, 0.8000000119, is cell interior at the threshold 0.7999999999999999).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..validation import check_instance_labels, check_probabilities
from .overlap import as_mask, check_pair, compact, components, contingency, sizes


def _challenge_thresholds() -> tuple[float, ...]:
    """The thresholds of the challenge's script, `for (double th = 0.0; th <= 1.0; th += 0.1)`: the step
    accumulated in double precision.

    >>> _challenge_thresholds()[-3:]
    (0.7999999999999999, 0.8999999999999999, 0.9999999999999999)
    """
    thresholds = []
    threshold = 0.0
    while threshold <= 1.0:
        thresholds.append(threshold)
        threshold += 0.1
    return tuple(thresholds)


ISBI_THRESHOLDS = _challenge_thresholds()
CURVES = ("vrand", "vrand_merge", "vrand_split", "vinfo", "vinfo_merge", "vinfo_split")


def threshold_probs(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Cell interior: `probs > threshold`, compared in float64 as the challenge's script compares each float
    pixel with its double threshold (in float32 the threshold 0.8 would round to 0.8000000119, the float32 value
    of the 8-bit 204/255, and that pixel would not be above it).

    >>> threshold_probs(np.array([204 / 255], np.float32), 0.8)
    array([ True])
    """
    return np.asarray(probs, np.float64) > float(threshold)


def thin_boundaries(segments: np.ndarray) -> np.ndarray:
    """Thin the background of a segmentation to 1-pixel lines, as the ISBI "thinned" protocol does.

    segments: (H, W) integer labels (0 = background). Returns int32 labels where every background pixel joins
    the segment that reaches it first flooding through the background (4-connectivity, breadth first), except
    a 1-pixel watershed line (0) where two segments meet.

    This is the challenge's step, pixel for pixel: its Fiji script (Trainable Segmentation's
    `VariationOfInformation.foregroundRestrictedScoreAfterThinningN2`) floods the binarised prediction with
    the classic Vincent-Soille watershed (`WatershedTransform2D`, 4-connectivity), whose basins are the
    prediction's 4-connected components. Its flooding is reproduced exactly: the background pixels next to a
    segment are queued in Fiji's scan order (column by column, x outer, y inner), and each pixel taken from the
    first-in first-out queue queues its unvisited neighbours (left, up, right, down) and becomes the one segment
    among its neighbours already flooded, or a line pixel when they hold none or two different ones. Where two
    fronts meet, this decides where the line runs (an even gap puts it on the same side in every row).
    As in Fiji, an image without any segment becomes a single segment covering everything (a flat image is
    one basin). The flooding runs pixel by pixel in Python, so it takes time in proportion to the background
    pixels, slower than scikit-image's compiled watershed, which drew the lines thicker than the challenge's.
    """
    segments = check_instance_labels(np.asarray(segments), "segments")
    if segments.ndim != 2:
        raise ValueError(f"thin_boundaries thins one 2-D (H, W) segmentation; got shape {segments.shape}")
    if not segments.any():
        return np.ones(segments.shape, np.int32)
    segments = compact(segments.ravel())[0].reshape(segments.shape)  # ids >= 2**31 must not wrap in int32
    height, width = segments.shape
    columns = np.ascontiguousarray(segments.T)  # flat index x * height + y: Fiji's scan order
    background = columns == 0
    near_segment = np.zeros_like(background)  # the background pixels next to a segment start the queue
    near_segment[1:, :] |= ~background[:-1, :]
    near_segment[:-1, :] |= ~background[1:, :]
    near_segment[:, 1:] |= ~background[:, :-1]
    near_segment[:, :-1] |= ~background[:, 1:]
    first = np.flatnonzero(near_segment & background).tolist()
    unvisited, queued = -2, -3
    labels = np.where(background, unvisited, columns).ravel()
    labels[first] = queued
    labels = labels.tolist()  # a list: the flooding below reads and writes one pixel at a time
    queue = deque(first)
    last_column = (width - 1) * height
    while queue:
        pixel = queue.popleft()
        y = pixel % height
        neighbours = (
            pixel - height if pixel >= height else -1,
            pixel - 1 if y > 0 else -1,
            pixel + height if pixel < last_column else -1,
            pixel + 1 if y < height - 1 else -1,
        )
        found = 0  # the segment among the flooded neighbours; -1: two different ones
        for neighbour in neighbours:
            if neighbour < 0:
                continue
            label = labels[neighbour]
            if label > 0:
                found = label if found in (0, label) else -1
            elif label == unvisited:
                labels[neighbour] = queued
                queue.append(neighbour)
        labels[pixel] = max(found, 0)
    return np.array(labels, np.int32).reshape(width, height).T.copy()


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
        mask, or float probabilities binarised at `threshold` (cell interior = probs > threshold, compared in
        float64: `threshold_probs`); masks are split into 4-connected components.
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
        segments = components(threshold_probs(check_probabilities(pred, "pred"), threshold))
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
    interior, 0 = membrane. At each threshold (by default the challenge's, `ISBI_THRESHOLDS`: 0.0, 0.1, ...,
    0.9999999999999999) the map is binarised (probs > threshold in float64, `threshold_probs`), split into
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
        segments = components(threshold_probs(probs, threshold))
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
