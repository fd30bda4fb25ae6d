"""Training: a generator of progress events, consumed alike by the napari dock, the CLI and the tests.

Each step draws windows centred on random annotated pixels (mirrored at the image border), warps image, target
and weights together (elastic deformation, rotation, shift, flips; gray-value changes on the image) and
minimises the weighted cross-entropy on the windows' output regions (`batches.py`). On a GPU the windows are
cut and warped there, a batch at a time, and the next batch is prepared while the device computes; the
arithmetic is bf16 autocast there by default (`precision.py`). With torch.distributed initialised (torchrun),
the processes share each batch (`ddp.py`).

Stopping is not asking for the next event: closing the generator (or leaving a ``for`` loop) saves the last
completed step to the checkpoint folder. A resumed run continues exactly where the interrupted one stopped
(model, optimiser, schedule, random state and iteration are restored). A loss that becomes NaN or infinite ends
the run (`TrainingDiverged`) with the model, and the checkpoint folder, back at the last checkpoint whose weights
went on to give a finite loss, the whole training state of that step, so that it can be resumed with a lower
learning rate (`Trainer.resume(..., learning_rate=...)`).

>>> from napari_unet.synthetic import make_cells
>>> image, labels = make_cells((96, 96), seed=0)
>>> net_config, config = preset("fast", iterations=2, tile_size=92)
>>> trainer = Trainer(UNet(net_config, depth=3), config, [Sample(image, labels)], device="cpu")
>>> [event.kind for event in trainer.run()]
['step', 'step', 'calibration', 'validation', 'done']
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import ddp
from .batches import Prepared, TrainingBatches, annotated_samples, prepare_sample
from .channels import ChannelChoice
from .device import select_device
from .losses import weighted_cross_entropy
from .metrics import pixel_scores
from .model import UNet
from .modelfile import STATE_FILE, ModelBundle, Normalization, load_model, save_model
from .postprocess import (
    GROWTH_CANDIDATES,
    SEED_CANDIDATES,
    PostprocessConfig,
    calibrate_growth,
    fit_flood_seeds,
    tune_config,
)
from .precision import autocast, compiled, memory_format, resolve_precision
from .targets import cells_tile_image
from .tiling import predict_tiled
from .train_config import (
    PRESETS,
    CheckpointNotSaved,
    Sample,
    TrainConfig,
    TrainEvent,
    TrainingDiverged,
    gives_back_border,
    hash_sample,
    learning_rate_schedule,
    make_optimizer,
    preset,
    rng_state_from_tensors,
    rng_state_to_tensors,
)

__all__ = [
    "PRESETS",
    "CheckpointNotSaved",
    "Sample",
    "TrainConfig",
    "TrainEvent",
    "Trainer",
    "TrainingDiverged",
    "preset",
]

# The seeds of cells that tile the image (membrane masks, flooded: `PostprocessConfig.flood`): components above
# this probability, until the end of the run fits the threshold to the model (`Trainer.calibrate_growth`). Chosen
# by cross-validation within ISBI 2012's training slices (benchmarks/bench_flood.py: the fast preset on 12 slices,
# scored on the 3 left out, two folds): mean thinned V_rand of the flooded labels best at 0.6 after 4800 steps
# (results/flood.json) and after 18000 (results/flood_18000.json, where 0.6-0.95 lie within 0.009 of each other
# and the seeds of the best score on the training slices, 0.7, score 0.966 against 0.967; the end-of-run fit now
# takes the highest within 0.005 of that best, 0.9 and 0.85 there, 0.966): docs/results.md.
FLOOD_THRESHOLD = 0.6

# the versions `modelfile.save_model` records in a model's metadata at every save: not carried over by a resume
VERSION_KEYS = ("napari_unet_version", "torch_version", "python_version")


def annotated_everywhere(samples: Sequence[Prepared], binary: bool) -> list[Prepared]:
    """The prepared samples annotated at every pixel (a dataset's label files, not cells painted here and there):
    binary masks with some foreground (`binary`), or instance labels. What the post-processing is fitted on."""
    return [
        s
        for s in samples
        if s.annotated.size == s.target.size and (s.cells is None) == binary and (s.target.any() or not binary)
    ]


def default_postprocess(config: TrainConfig, binary: bool, tiled: bool = False) -> PostprocessConfig:
    """The post-processing a new model starts with, before the end-of-run fit (`Trainer.calibrate_growth`):
    binary masks: nothing given back, no watershed; binary masks whose cells tile the image (membranes,
    `targets.cells_tile_image`): seeds above `FLOOD_THRESHOLD` flooded until the cells meet; instance labels:
    the separation border given back, and the watershed (depth 1 px) where the targets had none (`border` 0),
    since touching cells then touch in the output too.

    >>> default_postprocess(TrainConfig(), binary=False).watershed
    True
    """
    if binary and tiled:
        return PostprocessConfig(border_width=0, threshold=FLOOD_THRESHOLD, flood=True)
    if binary:
        return PostprocessConfig(border_width=0)
    return PostprocessConfig(border_width=config.border, watershed=config.border == 0, watershed_h=1.0)


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
        self.channels = channels or ChannelChoice()  # how the samples' channels were chosen; saved with the model
        self.object_diameter = object_diameter
        self.tile = model.valid_input_size(config.tile_size)
        in_channels = model.config.in_channels
        self.train = [
            prepare_sample(s, f"training sample {i}", in_channels, self.normalization, config)
            for i, s in enumerate(train)
        ]
        if validation is None:  # validate on the training samples, prepared once
            self.validation = self.train
        else:
            self.validation = [
                prepare_sample(s, f"validation sample {i}", in_channels, self.normalization, config)
                for i, s in enumerate(validation)
            ]
        annotated_samples(self.train)  # refuses annotations that are empty everywhere, before any other work
        # binary masks (membranes) were not cut between cells: their objects need no border given back; cells
        # trained without a separation border (border 0) touch in the network's output: the watershed parts them
        if postprocess is None:
            binary = all(p.cells is None for p in self.train)
            tiled = binary and all(cells_tile_image(p.target) for p in self.train)
            postprocess = default_postprocess(config, binary, tiled)
        self.postprocess = postprocess
        self.data_hashes = [hash_sample(s) for s in train]
        self.iteration = 0
        self.elapsed = 0.0
        self.rng = np.random.default_rng(config.seed)
        # torch's random numbers (dropout) come from the trainer's own stream, swapped in for each step
        # (`_own_random_state`): training neither reseeds nor advances the process's generators
        self._torch_rng = {"cpu": torch.Generator().manual_seed(config.seed).get_state()}
        self.precision = resolve_precision(config.precision, self.device)
        self.rank, self.world_size = ddp.rank_and_world_size()
        if self.rank != 0:
            self.checkpoint = None  # one process writes the model: the first
        self.model.to(self.device, memory_format=memory_format(self.device))
        if self.device.type == "cuda":
            self._torch_rng["cuda"] = torch.Generator(self.device).manual_seed(config.seed).get_state()
        if self.world_size > 1 and config.augmentation == "per-sample":
            raise ValueError("training on several processes shares batches: use augmentation 'batched' or 'auto'")
        self.batched = config.augmentation == "batched" or (
            config.augmentation == "auto" and (self.device.type != "cpu" or self.world_size > 1)
        )
        out = model.output_shape((self.tile, self.tile))[0]
        self._batches = TrainingBatches(self.train, config, self.tile, out, self.device, self.batched)
        self._module: torch.nn.Module = ddp.wrap(model, self.device) if self.world_size > 1 else model
        self._forward: Callable[[torch.Tensor], torch.Tensor] | None = None  # the module, compiled if asked
        self._pending: tuple[dict[str, Any], tuple[torch.Tensor, ...]] | None = None  # the next batch, prefetched
        self.optimizer = make_optimizer(model, config)
        schedule = learning_rate_schedule(config, lambda: self.elapsed)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.growth_calibration: dict[str, Any] | None = None
        self.metadata: dict[str, Any] = {}  # saved with the model besides the training record
        # the state a divergence goes back to: the last checkpoint whose weights gave a finite loss in the step
        # after it (`_good`), and the checkpoint not yet confirmed so (`_unconfirmed`, confirmed in `_step`)
        self._good = self._snapshot()
        self._unconfirmed: dict[str, Any] | None = None

    # -- public ----------------------------------------------------------------------------------------------

    def run(self) -> Iterator[TrainEvent]:
        """Train until `iterations` or `time_budget`; yields a "step" event per step.

        Closing the generator early saves the last completed step (if a checkpoint folder was given and at least
        one step ran); an error in a step saves nothing (the checkpoint folder keeps its last save).
        """
        config = self.config
        saved_at = self.iteration if self.iteration else -1
        started_at = self._started_at = self.iteration
        self._saved_at = None
        failed = False  # an error other than being stopped: what the model holds may be half a step
        # `elapsed`: the run's time, its steps, validations and checkpoints (not the consumer's between events);
        # the time of a validation and a checkpoint is added with the next step's, so that every process reads
        # the same `elapsed` in its steps (the learning-rate schedule) and when it decides to stop
        between = 0.0
        try:
            while self.iteration < config.iterations:
                started = time.perf_counter()
                loss = self._step()
                self.elapsed += time.perf_counter() - started + between
                between = 0.0
                if self.world_size > 1 and config.time_budget is not None:
                    self.elapsed = ddp.agreed_elapsed(self.elapsed)  # one schedule and one stop for all processes
                yield self._event("step", loss)
                if config.time_budget is not None and self.elapsed >= config.time_budget:
                    break  # the end of the run validates and saves
                started = time.perf_counter()
                if self.iteration % config.validate_every == 0 and self.iteration < config.iterations:
                    score = self.validate()
                    between += time.perf_counter() - started
                    yield self._event("validation", loss, val_score=score)
                    started = time.perf_counter()
                if self.iteration % config.checkpoint_every == 0:
                    self._unconfirmed = self._snapshot()  # good once the next step's loss is finite
                    if self.checkpoint is not None:
                        self._save_during_run()
                        saved_at = self._saved_at = self.iteration
                    between += time.perf_counter() - started
                    if self.checkpoint is not None:
                        yield self._event("checkpoint", loss)
            self.elapsed += between  # the last iteration's checkpoint
            between = 0.0
            if config.calibrate_growth and self._calibrates():
                yield self._event("calibration", self._last_loss)  # announced: it runs the network on the images
                tuned = self.postprocess
                self.calibrate_growth()
                if self.postprocess != tuned:  # a tuning recorded by the run this one resumed chose what it replaced
                    self.metadata.pop("postprocess_tuning", None)
                saved_at = -1  # the model's post-processing changed: save it even if this step was saved
            yield self._event("validation", self._last_loss, val_score=self.validate())
            if self.checkpoint is not None and saved_at != self.iteration:
                self._save_during_run()
                saved_at = self._saved_at = self.iteration
            yield self._event("done", self._last_loss)
        except (GeneratorExit, KeyboardInterrupt):
            raise
        except BaseException:
            failed = True
            raise
        finally:
            self.elapsed += between  # stopped after a validation or a checkpoint
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
                self._saved_at = self.iteration

    @property
    def saved(self) -> bool:
        """Whether the checkpoint folder holds the model as it is now: this run saved it at its current step (a
        folder that holds an earlier checkpoint of the run, whose last save failed, does not)."""
        return self.checkpoint is not None and self._saved_at == self.iteration

    def _calibrates(self) -> bool:
        """Whether `calibrate_growth` has something to fit: membrane masks for a model that floods, else
        instance labels."""
        if self.postprocess.flood and annotated_everywhere(self.train, binary=True):
            return True
        return any(sample.cells is not None for sample in self.train)

    def calibrate_growth(
        self, max_images: int = 16, seed_thresholds: Sequence[float] = SEED_CANDIDATES
    ) -> dict[str, float] | None:
        """Fit the post-processing to the training annotations; returns the scores it was chosen by, or None
        (nothing changed) when the annotations are binary masks that are not flooded.

        Membrane masks (the post-processing floods: `PostprocessConfig.flood`): the seed threshold, by the mean
        thinned V_rand of the flooded labels over up to `max_images` masks annotated everywhere
        (`postprocess.fit_flood_seeds`: the highest seed threshold scoring within 0.005 of the best there).
        The best seed moves from network to network, and on slices the network has not seen it lay at or above
        the one best on its training slices for seven of the eight ISBI 2012 networks measured (held-out folds
        within the training slices, and the validation slices 15-19; docs/results.md).

        Images whose every pixel is annotated with instance labels (a dataset's label files): the threshold and
        the watershed, then the seeds from the objects' cores (each of `seed_thresholds`; none: seeded by the
        mask), then the growth, each by mean mAP then AP50, over up to `max_images` of them
        (`postprocess.tune_config`): which objects exist needs every object annotated. Otherwise (cells painted
        in the Fine-tune dock): the growth alone, by the mean SEG of the annotated cells
        (`postprocess.calibrate_growth`), which looks at annotated cells only.

        Scored on training images, whose cells the network has seen; what is chosen is a few numbers (where a
        probability counts as a cell, how far outlines extend) that depend on the training (a large w0 makes a
        network cautious at the edges of cells) more than on the images. Recorded in the model's metadata as
        "growth_calibration".
        """
        if self.rank != 0:  # with several processes, the first one saves the model: it calibrates
            return None
        masks = annotated_everywhere(self.train, binary=True) if self.postprocess.flood else []
        if masks:
            return self._fit_flood_seeds(masks[:max_images])
        samples = [sample for sample in self.train if sample.cells is not None and sample.cells.any()]
        if not samples:
            return None
        complete = annotated_everywhere(samples, binary=False)[:max_images]
        # growth fitted on training images, where the network is surest, cost mAP on new ones (docs/results.md)
        growth = GROWTH_CANDIDATES if gives_back_border(self.config) else (None,)
        if not complete and growth == (None,):
            return None  # painted cells: only the growth would be fitted
        used = complete or samples[:max_images]
        probs = [self.predict_prepared(sample) for sample in used]
        cells = [sample.cells for sample in used]
        if complete:
            self.postprocess, scores = tune_config(
                probs, cells, self.postprocess, grow_thresholds=growth, seed_thresholds=seed_thresholds
            )
            chosen = self.postprocess
            record = {
                "by": "map, ap50",
                "scores": scores,
                "threshold": chosen.threshold,
                "watershed": chosen.watershed,
                "watershed_h": chosen.watershed_h,
                "seed_threshold": chosen.cores_above,
            }
        else:
            self.postprocess, scores = calibrate_growth(probs, cells, self.postprocess)
            record = {"by": "seg", "seg": scores}
        self.growth_calibration = {
            **record,
            "images": len(used),
            "chosen": self.postprocess.grow_threshold,
            "iteration": self.iteration,
        }
        return scores

    def _fit_flood_seeds(self, used: list[Prepared]) -> dict[str, float]:
        probs = [self.predict_prepared(sample) for sample in used]
        self.postprocess, scores = fit_flood_seeds(probs, [sample.target for sample in used], self.postprocess)
        self.growth_calibration = {
            "by": "vrand",
            "vrand": scores,
            "images": len(used),
            "chosen": self.postprocess.threshold,
            "iteration": self.iteration,
        }
        return scores

    def validate(self) -> float | None:
        """Mean foreground IoU (probability > 0.5 against the target, inside the annotation) on validation images;
        images with no annotated pixel are left out (their IoU would read a perfect 1.0); None without any."""
        if not self.validation or self.rank != 0:  # with several processes, the first one validates
            return None
        scores = []
        for sample in self.validation:
            if not sample.annotated.size:
                continue
            probs = self._predict(sample.image)[1]
            annotated = sample.weights > 0
            scores.append(pixel_scores((probs > 0.5) & annotated, (sample.target == 1) & annotated)["iou"])
        return float(np.mean(scores)) if scores else None

    @property
    def finished(self) -> bool:
        """Whether the run has no step left: `iterations` reached, or its time budget spent (a resumed run
        that had ended)."""
        budget = self.config.time_budget
        return self.iteration >= self.config.iterations or (budget is not None and self.elapsed >= budget)

    @property
    def last_loss(self) -> float:
        """The loss of the last step (restored by `resume`); NaN before any step, or from a state saved without it."""
        return self._last_loss

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
                "processes": self.world_size,  # each took `batch_size` windows a step (`ddp.py`)
                **({"growth_calibration": self.growth_calibration} if self.growth_calibration else {}),
            },
            channels=self.channels,
            object_diameter=self.object_diameter,
        )

    def _save_during_run(self) -> None:
        """The run's checkpoint, saved at a completed step; a failure is `CheckpointNotSaved` (the network in
        memory is that step's), never a bare OSError that reads as a failed training."""
        try:
            self.save_checkpoint(self.checkpoint)
        except OSError as error:
            raise CheckpointNotSaved(
                f"the model trained to iteration {self.iteration} could not be saved: {error}", self.iteration
            ) from error

    def save_checkpoint(self, path: str | Path) -> Path:
        """Save the model folder at `path`, with the resume state beside the weights (atomically)."""
        return save_model(path, self.bundle(), training_state=self._training_state())

    def _training_state(self) -> dict[str, Any]:
        """What `resume` restores besides the weights (`STATE_FILE`). The tensors are the live ones, not copies."""
        return {
            "iteration": self.iteration,
            "elapsed": self.elapsed,
            "loss": self._last_loss,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            # before the prefetched batch was drawn: a resumed run draws it again
            "numpy_rng": rng_state_to_tensors(
                self.rng.bit_generator.state if self._pending is None else self._pending[0]
            ),
            "torch_rng": self._torch_rng["cpu"],
        }

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

        overrides: TrainConfig fields to change (e.g. more `iterations`). A new `learning_rate` scales the saved
        run's rate from its next step on (its schedule continues: warm-up and decay multiply the new rate); the
        optimiser keeps its state (moments, momentum).
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
            trainer.rng.bit_generator.state = rng_state_from_tensors(state["numpy_rng"])
            trainer._torch_rng["cpu"] = state["torch_rng"]
            trainer._last_loss = float(state.get("loss", math.nan))  # saved since the "already complete" report
        except Exception as error:  # torch raises many kinds (UnpicklingError, RuntimeError, EOFError, ...)
            raise ValueError(
                f"{state_file} cannot be read ({type(error).__name__}); the training state is "
                "corrupted: train again, or fine-tune the saved weights with init="
            ) from error
        trainer._set_learning_rate(trainer.config.learning_rate)
        trainer._good = trainer._snapshot()
        trainer._resumed_from = Path(path)
        # what the saved run recorded besides what the trainer writes itself: the fit of the post-processing it
        # keeps, a tuning on validation images, the caller's own keys (`metadata`)
        trainer.growth_calibration = bundle.metadata.get("growth_calibration")
        written = {*trainer.bundle().metadata, *VERSION_KEYS}
        trainer.metadata = {key: value for key, value in bundle.metadata.items() if key not in written}
        return trainer

    # -- internals -------------------------------------------------------------------------------------------

    _last_loss: float = math.nan
    _diverged: bool = False
    _started_at: int = 0  # the iteration the current `run()` started from
    _saved_at: int | None = None  # the iteration the current `run()` last saved to the checkpoint folder
    _resumed_from: Path | None = None  # the folder `resume` read

    def _set_learning_rate(self, value: float) -> None:
        """Make `value` the optimiser's base learning rate (the rate the schedule multiplies), keeping the
        schedule's factor of the current step; a no-op when it is already (an exact resume stays exact)."""
        for group in self.optimizer.param_groups:
            base = group.get("initial_lr", group["lr"])
            if base != value:
                group["lr"] *= value / base
                group["initial_lr"] = value
        self.scheduler.base_lrs = [group.get("initial_lr", group["lr"]) for group in self.optimizer.param_groups]

    def _step(self) -> float:
        model = self.model
        if self._pending is None:
            x, target, weights = self._batches.next(self.rng)
        else:
            x, target, weights = self._pending[1]
            self._pending = None
        model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._own_random_state():
            if self._forward is None:
                with autocast(self.device, self.precision):
                    self._forward = compiled(self._module, x) if self.config.compile else self._module
            with autocast(self.device, self.precision):
                logits = self._forward(x)
            loss, reported = self._loss(logits.float(), target, weights)
            if self.batched:  # prepare the next batch while the device computes this one (its state kept for resume)
                state = self.rng.bit_generator.state
                self._pending = (state, self._batches.next(self.rng))
            value = float(reported.item())
            if not math.isfinite(value):
                self._diverge(f"the loss became {value} at iteration {self.iteration + 1}")
            if self._unconfirmed is not None:  # the weights of the last checkpoint gave a finite loss: good
                self._good, self._unconfirmed = self._unconfirmed, None
            loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.iteration += 1
        self._last_loss = value
        return value

    def _loss(self, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(the loss to differentiate, the loss to report): the weighted cross-entropy of the batch; with several
        processes, of the whole batch they share (`ddp.shared_loss`)."""
        if self.world_size > 1:
            return ddp.shared_loss(logits, target, weights, self.world_size)
        loss = weighted_cross_entropy(logits, target, weights)
        return loss, loss.detach()

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
        """Go back to the last good state (`_good`: weights, optimiser, schedule, random state, iteration, all of
        one step) and raise TrainingDiverged. The weights of a checkpoint are good once the step after it had a
        finite loss: the checkpoint just before the step that diverged is not. The checkpoint folder is put back
        to that state when this run saved something there (never an untrained net over a model it did not
        write); otherwise it holds what it held before the run: for a run resumed from it, the state it
        resumed, good when a step of this run had a finite loss."""
        self._diverged = True
        stepped = self.iteration > self._started_at  # a step of this run had a finite loss
        self._restore(self._good)
        self._unconfirmed = None
        iteration, kept = self.iteration, None
        if self.checkpoint is None:
            where = f"; the model is back at the last good state (iteration {iteration})"
        elif self._saved_at is not None:
            if self._saved_at != iteration:
                self.save_checkpoint(self.checkpoint)
                self._saved_at = iteration
            kept = iteration
            where = f"; the last good state (iteration {iteration}) is saved in {self.checkpoint}"
        elif stepped and self.checkpoint == self._resumed_from:
            kept = iteration
            where = f"; {self.checkpoint} holds the last good state (iteration {iteration}), the one this run resumed"
        elif not stepped:
            where = f"; the state this run started from (iteration {iteration}) gives it: nothing was saved"
        else:
            where = f"; nothing of this run was saved in {self.checkpoint}"
        raise TrainingDiverged(
            f"{what}{where}. Try a lower learning rate (now {self.config.learning_rate}).", kept=kept
        )

    def _snapshot(self) -> dict[str, Any]:
        """The whole training state of this step (`_training_state`, the weights, the torch random states),
        copied to the CPU: what `_restore` goes back to."""
        return _cpu_copy({**self._training_state(), "weights": self.model.state_dict(), "torch_rngs": self._torch_rng})

    def _restore(self, snapshot: dict[str, Any]) -> None:
        snapshot = _cpu_copy(snapshot)  # the optimiser would keep the snapshot's CPU tensors as its own
        self.model.load_state_dict(snapshot["weights"])
        self.optimizer.load_state_dict(snapshot["optimizer"])
        self.scheduler.load_state_dict(snapshot["scheduler"])
        self.rng.bit_generator.state = rng_state_from_tensors(snapshot["numpy_rng"])
        self._torch_rng = snapshot["torch_rngs"]
        self.iteration, self.elapsed, self._last_loss = snapshot["iteration"], snapshot["elapsed"], snapshot["loss"]
        self._pending = None  # the prefetched batch is drawn again from the restored random state

    def predict_prepared(self, sample: Prepared) -> np.ndarray:
        """The foreground probability (H, W) of one of the trainer's prepared samples (`train`, `validation`):
        its image as training sees it (inverted, rescaled), through the network as it is now."""
        return self._predict(sample.image)[1]

    def _predict(self, image: np.ndarray) -> np.ndarray:
        try:
            return predict_tiled(self.model, image, device=self.device, precision=self.precision)
        finally:
            self.model.train()

    def _event(self, kind: str, loss: float, **extra: Any) -> TrainEvent:
        return TrainEvent(
            kind, self.iteration, self.config.iterations, loss, self.scheduler.get_last_lr()[0], self.elapsed, **extra
        )


def _cpu_copy(value: Any) -> Any:
    """`value` (nested dicts, lists and tuples of tensors and plain values) with every tensor copied to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _cpu_copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_copy(item) for item in value)
    return copy.deepcopy(value)
