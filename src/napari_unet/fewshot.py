"""Few-shot fine-tuning: adapt a trained model (the built-in generalist, say) to an image from a handful of
painted cells, in about a minute of CPU.

The recipe (parameters chosen by benchmarks/bench_few_shot.py, see docs/models.md):
1. Size: the painted cells give the objects' diameter d; a model trained at object diameter D sees the image
   rescaled by D / d (as at inference), so the annotations speak the model's scale.
2. Where the loss looks: the painted cells and a margin of background around them (`margin` model diameters).
   Pixels of the margin that the starting model calls foreground, beyond a thin ring around the painted cells,
   are most likely cells the user did not paint: they are left out of the loss instead of being taught as
   background (`exclude_unpainted`); the ring keeps teaching where the painted outlines end.
   Everything farther away has weight 0, so what the model knew elsewhere in the image is not overwritten.
3. Training: the starting model's weights, Adam at a small learning rate with a cosine decay over the time
   budget, the starting model's training settings (border weights, tile size) and mild augmentation.
4. At the end the post-processing's outline growth is calibrated on the painted cells (`Trainer`).

>>> from napari_unet.synthetic import make_cells
>>> from napari_unet.model import UNet
>>> from napari_unet.modelfile import ModelBundle
>>> image, labels = make_cells((128, 128), seed=0)
>>> trainer = few_shot_trainer(ModelBundle(UNet(depth=2, base_channels=4)), image, labels,
...                            config=FewShotConfig(seconds=None, iterations=2), device="cpu")
>>> [event.kind for event in trainer.run()][-1]
'done'
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from .augment import AugmentConfig
from .channels import ChannelChoice
from .io import apply_normalization
from .modelfile import ModelBundle
from .scale import FACTOR_RANGE, diameter_factor, median_diameter, rescale_image, rescale_labels
from .targets import annotation_mask, is_binary_mask, mask_around_cells
from .tiling import predict_tiled
from .train_config import recorded_training
from .training import PRESETS, Sample, TrainConfig, Trainer
from .validation import check_image, check_labels


@dataclass(frozen=True)
class FewShotConfig:
    """How to fine-tune on a few painted cells.

    seconds: training time budget (steps only); None: `iterations` steps.
    learning_rate: Adam's initial learning rate (cosine decay to 5 % over the budget). 1e-4 for the built-in
        model trained with plain cross-entropy: 5e-4 and 2e-4 forgot more (false objects in the brightfield
        backgrounds) on benchmarks/bench_few_shot.py's images (docs/models.md).
    margin: background trusted around the painted cells, in object diameters.
    exclude_unpainted: leave out of the loss the margin pixels the starting model calls foreground.
    freeze_encoder: train only the base, decoder and head (the contracting path keeps its weights).
    batch_size, iterations: steps of the run (iterations bounds a run without a time budget).
    tile_size: the training windows' size (None: the starting model's).
    """

    seconds: float | None = 60.0
    learning_rate: float = 1e-4
    margin: float = 0.6
    exclude_unpainted: bool = True
    freeze_encoder: bool = False
    batch_size: int = 2
    iterations: int = 100_000
    tile_size: int | None = None

    def __post_init__(self) -> None:
        if self.seconds is not None and not self.seconds > 0:
            raise ValueError(f"seconds must be > 0 or None, got {self.seconds}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not self.margin >= 0:
            raise ValueError(f"margin must be >= 0 (object diameters), got {self.margin}")
        if self.tile_size is not None and not (isinstance(self.tile_size, int) and self.tile_size > 0):
            raise ValueError(f"tile_size must be a positive number of pixels or None, got {self.tile_size!r}")


@dataclass(frozen=True)
class FewShotSample:
    """A painted image at the model's scale: the training `sample` and the `factor` it was rescaled by."""

    sample: Sample
    factor: float
    diameter: float


def prepare(
    bundle: ModelBundle,
    image: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray | None = None,
    config: FewShotConfig = FewShotConfig(),
    device: str | torch.device = "cpu",
) -> FewShotSample:
    """The training sample of a painted image: normalised, rescaled to the model's object size, cropped to the
    painted region (plus the network's context) and masked as the recipe says.

    image: raw (H, W) or (C, H, W); labels: (H, W) instance ids of the painted cells (0 elsewhere; the "not
    annotated" value, -1 or 65535 in 16-bit labels, is left out of the loss); cells all painted with one id
    (napari's brush keeps its label) are told apart as the separate regions they form;
    mask: (H, W) bool, the region the user vouches for (None: the painted cells and a margin around them).
    The image is normalised and inverted (`Normalization.bounds`) as inference sees it: by the whole image's
    percentiles and polarity, not the crop's.
    """
    image = np.asarray(image)
    labels = check_labels(labels, "the painted labels")  # any integer width; ids >= 2**31 renumbered
    if labels.shape != image.shape[-2:]:
        raise ValueError(f"labels {labels.shape} must have the image's height and width {image.shape[-2:]}")
    annotated = annotation_mask(labels)  # False at the "not annotated" value
    painted = np.where(annotated & (labels > 0), labels, 0)
    if not painted.any():
        raise ValueError("no painted cell: paint at least one cell (a positive id) in the labels")
    if is_binary_mask(painted):  # several cells painted with one id: each region is a cell (its size, its target)
        painted = ndimage.label(painted != 0)[0]
    channels_first = image[None] if image.ndim == 2 else image
    check_image(channels_first, "CYX")  # NaN (with their count), constant, before any normalisation
    diameter = median_diameter(painted)
    target_diameter = bundle.object_diameter
    if target_diameter is None:
        factor = 1.0
    else:  # as at inference: at most 8x either way (a 1-px dot would blow the image up to gigabytes)
        try:
            factor = diameter_factor(target_diameter, diameter)
        except ValueError:
            raise ValueError(
                f"the painted cells are {diameter:.3g} px across (median), but this model works with cells of "
                f"{target_diameter / FACTOR_RANGE[1]:g} to {target_diameter / FACTOR_RANGE[0]:g} px: paint whole "
                "cells, or start from a new network"
            ) from None
    lo, hi = bundle.normalization.bounds(channels_first, "CYX")  # the whole image's polarity, as at inference
    normalised = rescale_image(apply_normalization(channels_first, lo, hi), factor)
    painted = rescale_labels(painted, factor)
    if mask is not None:
        mask = rescale_labels(np.asarray(mask).astype(np.uint8), factor) > 0
    else:
        scaled_diameter = diameter * factor
        mask = mask_around_cells(painted, config.margin * scaled_diameter)
        if config.exclude_unpainted:  # the model's foreground beyond a thin ring around the painted cells
            probs = predict_tiled(bundle.net, normalised, device=device)[1]
            ring = max(2.0, 0.15 * scaled_diameter)
            mask &= ~((probs > 0.5) & (ndimage.distance_transform_edt(painted == 0) > ring))
    if not annotated.all():
        mask &= rescale_labels(annotated.astype(np.uint8), factor) > 0
    box = _bounding_box(mask, context=bundle.net.halo + 64)
    sample = Sample(normalised[(slice(None), *box)], painted[box].astype(np.int32), mask[box], oriented=True)
    return FewShotSample(sample, factor, diameter)


def few_shot_trainer(
    bundle: ModelBundle,
    image: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    config: FewShotConfig = FewShotConfig(),
    device: str | torch.device = "auto",
    checkpoint: str | Path | None = None,
    channels: ChannelChoice | None = None,
) -> Trainer:
    """A `Trainer` that fine-tunes a copy of `bundle` on the painted cells of one image (see the module
    docstring); `bundle` itself is not changed. Iterate `trainer.run()`, then `trainer.bundle()` is the model.

    channels: how `image`'s channels were chosen from the user's image, saved with the model so that it is fed
    the same channels when it segments (None: `bundle`'s own choice, for an image given as the model takes it)."""
    prepared = prepare(bundle, image, labels, mask, config, device)
    net = copy.deepcopy(bundle.net)
    if config.freeze_encoder:
        for parameter in net.encoder.parameters():
            parameter.requires_grad_(False)
    trainer = Trainer(
        net,
        few_shot_train_config(bundle, config),
        [prepared.sample],
        device=device,
        checkpoint=checkpoint,
        normalization=bundle.normalization,
        postprocess=bundle.postprocess,
        channels=bundle.channels if channels is None else channels,
        object_diameter=bundle.object_diameter,
    )
    trainer.metadata.update(
        {
            **{k: v for k, v in bundle.metadata.items() if k in ("name", "citations", "license")},
            "fine_tuned_from": bundle.metadata.get("name", "a model"),
            "annotated_diameter": round(prepared.diameter, 2),
        }
    )
    return trainer


def few_shot_train_config(bundle: ModelBundle, config: FewShotConfig = FewShotConfig()) -> TrainConfig:
    """The training settings of a few-shot run from `bundle`: the model's recorded training (else the fast
    preset's) with the recipe's optimiser, schedule, batch size, tile size (the model's when the recipe names
    none), time budget and augmentation. What a step costs (tile and batch size) is read from here too, by the
    Fine-tune dock's time estimate.

    >>> from napari_unet.model import UNet
    >>> start = ModelBundle(UNet(depth=2, base_channels=4), metadata={"training": {"tile_size": 124}})
    >>> few_shot_train_config(start).tile_size, few_shot_train_config(start).batch_size
    (124, 2)
    """
    base = recorded_training(bundle.metadata) or PRESETS["fast"][1]
    return replace(
        base,
        iterations=config.iterations,
        learning_rate=config.learning_rate,
        optimizer="adam",
        schedule="cosine",
        time_budget=config.seconds,
        batch_size=config.batch_size,
        tile_size=config.tile_size or base.tile_size,
        validate_every=10**9,
        checkpoint_every=10**9,
        augment=AugmentConfig(scale=(0.85, 1.18), scale_p=0.5),
        calibrate_growth=True,
    )


def _bounding_box(mask: np.ndarray, context: int) -> tuple[slice, slice]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return (
        slice(max(int(rows[0]) - context, 0), int(rows[-1]) + 1 + context),
        slice(max(int(cols[0]) - context, 0), int(cols[-1]) + 1 + context),
    )
