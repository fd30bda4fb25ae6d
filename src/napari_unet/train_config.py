"""What a training run is: its configuration (`TrainConfig`), the presets, the samples and the events it yields."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch

from ._config import Config, check_choice, check_flag, check_range
from .augment import AugmentConfig
from .model import UNetConfig


@dataclass(frozen=True)
class TrainConfig(Config):
    """How to train. Saved with the model and in checkpoints. The defaults are the "fast" preset.

    tile_size: side of the network's input window (rounded up to a valid size of the model).
    optimizer: "adam" or "sgd" (with `momentum`; the paper: SGD, momentum 0.99, one large tile per batch).
    schedule: "constant" or "cosine" (learning rate decays to 5% over `iterations`, or over `time_budget` when
        that ends first: a run given 20 minutes decays over its 20 minutes).
    warmup: fraction of the run (as the schedule measures it) over which the learning rate rises linearly from
        10% to its value before the schedule takes over; 0: none. Adam's first steps on a new network, and
        SGD with momentum 0.99, are the least stable part of a run.
    w0, sigma, border: weight map border term and the separation border width between touching cells (px).
        The `fast` defaults (w0 0, border 0, class weights "none": plain cross-entropy on the cells as
        annotated) leave touching cells touching, and the post-processing's watershed parts them; the paper's
        weighting (the `paper` preset: w0 10, sigma 5, a 1-px border, balanced classes) outlined DSB 2018
        nuclei worse at an equal number of steps (`benchmarks/bench_label_settings.py --dataset dsb --compare
        paper-border`, docs/results.md).
    class_weights: "balanced" (w_c evens out the classes of each image, as in the paper) or "none" (w_c = 1: the
        network's probabilities stay calibrated, which thresholding at 0.5 needs on binary masks).
    time_budget: seconds of the run: its steps, validations and checkpoints (time paused or spent by the
        consumer between events does not count); the step that ends past it is the last, whatever `iterations`
        says, then the run fits its post-processing and saves as at its end. `for_time_budget` makes the budget
        alone end the run (and set the schedule).
    calibrate_growth: at the end of a run that was not stopped, choose how far the post-processing grows
        objects (`PostprocessConfig.grow_threshold`) so that the objects found on (up to 16 of) the training
        images match the annotated cells best (`postprocess.calibrate_growth`); instance labels, and membrane
        masks whose labels flood (`PostprocessConfig.flood`): there the seed threshold, by thinned V_rand on
        the masks (`postprocess.fit_flood_seeds`).
    precision: "auto" (bf16 autocast on CUDA, fp32 elsewhere), "fp32" or "bf16" (`precision.py`).
    augmentation: "per-sample" (each window warped on the CPU with numpy/torch, `augment.augment`), "batched"
        (the whole batch warped at once on the training device, `augment_batch`; the training images are kept
        on the device and the next batch is prepared while the device computes), or "auto": batched on CUDA,
        MPS and with several processes (DDP), per-sample on one CPU process. Both draw the same random numbers.
    compile: run the network through `torch.compile` (falls back to eager with a warning if that fails).
    """

    iterations: int = 600
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.99
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup: float = 0.02
    tile_size: int = 252
    batch_size: int = 1
    w0: float = 0.0
    sigma: float = 6.0
    border: int = 0
    class_weights: str = "none"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    validate_every: int = 100
    checkpoint_every: int = 100
    seed: int = 0
    time_budget: float | None = None
    calibrate_growth: bool = True
    precision: str = "auto"
    augmentation: str = "auto"
    compile: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """As `Config.from_dict`, except that a config saved before `class_weights` existed trained with balanced
        classes (every run did then), whatever today's default.

        >>> TrainConfig.from_dict({"w0": 20.0}).class_weights
        'balanced'
        """
        if isinstance(data, Mapping) and "class_weights" not in data:
            data = {**data, "class_weights": "balanced"}
        return super().from_dict(data)

    def __post_init__(self) -> None:
        check_choice(self, "optimizer", ("adam", "sgd"))
        check_choice(self, "schedule", ("constant", "cosine"))
        check_choice(self, "class_weights", ("balanced", "none"))
        check_choice(self, "precision", ("auto", "fp32", "bf16"))
        check_choice(self, "augmentation", ("auto", "per-sample", "batched"))
        check_flag(self, "compile")
        for name in ("iterations", "tile_size", "batch_size", "validate_every", "checkpoint_every"):
            check_range(self, name, 1, integer=True)
        check_range(self, "learning_rate", 0.0, open_low=True)
        check_range(self, "momentum", 0.0, 1.0, open_high=True)
        check_range(self, "weight_decay", 0.0)
        check_range(self, "warmup", 0.0, 1.0, meaning="a fraction of the run")
        check_range(self, "w0", 0.0)
        check_range(self, "sigma", 0.0, open_low=True, meaning="pixels")
        check_range(self, "border", 0, integer=True, meaning="pixels")
        check_range(self, "seed", integer=True)
        check_range(self, "time_budget", 0.0, optional=True, meaning="seconds")
        check_flag(self, "calibrate_growth")
        if not isinstance(self.augment, AugmentConfig):
            raise TypeError(f"TrainConfig.augment must be an AugmentConfig; got {self.augment!r}")


PRESETS: dict[str, tuple[UNetConfig, TrainConfig]] = {
    # Chosen by benchmarks/bench_training.py (time to quality on a 2-core CPU; the figures are in
    # docs/benchmarks.md); plain cross-entropy: no border term, no separation border, no class balancing
    # (bench_label_settings.py --dataset dsb --compare paper-border). TrainConfig's defaults are this preset:
    # 600 steps of Adam (1e-3, cosine) on 252 px tiles, w0 0, border 0, class weights "none".
    "fast": (UNetConfig(depth=4, base_channels=16, dropout=0.0), TrainConfig()),
    # The paper: depth 5, 64 channels, valid convolutions, SGD with momentum 0.99, one large tile per batch.
    # The paper gives no learning rate; 0.001 is ten times below what failed with our pixel-averaged loss
    # (docs/results.md has the runs).
    "paper": (
        UNetConfig(),
        TrainConfig(
            iterations=20000,
            optimizer="sgd",
            learning_rate=0.001,
            momentum=0.99,
            schedule="constant",
            tile_size=572,
            w0=10.0,
            sigma=5.0,
            border=1,
            class_weights="balanced",
            validate_every=500,
            checkpoint_every=500,
        ),
    ),
}


def preset(name: str = "fast", **overrides: Any) -> tuple[UNetConfig, TrainConfig]:
    """The (network, training) configs of a preset, with TrainConfig fields overridden by keyword."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    net, train = PRESETS[name]
    return net, replace(train, **overrides)


@dataclass(frozen=True)
class Sample:
    """One annotated image.

    image: (H, W) or (C, H, W), raw intensities (a 12-bit camera's 100..4095, an 8-bit image's 0..255) or
        percentile-normalised already. The Trainer normalises each channel as the model normalises the images it
        segments (its `Normalization`'s percentiles), except a channel whose percentiles lie in [-0.5, 1.5],
        taken as normalised and kept as it is (a crop of a normalised image keeps the whole image's scale; a dim
        float image in [0, 1] is kept too: normalise it first, `io.normalize_percentile`); see
        `batches.as_normalized`; then inverts it as `Normalization.invert` says. Neither when `oriented`.
    labels: (H, W) instance ids or a binary mask.
    mask: (H, W), nonzero where the annotation is defined (None: everywhere but reserved "not annotated" values).
    oriented: the image is already normalised and inverted as the normalisation says, decided on the whole image
        it was cut from (`Normalization.bounds`; a crop's own statistics may say otherwise): used as it is.
    """

    image: np.ndarray
    labels: np.ndarray
    mask: np.ndarray | None = None
    oriented: bool = False


@dataclass(frozen=True)
class TrainEvent:
    """What the trainer reports. kind: "step", "validation", "checkpoint", "calibration" (the post-processing's
    growth, or a flood's seed threshold, is about to be fitted, `Trainer.calibrate_growth`) or "done"."""

    kind: str
    iteration: int
    total: int
    loss: float
    learning_rate: float
    elapsed: float
    val_score: float | None = None


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the trainer went back to its last good state (`Trainer._diverge`).

    kept: the iteration of that state when the checkpoint folder holds it (saved by the run, or the state a resumed
    run started from), to be resumed with a lower learning rate; None when it does not.
    """

    def __init__(self, message: str, kept: int | None = None):
        super().__init__(message)
        self.kept = kept


class CheckpointNotSaved(OSError):
    """Saving the model during or at the end of a run failed (a full disk, a folder that cannot be written): the
    run stops there, and the trainer's network holds the last completed step (`iteration`), which the caller
    may keep (save it elsewhere)."""

    def __init__(self, message: str, iteration: int):
        super().__init__(message)
        self.iteration = iteration


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
        )
    # The fused kernel on the CPU and CUDA: it is much faster per step on a CPU (docs/design.md).
    device = next(model.parameters()).device
    return torch.optim.Adam(
        model.parameters(),
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
        fused=True if device.type in ("cpu", "cuda") else None,
    )


UNTIL_BUDGET = 2**31 - 1
"""`TrainConfig.iterations` of a run that only its time budget ends (`for_time_budget`)."""


def for_time_budget(config: TrainConfig, seconds: float) -> TrainConfig:
    """`config` for a run of `seconds` of training: as many steps as fit, with the schedule (warm-up, cosine
    decay) spread over the seconds.

    >>> for_time_budget(TrainConfig(), 1200).iterations == UNTIL_BUDGET
    True
    """
    return replace(config, time_budget=float(seconds), iterations=UNTIL_BUDGET)


def learning_rate_schedule(config: TrainConfig, elapsed: Callable[[], float]) -> Callable[[int], float]:
    """The learning-rate factor of step `step`. The run's progress is the larger of step / iterations and (with a
    time budget) elapsed time (`Trainer.elapsed`: steps, validations, checkpoints) / time_budget; over the first `warmup` of it the factor rises linearly
    from 0.1 to 1, multiplying 1 ("constant") or a cosine from 1 down to 0.05 at the end of the run ("cosine").

    >>> schedule = learning_rate_schedule(TrainConfig(iterations=100, warmup=0.1), lambda: 0.0)
    >>> [round(schedule(step), 3) for step in (0, 5, 10, 55, 100)]
    [0.1, 0.547, 0.977, 0.451, 0.05]
    """
    total, budget, warmup = config.iterations, config.time_budget, config.warmup

    def factor(step: int) -> float:
        progress = min(step, total) / total
        if budget:
            progress = max(progress, min(elapsed() / budget, 1.0))
        ramp = min(1.0, 0.1 + 0.9 * progress / warmup) if warmup > 0 else 1.0
        if config.schedule == "constant":
            return ramp
        decay = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))
        return ramp * decay

    return factor


def hash_sample(sample: Sample) -> str:
    digest = hashlib.sha1()
    for array in (sample.image, sample.labels, sample.mask):
        if array is not None:
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def rng_state_to_tensors(state: dict[str, Any]) -> dict[str, Any]:
    """numpy's PCG64 state as plain values a weights-only torch.load accepts (128-bit ints as strings)."""
    return {
        "bit_generator": state["bit_generator"],
        "state": str(state["state"]["state"]),
        "inc": str(state["state"]["inc"]),
        "has_uint32": int(state["has_uint32"]),
        "uinteger": int(state["uinteger"]),
    }


def rng_state_from_tensors(saved: dict[str, Any]) -> dict[str, Any]:
    return {
        "bit_generator": saved["bit_generator"],
        "state": {"state": int(saved["state"]), "inc": int(saved["inc"])},
        "has_uint32": saved["has_uint32"],
        "uinteger": saved["uinteger"],
    }


LABEL_SETTINGS: dict[str, dict[str, Any]] = {
    # Instance labels (touching cells, one id each): the preset as it is (the fast preset: plain cross-entropy,
    # cells not separated in the target, the watershed parts them; the paper preset: its border term, borders
    # and class balancing).
    "instances": {},
    # Binary masks (ISBI's membranes: 0 = membrane, 255 = cell interior): no touching cells to part, so no border
    # term, and no class balancing, which thickens what it favours, whatever the preset (the fast preset has
    # neither anyway). On ISBI slices 15-19 after 4000 steps: foreground IoU 0.902 and pixel error 0.081 at
    # probability 0.5, against 0.780 and 0.175 with w0 50, sigma 6 and balanced classes, for V_rand (thinned)
    # 0.947 against 0.952 (bench_label_settings.py --dataset isbi, docs/results.md).
    "binary": {"class_weights": "none", "w0": 0.0},
}


def label_kind(labels: Sequence[np.ndarray]) -> str:
    """ "binary" when every label image is a binary mask (one foreground value, `targets.is_binary`) and one at
    least is one over several regions (`targets.is_binary_mask`: a single cell is instance labels as much), else
    "instances"."""
    from .targets import is_binary, is_binary_mask

    arrays = [np.asarray(item) for item in labels]
    binary = bool(arrays) and all(is_binary(item) for item in arrays)
    return "binary" if binary and any(is_binary_mask(item) for item in arrays) else "instances"


def settings_for_labels(
    config: TrainConfig, labels: Sequence[np.ndarray], given: Iterable[str] = ()
) -> tuple[TrainConfig, str]:
    """`config` with the settings the kind of annotation asks for (`LABEL_SETTINGS`), and that kind; the fields
    named in `given` (set by the user) keep their value.

    >>> masks = [np.array([[255, 0, 255], [255, 0, 255]])]
    >>> settings_for_labels(TrainConfig(), masks)[1], settings_for_labels(TrainConfig(), [masks[0] // 255 * 7])[1]
    ('binary', 'binary')
    >>> settings_for_labels(TrainConfig(), [np.array([[0, 7], [7, 7]])])[1]  # one cell: instance labels
    'instances'
    """
    kind = label_kind(labels)
    given = set(given)
    return replace(config, **{k: v for k, v in LABEL_SETTINGS[kind].items() if k not in given}), kind


TARGET_FIELDS = ("w0", "sigma", "border", "class_weights")


def target_settings(metadata: dict[str, Any]) -> dict[str, Any]:
    """What a model was trained to output (`TARGET_FIELDS` of its training config, from its metadata), for
    fine-tuning it on the same terms; {} for a model without a recorded training config.

    >>> target_settings({"training": {"w0": 20.0, "sigma": 5.0, "border": 1, "iterations": 5}})
    {'w0': 20.0, 'sigma': 5.0, 'border': 1, 'class_weights': 'balanced'}
    """
    config = recorded_training(metadata)
    return {} if config is None else {name: getattr(config, name) for name in TARGET_FIELDS}


def recorded_training(metadata: dict[str, Any]) -> TrainConfig | None:
    """The training configuration a model's metadata records, to start from the model (not to resume it, which
    needs it exact): None when there is none or it cannot be read; keys this version does not know (a model
    saved by a newer version) are left out.

    >>> recorded_training({"training": {"w0": 3.0, "a_newer_setting": 1}}).w0, recorded_training({})
    (3.0, None)
    """
    trained = metadata.get("training")
    if not isinstance(trained, dict):
        return None
    known = {item.name for item in fields(TrainConfig)}
    try:
        return TrainConfig.from_dict({key: value for key, value in trained.items() if key in known})
    except (TypeError, ValueError):
        return None


def gives_back_border(config: TrainConfig) -> bool:
    """Whether training took something from the cells' outlines that the post-processing's growth can give back:
    a border term (w0 > 0 makes a network cautious at the edges of cells) or a separation border cut into the
    targets. A network trained on the cells as annotated (the fast preset) draws its outlines itself."""
    return config.w0 > 0 or config.border > 0
