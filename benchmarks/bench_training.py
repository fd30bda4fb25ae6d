"""Time to quality on a CPU: which network width, depth, tile size and optimiser learn fastest.

    .venv/bin/python benchmarks/bench_training.py [--quick] [--budget SECONDS] [--out benchmarks/results/training.json]

Every candidate trains from scratch on synthetic touching cells (`make_cells`, 4 training images) for its
preset's iterations or the budget of training time, whichever ends first, and is scored along the way (at 1/4,
1/2 and all of the budget, and at its end) on 6 held-out images (`--test-images`): the foreground IoU of the
labels and instance AP at IoU 0.5 after the default post-processing (threshold 0.5, no watershed, no growth),
with a sweep of the threshold with and without growing the objects to p > 0.1; at the end also with the model's
own post-processing, whose growth a completed run calibrates on the training images' annotated cells
(`Trainer.calibrate_growth`, done here after the clock), and with the post-processing that
`postprocess.tune_config` chooses on 2 validation images (seeds 50, 51), as `train --tune-postprocess` does.
The reference in the same run is the paper's
configuration (depth 5, 64 channels, 572 tiles, SGD with momentum 0.99) under the same budget; each figure is also
printed as a ratio to it. The winner is the `fast` preset (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from _common import write_results  # benchmarks/ is on sys.path when run as a script

from napari_unet.metrics import instance_scores, pixel_scores
from napari_unet.model import UNet, UNetConfig
from napari_unet.postprocess import PostprocessConfig, probs_to_labels, tune_config
from napari_unet.synthetic import make_cells
from napari_unet.targets import make_target
from napari_unet.tiling import predict_tiled
from napari_unet.training import PRESETS, Sample, TrainConfig, Trainer

RESULTS = Path(__file__).parent / "results"


def candidates() -> dict[str, tuple[UNetConfig, TrainConfig]]:
    """The five configurations this benchmark chose the `fast` preset's network and tiles from. "w0 50" is the
    border weighting the `fast` preset had then (Falk et al. 2019: w0 50, sigma 6, a 1-px border, balanced
    classes, no warm-up); the preset has trained with plain cross-entropy since (docs/results.md#border-term),
    so it is spelt out here rather than read from the preset, and the results stay comparable."""
    fast_net, today = PRESETS["fast"]
    fast = replace(today, w0=50.0, sigma=6.0, border=1, class_weights="balanced", warmup=0.0)
    paper_net, paper = PRESETS["paper"]
    return {
        "paper (d5, 64 ch, 572, SGD 0.99)": (paper_net, paper),
        "fast: d4, 16 ch, 252, Adam, w0 50": (fast_net, fast),
        "fast with the paper's w0 10, sigma 5": (fast_net, replace(fast, w0=10.0, sigma=5.0)),
        "d5, 16 ch, 380, Adam, w0 50": (replace(fast_net, depth=5), replace(fast, tile_size=380)),
        "d4, 32 ch, 252, Adam, w0 50": (replace(fast_net, base_channels=32), fast),
    }


SWEEP = (0.2, 0.3, 0.4, 0.5)


def labels_figures(predicted: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """Labels IoU (their foreground against the true foreground), AP50 and mAP of one labelling."""
    instances = instance_scores(predicted, labels)
    return pixel_scores(predicted > 0, labels > 0)["iou"], instances["ap50"], instances["map"]


def score(
    model: UNet,
    tests: list[tuple[np.ndarray, np.ndarray]],
    validation: list[tuple[np.ndarray, np.ndarray]],
    calibrated: PostprocessConfig | None = None,
) -> dict[str, float]:
    """IoU of probs > 0.5 against the separated target; of the default post-processing's labels, the IoU of their
    foreground against the true foreground, AP50 and mAP (IoU 0.5:0.95); the same after the post-processing tuned
    on `validation`, and after `calibrated` (the model's own, when given); per threshold of the post-processing
    (objects grown to p > 0.1, and not), labels IoU and AP50."""
    tuned, _ = tune_config(
        [predict_tiled(model, image, device="cpu")[1] for image, _ in validation], [labels for _, labels in validation]
    )
    named = {"plain": PostprocessConfig(), "tuned": tuned, **({"calibrated": calibrated} if calibrated else {})}
    figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in named}
    ious, sweep = [], {t: [] for t in SWEEP}
    for image, labels in tests:
        probs = predict_tiled(model, image, device="cpu")[1]
        ious.append(pixel_scores(probs > 0.5, make_target(labels) > 0)["iou"])
        for name, config in named.items():
            figures[name].append(labels_figures(probs_to_labels(probs, config), labels))
        for threshold in SWEEP:
            row = []
            for grow in (0.1, None):
                predicted = probs_to_labels(probs, PostprocessConfig(threshold=threshold, grow_threshold=grow))
                row += list(labels_figures(predicted, labels)[:2])
            sweep[threshold].append(row)
    model.train()
    means = {
        name: dict(zip(("labels_iou", "ap50", "map"), np.mean(values, axis=0).tolist()))
        for name, values in figures.items()
    }
    return {
        "iou": float(np.mean(ious)),
        **means.pop("plain"),
        **{name: {"postprocess": named[name].to_dict(), **values} for name, values in means.items()},
        "threshold_sweep": [
            {
                "threshold": t,
                **dict(
                    zip(
                        ("labels_iou", "ap50", "labels_iou_no_growth", "ap50_no_growth"),
                        np.mean(values, axis=0).tolist(),
                    )
                ),
            }
            for t, values in sweep.items()
        ],
    }


def run_candidate(name, net_config, config, train, tests, validation, budget, checkpoints) -> dict:
    torch.manual_seed(0)
    model = UNet(net_config)
    # The schedule runs over the preset's iterations; the run goes on (at the final rate) until the budget is spent.
    # the growth calibration that ends a completed run is done below, after the clock, for every candidate alike
    config = replace(config, validate_every=10**6, checkpoint_every=10**6, time_budget=None, calibrate_growth=False)
    config = replace(config, iterations=10**6, schedule="constant") if config.schedule == "constant" else config
    trainer = Trainer(model, config, train, device="cpu")
    run = trainer.run()
    trained, curve, marks = 0.0, [], list(checkpoints)
    last = None
    while marks:
        start = time.perf_counter()
        event = next(run, None)
        trained += time.perf_counter() - start
        if event is None or (event.kind == "step" and trained >= marks[0]):
            marks = [] if event is None else marks[1:]
            point = event if event is not None else last
            if not marks:  # the end: calibrate the model's post-processing as a completed run does (off the clock)
                trainer.calibrate_growth()
            curve.append(
                {
                    "seconds": trained,
                    "iterations": point.iteration,
                    "loss": point.loss,
                    **score(model, tests, validation, None if marks else trainer.postprocess),
                }
            )
            print(
                f"  {name}: {trained:6.0f} s, {point.iteration:5d} it, IoU {curve[-1]['iou']:.3f}, "
                f"labels IoU {curve[-1]['labels_iou']:.3f}, AP50 {curve[-1]['ap50']:.3f}, "
                f"mAP {curve[-1]['map']:.3f}; tuned: labels IoU {curve[-1]['tuned']['labels_iou']:.3f}, "
                f"AP50 {curve[-1]['tuned']['ap50']:.3f}, mAP {curve[-1]['tuned']['map']:.3f}",
                flush=True,
            )
        if event is not None and event.kind == "step":
            last = event
    run.close()
    curve[-1]["calibrated"]["growth_calibration"] = trainer.growth_calibration
    print(
        f"  {name}: the model's post-processing, growth calibrated on the training cells "
        f"(to {trainer.postprocess.grow_threshold}): labels IoU {curve[-1]['calibrated']['labels_iou']:.3f}, "
        f"AP50 {curve[-1]['calibrated']['ap50']:.3f}, mAP {curve[-1]['calibrated']['map']:.3f}",
        flush=True,
    )
    return {
        "name": name,
        "net": net_config.to_dict(),
        "train": config.to_dict(),
        "curve": curve,
        "seconds_per_iteration": trained / max(1, curve[-1]["iterations"]),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 s per candidate")
    parser.add_argument("--budget", type=float, default=None, help="training seconds per candidate (default 300)")
    parser.add_argument("--only", nargs="*", default=None, help="names (prefixes) of the candidates to run")
    parser.add_argument("--iterations", type=int, default=None, help="override every candidate's iterations")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--test-images", type=int, default=6, help="held-out images to score on")
    parser.add_argument("--out", type=Path, default=RESULTS / "training.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = args.budget or (60.0 if args.quick else 300.0)
    checkpoints = [budget * f for f in (0.25, 0.5, 1.0)]
    train = [Sample(*make_cells((256, 256), seed=seed)) for seed in range(4)]
    tests = [make_cells((256, 256), seed=100 + seed) for seed in range(args.test_images)]
    validation = [make_cells((256, 256), seed=50 + seed) for seed in range(2)]
    rows = []
    for name, (net, config) in candidates().items():
        if args.only and not any(name.startswith(prefix) for prefix in args.only):
            continue
        if args.iterations:
            config = replace(config, iterations=args.iterations)
        rows.append(run_candidate(name, net, config, train, tests, validation, budget, checkpoints))
    for row in rows:
        print(f"  {row['name']}, post-processing threshold sweep at the end:")
        for point in row["curve"][-1]["threshold_sweep"]:
            print(
                f"    threshold {point['threshold']:.1f}: labels IoU {point['labels_iou']:.3f}, AP50 {point['ap50']:.3f}"
                f" (without growth: {point['labels_iou_no_growth']:.3f}, {point['ap50_no_growth']:.3f})"
            )
    reference = rows[0]["curve"][-1]
    print(f"\nafter {budget:.0f} s of training (ratios against {rows[0]['name']}):")
    for row in rows:
        final = row["curve"][-1]
        row["iou_over_reference"] = final["iou"] / max(reference["iou"], 1e-9)
        row["ap50_over_reference"] = final["ap50"] / max(reference["ap50"], 1e-9)
        print(
            f"  {row['name']:36s} IoU {final['iou']:.3f} ({row['iou_over_reference']:.2f}x)  "
            f"labels IoU {final['labels_iou']:.3f} (calibrated {final['calibrated']['labels_iou']:.3f}, "
            f"tuned {final['tuned']['labels_iou']:.3f})  "
            f"AP50 {final['ap50']:.3f} ({row['ap50_over_reference']:.2f}x, calibrated "
            f"{final['calibrated']['ap50']:.3f}, tuned {final['tuned']['ap50']:.3f})  "
            f"{row['seconds_per_iteration']:.2f} s/it"
        )
    results = {"budget_seconds": budget, "torch_threads": torch.get_num_threads(), "candidates": rows}
    write_results(args.out, results)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
