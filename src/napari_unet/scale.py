"""Object size: the diameter of the objects in an image, and rescaling images so objects have the size a model
was trained for (like Cellpose's diameter and StarDist's scale).

The diameter of an object is its equivalent diameter, 2 sqrt(area / pi); an image's diameter is the median over
its objects.

>>> labels = np.zeros((64, 64), np.int32); labels[10:20, 10:20] = 1; labels[30:50, 30:50] = 2
>>> round(median_diameter(labels), 1)
16.9
>>> rescale_labels(labels, 0.5).shape
(32, 32)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from skimage.transform import resize


def model_diameter(bundle: Any) -> float | None:
    """The object diameter (px) a model was trained for (None: the model does not rescale images)."""
    value = getattr(bundle, "diameter", None) or bundle.metadata.get("object_diameter")
    return None if value is None else float(value)


def median_diameter(labels: np.ndarray) -> float:
    """Median equivalent diameter (px) of the objects in `labels` (H, W) instance ids; NaN when there are none."""
    labels = np.asarray(labels)
    ids = labels[labels > 0]
    if ids.size == 0:
        return float("nan")
    areas = np.unique(ids, return_counts=True)[1]
    return float(np.median(2.0 * np.sqrt(areas / np.pi)))


def scaled_shape(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    """(H, W) times `factor`, rounded, at least 1 px each."""
    if not factor > 0:
        raise ValueError(f"the scale factor must be > 0, got {factor}")
    return tuple(max(1, round(side * factor)) for side in shape)


def rescale_image(image: np.ndarray, factor: float) -> np.ndarray:
    """image (H, W) or (C, H, W) resized by `factor` (bilinear, anti-aliased when shrinking): float32."""
    image = np.asarray(image, dtype=np.float32)
    if factor == 1.0:
        return image
    shape = (*image.shape[:-2], *scaled_shape(image.shape[-2:], factor))
    return resize(image, shape, order=1, anti_aliasing=factor < 1, preserve_range=True).astype(np.float32)


def rescale_labels(labels: np.ndarray, factor: float) -> np.ndarray:
    """labels (H, W) resized by `factor` by nearest neighbour (ids unchanged; tiny objects may vanish)."""
    labels = np.asarray(labels)
    if factor == 1.0:
        return labels
    shape = scaled_shape(labels.shape, factor)
    return resize(labels, shape, order=0, anti_aliasing=False, preserve_range=True).astype(labels.dtype)
