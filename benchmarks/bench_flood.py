"""The seed threshold of flooded membrane labels, chosen by cross-validation within ISBI 2012's training slices.

    .venv/bin/python benchmarks/bench_flood.py [--iterations 4800] [--data ../shared/data] [--out benchmarks/results]

A model trained on binary masks whose cells tile the image (ISBI's membranes, `targets.cells_tile_image`)
post-processes its output by flooding (`PostprocessConfig.flood`): the components above a seed threshold grow
over the negated probability until they meet. Which seed threshold? Chosen here without the validation slices
(15-19) that `bench_real_data.py` scores: two folds within the training slices 0-14, each training the `fast`
preset with the settings of binary masks for `--iterations` steps (not seconds: the figures do not depend on the
machine's load) on 12 slices and scoring the 3 it left out (fold A: slices 12-14 held out; fold B: 0-2); the two
folds run side by side in two processes of one torch thread each. For each seed threshold of `SEEDS`: thinned
V_rand and V_info of the flooded labels, mean over the held-out slices, then over the folds; beside them, the
labels binary models wrote before (threshold 0.5, connected components) and the challenge's figure of the
probability map (best threshold of 0.0..1.0 on the held-out slices themselves). Prints the table, the best seed
by mean V_rand against `training.FLOOD_THRESHOLD`, and writes flood.json. What `train` itself writes: the seed
threshold each fold's Trainer fitted on its own training slices at the end of the run (`Trainer.calibrate_growth`:
the highest within 0.005 of the best thinned V_rand there), scored on the held-out slices ("fitted").
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import bench_real_data as real
import numpy as np
import torch
from _common import write_results  # benchmarks/ is on sys.path when run as a script

from napari_unet.model import UNet
from napari_unet.postprocess import PostprocessConfig, probs_to_labels
from napari_unet.tiling import predict_tiled
from napari_unet.train_config import settings_for_labels
from napari_unet.training import FLOOD_THRESHOLD, Sample, Trainer, default_postprocess, preset

SEEDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97)
FOLDS = {"A": range(12, 15), "B": range(0, 3)}  # the training slices each fold holds out


def run_fold(fold: str, data: Path, iterations: int) -> dict[str, Any]:
    """Train on the training slices but `FOLDS[fold]` for `iterations` steps on one torch thread; score the
    held-out slices: flooded labels at each seed, plain labels at 0.5, the probability map's best threshold."""
    torch.set_num_threads(1)
    split = real.load("isbi", data)
    held = [item for i, item in enumerate(split.train) if i in FOLDS[fold]]
    train = [item for i, item in enumerate(split.train) if i not in FOLDS[fold]]
    samples = [Sample(item.image, item.labels) for item in train]
    net_config, config = preset("fast", validate_every=10**9, checkpoint_every=10**9)
    config, kind = settings_for_labels(replace(config, iterations=iterations), [s.labels for s in samples])
    torch.manual_seed(0)
    trainer = Trainer(UNet(net_config), config, samples, device="cpu")
    started = time.perf_counter()
    for _ in trainer.run():
        pass
    seconds = time.perf_counter() - started
    probs = [predict_tiled(trainer.model, item.image, device="cpu")[1] for item in held]
    truths = [item.labels for item in held]
    flooded = {}
    for seed in SEEDS:
        config_seed = PostprocessConfig(threshold=seed, border_width=0, flood=True)
        flooded[str(seed)] = real.isbi_label_figures([probs_to_labels(p, config_seed) for p in probs], truths)
    plain = default_postprocess(config, binary=True)  # what a model trained on binary masks used before
    fitted = trainer.postprocess  # seeds fitted on the fold's training slices at the end of the run
    return {
        "fold": fold,
        "held_out": [item.name for item in held],
        "label_kind": kind,
        "iterations": trainer.iteration,
        "seconds": seconds,
        "flooded": flooded,
        "plain_0.5": real.isbi_label_figures([probs_to_labels(p, plain) for p in probs], truths),
        "fitted": {
            "seed_threshold": fitted.threshold,
            "training_slices_vrand": (trainer.growth_calibration or {}).get("vrand"),
            **real.isbi_label_figures([probs_to_labels(p, fitted) for p in probs], truths),
        },
        "probabilities": real.isbi_figures(probs, truths),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=4800, help="training steps of each fold")
    parser.add_argument("--data", type=Path, default=real.DATA, help="folder holding isbi2012/")
    parser.add_argument("--out", type=Path, default=real.RESULTS, help="folder for flood.json")
    args = parser.parse_args(argv)
    if not (args.data / "isbi2012").is_dir():
        print(f"skipped: real data not found (isbi2012 under {args.data})", file=sys.stderr)
        return 0
    load_start = os.getloadavg()
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_fold, fold, args.data, args.iterations) for fold in FOLDS]
        folds = [future.result() for future in futures]
    mean = {
        str(seed): {key: float(np.mean([f["flooded"][str(seed)][key] for f in folds])) for key in ("vrand", "vinfo")}
        for seed in SEEDS
    }
    best = max(SEEDS, key=lambda seed: mean[str(seed)]["vrand"])
    print(f"ISBI training slices, {args.iterations} steps per fold; thinned V_rand / V_info of the held-out slices")
    print(
        "| labels | "
        + " | ".join(f"fold {f['fold']} (held out {', '.join(f['held_out'])})" for f in folds)
        + " | mean |"
    )
    print("|---|" + "---|" * (len(folds) + 1))

    def row(name: str, figures: list[dict[str, float]]) -> None:
        cells = [f"{x['vrand']:.4f} / {x['vinfo']:.4f}" for x in figures]
        mean_cell = f"{np.mean([x['vrand'] for x in figures]):.4f} / {np.mean([x['vinfo'] for x in figures]):.4f}"
        print(f"| {name} | " + " | ".join(cells) + f" | {mean_cell} |")

    for seed in SEEDS:
        row(f"flooded from seeds > {seed}", [f["flooded"][str(seed)] for f in folds])
    fitted = ", ".join(f"{f['fitted']['seed_threshold']}" for f in folds)
    row(f"flooded, seeds fitted on the training slices ({fitted}): what train does", [f["fitted"] for f in folds])
    row("threshold 0.5, components (before)", [f["plain_0.5"] for f in folds])
    row("probability map, best threshold (challenge)", [f["probabilities"] for f in folds])
    print(f"best seed threshold by mean V_rand: {best} (training.FLOOD_THRESHOLD: {FLOOD_THRESHOLD})")
    write_results(
        args.out / "flood.json",
        {
            "benchmark": "flood",
            "dataset": "isbi",
            "iterations": args.iterations,
            "torch_threads_per_fold": 1,
            "seeds": list(SEEDS),
            "folds": folds,
            "mean_over_folds": mean,
            "best_seed": best,
            "fitted_mean": {key: float(np.mean([f["fitted"][key] for f in folds])) for key in ("vrand", "vinfo")},
            "flood_threshold": FLOOD_THRESHOLD,
            "load_average_start": list(load_start),
            "load_average_end": list(os.getloadavg()),
            "wall_seconds": time.perf_counter() - started,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
