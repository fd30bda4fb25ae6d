"""Fine-tune dock: train the U-Net on an image layer and a Labels layer of (possibly a few) annotated cells.

Everything slow happens in a worker thread: the training samples are normalised and their weight maps
computed there (`jobs.finetune.run_training` builds the `Trainer`), then each `TrainEvent` of `Trainer.run()` is yielded to
the main thread, which only moves the progress bar and adds a point to the loss plot.

Stopping: napari's `worker.quit()` (the Stop button, or the status bar's cancel) ends the worker loop without
closing the generator, so the dock closes it afterwards in another worker: the trainer's `finally` then saves
the last completed step to the autosave folder, off the main thread.

Start from (`_start_from`): the built-in `nuclei` model (the default when installed), a new network, the session's
model or a saved one. A model with an object diameter (the built-in) is fine-tuned with the few-shot recipe
(`napari_unet.fewshot`): the image and the painted cells are rescaled by model diameter / median diameter of the
painted cells, for the dock's time budget (1 minute by default).

Its parts: the time estimate (`_estimate`), "Suggest where to annotate" (`_suggest`), the autosave folder and
the restoring of autosaved annotations (`_autosave_row`); a run is prepared by `jobs.finetune`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels, Shapes
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QWidget

from napari_unet.channels import ChannelChoice
from napari_unet.device import available_devices, describe_device, select_device
from napari_unet.fewshot import FewShotConfig
from napari_unet.jobs.finetune import (
    DEFAULT_MARGIN,
    TrainingJob,
    annotated_planes,
    describe_step,
    expected_iterations,
    run_config,
    run_progress,
    run_training,
    step_setting,
    training_job,
)
from napari_unet.training import PRESETS, CheckpointNotSaved, TrainEvent

from ._autosave_row import AutosaveRow
from ._channels import ChannelFields
from ._estimate import StepEstimate
from ._form import DurationSpin, ModelRow, RunControls, check, choice, dock_layout, form, row, spin
from ._layers import (
    LayerPicker,
    LayerProblem,
    annotations_of,
    channels_of,
    is_original_image,
    is_users_labels,
    layer_combo,
    plane_stack,
    region_mask,
)
from ._plot import LossPlot
from ._settings import Remembered
from ._start_from import START_FILE, START_SESSION, StartFrom
from ._state import Session, TrainingRun, session_for
from ._suggest import Suggestions
from ._workers import alive, generator_worker, start_worker, stop_when_closed

PROGRESS_STEPS = 1000  # the bar counts thousandths of the run: of its iterations or of its time budget


def _released(worker: Any, widget: QWidget, job: TrainingJob, session: Session):
    """The `finished` slot of a training worker that does not belong to the dock: a dock closed during the last
    step (its worker then ends without `aborted`, and the dock's own slots are gone) still frees the session and
    makes the trained model the session's, as `_closer` does after a Stop."""
    ended: list[str] = []  # "aborted": `_closer` keeps the stopped model once saved; "errored": half a step
    worker.aborted.connect(lambda: ended.append("aborted"))
    worker.errored.connect(
        lambda error: ended.extend(["errored", *(["not saved"] if isinstance(error, CheckpointNotSaved) else [])])
    )

    def finished() -> None:
        if alive(widget) or "aborted" in ended:  # the dock's own slots, or `_closer`
            return
        if "errored" in ended and "not saved" not in ended:
            session.training = False  # the failed run's weights are not kept
            return
        _keep_in_session(job, session)

    return finished


def _keep_in_session(job: TrainingJob, session: Session) -> None:
    """A run whose dock is gone: free the session and make the trained model (saved or not) the session's."""
    session.training = False
    if job.trainer is not None and job.trainer.iteration > 0:
        session.set_model(job.trainer.bundle(), job.checkpoint if job.trainer.saved else None)


def _closer(generator: Iterator[TrainEvent], widget: QWidget, job: TrainingJob, session: Session):
    """The `aborted` slot of a training worker: napari's quit() leaves the generator open, so close it in
    another worker (the trainer's `finally` saves the model there), then tell the dock; if the dock was closed
    meanwhile (which quits its worker), keep the model in the session all the same."""

    def closed() -> None:
        if alive(widget):
            widget._stopped()
        else:
            _keep_in_session(job, session)

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
        self.net_overrides = dict(net_overrides or {})
        self.train_overrides = dict(train_overrides or {})
        self.worker: Any = None
        self.job: TrainingJob | None = None
        self.history: TrainingRun | None = None
        self._generator: Iterator[TrainEvent] | None = None
        self._outcome = ""  # how the training worker ended: "done", "stopping", "failed"

        self.image_combo = layer_combo(napari_viewer, Image, "image")
        self.image_picker = LayerPicker(self.image_combo, follows=is_original_image)
        self.labels_combo = layer_combo(
            napari_viewer, Labels, "annotations", optional="(none: add a Labels layer and paint a few cells)"
        )
        self.labels_picker = LayerPicker(self.labels_combo, follows=is_users_labels)
        self.region_combo = layer_combo(
            napari_viewer, (Shapes, Labels), "region", optional="(none: around the annotated cells)"
        )
        self.whole_check = check("every cell in the image is annotated")
        self.margin_spin = spin(
            1, 500, DEFAULT_MARGIN, tooltip="Only this much background around the annotated cells is trusted"
        )
        self.start_from = StartFrom(self, self.session, start_from, self._start_choice_changed)
        self.preset_combo = choice(list(PRESETS))
        self.iterations_spin = spin(1, 1_000_000, PRESETS["fast"][1].iterations)
        self.budget_spin = DurationSpin(100_000.0, 0.0, special="none")  # minutes, shown as "20 s", "5 min"
        self.device_combo = choice(available_devices())
        self.channel_fields = ChannelFields()
        self.estimate = StepEstimate(self, self.iterations_spin, self.budget_spin, self.estimated.emit)
        self.controls = RunControls(
            ("Start", self.start), ("Pause", self.toggle_pause), ("Stop", self.stop), status_lines=2
        )
        self.start_button, self.pause_button, self.stop_button = self.controls.buttons
        self.progress, self.status = self.controls.progress, self.controls.status
        stop_when_closed(self, self.stop)  # the dock's 'x' does not destroy it: training would go on out of sight
        self.suggestions = Suggestions(self, napari_viewer, self.status, self.suggested.emit)
        self.plot = LossPlot()
        self.model_row = ModelRow(self, self.session, prefix="model: ", load=self.load_model_from, save=True)
        self.autosave = AutosaveRow(self, napari_viewer, autosave_root, self._restored)
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
                ("start from", self.start_from.combo),
                ("preset", self.preset_combo),
                ("iterations", self.iterations_spin),
                ("time budget", self.budget_spin),
                ("device", self.device_combo),
                ("", self.estimate.label),
            ),
            self.controls.row,
            self.suggestions.button,
            self.progress,
            (self.plot, 1),
            self.status,
            self.model_row.label,
            row(self.model_row.save_button, self.model_row.load_button),
            self.autosave.row(),
            self.autosave.restore_button,
        )

        self.suggestions.button.clicked.connect(self.suggest)
        self.preset_combo.currentTextChanged.connect(self._preset_changed)
        self.device_combo.currentTextChanged.connect(lambda _text: self.update_estimate())
        self.session.model_loaded.connect(self._model_loaded)
        self.whole_check.toggled.connect(lambda checked: self.margin_spin.setEnabled(not checked))
        self.settings = Remembered(  # the preset before the iterations it sets
            "finetune",
            {
                "margin": self.margin_spin,
                "preset": self.preset_combo,
                "iterations": self.iterations_spin,
                "time_budget_minutes": self.budget_spin,
                "device": self.device_combo,
            },
        )
        self._set_running(False)
        self.reset_choices()
        self.start_from.refresh()

    # -- public ---------------------------------------------------------------------------------------------

    def reset_choices(self, _event: Any = None) -> None:
        """Refresh the pickers (napari calls this when layers change): until the user chooses an image, one opened or
        added becomes the image to train on (as in the Segment dock); until the user chooses annotations, a Labels
        layer the user adds or opens (to paint in) becomes the annotations; not a segmentation the docks compute,
        whose uncorrected cells are no annotations."""
        self.image_picker.refresh()
        self.labels_picker.refresh()
        self.region_combo.reset_choices()

    def start(self) -> Any:
        """Start a run with the dock's settings; returns the worker, or None after a notification."""
        if self.worker is not None:
            show_warning("Training is already running")
            return None
        if self.session.busy:
            message = (
                "A segmentation (its uncertainty, a batch, or suggestions) is using the model: wait for it (or cancel "
                "it), then train"
            )
            show_warning(message)
            self.status.setText(f"Not started: {message}")  # a notification fades; the status line stays
            return None
        try:
            job, annotations = self._prepare_job()
        except (LayerProblem, ValueError) as error:
            show_error(str(error))
            self.status.setText(f"Not started: {error}")  # a notification fades; the status line stays
            return None
        self.autosave.save_annotations(annotations, self.image_combo.value)
        self.job = job
        self.history = TrainingRun()
        self.plot.clear(job.config.iterations)
        device = describe_device(select_device(job.device))
        self.controls.begin(PROGRESS_STEPS, f"Preparing {len(job.images)} image(s) on {device}…")
        self.session.training = True
        self._generator = run_training(job)
        # closed by _closer after a Stop, in a worker: closing saves the model
        # no napari progress bar (`_progress`): it runs processEvents() on every step, nesting event loops when
        # steps come fast; the dock's own bar and loss curve show the progress
        self.worker = generator_worker(self._generator, close_when_done=False)
        self.worker.yielded.connect(self._on_event)
        self.worker.returned.connect(self._on_completed)
        self.worker.errored.connect(self._on_error)
        self.worker.paused.connect(self._paused)
        self.worker.resumed.connect(self._resumed)
        # not a method of the dock: a closed dock must still close the generator (which saves the model)
        self.worker.aborted.connect(_closer(self._generator, self, job, self.session))
        self.worker.aborted.connect(self._aborted)
        self.worker.finished.connect(self._worker_finished)
        self.worker.finished.connect(_released(self.worker, self, job, self.session))
        self._outcome = ""
        self._set_running(True)
        start_worker(self.worker, self)
        return self.worker

    def suggest(self) -> Any:
        """Start computing the regions to annotate next (with the "start from" model, else the session's) in a
        worker; they appear as a Shapes layer of rectangles. Returns the worker, or None after a notification."""
        return self.suggestions.start(
            lambda: self.start_from.bundle() or self.session.bundle,
            self.image_combo.value,
            self.labels_combo.value,
            self.device_combo.currentText(),
            self.channel_choice,
        )

    def channel_choice(self, base: Any) -> ChannelChoice:
        """The channels box's choice, or, when it picks nothing, the channels the model `base` was trained on
        (its grey conversion for the built-in model: an RGB image is seen as its luminance)."""
        chosen = self.channel_fields.choice()
        return base.channels if base is not None and chosen.is_identity else chosen

    def toggle_pause(self) -> None:
        if self.worker is not None:
            self.worker.toggle_pause()

    def stop(self) -> None:
        """Stop at the next step; the model of the last completed step is saved and kept in the session."""
        if self.worker is not None:
            self.status.setText("Stopping after the current step…")
            self.worker.quit()

    def load_model_from(self, path: str | Path) -> bool:
        """Load a model folder into the session: it becomes the Segment dock's model and the one to start from
        (`_model_loaded`)."""
        return self.session.load_model(path)

    def update_estimate(self) -> Any:
        """Measure a training step of the chosen network on the chosen device in a worker (once per setting)."""
        return self.estimate.update(
            step_setting(
                self.start_from.bundle(),
                self.preset_combo.currentText(),
                self.device_combo.currentText(),
                self.net_overrides,
                self.train_overrides,
            )
        )

    # -- preparing a run (main thread: copies of the layers, cheap) ------------------------------------------

    def _prepare_job(self) -> tuple[TrainingJob, np.ndarray]:
        image_layer, labels_layer = self.image_combo.value, self.labels_combo.value
        if image_layer is None:
            raise LayerProblem("No image layer: open the image to train on")
        if labels_layer is None:
            raise LayerProblem("No Labels layer: add one (Layers > New Labels layer) and paint a few cells")
        self.start_from.check()
        base = self.start_from.bundle()
        layers = self.viewer.layers
        chosen = self.channel_choice(base)
        if base is not None:
            channels = base.net.config.in_channels
        else:
            channels = chosen.output_channels(channels_of(image_layer, layers))
        stack = plane_stack(image_layer, channels, layers, chosen)
        labels_all = annotations_of(labels_layer, image_layer, stack)
        images, labels, masks = annotated_planes(
            stack,
            labels_all,
            region=region_mask(self.region_combo.value, stack.shape, image_layer),
            margin=None if self.whole_check.isChecked() else self.margin_spin.value(),
            few_shot=base is not None and base.object_diameter is not None,
            name=f"'{labels_layer.name}'",
        )
        net_config, config = run_config(
            self.preset_combo.currentText(),
            self.iterations_spin.value(),
            self.budget_spin.seconds() or None,
            self.train_overrides,
            self.session.augment,
        )
        job = training_job(
            images,
            labels,
            masks,
            config,
            base=base,
            net_config=net_config,
            net_overrides=self.net_overrides,
            device=self.device_combo.currentText(),
            checkpoint=self.autosave.model_folder(image_layer.name),
            channels=chosen,
        )
        select_device(job.device)  # an unavailable device is a notification now, not a worker error
        if self.start_from.text() == START_FILE:  # only once the run starts: a refused one keeps the session's model
            self.session.set_model(base, self.start_from.saved_path)
        return job, labels_all

    # -- slots (main thread) --------------------------------------------------------------------------------

    def _on_event(self, event: TrainEvent) -> None:
        history = self.history
        if event.kind == "step":
            history.losses.append((event.iteration, event.loss))
            budget = self.job.config.time_budget  # the few-shot recipe's too (`training_job`)
            self.plot.total = expected_iterations(event, budget)
            self.plot.add_loss(event.iteration, event.loss)
            self.progress.setValue(round(PROGRESS_STEPS * run_progress(event, budget)))
            self.status.setText(describe_step(event, budget))
        elif event.kind == "calibration":
            self.status.setText(f"iteration {event.iteration}: fitting the post-processing to the annotations…")
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
        trainer = self.job.trainer if self.job is not None else None
        if isinstance(error, CheckpointNotSaved) and trainer is not None and trainer.iteration > 0:
            self.session.set_model(trainer.bundle(), None)  # trained: kept in memory, to be saved elsewhere
            self.start_from.choose(START_SESSION)
            message = f"{error}. The model is in the Segment dock: save it with 'Save model…'"
            show_warning(message)
            self.status.setText(message)
            return
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
        saved = folder if folder is not None and trainer.saved else None  # a folder may hold an older checkpoint
        self.history.saved_to, self.history.stopped = saved, stopped
        self.session.set_model(trainer.bundle(), saved)
        self.start_from.choose(START_SESSION)
        verb = "Stopped" if stopped else "Done"
        where = f"saved to {saved}" if saved is not None else "not saved: save it with 'Save model…'"
        self.status.setText(f"{verb} at iteration {trainer.iteration}; model {where}")
        show_info(f"Training {verb.lower()}: the model is in the Segment dock and {where}")
        self.finished.emit(saved)

    def _set_running(self, running: bool) -> None:
        self.controls.running(running)
        self.model_row.save_button.setEnabled(not running)
        self.model_row.load_button.setEnabled(not running)
        self.pause_button.setText("Pause")

    def _start_choice_changed(self) -> None:
        base = self.start_from.bundle()
        if base is not None and base.object_diameter is not None and not self.budget_spin.value():
            self.budget_spin.setValue(FewShotConfig().seconds / 60)  # the few-shot recipe's minute
        self.update_estimate()

    def _model_loaded(self, _bundle: Any) -> None:
        """The user loaded a model (Load model… in this dock or the Segment dock, a model folder dropped on the
        window): the next run starts from it, as the notification of the load says."""
        if not alive(self):  # the session outlives a closed dock
            return
        if self.start_from.text() == START_SESSION:
            self._start_choice_changed()  # the same choice, another network: its step is measured anew
        else:
            self.start_from.choose(START_SESSION)

    def _preset_changed(self, name: str) -> None:
        self.iterations_spin.setValue(PRESETS[name][1].iterations)
        self.update_estimate()

    def _restored(self, layer: Any, image: Any) -> None:
        """Autosaved annotations were opened as `layer`: they become the annotations to train on, with the
        `image` they annotate (another image opened since would have been trained on with them, and their
        annotations saved as that image's)."""
        self.labels_combo.reset_choices()
        self.labels_combo.value = layer
        if image is not None:
            self.image_combo.reset_choices()
            self.image_combo.value = image
