"""Instance scores: predicted objects matched one to one with true objects by IoU (average precision of the
2018 Data Science Bowl, F1, precision, recall) and SEG of the Cell Tracking Challenge."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..validation import check_instance_labels
from .overlap import check_pair, contingency

IOU_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.5, 0.96, 0.05), 2))


def _labels_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`pred` and `truth` checked as same-shape integer labels (`check_pair`, `check_instance_labels`): a float
    prediction is told to post-process its probabilities; a float truth, the annotation itself, is told to
    convert its whole numbers, or that other values are no ids."""
    pred, truth = check_pair(pred, truth)
    truth = check_instance_labels(truth, "truth", ground_truth=True)
    check_fully_annotated(truth, "truth")
    return check_instance_labels(pred, "pred"), truth


def check_fully_annotated(truth: np.ndarray, what: str) -> None:
    """Refuse integer ground truth that marks pixels "not annotated" (`targets.reserved_value`, as training and
    measuring read label files: -1 in signed dtypes, the maximum of unsigned dtypes of 16 bits or more, 65535 in
    uint16; a 0/65535 mask is a mask), decided on the whole array: every pixel is scored, so those pixels would
    count as an object.

    >>> check_fully_annotated(np.array([[0, 65535]], np.uint16), "mask.tif")  # a binary mask: accepted
    >>> check_fully_annotated(np.array([[0, 3, 65535]], np.uint16), "truth")
    Traceback (most recent call last):
    ...
    ValueError: truth marks 1 pixel(s) 'not annotated' (65535, the reserved value of uint16 labels, which training leaves out): scores count every pixel, so they need fully annotated ground truth; crop the prediction and the truth to the annotated region, or set those pixels to 0 if they are background
    """
    from ..targets import reserved_value

    reserved = reserved_value(truth)
    marked = 0 if reserved is None else int(np.count_nonzero(truth == reserved))
    if marked:
        raise ValueError(
            f"{what} marks {marked} pixel(s) 'not annotated' ({reserved}, the reserved value of "
            f"{truth.dtype} labels, which training leaves out): scores count every pixel, so they need fully "
            "annotated ground truth; crop the prediction and the truth to the annotated region, or set those pixels "
            "to 0 if they are background"
        )


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
    pred, truth = _labels_pair(pred, truth)
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
    pred, truth = _labels_pair(pred, truth)
    overlaps = _overlaps(pred, truth)
    n_true = overlaps["true_sizes"].size
    if n_true == 0:
        return float(overlaps["pred_sizes"].size == 0)
    covering = 2 * overlaps["intersection"] > overlaps["true_sizes"][overlaps["true_index"]]
    return float(np.sum(overlaps["iou"][covering]) / n_true)


def instance_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Instance segmentation summary: {"ap50", "ap75", "map", "f1_50", "seg", "n_pred", "n_true"}.

    ap50 and f1_50 at IoU 0.5, ap75 at IoU 0.75; map = mean AP over IoU 0.5, 0.55, ..., 0.95 (`match_instances`); seg = SEG
    (`seg_score`). pred, truth: same-shape integer labels (0 = background).
    """
    matches = match_instances(pred, truth, IOU_THRESHOLDS)
    return {
        "ap50": matches["ap"][0],
        "ap75": matches["ap"][list(IOU_THRESHOLDS).index(0.75)],
        "map": float(np.mean(matches["ap"])),
        "f1_50": matches["f1"][0],
        "seg": seg_score(pred, truth),
        "n_pred": matches["n_pred"],
        "n_true": matches["n_true"],
    }


def error_kinds(pred: np.ndarray, truth: np.ndarray) -> dict[str, int]:
    """What became of the true objects at IoU 0.5, and how many predicted objects match none:
    {"matched", "merged", "missed", "false"}; matched + merged + missed = the number of true objects.

    merged: an unmatched true object more than half of which lies in a predicted object that holds more than
    half of another true object too (touching objects drawn as one); missed: the other unmatched true objects
    (not found, or drawn too far off); false: predicted objects matched to no true object (the pieces of a split
    object, background taken for an object, and objects that merged others without matching any of them).
    Matching as `match_instances` at IoU 0.5. pred, truth: same-shape integer labels (0 = background).

    Three touching objects drawn as one, a fourth not found, and a false object:

    >>> truth = np.zeros((4, 11), int); truth[:, 0:2], truth[:, 2:4], truth[:, 4:6], truth[:, 9:11] = 1, 2, 3, 4
    >>> pred = np.zeros((4, 11), int); pred[:, 0:6], pred[:, 7] = 1, 2
    >>> error_kinds(pred, truth)
    {'matched': 0, 'merged': 3, 'missed': 1, 'false': 2}
    """
    pred, truth = _labels_pair(pred, truth)
    o = _overlaps(pred, truth)
    n_true, n_pred = o["true_sizes"].size, o["pred_sizes"].size
    candidate = o["iou"] >= 0.5
    keep = _one_to_one(o["true_index"][candidate], o["pred_index"][candidate], o["iou"][candidate])
    true_matched = np.zeros(n_true, bool)
    true_matched[o["true_index"][candidate][keep]] = True
    covering = 2 * o["intersection"] > o["true_sizes"][o["true_index"]]  # at most one per true object
    holds = np.bincount(o["pred_index"][covering], minlength=n_pred)
    merged = np.zeros(n_true, bool)
    merged[o["true_index"][covering & (holds[o["pred_index"]] >= 2)]] = True
    matched, n_merged = int(np.count_nonzero(keep)), int(np.count_nonzero(merged & ~true_matched))
    return {"matched": matched, "merged": n_merged, "missed": n_true - matched - n_merged, "false": n_pred - matched}
