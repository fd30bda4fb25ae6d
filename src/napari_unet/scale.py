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

from dataclasses import replace

import numpy as np
from skimage.transform import resize

from .postprocess import PostprocessConfig


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


def resize_probs(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """probs (classes, h, w) resized to (classes, *shape) (bilinear, anti-aliased when shrinking): float32."""
    probs = np.asarray(probs, dtype=np.float32)
    if tuple(probs.shape[-2:]) == tuple(shape):
        return probs
    shrinking = shape[0] < probs.shape[-2]
    out = resize(probs, (*probs.shape[:-2], *shape), order=1, anti_aliasing=shrinking, preserve_range=True)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def scale_postprocess(config: PostprocessConfig, factor: float) -> PostprocessConfig:
    """`config` for objects `factor` times as large: lengths times `factor`, `min_size` (an area) times factor².

    Used to post-process at the image's size probabilities that the network made at the model's scale: with
    rescale factor f = model diameter / object diameter, `scale_postprocess(config, 1 / f)`.
    >>> scale_postprocess(PostprocessConfig(min_size=16, border_width=1), 2.0).min_size
    64
    """
    if not factor > 0:
        raise ValueError(f"the scale factor must be > 0, got {factor}")
    if factor == 1.0:
        return config
    border = max(1, round(config.border_width * factor)) if config.border_width > 0 else 0
    return replace(
        config,
        min_size=round(config.min_size * factor**2),
        watershed_h=config.watershed_h * factor,
        grow_distance=config.grow_distance * factor,
        border_width=border,
    )


def busiest_window(image, side: int, candidates: int = 3) -> tuple[slice, slice]:
    """The (rows, cols) of the `side` x `side` window (clipped to the image) with the largest intensity spread
    among `candidates` x `candidates` evenly placed ones: where objects are likely, read window by window
    (a lazy image is never read whole). image: (H, W) or (C, H, W)."""
    h, w = image.shape[-2:]
    sy, sx = min(side, h), min(side, w)
    best, best_score = None, -1.0
    for y in np.linspace(0, h - sy, candidates).round().astype(int):
        for x in np.linspace(0, w - sx, candidates).round().astype(int):
            region = (slice(int(y), int(y) + sy), slice(int(x), int(x) + sx))
            score = float(np.asarray(image[(..., *region)][..., ::4, ::4], dtype=np.float32).std())
            if score > best_score:
                best, best_score = region, score
    return best


def cells_diameter(labels: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Median diameter (px) of the annotated cells of training labels (H, W): the reserved "not annotated" value
    (`targets.unannotated_value`) and pixels outside `mask` are not cells; a binary mask is split into its
    connected components. NaN without cells."""
    from scipy import ndimage

    from .targets import annotation_mask, is_binary

    labels = np.asarray(labels)
    cells = np.where(annotation_mask(labels, mask), labels, 0)
    if is_binary(cells):
        cells = ndimage.label(cells != 0)[0]
    return median_diameter(cells)


def rescale_to_diameter(samples, object_diameter: float) -> tuple[list, list[float]]:
    """Training samples (`training.Sample`) resized so their annotated cells have the median diameter
    `object_diameter` px (what a model with that object diameter was trained on): (samples, their factors).
    Each sample is scaled by its own cells; one without cells takes the median factor of the others (1.0 when
    none has cells)."""
    from .training import Sample

    found = [object_diameter / d for d in (cells_diameter(s.labels, s.mask) for s in samples)]
    known = [f for f in found if np.isfinite(f)]
    fallback = float(np.median(known)) if known else 1.0
    factors = [f if np.isfinite(f) else fallback for f in found]
    rescaled = [
        Sample(
            rescale_image(s.image, f),
            rescale_labels(s.labels, f),
            None if s.mask is None else rescale_labels(np.asarray(s.mask), f),
        )
        for s, f in zip(samples, factors)
    ]
    return rescaled, factors
