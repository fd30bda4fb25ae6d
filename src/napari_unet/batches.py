"""Training batches: the annotated images prepared once (target, weight map), cut into windows and augmented.

Two ways to make a batch, drawing the same random numbers in the same order (per window: which image, which
annotated pixel is its centre, then `augment_batch.draw_sample`), so both give the same batches up to float
rounding:

- per sample (`per_sample_batch`): each window cut with numpy and warped by `augment.augment` on the CPU;
- batched (`WindowSource` + `augment_batch`): the prepared images live once, flattened, on the training device;
  a batch of windows is one gather (mirrored at the image borders like `tiling.read_window`) and one warp.

>>> from napari_unet.synthetic import make_cells
>>> from napari_unet.modelfile import Normalization
>>> from napari_unet.train_config import Sample, TrainConfig
>>> image, labels = make_cells((64, 64), seed=0)
>>> prepared = prepare_sample(Sample(image, labels), "sample", 1, Normalization(), TrainConfig())
>>> source = WindowSource([prepared], torch.device("cpu"))
>>> plan = draw_batch(np.random.default_rng(0), [prepared], 3, 44, TrainConfig().augment)
>>> [tuple(t.shape) for t in source.cut(plan.which, plan.origins, 44)]
[(3, 1, 44, 44), (3, 2, 44, 44)]
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import ddp, precision
from .augment import AugmentConfig, augment
from .augment_batch import SampleDraw, augment_batch, draw_sample, to_device
from .io import apply_normalization, percentiles
from .modelfile import Normalization
from .targets import annotation_mask, is_binary_mask, make_target
from .tiling import read_window
from .train_config import Sample, TrainConfig
from .validation import check_image_dtype, check_labels, check_mask
from .weights import weight_map

DEVICE_DATA_FRACTION = 0.25  # batched augmentation keeps the training images on a GPU if they take at most this
NORMALIZED_RANGE = (-0.5, 1.5)  # a channel whose percentiles lie in here is taken as normalised (`as_normalized`)
DIM_SPREAD = 0.2  # a channel taken as normalised whose percentiles lie closer is warned about (`as_normalized`)


@dataclass
class Prepared:
    """One training image ready to be cut: computed once, before the first step."""

    image: np.ndarray  # (C, H, W) float32
    target: np.ndarray  # (H, W) uint8
    weights: np.ndarray  # (H, W) float32, 0 = ignored
    annotated: np.ndarray  # flat indices of pixels with weight > 0
    cells: np.ndarray | None  # (H, W) int32 ids of the annotated cells, 0 elsewhere; None for a binary mask


def prepare_sample(
    sample: Sample, name: str, channels: int, normalization: Normalization, config: TrainConfig
) -> Prepared:
    """Check `sample` (named `name` in errors) for a model of `channels` input channels; compute its target,
    weight map and annotated pixels. Unless the sample is `oriented`, the image is normalised as the model
    normalises the images it segments (`as_normalized`), then inverted as `normalization` says."""
    if not isinstance(sample, Sample):
        raise TypeError(
            f"{name}: expected a napari_unet.Sample(image, labels), got {type(sample).__name__} "
            "(wrap each (image, labels) pair in Sample)"
        )
    raw = np.asarray(sample.image)
    check_image_dtype(raw.dtype, f"{name}: the image")
    raw = raw[None] if raw.ndim == 2 else raw
    image = np.asarray(raw, dtype=np.float32)
    labels = check_labels(sample.labels, f"{name}: labels")  # any integer width; ids >= 2**31 renumbered
    mask = None if sample.mask is None else check_mask(sample.mask, labels.shape, f"{name}: mask")
    if image.ndim != 3 or image.shape[0] != channels:
        raise ValueError(
            f"{name}: expected an image (H, W) or (C, H, W) with C = {channels} for this model, "
            f"got shape {np.shape(sample.image)}"
        )
    if labels.shape != image.shape[1:]:
        raise ValueError(f"{name}: labels {labels.shape} must have the image's shape {image.shape[1:]}")
    if not np.isfinite(image).all():
        bad = int(image.size - np.count_nonzero(np.isfinite(image)))
        raise ValueError(f"{name}: the image contains {bad} NaN or infinite values")
    if not sample.oriented:  # normalise and invert here (on the whole image it holds)
        image = normalization.apply_polarity(as_normalized(raw, normalization, name))
    class_weights = "balanced" if config.class_weights == "balanced" else None
    weights = weight_map(labels, config.w0, config.sigma, class_weights, mask=mask, border=config.border)
    target = make_target(labels, config.border)
    annotated = annotation_mask(labels, mask)
    target[~annotated] = 0
    cells = None if is_binary_mask(labels) else np.where(annotated & (labels > 0), labels, 0).astype(np.int32)
    return Prepared(image, target, weights, np.flatnonzero(weights > 0), cells)


def as_normalized(image: np.ndarray, normalization: Normalization, name: str = "the image") -> np.ndarray:
    """A (C, H, W) image normalised as the model normalises the images it segments, float32: each channel with
    the percentiles of `normalization` (`io.percentiles`, `io.apply_normalization`, not inverted), except the
    channels whose percentiles lie in `NORMALIZED_RANGE` already, which are kept as they are.

    Raw intensities (a 12-bit camera's 100..4095, an 8-bit image's 0..255) lie beyond that range. Normalising is
    affine, so a whole normalised image normalised again comes back up to float rounding; what it would change is
    kept: a crop of a normalised image, or a rescaled one (`scale.rescale_to_diameter`: interpolation narrows the
    percentiles), which its own percentiles would stretch away from the whole image's scale that the model sees,
    and a channel whose percentiles are both 0 (nearly all of it 0), which
    `io.normalization_range` would divide by 1e-6 at every pass. Two guesses this rule cannot settle are said
    with a UserWarning naming `name`: a float channel beyond the range normalised by its own percentiles (a crop
    of a normalised image with a bright spot is stretched), and a channel kept whose percentiles lie less than
    `DIM_SPREAD` apart (an image divided by its dtype's maximum, `img_as_float`, is trained on a scale the model
    never sees: it normalises the images it segments).

    >>> image = np.array([[[100, 100, 4095, 4095]], [[0.0, 0.0, 1.0, 1.0]]])  # (C, H, W): raw, normalised
    >>> as_normalized(image, Normalization(low=0.0, high=100.0)).round(3).tolist()
    [[[0.0, 0.0, 1.0, 1.0]], [[0.0, 0.0, 1.0, 1.0]]]
    """
    image = np.asarray(image)
    lo, hi = percentiles(image, normalization.low, normalization.high, "CYX")
    raw = ((lo < NORMALIZED_RANGE[0]) | (hi > NORMALIZED_RANGE[1])).ravel()
    if image.dtype.kind == "f" and raw.any():
        warnings.warn(
            f"{name}: channel(s) {np.flatnonzero(raw).tolist()} lie beyond the normalised range (percentiles "
            f"{np.round(lo.ravel()[raw], 3).tolist()}..{np.round(hi.ravel()[raw], 3).tolist()}): normalised by their "
            "own percentiles, as the model normalises the images it segments; a crop of a normalised image should "
            "be given with oriented=True after normalising the whole image (io.normalize_percentile)",
            stacklevel=3,
        )
    dim = ~raw & ((hi - lo).ravel() < DIM_SPREAD) & ((hi - lo).ravel() > 0)
    if dim.any():
        warnings.warn(
            f"{name}: channel(s) {np.flatnonzero(dim).tolist()} span only "
            f"{np.round((hi - lo).ravel()[dim], 3).tolist()} between the percentiles and are used as they are: the "
            "model normalises the images it segments (io.normalize_percentile), so normalise this image too "
            "(an image divided by its dtype's maximum is not normalised)",
            stacklevel=3,
        )
    if raw.all():
        return apply_normalization(image, lo, hi)
    out = np.array(image, dtype=np.float32)  # a copy: the sample's own array is never written
    if raw.any():
        out[raw] = apply_normalization(image[raw], lo[raw], hi[raw])
    return out


@dataclass(frozen=True)
class BatchPlan:
    """The random part of a batch. which: (N,) image indices; origins: (N, 2) top-left of each window (may be
    negative: mirrored); draws: the augmentation of each window."""

    which: np.ndarray
    origins: np.ndarray
    draws: list[SampleDraw]

    def part(self, start: int, stop: int) -> BatchPlan:
        """Windows start..stop of the batch (one process's share of a batch split over several)."""
        return BatchPlan(self.which[start:stop], self.origins[start:stop], self.draws[start:stop])


def annotated_samples(samples: Sequence[Prepared]) -> list[int]:
    """The indices of the samples with at least one annotated pixel: windows are centred on one, so an image
    whose mask or labels annotate nothing is never drawn (all of them when every image has some: the same draws).
    """
    drawable = [i for i, sample in enumerate(samples) if sample.annotated.size]
    if not drawable:
        raise ValueError("the annotations are empty: no pixel has a nonzero loss weight (label some cells)")
    return drawable


def draw_batch(
    rng: np.random.Generator,
    samples: Sequence[Prepared],
    count: int,
    size: int,
    config: AugmentConfig,
    drawable: Sequence[int] | None = None,
) -> BatchPlan:
    """Draw `count` windows of side `size`: each centred on an annotated pixel of a random image.
    drawable: `annotated_samples(samples)`, computed once by the caller that draws many batches."""
    drawable = annotated_samples(samples) if drawable is None else drawable
    which, origins, draws = [], [], []
    for _ in range(count):
        index, origin = _draw_window(rng, samples, drawable, size)
        which.append(index)
        origins.append(origin)
        draws.append(draw_sample(rng, config))
    return BatchPlan(np.array(which, np.int64), np.array(origins, np.int64).reshape(-1, 2), draws)


def per_sample_batch(
    rng: np.random.Generator,
    samples: Sequence[Prepared],
    count: int,
    size: int,
    config: AugmentConfig,
    drawable: Sequence[int] | None = None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`count` augmented windows (image (C, n, n), target (n, n) int64, weights (n, n)), each warped on the CPU."""
    drawable = annotated_samples(samples) if drawable is None else drawable
    batch = []
    for _ in range(count):
        index, origin = _draw_window(rng, samples, drawable, size)
        sample = samples[index]
        image = read_window(sample.image, origin, (size, size))
        target = read_window(sample.target[None], origin, (size, size))[0].astype(np.int64)
        weights = read_window(sample.weights[None], origin, (size, size))[0]
        batch.append(augment(image, target, weights, rng, config))
    return batch


def _draw_window(
    rng: np.random.Generator, samples: Sequence[Prepared], drawable: Sequence[int], size: int
) -> tuple[int, tuple[int, int]]:
    """(sample index, window origin) of a window of side `size` centred on a random annotated pixel of a random
    drawable sample: the random numbers both ways of making a batch draw, in the same order."""
    index = drawable[int(rng.integers(len(drawable)))]
    sample = samples[index]
    flat = sample.annotated[rng.integers(sample.annotated.size)]
    cy, cx = np.unravel_index(flat, sample.target.shape)
    return index, (int(cy) - size // 2, int(cx) - size // 2)


class WindowSource:
    """The prepared images, target and weights flattened into two tensors on `device`, cut by one gather.

    image: every image's (C, H, W) values one after the other; labels: every image's target and weights as a
    (2, H, W) float block. Windows outside an image read it mirrored ('reflect'), as `tiling.read_window`.
    """

    def __init__(self, samples: Sequence[Prepared], device: torch.device):
        self.device = device
        self.channels = samples[0].image.shape[0]
        shapes = np.array([s.target.shape for s in samples], np.int64)
        sizes = shapes.prod(1)
        self._shapes = torch.as_tensor(shapes, device=device)
        self._image_start = torch.as_tensor(np.concatenate([[0], np.cumsum(sizes * self.channels)[:-1]]), device=device)
        self._labels_start = torch.as_tensor(np.concatenate([[0], np.cumsum(sizes * 2)[:-1]]), device=device)
        self._image = torch.cat([torch.from_numpy(np.ascontiguousarray(s.image, np.float32)).ravel() for s in samples])
        labels = [np.stack([s.target.astype(np.float32), s.weights.astype(np.float32)]).ravel() for s in samples]
        self._labels = torch.from_numpy(np.concatenate(labels))
        self._image, self._labels = self._image.to(device), self._labels.to(device)

    @staticmethod
    def nbytes(samples: Sequence[Prepared]) -> int:
        """Bytes a WindowSource of `samples` takes on its device."""
        return sum(4 * s.target.size * (s.image.shape[0] + 2) for s in samples)

    def cut(self, which: np.ndarray, origins: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows of side `size` at `origins` (N, 2) of images `which` (N,): image (N, C, n, n), labels (N, 2, n, n)."""
        device = self.device
        which_and_origins = to_device(np.column_stack([which, origins]).astype(np.int64), device)
        which_t, origins_t = which_and_origins[:, 0], which_and_origins[:, 1:]
        shapes = self._shapes[which_t]  # (N, 2)
        steps = torch.arange(size, device=device)
        rows = _mirror(origins_t[:, 0, None] + steps, shapes[:, 0, None])  # (N, n)
        cols = _mirror(origins_t[:, 1, None] + steps, shapes[:, 1, None])
        plane = rows[:, :, None] * shapes[:, 1, None, None] + cols[:, None, :]  # (N, n, n) index in one plane
        area = (shapes[:, 0] * shapes[:, 1])[:, None, None, None]
        channel = torch.arange(self.channels, device=device)[None, :, None, None]
        image_index = self._image_start[which_t, None, None, None] + channel * area + plane[:, None]
        label_channel = torch.arange(2, device=device)[None, :, None, None]
        labels_index = self._labels_start[which_t, None, None, None] + label_channel * area + plane[:, None]
        return self._image[image_index], self._labels[labels_index]


def _mirror(index: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """`tiling.mirror_indices` for tensors: index into [0, size), reflected at the ends (size 1: always 0)."""
    period = torch.clamp(2 * (size - 1), min=1)
    index = torch.remainder(index, period)
    index = torch.where(index >= size, period - index, index)
    return torch.where(size == 1, torch.zeros_like(index), index)


def batched_windows(
    source: WindowSource,
    plan: BatchPlan,
    size: int,
    crop: int,
    out: int,
    memory_format: torch.memory_format,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The network's input x (N, C, n, n), target (N, out, out) int64 and weights (N, out, out) of `plan`, cut
    where the source keeps the images and augmented on `device` (default: there too; asynchronously on a GPU)."""
    image, labels = source.cut(plan.which, plan.origins, size)
    if device is not None and device != source.device:
        pin = device.type == "cuda"
        image = (image.pin_memory() if pin else image).to(device, non_blocking=True)
        labels = (labels.pin_memory() if pin else labels).to(device, non_blocking=True)
    image, labels = augment_batch(image, labels, plan.draws)
    labels = labels[:, :, crop : crop + out, crop : crop + out]
    return image.contiguous(memory_format=memory_format), labels[:, 0].long(), labels[:, 1].contiguous()


class TrainingBatches:
    """The trainer's batches: per sample on the CPU, or batched on `device` (`batched`).

    With torch.distributed initialised, every process draws the whole batch (batch_size x processes windows,
    the same random numbers everywhere) and makes its own share of it.
    """

    def __init__(
        self, samples: Sequence[Prepared], config: TrainConfig, size: int, out: int, device: torch.device, batched: bool
    ):
        self.samples, self.config, self.size, self.out, self.device = samples, config, size, out, device
        self.drawable = annotated_samples(samples)  # the images windows are drawn from, once
        self.rank, self.world_size = ddp.rank_and_world_size()
        self.source = WindowSource(samples, self._data_device()) if batched else None

    def _data_device(self) -> torch.device:
        """Where the batched path keeps the training images: the GPU if they take at most a quarter of its free
        memory, else the CPU (each batch's windows are then copied over)."""
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if WindowSource.nbytes(self.samples) > DEVICE_DATA_FRACTION * free:
                return torch.device("cpu")
        return self.device

    def next(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The next batch on the device: x (N, C, n, n), target (N, out, out) int64 and weights (N, out, out)."""
        c, n, out = self.config, self.size, self.out
        crop = (n - out) // 2
        layout = precision.memory_format(self.device)
        if self.source is None:
            batch = per_sample_batch(rng, self.samples, c.batch_size, n, c.augment, self.drawable)
            x = torch.from_numpy(np.stack([b[0] for b in batch]).astype(np.float32))
            target = torch.from_numpy(np.stack([b[1][crop : crop + out, crop : crop + out] for b in batch]))
            weights = torch.from_numpy(np.stack([b[2][crop : crop + out, crop : crop + out] for b in batch]))
            x = x.to(self.device).contiguous(memory_format=layout)
            return x, target.long().to(self.device), weights.float().to(self.device)
        plan = draw_batch(rng, self.samples, c.batch_size * self.world_size, n, c.augment, self.drawable)
        plan = plan.part(self.rank * c.batch_size, (self.rank + 1) * c.batch_size)
        return batched_windows(self.source, plan, n, crop, out, layout, self.device)
