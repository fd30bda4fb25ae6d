"""The training settings of each kind of labels, compared on real data at an equal number of steps.

    .venv/bin/python benchmarks/bench_label_settings.py [--dataset isbi|dsb] [--iterations 4000] [--data DIR]
        [--out FOLDER]

`train_config.LABEL_SETTINGS` says how binary masks (ISBI's membranes) and instance labels (touching nuclei)
are trained. This trains the `fast` preset with each kind's settings on the split of `bench_real_data.py` for
`--iterations` steps (not seconds: the figures do not depend on the machine's load), the two runs side by side
in two processes of one torch thread each, and scores the validation images with `bench_real_data`'s figures
(ISBI: V_rand / V_info thinned and not, foreground IoU and pixel error at probability 0.5; DSB: AP50, AP75, mAP,
F1, SEG after the post-processing each trained model fitted to its training images). Prints each figure with the
ratio of the settings the data's kind gets by default over the other, and writes label_settings_<dataset>.json.
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


def train_and_score(dataset: str, data: Path, settings: str, iterations: int, seed: int) -> dict[str, Any]:
    """Train the fast preset with `LABEL_SETTINGS[settings]` for `iterations` steps on one torch thread and score
    the validation images."""
    torch.set_num_threads(1)
    split = real.load(dataset, data, seed)
    net_config, config = preset("fast", seed=seed, validate_every=10**9, checkpoint_every=10**9)
    config = replace(config, iterations=iterations, **LABEL_SETTINGS[settings])
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
    other = "instances" if default == "binary" else "binary"
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
    path = args.out / f"label_settings_{args.dataset}.json"
    write_results(
        path,
        {
            "benchmark": "label_settings",
            "dataset": args.dataset,
            "label_kind": default,
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
