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

Where they are: `overlap` (contingency tables, connected components, the input checks), `isbi` (the electron
microscopy scores: V_rand, V_info, pixel error and foreground IoU), `instances` (matching objects: AP, F1,
precision, recall, SEG, what became of the unmatched); here, `evaluate_pair` and `average_scores`, which combine
them for the command line.
Every public name is importable from `napari_unet.metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..validation import check_probabilities
from .instances import IOU_THRESHOLDS, error_kinds, instance_scores, match_instances, seg_score
from .isbi import (
    CURVES,
    ISBI_THRESHOLDS,
    best_over_thresholds,
    isbi_scores,
    pixel_scores,
    rand_info_scores,
    thin_boundaries,
    threshold_probs,
)
from .overlap import as_mask, as_objects, check_pair, components, contingency

__all__ = [
    "IOU_THRESHOLDS",
    "ISBI_THRESHOLDS",
    "SCORE_KINDS",
    "as_objects",
    "average_scores",
    "components",
    "contingency",
    "error_kinds",
    "evaluate_pair",
    "instance_scores",
    "isbi_scores",
    "match_instances",
    "pixel_scores",
    "rand_info_scores",
    "seg_score",
    "thin_boundaries",
]

SCORE_KINDS = ("isbi", "instances", "pixels")


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
    Float predictions are compared with `threshold` in float64 (`isbi.threshold_probs`), as the ISBI script does.
    """
    pred, truth = check_pair(pred, truth)
    if kind not in SCORE_KINDS:
        raise ValueError(f"kind must be one of {SCORE_KINDS}; got {kind!r}")
    if pred.dtype.kind == "f":
        pred_mask = threshold_probs(check_probabilities(pred, "pred"), threshold)
    else:
        pred_mask = as_mask(pred, "pred")
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
    if "thresholds" in mean and all(f"{key}_curve" in mean for key in CURVES):
        curves = {key: mean[f"{key}_curve"] for key in CURVES}
        mean.update(best_over_thresholds(mean["thresholds"], curves))
    mean["n_images"] = len(scores)
    return mean
