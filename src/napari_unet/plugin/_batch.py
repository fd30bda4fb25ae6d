"""Batch dock: a folder of images or a large zarr segmented in the background on dask.distributed.

The work (`jobs.batch.run_batch`) runs in a worker thread: it starts a LocalCluster of worker processes (or
connects to a cluster's scheduler) and yields one `BatchProgress` per finished file or block; the main thread
only moves the progress bar. Results are written to the output folder as `predict --workers` writes them;
images segmented block by block (OME-Zarr labels) are then opened lazily, as dask-backed Labels layers, so a
whole slide opens in a moment and napari reads only what it shows. A folder of small images is not opened
(it may hold thousands); the status line says where the results are. The outputs of an earlier run written into
the input folder are not inputs: a notification names them (`pipeline.list_inputs`), as `predict` notes them.

As `predict --workers`: the images are segmented at their own scale, so a model with an object diameter runs only
when the dock's object diameter is the model's (`distributed.check_scale`); finished results are skipped, and
"overwrite" (not remembered: it is a decision for one run) segments them again. Cancel, the dock's 'x' and closing
the window stop the run at once: the tasks not finished are cancelled, the finished ones stay for a rerun.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QFileDialog, QLineEdit, QPushButton, QWidget

from napari_unet.device import available_devices
from napari_unet.jobs.batch import batch_outputs, run_batch
from napari_unet.pipeline import describe_own_outputs, list_inputs

from ._form import ModelRow, RunControls, check, choice, dock_layout, form, row, spin
from ._layers import METADATA_KEY
from ._settings import Remembered
from ._state import Session, session_for
from ._workers import generator_worker, start_worker, stop_when_closed

LOCAL, CLUSTER = "local workers", "cluster (scheduler address)"


class BatchWidget(QWidget):
    """Segment a folder or a zarr with the session's model on local worker processes or a cluster.

    `finished` is emitted with the list of layers opened (possibly empty) when a run ends without error.
    """

    finished = Signal(object)

    def __init__(self, napari_viewer: Any, session: Session | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.session = session or session_for(napari_viewer)
        self.worker: Any = None
        self.events: list[Any] = []  # BatchProgress events of the last run, or the error that ended it
        self.cut_objects = 0
        self.margin = 0  # of the last run
        self.inputs: list[Path] = []
        self.out = Path()
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

        self.model_row = ModelRow(self, self.session)
        self.input_edit = QLineEdit()
        self.input_edit.setPlaceholderText("a folder of images, or a .zarr")
        self.folder_button = QPushButton("Folder…")
        self.zarr_button = QPushButton("Zarr…")
        self.output_edit = QLineEdit()
        self.output_edit.setPlaceholderText("folder for the results")
        self.output_button = QPushButton("…")
        self.where_combo = choice([LOCAL, CLUSTER])
        self.workers_spin = spin(1, 256, max(1, min(2, cores)), tooltip="Worker processes on this machine")
        self.address_edit = QLineEdit()
        self.address_edit.setPlaceholderText("tcp://scheduler:8786")
        self.device_combo = choice(available_devices())
        self.block_spin = spin(
            64, 16384, 1024, step=256, tooltip=("Side of the blocks of a large image (rounded up to whole tiles)")
        )
        self.margin_spin = spin(
            0,
            4096,
            128,
            step=16,
            tooltip=("Pixels of context around a block for the post-processing: more than the largest cell"),
        )
        self.diameter_spin = spin(
            0.0,
            1000.0,
            0.0,
            decimals=1,
            special="not given",
            suffix=" px",
            tooltip=(
                "Diameter of the objects in the images. The batch segments them at their own scale: a model with "
                "an object diameter runs only when this is its diameter (the Segment dock rescales)"
            ),
        )
        self.overwrite_box = check(
            "overwrite finished results",
            tooltip=(
                "Segment again the inputs whose results are in the output folder (a rerun skips them, and refuses "
                "results written with another model or other settings)"
            ),
        )
        self.controls = RunControls(("Run", self.run), ("Cancel", self.cancel))
        self.progress, self.status = self.controls.progress, self.controls.status
        dock_layout(
            self,
            form(
                *self.model_row.rows(),
                ("input", self.input_edit),
                ("", row(self.folder_button, self.zarr_button)),
                ("output", row(self.output_edit, self.output_button, stretch=(1, 0))),
                ("run on", self.where_combo),
                ("workers", self.workers_spin),
                ("address", self.address_edit),
                ("device", self.device_combo),
                ("block (px)", self.block_spin),
                ("margin (px)", self.margin_spin),
                ("object diameter", self.diameter_spin),
                ("", self.overwrite_box),
            ),
            *self.controls.items(),
            None,
        )
        self.folder_button.clicked.connect(lambda: self._ask_folder(self.input_edit, "Folder of images"))
        self.zarr_button.clicked.connect(lambda: self._ask_folder(self.input_edit, "A .zarr image"))
        self.output_button.clicked.connect(lambda: self._ask_folder(self.output_edit, "Folder for the results"))
        self.where_combo.currentTextChanged.connect(self._show_where)
        self.settings = Remembered(
            "batch",
            {
                "run_on": self.where_combo,
                "workers": self.workers_spin,
                "address": self.address_edit,
                "device": self.device_combo,
                "block": self.block_spin,
                "margin": self.margin_spin,
            },
        )
        self._show_where()
        stop_when_closed(self, self.cancel)  # the dock's 'x' does not destroy it: the run would go on unseen

    def run(self) -> Any:
        """Start the batch; returns the worker, or None after a notification."""
        if self.worker is not None:
            show_warning("A batch is already running: cancel it first")
            return None
        bundle = self.session.bundle
        if bundle is None:
            show_error("No model: train one in the Fine-tune dock or load a saved model folder (Load model…)")
            return None
        if self.session.training:  # its weights may be changing under the batch (as the Segment dock refuses too)
            show_warning("The model is being trained: wait for the end of the run (or stop it), then run the batch")
            return None
        inputs, out = self.input_edit.text().strip(), self.output_edit.text().strip()
        if not inputs or not Path(inputs).exists():
            show_error(f"No input at {inputs!r}: choose a folder of images or a .zarr")
            return None
        if not out:
            show_error("No output folder: choose where the results go")
            return None
        address = self.address_edit.text().strip() if self.where_combo.currentText() == CLUSTER else None
        if self.where_combo.currentText() == CLUSTER and not address:
            show_error("No scheduler address: give one (tcp://host:8786) or run on local workers")
            return None
        try:  # an earlier run's outputs written into the input folder are no inputs: named, left out
            files, own = list_inputs([Path(inputs)])
        except (OSError, ValueError) as error:
            show_error(str(error))
            return None
        if own:
            show_info(describe_own_outputs(own))
        workers = None if address else int(self.workers_spin.value())
        self.inputs, self.out, self.margin = files, Path(out), int(self.margin_spin.value())
        self.events, self.cut_objects = [], 0
        self.controls.begin(0, f"starting {workers} local worker(s)…" if workers else f"connecting to {address}…")
        job = run_batch(
            bundle,
            self.inputs,
            self.out,
            address=address,
            workers=workers,
            block_size=int(self.block_spin.value()),
            margin=self.margin,
            device=self.device_combo.currentText(),
            diameter=float(self.diameter_spin.value()) or None,
            overwrite=self.overwrite_box.isChecked(),
            # any quit (Cancel, the dock destroyed, the exit hook) is seen while the job waits for its tasks
            stopped=lambda: worker.abort_requested,
        )
        worker = self.worker = generator_worker(job, close_when_done=False)
        # a job stopped at a `yield` is left open: closed in a thread (its cluster shuts down there, not in the GUI)
        self.worker.finished.connect(_closer(job))
        # the model is in use until the worker ends: Fine-tune waits (as it does for the Segment dock)
        self.worker.finished.connect(self.session.hold())
        self.worker.yielded.connect(self._progressed)
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._finished)
        start_worker(self.worker, self)
        return self.worker

    def cancel(self) -> None:
        """Stop now, even while every task is still running or waiting for a worker: the remaining tasks are
        cancelled; a rerun resumes where this one stopped."""
        if self.worker is not None:
            self.status.setText("stopping…")
            self.worker.quit()

    # -- worker signals (main thread) -------------------------------------------------------------------------

    def _progressed(self, event: Any) -> None:
        self.events.append(event)
        self.cut_objects += event.cut_objects
        self.progress.setRange(0, event.total)
        self.progress.setValue(event.done)
        self.status.setText(f"{event.done}/{event.total}: {event.item}")

    def _failed(self, error: BaseException) -> None:
        self.events.append(error)
        text = f"Batch segmentation failed: {error}"
        if "--overwrite" in str(error):  # the refusal of `predict`'s outputs, which names its option
            text += " (in this dock: tick 'overwrite finished results')"
        show_error(text)

    def _finished(self) -> None:
        self.worker = None
        self.controls.running(False)
        if self.events and isinstance(self.events[-1], BaseException):
            self.status.setText(f"failed: {self.events[-1]}")
            return
        done = bool(self.events) and self.events[-1].done == self.events[-1].total
        layers = self._open_results() if done else []
        text = f"{'finished' if done else 'stopped (run again to resume)'}: results in {self.out}"
        if self.cut_objects:
            text += (
                f"; {self.cut_objects} object(s) reached the edge of a block's margin and may be labelled differently "
                f"from a single-process run: run again with a margin larger than the largest object (now {self.margin} "
                "px), with 'overwrite'"
            )
            show_warning(text)
        self.status.setText(text)
        if done:
            show_info(f"Batch segmentation finished: results in {self.out}")
        self.finished.emit(layers)

    def _open_results(self) -> list[Any]:
        """The finished OME-Zarr labels as dask-backed Labels layers, at the pixel size they were written with
        (scale, units, and the pixel size the Measure dock reports physical units with), made from their image."""
        from napari_unet.metadata import StackSpacing, read_pixel_size
        from napari_unet.pipeline import read_input

        from ._reader import calibrated_placement

        layers = []
        for path in batch_outputs(self.inputs, self.out):
            labels, axes = read_input(path)  # lazy (dask)
            pixel_size = read_pixel_size(path)
            name = path.name.removesuffix(".ome.zarr")
            made = {"made_from": name.removesuffix("_labels")}  # a segmentation: no annotations
            if pixel_size is not None:
                made["pixel_size"] = pixel_size.to_dict()
            placement = calibrated_placement(axes, pixel_size, StackSpacing())
            layers.append(self.viewer.add_labels(labels, name=name, metadata={METADATA_KEY: made}, **placement))
        return layers

    # -- helpers ----------------------------------------------------------------------------------------------

    def _show_where(self, _text: str = "") -> None:
        cluster = self.where_combo.currentText() == CLUSTER
        self.workers_spin.setEnabled(not cluster)
        self.address_edit.setEnabled(cluster)

    def _ask_folder(self, edit: QLineEdit, title: str) -> None:
        path = QFileDialog.getExistingDirectory(self, title)
        if path:
            edit.setText(path)


def _closer(job: Any) -> Any:
    """The `finished` slot of a batch worker: closes the job in another thread (a no-op for a job that ended), so
    that a cluster shutting down never freezes the window; not a method: it must run for a closed dock too."""

    def close() -> None:
        start_worker(create_worker(job.close, _ignore_errors=True, _start_thread=False))

    return close
