"""Targets: touching cells separated, binary masks kept, sparse annotation masks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from scipy.spatial import cKDTree

from napari_unet.targets import (
    annotation_mask,
    cells_tile_image,
    is_binary,
    make_target,
    mask_around_cells,
    separate_cells,
    unannotated_value,
)

EIGHT = np.ones((3, 3), bool)


def voronoi_cells(shape: tuple[int, int], n: int, radius: float, seed: int) -> np.ndarray:
    """Random instance ids: the Voronoi cells of n random seeds clipped by disks (many cells touch),
    with random (non-consecutive) ids."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    if n == 0:
        return labels
    seeds = rng.uniform(0, 1, (n, 2)) * shape
    pixels = np.indices(shape).reshape(2, -1).T
    distance, nearest = cKDTree(seeds).query(pixels)
    ids = rng.choice(np.arange(1, 10 * n + 1), size=n, replace=False).astype(np.int32)
    labels.ravel()[:] = np.where(distance < radius, ids[nearest], 0)
    return labels


def touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs (a, b), 0 < a < b, of ids at 8-adjacent pixels."""
    pairs = set()
    shifted = (
        (labels[1:], labels[:-1]),
        (labels[:, 1:], labels[:, :-1]),
        (labels[1:, 1:], labels[:-1, :-1]),
        (labels[1:, :-1], labels[:-1, 1:]),
    )
    for a, b in shifted:
        touch = (a != b) & (a != 0) & (b != 0)
        pairs |= {(min(p, q), max(p, q)) for p, q in zip(a[touch].tolist(), b[touch].tolist())}
    return pairs


def neighbourhood_has_other_cell(labels: np.ndarray, radius: int) -> np.ndarray:
    """True at cell pixels with a different nonzero id within Chebyshev distance `radius` (the footprint
    of the rule, written independently with array shifts)."""
    found = np.zeros(labels.shape, bool)
    h, w = labels.shape
    padded = np.pad(labels, radius)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            other = padded[radius + dy : radius + dy + h, radius + dx : radius + dx + w]
            found |= (other != 0) & (other != labels)
    return found & (labels != 0)


instances = st.builds(
    voronoi_cells,
    shape=st.tuples(st.integers(8, 48), st.integers(8, 48)),
    n=st.integers(2, 40),
    radius=st.floats(3.0, 15.0),
    seed=st.integers(0, 2**31),
)


@settings(max_examples=40, deadline=None)
@given(labels=instances, border=st.integers(1, 4))
def test_every_touching_pair_is_separated(labels: np.ndarray, border: int) -> None:
    target = make_target(labels, border)
    assert not touching_pairs(np.where(target == 1, labels, 0))
    for structure in (None, EIGHT):  # 4- and 8-connected paths
        components, _ = ndimage.label(target, structure)
        for a, b in touching_pairs(labels):
            assert not set(np.unique(components[labels == a])) & set(np.unique(components[labels == b])) - {0}


@settings(max_examples=40, deadline=None)
@given(labels=instances, border=st.integers(1, 4))
def test_only_pixels_near_another_cell_are_cut(labels: np.ndarray, border: int) -> None:
    target = make_target(labels, border)
    cut = (labels != 0) & (target == 0)
    assert not np.any(cut & ~neighbourhood_has_other_cell(labels, (border + 1) // 2))
    assert np.array_equal(target == 0, (labels == 0) | cut)


def test_each_cell_keeps_most_of_its_area() -> None:
    labels = voronoi_cells((256, 256), 60, 18.0, seed=3)
    target = make_target(labels, border=1)
    assert len(touching_pairs(labels)) > 30
    ids, area = np.unique(labels[labels != 0], return_counts=True)
    kept = ndimage.sum(target, labels, ids)
    big = area >= 100
    assert big.sum() > 30
    assert np.all(kept[big] / area[big] > 0.7)


def test_border_width_across_a_straight_boundary() -> None:
    labels = np.zeros((5, 20), np.int32)
    labels[:, :10] = 7
    labels[:, 10:] = 3
    for border in range(1, 6):
        target = make_target(labels, border)
        gap = np.flatnonzero(target[2] == 0)
        assert len(gap) == border
        assert gap[0] == 10 - border // 2  # ceil(border / 2) on the lower id's side (3, right)
        assert np.all(target == target[2])  # a straight cut


def test_one_pixel_example() -> None:
    labels = np.array(
        [
            [1, 1, 2, 2, 0],
            [1, 1, 2, 2, 0],
            [0, 0, 0, 0, 3],
        ]
    )
    expected = np.array(
        [
            [1, 0, 1, 1, 0],
            [1, 0, 1, 0, 0],  # (1, 3) touches cell 3 diagonally: cut, so no 8-connected path joins them
            [0, 0, 0, 0, 1],
        ],
        np.uint8,
    )
    assert np.array_equal(make_target(labels), expected)
    assert make_target(labels).dtype == np.uint8


@pytest.mark.parametrize("value", [1, 255, 65535])  # 65535: skimage's img_as_uint of a mask, not "not annotated"
def test_binary_masks_are_used_as_they_are(value: int) -> None:
    rng = np.random.default_rng(0)
    mask = (rng.random((32, 32)) > 0.4).astype(np.uint16 if value > 255 else np.uint8) * value
    assert is_binary(mask) and annotation_mask(mask).all()
    assert np.array_equal(make_target(mask, border=3), (mask != 0).astype(np.uint8))
    assert np.array_equal(make_target(mask.astype(bool)), (mask != 0).astype(np.uint8))
    components, n = ndimage.label(mask)
    assert separate_cells(mask).max() == n


def test_separate_cells_gives_consecutive_ids_in_order() -> None:
    labels = voronoi_cells((40, 40), 12, 9.0, seed=1)
    cells = separate_cells(labels)
    assert cells.dtype == np.int32
    survivors = np.unique(labels[cells != 0])
    assert np.array_equal(np.unique(cells[cells != 0]), np.arange(1, len(survivors) + 1))
    assert np.array_equal(cells[cells != 0], np.searchsorted(survivors, labels[cells != 0]) + 1)
    huge = np.where(labels != 0, labels.astype(np.int64) + 2**40, 0)
    assert np.array_equal(separate_cells(huge), cells)


def test_reserved_value_means_not_annotated() -> None:
    labels = np.zeros((10, 10), np.uint16)
    labels[2:5, 2:5] = 4
    labels[2:5, 5:8] = 9
    labels[7:, :] = 65535
    assert unannotated_value(labels.dtype) == 65535
    mask = annotation_mask(labels)
    assert np.array_equal(mask, labels != 65535)
    target = make_target(labels)
    assert np.all(target[7:] == 0)
    assert np.array_equal(target, make_target(np.where(labels == 65535, 0, labels)))
    signed = np.where(labels == 65535, -1, labels).astype(np.int16)
    assert np.array_equal(annotation_mask(signed), mask)
    assert np.array_equal(make_target(signed), target)
    file_mask = np.zeros((10, 10), np.uint8)
    file_mask[:, :6] = 255
    assert np.array_equal(annotation_mask(labels, file_mask), mask & (file_mask != 0))


def test_uint8_has_no_reserved_value() -> None:
    isbi = np.full((6, 6), 255, np.uint8)
    isbi[3] = 0
    assert unannotated_value(np.uint8) is None
    assert annotation_mask(isbi).all()
    assert np.array_equal(make_target(isbi), (isbi != 0).astype(np.uint8))


def test_mask_around_cells() -> None:
    labels = np.zeros((40, 40), np.int32)
    labels[10:13, 10:13] = 5
    mask = mask_around_cells(labels, margin=4)
    assert mask[labels != 0].all()
    assert mask[11, 16] and not mask[11, 17]  # 4 and 5 pixels from the cell's edge at column 12
    assert mask[14, 14] and not mask[15, 15]  # diagonally from (12, 12): 2.83 and 4.24
    assert np.array_equal(mask, ndimage.distance_transform_edt(labels == 0) <= 4)
    assert not mask_around_cells(np.zeros((5, 5), int)).any()
    reserved = np.full((5, 5), -1, np.int32)
    assert not mask_around_cells(reserved, 2).any()


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="2-D"):
        make_target(np.zeros((2, 3, 4), int))
    with pytest.raises(TypeError, match="float"):
        make_target(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="border"):
        make_target(np.zeros((3, 4), int), border=-1)
    with pytest.raises(ValueError, match="border"):
        make_target(np.zeros((3, 4), int), border=1.5)
    with pytest.raises(ValueError, match="-1"):
        make_target(np.full((3, 4), -2))
    with pytest.raises(ValueError, match="shape"):
        annotation_mask(np.zeros((3, 4), int), np.ones((4, 3)))
    with pytest.raises(ValueError, match="margin"):
        mask_around_cells(np.zeros((3, 4), int), -1)


@pytest.mark.parametrize("seed", [0, 1])
def test_synthetic_sample_touching_pairs_are_separated(seed: int) -> None:
    from napari_unet.synthetic import make_cells
    from napari_unet.synthetic import touching_pairs as synthetic_touching_pairs

    _, labels = make_cells((192, 192), seed=seed)
    pairs = synthetic_touching_pairs(labels)
    assert len(pairs) >= 5
    target = make_target(labels)
    components, _ = ndimage.label(target)  # 4-connected
    for a, b in pairs:
        assert not set(np.unique(components[labels == a])) & set(np.unique(components[labels == b])) - {0}
    assert not synthetic_touching_pairs(np.where(target == 1, labels, 0))
    ids, area = np.unique(labels[labels != 0], return_counts=True)
    kept = ndimage.sum(target, labels, ids)
    assert np.all(kept / area > 0.6)


def test_border_zero_keeps_touching_cells() -> None:
    labels = np.zeros((6, 8), np.int32)
    labels[1:5, 1:4] = 7
    labels[1:5, 4:7] = 3
    assert np.array_equal(make_target(labels, border=0), (labels != 0).astype(np.uint8))
    cells = separate_cells(labels, border=0)
    assert set(np.unique(cells)) == {0, 1, 2}
    assert np.array_equal(cells == 2, labels == 7)


def test_cells_tile_the_image_for_membrane_masks_not_for_nuclei_masks(membrane_mask) -> None:
    assert cells_tile_image(membrane_mask((128, 128), 30, seed=0))
    assert cells_tile_image(membrane_mask((128, 128), 30, seed=0) * 255)  # any foreground value
    nuclei = voronoi_cells((128, 128), 12, radius=9.0, seed=1) > 0
    assert not cells_tile_image(nuclei)
    assert not cells_tile_image(np.zeros((16, 16), np.uint8)) and not cells_tile_image(np.ones((16, 16), np.uint8))
