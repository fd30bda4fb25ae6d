"""Augmentation: image, target and weights stay aligned; elastic field has the configured grid and spread."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from napari_unet.augment import (
    AugmentConfig,
    augment,
    change_gray_values,
    elastic_displacement,
    sampling_map,
    warp,
)

EVERYTHING = AugmentConfig(
    rotation_p=1.0, shift_p=1.0, shift=20.0, flip_p=0.5, contrast_p=1.0, brightness_p=1.0, gamma_p=1.0
)
GEOMETRY_ONLY = dataclasses.replace(EVERYTHING, contrast_p=0.0, brightness_p=0.0, gamma_p=0.0)


def blobs(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Instance ids of random squares (size 8..20) that may touch or overlap (later ones on top)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    for index in range(1, 16):
        size = rng.integers(8, 21)
        y, x = rng.integers(0, shape[0] - size), rng.integers(0, shape[1] - size)
        labels[y : y + size, x : x + size] = index
    return labels


def checkerboard(shape: tuple[int, int], square: int) -> np.ndarray:
    y, x = np.indices(shape)
    return ((y // square + x // square) % 2).astype(np.uint8)


def interior(labels: np.ndarray, radius: int) -> np.ndarray:
    """Pixels whose (2 radius + 1)^2 neighbourhood holds one value."""
    size = 2 * radius + 1
    return ndimage.maximum_filter(labels, size) == ndimage.minimum_filter(labels, size)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["blobs", "checkerboard"]))
def test_image_target_and_weights_stay_aligned(seed: int, kind: str) -> None:
    shape = (96, 80)
    labels = blobs(shape, seed) if kind == "blobs" else checkerboard(shape, 12).astype(np.int32) * 3 + 1
    image = labels.astype(np.float64)  # intensities equal to the labels
    weights = 0.5 * labels.astype(np.float32) + 1.0
    out_image, out_target, out_weights = augment(image, labels, weights, np.random.default_rng(seed), GEOMETRY_ONLY)
    assert out_image.dtype == np.float32 and out_target.dtype == labels.dtype and out_weights.dtype == np.float32
    # target and weights come from the same source pixel
    np.testing.assert_array_equal(out_weights, 0.5 * out_target.astype(np.float32) + 1.0)
    # bicubic image == nearest target wherever the 4 x 4 source taps lie inside one region of the input
    source = sampling_map(shape, np.random.default_rng(seed), GEOMETRY_ONLY)  # the same draws as augment
    nearest = np.rint(source).astype(int)
    within = np.all((nearest >= 2) & (nearest <= np.array(shape)[:, None, None] - 3), axis=0)
    inside = np.zeros(shape, bool)
    inside[within] = interior(labels, 2)[nearest[0][within], nearest[1][within]]
    assert inside.mean() > 0.15
    np.testing.assert_allclose(out_image[inside], out_target[inside], atol=1e-4)
    np.testing.assert_array_equal(out_target[within], labels[nearest[0][within], nearest[1][within]])
    if kind == "checkerboard":  # values 1 and 4: across edges they disagree only by sub-pixel rounding
        assert np.mean((out_image > 2.5) != (out_target == 4)) < 0.03


def test_multichannel_image_uses_the_same_map() -> None:
    labels = blobs((64, 64), 1)
    image = np.stack([labels, 2 * labels, -labels]).astype(np.float32)
    config = dataclasses.replace(GEOMETRY_ONLY, flip_p=1.0)
    out_image, out_target, _ = augment(image, labels, np.ones((64, 64)), np.random.default_rng(3), config)
    single, _, _ = augment(image[0], labels, np.ones((64, 64)), np.random.default_rng(3), config)
    assert out_image.shape == (3, 64, 64)
    np.testing.assert_allclose(out_image[0], single, atol=1e-6)
    np.testing.assert_allclose(out_image[1], 2 * single, atol=1e-5)
    np.testing.assert_allclose(out_image[2], -single, atol=1e-6)


def test_identity_when_everything_is_off() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 33, 47))
    target = (rng.random((33, 47)) > 0.5).astype(np.uint8)
    weights = rng.random((33, 47))
    out = augment(image, target, weights, np.random.default_rng(1), AugmentConfig.identity())
    np.testing.assert_array_equal(out[0], image.astype(np.float32))
    np.testing.assert_array_equal(out[1], target)
    np.testing.assert_array_equal(out[2], weights.astype(np.float32))
    assert out[0] is not image and out[1] is not target
    assert sampling_map((33, 47), np.random.default_rng(1), AugmentConfig.identity()) is None


def test_reproducible_by_seed() -> None:
    labels = blobs((64, 72), 2)
    image = np.random.default_rng(0).random((64, 72))
    weights = np.ones((64, 72))
    first = augment(image, labels, weights, np.random.default_rng(42), EVERYTHING)
    again = augment(image, labels, weights, np.random.default_rng(42), EVERYTHING)
    other = augment(image, labels, weights, np.random.default_rng(43), EVERYTHING)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_warp_at_integer_coordinates_copies_pixels() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(20, 30)).astype(np.float32)
    target = rng.integers(0, 3, (20, 30)).astype(np.uint8)
    weights = rng.random((20, 30)).astype(np.float32)
    flipped = np.stack(np.meshgrid(np.arange(20)[::-1], np.arange(30), indexing="ij")).astype(np.float32)
    out_image, out_target, out_weights = warp(image, target, weights, flipped)
    np.testing.assert_allclose(out_image, image[::-1], atol=1e-5)
    np.testing.assert_array_equal(out_target, target[::-1])
    np.testing.assert_array_equal(out_weights, weights[::-1])
    # mirrored at the borders: source pixel -k reads pixel k, H - 1 + k reads H - 1 - k
    outside = np.stack(np.meshgrid(np.arange(-3, 23), np.arange(30), indexing="ij")).astype(np.float32)
    mirrored = np.concatenate([target[3:0:-1], target, target[-2:-5:-1]])
    np.testing.assert_array_equal(warp(image, target, weights, outside)[1], mirrored)


def test_flips_only() -> None:
    image = np.random.default_rng(0).random((16, 24))
    config = dataclasses.replace(AugmentConfig.identity(), flip_p=1.0)
    target = (image > 0.5).astype(np.uint8)
    out_image, out_target, _ = augment(image, target, np.ones((16, 24)), np.random.default_rng(0), config)
    np.testing.assert_allclose(out_image, image[::-1, ::-1], atol=1e-5)
    np.testing.assert_array_equal(out_target, target[::-1, ::-1])


@pytest.mark.parametrize("rotation, shift", [(0.0, 7.0), (40.0, 0.0), (180.0, 5.0)])
def test_rotation_and_shift_are_rigid(rotation: float, shift: float) -> None:
    config = dataclasses.replace(AugmentConfig.identity(), rotation=rotation, rotation_p=1.0, shift=shift, shift_p=1.0)
    coordinates = sampling_map((50, 60), np.random.default_rng(7), config).astype(np.float64)
    # an affine map with an orthonormal linear part, shift at most `shift` per axis about the centre
    jacobian = np.array([[np.diff(coordinates[a], axis=b).mean() for b in (0, 1)] for a in (0, 1)])
    np.testing.assert_allclose(jacobian @ jacobian.T, np.eye(2), atol=1e-5)
    angle = math.degrees(math.atan2(jacobian[1, 0], jacobian[0, 0]))
    assert abs(angle) <= rotation + 1e-6
    centre = coordinates[:, 0, 0] + jacobian @ np.array([24.5, 29.5])
    assert np.all(np.abs(centre - [24.5, 29.5]) <= shift + 1e-4)
    y, x = np.indices((50, 60))
    affine = np.einsum("ab,byx->ayx", jacobian, np.stack([y, x])) + coordinates[:, :1, :1]
    np.testing.assert_allclose(coordinates, affine, atol=1e-3)


def test_elastic_only_map_is_identity_plus_displacement() -> None:
    config = dataclasses.replace(AugmentConfig.identity(), elastic_p=1.0, elastic_grid=4, elastic_sigma=6.0)
    coordinates = sampling_map((40, 52), np.random.default_rng(9), config)
    rng = np.random.default_rng(9)
    rng.random()  # the draw deciding on the elastic deformation comes first (flips are off: no draws)
    displacement = elastic_displacement((40, 52), 4, 6.0, rng)
    np.testing.assert_allclose(coordinates - np.indices((40, 52)), displacement, atol=1e-4)


def test_elastic_displacement_grid_and_spread() -> None:
    grid, sigma = 3, 10.0
    nodes = []
    for seed in range(200):
        field = elastic_displacement((65, 129), grid, sigma, np.random.default_rng(seed))
        assert field.shape == (2, 65, 129)
        # exact at the grid nodes: they are the coarse N(0, sigma^2) draws themselves
        coarse = np.random.default_rng(seed).normal(0.0, sigma, (2, grid, grid))
        np.testing.assert_allclose(field[:, ::32, ::64], coarse, atol=1e-9)
        nodes.append(field[:, ::32, ::64])
        # smooth: neighbouring pixels move by at most a fraction of sigma
        assert np.abs(np.diff(field, axis=1)).max() < sigma / 2
        assert np.abs(np.diff(field, axis=2)).max() < sigma / 4
    assert abs(np.std(nodes) - sigma) < 0.1 * sigma


def test_elastic_displacement_is_cubic_spline_zoom() -> None:
    for grid, shape in ((3, (572, 572)), (5, (100, 37)), (2, (9, 9))):
        field = elastic_displacement(shape, grid, 10.0, np.random.default_rng(1))
        coarse = np.random.default_rng(1).normal(0.0, 10.0, (2, grid, grid))
        for axis in range(2):
            zoomed = ndimage.zoom(
                coarse[axis], (shape[0] / grid, shape[1] / grid), order=3, mode="mirror", grid_mode=False
            )
            np.testing.assert_allclose(field[axis], zoomed, atol=1e-10)


def test_gray_values_change_the_image_only() -> None:
    labels = blobs((48, 48), 4)
    image = labels.astype(np.float32) + 1.0
    config = dataclasses.replace(AugmentConfig.identity(), contrast_p=1.0, brightness_p=1.0, gamma_p=1.0)
    out_image, out_target, out_weights = augment(image, labels, np.ones((48, 48)), np.random.default_rng(5), config)
    np.testing.assert_array_equal(out_target, labels)
    np.testing.assert_array_equal(out_weights, 1.0)
    assert not np.allclose(out_image, image)
    # monotonic: the order of gray values is kept
    order = np.argsort(image, axis=None, kind="stable")
    assert np.all(np.diff(out_image.ravel()[order]) >= -1e-5)


def test_gray_value_formulas() -> None:
    image = np.linspace(0.0, 4.0, 50, dtype=np.float32).reshape(5, 10)
    contrast = dataclasses.replace(AugmentConfig.identity(), contrast=(2.0, 2.0), contrast_p=1.0)
    np.testing.assert_allclose(
        change_gray_values(image, np.random.default_rng(0), contrast), 2.0 + 2.0 * (image - 2.0), atol=1e-5
    )
    brightness = dataclasses.replace(AugmentConfig.identity(), brightness=(0.5, 0.5), brightness_p=1.0)
    np.testing.assert_allclose(
        change_gray_values(image, np.random.default_rng(0), brightness), image + 0.5 * image.std(), atol=1e-5
    )
    gamma = dataclasses.replace(AugmentConfig.identity(), gamma=(2.0, 2.0), gamma_p=1.0)
    np.testing.assert_allclose(
        change_gray_values(image, np.random.default_rng(0), gamma), 4.0 * (image / 4.0) ** 2, atol=1e-5
    )


def test_bad_input() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="target and weights"):
        augment(np.zeros((10, 10)), np.zeros((10, 11)), np.zeros((10, 10)), rng)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        augment(np.zeros((1, 1, 10, 10)), np.zeros((10, 10)), np.zeros((10, 10)), rng)
    with pytest.raises(TypeError, match="Generator"):
        augment(np.zeros((10, 10)), np.zeros((10, 10)), np.zeros((10, 10)), 42)
    with pytest.raises(ValueError, match="probability"):
        AugmentConfig(elastic_p=1.5)
    with pytest.raises(ValueError, match="elastic_grid"):
        AugmentConfig(elastic_grid=1)
    with pytest.raises(ValueError, match="gamma"):
        AugmentConfig(gamma=(1.2, 0.8))


@pytest.mark.parametrize("zoom", [0.5, 2.0])
def test_scale_augmentation_zooms_objects_about_the_centre(zoom):
    labels = np.zeros((129, 129), np.uint8)
    yy, xx = np.indices(labels.shape)
    labels[(yy - 64) ** 2 + (xx - 64) ** 2 <= 12**2] = 1
    config = dataclasses.replace(AugmentConfig.identity(), scale=(zoom, zoom), scale_p=1.0)
    _, target, _ = augment(labels.astype(np.float32), labels, np.ones(labels.shape), np.random.default_rng(0), config)
    components = ndimage.label(target)[0]
    centre = components == components[64, 64]  # shrinking shows mirrored copies beyond the border: ignore them
    assert centre.sum() == pytest.approx(labels.sum() * zoom**2, rel=0.08)
    assert ndimage.center_of_mass(centre) == pytest.approx((64, 64), abs=0.5)


def test_scale_augmentation_draws_factors_log_uniformly_within_its_range():
    config = dataclasses.replace(AugmentConfig.identity(), scale=(0.5, 2.0), scale_p=1.0)
    rng = np.random.default_rng(1)
    factors = []
    for _ in range(200):
        coordinates = sampling_map((33, 33), rng, config)
        factors.append(1.0 / (coordinates[1, 16, 17] - coordinates[1, 16, 16]))  # source step per output pixel
    factors = np.array(factors)
    assert factors.min() >= 0.5 - 1e-6 and factors.max() <= 2.0 + 1e-6
    assert abs(np.mean(np.log(factors))) < 0.1  # log-uniform on [1/2, 2] is centred on log 1 = 0


@pytest.mark.parametrize(
    "dtype, offset",
    [
        (np.int32, 2**24),
        (np.uint32, 2**32 - 2**10),
        (np.int64, 2**53),
        (np.uint64, 2**64 - 2**10),
        (np.int64, -(2**40)),
    ],
)
def test_warp_moves_any_integer_id_exactly(dtype: type, offset: int) -> None:
    """float32 holds integers up to 2**24 only (2**24 + 1 reads 2**24): ids past it stay themselves, each pixel
    taking its id from the same source pixel as when the ids are small."""
    small = blobs((64, 72), 4)
    large = np.where(small > 0, small.astype(object) + offset, 0).astype(dtype)
    image, weights = np.zeros((64, 72), np.float32), np.ones((64, 72), np.float32)
    coordinates = sampling_map((64, 72), np.random.default_rng(5), GEOMETRY_ONLY)
    _, expected, _ = warp(image, small, weights, coordinates)
    _, out, _ = warp(image, large, weights, coordinates)
    assert out.dtype == large.dtype
    np.testing.assert_array_equal(out, np.where(expected > 0, expected.astype(object) + offset, 0).astype(dtype))
