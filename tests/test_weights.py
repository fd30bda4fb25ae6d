"""Weight map: equals the naive one-distance-transform-per-cell reference, peaks in the gaps between cells."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from scipy.spatial import cKDTree

from napari_unet.targets import make_target, separate_cells
from napari_unet.weights import border_margin, class_weights_of, two_nearest_distances, weight_map


def voronoi_cells(shape: tuple[int, int], n: int, radius: float, seed: int) -> np.ndarray:
    """Random instance ids: Voronoi cells of n random seeds clipped by disks (many touch, some on the border)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    if n == 0:
        return labels
    seeds = rng.uniform(0, 1, (n, 2)) * shape
    distance, nearest = cKDTree(seeds).query(np.indices(shape).reshape(2, -1).T)
    ids = rng.choice(np.arange(1, 10 * n + 1), size=n, replace=False).astype(np.int32)
    labels.ravel()[:] = np.where(distance < radius, ids[nearest], 0)
    return labels


def naive_weight_map(
    labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0, class_weights="balanced", mask=None, border: int = 1
) -> np.ndarray:
    """The reference: one full-image distance transform per separated cell, the two smallest per pixel."""
    cells = separate_cells(labels, border)
    target = cells != 0
    inside = np.ones(labels.shape, bool) if mask is None else mask.astype(bool)
    if class_weights == "balanced":
        n_fg, n_bg = np.sum(target & inside), np.sum(~target & inside)
        k = int(n_fg > 0) + int(n_bg > 0)
        w_bg = (n_fg + n_bg) / (k * n_bg) if n_bg else 1.0
        w_fg = (n_fg + n_bg) / (k * n_fg) if n_fg else 1.0
    elif class_weights is None:
        w_bg = w_fg = 1.0
    else:
        w_bg, w_fg = class_weights
    weights = np.where(target, w_fg, w_bg)
    ids = np.unique(cells[target])
    if len(ids) >= 2:
        distances = np.sort([ndimage.distance_transform_edt(cells != i) for i in ids], axis=0)
        border_term = w0 * np.exp(-((distances[0] + distances[1]) ** 2) / (2 * sigma**2))
        weights = weights + np.where(target, 0.0, border_term)
    return np.where(inside, weights, 0.0)


cases = st.one_of(
    st.builds(  # 0, 1 and 2 cells
        voronoi_cells,
        shape=st.tuples(st.integers(1, 60), st.integers(1, 60)),
        n=st.integers(0, 2),
        radius=st.floats(2.0, 40.0),
        seed=st.integers(0, 2**31),
    ),
    st.builds(  # tens of cells of a few pixels, small in pixels so the naive reference stays fast
        voronoi_cells,
        shape=st.tuples(st.integers(20, 80), st.integers(20, 80)),
        n=st.integers(3, 60),
        radius=st.floats(3.0, 20.0),
        seed=st.integers(0, 2**31),
    ),
    st.builds(  # hundreds of cells
        voronoi_cells,
        shape=st.tuples(st.integers(60, 96), st.integers(60, 96)),
        n=st.integers(100, 400),
        radius=st.floats(2.0, 8.0),
        seed=st.integers(0, 2**31),
    ),
)


@settings(max_examples=40, deadline=None)
@given(
    labels=cases,
    w0=st.sampled_from([10.0, 50.0]),
    sigma=st.sampled_from([2.0, 5.0, 8.0]),
    border=st.integers(1, 3),
)
def test_equals_naive_reference(labels: np.ndarray, w0: float, sigma: float, border: int) -> None:
    ours = weight_map(labels, w0=w0, sigma=sigma, border=border)
    assert ours.dtype == np.float32 and ours.shape == labels.shape
    np.testing.assert_allclose(ours, naive_weight_map(labels, w0, sigma, border=border), rtol=1e-4, atol=0)


@settings(max_examples=15, deadline=None)
@given(
    labels=cases,
    class_weights=st.sampled_from([None, (0.5, 2.0), "balanced"]),
    mask_seed=st.integers(0, 2**31),
)
def test_equals_naive_reference_with_mask_and_class_weights(labels, class_weights, mask_seed) -> None:
    mask = np.random.default_rng(mask_seed).random(labels.shape) > 0.3
    ours = weight_map(labels, class_weights=class_weights, mask=mask)
    expected = naive_weight_map(labels, class_weights=class_weights, mask=mask)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=0)


def test_cells_on_the_image_border() -> None:
    labels = np.zeros((30, 40), np.int32)
    labels[:10, :15] = 1  # corner
    labels[:10, 15:30] = 2  # touches 1, on the top edge
    labels[20:, 35:] = 3  # opposite corner
    labels[12:30, 0:5] = 4  # left edge
    np.testing.assert_allclose(weight_map(labels), naive_weight_map(labels), rtol=1e-4, atol=0)


def test_peaks_in_the_gaps_between_touching_cells() -> None:
    labels = np.zeros((64, 64), np.int32)
    labels[10:30, 5:20] = 1
    labels[10:30, 20:35] = 2  # touches 1 along column 19/20
    labels[45:60, 45:60] = 3  # far from both
    weights = weight_map(labels, w0=10.0, sigma=5.0)
    target = make_target(labels)
    cut = (labels != 0) & (target == 0)
    assert np.array_equal(np.flatnonzero(cut.any(axis=0)), [19])
    background = target == 0
    assert weights[cut].min() > weights[background & ~cut].max()
    assert np.unravel_index(np.argmax(weights), weights.shape)[1] == 19
    n_fg = target.sum()
    w_background = weights.size / (2 * (weights.size - n_fg))
    # on the cut between the cells' straight edges d1 = d2 = 1: w = w_c + w0 exp(-4 / (2 sigma^2))
    np.testing.assert_allclose(weights[20, 19], w_background + 10.0 * math.exp(-4 / 50), rtol=1e-6)
    # away from other cells, background weight decays to w_c
    np.testing.assert_allclose(weights[63, 0], w_background, rtol=1e-6)


def test_peaks_in_the_gaps_of_random_touching_cells() -> None:
    labels = voronoi_cells((128, 128), 40, 14.0, seed=5)
    target = make_target(labels)
    weights = weight_map(labels, class_weights=None)
    cut = (labels != 0) & (target == 0)
    far = ndimage.distance_transform_edt(~cut) > 3
    background = target == 0
    assert cut.sum() > 50
    assert np.median(weights[cut]) > 1 + 0.8 * 10.0
    assert np.median(weights[cut]) > 3 * np.median(weights[background & far])


def test_class_balance() -> None:
    labels = np.zeros((20, 30), np.int32)
    labels[2:8, 2:12] = 1
    weights = weight_map(labels, w0=0.0)
    n_fg, n = 60, 600
    np.testing.assert_allclose(weights[labels == 1], n / (2 * n_fg))
    np.testing.assert_allclose(weights[labels == 0], n / (2 * (n - n_fg)))
    assert math.isclose(weights.mean(), 1.0, rel_tol=1e-6)
    mask = np.zeros(labels.shape, bool)
    mask[:, :15] = True  # 60 foreground, 240 background counted
    masked = weight_map(labels, w0=0.0, mask=mask)
    assert np.all(masked[~mask] == 0)
    np.testing.assert_allclose(masked[mask & (labels == 1)], 300 / 120)
    np.testing.assert_allclose(masked[mask & (labels == 0)], 300 / 480)
    np.testing.assert_allclose(class_weights_of(np.zeros((4, 4), np.uint8), np.ones((4, 4), bool)), [1.0, 1.0])
    np.testing.assert_allclose(weight_map(labels, w0=0.0, class_weights=(0.25, 3.0))[labels == 1], 3.0)


def test_reserved_value_gets_weight_zero() -> None:
    labels = np.zeros((20, 20), np.uint16)
    labels[5:10, 5:10] = 1
    labels[5:10, 10:15] = 2
    labels[15:, :] = 65535
    weights = weight_map(labels)
    assert np.all(weights[15:] == 0) and np.all(weights[:15] > 0)
    np.testing.assert_allclose(weights, naive_weight_map(labels, mask=labels != 65535), rtol=1e-4)


def test_binary_mask_cells_are_connected_components() -> None:
    isbi = np.full((40, 40), 255, np.uint8)
    isbi[:, 19] = 0  # a membrane line between two cells
    isbi[20, :] = 0
    weights = weight_map(isbi, class_weights=None)
    d = 1.0  # on the membrane, both neighbouring cells are 1 px away
    np.testing.assert_allclose(weights[10, 19], 1 + 10 * math.exp(-((2 * d) ** 2) / 50), rtol=1e-6)
    np.testing.assert_allclose(weights, naive_weight_map(isbi, class_weights=None), rtol=1e-4)


def test_margin_from_w0_sigma_and_tolerance() -> None:
    for w0, sigma, tol in ((10.0, 5.0, 1e-6), (50.0, 6.0, 1e-4), (1.0, 1.0, 1e-3)):
        margin = border_margin(w0, sigma, tol)
        assert math.isclose(w0 * math.exp(-(margin**2) / (2 * sigma**2)), tol, rel_tol=1e-9)
    assert 28 < border_margin(10.0, 5.0, 1e-6) < 29
    assert border_margin(1e-7, 5.0, 1e-6) == 0.0


def test_two_nearest_distances_exact_without_margin() -> None:
    labels = separate_cells(voronoi_cells((40, 50), 15, 8.0, seed=2))
    d1, d2 = two_nearest_distances(labels)
    all_distances = np.sort([ndimage.distance_transform_edt(labels != i) for i in range(1, labels.max() + 1)], 0)
    np.testing.assert_array_equal(d1, all_distances[0])
    np.testing.assert_array_equal(d2, all_distances[1])
    near1, near2 = two_nearest_distances(labels, margin=3.0)
    assert np.array_equal(near1, np.where(d1 <= 3.0, d1, np.inf))
    assert np.array_equal(near2, np.where(d2 <= 3.0, d2, np.inf))


def test_bad_input() -> None:
    labels = np.zeros((5, 5), int)
    with pytest.raises(ValueError, match="sigma"):
        weight_map(labels, sigma=0)
    with pytest.raises(ValueError, match="class_weights"):
        weight_map(labels, class_weights="equal")
    with pytest.raises(ValueError, match="class_weights"):
        weight_map(labels, class_weights=(1.0, -1.0))
    with pytest.raises(ValueError, match="shape"):
        weight_map(labels, mask=np.ones((4, 5), bool))
    with pytest.raises(TypeError, match="dtype"):
        weight_map(labels.astype(float))


def test_synthetic_sample_equals_naive_and_peaks_between_touching_cells() -> None:
    from napari_unet.synthetic import make_cells, touching_pairs

    _, labels = make_cells((160, 160), seed=2)
    assert len(touching_pairs(labels)) >= 5
    weights = weight_map(labels)
    np.testing.assert_allclose(weights, naive_weight_map(labels), rtol=1e-4, atol=0)
    target = make_target(labels)
    cut = (labels != 0) & (target == 0)
    background = target == 0
    assert np.median(weights[cut]) > 5 * np.median(weights[background & ~cut])
