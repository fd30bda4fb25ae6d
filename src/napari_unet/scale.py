"""Object size: the diameter of the objects in an image, and rescaling images so objects have the size a model
was trained for (like Cellpose's diameter and StarDist's scale).

The diameter of an object is its equivalent diameter, 2 sqrt(area / pi); an image's diameter is the median over
its objects. A model with an object diameter (`ModelBundle.object_diameter`) sees an image resized by model
diameter / object diameter: `diameter_factor` for a given diameter, `estimate_diameter` to measure it on the
image; `check_rescalable` refuses planes too large to rescale in memory.

>>> labels = np.zeros((64, 64), np.int32); labels[10:20, 10:20] = 1; labels[30:50, 30:50] = 2
>>> round(median_diameter(labels), 1)
16.9
>>> rescale_labels(labels, 0.5).shape
(32, 32)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
from skimage.transform import resize

from .io import _is_lazy
from .postprocess import PostprocessConfig

Diameter = float | str | None  # an object diameter in px, "auto" (estimate it) or None (no rescaling)
ESTIMATE_SIDE = 256  # side (px, at the model's scale) of the window the object diameter is estimated on
ESTIMATE_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)  # the scales the window is segmented at to estimate a diameter
TRUSTED_SIZES = (0.6, 1.6)  # objects found at the model's scale within these many object diameters are trusted
CONFIRMED_RATIO = 1.25  # a size found again within this ratio at a neighbouring scale is confirmed
FACTOR_RANGE = (0.125, 8.0)  # rescale factors beyond these are refused (given) or clipped (estimated)
MAX_RESCALE_BYTES = 1 << 30  # a plane is rescaled in memory: larger planes (before or after) are refused


def median_diameter(labels: np.ndarray) -> float:
    """Median equivalent diameter (px) of the objects in `labels` (H, W) instance ids; NaN when there are none."""
    labels = np.asarray(labels)
    ids = labels[labels > 0]
    if ids.size == 0:
        return float("nan")
    areas = np.unique(ids, return_counts=True)[1]
    return float(np.median(2.0 * np.sqrt(areas / np.pi)))


def is_pixels(value) -> bool:
    """Whether `value` is a number of pixels > 0: a Python or numpy integer or float (bools, Python's or numpy's,
    are refused, and so are NaN and complex numbers).

    >>> is_pixels(np.float32(15)), is_pixels(True), is_pixels(float("nan"))
    (True, False, False)
    """
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and bool(value > 0)


def check_diameter(diameter: float | None) -> float | None:
    """A model's object diameter: a number of pixels > 0 (`is_pixels`: numpy numbers too), as a float, or None
    (unknown: never rescaled)."""
    if diameter is None:
        return None
    if not is_pixels(diameter):
        raise ValueError(f"object_diameter must be a number of pixels > 0 or None, got {diameter!r}")
    return float(diameter)


def is_rescalable(object_diameter: float, diameter: float) -> bool:
    """Whether objects of `diameter` px can be brought to a model's `object_diameter` (`FACTOR_RANGE`)."""
    return FACTOR_RANGE[0] <= object_diameter / diameter <= FACTOR_RANGE[1]


def diameter_factor(object_diameter: float | None, diameter: float) -> float:
    """The rescale factor object_diameter / diameter for objects of `diameter` px in an image, for a model
    trained on objects of `object_diameter` px; refused beyond `FACTOR_RANGE` and for a model without one.

    >>> diameter_factor(17.0, 34.0)
    0.5
    """
    if not is_pixels(diameter):
        raise ValueError(f"diameter must be a number of pixels > 0, 'auto' or None, got {diameter!r}")
    if object_diameter is None:
        raise ValueError(
            f"this model has no object diameter (it was not trained at a known object size), so a diameter "
            f"of {diameter} px cannot be used: rescale the image yourself or leave the diameter out"
        )
    factor = object_diameter / float(diameter)
    if not is_rescalable(object_diameter, float(diameter)):
        low, high = object_diameter / FACTOR_RANGE[1], object_diameter / FACTOR_RANGE[0]
        raise ValueError(
            f"diameter {diameter} px is out of range for this model: expected {low:g} to {high:g} px "
            f"(its objects are {object_diameter:g} px across; rescaling by at most 8x)"
        )
    return factor


def estimate_diameter(image, object_diameter: float, segment: Callable[[np.ndarray], np.ndarray]) -> float | None:
    """The median diameter (px) of the objects in `image` (H, W) or (C, H, W) for a model trained on objects of
    `object_diameter` px, or None when none is found. segment: instance labels (h, w) of a window of the image,
    (h, w) or (C, h, w) float32, rescaled to the model's scale (the model's prediction and post-processing).

    Segments the busiest window of about `ESTIMATE_SIDE`² px at the model's scale (`busiest_window`) with the
    image rescaled by each factor of `ESTIMATE_FACTORS`; each gives a candidate, the median diameter of the objects
    found, in the image's px (objects cut by the window's edge are not counted when others remain), and
    `choose_diameter` picks one. Costs 5 passes over a 256² window, whatever the image's size.
    """
    from skimage.segmentation import clear_border

    found = []
    for factor in ESTIMATE_FACTORS:
        rows, cols = busiest_window(image, int(np.ceil(ESTIMATE_SIDE / factor)))
        labels = segment(rescale_image(np.asarray(image[..., rows, cols], dtype=np.float32), factor))
        inner = clear_border(labels)
        found.append(median_diameter(inner if inner.max() > 0 else labels) / factor)
    return choose_diameter(found, ESTIMATE_FACTORS, object_diameter)


def choose_diameter(found: Sequence[float], factors: Sequence[float], object_diameter: float) -> float | None:
    """The object diameter (px) among candidates `found` (NaN: nothing found) at rescale `factors` (increasing, by
    equal ratios), or None when nothing was found.

    A candidate is trusted when its objects had about the model's size at the model's scale (`TRUSTED_SIZES`)
    and confirmed when a neighbouring scale found the same size within `CONFIRMED_RATIO`. Real objects are found
    again at their size when the image is rescaled by 2, while texture that the network cuts into pieces of its
    own object size at one scale is not: a 34-px nucleus found as 2.9-px pieces at 2x is refused because at 1x
    it was 16 px. Texture can be found at two scales too (chromatin spots of ~6 px inside 53-px nuclei, at 2x and
    4x), so among confirmed candidates the one most scales agree with wins (then the best score). The score is
    the smaller |log ratio| to the two neighbours plus |log(size at the model's scale / object_diameter)|; without
    a confirmed candidate, the trusted one with the best score; without a trusted one, the candidate whose size at
    the model's scale is closest to `object_diameter`.

    >>> factors = (0.25, 0.5, 1.0, 2.0, 4.0)
    >>> round(choose_diameter([40.6, 37.4, 16.3, 2.9, 1.9], factors, 20.0), 1)
    37.4
    >>> round(choose_diameter([52.1, 52.8, 50.9, 6.5, 5.7], factors, 20.0), 1)
    52.8
    """
    found = np.asarray(found, dtype=float)
    at_model = found * np.asarray(factors, dtype=float) / object_diameter
    finite = [i for i in range(found.size) if np.isfinite(found[i]) and found[i] > 0]
    if not finite:
        return None
    ranked = []
    for i in finite:
        neighbours = [j for j in (i - 1, i + 1) if j in finite]
        if not neighbours or not TRUSTED_SIZES[0] <= at_model[i] <= TRUSTED_SIZES[1]:
            continue
        nearest = min(abs(np.log(found[i] / found[j])) for j in neighbours)
        confirmed = nearest < np.log(CONFIRMED_RATIO)
        support = sum(abs(np.log(found[i] / found[j])) < np.log(CONFIRMED_RATIO) for j in finite)
        score = nearest + abs(np.log(at_model[i]))
        ranked.append(((confirmed, support if confirmed else 0, -score), float(found[i])))
    if ranked:
        best = max(ranked)[1]
    else:
        best = float(found[min(finite, key=lambda i: abs(np.log(at_model[i])))])
    low, high = object_diameter / FACTOR_RANGE[1], object_diameter / FACTOR_RANGE[0]
    return float(np.clip(best, low, high))


def check_rescalable(image, factor: float) -> None:
    """Raise a ValueError when rescaling the plane `image` by `factor` would hold too much in memory."""
    h, w = image.shape[-2:]
    largest = _largest_array(image, factor, 1)
    _check_in_memory(
        largest,
        f"rescaling {_kind(image)}plane of {h}x{w} px by {factor:.3g} needs {largest / 2**30:.1f} GiB in memory",
        "resample the image to the model's object size beforehand, or segment it without rescaling (diameter None)",
    )


def check_tta_size(image, factor: float, classes: int = 2) -> None:
    """Raise a ValueError when test-time augmentation of the plane `image` (`tiling.predict_tta`: the plane read
    whole and its probabilities summed over the 8 orientations, in memory, then brought back to the plane's size)
    at rescale `factor` would hold more than `MAX_RESCALE_BYTES` in one array."""
    check_whole_plane(
        image,
        factor,
        classes,
        "test-time augmentation",
        "segment it without test-time augmentation (it is then read and written tile by tile), or in parts",
    )


def check_whole_plane(image, factor: float, classes: int, what: str, advice: str) -> None:
    """Raise a ValueError, saying `what` needs the memory and giving `advice`, when work that holds the plane
    `image` (H, W) or (C, H, W) and its `classes` probabilities whole in memory at rescale `factor` would hold
    more than `MAX_RESCALE_BYTES` in one array. Looks at the shape only: a lazy plane is refused unread."""
    h, w = image.shape[-2:]
    largest = _largest_array(image, factor, classes)
    _check_in_memory(
        largest,
        f"{what} holds {_kind(image)}plane of {h}x{w} px and its probabilities in memory: "
        f"{largest / 2**30:.1f} GiB per array",
        advice,
    )


def _largest_array(image, factor: float, channels: int) -> float:
    """Bytes of the largest float32 array of a plane of `image` with at least `channels` channels, at the larger
    of its size and its size rescaled by `factor`."""
    h, w = image.shape[-2:]
    channels = max(int(np.prod(image.shape[:-2], dtype=np.int64)), channels)
    return 4 * channels * h * w * max(1.0, factor) ** 2


def _kind(image) -> str:
    return "a lazy (dask, zarr or memory-mapped) " if _is_lazy(image) else "a "


def _check_in_memory(largest: float, what: str, advice: str) -> None:
    if largest > MAX_RESCALE_BYTES:
        raise ValueError(f"{what} (the limit is {MAX_RESCALE_BYTES / 2**30:.0f} GiB): {advice}")


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
    (a lazy image is never read whole). image: (H, W) or (C, H, W). NaN or infinite values in a window's
    sample are a ValueError (its spread would be NaN, and no window the best)."""
    h, w = image.shape[-2:]
    sy, sx = min(side, h), min(side, w)
    best, best_score = None, -1.0
    for y in np.linspace(0, h - sy, candidates).round().astype(int):
        for x in np.linspace(0, w - sx, candidates).round().astype(int):
            region = (slice(int(y), int(y) + sy), slice(int(x), int(x) + sx))
            sample = np.asarray(image[(..., *region)][..., ::4, ::4], dtype=np.float32)
            if not np.isfinite(sample).all():
                raise ValueError(
                    f"the image contains NaN or infinite values (some in the {sy} x {sx} px window from y {int(y)}, "
                    f"x {int(x)}): replace them before segmenting"
                )
            score = float(sample.std())
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
    none has cells). Cells that need a factor beyond `FACTOR_RANGE` (dots, seeds, cells 10x the model's) are
    refused, as `fewshot.prepare` and inference refuse them."""
    from .training import Sample

    diameters = [cells_diameter(s.labels, s.mask) for s in samples]
    outside = [d for d in diameters if np.isfinite(d) and not is_rescalable(object_diameter, d)]
    if outside:  # as at inference and in the Fine-tune dock: a 1-px dot would blow the image up to gigabytes
        raise ValueError(
            f"{len(outside)} image(s) have cells of {min(outside):.3g} to {max(outside):.3g} px across (median), but "
            f"this model works with cells of {object_diameter / FACTOR_RANGE[1]:g} to "
            f"{object_diameter / FACTOR_RANGE[0]:g} px: annotate whole cells, or train a new model (without --init)"
        )
    found = [object_diameter / d for d in diameters]
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
