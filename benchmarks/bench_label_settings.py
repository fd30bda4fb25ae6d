"""The training settings of each kind of labels, compared on real data at an equal number of steps.

    .venv/bin/python benchmarks/bench_label_settings.py [--dataset isbi|dsb] [--iterations 4000]
        [--compare binary|instances|paper-border|falk-border] [--data DIR] [--out FOLDER]

`train_config.LABEL_SETTINGS` says how binary masks (ISBI's membranes) and instance labels (touching nuclei)
are trained. This trains the `fast` preset with the data's own settings and with others (`--compare`:
`falk-border`, the default, the weighting the fast preset had until 2026-11: border term w0 50, sigma 6, touching
cells separated by a 1-px border in the target, balanced classes; `paper-border`: the same with the paper's w0 10
and sigma 5; `binary` or `instances`: that kind of labels' settings) on the split of
`bench_real_data.py` for `--iterations` steps (not seconds: the figures do not depend on the machine's load),
the two runs side by side in two processes of one torch thread each, and scores the validation images with
`bench_real_data`'s figures (ISBI: V_rand / V_info thinned and not, foreground IoU and pixel error at
probability 0.5; DSB: AP50, AP75, mAP, F1, SEG after the post-processing each trained model fitted to its
training images, as `napari-unet train` does). Prints each figure with the ratio of the data's own settings
over the other, and writes label_settings_<dataset>[_<compare>].json.
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
from napari_unet.tiling import predict_tiled
from napari_unet.train_config import LABEL_SETTINGS, label_kind
from napari_unet.training import Sample, Trainer, preset

# What each run trains with, on top of the fast preset: the settings of each kind of labels, and the paper's
# weighting (border term, cells separated by a 1-px background border in the target, balanced classes) with
# the paper's w0 and sigma and with those the fast preset had before (Falk et al. 2019: w0 50, sigma 6).
SETTINGS: dict[str, dict[str, Any]] = {
    **LABEL_SETTINGS,
    "paper-border": {"w0": 10.0, "sigma": 5.0, "border": 1, "class_weights": "balanced"},
    "falk-border": {"w0": 50.0, "sigma": 6.0, "border": 1, "class_weights": "balanced"},
}


def train_and_score(dataset: str, data: Path, settings: str, iterations: int, seed: int) -> dict[str, Any]:
    """Train the fast preset with `SETTINGS[settings]` for `iterations` steps on one torch thread and score
    the validation images."""
    torch.set_num_threads(1)
    split = real.load(dataset, data, seed)
    net_config, config = preset("fast", seed=seed, validate_every=10**9, checkpoint_every=10**9)
    config = replace(config, iterations=iterations, **SETTINGS[settings])
    torch.manual_seed(seed)
    samples = [Sample(item.image, item.labels) for item in split.train]
    trainer = Trainer(UNet(net_config), config, samples, device="cpu")
    started = time.perf_counter()
    losses = [event.loss for event in trainer.run() if event.kind == "step"]
    seconds = time.perf_counter() - started
    probs = [predict_tiled(trainer.model, item.image, device="cpu")[1] for item in split.validation]
    truths = [item.labels for item in split.validation]
    if dataset == "isbi":
        scores = real.isbi_figures(probs, truths)
    else:
        scores = real.instance_figures(probs, truths, trainer.postprocess)
    return {
        "settings": settings,
        "train": config.to_dict(),
        "postprocess": trainer.postprocess.to_dict(),
        "iterations": trainer.iteration,
        "seconds": seconds,
        "final_loss": float(np.mean(losses[-50:])),
        "scores": scores,
    }


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("isbi", "dsb"), default="isbi")
    parser.add_argument("--iterations", type=int, default=4000, help="training steps of each run")
    parser.add_argument(
        "--compare",
        choices=sorted(SETTINGS),
        default="falk-border",
        help="the settings to compare the data's own with (default: falk-border, the fast preset's until 2026-11)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=real.DATA, help="folder holding isbi2012/ and dsb2018-fluo/")
    parser.add_argument("--out", type=Path, default=real.RESULTS, help="folder for label_settings_<dataset>.json")
    args = parser.parse_args(argv)
    folder = {"isbi": "isbi2012", "dsb": "dsb2018-fluo"}[args.dataset]
    if not (args.data / folder).is_dir():
        print(f"skipped: real data not found ({folder} under {args.data})", file=sys.stderr)
        return 0
    split = real.load(args.dataset, args.data, args.seed)
    default = label_kind([item.labels for item in split.train])
    other = args.compare
    if other == default:
        parser.error(f"--compare {other} is the data's own settings")
    load_start = os.getloadavg()
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {
            name: pool.submit(train_and_score, args.dataset, args.data, name, args.iterations, args.seed)
            for name in (default, other)
        }
        runs = {name: future.result() for name, future in futures.items()}
    keys = [key for key, _, _ in real.FIGURES[args.dataset]]
    print(f"{args.dataset}: {args.iterations} steps each; the labels are {default}: its settings / the other's")
    print(f"| figure | {default} settings (default) | {other} settings | ratio |")
    print("|---|---|---|---|")
    for key, name, _ in real.FIGURES[args.dataset]:
        a, b = runs[default]["scores"][key], runs[other]["scores"][key]
        print(f"| {name} | {a:.4f} | {b:.4f} | {ratio(a, b):.3f} |")
    suffix = "" if args.compare == "falk-border" else f"_{args.compare}"
    path = args.out / f"label_settings_{args.dataset}{suffix}.json"
    write_results(
        path,
        {
            "benchmark": "label_settings",
            "dataset": args.dataset,
            "label_kind": default,
            "compared_with": other,
            "settings": {name: SETTINGS[name] for name in (default, other)},
            "iterations": args.iterations,
            "seed": args.seed,
            "torch_threads_per_run": 1,
            "load_average_start": list(load_start),
            "load_average_end": list(os.getloadavg()),
            "wall_seconds": time.perf_counter() - started,
            "runs": runs,
            "ratios_default_over_other": {
                key: ratio(runs[default]["scores"][key], runs[other]["scores"][key]) for key in keys
            },
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
