"""CPU cost of a training batch: per-sample augmentation (today's CPU path) against the batched one.

    .venv/bin/python benchmarks/bench_augment_batch.py [--threads 1] [--repeats 5] [--out benchmarks/results/augment_batch.json]

Both make the same windows from the same random numbers (`batches.per_sample_batch` and
`batches.draw_batch` + `WindowSource.cut` + `augment_batch`, paper augmentation: elastic always, the rest with
probability 0.5) of 4 synthetic 1024 x 1024 images; the figure is milliseconds per window and the ratio
batched / per-sample, for the fast preset's 252 windows (batch 8 and 64) and the paper's 572 windows (batch 8).
On a GPU the batched path runs on the device (benchmarks/bench_gpu.py); this measures whether it would also
pay on the CPU (where the trainer keeps the per-sample path by default).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from _common import machine, seconds, write_results  # benchmarks/ is on sys.path when run as a script

from napari_unet.augment import AugmentConfig
from napari_unet.batches import WindowSource, batched_windows, draw_batch, per_sample_batch, prepare_sample
from napari_unet.modelfile import Normalization
from napari_unet.synthetic import make_cells
from napari_unet.train_config import Sample, TrainConfig

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "augment_batch.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    config = TrainConfig()
    samples = [Sample(*make_cells((1024, 1024), seed=seed)) for seed in range(4)]
    prepared = [prepare_sample(s, "sample", 1, Normalization(), config) for s in samples]
    source = WindowSource(prepared, torch.device("cpu"))
    augment = AugmentConfig()
    result = {"machine": machine(load), "threads": args.threads, "torch": torch.__version__, "cases": {}}
    for size, batch in ((252, 8), (252, 64), (572, 8)):
        rng = np.random.default_rng(0)

        def one_by_one(size=size, batch=batch, rng=rng) -> None:
            per_sample_batch(rng, prepared, batch, size, augment)

        def batched(size=size, batch=batch, rng=rng) -> None:
            plan = draw_batch(rng, prepared, batch, size, augment)
            batched_windows(source, plan, size, 0, size, torch.channels_last)

        per_sample, _, _ = seconds(one_by_one, args.repeats)
        batched_time, _, _ = seconds(batched, args.repeats)
        case = {
            "per_sample_ms_per_window": 1000 * per_sample / batch,
            "batched_ms_per_window": 1000 * batched_time / batch,
            "batched_over_per_sample": batched_time / per_sample,
        }
        result["cases"][f"{size} px, batch {batch}"] = case
        print(
            f"{size} px, batch {batch}: per-sample {case['per_sample_ms_per_window']:.2f} ms/window, "
            f"batched {case['batched_ms_per_window']:.2f} ms/window (x{case['batched_over_per_sample']:.2f})",
            flush=True,
        )
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
