"""Object size: median diameters and rescaling of images and labels."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.scale import (
    cells_diameter,
    median_diameter,
    rescale_image,
    rescale_labels,
    rescale_to_diameter,
    scaled_shape,
)


def disks(shape, radius, centres):
    yy, xx = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    for i, (y, x) in enumerate(centres, 1):
        labels[(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = i
    return labels


def test_median_diameter_of_disks_is_their_diameter():
    labels = disks((200, 200), 10, [(30, 30), (30, 100), (120, 60)])
    assert median_diameter(labels) == pytest.approx(20, rel=0.05)
    assert np.isnan(median_diameter(np.zeros((5, 5), np.int32)))


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_rescaling_labels_scales_their_diameter_and_keeps_ids(factor):
    labels = disks((160, 160), 12, [(40, 40), (110, 100)])
    scaled = rescale_labels(labels, factor)
    assert scaled.shape == scaled_shape(labels.shape, factor)
    assert set(np.unique(scaled)) == {0, 1, 2}
    assert median_diameter(scaled) == pytest.approx(24 * factor, rel=0.08)


def test_rescale_image_keeps_channels_and_range():
    image = np.random.default_rng(0).random((3, 40, 50)).astype(np.float32)
    out = rescale_image(image, 1.5)
    assert out.shape == (3, 60, 75) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match="> 0"):
        rescale_image(image, 0.0)


def test_cells_diameter_ignores_unannotated_pixels_and_splits_binary_masks():
    labels = disks((200, 200), 10, [(30, 30), (30, 100), (120, 60)]).astype(np.uint16)
    labels[150:200, 150:200] = 65535  # "not annotated"
    assert cells_diameter(labels) == pytest.approx(20, rel=0.05)
    assert cells_diameter((labels == 1) | (labels == 2)) == pytest.approx(20, rel=0.05)
    mask = np.zeros(labels.shape, bool)
    mask[:60, :60] = True
    assert cells_diameter(labels, mask) == pytest.approx(20, rel=0.05)


def test_rescale_to_diameter_brings_each_sample_to_the_model_size():
    from napari_unet.training import Sample

    small = disks((120, 120), 5, [(30, 30), (80, 80)])
    large = disks((200, 200), 20, [(50, 50), (140, 140)])
    empty = np.zeros((50, 50), np.int32)
    samples = [Sample(np.zeros(s.shape, np.float32), s) for s in (small, large, empty)]
    rescaled, factors = rescale_to_diameter(samples, 20.0)
    assert factors[0] == pytest.approx(2.0, rel=0.1) and factors[1] == pytest.approx(0.5, rel=0.1)
    assert factors[2] == pytest.approx(np.median(factors[:2]))
    for sample in rescaled[:2]:
        assert median_diameter(sample.labels) == pytest.approx(20, rel=0.1)
        assert sample.image.shape == sample.labels.shape
    dots = np.zeros((256, 256), np.int32)
    dots[40, 40], dots[90, 200] = 1, 2  # seeds, not cells: x20 would make a 5000-px image
    with pytest.raises(ValueError, match=r"1 image\(s\) have cells of 1.13 to 1.13 px .* cells of 2.5 to 160 px"):
        rescale_to_diameter([Sample(np.zeros(dots.shape, np.float32), dots), *samples], 20.0)
