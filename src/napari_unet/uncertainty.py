"""Where to annotate next: the model's uncertainty and the regions where it is least sure of itself.

The uncertainty of a pixel is the disagreement of test-time augmentations: the standard deviation of the
foreground probability over the flips and 90-degree rotations of the image (scaled to [0, 1]: a pixel that
half of the transforms call foreground with certainty and half background scores 1). A network that is sure of
a pixel answers the same in every orientation; where it has not learnt what it sees, answers scatter.
`suggest_regions` picks the boxes of highest total uncertainty, away from what is already annotated.

>>> y, x = np.indices((100, 100))
>>> uncertainty = np.exp(-((y - 65) ** 2 + (x - 25) ** 2) / 50)  # one uncertain spot at (65, 25)
>>> suggest_regions(uncertainty, count=1, size=20)
[(55, 15, 75, 35)]
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from skimage.transform import resize

from .modelfile import ModelBundle
from .scale import check_whole_plane, rescale_image
from .tiling import dihedral_transforms, predict_tiled, transform, untransform


def tta_uncertainty(
    bundle: ModelBundle,
    image: np.ndarray,
    *,
    factor: float = 1.0,
    transforms: int = 8,
    device: str | torch.device = "auto",
    tile_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(foreground probability averaged over the transforms, uncertainty), both (H, W) float32 at the image's size.

    image: raw (H, W) or (C, H, W); factor: the image is rescaled by it before the network (the model's object
    diameter over the image's, see `napari_unet.scale`); transforms: 4 (flips) or 8 (flips and rotations).
    With p_t the foreground probability of transform t (brought back to the image's orientation), over the T
    transforms: mean = sum_t p_t / T and uncertainty = 2 sqrt(sum_t p_t^2 / T - mean^2), twice their standard
    deviation, from running sums (float64): one prediction at a time is held, not T of them.
    Refuses a plane too large to hold in memory (`check_uncertainty_size`) and one the network does not take (NaN,
    wrong channels: `ModelBundle.check_plane`), as `ModelBundle.predict` does.
    """
    if transforms not in (4, 8):
        raise ValueError(f"transforms must be 4 (flips) or 8 (flips and rotations), got {transforms}")
    check_uncertainty_size(image, factor, bundle.net.config.num_classes)
    bundle.check_plane(image)
    image = np.asarray(image)
    channels_first = image[None] if image.ndim == 2 else image
    normalised = bundle.preprocessor(channels_first, "CYX")(np.asarray(channels_first, dtype=np.float32))
    normalised = rescale_image(normalised, factor)
    chosen = [(k, flip) for k, flip in dihedral_transforms() if transforms == 8 or k in (0, 2)]
    total = np.zeros(normalised.shape[-2:])  # running sums over the transforms of p_t and of p_t^2 (float64)
    squares = np.zeros(normalised.shape[-2:])
    for k, flip in chosen:
        probs = predict_tiled(
            bundle.net, np.ascontiguousarray(transform(normalised, k, flip)), tile_size, device=device
        )
        foreground = np.array(untransform(probs[1], k, flip), dtype=np.float64)  # a copy: `probs` is freed
        del probs
        total += foreground
        squares += np.square(foreground, out=foreground)
    total /= len(chosen)  # now the mean (in place, as the variance: no more arrays of the plane's size)
    squares /= len(chosen)
    squares -= total * total  # the variance, E[p^2] - E[p]^2 (float64: no cancellation to speak of)
    mean, spread = total, 2.0 * np.sqrt(np.maximum(squares, 0.0))
    if factor != 1.0:
        shape = image.shape[-2:]
        mean = resize(mean, shape, order=1, preserve_range=True)
        spread = resize(spread, shape, order=1, preserve_range=True)
    return mean.astype(np.float32), np.clip(spread, 0.0, 1.0).astype(np.float32)


def check_uncertainty_size(image, factor: float = 1.0, classes: int = 2) -> None:
    """Raise a ValueError when the uncertainty of the plane `image` (H, W) or (C, H, W) at rescale `factor`
    (`tta_uncertainty`) would hold more than `scale.MAX_RESCALE_BYTES` in one array: like test-time augmentation
    (`scale.check_tta_size`, the same limit), it reads the plane whole and holds its probabilities in memory.
    Looks at the shape only, so a lazy plane is refused before it is read."""
    check_whole_plane(image, factor, classes, "the uncertainty", "ask for it on a crop of the image")


MIN_MEAN_UNCERTAINTY = 1e-4  # ten times the float noise of a black image (~1e-5 for `nuclei`): nothing to learn below


def suggest_regions(
    uncertainty: np.ndarray,
    count: int = 5,
    size: int = 64,
    annotated: np.ndarray | None = None,
    minimum: float = MIN_MEAN_UNCERTAINTY,
) -> list[tuple[int, int, int, int]]:
    """Up to `count` square boxes (y0, x0, y1, x1) of side `size` with the highest total uncertainty, not
    overlapping each other nor the `annotated` (H, W) bool region; best first. Boxes lie inside the image; a box
    whose mean uncertainty is below `minimum` is not suggested (an empty or constant image: none)."""
    uncertainty = np.asarray(uncertainty, dtype=np.float64)
    if uncertainty.ndim != 2:
        raise ValueError(f"uncertainty must be a 2-D (H, W) map, got shape {uncertainty.shape}")
    if count < 1 or size < 1:
        raise ValueError(f"count and size must be >= 1, got {count} and {size}")
    height, width = uncertainty.shape
    size = min(size, height, width)
    score = ndimage.uniform_filter(uncertainty, size, mode="constant")  # mean over the box centred on each pixel
    half = size // 2
    valid = np.zeros(score.shape, bool)  # centres whose box lies inside the image
    valid[half : height - (size - half) + 1, half : width - (size - half) + 1] = True
    if annotated is not None:  # centres whose box would touch the annotated region
        valid &= ndimage.maximum_filter(np.asarray(annotated, bool), size, mode="constant") == 0
    boxes: list[tuple[int, int, int, int]] = []
    score = np.where(valid, score, -np.inf)
    while len(boxes) < count and np.isfinite(score.max()) and score.max() >= max(minimum, np.finfo(float).tiny):
        cy, cx = np.unravel_index(int(np.argmax(score)), score.shape)
        y0, x0 = int(cy) - half, int(cx) - half
        boxes.append((y0, x0, y0 + size, x0 + size))
        score[
            max(y0 - size + half + 1, 0) : y0 + size + half, max(x0 - size + half + 1, 0) : x0 + size + half
        ] = -np.inf
    return boxes
