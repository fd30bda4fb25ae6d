"""Main-thread responsiveness of the napari docks: the longest event-loop stall while they work. Goal < 100 ms.

A QTimer ticks every 10 ms on the main thread and records the time between ticks; a stall is a gap minus the
10 ms interval (what a user feels as a frozen window). Measured in one run, in a real napari window:

- idle: the viewer with the image open, nothing running (the OS scheduler and other processes);
- display floor (whole-layer redraws): no worker, a new tile written into full-size Labels and probability
  layers, each followed by `layer.refresh()` of both (every 100 ms, or 8x the refresh's own time if longer),
  the progress bar moving: what showing progress costs when every update redraws whole layers, as the Segment
  dock did before it redrew only the changed regions (under Xvfb the canvas is drawn by the CPU, llvmpipe);
- fine-tuning: the Fine-tune dock trains (the "fast" preset's network, tile 252) in its worker;
- segmentation: the Segment dock, default settings, streams tiles of a large image into a Labels layer, then
  post-processes the whole image in a worker and shows the result; again with the probability layer ticked
  (napari redraws an Image layer only whole); and, as the reference in the same run, with the probability
  layer and whole-layer redraws for every update (the dock's fallback where napari's internals are missing,
  and what it did before it redrew changed regions alone). Also reported: the longest stall while the tiles
  stream in, and how many whole-layer refreshes the dock made;
- blocking (reference): the same segmentation called on the main thread, as a plugin without a worker would.

Figures: the longest stall, the 99th percentile of gaps, the number of stalls over 100 ms, each also as a ratio
to the idle figure, the display floor and the blocking reference. The segmentation variants run `--repeats`
times, interleaved; the run with the median longest stall is reported, with every run's longest stall. Needs a display: run it under Xvfb on a headless machine:

    xvfb-run -a .venv/bin/python benchmarks/bench_responsiveness.py [--quick] [--busy-cores N] [--out FILE]

Writes benchmarks/results/responsiveness.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch  # noqa: F401  (import order: torch before Qt)
from _common import write_results  # benchmarks/ is on sys.path when run as a script

RESULTS = Path(__file__).resolve().parent / "results" / "responsiveness.json"
TICK_MS = 10
GOAL_MS = 100.0


class StallMonitor:
    """Records the gaps between ticks of a `TICK_MS` QTimer on the main thread."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.timer = QTimer()
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self._tick)
        self.gaps: list[float] = []
        self.times: list[float] = []  # when each gap ended
        self._last: float | None = None

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.gaps.append(now - self._last)
            self.times.append(now)
        self._last = now

    def __enter__(self) -> StallMonitor:
        self.gaps.clear()
        self.times.clear()
        self._last = None
        self.timer.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._tick()
        self.timer.stop()

    def summary_until(self, moment: float) -> dict:
        """The summary of the gaps that ended before `moment` (a time.perf_counter() value)."""
        kept = [gap for gap, end in zip(self.gaps, self.times) if end <= moment]
        return self._summarise(kept, sum(kept))

    def summary(self, seconds: float) -> dict:
        return self._summarise(self.gaps, seconds)

    @staticmethod
    def _summarise(gaps: list[float], seconds: float) -> dict:
        stalls_ms = np.maximum(np.asarray(gaps) * 1000.0 - TICK_MS, 0.0)
        return {
            "seconds": round(seconds, 2),
            "ticks": len(gaps),
            "max_stall_ms": round(float(stalls_ms.max(initial=0.0)), 1),
            "p99_gap_ms": round(float(np.percentile(np.asarray(gaps) * 1000.0, 99)) if gaps else 0.0, 1),
            "stalls_over_goal": int((stalls_ms > GOAL_MS).sum()),
        }


def wait_for(signal, timeout_s: float) -> bool:
    """Run the event loop until `signal` is emitted (True) or `timeout_s` passes (False)."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    fired = []
    signal.connect(lambda *_args: (fired.append(True), loop.quit()))
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec()
    return bool(fired)


def spin(seconds: float) -> None:
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--side", type=int, default=1024, help="side of the segmented image (default 1024)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON file to write")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of each segmentation variant (the median "
        "run's figures are reported, with every run's longest stall)",
    )
    parser.add_argument(
        "--busy-cores",
        type=int,
        default=0,
        metavar="N",
        help="keep N other processes spinning during the whole run (a loaded machine)",
    )
    args = parser.parse_args()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy_cores)]
    try:
        run(args)
    finally:
        for process in busy:
            process.kill()


def run(args: argparse.Namespace) -> None:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise SystemExit("no display: run under a virtual X server, e.g. xvfb-run -a " + " ".join(sys.argv))

    import napari

    from napari_unet.model import UNet
    from napari_unet.modelfile import ModelBundle
    from napari_unet.plugin._finetune import FineTuneWidget
    from napari_unet.plugin._segment import SegmentWidget
    from napari_unet.plugin._state import session_for
    from napari_unet.plugin._workers import await_workers
    from napari_unet.postprocess import probs_to_labels
    from napari_unet.synthetic import make_cells
    from napari_unet.training import PRESETS

    side = args.side
    train_seconds = 8.0 if args.quick else 30.0
    idle_seconds = 3.0 if args.quick else 8.0
    image, labels = make_cells((side, side), seed=0)
    train_image, train_labels = image[:512, :512], labels[:512, :512]
    net_config = PRESETS["fast"][0]

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    viewer.add_image(train_image, name="train image")
    viewer.add_labels(train_labels, name="annotations")
    monitor = StallMonitor()
    result: dict = {
        "benchmark": "responsiveness",
        "quick": args.quick,
        "busy_cores": args.busy_cores,
        "tick_ms": TICK_MS,
        "goal_max_stall_ms": GOAL_MS,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "napari": napari.__version__,
            "load_average": list(os.getloadavg()),
        },
        "scenarios": {},
    }

    spin(1.0)  # let the window settle
    started = time.perf_counter()
    with monitor:
        spin(idle_seconds)
    result["scenarios"]["idle"] = monitor.summary(time.perf_counter() - started)
    print("idle", result["scenarios"]["idle"], flush=True)

    with tempfile.TemporaryDirectory() as autosave:
        finetune = FineTuneWidget(viewer, autosave_root=autosave)
        viewer.window.add_dock_widget(finetune, name="Fine-tune")
        wait_for(finetune.estimated, 120)
        finetune.iterations_spin.setValue(100_000)
        finetune.budget_spin.setValue(train_seconds / 60.0)
        started = time.perf_counter()
        with monitor:
            finetune.start()
            finished = wait_for(finetune.finished, train_seconds + 120)
        elapsed = time.perf_counter() - started
        summary = monitor.summary(elapsed)
        summary.update(
            {
                "iterations": len(finetune.history.losses),
                "finished": finished,
                "network": f"depth {net_config.depth}, {net_config.base_channels} channels",
                "tile": PRESETS["fast"][1].tile_size,
            }
        )
        result["scenarios"]["fine_tuning"] = summary
        print("fine-tuning", summary, flush=True)

    bundle = ModelBundle(UNet(net_config))
    session_for(viewer).set_model(bundle)
    viewer.layers.clear()
    viewer.add_image(image, name="big image")
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment", tabify=True)
    segment.tile_spin.setValue(256)

    probs_floor = np.zeros(image.shape, np.float32)
    labels_floor = np.zeros(image.shape, np.int32)
    floor_layers = [
        viewer.add_image(
            probs_floor, name="floor probability", colormap="magma", blending="additive", contrast_limits=(0.0, 1.0)
        ),
        viewer.add_labels(labels_floor, name="floor"),
    ]
    tiles = [(slice(y, y + 256), slice(x, x + 256)) for y in range(0, side, 256) for x in range(0, side, 256)]
    started = time.perf_counter()
    with monitor:
        for count, region in enumerate(tiles, start=1):
            probs_floor[region] = 0.5
            labels_floor[region] = count
            segment.progress.setRange(0, len(tiles))
            segment.progress.setValue(count)
            refresh_started = time.perf_counter()
            for layer in floor_layers:
                layer.refresh(extent=False, thumbnail=False)
            spin(max(0.1, 8 * (time.perf_counter() - refresh_started)))
    result["scenarios"]["display_floor"] = monitor.summary(time.perf_counter() - started)
    print("display floor", result["scenarios"]["display_floor"], flush=True)
    for layer in floor_layers:
        viewer.layers.remove(layer)

    from napari_unet.plugin import _redraw

    partial_redraw = _redraw.refresh_region

    def segment_once(with_probabilities: bool, whole_redraws: bool) -> dict:
        segment.probs_check.setChecked(with_probabilities)
        # reference: the dock's fallback when napari's internals are missing (and its behaviour before it drew
        # regions alone): every update refreshes the whole layers, throttled as the dock throttles it
        _redraw.refresh_region = (lambda layer, key: False) if whole_redraws else partial_redraw
        finished_tiles: list[float] = []
        on_stop = lambda: finished_tiles.append(time.perf_counter())  # noqa: E731
        segment.stopped.connect(on_stop)
        started = time.perf_counter()
        with monitor:
            segment.run()
            finished = wait_for(segment.segmented, 600)
            spin(0.2)
        elapsed = time.perf_counter() - started
        segment.stopped.disconnect(on_stop)
        summary = monitor.summary(elapsed)
        streaming = monitor.summary_until(finished_tiles[0]) if finished_tiles else None
        summary.update(
            {
                "image": [side, side],
                "tiles": segment.tiles_written,
                "finished": finished,
                "probability_layer": with_probabilities,
                "max_stall_while_tiles_stream_ms": streaming and streaming["max_stall_ms"],
                "whole_layer_refreshes": segment.drawing.refreshes,
                "megapixels_per_s": round(side * side / 1e6 / elapsed, 3),
            }
        )
        for layer in [layer for layer in viewer.layers if layer.name != "big image"]:
            viewer.layers.remove(layer)
        return summary

    variants = {
        "segmentation": (False, False),
        "segmentation_with_probabilities": (True, False),
        "segmentation_whole_layer_redraws": (True, True),
    }
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for _repeat in range(args.repeats):  # interleaved, so that a passing load hits every variant alike
        for name, (with_probabilities, whole_redraws) in variants.items():
            runs[name].append(segment_once(with_probabilities, whole_redraws))
            print(name, runs[name][-1], flush=True)
    for name, summaries in runs.items():
        stalls = [summary["max_stall_ms"] for summary in summaries]
        median_run = summaries[int(np.argsort(stalls)[len(stalls) // 2])]
        result["scenarios"][name] = {
            **median_run,
            "repeats": len(stalls),
            "max_stall_ms_per_run": stalls,
            "worst_stall_ms": max(stalls),
        }
    _redraw.refresh_region = partial_redraw

    started = time.perf_counter()
    with monitor:
        spin(0.1)
        probs = bundle.predict(image, tile_size=256, device="auto")  # on the main thread: the window freezes
        probs_to_labels(probs[1], bundle.postprocess)
        spin(0.1)
    result["scenarios"]["blocking_reference"] = monitor.summary(time.perf_counter() - started)
    print("blocking reference", result["scenarios"]["blocking_reference"], flush=True)

    idle = max(result["scenarios"]["idle"]["max_stall_ms"], 1.0)
    floor = max(result["scenarios"]["display_floor"]["max_stall_ms"], 1.0)
    blocked = result["scenarios"]["blocking_reference"]["max_stall_ms"]
    whole = result["scenarios"]["segmentation_whole_layer_redraws"]["max_stall_ms"]
    for name in ("segmentation", "segmentation_with_probabilities"):
        result["scenarios"][name]["max_stall_vs_whole_layer_redraws"] = round(
            result["scenarios"][name]["max_stall_ms"] / max(whole, 1.0), 2
        )
    for name in ("fine_tuning", "segmentation", "segmentation_with_probabilities", "segmentation_whole_layer_redraws"):
        scenario = result["scenarios"][name]
        scenario["max_stall_vs_idle"] = round(scenario["max_stall_ms"] / idle, 2)
        scenario["max_stall_vs_display_floor"] = round(scenario["max_stall_ms"] / floor, 2)
        scenario["max_stall_vs_blocking"] = round(scenario["max_stall_ms"] / max(blocked, 1.0), 4)
        scenario["meets_goal"] = scenario["max_stall_ms"] < GOAL_MS
        print(
            f"{name}: longest stall {scenario['max_stall_ms']:.0f} ms (goal < {GOAL_MS:.0f}); "
            f"{scenario['max_stall_vs_idle']:.2f}x idle ({idle:.0f} ms), "
            f"{scenario['max_stall_vs_display_floor']:.2f}x the display floor ({floor:.0f} ms), "
            f"{scenario['max_stall_vs_blocking']:.4f}x the blocking reference ({blocked:.0f} ms)"
        )
    write_results(args.out, result)
    print(f"wrote {args.out}")
    await_workers(60_000)
    viewer.close()


if __name__ == "__main__":
    main()
