"""Segment dock: overlap-tile prediction in a worker thread, streamed tile by tile into a Labels layer.

The worker (`jobs.segment.stream_tiles`) yields one `TileUpdate` per finished tile: its foreground probability and a
preview labelling of the tile alone. The main thread only copies them into the layers' arrays and redraws the
tile's region of the Labels layer (`_redraw.TileDrawing`: colour mapping and texture upload of that region
alone); the probability layer, which napari can only redraw whole, gets a throttled refresh. So the window
stays responsive. When every tile is in, the stitched probability map is post-processed as a whole (in a
worker too), so cells cut by tile borders come out whole, and the result is redrawn band by band, one band per
turn of the event loop; the probability map is kept, so the post-processing can be retuned without
running the network again.

Object size: a model with an object diameter (the built-in `nuclei`) sees the image rescaled by model diameter /
object diameter (the dock's "object diameter": a value, or auto, estimated in a worker before the tiles start);
the layers keep the image's size (`jobs.segment.stream_tiles`). A new dock puts the built-in model in the session
when it has none, so Segment works right after an image is opened; with "segment each image as it opens" ticked,
every image opened or added from then on is segmented with the dock's settings, one after the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QWidget

from napari_unet.device import available_devices, describe_device, select_device
from napari_unet.jobs.segment import (
    TTA_ORIENTATIONS,
    Planes,
    PreviewLabels,
    TileUpdate,
    count_tiles,
    describe_scale,
    estimate_stack_diameter,
    labels_digest,
    postprocess_planes,
    retuned_config,
    stream_tiles,
    stream_uncertainty,
)
from napari_unet.modelfile import ModelBundle
from napari_unet.postprocess import PostprocessConfig
from napari_unet.scale import check_tta_size, scale_postprocess
from napari_unet.tiling import auto_stride

from ._channels import ChannelFields
from ._form import ModelRow, RunControls, check, choice, dock_layout, form, spin, wrapped_label
from ._layers import (
    ChannelGroup,
    LayerPicker,
    LayerProblem,
    channel_group,
    debounced,
    is_original_image,
    layer_combo,
    plane_stack,
    result_metadata,
)
from ._postprocess import PostprocessFields
from ._redraw import TileDrawing
from ._settings import Remembered
from ._state import Session, session_for
from ._workers import alive, generator_worker, start_worker

RETUNE_MS = 250  # post-processing reruns this long after the last change of its controls
DEFAULT_MODEL = "nuclei"  # the built-in model a new session starts with
# the fingerprint of labels painted while the tiles streamed: no array has it, so the result goes beside them
PAINTED_DURING_STREAM = b""


class SegmentWidget(QWidget):
    """Segment an image layer with the session's model, streaming tiles into a new Labels layer.

    `segmented` is emitted with the final labels array after the whole-image post-processing (also after a
    retune); `stopped` when the tile worker ends, finished or cancelled.
    """

    segmented = Signal(object)
    stopped = Signal()

    def __init__(self, napari_viewer: Any, session: Session | None = None, default_model: str | None = DEFAULT_MODEL):
        """default_model: the built-in model put in the session when it has none yet (None: none)."""
        super().__init__()
        self.viewer = napari_viewer
        self.session = session or session_for(napari_viewer)
        if default_model is not None and self.session.bundle is None:
            self.session.use_builtin(default_model)
        self.worker: Any = None
        self.factor = 1.0  # the image was resized by this before the network (model / object diameter)
        self._source: tuple | None = None  # (bundle, layer, stack, device) of the last run, for its uncertainty
        self._run_model: ModelBundle | None = None  # the model of the last run
        # the post-processing of the last run's result, at the image's size: the dock's as the run started (a model
        # loaded meanwhile applies to the next run), then as the user changes the controls
        self._postprocess: PostprocessConfig | None = None
        self.estimated_diameter: float | None = None  # the last "auto" estimate (None: no object found)
        self.labels_layer: Any = None
        self.probs_layer: Any = None
        self.probs_fg: np.ndarray | None = None  # (..., H, W) float32, kept for retuning
        self.labels: np.ndarray | None = None  # the Labels layer's array, written in place
        self.previews: PreviewLabels | None = None  # the tiles' writes into `labels`, to notice painting meanwhile
        self.planes: list[tuple[int, ...]] = []
        self.tiles_written = 0
        self._tta = False  # the run's test-time augmentation, as it started
        self.cancelled = False
        self.finished_run = False
        self._postprocess_runs = 0
        self._final_digest: bytes | None = None  # of the labels as the last result left them: edits are detected
        self._first_result = False  # the run's whole-image result is on its way (not a retune)

        self.image_combo = layer_combo(napari_viewer, Image, "image")
        self.image_picker = LayerPicker(self.image_combo, follows=is_original_image)
        self.model_row = ModelRow(self, self.session)
        self.tile_spin = spin(
            0,
            8192,
            0,
            step=16,
            special="auto",
            tooltip="Output tile side in pixels; 'auto' picks the largest that fits in memory",
        )
        self.device_combo = choice(available_devices())
        self.channel_fields = ChannelFields()
        self.diameter_spin = spin(0.0, 1000.0, 0.0, decimals=1, special="auto", suffix=" px")
        self.diameter_label = wrapped_label()
        self.probs_check = check("also show the probability map")
        self.uncertainty_check = check(
            "also show the uncertainty (4x the time)",
            tooltip=(
                "After segmenting, an 'uncertainty' layer: how much the model's answers disagree when the image is "
                "flipped (bright: unsure; annotate there, see Fine-tune's 'Suggest where to annotate')"
            ),
        )
        self.tta_check = check(
            "average 8 orientations (8x the time)",
            tooltip=(
                "Test-time augmentation: the image is predicted flipped and rotated in the 8 ways of a square and "
                "the probabilities averaged (as napari-unet predict --tta). Steadier maps, e.g. membranes in "
                "electron micrographs; each plane is shown once per orientation, and held in memory (whole "
                "slides: segment without it)"
            ),
        )
        self.on_open_check = check(
            "segment each image as it opens",
            tooltip=(
                "Every image opened or dropped on the window from now on is segmented with these settings, one "
                "after the other (not the maps the docks compute); Cancel also drops the images still waiting"
            ),
        )
        self._waiting: list[Any] = []  # images opened with the box ticked, not segmented yet
        self._busy = False  # a run is on, up to its result (post-processing and uncertainty included) or its end
        self._run_id = 0  # counts the runs whose tiles started, so that a late uncertainty knows its run
        self._latest_postprocess: dict[int, int] = {}  # run id: its latest `_PostprocessTarget.number`
        self._uncertainty_pending = False  # the current run's uncertainty is being computed: its result is not in
        self._uncertainty_workers: list[Any] = []  # running, of this run or an earlier one: Cancel stops them
        self._run_layers: list[Any] = []  # the image layers the last run reads (a file's channel layers, or one)
        self.uncertainty_layer: Any = None
        self.postprocess_fields = fields = PostprocessFields()
        # the controls as last shown or changed, over a default config: what the user changes is told from the rest
        self._shown_postprocess = fields.config(PostprocessConfig())
        self.controls = RunControls(("Run", self.run), ("Cancel", self.cancel))
        self.cancel_button = self.controls.buttons[1]
        self.progress, self.status = self.controls.progress, self.controls.status
        dock_layout(
            self,
            form(
                ("image", self.image_combo),
                *self.model_row.rows(),
                ("channels", self.channel_fields.edit),
                ("", self.channel_fields.grey),
                ("tile size", self.tile_spin),
                ("device", self.device_combo),
                ("object diameter", self.diameter_spin),
                ("", self.diameter_label),
                ("", self.probs_check),
                ("", self.tta_check),
                ("", self.uncertainty_check),
                ("", self.on_open_check),
                *fields.rows(),
            ),
            *self.controls.items(),
            None,
        )

        self.drawing = TileDrawing(self, napari_viewer)  # redraws the result layers as tiles come in
        self._retune_soon = debounced(self.retune, RETUNE_MS, self)
        fields.on_change(self._postprocess_changed)
        self.session.model_changed.connect(self._show_model)
        self.session.training_changed.connect(self._show_training)
        self._show_model()
        self._show_training(self.session.training)
        # the end of a run (a retune meanwhile also emits `segmented`: the uncertainty still to come ends it)
        self.segmented.connect(lambda _labels: self._uncertainty_pending or self._run_over())
        self.on_open_check.toggled.connect(lambda ticked: ticked or self._waiting.clear())
        self.settings = Remembered(
            "segment",
            {
                "tile_size": self.tile_spin,
                "device": self.device_combo,
                "object_diameter": self.diameter_spin,
                "show_probabilities": self.probs_check,
                "tta": self.tta_check,
                "uncertainty": self.uncertainty_check,
            },
        )
        self.reset_choices()

    # -- public ---------------------------------------------------------------------------------------------

    def reset_choices(self, _event: Any = None) -> None:
        """Refresh the image picker (napari calls this when layers change): an image the user chose stays chosen
        while it is in the viewer; until the user chooses one, an image opened or added becomes the image to segment
        (not the probability or other maps the docks compute). When the image in the picker is removed, the status
        line says so and names the image chosen instead."""
        chosen = self.image_picker.refresh()
        self._note_opened()
        if chosen is None or chosen in self.viewer.layers:
            return
        instead = self.image_combo.value
        now = f"'{instead.name}' is the image to segment now" if instead is not None else "open an image to segment"
        self.status.setText(f"The image '{chosen.name}' was removed: {now}")

    def _note_opened(self) -> None:
        """With "segment each image as it opens" ticked, queue the images opened since the last look (never the maps
        the docks compute) and start on them when the dock is free."""
        opened = [layer for layer in self.image_picker.added if is_original_image(layer)]
        if opened and self.on_open_check.isChecked():
            self._waiting.extend(opened)
            self._segment_waiting_soon()

    def _segment_waiting_soon(self) -> None:
        QTimer.singleShot(0, lambda: alive(self) and self._segment_waiting())

    def _segment_waiting(self) -> None:
        """Segment the next image still waiting (and in the viewer) when no run is on (the end of a run, `_run_over`,
        comes back here). An image refused for itself (its channels, its size) is skipped; a refusal that holds for
        every image (no model, the model in training) drops them all, the status line saying why."""
        if self.worker is not None or self._busy:
            return
        while self._waiting:
            layer = self._waiting.pop(0)
            if layer not in self.viewer.layers:
                continue
            if self.session.bundle is None or self.session.training:
                self._waiting.clear()
            if self._run(layer) is not None:
                # a file's channel layers that the run reads together (a model of several channels) are one image
                self._waiting[:] = [w for w in self._waiting if not any(w is used for used in self._run_layers)]
                return

    def _run_over(self) -> None:
        """A run ended (its result shown, failed, cancelled, or its layer removed): the next image waiting, if any."""
        self._busy = False
        self._segment_waiting_soon()

    def load_model(self, path: str | Path) -> bool:
        """Load a model folder into the session; problems become notifications."""
        return self.session.load_model(path)

    def diameter(self) -> float | str:
        """The dock's object diameter: "auto" or pixels."""
        return float(self.diameter_spin.value()) or "auto"

    def postprocess_config(self) -> PostprocessConfig:
        """The model's post-processing with the dock's threshold, seeds, growth, minimum size, watershed and flood."""
        bundle = self.session.bundle
        return self.postprocess_fields.config(bundle.postprocess if bundle is not None else PostprocessConfig())

    def run(self) -> Any:
        """Start segmenting the chosen image layer; returns the worker, or None after a notification."""
        return self._run(self.image_combo.value)

    def _run(self, layer: Any) -> Any:
        worker = self._start(layer)
        if worker is not None:
            self._busy = True
        return worker

    def _start(self, layer: Any) -> Any:
        if self.worker is not None:
            show_warning("A segmentation is already running: cancel it first")
            return None
        bundle = self.session.bundle
        if bundle is None:
            return self._refuse("No model: train one in the Fine-tune dock or load a saved model folder (Load model…)")
        if self.session.training:
            return self._refuse(
                "The model is being trained: wait for the end of the run (or stop it), then segment", warning=True
            )
        if layer is None:
            return self._refuse("No image layer: open an image first")
        try:
            stack = plane_stack(layer, bundle.net.config.in_channels, self.viewer.layers, self.channel_fields.choice())
            if self.tta_check.isChecked():  # refused before any layer is made (a larger factor is checked again)
                check_tta_size(stack.plane(stack.planes[0]), 1.0, bundle.net.config.num_classes)
            device = select_device(self.device_combo.currentText())
            diameter = self.diameter() if bundle.object_diameter is not None else None
            factor = bundle.scale_factor(stack.plane(stack.planes[0]), diameter) if diameter != "auto" else None
        except (LayerProblem, ValueError) as error:
            return self._refuse(str(error))
        self._run_layers = channel_group(layer, self.viewer.layers) if isinstance(stack.data, ChannelGroup) else [layer]
        self._run_model, self._postprocess = bundle, self.postprocess_config()  # what the run keeps to its end
        if factor is not None:
            return self._start_tiles(bundle, layer, stack, device, factor)
        self.cancelled = False
        self.session.segmenting = True
        self.controls.begin(0, "Estimating the object diameter…")
        self.worker = create_worker(  # on the first plane that is not black, as `napari-unet predict` does
            estimate_stack_diameter, bundle, stack, device, _ignore_errors=True, _start_thread=False
        )
        estimating = self.worker
        self.worker.returned.connect(
            lambda estimate: alive(self) and self._estimated(bundle, layer, stack, device, estimate)
        )
        self.worker.errored.connect(self._estimate_failed)
        # a Cancel (quit) means no `returned`; a closed dock, no slot of its own: the end of the worker frees both
        self.worker.finished.connect(lambda: self._estimate_worker_finished(estimating))
        start_worker(self.worker, self)
        return self.worker

    def _refuse(self, message: str, *, warning: bool = False) -> None:
        """A Run refused before anything started: a notification, and the status line says why (not the last
        run's result)."""
        (show_warning if warning else show_error)(message)
        self.status.setText(f"Not run: {message}")

    def _estimate_worker_finished(self, worker: Any) -> None:
        if not alive(self):
            self.session.segmenting = False
            return
        if self.worker is not worker:  # it returned (tiles started) or failed: handled there
            return
        self._estimate_ended()
        self.status.setText("Cancelled before the first tile")
        self.stopped.emit()
        self._run_over()

    def _estimated(self, bundle: ModelBundle, layer: Any, stack: Planes, device: Any, estimate: float | None) -> None:
        self._estimate_ended()
        self.estimated_diameter = estimate
        if self.cancelled:
            self.status.setText("Cancelled before the first tile")
            self.stopped.emit()
            self._run_over()
            return
        self._start_tiles(bundle, layer, stack, device, 1.0 if estimate is None else bundle.object_diameter / estimate)

    def _estimate_failed(self, error: Exception) -> None:
        self._estimate_ended()
        self._failed(error)

    def _estimate_ended(self) -> None:
        self.worker = None
        self.session.segmenting = False
        self.controls.running(False)
        self._show_cancel()

    def _start_tiles(self, bundle: ModelBundle, layer: Any, stack: Any, device: Any, factor: float) -> Any:
        """Create the result layers and stream the tiles of the image resized by `factor` into them."""
        stride = self.tile_spin.value() or auto_stride(bundle.net, device)
        self.factor = factor
        self._source = (bundle, layer, stack, device)
        self.diameter_label.setText(
            describe_scale(
                bundle.object_diameter,
                factor,
                estimated=self.diameter() == "auto",
                found=self.estimated_diameter is not None,
            )
        )

        self.planes = stack.planes
        self.probs_fg = np.zeros(stack.output_shape(), dtype=np.float32)
        self.labels = np.zeros(stack.output_shape(), dtype=np.int32)
        self.previews = PreviewLabels(self.labels)
        self.labels_layer = self.viewer.add_labels(
            self.labels,
            name=f"{layer.name} labels",
            scale=stack.spatial(layer.scale),
            translate=stack.spatial(layer.translate),
            units=stack.spatial(layer.units),
            metadata=result_metadata(layer),  # measured alone, in the image's units; Measure finds the image
        )
        self.probs_layer = None
        if self.probs_check.isChecked():
            self.probs_layer = self._add_map(layer, stack, self.probs_fg, "probability", "magma")
        self.drawing.start(self.labels_layer, self.probs_layer)
        self.tiles_written = 0
        self.cancelled = self.finished_run = False
        self._final_digest = None
        self._postprocess_runs += 1
        self._run_id += 1
        self._uncertainty_pending = False
        config = scale_postprocess(self._postprocess, 1.0 / factor)
        tta = self._tta = self.tta_check.isChecked()
        total = count_tiles(bundle.net, stack, stride, factor, tta=tta)
        what = f"{len(stack.planes)} plane(s) x {TTA_ORIENTATIONS} orientations" if tta else f"{total} tile(s)"
        self.controls.begin(total, f"{what}, tiles of {stride} px, on {describe_device(device)}")
        self.session.segmenting = True
        # no napari progress bar (`_progress`): it calls processEvents() on every tile, and a fast stream of tiles
        # then nests event loops until the recursion limit aborts napari; the dock's own bar shows the progress
        self.worker = generator_worker(stream_tiles(bundle, stack, stride, device, config, factor, tta=tta))
        self.worker.yielded.connect(self._write_tile)
        self.worker.errored.connect(self._failed)
        self.worker.aborted.connect(self._aborted)
        self.worker.finished.connect(self._tiles_finished)
        session = self.session  # a dock closed mid-run has no slots left: the session is freed all the same
        self.worker.finished.connect(lambda: alive(self) or setattr(session, "segmenting", False))
        start_worker(self.worker, self)
        return self.worker

    def cancel(self) -> None:
        """Stop after the tile being computed (with test-time augmentation, the orientation of the plane being
        computed); what was already written stays. An uncertainty being computed stops after its plane (the result
        stays, without the uncertainty layer). Images waiting to be segmented as they opened are dropped."""
        self._waiting.clear()
        for worker in self._uncertainty_workers:
            worker.quit()
        if self.worker is not None:
            self.cancelled = True
            self.worker.quit()

    def retune(self) -> Any:
        """Post-process the kept probability map again with the dock's threshold and minimum size."""
        if self.probs_fg is None or not self.finished_run or self.worker is not None:
            return None
        if self.labels_layer is None or self.labels_layer not in self.viewer.layers:
            return None
        return self._start_postprocess()

    def refresh_pending(self) -> bool:
        """True while written tiles or a new result wait to be drawn."""
        return self.drawing.pending()

    # -- slots (main thread) --------------------------------------------------------------------------------

    def _write_tile(self, update: TileUpdate) -> None:
        if self.labels is None or self.probs_fg is None:
            return
        self.previews.write(update)  # not over a region painted meanwhile: the corrections stay
        self.probs_fg[update.key] = update.probs_fg
        self.tiles_written += 1
        self.progress.setValue(update.done)
        self.drawing.tile(update.key)

    def _tiles_finished(self) -> None:
        self.worker = None
        self.session.segmenting = False
        self.controls.running(False)
        self._show_cancel()
        self.drawing.refresh(thumbnail=True)
        # before a `stopped` slot paints: painted while the tiles streamed (the previews' record) or from now on
        complete = not self.cancelled and self.tiles_written >= self.progress.maximum()
        previews = None
        if complete and self.labels is not None:
            previews = PAINTED_DURING_STREAM if self.previews.edited() else labels_digest(self.labels)
        self.stopped.emit()
        if self.cancelled:
            unit = "plane orientations" if self._tta else "tiles"
            self.status.setText(f"Cancelled: {self.tiles_written} of {self.progress.maximum()} {unit} written")
            self._run_over()
            return
        if self.tiles_written < self.progress.maximum():
            self._segment_waiting_soon()  # failed: _failed said why (maybe before this end of the worker)
            return
        self.finished_run = True
        self.status.setText("All tiles in; post-processing the whole image…")
        self._final_digest = previews  # what is painted on the previews from now on is kept
        self._first_result = True
        self._start_postprocess()

    def _start_postprocess(self) -> Any:
        self._postprocess_runs += 1
        run = self._postprocess_runs
        worker = create_worker(
            postprocess_planes,
            self.probs_fg,
            self.planes,
            scale_postprocess(self._postprocess, 1 / self.factor),
            _ignore_errors=True,
            _start_thread=False,
        )
        # the run's own array and layer: a Run clicked meanwhile makes new ones, and this image's result still
        # replaces its tile previews (`_set_earlier_labels`)
        target = _PostprocessTarget(
            self._run_id, run, self.labels, self.labels_layer, self._final_digest, self._first_result
        )
        self._latest_postprocess[self._run_id] = run
        worker.returned.connect(lambda labels: alive(self) and self._set_final_labels(labels, target))
        worker.errored.connect(lambda error: alive(self) and self._postprocess_failed(error, target.run_id))
        start_worker(worker, self)
        return worker

    def _postprocess_failed(self, error: Exception, run_id: int) -> None:
        if run_id == self._run_id:
            self._failed(error)
        else:  # the earlier image's: the current run goes on
            show_error(f"Post-processing of the earlier image failed: {error}")

    def _set_final_labels(self, labels: np.ndarray, target: _PostprocessTarget) -> None:
        if target.run_id != self._run_id:
            if self._latest_postprocess.get(target.run_id) == target.number:  # not a retune a later one replaced
                del self._latest_postprocess[target.run_id]
                self._set_earlier_labels(labels, target)
            return
        if target.number != self._postprocess_runs or self.labels is None or labels.shape != self.labels.shape:
            return  # a newer retune is on its way
        self._latest_postprocess.pop(self._run_id, None)
        if self._final_digest is not None and labels_digest(self.labels) != self._final_digest:
            self._keep_edits(labels)  # painted since the previews or the last result: the corrections stay
        else:
            self.labels[...] = labels
        self._first_result = False
        self._final_digest = labels_digest(self.labels)
        count = sum(int(labels[index].max(initial=0)) for index in self.planes)
        self.drawing.final(self.planes, labels.shape, then=lambda: alive(self) and self._show_result(count))

    def _set_earlier_labels(self, labels: np.ndarray, target: _PostprocessTarget) -> None:
        """The whole-image result of a run that a newer Run superseded while it was post-processed: it replaces
        the tile previews (or the last result) in that run's layer; a layer painted since its last result keeps the
        corrections, and the result goes to a layer of its own."""
        array, layer = target.labels, target.layer
        if layer is None or layer not in self.viewer.layers or layer.data is not array or labels.shape != array.shape:
            return  # removed, or its data replaced meanwhile
        if target.digest is not None and labels_digest(array) != target.digest:
            _labels_beside(self.viewer, layer, labels, "result" if target.first else "retuned")
        else:
            array[...] = labels
            layer.refresh()
        show_info(f"{layer.name}: the whole-image result is in")

    def _show_result(self, count: int) -> None:
        if self.labels_layer not in self.viewer.layers:
            self.status.setText(
                f"Finished, but the layer '{self.labels_layer.name}' was removed meanwhile: the result is not shown "
                "(Run again to see it)"
            )
            self._run_over()
            return
        text = f"Done: {count} object(s). The post-processing can be retuned now (no new prediction)."
        if self.session.bundle is not self._run_model:  # a model loaded (or fine-tuned) during the run
            text += " Segmented with the model the run started with: the current model applies to the next run."
        self.status.setText(text)
        if self.uncertainty_check.isChecked() and self._source is not None:
            self._start_uncertainty()
        else:
            self.segmented.emit(self.labels)

    def _start_uncertainty(self) -> Any:
        """Compute the uncertainty layer of the image just segmented, in a worker; `segmented` follows it."""
        bundle, layer, stack, device = self._source
        self._source = None  # once per run, not after each retune
        if self.session.training:  # started while the labels were post-processed: the model is changing
            self.status.setText(self.status.text() + " Uncertainty skipped: the model is being trained.")
            self.segmented.emit(self.labels)
            return None
        self.status.setText(self.status.text() + " Computing the uncertainty…")
        self._uncertainty_pending, run = True, self._run_id
        # plane by plane: Cancel stops it after the plane being computed
        worker = generator_worker(stream_uncertainty(bundle, stack, self.factor, device))
        # the model is in use until the worker ends (training it meanwhile crashed napari); freed by the worker's
        # end, not by a slot of this dock, which may be closed by then
        worker.finished.connect(self.session.hold())
        worker.returned.connect(lambda values: alive(self) and self._show_uncertainty(layer, stack, values, run))
        worker.errored.connect(lambda error: alive(self) and self._uncertainty_failed(error, run))
        worker.finished.connect(lambda: alive(self) and self._uncertainty_ended(worker, run))
        self._uncertainty_workers.append(worker)
        self._show_cancel()
        start_worker(worker, self)
        return worker

    def _uncertainty_ended(self, worker: Any, run: int) -> None:
        """An uncertainty worker ended: shown, failed (`_show_uncertainty`, `_uncertainty_failed` came first) or
        stopped by Cancel, when the run's result stays without its uncertainty layer."""
        self._uncertainty_workers.remove(worker)
        self._show_cancel()
        if run == self._run_id and self._uncertainty_pending:  # neither shown nor failed: cancelled
            self._uncertainty_pending = False
            self.status.setText(self.status.text().replace(" Computing the uncertainty…", " Uncertainty cancelled."))
            self.segmented.emit(self.labels)

    def _show_cancel(self) -> None:
        """Cancel is enabled while the dock computes what it can stop: tiles, a diameter estimate, an uncertainty."""
        self.cancel_button.setEnabled(self.worker is not None or bool(self._uncertainty_workers))

    def _show_uncertainty(self, layer: Any, stack: Any, values: np.ndarray, run: int) -> None:
        self.uncertainty_layer = self._add_map(layer, stack, values, "uncertainty", "inferno")
        if run != self._run_id:  # a Run started meanwhile: the layer is the earlier image's, its result was shown
            return
        self._uncertainty_pending = False
        self.status.setText(self.status.text().replace(" Computing the uncertainty…", " Uncertainty shown."))
        self.segmented.emit(self.labels)

    def _uncertainty_failed(self, error: Exception, run: int) -> None:
        """The uncertainty was refused (a plane too large for it, `check_uncertainty_size`) or failed: the labels are
        in all the same, so the run ends as with its uncertainty, without that layer, the status line saying why."""
        if run != self._run_id:  # the earlier image's: the current run goes on
            show_error(f"Uncertainty of the earlier image failed: {error}")
            return
        self._uncertainty_pending = False
        show_warning(f"The labels are kept, without the uncertainty layer: {error}")
        self.status.setText(self.status.text().replace(" Computing the uncertainty…", f" No uncertainty: {error}"))
        self.segmented.emit(self.labels)

    def _add_map(self, layer: Any, stack: Any, values: np.ndarray, what: str, colormap: str) -> Any:
        """An Image layer of `values` in [0, 1] (probability, uncertainty) over the image `layer`."""
        return self.viewer.add_image(
            values,
            name=f"{layer.name} {what}",
            colormap=colormap,
            contrast_limits=(0.0, 1.0),
            blending="additive",
            scale=stack.spatial(layer.scale),
            translate=stack.spatial(layer.translate),
            units=stack.spatial(layer.units),
            metadata=result_metadata(layer),  # a map, never an image to segment
        )

    def _keep_edits(self, labels: np.ndarray) -> None:
        """A result for a Labels layer painted since its previews or its last result: the corrections stay where
        they are and the new labels become the array of a layer of their own (drawn as any result)."""
        layer, what = self.labels_layer, "result" if self._first_result else "retuned"
        self.labels = labels
        self.labels_layer = _labels_beside(self.viewer, layer, labels, what)
        self.drawing.start(self.labels_layer, self.probs_layer)
        show_info(f"{layer.name} was edited: your corrections are kept, the {what} labels are in a new layer")

    def _postprocess_changed(self) -> None:
        """The user changed a post-processing control: a running segmentation ends with it, a finished one is
        retuned. Only that setting changes in the run's post-processing: the other controls may show a model
        loaded since the run started, whose settings are for the next run."""
        shown = self.postprocess_fields.config(PostprocessConfig())
        if self._postprocess is not None:
            self._postprocess = retuned_config(self._postprocess, self._shown_postprocess, shown)
        self._shown_postprocess = shown
        self._retune_soon()

    def _aborted(self) -> None:
        show_info("Segmentation cancelled: the finished tiles are kept")

    def _failed(self, error: Exception) -> None:
        show_error(f"Segmentation failed: {error}")
        self.status.setText(f"Failed: {error}")
        self._run_over()

    def _show_model(self, _bundle: Any = None) -> None:
        if not alive(self):  # the session outlives a closed dock
            return
        bundle = self.session.bundle
        has_size = bundle is not None and bundle.object_diameter is not None
        self.diameter_spin.setEnabled(has_size)
        self.diameter_spin.setToolTip(
            f"Diameter of the objects in the image: it is resized by {bundle.object_diameter:g} px (the model's) / "
            "this before the network, results come back at its size; auto: estimated on the image"
            if has_size
            else "This model has no object diameter: images are segmented at their own scale"
        )
        if bundle is not None:
            self.channel_fields.show(bundle.channels)  # the channels the model was trained on
            self.postprocess_fields.show(bundle.postprocess)  # for the next run (not the result shown, if any)
            self._shown_postprocess = self.postprocess_fields.config(PostprocessConfig())

    def _show_training(self, training: bool) -> None:
        """No other model can be loaded while a Fine-tune run owns the session's (`Session.load_model`)."""
        if not alive(self):  # the session outlives a closed dock
            return
        self.model_row.load_button.setEnabled(not training)
        self.model_row.load_button.setToolTip(
            "A Fine-tune run is using the model: stop it or wait for it to finish to load another" if training else ""
        )


@dataclass(frozen=True)
class _PostprocessTarget:
    """Where a whole-image post-processing's result goes, as things stood when it started: run `run_id`'s label
    array and layer (a Run clicked meanwhile makes new ones), the post-processing's `number`
    (`_postprocess_runs`: only a run's latest lands), the layer's digest when its previews or last result were
    drawn (painted since: the result goes beside it) and whether it is the run's first result (not a retune)."""

    run_id: int
    number: int
    labels: Any
    layer: Any
    digest: bytes | None
    first: bool


def _labels_beside(viewer: Any, layer: Any, labels: np.ndarray, what: str) -> Any:
    """A new Labels layer "<name> (<what>)" of `labels` placed as the Labels layer `layer`, which was painted."""
    return viewer.add_labels(
        labels,
        name=f"{layer.name} ({what})",
        scale=layer.scale,
        translate=layer.translate,
        units=layer.units,
        metadata=dict(layer.metadata),
    )
