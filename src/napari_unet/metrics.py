"""Segmentation scores: ISBI 2012 Rand and information scores, pixel scores, instance matching, SEG.

Self-contained (numpy, scipy, scikit-image; no torch). The definitions are those of the benchmarks that
introduced them: V_rand and V_info of the ISBI 2012 challenge (Arganda-Carreras et al., Front. Neuroanat. 9:142,
2015), average precision over IoU thresholds of the 2018 Data Science Bowl (Caicedo et al., Nat. Methods
16:1247, 2019), SEG of the Cell Tracking Challenge (Maska et al., Bioinformatics 30:1609, 2014; Ulman et al.,
Nat. Methods 14:1141, 2017). Every score is "higher is better, 1 is perfect".

Conventions shared by all functions:
- `labels` are integer arrays of instance ids, 0 = background; ids need not be consecutive.
- A mask is a bool array (or an integer array read as nonzero = foreground); `probs` are floats in [0, 1].
- Empty cases: when both the prediction and the truth hold no object, instance scores are 1 (nothing to find,
  nothing found); when only one of them is empty they are 0. The same holds for the foreground IoU.
- Contingency tables are sparse (unique pairs of ids), never dense: 10^4 x 10^4 objects cost nothing.

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
from scipy import ndimage

from .validation import check_instance_labels, check_probabilities

ISBI_THRESHOLDS = tuple(float(t) for t in np.round(np.linspace(0.0, 1.0, 11), 2))
IOU_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.5, 0.96, 0.05), 2))
SCORE_KINDS = ("isbi", "instances", "pixels")
_CURVES = ("vrand", "vrand_merge", "vrand_split", "vinfo", "vinfo_merge", "vinfo_split")


# ---------------------------------------------------------------------------------------------- inputs


def _check_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction and truth must have the same shape; got {pred.shape} and {truth.shape}")
    if pred.ndim < 1 or pred.size == 0:
        raise ValueError(f"expected non-empty images; got shape {pred.shape}")
    return pred, truth


def _check_labels(labels: np.ndarray, name: str) -> np.ndarray:
    return check_instance_labels(labels, name)


def _as_mask(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == bool:
        return array
    if array.dtype.kind in "iu":
        return array != 0
    raise TypeError(
        f"{name} must be a bool mask or integer labels (nonzero = foreground); got dtype {array.dtype} "
        "(threshold probabilities first, e.g. probs > 0.5)"
    )


def _check_probs(probs: np.ndarray) -> np.ndarray:
    return check_probabilities(probs)


def components(mask: np.ndarray) -> np.ndarray:
    """4-connected (face-connected in n-D) components of a mask: int32 labels 1..n, 0 = background."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return ndimage.label(mask, structure=structure)[0].astype(np.int32)


def _compact(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
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
    (a, a_ids), (b, b_ids) = _compact(np.ravel(a)), _compact(np.ravel(b))
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


def _sizes(ids: np.ndarray) -> np.ndarray:
    """How many times each distinct id occurs (in increasing order of id)."""
    ids = _compact(ids)[0]
    if ids.size and ids.max() <= 4 * ids.size + 1024:
        counts = np.bincount(ids)
        return counts[counts > 0]
    return np.unique(ids, return_counts=True)[1]


# ---------------------------------------------------------------------------------- ISBI 2012 scores


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

    segments = _check_labels(np.asarray(segments), "segments")
    if not segments.any():
        return np.ones(segments.shape, np.int32)
    segments = _compact(segments.ravel())[0].reshape(segments.shape)  # ids >= 2**31 must not wrap in int32
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
    t_counts = _sizes(t)
    s_counts = _sizes(s[~singles])

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
    return {key: scores[key] for key in _CURVES}


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
    pred, truth = _check_pair(pred, truth)
    if pred.dtype.kind == "f":
        segments = components(_check_probs(pred) > threshold)
    elif pred.dtype == bool:
        segments = components(pred)
    else:
        segments = _check_labels(pred, "pred")
    if truth_is_labels:
        truth_segments = _check_labels(truth, "truth")
    else:
        truth_segments = components(_as_mask(truth, "truth"))
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
    probs, truth = _check_pair(probs, truth)
    probs = _check_probs(probs)
    thresholds = [float(t) for t in thresholds]
    if not thresholds:
        raise ValueError("thresholds must hold at least one value")
    truth_segments = components(_as_mask(truth, "truth"))
    curves: dict[str, list[float]] = {key: [] for key in _CURVES}
    for threshold in thresholds:
        segments = components(probs > threshold)
        if thinned:
            segments = thin_boundaries(segments)
        for key, value in _rand_info(segments, truth_segments).items():
            curves[key].append(value)
    return _best_over_thresholds(thresholds, curves)


def _best_over_thresholds(thresholds: Sequence[float], curves: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    scores: dict[str, Any] = {}
    for name in ("vrand", "vinfo"):
        best = int(np.argmax(curves[name]))
        scores[name] = float(curves[name][best])
        scores[f"{name}_threshold"] = float(thresholds[best])
        scores[f"{name}_merge"] = float(curves[f"{name}_merge"][best])
        scores[f"{name}_split"] = float(curves[f"{name}_split"][best])
    scores["thresholds"] = [float(t) for t in thresholds]
    for key in _CURVES:
        scores[f"{key}_curve"] = [float(v) for v in curves[key]]
    return scores


# ------------------------------------------------------------------------------------------ pixel scores


def pixel_scores(pred_mask: np.ndarray, true_mask: np.ndarray) -> dict[str, float]:
    """Foreground IoU (Jaccard) and pixel error (1 - accuracy) of two masks.

    pred_mask, true_mask: same-shape bool masks or integer labels (nonzero = foreground).
    iou = |P & T| / |P | T| (1 when both are empty); pixel_error = fraction of pixels where they differ.
    """
    pred_mask, true_mask = _check_pair(pred_mask, true_mask)
    pred_mask, true_mask = _as_mask(pred_mask, "pred_mask"), _as_mask(true_mask, "true_mask")
    union = np.count_nonzero(pred_mask | true_mask)
    intersection = np.count_nonzero(pred_mask & true_mask)
    return {
        "iou": intersection / union if union else 1.0,
        "pixel_error": float(np.count_nonzero(pred_mask != true_mask) / pred_mask.size),
    }


# ------------------------------------------------------------------------------------- instance scores


def _overlaps(pred: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Objects and their pairwise overlaps: sparse IoU between every overlapping (true, pred) pair."""
    true_ids, true_sizes = np.unique(truth[truth != 0], return_counts=True)
    pred_ids, pred_sizes = np.unique(pred[pred != 0], return_counts=True)
    both = (truth != 0) & (pred != 0)
    pair_true, pair_pred, intersection = contingency(truth[both], pred[both])
    true_index = np.searchsorted(true_ids, pair_true)
    pred_index = np.searchsorted(pred_ids, pair_pred)
    union = true_sizes[true_index] + pred_sizes[pred_index] - intersection
    return {
        "true_sizes": true_sizes,
        "pred_sizes": pred_sizes,
        "true_index": true_index,
        "pred_index": pred_index,
        "intersection": intersection,
        "iou": intersection / union,
    }


def _one_to_one(true_index: np.ndarray, pred_index: np.ndarray, iou: np.ndarray) -> np.ndarray:
    """Which candidate pairs to keep so that every object is matched at most once.

    Maximises the number of matches, then their total IoU (Hungarian algorithm). Only groups of pairs that
    share an object are solved; for pairs with IoU > 0.5 there are none (an object overlaps at most one
    other by more than half its union), so at the usual thresholds this is the unique matching.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    keep = np.ones(iou.size, bool)
    shared = (np.bincount(true_index)[true_index] > 1) | (np.bincount(pred_index)[pred_index] > 1)
    if not shared.any():
        return keep
    rows_ids, rows = np.unique(true_index, return_inverse=True)
    cols_ids, cols = np.unique(pred_index, return_inverse=True)
    n_rows, n_nodes = rows_ids.size, rows_ids.size + cols_ids.size
    graph = coo_matrix((np.ones(iou.size), (rows, n_rows + cols)), shape=(n_nodes, n_nodes))
    _, group_of_node = connected_components(graph, directed=False)
    group = group_of_node[rows]
    for g in np.unique(group[shared]):
        members = np.flatnonzero(group == g)
        sub_rows, r = np.unique(rows[members], return_inverse=True)
        sub_cols, c = np.unique(cols[members], return_inverse=True)
        gain = np.zeros((sub_rows.size, sub_cols.size))
        gain[r, c] = 1.0 + iou[members] / (members.size + 1.0)
        chosen_r, chosen_c = linear_sum_assignment(gain, maximize=True)
        chosen = np.zeros(gain.shape, bool)
        chosen[chosen_r, chosen_c] = True
        keep[members] = chosen[r, c]
    return keep


def match_instances(
    pred: np.ndarray, truth: np.ndarray, thresholds: Sequence[float] = IOU_THRESHOLDS
) -> dict[str, Any]:
    """One-to-one matching of predicted and true objects by IoU, at each IoU threshold tau.

    pred, truth: same-shape integer labels (0 = background). At tau, pairs with IoU >= tau are matched one
    to one (unique for tau > 0.5; ties at exactly 0.5 or below are resolved by `_one_to_one`);
    TP = matches, FP = n_pred - TP, FN = n_true - TP,
    AP_tau = TP / (TP + FP + FN) (Data Science Bowl 2018), F1 = 2TP / (2TP + FP + FN),
    precision = TP / n_pred, recall = TP / n_true. All are 1 when both images are empty.

    Returns {"thresholds", "tp", "fp", "fn", "ap", "f1", "precision", "recall"} as lists (one entry per
    threshold) and "n_pred", "n_true".
    """
    pred, truth = _check_pair(pred, truth)
    pred, truth = _check_labels(pred, "pred"), _check_labels(truth, "truth")
    thresholds = [float(t) for t in thresholds]
    if any(not 0.0 < t <= 1.0 for t in thresholds):
        raise ValueError(f"IoU thresholds must be in (0, 1]; got {thresholds}")
    overlaps = _overlaps(pred, truth)
    n_true, n_pred = overlaps["true_sizes"].size, overlaps["pred_sizes"].size
    result: dict[str, Any] = {key: [] for key in ("tp", "fp", "fn", "ap", "f1", "precision", "recall")}
    for tau in thresholds:
        candidate = overlaps["iou"] >= tau
        keep = _one_to_one(
            overlaps["true_index"][candidate], overlaps["pred_index"][candidate], overlaps["iou"][candidate]
        )
        tp = int(np.count_nonzero(keep))
        fp, fn = n_pred - tp, n_true - tp
        result["tp"].append(tp)
        result["fp"].append(fp)
        result["fn"].append(fn)
        result["ap"].append(_ratio(tp, tp + fp + fn))
        result["f1"].append(_ratio(2 * tp, 2 * tp + fp + fn))
        result["precision"].append(_ratio(tp, n_pred, empty=float(n_true == 0)))
        result["recall"].append(_ratio(tp, n_true, empty=float(n_pred == 0)))
    result["thresholds"] = thresholds
    result["n_pred"], result["n_true"] = n_pred, n_true
    return result


def _ratio(numerator: float, denominator: float, empty: float = 1.0) -> float:
    return float(numerator / denominator) if denominator else empty


def seg_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """Cell Tracking Challenge SEG: mean over true objects R of Jaccard(R, S), where S is the predicted
    object with |R & S| > 0.5 |R| (at most one exists), or 0 when there is none.

    pred, truth: same-shape integer labels (0 = background). False positives do not count. With no true
    object (undefined in the challenge): 1 if the prediction is empty too, else 0.
    """
    pred, truth = _check_pair(pred, truth)
    pred, truth = _check_labels(pred, "pred"), _check_labels(truth, "truth")
    overlaps = _overlaps(pred, truth)
    n_true = overlaps["true_sizes"].size
    if n_true == 0:
        return float(overlaps["pred_sizes"].size == 0)
    covering = 2 * overlaps["intersection"] > overlaps["true_sizes"][overlaps["true_index"]]
    return float(np.sum(overlaps["iou"][covering]) / n_true)


def instance_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Instance segmentation summary: {"ap50", "map", "f1_50", "seg", "n_pred", "n_true"}.

    ap50 and f1_50 at IoU 0.5; map = mean AP over IoU 0.5, 0.55, ..., 0.95 (`match_instances`); seg = SEG
    (`seg_score`). pred, truth: same-shape integer labels (0 = background).
    """
    matches = match_instances(pred, truth, IOU_THRESHOLDS)
    return {
        "ap50": matches["ap"][0],
        "map": float(np.mean(matches["ap"])),
        "f1_50": matches["f1"][0],
        "seg": seg_score(pred, truth),
        "n_pred": matches["n_pred"],
        "n_true": matches["n_true"],
    }


# ------------------------------------------------------------------------------------ several images


def evaluate_pair(
    pred: np.ndarray,
    truth: np.ndarray,
    kind: str,
    *,
    threshold: float = 0.5,
    thinned: bool = True,
) -> dict[str, Any]:
    """All scores of one prediction against its truth, for the command line's `evaluate`.

    kind "isbi": truth nonzero = cell interior, 0 = membrane. pred float probabilities -> `isbi_scores`
        (max over thresholds; `thinned` picks the variant), plus pixel scores of probs > threshold; pred
        integer labels or a bool mask -> `rand_info_scores` of that one segmentation, plus its pixel scores.
        Keys: vrand, vinfo (and their merge/split parts), iou, pixel_error.
    kind "instances": integer labels (a bool prediction is split into 4-connected components; float
        probabilities are refused: post-process them first). Keys: ap50, map, f1_50, seg, n_pred, n_true.
    kind "pixels": masks (nonzero = foreground; float pred binarised at probs > threshold). Keys: iou,
        pixel_error.
    """
    pred, truth = _check_pair(pred, truth)
    if kind not in SCORE_KINDS:
        raise ValueError(f"kind must be one of {SCORE_KINDS}; got {kind!r}")
    pred_mask = _check_probs(pred) > threshold if pred.dtype.kind == "f" else _as_mask(pred, "pred")
    if kind == "pixels":
        return pixel_scores(pred_mask, truth)
    if kind == "instances":
        if pred.dtype == bool:
            pred = components(pred)
        return instance_scores(pred, truth)
    if pred.dtype.kind == "f":
        scores = isbi_scores(pred, truth, ISBI_THRESHOLDS, thinned=thinned)
    else:
        scores = rand_info_scores(pred, truth, thinned=thinned)
    return {**scores, **pixel_scores(pred_mask, truth)}


def average_scores(scores: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean over images of per-image score dicts (e.g. from `evaluate_pair`).

    Keys present in every dict are averaged: numbers as numbers, equal-length lists element by element;
    other values are dropped. ISBI curves follow the challenge: when the dicts hold "thresholds" and the
    "<score>_curve" lists of `isbi_scores`, the curves are averaged over images first, then "vrand",
    "vinfo", their best thresholds and merge/split parts are taken at the maximum of the mean curve (not
    the mean of per-image maxima, which would be optimistic).
    """
    if not scores:
        raise ValueError("average_scores needs at least one dict of scores; got none")
    keys = [key for key in scores[0] if all(key in s for s in scores[1:])]
    mean: dict[str, Any] = {}
    for key in keys:
        values = [s[key] for s in scores]
        if all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values):
            mean[key] = float(np.mean(values))
        elif all(isinstance(v, (list, tuple, np.ndarray)) for v in values) and len({len(v) for v in values}) == 1:
            mean[key] = [float(v) for v in np.mean(np.asarray(values, dtype=np.float64), axis=0)]
    if "thresholds" in mean:
        first = list(scores[0]["thresholds"])
        if any(list(s["thresholds"]) != first for s in scores[1:]):
            raise ValueError("ISBI curves of different thresholds cannot be averaged; score every image alike")
        mean["thresholds"] = [float(t) for t in first]  # not their mean: 3 x 0.1 averages to 0.10000000000000002
    if "thresholds" in mean and all(f"{key}_curve" in mean for key in _CURVES):
        curves = {key: mean[f"{key}_curve"] for key in _CURVES}
        mean.update(_best_over_thresholds(mean["thresholds"], curves))
    mean["n_images"] = len(scores)
    return mean
