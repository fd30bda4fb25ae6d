"""Scores: ISBI 2012 V_rand / V_info, pixel scores, instance matching, SEG.

Hand-computed values write their arithmetic next to the assertion. Notation as in napari_unet.metrics:
n = truth-foreground pixels, p_ij = |T = i, S = j| / n, c = fraction of singletons (prediction background).
"""

from __future__ import annotations

from math import log

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from napari_unet.metrics import (
    IOU_THRESHOLDS,
    ISBI_THRESHOLDS,
    average_scores,
    components,
    contingency,
    error_kinds,
    evaluate_pair,
    instance_scores,
    isbi_scores,
    match_instances,
    pixel_scores,
    rand_info_scores,
    seg_score,
    thin_boundaries,
)

RAND_INFO_KEYS = {"vrand", "vrand_merge", "vrand_split", "vinfo", "vinfo_merge", "vinfo_split"}


def approx_dict(expected: dict[str, float]):
    return pytest.approx(expected, rel=1e-12, abs=1e-12)


# ------------------------------------------------------------------------------- V_rand and V_info


def test_all_background_prediction_counts_every_pixel_as_a_singleton():
    truth = np.array([[1, 1, 0, 1, 1]])  # T: two segments of 2 pixels; n = 4, t = (1/2, 1/2)
    pred = np.zeros_like(truth)  # c = 1
    # A = 0 + c/n = 1/4;  B_S = 0 + c/n = 1/4;  B_T = 1/4 + 1/4 = 1/2
    # merge = 1, split = 1/2, V_rand = 2 (1/4) / (3/4) = 2/3
    # H(T) = ln 2;  H(S) = c ln n = ln 4;  H(S,T) = ln 4;  I = ln 2
    # merge = ln2 / ln2 = 1, split = ln2 / ln4 = 1/2, V_info = 2 ln2 / (ln4 + ln2) = 2/3
    scores = rand_info_scores(pred, truth)
    assert scores == approx_dict(
        {"vrand": 2 / 3, "vrand_merge": 1.0, "vrand_split": 0.5, "vinfo": 2 / 3, "vinfo_merge": 1.0, "vinfo_split": 0.5}
    )


def test_some_singletons():
    truth = np.array([[1, 1, 0, 1, 1]])  # T1 = pixels 0-1, T2 = pixels 3-4; n = 4
    pred = np.array([[1, 0, 0, 2, 2]])  # pixel 1 is prediction background: one singleton, c = 1/4
    # p_11 = 1/4, p_22 = 1/2; s = (1/4, 1/2)
    # A = 1/16 + 4/16 + c/n = 6/16;  B_S = 1/16 + 4/16 + 1/16 = 6/16;  B_T = 1/2
    # merge = 1, split = (6/16) / (8/16) = 3/4, V_rand = 2 (6/16) / (14/16) = 6/7
    # H(T) = ln 2;  H(S) = -(1/4 ln 1/4 + 1/2 ln 1/2) + 1/4 ln 4 = 3/2 ln 2 = H(S,T);  I = ln 2
    # merge = 1, split = ln2 / (3/2 ln2) = 2/3, V_info = 2 ln2 / (5/2 ln2) = 4/5
    scores = rand_info_scores(pred, truth)
    assert scores == approx_dict(
        {
            "vrand": 6 / 7,
            "vrand_merge": 1.0,
            "vrand_split": 0.75,
            "vinfo": 0.8,
            "vinfo_merge": 1.0,
            "vinfo_split": 2 / 3,
        }
    )


def test_pure_merge():
    truth = np.array([[1, 1, 0, 1, 1, 0, 1, 1]])  # three segments of 2 pixels; n = 6
    pred = np.array([[1, 1, 1, 1, 1, 0, 2, 2]])  # S1 covers T1 and T2, S2 = T3
    # p_11 = p_21 = p_32 = 1/3;  s = (2/3, 1/3);  t = (1/3, 1/3, 1/3)
    # A = 3/9;  B_S = 4/9 + 1/9 = 5/9;  B_T = 3/9
    # merge = 3/5, split = 1, V_rand = 2 (3/9) / (8/9) = 3/4
    # H(T) = ln 3 = H(S,T);  H(S) = ln 3 - 2/3 ln 2;  I = H(S)
    h_s = log(3) - 2 / 3 * log(2)
    scores = rand_info_scores(pred, truth)
    assert scores == approx_dict(
        {
            "vrand": 0.75,
            "vrand_merge": 0.6,
            "vrand_split": 1.0,
            "vinfo": 2 * h_s / (h_s + log(3)),
            "vinfo_merge": h_s / log(3),
            "vinfo_split": 1.0,
        }
    )


def test_pure_split():
    truth = np.array([[1, 1, 1, 1, 0, 1, 1]])  # T1: 4 pixels, T2: 2 pixels; n = 6
    pred = np.array([[1, 1, 2, 2, 0, 3, 3]])  # T1 split in two
    # p_11 = p_12 = p_23 = 1/3;  s = (1/3, 1/3, 1/3);  t = (2/3, 1/3)
    # A = 3/9;  B_S = 3/9;  B_T = 4/9 + 1/9 = 5/9
    # merge = 1, split = 3/5, V_rand = 2 (3/9) / (8/9) = 3/4
    # H(S) = ln 3 = H(S,T);  H(T) = ln 3 - 2/3 ln 2;  I = H(T)
    h_t = log(3) - 2 / 3 * log(2)
    scores = rand_info_scores(pred, truth)
    assert scores == approx_dict(
        {
            "vrand": 0.75,
            "vrand_merge": 1.0,
            "vrand_split": 0.6,
            "vinfo": 2 * h_t / (h_t + log(3)),
            "vinfo_merge": 1.0,
            "vinfo_split": h_t / log(3),
        }
    )


def test_perfect_prediction_scores_one():
    rng = np.random.default_rng(0)
    truth = (rng.random((40, 40)) > 0.3).astype(np.uint8) * 255
    pred = components(truth != 0)
    assert pred.max() > 5
    assert rand_info_scores(pred, truth) == approx_dict({key: 1.0 for key in RAND_INFO_KEYS})
    # ids are free: any labelling of the same segments, and a mask or probabilities of the truth
    assert rand_info_scores(pred * 7 + 3 * (pred > 0), truth)["vrand"] == pytest.approx(1.0)
    assert rand_info_scores(truth != 0, truth)["vinfo"] == pytest.approx(1.0)
    assert rand_info_scores(truth / 255.0, truth)["vinfo"] == pytest.approx(1.0)


def test_entropy_edge_cases_follow_the_challenge():
    truth = np.array([[1, 1, 1, 1]])  # one segment: H(T) = 0
    split = rand_info_scores(np.array([[1, 1, 2, 2]]), truth)
    # H(T) = 0: merge 0, split 1, V_info = 0.  Rand: A = 1/2, B_S = 1/2, B_T = 1: V_rand = 1 / (3/2) = 2/3
    assert split == approx_dict(
        {"vinfo_merge": 0.0, "vinfo_split": 1.0, "vinfo": 0.0, "vrand_merge": 1.0, "vrand_split": 0.5, "vrand": 2 / 3}
    )
    merged = rand_info_scores(np.ones((1, 5), np.int32), np.array([[1, 1, 0, 1, 1]]))
    # H(S) = 0 (one segment, no singletons): merge 1, split 0, V_info = 0
    assert (merged["vinfo_merge"], merged["vinfo_split"], merged["vinfo"]) == (1.0, 0.0, 0.0)
    # both 0: the H(S) rule wins (as in Fiji), so even a perfect single segment gets V_info = 0
    both = rand_info_scores(np.array([[1, 1, 1, 1]]), truth)
    assert (both["vinfo"], both["vrand"]) == (0.0, 1.0)
    with pytest.raises(ValueError, match="no foreground"):
        rand_info_scores(np.ones((3, 3), np.int32), np.zeros((3, 3), np.uint8))


labels_strategy = arrays(np.int32, (6, 7), elements=st.integers(0, 5))


@settings(max_examples=40, deadline=None)
@given(pred=labels_strategy, truth=labels_strategy, seed=st.integers(0, 2**16))
def test_rand_info_scores_are_invariant_to_relabelling(pred, truth, seed):
    if not truth.any():
        truth[0, 0] = 1
    rng = np.random.default_rng(seed)
    pred_ids = np.concatenate([[0], rng.permutation(np.arange(1, 6)) * 1000 + 17])
    truth_ids = np.concatenate([[0], rng.permutation(np.arange(1, 6)) + 40])
    for truth_is_labels in (True, False):
        for thinned in (False, True):
            before = rand_info_scores(pred, truth, truth_is_labels=truth_is_labels, thinned=thinned)
            after = rand_info_scores(pred_ids[pred], truth_ids[truth], truth_is_labels=truth_is_labels, thinned=thinned)
            assert after == pytest.approx(before, rel=1e-9, abs=1e-12)
            assert all(0.0 <= value <= 1.0 for value in before.values())


@settings(max_examples=25, deadline=None)
@given(
    truth=arrays(np.int32, (4, 4), elements=st.integers(0, 5)),
    pred=arrays(np.int32, (4, 4), elements=st.integers(1, 4)),
)
def test_agrees_with_skimage_adapted_rand_when_the_prediction_has_no_background(truth, pred):
    """skimage counts pairs of distinct pixels (n_ij^2 - n_ij) where the ISBI score counts p_ij^2, so the
    two agree up to O(1 / segment size): segments here are 64 x 64 blocks. skimage's "precision" is the
    split score and its "recall" the merge score (a pure merge gives it precision 1)."""
    from skimage.metrics import adapted_rand_error

    if not truth.any():
        truth[0, 0] = 1
    block = np.ones((64, 64), np.int32)
    truth, pred = np.kron(truth, block), np.kron(pred, block)
    ours = rand_info_scores(pred, truth, truth_is_labels=True)
    error, precision, recall = adapted_rand_error(truth, pred, ignore_labels=(0,))
    assert ours["vrand"] == pytest.approx(1.0 - error, rel=1e-3)
    assert ours["vrand_split"] == pytest.approx(precision, rel=1e-3)
    assert ours["vrand_merge"] == pytest.approx(recall, rel=1e-3)


def test_differs_from_skimage_adapted_rand_when_the_prediction_has_background():
    from skimage.metrics import adapted_rand_error

    truth = np.zeros((64, 64), np.int32)
    truth[:, :32], truth[:, 32:] = 1, 2  # n = 4096, t = (1/2, 1/2), B_T = 1/2
    pred = np.zeros_like(truth)
    # ours, every pixel a singleton: A = B_S = c/n = 1/n, V_rand = 2 (1/n) / (1/n + 1/2) = 4 / (n + 2)
    assert rand_info_scores(pred, truth, truth_is_labels=True)["vrand"] == pytest.approx(4 / 4098)
    # skimage, background = one segment, a pure merge: pairs 2 (2048^2 - 2048) over test pairs 4096^2 - 4096
    # and true pairs 2 (2048^2 - 2048): V_rand = 2 P / (P_test + P_true)
    pairs, test_pairs = 2 * (2048**2 - 2048), 4096**2 - 4096
    expected = 2 * pairs / (test_pairs + pairs)
    assert 1.0 - adapted_rand_error(truth, pred, ignore_labels=(0,))[0] == pytest.approx(expected)
    assert expected > 0.66


def test_contingency_is_sparse_and_exact():
    a = np.array([3, 3, 0, 10**12, 10**12, 3])
    b = np.array([1, 1, 0, 5, 1, 1])
    rows, cols, counts = contingency(a, b)
    table = {(int(r), int(c)): int(k) for r, c, k in zip(rows, cols, counts)}
    # huge ids come back as given (they are compacted only inside); every pair appears once with its count
    assert table == {(0, 0): 1, (3, 1): 3, (10**12, 1): 1, (10**12, 5): 1}


# --------------------------------------------------------------------------------------- thinning


def test_thinning_leaves_one_pixel_lines_between_segments():
    segments = np.zeros((20, 30), np.int32)
    segments[2:18, 2:10] = 1
    segments[2:18, 16:28] = 2
    segments[0:2, 0:3] = 3
    thinned = thin_boundaries(segments)
    np.testing.assert_array_equal(thinned[segments != 0], segments[segments != 0])
    assert set(np.unique(thinned)) == {0, 1, 2, 3}
    line = np.argwhere(thinned == 0)
    assert 0 < len(line) < 2 * 20 + 10
    for y, x in line:  # every line pixel touches two different segments
        window = thinned[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2]
        assert len(set(np.unique(window)) - {0}) >= 2
    # between the two big segments the gap of 6 px becomes a single column of line pixels per row
    assert np.all(np.count_nonzero(thinned[5:15, 10:16] == 0, axis=1) == 1)
    assert np.all(thin_boundaries(np.zeros((4, 4), np.int32)) == 1)  # no segment: one basin (as Fiji)


def test_thinning_floods_the_background_as_the_challenges_fiji_watershed():
    """The challenge's Fiji script thins with the classic watershed (`WatershedTransform2D`, 4-connected): the
    background next to a segment is queued column by column (x outer, y inner), each pixel taken from the queue
    queues its unvisited neighbours and takes the one segment among its flooded neighbours, or becomes a line."""
    # an even gap of 6 columns: level 1 = columns 1 and 6, level 2 = columns 2 and 5, level 3 = column 3 (queued
    # first, from column 2: it sees only segment 1) then column 4 (it sees column 3's 1 and column 5's 2: line),
    # the same column in every row (not a zigzag between columns 3 and 4)
    segments = np.zeros((7, 8), np.int32)
    segments[:, 0], segments[:, 7] = 1, 2
    np.testing.assert_array_equal(thin_boundaries(segments), np.array([[1, 1, 1, 1, 0, 2, 2, 2]] * 7))
    # three corners: (3, 5) is 2 steps from segment 3 but sees (2, 5), flooded by segment 2 in the same step
    # before it, so it is a line pixel; (3, 4) likewise
    segments = np.zeros((6, 6), np.int32)
    segments[0, 0], segments[0, 5], segments[5, 5] = 1, 2, 3
    expected = [
        [1, 1, 1, 0, 2, 2],
        [1, 1, 1, 0, 2, 2],
        [1, 1, 1, 0, 2, 2],
        [1, 1, 0, 3, 0, 0],
        [1, 0, 3, 3, 3, 3],
        [0, 3, 3, 3, 3, 3],
    ]
    np.testing.assert_array_equal(thin_boundaries(segments), np.array(expected))


def test_isbi_thresholds_and_comparison_are_the_challenge_scripts():
    """Fiji's `for (double th = 0.0; th <= 1.0; th += 0.1)` accumulates the step in double precision and compares
    each float pixel, promoted to double, with it."""
    assert ISBI_THRESHOLDS[:3] == (0.0, 0.1, 0.2) and ISBI_THRESHOLDS[3] == 0.30000000000000004
    assert ISBI_THRESHOLDS[4:8] == (0.4, 0.5, 0.6, 0.7)
    assert ISBI_THRESHOLDS[8:] == (0.7999999999999999, 0.8999999999999999, 0.9999999999999999)
    probs = np.array([[255, 255, 204, 255, 255]], np.uint8).astype(np.float32) / 255  # an 8-bit map saved /255
    truth = np.full(probs.shape, 255, np.uint8)  # one cell of 5 pixels: n = 5, B_T = 1
    # up to 0.7999999999999999 the 5 pixels are one segment (204/255 in float32 is 0.8000000119 > 0.79999...,
    # as a double): V_rand 1. At 0.8999999999999999 and 0.9999999999999999 (1.0 > it: the 255s stay cells) the
    # middle pixel is a singleton between two segments of 2: A = (4 + 4 + 1) / 25 = B_S, V_rand = 2A / (A + 1) = 9/17
    curve = isbi_scores(probs, truth, thinned=False)["vrand_curve"]
    assert curve == pytest.approx([1.0] * 9 + [9 / 17] * 2, rel=1e-12)
    # the pixel scores compare the same way: 204/255 is foreground at --threshold 0.8
    assert evaluate_pair(probs, truth, "pixels", threshold=0.8) == {"iou": 1.0, "pixel_error": 0.0}


def test_thinned_scores_ignore_a_too_wide_predicted_membrane():
    truth = np.full((20, 21), 255, np.uint8)
    truth[:, 10] = 0  # two cells, 1-px membrane
    probs = np.full(truth.shape, 0.9)
    probs[:, 8:13] = 0.1  # predicted membrane 5 px wide: 4 singleton columns of cell pixels
    plain = isbi_scores(probs, truth, thinned=False)
    thinned = isbi_scores(probs, truth, thinned=True)
    assert plain["vrand"] < 0.95
    # thinned: the line falls on the true membrane column 10 and both cells are recovered exactly
    assert thinned["vrand"] == pytest.approx(1.0) and thinned["vinfo"] == pytest.approx(1.0)
    assert thinned["vrand_threshold"] == pytest.approx(0.1)
    assert thinned["thresholds"] == list(ISBI_THRESHOLDS)
    assert len(thinned["vinfo_curve"]) == 11


def test_average_scores_takes_the_maximum_of_the_mean_curve():
    def fake(vrand_curve, vinfo_curve):
        curves = {"vrand": vrand_curve, "vinfo": vinfo_curve}
        scores = {"thresholds": [0.3, 0.6], "iou": 0.5}
        for name in ("vrand", "vinfo"):
            for part in ("", "_merge", "_split"):
                scores[f"{name}{part}_curve"] = curves[name]
            scores[name] = max(curves[name])
        return scores

    mean = average_scores([fake([0.9, 0.5], [0.2, 0.4]), fake([0.5, 0.8], [0.2, 0.6])])
    # mean curves: vrand (0.7, 0.65) -> 0.7 at 0.3 (the mean of per-slice maxima would be 0.85)
    assert mean["vrand"] == pytest.approx(0.7) and mean["vrand_threshold"] == 0.3
    assert mean["vinfo"] == pytest.approx(0.5) and mean["vinfo_threshold"] == 0.6
    assert mean["iou"] == pytest.approx(0.5) and mean["n_images"] == 2
    assert average_scores([{"ap50": 1.0, "name": "a"}, {"ap50": 0.5, "name": "b"}]) == {"ap50": 0.75, "n_images": 2}
    with pytest.raises(ValueError):
        average_scores([])


# ----------------------------------------------------------------------------------- pixel scores


def test_pixel_scores_hand_computed():
    pred = np.array([[1, 1, 0, 0]])
    truth = np.array([[0, 1, 1, 0]], np.uint8) * 255
    # intersection 1, union 3; 2 of 4 pixels differ
    assert pixel_scores(pred, truth) == pytest.approx({"iou": 1 / 3, "pixel_error": 0.5})
    assert pixel_scores(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == {"iou": 1.0, "pixel_error": 0.0}
    with pytest.raises(TypeError, match="threshold"):
        pixel_scores(np.zeros((2, 2)), np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="same shape"):
        pixel_scores(np.zeros((2, 2), bool), np.zeros((2, 3), bool))


# ------------------------------------------------------------------------------ instance matching


def three_cells() -> tuple[np.ndarray, np.ndarray]:
    """Truth A, B, C; prediction: A exact, B missed, C split unequally (C1 IoU 0.6, C2 0.4), D spurious."""
    truth = np.zeros((20, 20), np.int32)
    truth[0:5, 0:5] = 1  # A, 25 px
    truth[0:5, 10:15] = 2  # B, 25 px
    truth[10:15, 0:10] = 3  # C, 50 px
    pred = np.zeros_like(truth)
    pred[0:5, 0:5] = 9  # A
    pred[10:15, 0:6] = 4  # C1: 30 px, IoU 30/50 = 0.6
    pred[10:15, 6:10] = 5  # C2: 20 px, IoU 20/50 = 0.4
    pred[16:19, 16:19] = 7  # D, spurious
    return pred, truth


def test_instance_matching_missed_spurious_and_split():
    pred, truth = three_cells()
    result = match_instances(pred, truth)
    assert (result["n_true"], result["n_pred"]) == (3, 4)
    assert result["thresholds"] == list(IOU_THRESHOLDS)
    # tau = 0.5, 0.55, 0.6: A and C1 match -> TP 2, FP 2 (C2, D), FN 1 (B); tau >= 0.65: only A
    assert result["tp"] == [2, 2, 2] + [1] * 7
    assert result["fp"] == [2, 2, 2] + [3] * 7
    assert result["fn"] == [1, 1, 1] + [2] * 7
    assert result["ap"][0] == pytest.approx(2 / 5)  # 2 / (2 + 2 + 1)
    assert result["f1"][0] == pytest.approx(4 / 7)  # 4 / (4 + 2 + 1)
    assert result["ap"][-1] == pytest.approx(1 / 6)  # 1 / (1 + 3 + 2)
    assert result["precision"][0] == pytest.approx(0.5) and result["recall"][0] == pytest.approx(2 / 3)
    scores = instance_scores(pred, truth)
    assert scores["ap50"] == pytest.approx(2 / 5)
    assert scores["map"] == pytest.approx((3 * 2 / 5 + 7 * 1 / 6) / 10)
    assert scores["f1_50"] == pytest.approx(4 / 7)
    # SEG: A -> 1, B -> 0, C -> C1 (30 > 25 = half of C) with Jaccard 0.6: (1 + 0 + 0.6) / 3
    assert scores["seg"] == pytest.approx(1.6 / 3)


def test_seg_needs_more_than_half_of_the_true_object():
    truth = np.zeros((4, 10), np.int32)
    truth[:, 0:10] = 1  # 40 px
    half = np.zeros_like(truth)
    half[:, 0:5] = 1  # exactly half: not > 0.5 |R|
    assert seg_score(half, truth) == 0.0
    more = np.zeros_like(truth)
    more[:, 0:6] = 2
    more[0, 9] = 3  # a false positive does not count
    assert seg_score(more, truth) == pytest.approx(24 / 40)


def test_ties_at_iou_one_half_are_matched_one_to_one():
    truth = np.array([[1, 1]])
    pred = np.array([[1, 2]])  # both halves have IoU 1/2 with the truth
    result = match_instances(pred, truth, thresholds=[0.5])
    assert (result["tp"], result["fp"], result["fn"]) == ([1], [1], [0])
    # at a lower threshold the matching maximises the number of matches
    truth = np.array([[1, 1, 2, 2]])
    pred = np.array([[1, 2, 2, 2]])  # pred 2 overlaps truth 1 (1/4) and 2 (2/3); pred 1 only truth 1 (1/2)
    result = match_instances(pred, truth, thresholds=[0.2])
    assert result["tp"] == [2]


def test_empty_images():
    empty = np.zeros((5, 5), np.int32)
    one = empty.copy()
    one[1:3, 1:3] = 1
    both_empty = {"ap50": 1.0, "ap75": 1.0, "map": 1.0, "f1_50": 1.0, "seg": 1.0, "n_pred": 0, "n_true": 0}
    assert instance_scores(empty, empty) == both_empty
    missed = instance_scores(empty, one)
    assert (missed["ap50"], missed["map"], missed["f1_50"], missed["seg"]) == (0.0, 0.0, 0.0, 0.0)
    spurious = instance_scores(one, empty)
    assert (spurious["ap50"], spurious["map"], spurious["f1_50"], spurious["seg"]) == (0.0, 0.0, 0.0, 0.0)


@settings(max_examples=40, deadline=None)
@given(truth=arrays(np.int32, (8, 8), elements=st.integers(0, 6)), seed=st.integers(0, 2**16))
def test_instance_scores_perfect_on_itself_and_invariant_to_relabelling(truth, seed):
    rng = np.random.default_rng(seed)
    ids = np.concatenate([[0], rng.permutation(np.arange(1, 7)) * 97 + 5])
    perfect = instance_scores(ids[truth], truth)
    assert (perfect["ap50"], perfect["map"], perfect["f1_50"], perfect["seg"]) == (1.0, 1.0, 1.0, 1.0)
    pred = np.roll(truth, 1, axis=1)
    reference = instance_scores(pred, truth)
    assert instance_scores(ids[pred], truth) == pytest.approx(reference, rel=1e-12)
    assert instance_scores(pred, ids[truth]) == pytest.approx(reference, rel=1e-12)


def _error_kinds_by_hand(pred: np.ndarray, truth: np.ndarray) -> dict[str, int]:
    """error_kinds from the definitions, object by object (dense IoU table; small images only)."""
    true_ids, pred_ids = [i for i in np.unique(truth) if i], [j for j in np.unique(pred) if j]
    iou = {
        (i, j): np.sum((truth == i) & (pred == j)) / np.sum((truth == i) | (pred == j))
        for i in true_ids
        for j in pred_ids
    }
    matched_true = {i for (i, j), v in iou.items() if v > 0.5}
    matched_pred = {j for (i, j), v in iou.items() if v > 0.5}

    def covers(j, i):  # more than half of true object i lies in predicted object j
        return 2 * np.sum((truth == i) & (pred == j)) > np.sum(truth == i)

    merged = {
        i
        for i in true_ids
        if i not in matched_true
        for j in pred_ids
        if covers(j, i) and any(covers(j, k) for k in true_ids if k != i)
    }
    return {
        "matched": len(matched_true),
        "merged": len(merged),
        "missed": len(true_ids) - len(matched_true) - len(merged),
        "false": len(pred_ids) - len(matched_pred),
    }


@settings(max_examples=60, deadline=None)
@given(
    truth=arrays(np.int32, (6, 7), elements=st.integers(0, 4)),
    pred=arrays(np.int32, (6, 7), elements=st.integers(0, 4)),
)
def test_error_kinds_follow_their_definitions(truth, pred):
    # IoU exactly 0.5 matches in error_kinds (as in match_instances) and not by hand: skip those ties
    for i in np.unique(truth[truth > 0]):
        for j in np.unique(pred[pred > 0]):
            both, either = np.sum((truth == i) & (pred == j)), np.sum((truth == i) | (pred == j))
            if 2 * both == either:
                return
    assert error_kinds(pred, truth) == _error_kinds_by_hand(pred, truth)
    kinds = error_kinds(pred, truth)
    assert kinds["matched"] == instance_scores(pred, truth)["n_true"] - match_instances(pred, truth, [0.5])["fn"][0]


def test_error_kinds_of_a_perfect_and_an_empty_prediction():
    truth = np.zeros((6, 6), np.int32)
    truth[:2, :2], truth[:2, 2:4], truth[3:, 3:] = 1, 2, 3
    assert error_kinds(truth, truth) == {"matched": 3, "merged": 0, "missed": 0, "false": 0}
    assert error_kinds(np.zeros_like(truth), truth) == {"matched": 0, "merged": 0, "missed": 3, "false": 0}
    one = (truth > 0).astype(np.int32)  # all three drawn as one object, which matches the largest (IoU 9/17)
    assert error_kinds(one, truth) == {"matched": 1, "merged": 2, "missed": 0, "false": 0}


def test_instance_inputs_must_be_labels():
    pred, truth = three_cells()
    with pytest.raises(TypeError, match="probs_to_labels"):
        instance_scores(pred.astype(float), truth)
    with pytest.raises(TypeError, match="connected components"):
        instance_scores(pred > 0, truth)
    with pytest.raises(ValueError, match=">= 0"):
        instance_scores(-pred, truth)


@pytest.mark.parametrize("score", [match_instances, seg_score, instance_scores, error_kinds])
def test_a_float_truth_is_told_what_to_do_and_never_to_post_process_probabilities(score):
    """The library told a float ground truth to post-process its "probabilities" (what a float prediction is
    told): labels loaded as float32 are to be converted; other values are no ids, ground truth is no
    probability map."""
    pred, truth = three_cells()
    with pytest.raises(TypeError, match=r"whole numbers: convert with \.astype\(np\.int32\)") as loaded:
        score(pred, truth.astype(np.float32))
    with pytest.raises(TypeError, match="not whole numbers: ground truth must be .* not a probability map") as probs:
        score(pred, (truth > 0) * np.float32(0.8))
    assert not any("probs_to_labels" in str(error.value) for error in (loaded, probs))
    with pytest.raises(TypeError, match="probs_to_labels"):  # a float prediction: probabilities, as before
        score((pred > 0) * np.float32(0.8), truth)


@pytest.mark.parametrize("score", [match_instances, seg_score, instance_scores, error_kinds])
def test_truth_marking_pixels_not_annotated_is_refused(score):
    """65535 in uint16 ground truth is "not annotated" for training and `evaluate`: the library scored it as one
    more object (every pixel is scored); a 0/65535 mask stays a mask."""
    pred, truth = three_cells()
    marked = truth.astype(np.uint16)
    marked[0, :3] = 65535
    with pytest.raises(ValueError, match=r"truth marks 3 pixel\(s\) 'not annotated' \(65535"):
        score(pred, marked)
    mask = ((truth > 0) * 65535).astype(np.uint16)
    score(pred, mask)  # accepted: a binary mask of cells
    score(pred, truth.astype(np.uint16))  # and plain uint16 ids


# ----------------------------------------------------------------------------------- evaluate_pair


def test_evaluate_pair_agrees_with_the_library_functions():
    pred, truth = three_cells()
    assert evaluate_pair(pred, truth, "instances") == instance_scores(pred, truth)
    assert evaluate_pair(pred, truth, "pixels") == pixel_scores(pred, truth)
    probs = np.where(pred > 0, 0.8, 0.1)
    assert evaluate_pair(probs, truth, "pixels") == pixel_scores(pred > 0, truth)
    isbi = evaluate_pair(probs, truth, "isbi")
    assert {"vrand", "vinfo", "iou", "pixel_error"} <= set(isbi)
    expected = isbi_scores(probs, truth, thinned=True)
    assert isbi["vrand"] == expected["vrand"] and isbi["vinfo"] == expected["vinfo"]
    on_labels = evaluate_pair(pred, truth, "isbi", thinned=False)
    assert on_labels["vrand"] == rand_info_scores(pred, truth)["vrand"]
    with pytest.raises(ValueError, match="kind"):
        evaluate_pair(pred, truth, "rand")


def test_real_isbi_labels_score_one_against_themselves(shared_data):
    from PIL import Image

    truth = np.asarray(Image.open(shared_data / "isbi2012" / "train" / "labels" / "00.png"))
    probs = truth / 255.0
    for thinned in (True, False):
        scores = isbi_scores(probs, truth, thinned=thinned)
        assert scores["vrand"] == pytest.approx(1.0) and scores["vinfo"] == pytest.approx(1.0)
    shifted = np.roll(probs, 2, axis=0)
    worse = isbi_scores(shifted, truth, thinned=False)
    assert 0.3 < worse["vrand"] < 1.0 and 0.3 < worse["vinfo"] < 1.0


def test_average_scores_keeps_the_thresholds_of_many_isbi_slices():
    """Averaging the threshold lists themselves would turn 0.1 into 0.10000000000000002 with 3 slices."""
    rng = np.random.default_rng(0)
    truth = np.ones((24, 24), np.uint8)
    truth[::6, :] = 0
    truth[:, ::6] = 0
    slices = [isbi_scores(np.clip(truth + rng.normal(0, 0.3, truth.shape), 0, 1), truth) for _ in range(5)]
    mean = average_scores(slices)
    assert mean["thresholds"] == list(slices[0]["thresholds"]) and mean["n_images"] == 5
    assert min(s["vrand"] for s in slices) - 1e-9 <= mean["vrand"] <= max(s["vrand"] for s in slices) + 1e-9
