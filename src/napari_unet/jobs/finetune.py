"""The Fine-tune dock's work: a training run prepared from annotated planes, and timing a training step.

A dock run is prepared in three steps, each from plain arrays and values the dock reads off its layers and
controls: `annotated_planes` (the planes with painted cells, and the region of each that is trusted),
`run_config` (the preset with the dock's iterations and time budget) and `training_job` (a new network or the
starting model, and the few-shot recipe for a model with an object diameter). `run_training` then drives it;
`run_progress`, `time_left` and `describe_step` say how far it is, counting its time budget when one bounds it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..augment import AugmentConfig
from ..channels import ChannelChoice
from ..device import select_device
from ..fewshot import FewShotConfig, few_shot_train_config, few_shot_trainer
from ..io import apply_normalization
from ..model import UNet, UNetConfig
from ..modelfile import ModelBundle, Normalization
from ..postprocess import PostprocessConfig
from ..targets import mask_around_cells, reserved_value
from ..training import PRESETS, Sample, TrainConfig, Trainer, TrainEvent, preset
from ..validation import check_image
from .segment import Planes

DEFAULT_MARGIN = 12  # px of background trusted around sparsely annotated cells


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


def annotated_planes(
    stack: Planes,
    labels: np.ndarray,
    *,
    region: np.ndarray | None = None,
    margin: int | None = DEFAULT_MARGIN,
    few_shot: bool = False,
    name: str = "the annotations",
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray | None]]:
    """The planes of `stack` that hold painted cells: (images (C, H, W) float32, labels (H, W), masks).

    labels: (..., H, W) instance ids over the stack's planes. A plane's mask is `region` (H, W) bool when given
    (the same for every plane); else, with `margin` px, the cells and that much background around them
    (`targets.mask_around_cells`); with margin None every cell of the plane is annotated: no mask (None).
    few_shot: for the few-shot recipe, which keeps its own margin (mask None) and takes a whole plane as a mask
    of ones. Raises ValueError naming `name` when no plane holds a cell, and when `region` is empty or not of
    the planes' size. Planes holding only the "not annotated" value (-1, or 65535 in 16-bit labels, decided for
    the whole stack: `targets.reserved_value`) have no cell and are left out.
    """
    if region is not None:
        region = np.asarray(region, dtype=bool)
        if region.shape != tuple(labels.shape[-2:]):
            raise ValueError(f"the annotated region {region.shape} must have the image's height and width")
        if not region.any():
            raise ValueError("the annotated region is empty: draw the region you vouch for, or leave it out")
    images, kept, masks = [], [], []
    reserved = reserved_value(np.asarray(labels))  # of the whole stack: a plane all "not annotated" has no cell
    for index in stack.planes:
        plane_labels = labels[index] if index else labels
        cells = plane_labels > 0
        if reserved is not None and reserved > 0:
            cells &= plane_labels != reserved
        if not cells.any():
            continue
        if region is not None:
            mask = region
        elif margin is None:
            mask = np.ones(plane_labels.shape, bool) if few_shot else None
        else:
            mask = None if few_shot else mask_around_cells(plane_labels, margin)
        images.append(np.asarray(stack.plane(index), dtype=np.float32))
        kept.append(plane_labels.copy())
        masks.append(mask)
    if not images:
        raise ValueError(f"No annotations in {name}: paint a few cells (each with its own label) first")
    return images, kept, masks


def run_config(
    preset_name: str,
    iterations: int,
    time_budget: float | None = None,
    overrides: dict[str, Any] | None = None,
    augment: AugmentConfig | None = None,
) -> tuple[UNetConfig, TrainConfig]:
    """The preset `preset_name` for a run of `iterations` steps (or `time_budget` seconds, None: no budget):
    validated about ten times (never more often than the preset validates), checkpointed as the preset does
    (at most once a run); `overrides` (TrainConfig fields) win; `augment` replaces the preset's augmentation.

    >>> run_config("fast", 50)[1].validate_every
    5
    """
    defaults = PRESETS[preset_name][1]
    every = max(1, min(defaults.validate_every, iterations // 10 or 1))
    settings = {
        "iterations": iterations,
        "validate_every": every,
        "checkpoint_every": max(every, min(defaults.checkpoint_every, iterations)),
        "time_budget": time_budget,
        **(overrides or {}),
    }
    net_config, config = preset(preset_name, **settings)
    return net_config, config if augment is None else replace(config, augment=augment)


def training_job(
    images: list[np.ndarray],
    labels: list[np.ndarray],
    masks: list[np.ndarray | None],
    config: TrainConfig,
    *,
    base: ModelBundle | None,
    net_config: UNetConfig,
    net_overrides: dict[str, Any] | None = None,
    device: str = "auto",
    checkpoint: Path,
    channels: ChannelChoice | None = None,
) -> TrainingJob:
    """A run on the annotated planes: from `base` (its network, normalisation and post-processing), or from a new
    network of `net_config` (with `net_overrides`, one input channel per channel of the images) whose initial
    weights follow `config.seed`, as its training does, without touching torch's global random state. A `base`
    with an object diameter is fine-tuned with the few-shot recipe, on one annotated plane (more: ValueError)."""
    if base is None:
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            net = UNet(net_config, in_channels=images[0].shape[0], **(net_overrides or {}))
        normalization, postprocess = Normalization(), None
    else:  # a copy: `base` (the session's model, a saved one) stays as it is whatever becomes of the run
        net, normalization, postprocess = copy.deepcopy(base.net), base.normalization, base.postprocess
    job = TrainingJob(
        images, labels, masks, net, config, normalization, postprocess, device, checkpoint, channels=channels
    )
    if base is not None and base.object_diameter is not None:
        if len(images) > 1:
            raise ValueError(
                f"{len(images)} planes are annotated: fine-tuning a model with an object size (the built-in) "
                "uses one annotated plane; keep the annotations of one plane, or start from a new network"
            )
        job.few_shot, job.base = few_shot_recipe(config), base
    return job


def few_shot_recipe(config: TrainConfig) -> FewShotConfig:
    """The few-shot recipe of a dock run of `config` (from a model with an object diameter): the run's time budget
    and iterations, the recipe's own learning rate, margin, batch and tile size."""
    return FewShotConfig(seconds=config.time_budget, iterations=config.iterations)


def step_setting(
    base: ModelBundle | None,
    preset_name: str,
    device: str,
    net_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
) -> tuple[UNetConfig, int, int, str]:
    """What the time of a training step depends on: (network config, tile size, batch size, device), the
    arguments of `measure_steps`, as the run will train: the network is `base`'s, or the preset's with
    `net_overrides`; the tiles and batch the preset's with `train_overrides`, or, from a model with an object
    diameter (`training_job`), those of the few-shot recipe (`fewshot.few_shot_train_config`)."""
    net_config, config = PRESETS[preset_name]
    if base is not None:
        net_config = base.net.config
    elif net_overrides:
        net_config = UNetConfig.from_dict({**net_config.to_dict(), **net_overrides})
    config = replace(config, **(train_overrides or {}))
    if base is not None and base.object_diameter is not None:
        config = few_shot_train_config(base, few_shot_recipe(config))
    return (net_config, config.tile_size, config.batch_size, device)


def training_samples(job: TrainingJob) -> list[Sample]:
    """Normalised samples, each cropped to its annotated region plus half a tile of context.

    Cropping keeps weight maps and validation cheap on big images where a few cells are annotated; the
    windows the trainer cuts around annotated pixels stay inside the crop. Each image is normalised with the
    percentiles of the whole plane, not of the crop, and inverted as the whole plane's polarity says (`oriented`).
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
        check_image(image, "CYX")  # NaN (counted in the image as given), constant: before normalising
        lo, hi = job.normalization.bounds(image, "CYX")  # the whole plane's polarity, as inference decides it
        normalised = apply_normalization(image[(slice(None), *box)], lo, hi)
        samples.append(Sample(normalised, labels[box], None if mask is None else mask[box], oriented=True))
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
            channels=job.channels,
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


def run_progress(event: TrainEvent, time_budget: float | None = None) -> float:
    """How far the run of `event` is, 0..1: iteration / total, or, when a `time_budget` (seconds of steps) bounds
    it too, the larger of that and elapsed / budget: whichever ends the run first.

    >>> run_progress(TrainEvent("step", 10, 1000, 0.5, 1e-3, elapsed=15.0), time_budget=20.0)
    0.75
    """
    done = event.iteration / max(event.total, 1)
    if time_budget is not None:
        done = max(done, event.elapsed / time_budget if time_budget > 0 else 1.0)
    return min(done, 1.0)


def time_left(event: TrainEvent, time_budget: float | None = None) -> float:
    """Seconds of steps the run of `event` has left: the remaining iterations at the pace so far, or the rest of
    the `time_budget` when that is sooner."""
    left = event.elapsed / max(event.iteration, 1) * max(event.total - event.iteration, 0)
    if time_budget is not None:
        left = min(left, max(time_budget - event.elapsed, 0.0))
    return left


def expected_iterations(event: TrainEvent, time_budget: float | None = None) -> int:
    """The iterations the run of `event` should reach: its total, or as many as fit in the `time_budget` at the
    pace so far when the budget ends the run first (the loss plot's axis)."""
    progress = run_progress(event, time_budget)
    if progress <= 0:
        return event.total
    return min(event.total, max(event.iteration, round(event.iteration / progress)))


def describe_step(event: TrainEvent, time_budget: float | None = None) -> str:
    """The status line of a training step: where the run is, its loss, the time spent (of the `time_budget`,
    seconds, when one bounds the run) and the time left (`time_left`)."""
    spent = format_duration(event.elapsed)
    spent += " elapsed" if time_budget is None else f" of a {format_duration(time_budget)} budget"
    return (
        f"iteration {event.iteration}/{event.total}, loss {event.loss:.4f}, "
        f"{spent}, about {format_duration(time_left(event, time_budget))} left"
    )


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
    """Boxes (y0, x0, y1, x1) of `image` (C, H, W) where `bundle` is least sure of itself: those of highest
    test-time-augmentation disagreement (`uncertainty.suggest_regions`), away from the `annotated` (H, W) bool
    pixels, of `SUGGESTED_SIDE` object diameters (estimated on the image for a model with an object diameter)."""
    from ..uncertainty import suggest_regions, tta_uncertainty

    factor = bundle.scale_factor(image, "auto", device=device)
    _, uncertainty = tta_uncertainty(bundle, image, factor=factor, transforms=4, device=device)
    side = 64 if bundle.object_diameter is None else round(SUGGESTED_SIDE * bundle.object_diameter / factor)
    return suggest_regions(uncertainty, SUGGESTED_REGIONS, side, annotated)
