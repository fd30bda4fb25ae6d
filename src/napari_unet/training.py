"""Training: a generator of progress events, consumed alike by the napari dock, the CLI and the tests.

Each step draws one annotated pixel at random, cuts the network's input window around it (mirrored at the
image border), warps image, target and weights together (elastic deformation, rotation, shift, flips;
gray-value changes on the image), and minimises the weighted cross-entropy on the window's output region.

Stopping is not asking for the next event: closing the generator (or leaving a ``for`` loop) saves the last
completed step to the checkpoint folder. A resumed run continues exactly where the interrupted one stopped
(model, optimiser, schedule, random state and iteration are restored).

>>> from napari_unet.synthetic import make_cells
>>> image, labels = make_cells((96, 96), seed=0)
>>> net_config, config = preset("fast", iterations=2, tile_size=92)
>>> trainer = Trainer(UNet(net_config, depth=3), config, [Sample(image, labels)], device="cpu")
>>> [event.kind for event in trainer.run()]
['step', 'step', 'calibration', 'validation', 'done']
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._config import Config, check_choice, check_flag, check_range
from .augment import AugmentConfig, augment
from .channels import ChannelChoice
from .device import select_device
from .losses import weighted_cross_entropy
from .metrics import pixel_scores
from .model import UNet, UNetConfig
from .modelfile import STATE_FILE, ModelBundle, Normalization, load_model, save_model
from .postprocess import PostprocessConfig, calibrate_growth
from .targets import annotation_mask, is_binary, make_target
from .tiling import predict_tiled, read_window
from .validation import check_image_dtype, check_labels, check_mask
from .weights import weight_map


@dataclass(frozen=True)
class TrainConfig(Config):
    """How to train. Saved with the model and in checkpoints. The defaults are the "fast" preset.

    tile_size: side of the network's input window (rounded up to a valid size of the model).
    optimizer: "adam" or "sgd" (with `momentum`; the paper: SGD, momentum 0.99, one large tile per batch).
    schedule: "constant" or "cosine" (learning rate decays to 5% over `iterations`, or over `time_budget` when
        that ends first: a run given 20 minutes decays over its 20 minutes).
    w0, sigma, border: weight map border term and the separation border width between touching cells (px).
    time_budget: seconds of training steps (time paused or spent by the consumer between events does not
        count); training stops (and saves) when exceeded, whatever `iterations` says.
    calibrate_growth: at the end of a run that was not stopped, choose how far the post-processing grows
        objects (`PostprocessConfig.grow_threshold`) so that the objects found on (up to 8 of) the training
        images match the annotated cells best (`postprocess.calibrate_growth`); instance labels only.
    """

    iterations: int = 600
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.99
    weight_decay: float = 0.0
    schedule: str = "cosine"
    tile_size: int = 252
    batch_size: int = 1
    w0: float = 50.0
    sigma: float = 6.0
    border: int = 1
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    validate_every: int = 100
    checkpoint_every: int = 100
    seed: int = 0
    time_budget: float | None = None
    calibrate_growth: bool = True

    def __post_init__(self) -> None:
        check_choice(self, "optimizer", ("adam", "sgd"))
        check_choice(self, "schedule", ("constant", "cosine"))
        for name in ("iterations", "tile_size", "batch_size", "validate_every", "checkpoint_every"):
            check_range(self, name, 1, integer=True)
        check_range(self, "learning_rate", 0.0, open_low=True)
        check_range(self, "momentum", 0.0, 1.0, open_high=True)
        check_range(self, "weight_decay", 0.0)
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
    # docs/benchmarks.md), with the border emphasis of Falk et al. 2019 (w0 = 50, sigma = 6 px).
    # TrainConfig's defaults are this preset: 600 steps of Adam (1e-3, cosine) on 252 px tiles, w0 50, sigma 6.
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
    """One annotated image. image: (H, W) or (C, H, W), percentile-normalised (the Trainer inverts it as its
    `Normalization.invert` says); labels: (H, W) instance ids or a binary mask;
    mask: (H, W), nonzero where the annotation is defined (None: everywhere but reserved "not annotated" values)."""

    image: np.ndarray
    labels: np.ndarray
    mask: np.ndarray | None = None


@dataclass(frozen=True)
class TrainEvent:
    """What the trainer reports. kind: "step", "validation", "checkpoint", "calibration" (the growth of the
    post-processing is about to be calibrated, `Trainer.calibrate_growth`) or "done"."""

    kind: str
    iteration: int
    total: int
    loss: float
    learning_rate: float
    elapsed: float
    val_score: float | None = None


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the last good state was kept."""


@dataclass
class _Prepared:
    image: np.ndarray  # (C, H, W) float32
    target: np.ndarray  # (H, W) uint8
    weights: np.ndarray  # (H, W) float32, 0 = ignored
    annotated: np.ndarray  # flat indices of pixels with weight > 0
    cells: np.ndarray | None  # (H, W) int32 ids of the annotated cells, 0 elsewhere; None for a binary mask


class Trainer:
    """Trains `model` on `train` samples; `run()` is the generator that does the work.

    validation: the samples `validate` scores; None: the training samples themselves (what the Fine-tune dock
        does with its few annotated cells); empty: no validation.
    checkpoint: a model folder written at every `checkpoint_every` steps, at the end and at a stop; it also holds
    the state needed to resume (`Trainer.resume`).
    object_diameter: the object size (px) the samples were rescaled to, saved with the model (None: unknown).
    """

    def __init__(
        self,
        model: UNet,
        config: TrainConfig,
        train: Sequence[Sample],
        validation: Sequence[Sample] | None = (),
        device: str | torch.device = "auto",
        checkpoint: str | Path | None = None,
        normalization: Normalization | None = None,
        postprocess: PostprocessConfig | None = None,
        channels: ChannelChoice | None = None,
        object_diameter: float | None = None,
    ):
        if not train:
            raise ValueError("no training samples: annotate at least one image (a Labels layer with cells)")
        self.model = model
        self.config = config
        self.device = select_device(device)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.normalization = normalization or Normalization()
        self.postprocess = postprocess or PostprocessConfig(border_width=config.border)
        self.channels = channels or ChannelChoice()  # how the samples' channels were chosen; saved with the model
        self.object_diameter = object_diameter
        self.tile = model.valid_input_size(config.tile_size)
        self.train = [self._prepare(s, f"training sample {i}") for i, s in enumerate(train)]
        if validation is None:  # validate on the training samples, prepared once
            self.validation = self.train
        else:
            self.validation = [self._prepare(s, f"validation sample {i}") for i, s in enumerate(validation)]
        if not any(p.annotated.size for p in self.train):
            raise ValueError("the annotations are empty: no pixel has a nonzero loss weight (label some cells)")
        self.data_hashes = [_hash_sample(s) for s in train]
        self.iteration = 0
        self.elapsed = 0.0
        self.rng = np.random.default_rng(config.seed)
        # torch's random numbers (dropout) come from the trainer's own stream, swapped in for each step
        # (`_own_random_state`): training neither reseeds nor advances the process's generators
        self._torch_rng = {"cpu": torch.Generator().manual_seed(config.seed).get_state()}
        self.model.to(self.device)
        if self.device.type == "cpu":
            self.model.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            self._torch_rng["cuda"] = torch.Generator(self.device).manual_seed(config.seed).get_state()
        self.optimizer = _make_optimizer(model, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _schedule(config, lambda: self.elapsed))
        self.growth_calibration: dict[str, Any] | None = None
        self.metadata: dict[str, Any] = {}  # saved with the model besides the training record
        self._last_good = self._snapshot()

    # -- public ----------------------------------------------------------------------------------------------

    def run(self) -> Iterator[TrainEvent]:
        """Train until `iterations` or `time_budget`; yields a "step" event per step.

        Closing the generator early saves the last completed step (if a checkpoint folder was given and at least
        one step ran); an error in a step saves nothing (the checkpoint folder keeps its last save).
        """
        config = self.config
        saved_at = self.iteration if self.iteration else -1
        started_at = self._started_at = self.iteration
        failed = False  # an error other than being stopped: what the model holds may be half a step
        try:
            while self.iteration < config.iterations:
                started = time.perf_counter()
                loss = self._step()
                self.elapsed += time.perf_counter() - started  # training time: pauses and consumers don't count
                yield self._event("step", loss)
                if self.iteration % config.validate_every == 0 and self.iteration < config.iterations:
                    yield self._event("validation", loss, val_score=self.validate())
                if self.iteration % config.checkpoint_every == 0:
                    self._last_good = self._snapshot()
                    if self.checkpoint is not None:
                        self.save_checkpoint(self.checkpoint)
                        saved_at = self.iteration
                        yield self._event("checkpoint", loss)
                if config.time_budget is not None and self.elapsed >= config.time_budget:
                    break
            if config.calibrate_growth and any(sample.cells is not None for sample in self.train):
                yield self._event("calibration", self._last_loss)  # announced: it runs the network on the images
                self.calibrate_growth()
                saved_at = -1  # the model's post-processing changed: save it even if this step was saved
            yield self._event("validation", self._last_loss, val_score=self.validate())
            if self.checkpoint is not None and saved_at != self.iteration:
                self.save_checkpoint(self.checkpoint)
                saved_at = self.iteration
            yield self._event("done", self._last_loss)
        except (GeneratorExit, KeyboardInterrupt):
            raise
        except BaseException:
            failed = True
            raise
        finally:
            # Stopped: keep the last completed step, but only one this run trained: a run that stops or fails
            # before its first step never replaces what the checkpoint folder holds (an --overwrite'd model).
            trained = self.iteration > started_at
            if (
                self.checkpoint is not None
                and saved_at != self.iteration
                and trained
                and not self._diverged
                and not failed
            ):
                self.save_checkpoint(self.checkpoint)

    def calibrate_growth(self, max_images: int = 8) -> dict[str, float] | None:
        """Set the post-processing's growth to what makes the objects found on the training images match their
        annotated cells best (mean SEG; `postprocess.calibrate_growth`); returns each candidate's score, or None
        (nothing changed) when the annotations are binary masks.

        Scored on training images, whose cells the network has seen; what is chosen is one number, the extent
        of the outlines, which depends on the training (a large w0 makes a network cautious at the edges of
        cells) more than on the images. Recorded in the model's metadata as "growth_calibration".
        """
        samples = [sample for sample in self.train if sample.cells is not None and sample.cells.any()][:max_images]
        if not samples:
            return None
        probs = [self._predict(sample.image)[1] for sample in samples]
        self.postprocess, scores = calibrate_growth(probs, [sample.cells for sample in samples], self.postprocess)
        self.growth_calibration = {
            "seg": scores,
            "images": len(samples),
            "chosen": self.postprocess.grow_threshold,
            "iteration": self.iteration,
        }
        return scores

    def validate(self) -> float | None:
        """Mean foreground IoU (probability > 0.5 against the target, inside the annotation) on validation images."""
        if not self.validation:
            return None
        scores = []
        for sample in self.validation:
            probs = self._predict(sample.image)[1]
            annotated = sample.weights > 0
            scores.append(pixel_scores((probs > 0.5) & annotated, (sample.target == 1) & annotated)["iou"])
        return float(np.mean(scores))

    def bundle(self) -> ModelBundle:
        """The model as it is now, with its normalisation, post-processing and training metadata."""
        return ModelBundle(
            self.model,
            self.normalization,
            self.postprocess,
            {
                **self.metadata,
                "iterations": self.iteration,
                "elapsed_seconds": round(self.elapsed, 3),
                "seed": self.config.seed,
                "data_hashes": self.data_hashes,
                "training": self.config.to_dict(),
                "device": str(self.device),
                **({"growth_calibration": self.growth_calibration} if self.growth_calibration else {}),
            },
            channels=self.channels,
            object_diameter=self.object_diameter,
        )

    def save_checkpoint(self, path: str | Path) -> Path:
        """Save the model folder at `path`, with the resume state beside the weights (atomically)."""
        state = {
            "iteration": self.iteration,
            "elapsed": self.elapsed,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "numpy_rng": _rng_state_to_tensors(self.rng),
            "torch_rng": self._torch_rng["cpu"],
        }
        return save_model(path, self.bundle(), training_state=state)

    @classmethod
    def resume(
        cls,
        path: str | Path,
        train: Sequence[Sample],
        validation: Sequence[Sample] | None = (),
        device: str | torch.device = "auto",
        checkpoint: str | Path | None = None,
        **overrides: Any,
    ) -> Trainer:
        """Continue the run saved at `path` (by `save_checkpoint`) exactly where it stopped.

        overrides: TrainConfig fields to change (e.g. more `iterations`).
        """
        bundle = load_model(path)
        state_file = Path(path) / STATE_FILE
        if not state_file.is_file():
            raise ValueError(f"{path} holds a model but no training state ({STATE_FILE}): use it with init= instead")
        try:
            config = TrainConfig.from_dict(bundle.metadata["training"])
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"{path} has no valid training configuration to resume ({error!r})") from None
        trainer = cls(
            bundle.net,
            replace(config, **overrides),
            train,
            validation,
            device,
            checkpoint if checkpoint is not None else path,
            bundle.normalization,
            bundle.postprocess,
            channels=bundle.channels,
            object_diameter=bundle.object_diameter,
        )
        try:  # weights-only: a hostile file cannot run code; a corrupted one is a ValueError, not a traceback
            state = torch.load(state_file, map_location=trainer.device, weights_only=True)
            trainer.iteration = int(state["iteration"])
            trainer.elapsed = float(state["elapsed"])
            trainer.optimizer.load_state_dict(state["optimizer"])
            trainer.scheduler.load_state_dict(state["scheduler"])
            trainer.rng.bit_generator.state = _rng_state_from_tensors(state["numpy_rng"])
            trainer._torch_rng["cpu"] = state["torch_rng"]
        except Exception as error:  # torch raises many kinds (UnpicklingError, RuntimeError, EOFError, ...)
            raise ValueError(
                f"{state_file} cannot be read ({type(error).__name__}); the training state is "
                "corrupted: train again, or fine-tune the saved weights with init="
            ) from error
        trainer._last_good = trainer._snapshot()
        return trainer

    # -- internals -------------------------------------------------------------------------------------------

    _last_loss: float = math.nan
    _diverged: bool = False
    _started_at: int = 0  # the iteration the current `run()` started from

    def _prepare(self, sample: Sample, name: str) -> _Prepared:
        check_image_dtype(np.asarray(sample.image).dtype, f"{name}: the image")
        image = np.asarray(sample.image, dtype=np.float32)
        image = image[None] if image.ndim == 2 else image
        labels = check_labels(sample.labels, f"{name}: labels")  # any integer width; ids >= 2**31 renumbered
        mask = None if sample.mask is None else check_mask(sample.mask, labels.shape, f"{name}: mask")
        channels = self.model.config.in_channels
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
        image = self.normalization.apply_polarity(image)  # samples come percentile-normalised: invert here
        c = self.config
        weights = weight_map(labels, c.w0, c.sigma, mask=mask, border=c.border)
        target = make_target(labels, c.border)
        annotated = annotation_mask(labels, mask)
        target[~annotated] = 0
        cells = None if is_binary(labels) else np.where(annotated & (labels > 0), labels, 0).astype(np.int32)
        return _Prepared(image, target, weights, np.flatnonzero(weights > 0), cells)

    def _window(self, sample: _Prepared) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A random training window: image (C, n, n), target and weights (n, n), centred on an annotated pixel."""
        n = self.tile
        flat = sample.annotated[self.rng.integers(sample.annotated.size)]
        cy, cx = np.unravel_index(flat, sample.target.shape)
        origin = (int(cy) - n // 2, int(cx) - n // 2)
        image = read_window(sample.image, origin, (n, n))
        target = read_window(sample.target[None], origin, (n, n))[0].astype(np.int64)
        weights = read_window(sample.weights[None], origin, (n, n))[0]
        return augment(image, target, weights, self.rng, self.config.augment)

    def _step(self) -> float:
        c, model = self.config, self.model
        n = self.tile
        out = model.output_shape((n, n))[0]
        crop = (n - out) // 2
        batch = [self._window(self.train[self.rng.integers(len(self.train))]) for _ in range(c.batch_size)]
        x = torch.from_numpy(np.stack([b[0] for b in batch]).astype(np.float32)).to(self.device)
        target = torch.from_numpy(np.stack([b[1][crop : crop + out, crop : crop + out] for b in batch])).long()
        weights = torch.from_numpy(np.stack([b[2][crop : crop + out, crop : crop + out] for b in batch])).float()
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._own_random_state():
            loss = weighted_cross_entropy(model(x), target.to(self.device), weights.to(self.device))
            if not torch.isfinite(loss):
                self._diverge(f"the loss became {loss.item()} at iteration {self.iteration + 1}")
            loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.iteration += 1
        self._last_loss = float(loss.item())
        return self._last_loss

    @contextmanager
    def _own_random_state(self) -> Iterator[None]:
        """Run a step with the trainer's torch random state (CPU, and the CUDA device it trains on) and cuDNN's
        autotuner on (every step has the same shapes), then give the process back its own state and flags."""
        cuda = self.device.type == "cuda"
        with torch.random.fork_rng(devices=[self.device] if cuda else []):
            torch.set_rng_state(self._torch_rng["cpu"])
            if cuda:
                torch.cuda.set_rng_state(self._torch_rng["cuda"], self.device)
            benchmark = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = benchmark or cuda
            try:
                yield
            finally:
                torch.backends.cudnn.benchmark = benchmark
                self._torch_rng["cpu"] = torch.get_rng_state()
                if cuda:
                    self._torch_rng["cuda"] = torch.cuda.get_rng_state(self.device)

    def _diverge(self, what: str) -> None:
        self._diverged = True
        iteration, state = self._last_good
        self.model.load_state_dict(state)
        self.iteration = iteration
        kept = ""
        if self.checkpoint is not None and iteration > self._started_at:  # never an untrained net over a model
            self.save_checkpoint(self.checkpoint)
            kept = f"; the last good state (iteration {iteration}) is saved in {self.checkpoint}"
        raise TrainingDiverged(f"{what}{kept}. Try a lower learning rate (now {self.config.learning_rate}).")

    def _snapshot(self) -> tuple[int, dict[str, torch.Tensor]]:
        return self.iteration, copy.deepcopy(self.model.state_dict())

    def _predict(self, image: np.ndarray) -> np.ndarray:
        try:
            return predict_tiled(self.model, image, device=self.device)
        finally:
            self.model.train()

    def _event(self, kind: str, loss: float, **extra: Any) -> TrainEvent:
        return TrainEvent(
            kind, self.iteration, self.config.iterations, loss, self.scheduler.get_last_lr()[0], self.elapsed, **extra
        )


def _make_optimizer(model: UNet, config: TrainConfig) -> torch.optim.Optimizer:
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


def _schedule(config: TrainConfig, elapsed: Callable[[], float]) -> Callable[[int], float]:
    """The learning-rate factor of step `step`: cosine from 1 to 0.05 over the run, whose progress is the larger of
    step / iterations and (with a time budget) elapsed training time / time_budget."""
    if config.schedule == "constant":
        return lambda step: 1.0
    total, budget = config.iterations, config.time_budget

    def factor(step: int) -> float:
        progress = min(step, total) / total
        if budget:
            progress = max(progress, min(elapsed() / budget, 1.0))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _hash_sample(sample: Sample) -> str:
    digest = hashlib.sha1()
    for array in (sample.image, sample.labels, sample.mask):
        if array is not None:
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def _rng_state_to_tensors(rng: np.random.Generator) -> dict[str, Any]:
    """numpy's PCG64 state as plain values a weights-only torch.load accepts (128-bit ints as strings)."""
    state = rng.bit_generator.state
    return {
        "bit_generator": state["bit_generator"],
        "state": str(state["state"]["state"]),
        "inc": str(state["state"]["inc"]),
        "has_uint32": int(state["has_uint32"]),
        "uinteger": int(state["uinteger"]),
    }


def _rng_state_from_tensors(saved: dict[str, Any]) -> dict[str, Any]:
    return {
        "bit_generator": saved["bit_generator"],
        "state": {"state": int(saved["state"]), "inc": int(saved["inc"])},
        "has_uint32": saved["has_uint32"],
        "uinteger": saved["uinteger"],
    }
