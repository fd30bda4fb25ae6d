"""The Augmentation preview dock's work: the training window `augment` would make, and a grid warped alike."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..augment import AugmentConfig, change_gray_values, sampling_map, warp
from ..io import apply_normalization, percentiles
from ..tiling import mirror_indices, read_window

GRID_SPACING = 16  # px between the lines of the deformation grid


def grid_lines(shape: tuple[int, int], spacing: int = GRID_SPACING) -> np.ndarray:
    """(H, W) float32: 1 on every `spacing`-th row and column, 0 elsewhere.

    >>> grid_lines((3, 4), spacing=2)
    array([[1., 1., 1., 1.],
           [1., 0., 1., 0.],
           [1., 1., 1., 1.]], dtype=float32)
    """
    lines = np.zeros(shape, np.float32)
    lines[::spacing] = 1.0
    lines[:, ::spacing] = 1.0
    return lines


def preview_sample(
    plane: Any, labels: np.ndarray | None, origin: tuple[int, int], size: int, config: AugmentConfig, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut the (C, size, size) window at `origin` of `plane` (C, H, W) and of `labels` (H, W) or None (mirrored
    at the borders as in training), normalise it with the plane's percentiles, and augment it. The labels keep
    their dtype and ids, however large."""
    window = read_window(plane, origin, (size, size))
    lo, hi = percentiles(plane, 1.0, 99.8, "CYX")
    window = apply_normalization(window, lo, hi)
    if labels is None:
        labels_window = np.zeros((size, size), np.int32)
    else:
        labels = np.asarray(labels)
        rows = mirror_indices(origin[0], size, labels.shape[0])
        columns = mirror_indices(origin[1], size, labels.shape[1])
        labels_window = labels[np.ix_(rows, columns)]
    return augmented_window(window, labels_window, config, seed)


def augmented_window(
    image: np.ndarray, labels: np.ndarray, config: AugmentConfig, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sample `augment` would make of image (C, n, n) and labels (n, n) with this seed, and the grid warped
    the same way: (image (C, n, n) float32, labels (n, n) of labels' dtype, grid (n, n) float32)."""
    rng = np.random.default_rng(seed)
    image = change_gray_values(image, rng, config)
    grid = grid_lines(labels.shape)
    coordinates = sampling_map(labels.shape, rng, config)
    if coordinates is None:
        return image, labels.copy(), grid
    return warp(image, labels, grid, coordinates)
