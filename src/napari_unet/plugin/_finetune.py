"""Fine-tune dock: train the U-Net on an image layer and a Labels layer of (possibly a few) annotated cells.

Everything slow happens in a worker thread: the training samples are normalised and their weight maps
computed there (`jobs.finetune.run_training` builds the `Trainer`), then each `TrainEvent` of `Trainer.run()` is yielded to
the main thread, which only moves the progress bar and adds a point to the loss plot.

Stopping: napari's `worker.quit()` (the Stop button, or the status bar's cancel) ends the worker loop without
closing the generator, so the dock closes it afterwards in another worker: the trainer's `finally` then saves
the last completed step to the autosave folder, off the main thread.

Start from: the built-in `nuclei` model (the default when installed), a new network, the session's model or a
saved one. A model with an object diameter (the built-in) is fine-tuned with the few-shot recipe
(`napari_unet.fewshot`): the image and the painted cells are rescaled by model diameter / median diameter of the
painted cells, for the dock's time budget (1 minute by default).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from napari.layers import Image, Labels, Shapes
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QFileDialog, QProgressBar, QPushButton, QWidget

from napari_unet import builtin
from napari_unet.device import available_devices, describe_device, select_device
from napari_unet.fewshot import FewShotConfig
from napari_unet.jobs.finetune import TrainingJob, format_duration, measure_steps, run_training, suggest_annotation
from napari_unet.model import UNet, UNetConfig
from napari_unet.modelfile import ModelBundle, Normalization, load_model, save_model
from napari_unet.targets import mask_around_cells
from napari_unet.training import PRESETS, TrainEvent, preset

from . import _autosave
from ._channels import ChannelFields
from ._form import check, choice, dock_layout, form, row, spin
from ._layers import (
    LayerProblem,
    channels_of,
    check_layer_pair,
    layer_combo,
    layer_data,
    plane_stack,
    wrapped_label,
)
from ._plot import LossPlot
from ._state import Session, TrainingRun, session_for
from ._workers import alive, generator_worker, start_worker

START_NEW, START_SESSION, START_FILE = "new network", "the session's model", "a saved model…"
BUILTIN_MODEL = "nuclei"  # the built-in model offered as a starting point (first and default when installed)
START_BUILTIN = f"{BUILTIN_MODEL} (built-in)"
DEFAULT_MARGIN = 12  # px of background kept around sparsely annotated cells


def _closer(generator: Iterator[TrainEvent], widget: QWidget, job: TrainingJob, session: Session):
    """The `aborted` slot of a training worker: napari's quit() leaves the generator open, so close it in
    another worker (the trainer's `finally` saves the model there), then tell the dock; if the dock was closed
    meanwhile (which quits its worker), keep the model in the session all the same."""

    def closed() -> None:
        if alive(widget):
            widget._stopped()
            return
        session.training = False
        if job.trainer is not None and job.trainer.iteration > 0:
            saved = job.checkpoint if (job.checkpoint / "config.json").is_file() else None
            session.set_model(job.trainer.bundle(), saved)

    def close() -> None:
        closer = create_worker(generator.close, _ignore_errors=True, _start_thread=False)
        closer.finished.connect(closed)
        closer.errored.connect(lambda error: show_error(f"Saving the stopped model failed: {error}"))
        start_worker(closer)

    return close


# -- the dock --------------------------------------------------------------------------------------------------


class FineTuneWidget(QWidget):
    """Train on annotations in the viewer. `finished` is emitted (main thread) with the saved model folder
    after a completed or stopped run; `estimated` with the measured seconds per step.

    autosave_root: where models and annotations are autosaved (default ~/.napari-unet/autosave).
    net_overrides: UNetConfig fields for new models (e.g. a tiny network for tests and demos).
    train_overrides: TrainConfig fields that override the preset (e.g. a smaller tile_size).
    """

    finished = Signal(object)
    estimated = Signal(float)
    suggested = Signal(object)  # the boxes (y0, x0, y1, x1) of "Suggest where to annotate"

    def __init__(
        self,
        napari_viewer: Any,
        autosave_root: str | Path | None = None,
        net_overrides: dict[str, Any] | None = None,
        train_overrides: dict[str, Any] | None = None,
        session: Session | None = None,
        start_from: str | None = None,
    ):
        """start_from: the first "start from" choice (default: the built-in model when installed, else a new
        network)."""
        super().__init__()
        self.viewer = napari_viewer
        self.session = session or session_for(napari_viewer)
        self.autosave_root = Path(autosave_root) if autosave_root is not None else _autosave.default_root()
        self.net_overrides = dict(net_overrides or {})
        self.train_overrides = dict(train_overrides or {})
        self.worker: Any = None
        self.job: TrainingJob | None = None
        self.history: TrainingRun | None = None
        self.start_bundle: ModelBundle | None = None  # a model loaded from disk to start from
        self.builtin_bundle: ModelBundle | None = None  # the built-in model, loaded when first chosen
        self.start_path: Path | None = None
        self.annotations_path: Path | None = None
        self.offered_annotations: tuple[Path, Path] | None = None  # (image file, annotations file)
        self.step_seconds: dict[tuple, float] = {}
        self._generator: Iterator[TrainEvent] | None = None
        self._estimate_key: tuple | None = None
        self._estimate_worker: Any = None
        self._outcome = ""  # how the training worker ended: "done", "stopping", "failed"

        self.image_combo = layer_combo(napari_viewer, Image, "image")
        self.labels_combo = layer_combo(napari_viewer, Labels, "annotations")
        self.region_combo = layer_combo(
            napari_viewer, (Shapes, Labels), "region", optional="(none: around the annotated cells)"
        )
        self.whole_check = check("every cell in the image is annotated")
        self.margin_spin = spin(
            1, 500, DEFAULT_MARGIN, tooltip="Only this much background around the annotated cells is trusted"
        )
        self.start_combo = choice(
            ([START_BUILTIN] if BUILTIN_MODEL in builtin.names() else []) + [START_NEW, START_SESSION, START_FILE]
        )
        self.start_combo.setCurrentText(start_from or self.start_combo.itemText(0))
        self.preset_combo = choice(list(PRESETS))
        self.iterations_spin = spin(1, 1_000_000, PRESETS["fast"][1].iterations)
        self.budget_spin = spin(0.0, 100_000.0, 0.0, decimals=1, special="none", suffix=" min")
        self.device_combo = choice(available_devices())
        self.channel_fields = ChannelFields()
        self.estimate_label = wrapped_label()
        self.start_button = QPushButton("Start")
        self.pause_button = QPushButton("Pause")
        self.stop_button = QPushButton("Stop")
        self.save_button = QPushButton("Save model…")
        self.load_button = QPushButton("Load model…")
        self.suggest_button = QPushButton("Suggest where to annotate")
        self.suggest_button.setToolTip(
            "Boxes (a Shapes layer) where the starting model is least sure of itself (its answers disagree when "
            "the image is flipped): the cells there teach it most"
        )
        self.suggestions_layer: Any = None
        self.restore_button = QPushButton("")
        self.restore_button.hide()
        self.progress = QProgressBar()
        self.plot = LossPlot()
        self.status = wrapped_label(lines=2)
        self.model_label = wrapped_label()
        self.autosave_label = wrapped_label(f"autosave: {self.autosave_root}")
        self.autosave_button = QPushButton("Change…")
        dock_layout(
            self,
            form(
                ("image", self.image_combo),
                ("annotations", self.labels_combo),
                ("annotated region", self.region_combo),
                ("", self.whole_check),
                ("margin (px)", self.margin_spin),
                ("channels", self.channel_fields.edit),
                ("", self.channel_fields.grey),
                ("start from", self.start_combo),
                ("preset", self.preset_combo),
                ("iterations", self.iterations_spin),
                ("time budget", self.budget_spin),
                ("device", self.device_combo),
                ("", self.estimate_label),
            ),
            row(self.start_button, self.pause_button, self.stop_button),
            self.suggest_button,
            self.progress,
            (self.plot, 1),
            self.status,
            self.model_label,
            row(self.save_button, self.load_button),
            row(self.autosave_label, self.autosave_button, stretch=(1,)),
            self.restore_button,
        )

        self.start_button.clicked.connect(self.start)
        self.suggest_button.clicked.connect(self.suggest)
        self.pause_button.clicked.connect(self.toggle_pause)
        self.stop_button.clicked.connect(self.stop)
        self.save_button.clicked.connect(self._ask_save)
        self.load_button.clicked.connect(self._ask_load)
        self.autosave_button.clicked.connect(self._ask_autosave_root)
        self.restore_button.clicked.connect(self.restore_annotations)
        self.start_combo.currentTextChanged.connect(self._start_choice_changed)
        self.preset_combo.currentTextChanged.connect(self._preset_changed)
        self.device_combo.currentTextChanged.connect(lambda _text: self.update_estimate())
        self.iterations_spin.valueChanged.connect(lambda _value: self._show_estimate())
        self.budget_spin.valueChanged.connect(lambda _value: self._show_estimate())
        self.whole_check.toggled.connect(lambda checked: self.margin_spin.setEnabled(not checked))
        self.session.model_changed.connect(self._show_model)
        napari_viewer.layers.events.inserted.connect(self._layer_added)
        self._set_running(False)
        self._show_model()
        self.reset_choices()
        self._start_choice_changed(self.start_combo.currentText())

    # -- public ---------------------------------------------------------------------------------------------

    def reset_choices(self, _event: Any = None) -> None:
        for combo in (self.image_combo, self.labels_combo, self.region_combo):
            combo.reset_choices()

    def start(self) -> Any:
        """Start a run with the dock's settings; returns the worker, or None after a notification."""
        if self.worker is not None:
            show_warning("Training is already running")
            return None
        if self.session.segmenting:
            show_warning("A segmentation is using the model: wait for it (or cancel it), then train")
            return None
        try:
            job, annotations = self._prepare_job()
        except (LayerProblem, ValueError) as error:
            show_error(str(error))
            return None
        self._autosave_annotations(annotations)
        self.job = job
        self.history = TrainingRun()
        self.plot.clear(job.config.iterations)
        self.progress.setRange(0, job.config.iterations)
        self.progress.setValue(0)
        self.status.setText(f"Preparing {len(job.images)} image(s) on {describe_device(select_device(job.device))}…")
        self.session.training = True
        self._generator = run_training(job)
        # closed by _closer after a Stop, in a worker: closing saves the model
        self.worker = generator_worker(
            self._generator,
            close_when_done=False,
            _progress={"total": job.config.iterations, "desc": "U-Net: training"},
        )
        self.worker.yielded.connect(self._on_event)
        self.worker.returned.connect(self._on_completed)
        self.worker.errored.connect(self._on_error)
        self.worker.paused.connect(self._paused)
        self.worker.resumed.connect(self._resumed)
        # not a method of the dock: a closed dock must still close the generator (which saves the model)
        self.worker.aborted.connect(_closer(self._generator, self, job, self.session))
        self.worker.aborted.connect(self._aborted)
        self.worker.finished.connect(self._worker_finished)
        self._outcome = ""
        self._set_running(True)
        start_worker(self.worker, self)
        return self.worker

    def suggest(self) -> Any:
        """Start computing the regions to annotate next (with the "start from" model, else the session's) in a
        worker; they appear as a Shapes layer of rectangles. Returns the worker, or None after a notification."""
        image_layer = self.image_combo.value
        try:
            bundle = self._base_bundle() or self.session.bundle
            if bundle is None:
                raise LayerProblem("No model to ask: choose a model to start from (or train one first)")
            if image_layer is None:
                raise LayerProblem("No image layer: open the image to annotate")
            stack = plane_stack(image_layer, bundle.net.config.in_channels, self.viewer.layers)
            if stack.leading:
                raise LayerProblem("Suggestions are made for a single 2-D image, not a stack")
            device = select_device(self.device_combo.currentText())
        except (LayerProblem, ValueError) as error:
            show_error(str(error))
            return None
        labels_layer = self.labels_combo.value
        annotated = None
        if labels_layer is not None and np.shape(labels_layer.data) == stack.shape:
            annotated = np.asarray(labels_layer.data) > 0
        self.suggest_button.setEnabled(False)
        self.status.setText("Finding where the model is least sure…")
        worker = create_worker(
            suggest_annotation,
            bundle,
            np.asarray(stack.plane(()), dtype=np.float32),
            annotated,
            device=device,
            _ignore_errors=True,
            _start_thread=False,
        )
        worker.returned.connect(lambda boxes: alive(self) and self._show_suggestions(image_layer, stack, boxes))
        worker.errored.connect(lambda error: alive(self) and self._suggest_failed(error))
        start_worker(worker, self)
        return worker

    def _show_suggestions(self, image_layer: Any, stack: Any, boxes: list[tuple[int, int, int, int]]) -> None:
        self.suggest_button.setEnabled(True)
        rectangles = [np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float) for y0, x0, y1, x1 in boxes]
        if self.suggestions_layer is not None and self.suggestions_layer in self.viewer.layers:
            self.viewer.layers.remove(self.suggestions_layer)
        self.suggestions_layer = self.viewer.add_shapes(
            rectangles,
            shape_type="rectangle",
            name="annotate here",
            edge_color="yellow",
            face_color="transparent",
            edge_width=2,
            scale=stack.spatial(image_layer.scale),
            translate=stack.spatial(image_layer.translate),
        )
        self.status.setText(
            f"{len(boxes)} region(s) to annotate next: paint the cells in the yellow boxes"
            if boxes
            else "No uncertain region found away from the annotations"
        )
        self.suggested.emit(boxes)

    def _suggest_failed(self, error: Exception) -> None:
        self.suggest_button.setEnabled(True)
        show_error(f"Cannot suggest regions: {error}")

    def toggle_pause(self) -> None:
        if self.worker is not None:
            self.worker.toggle_pause()

    def stop(self) -> None:
        """Stop at the next step; the model of the last completed step is saved and kept in the session."""
        if self.worker is not None:
            self.status.setText("Stopping after the current step…")
            self.worker.quit()

    def save_model_to(self, path: str | Path) -> Path | None:
        bundle = self.session.bundle
        if bundle is None:
            show_error("No model to save yet: train one first (or load one)")
            return None
        if self.session.training:
            show_warning("Training is running: the model is autosaved at the end and at Stop")
            return None
        try:
            saved = save_model(path, bundle)
        except (OSError, ValueError) as error:
            show_error(f"Cannot save the model: {error}")
            return None
        self.session.set_model(bundle, saved)
        show_info(f"Model saved to {saved}")
        return saved

    def load_model_from(self, path: str | Path) -> bool:
        """Load a model folder into the session (it becomes the Segment dock's model and a starting point)."""
        if not self.session.load_model(path):
            return False
        self.start_combo.setCurrentText(START_SESSION)
        return True

    def restore_annotations(self) -> Any:
        """Open the autosaved annotations offered for the last opened image, as a Labels layer."""
        if self.offered_annotations is None:
            return None
        image_path, labels_path = self.offered_annotations
        try:
            labels = _autosave.load_annotations(labels_path)
        except (OSError, ValueError) as error:
            show_error(f"Cannot read the autosaved annotations {labels_path}: {error}")
            return None
        layer = self.viewer.add_labels(labels, name=f"{image_path.stem} annotations")
        self.restore_button.hide()
        self.offered_annotations = None
        self.labels_combo.reset_choices()
        self.labels_combo.value = layer
        return layer

    def update_estimate(self) -> Any:
        """Measure a training step of the chosen network on the chosen device in a worker (once per setting)."""
        key = self._estimate_setting()
        if key is None:
            self.estimate_label.setText("")
            return None
        self._estimate_key = key
        if key in self.step_seconds:
            self._show_estimate()
            return None
        config, tile, batch, device = key
        self.estimate_label.setText(f"{describe_device(select_device(device))}: measuring a training step…")
        if self._estimate_worker is not None:
            self._estimate_worker.quit()  # superseded
        worker = generator_worker(measure_steps(config, tile, batch, device))
        worker.returned.connect(lambda seconds: alive(self) and self._estimated(key, seconds))
        worker.errored.connect(
            lambda error: alive(self) and self.estimate_label.setText(f"cannot measure a step: {error}")
        )
        self._estimate_worker = worker
        start_worker(worker, self)
        return worker

    # -- preparing a run (main thread: copies of the layers, cheap) ------------------------------------------

    def _prepare_job(self) -> tuple[TrainingJob, np.ndarray]:
        image_layer, labels_layer = self.image_combo.value, self.labels_combo.value
        if image_layer is None:
            raise LayerProblem("No image layer: open the image to train on")
        if labels_layer is None:
            raise LayerProblem("No Labels layer: add one (Layers > New Labels layer) and paint a few cells")
        start = self.start_combo.currentText()
        if start == START_SESSION and self.session.bundle is None:
            raise LayerProblem("The session has no model yet: start from a new model or load one")
        if start == START_FILE and self.start_bundle is None:
            raise LayerProblem("No saved model chosen: pick 'a saved model…' again to choose its folder")
        base = self._base_bundle()
        layers = self.viewer.layers
        chosen = self.channel_fields.choice()
        if base is not None and chosen.is_identity:
            chosen = base.channels  # the channels the model was trained on
        if base is not None:
            channels = base.net.config.in_channels
        else:
            channels = chosen.output_channels(channels_of(image_layer, layers))
        stack = plane_stack(image_layer, channels, layers, chosen)
        check_layer_pair(image_layer, labels_layer)
        labels_all = np.asarray(labels_layer.data)
        if labels_all.dtype.kind not in "iu":
            raise LayerProblem(f"'{labels_layer.name}' must hold integer labels, got {labels_all.dtype}")
        if labels_all.shape != stack.output_shape():
            if labels_all.ndim == 2 and stack.leading:
                raise LayerProblem(
                    f"'{image_layer.name}' is a stack of {len(stack.planes)} planes (shape "
                    f"{tuple(layer_data(image_layer).shape)}) but the annotations are one 2-D plane: annotate on "
                    f"a Labels layer of shape {stack.output_shape()}, or train on a single 2-D image"
                )
            raise LayerProblem(
                f"the annotations '{labels_layer.name}' have shape {labels_all.shape}, the image needs "
                f"{stack.output_shape()}"
            )
        region = self._region_mask(stack.shape)
        images, labels, masks = [], [], []
        for index in stack.planes:
            plane_labels = labels_all[index] if index else labels_all
            if not plane_labels.any():
                continue
            few_shot = base is not None and base.object_diameter is not None
            if region is not None:
                mask = region
            elif self.whole_check.isChecked():
                mask = np.ones(plane_labels.shape, bool) if few_shot else None
            else:  # the few-shot recipe has its own margin, in object diameters
                mask = None if few_shot else mask_around_cells(plane_labels, self.margin_spin.value())
            images.append(np.asarray(stack.plane(index), dtype=np.float32))
            labels.append(plane_labels.copy())
            masks.append(mask)
        if not images:
            raise LayerProblem(
                f"No annotations in '{labels_layer.name}': paint a few cells (each with its own label) first"
            )
        net_config, config = preset(self.preset_combo.currentText(), **self._train_overrides())
        if self.session.augment is not None:
            config = replace(config, augment=self.session.augment)
        if base is None:
            with torch.random.fork_rng():  # a new network's weights follow the run's seed, as its training does
                torch.manual_seed(config.seed)
                net = UNet(net_config, in_channels=channels, **self.net_overrides)
            normalization, postprocess = Normalization(), None
        else:
            net, normalization, postprocess = base.net, base.normalization, base.postprocess
            if start == START_FILE:
                self.session.set_model(base, self.start_path)
        checkpoint = _autosave.model_folder(self.autosave_root, image_layer.name)
        job = TrainingJob(
            images,
            labels,
            masks,
            net,
            config,
            normalization,
            postprocess,
            self.device_combo.currentText(),
            checkpoint,
            channels=chosen,
        )
        if base is not None and base.object_diameter is not None:
            if len(images) > 1:
                raise LayerProblem(
                    f"{len(images)} planes are annotated: fine-tuning a model with an object size (the built-in) "
                    "uses one annotated plane; keep the annotations of one plane, or start from a new network"
                )
            job.few_shot, job.base = FewShotConfig(seconds=config.time_budget, iterations=config.iterations), base
        select_device(job.device)  # an unavailable device is a notification now, not a worker error
        return job, labels_all

    def _train_overrides(self) -> dict[str, Any]:
        iterations = self.iterations_spin.value()
        defaults = PRESETS[self.preset_combo.currentText()][1]
        every = max(1, min(defaults.validate_every, iterations // 10 or 1))
        budget = self.budget_spin.value() * 60.0 or None
        return {
            "iterations": iterations,
            "validate_every": every,
            "checkpoint_every": max(every, min(defaults.checkpoint_every, iterations)),
            "time_budget": budget,
            **self.train_overrides,
        }

    def _region_mask(self, shape: tuple[int, int]) -> np.ndarray | None:
        layer = self.region_combo.value
        if layer is None:
            return None
        if isinstance(layer, Shapes):
            if not len(layer.data):
                raise LayerProblem(f"the region layer '{layer.name}' has no shapes: draw the annotated region")
            masks = np.asarray(layer.to_masks(mask_shape=shape))
            mask = masks.reshape(-1, *shape).any(axis=0)
        else:
            data = np.asarray(layer.data)
            if data.shape[-2:] != tuple(shape) or data.ndim != 2:
                raise LayerProblem(f"the region layer '{layer.name}' must be a 2-D layer of shape {shape}")
            mask = data != 0
        if not mask.any():
            raise LayerProblem(f"the region layer '{layer.name}' is empty")
        return mask

    def _autosave_annotations(self, labels: np.ndarray) -> None:
        image_layer = self.image_combo.value
        source = getattr(getattr(image_layer, "source", None), "path", None)
        try:
            self.annotations_path = _autosave.save_annotations(labels, self.autosave_root, source, image_layer.name)
        except (OSError, ValueError) as error:
            show_warning(f"Could not autosave the annotations: {error}")

    # -- slots (main thread) --------------------------------------------------------------------------------

    def _on_event(self, event: TrainEvent) -> None:
        history = self.history
        if event.kind == "step":
            history.losses.append((event.iteration, event.loss))
            self.plot.add_loss(event.iteration, event.loss)
            self.progress.setValue(event.iteration)
            left = event.elapsed / max(event.iteration, 1) * (event.total - event.iteration)
            self.status.setText(
                f"iteration {event.iteration}/{event.total}, loss {event.loss:.4f}, "
                f"{format_duration(event.elapsed)} elapsed, about {format_duration(left)} left"
            )
        elif event.kind == "calibration":
            self.status.setText(
                f"iteration {event.iteration}: fitting the outlines of the post-processing to the annotated cells…"
            )
        elif event.kind == "validation" and event.val_score is not None:
            history.scores.append((event.iteration, event.val_score))
            self.plot.add_score(event.iteration, event.val_score)

    def _on_completed(self, folder: Path) -> None:
        self._outcome = "done"
        self._finish(folder, stopped=False)

    def _aborted(self) -> None:
        self._outcome = "stopping"

    def _worker_finished(self) -> None:
        """A Stop that came after the last step: the run is complete but no result was emitted."""
        if not self._outcome and self.job is not None:
            self._finish(self.job.checkpoint, stopped=True)

    def _stopped(self) -> None:
        """The training generator was closed after a Stop: its last completed step is saved."""
        self._generator = None
        self._finish(self.job.checkpoint if self.job else None, stopped=True)

    def _paused(self) -> None:
        self.pause_button.setText("Resume")
        self.status.setText(self.status.text() + " (paused)")

    def _resumed(self) -> None:
        self.pause_button.setText("Pause")

    def _on_error(self, error: Exception) -> None:
        self._outcome = "failed"
        self._set_running(False)
        self.worker = None
        self.session.training = False
        show_error(f"Training failed: {error}")
        self.status.setText(f"Failed: {error}")

    def _finish(self, folder: Path | None, stopped: bool) -> None:
        self.worker = None
        self.session.training = False
        self._set_running(False)
        trainer = self.job.trainer if self.job is not None else None
        if trainer is None or trainer.iteration == 0:
            self.status.setText("Stopped before the first step: nothing to keep")
            return
        saved = folder if folder is not None and (Path(folder) / "config.json").is_file() else None
        self.history.saved_to, self.history.stopped = saved, stopped
        self.session.set_model(trainer.bundle(), saved)
        self.start_combo.setCurrentText(START_SESSION)
        verb = "Stopped" if stopped else "Done"
        self.status.setText(f"{verb} at iteration {trainer.iteration}; model saved to {saved}")
        show_info(f"Training {verb.lower()}: the model is in the Segment dock and saved to {saved}")
        self.finished.emit(saved)

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.pause_button.setEnabled(running)
        self.stop_button.setEnabled(running)
        self.save_button.setEnabled(not running)
        self.load_button.setEnabled(not running)
        self.pause_button.setText("Pause")

    def _show_model(self, _bundle: Any = None) -> None:
        if not alive(self):  # the session and the viewer outlive a closed dock
            return
        self.model_label.setText("model: " + self.session.describe_model())

    def _start_choice_changed(self, text: str) -> None:
        if text == START_FILE and self.start_bundle is None:
            path = QFileDialog.getExistingDirectory(self, "Model folder to start from")
            if not path:
                self.start_combo.setCurrentText(START_NEW)
                return
            try:
                self.start_bundle, self.start_path = load_model(path), Path(path)
            except (OSError, ValueError) as error:
                show_error(f"Cannot load the model: {error}")
                self.start_combo.setCurrentText(START_NEW)
                return
        base = self._base_bundle()
        if base is not None and base.object_diameter is not None and not self.budget_spin.value():
            self.budget_spin.setValue(FewShotConfig().seconds / 60)  # the few-shot recipe's minute
        self.update_estimate()

    def _preset_changed(self, name: str) -> None:
        self.iterations_spin.setValue(PRESETS[name][1].iterations)
        self.update_estimate()

    def _base_bundle(self) -> ModelBundle | None:
        """The model the chosen "start from" names (None: a new network)."""
        start = self.start_combo.currentText()
        if start == START_BUILTIN and self.builtin_bundle is None:
            self.builtin_bundle = load_model(builtin.path(BUILTIN_MODEL))
        return {
            START_SESSION: self.session.bundle,
            START_FILE: self.start_bundle,
            START_BUILTIN: self.builtin_bundle,
        }.get(start)

    def _estimate_setting(self) -> tuple | None:
        base = self._base_bundle()
        net_config, config = PRESETS[self.preset_combo.currentText()]
        if base is not None:
            net_config = base.net.config
        elif self.net_overrides:
            net_config = UNetConfig.from_dict({**net_config.to_dict(), **self.net_overrides})
        config = replace(config, **self.train_overrides)
        return (net_config, config.tile_size, config.batch_size, self.device_combo.currentText())

    def _estimated(self, key: tuple, seconds: float) -> None:
        self.step_seconds[key] = seconds
        self._show_estimate()
        self.estimated.emit(seconds)

    def _show_estimate(self) -> None:
        key = self._estimate_key
        if key is None or key not in self.step_seconds:
            return
        seconds = self.step_seconds[key]
        total = seconds * self.iterations_spin.value()
        budget = self.budget_spin.value() * 60.0
        if budget:
            total = min(total, budget)
        self.estimate_label.setText(
            f"{describe_device(select_device(key[3]))}: {seconds:.2f} s per step (measured), "
            f"about {format_duration(total)} for this run"
        )

    def _layer_added(self, event: Any) -> None:
        if not alive(self):
            return
        layer = event.value
        path = getattr(getattr(layer, "source", None), "path", None)
        if not isinstance(layer, Image) or not path or _autosave.is_annotation_file(path):
            return
        found = _autosave.find_annotations(path, self.autosave_root)
        if found is None:
            return
        self.offered_annotations = (Path(path), found)
        self.restore_button.setText(f"Restore the autosaved annotations of {Path(path).name}")
        self.restore_button.show()
        show_info(
            f"Autosaved annotations for {Path(path).name} found ({found.name}): click 'Restore' in the Fine-tune dock"
        )

    def _ask_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the model as a folder")
        if path:
            self.save_model_to(path)

    def _ask_load(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Model folder (config.json + weights.safetensors)")
        if path:
            self.load_model_from(path)

    def _ask_autosave_root(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Autosave folder", str(self.autosave_root))
        if path:
            self.autosave_root = Path(path)
            self.autosave_label.setText(f"autosave: {self.autosave_root}")
