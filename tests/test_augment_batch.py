"""The batched augmentation equals the per-sample CPU path for the same random draws (to float rounding).

Stated tolerance: images within 1e-3 (inputs of order 1; bicubic sampling at source coordinates that differ
only by float32 rounding of the sampling map), target and weights identical on all but at most 0.1% of the
pixels (nearest-neighbour picks where a source coordinate lies within rounding of a half pixel).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_unet.augment import AugmentConfig, augment, geometry_map
from napari_unet.augment_batch import augment_batch, draw_sample, sampling_grid

EVERYTHING = AugmentConfig(
    rotation_p=1.0, shift_p=1.0, shift=20.0, flip_p=0.5, contrast_p=1.0, brightness_p=1.0, gamma_p=1.0
)
PAPER = AugmentConfig()  # the defaults: elastic always, the rest with probability 0.5
ZOOM = dataclasses.replace(EVERYTHING, scale=(0.8, 1.25), scale_p=1.0, elastic_grid=4)


def batch(n: int, shape: tuple[int, int], channels: int, seed: int):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(n, channels, *shape)).astype(np.float32)
    image = np.cumsum(np.cumsum(image, -1), -2) / 10  # smooth, as images are
    target = (rng.random((n, *shape)) > 0.5).astype(np.int64)
    weights = rng.random((n, *shape)).astype(np.float32) * (rng.random((n, *shape)) > 0.2)
    return image, target, weights


def per_sample(image, target, weights, rng, config):
    out = [augment(i if i.shape[0] > 1 else i[0], t, w, rng, config) for i, t, w in zip(image, target, weights)]
    return (
        np.stack([o[0].reshape(image.shape[1:]) for o in out]),
        np.stack([o[1] for o in out]),
        np.stack([o[2] for o in out]),
    )


def batched(image, target, weights, rng, config):
    draws = [draw_sample(rng, config) for _ in range(len(image))]
    labels = torch.from_numpy(np.stack([target.astype(np.float32), weights], axis=1))
    out_image, out_labels = augment_batch(torch.from_numpy(image), labels, draws)
    return out_image.numpy(), out_labels[:, 0].numpy().astype(np.int64), out_labels[:, 1].numpy()


@pytest.mark.parametrize(
    ("config", "channels", "shape"),
    [(EVERYTHING, 1, (64, 64)), (PAPER, 1, (92, 92)), (ZOOM, 3, (48, 60)), (AugmentConfig.identity(), 2, (33, 47))],
)
def test_the_batch_equals_the_per_sample_path(config, channels, shape):
    image, target, weights = batch(6, shape, channels, seed=1)
    rng_cpu, rng_batch = np.random.default_rng(7), np.random.default_rng(7)
    expected = per_sample(image, target, weights, rng_cpu, config)
    got = batched(image, target, weights, rng_batch, config)
    assert rng_cpu.bit_generator.state == rng_batch.bit_generator.state  # the same numbers drawn, in order
    np.testing.assert_allclose(got[0], expected[0], atol=1e-3, rtol=0)
    assert np.mean(got[1] != expected[1]) <= 1e-3
    assert np.mean(got[2] != expected[2]) <= 1e-3
    assert got[0].dtype == np.float32 and got[0].shape == image.shape


def test_the_grid_is_the_sampling_map():
    rng = np.random.default_rng(3)
    draws = [draw_sample(rng, ZOOM)[1] for _ in range(5)]
    grid = sampling_grid((40, 56), draws, torch.device("cpu")).numpy()
    for draw, g in zip(draws, grid):
        coordinates = geometry_map((40, 56), draw) if draw is not None else np.indices((40, 56))
        np.testing.assert_allclose((g[..., 1] + 1) * 39 / 2, coordinates[0], atol=2e-4)
        np.testing.assert_allclose((g[..., 0] + 1) * 55 / 2, coordinates[1], atol=2e-4)


def test_target_and_weights_come_from_one_source_pixel():
    image, target, _ = batch(4, (64, 64), 1, seed=2)
    weights = 0.5 * target.astype(np.float32) + 1.0
    _, out_target, out_weights = batched(image, target, weights, np.random.default_rng(0), EVERYTHING)
    np.testing.assert_array_equal(out_weights, 0.5 * out_target.astype(np.float32) + 1.0)


def test_draws_follow_the_per_sample_order():
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    draw_sample(rng_a, PAPER)
    augment(np.zeros((8, 8)), np.zeros((8, 8), np.int64), np.ones((8, 8)), rng_b, PAPER)
    assert rng_a.bit_generator.state == rng_b.bit_generator.state


def test_bad_shapes_are_explained():
    draws = [draw_sample(np.random.default_rng(0), PAPER)]
    with pytest.raises(ValueError, match="labels"):
        augment_batch(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), draws)
    with pytest.raises(ValueError, match="must agree"):
        augment_batch(torch.zeros(1, 1, 8, 8), torch.zeros(1, 2, 8, 8), draws * 2)
