"""Synthetic data speed: `make_cells` at 512 x 512 (goal: < 0.2 s), against a reference measured in the
same run: one 512 x 512 float32 Gaussian blur (sigma 1.3), the PSF step every such generator needs.

    .venv/bin/python benchmarks/bench_synthetic.py [--quick]

--quick: fewer repeats. Writes benchmarks/results/synthetic.json.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from _common import machine, seconds, write_results  # benchmarks/ is on sys.path when run as a script
from scipy import ndimage

from napari_unet.synthetic import make_cells, touching_pairs

RESULTS = Path(__file__).resolve().parent / "results" / "synthetic.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeats = 5 if args.quick else 21
    shape = (512, 512)
    load = os.getloadavg()[0]
    make_cells(shape, seed=0)  # warm up imports and caches

    seeds = iter(range(10**6))
    cells_s, cells_times, _ = seconds(lambda: make_cells(shape, seed=next(seeds)), repeats)
    blur_input = np.random.default_rng(0).random(shape, dtype=np.float32)
    blur_s, blur_times, _ = seconds(lambda: ndimage.gaussian_filter(blur_input, 1.3), repeats)

    counts, touching = [], []
    for seed in range(5):
        _, labels = make_cells(shape, seed=seed)
        counts.append(int(labels.max()))
        touching.append(len({i for pair in touching_pairs(labels) for i in pair}) / max(1, labels.max()))

    result = {
        "benchmark": "synthetic",
        "quick": args.quick,
        "shape": list(shape),
        "make_cells_s": cells_s,
        "make_cells_runs_s": cells_times,
        "gaussian_blur_s": blur_s,
        "gaussian_blur_runs_s": blur_times,
        "make_cells_in_blurs": cells_s / blur_s,
        "goal_make_cells_s": 0.2,
        "cells_per_image": counts,
        "fraction_of_cells_touching": touching,
        **machine(load),
    }
    write_results(RESULTS, result)
    print(f"make_cells {shape[0]}x{shape[1]} (load average {load:.2f})")
    print(f"  make_cells    : {cells_s * 1e3:7.1f} ms (median of {repeats}; goal < 200 ms)")
    print(f"  one blur (ref): {blur_s * 1e3:7.1f} ms -> make_cells = {cells_s / blur_s:.1f} blurs")
    print(f"  cells/image {counts}; fraction touching a neighbour {np.round(touching, 2).tolist()}")
    print(f"  -> {RESULTS}")


if __name__ == "__main__":
    main()
