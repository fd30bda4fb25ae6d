"""Synthetic touching nuclei: determinism, dtypes, label invariants, touching neighbours."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from napari_unet.plugin._sample_data import sample_cells
from napari_unet.synthetic import make_cells, make_dataset, touching_pairs


@pytest.fixture(scope="module")
def cells() -> tuple[np.ndarray, np.ndarray]:
    return make_cells((512, 512), seed=0)


def test_shapes_and_dtypes(cells):
    image, labels = cells
    assert image.shape == labels.shape == (512, 512)
    assert image.dtype == np.float32
    assert labels.dtype == np.int32
    assert 0.0 <= image.min() and image.max() <= 1.0


def test_same_seed_same_result_other_seed_differs():
    a = make_cells((128, 160), seed=7)
    b = make_cells((128, 160), seed=7)
    c = make_cells((128, 160), seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), height=st.integers(48, 200), width=st.integers(48, 200))
def test_labels_are_contiguous_connected_instances(seed, height, width):
    image, labels = make_cells((height, width), seed=seed)
    assert image.shape == labels.shape == (height, width)
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids, np.arange(labels.max() + 1))
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        _, pieces = ndimage.label(labels[box] == i)
        assert pieces == 1, f"cell {i} is in {pieces} pieces"


def test_many_cells_touch_a_neighbour(cells):
    _, labels = cells
    n = labels.max()
    assert n >= 50
    touching = {i for pair in touching_pairs(labels) for i in pair}
    assert len(touching) >= 0.2 * n


def test_cells_are_brighter_than_background(cells):
    image, labels = cells
    inside = image[ndimage.binary_erosion(labels > 0, iterations=3)]
    outside = image[~ndimage.binary_dilation(labels > 0, iterations=4)]
    assert np.median(inside) > np.median(outside) + 0.15


def test_cell_sizes_follow_the_radius_range():
    _, labels = make_cells((256, 256), seed=3, radius=(8.0, 20.0))
    areas = np.bincount(labels.ravel())[1:]
    assert np.median(areas) > np.pi * 8**2 * 0.5
    assert areas.max() < np.pi * 20**2 * 1.5 * 1.4


def test_n_cells_is_an_upper_bound():
    _, labels = make_cells((256, 256), n_cells=12, seed=1)
    assert 1 <= labels.max() <= 12


def test_make_cells_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"shape must be \(Y, X\)"):
        make_cells((4, 512))
    with pytest.raises(ValueError, match="radius"):
        make_cells((64, 64), radius=(10.0, 5.0))


def test_make_dataset_is_reproducible_and_varied():
    first = make_dataset(3, (96, 96), seed=5)
    again = make_dataset(3, (96, 96), seed=5)
    assert len(first) == 3
    for (image_a, labels_a), (image_b, labels_b) in zip(first, again):
        np.testing.assert_array_equal(image_a, image_b)
        np.testing.assert_array_equal(labels_a, labels_b)
    assert not np.array_equal(first[0][1], first[1][1])
    assert make_dataset(0, (96, 96)) == []


def test_touching_pairs_hand_computed():
    labels = np.array(
        [
            [1, 1, 0, 3],
            [1, 2, 0, 0],
            [0, 0, 0, 4],
            [5, 0, 0, 4],
        ]
    )
    assert touching_pairs(labels, connectivity=1) == {(1, 2)}
    assert touching_pairs(labels) == {(1, 2)}
    diagonal = np.array([[1, 0], [0, 2]])
    assert touching_pairs(diagonal, connectivity=1) == set()
    assert touching_pairs(diagonal) == {(1, 2)}
    anti_diagonal = np.array([[0, 2], [1, 0]])
    assert touching_pairs(anti_diagonal) == {(1, 2)}


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), connectivity=st.sampled_from([1, 2]))
def test_touching_pairs_matches_dilation(seed, connectivity):
    """(a, b) touch exactly when dilating a by the structuring element reaches b; relabelling permutes the pairs."""
    labels = np.random.default_rng(seed).integers(0, 5, (9, 11))
    structure = ndimage.generate_binary_structure(2, connectivity)
    expected = set()
    for a in range(1, 5):
        grown = ndimage.binary_dilation(labels == a, structure)
        expected |= {(a, int(b)) for b in np.unique(labels[grown]) if b > a}
    assert touching_pairs(labels, connectivity) == expected
    permutation = np.array([0, 4, 3, 2, 1])
    relabelled = {tuple(sorted((int(permutation[a]), int(permutation[b])))) for a, b in expected}
    assert touching_pairs(permutation[labels], connectivity) == relabelled


def test_touching_pairs_rejects_float():
    with pytest.raises(ValueError, match="integers"):
        touching_pairs(np.zeros((3, 3)))


def test_sample_cells_layer_tuples():
    (image, image_meta, image_kind), (labels, labels_meta, labels_kind) = sample_cells()
    assert (image_kind, labels_kind) == ("image", "labels")
    assert image_meta["name"] == "cells (synthetic)"
    assert labels_meta["name"] == "cells labels"
    assert image.shape == labels.shape == (512, 512)
    assert labels.max() > 0
