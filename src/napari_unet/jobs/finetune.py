"""The Fine-tune dock's work: a training run prepared from annotated planes, and timing a training step."""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..channels import ChannelChoice
from ..device import select_device
from ..fewshot import FewShotConfig, few_shot_trainer
from ..io import apply_normalization, percentiles
from ..model import UNet, UNetConfig
from ..modelfile import ModelBundle, Normalization
from ..postprocess import PostprocessConfig
from ..training import Sample, TrainConfig, Trainer, TrainEvent


@dataclass
class TrainingJob:
    """One run, prepared on the main thread from copies of the layers' data; `run_training` fills `trainer`.

    images: raw (C, H, W) planes; labels: (H, W) instance ids; masks: (H, W) bool or None (whole plane).
    few_shot: fine-tune `base` (a model with an object diameter) on the one annotated plane with the few-shot
    recipe (`napari_unet.fewshot`: the plane and its cells rescaled to the model's object size, ...); `net`,
    `config`, `normalization` and `postprocess` are then not used. masks[0] None there: the recipe's own margin
    around the painted cells.
    """

    images: list[np.ndarray]
    labels: list[np.ndarray]
    masks: list[np.ndarray | None]
    net: UNet
    config: TrainConfig
    normalization: Normalization
    postprocess: PostprocessConfig | None
    device: str
    checkpoint: Path
    few_shot: FewShotConfig | None = None
    base: ModelBundle | None = None
    trainer: Trainer | None = None
    channels: ChannelChoice | None = None  # how the planes' channels were chosen; saved with the model


def training_samples(job: TrainingJob) -> list[Sample]:
    """Normalised samples, each cropped to its annotated region plus half a tile of context.

    Cropping keeps weight maps and validation cheap on big images where a few cells are annotated; the
    windows the trainer cuts around annotated pixels stay inside the crop. Each image is normalised with the
    percentiles of the whole plane, not of the crop.
    """
    context = job.config.tile_size // 2 + 1
    samples = []
    for image, labels, mask in zip(job.images, job.labels, job.masks):
        if mask is not None:
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            box = (
                slice(max(rows[0] - context, 0), rows[-1] + 1 + context),
                slice(max(cols[0] - context, 0), cols[-1] + 1 + context),
            )
        else:
            box = (slice(None), slice(None))
        lo, hi = percentiles(image, job.normalization.low, job.normalization.high, "CYX")
        normalised = apply_normalization(image[(slice(None), *box)], lo, hi)
        samples.append(Sample(normalised, labels[box], None if mask is None else mask[box]))
    return samples


def run_training(job: TrainingJob) -> Generator[TrainEvent, None, Path]:
    """Build the trainer (weight maps and all) and yield its events; returns the autosaved model folder.

    Closing the generator (a stopped run) closes the trainer's, which saves its last completed step.
    """
    if job.few_shot is not None:
        job.trainer = few_shot_trainer(
            job.base,
            job.images[0],
            job.labels[0],
            job.masks[0],
            config=job.few_shot,
            device=job.device,
            checkpoint=job.checkpoint,
        )
    else:
        samples = training_samples(job)
        job.trainer = Trainer(
            job.net,
            job.config,
            samples,
            validation=None,
            device=job.device,
            checkpoint=job.checkpoint,
            normalization=job.normalization,
            postprocess=job.postprocess,
            channels=job.channels,
        )
    events = job.trainer.run()
    try:
        yield from events
    finally:
        events.close()  # stopped: the trainer saves its last completed step to the checkpoint
    return job.checkpoint


def measure_steps(config: UNetConfig, tile_size: int, batch_size: int, device: str) -> Generator[float, None, float]:
    """Seconds per training step of a network of `config` on `device`: forward + backward on random tiles.

    Yields each step's time (a worker can stop between steps); returns the median of the steps after the first.
    """
    torch_device = select_device(device)
    net = UNet(config).to(torch_device)
    tile = net.valid_input_size(tile_size)
    x = torch.rand(batch_size, config.in_channels, tile, tile, device=torch_device)
    if torch_device.type == "cpu":
        net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-6)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        optimizer.zero_grad()
        net(x).mean().backward()
        optimizer.step()
        if torch_device.type == "cuda":
            torch.cuda.synchronize(torch_device)
        times.append(time.perf_counter() - started)
        yield times[-1]
    return float(np.median(times[1:]))


def format_duration(seconds: float) -> str:
    """A rough duration for a status line.

    >>> format_duration(42), format_duration(600), format_duration(9000)
    ('42 s', '10 min', '2.5 h')
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


SUGGESTED_REGIONS = 3  # boxes proposed by "suggest where to annotate"
SUGGESTED_SIDE = 3.0  # their side, in object diameters (64 px for a model without one)


def suggest_annotation(
    bundle: ModelBundle, image: np.ndarray, annotated: np.ndarray | None = None, *, device: str | torch.device = "auto"
) -> list[tuple[int, int, int, int]]:
    """Boxes (y0, x0, y1, x1) of `image` (C, H, W) where annotating should help `bundle` most: those of highest
    test-time-augmentation disagreement (`uncertainty.suggest_regions`), away from the `annotated` (H, W) bool
    pixels, of `SUGGESTED_SIDE` object diameters (estimated on the image for a model with an object diameter)."""
    from ..uncertainty import suggest_regions, tta_uncertainty

    factor = bundle.scale_factor(image, "auto", device=device)
    _, uncertainty = tta_uncertainty(bundle, image, factor=factor, transforms=4, device=device)
    side = 64 if bundle.object_diameter is None else round(SUGGESTED_SIDE * bundle.object_diameter / factor)
    return suggest_regions(uncertainty, SUGGESTED_REGIONS, side, annotated)
