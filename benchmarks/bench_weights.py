"""Weight map speed: `weight_map` (distance transforms on grown bounding boxes) against the naive way
(one full-image distance transform per cell, the two smallest kept per pixel), measured in the same run.

    .venv/bin/python benchmarks/bench_weights.py [--quick]

Full: 1024 x 1024 with ~500 touching cells (goal: >= 50x faster). --quick: 384 x 384 with ~70 cells.
Writes benchmarks/results/weights.json.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from _common import machine, seconds, write_results  # benchmarks/ is on sys.path when run as a script
from scipy import ndimage
from scipy.spatial import cKDTree

from napari_unet.targets import annotation_mask, separate_cells
from napari_unet.weights import class_weights_of, weight_map

RESULTS = Path(__file__).resolve().parent / "results" / "weights.json"


def voronoi_cells(shape: tuple[int, int], n: int, radius: float, seed: int) -> np.ndarray:
    """Instance ids: Voronoi cells of n random seeds clipped by disks of `radius` (many touch)."""
    rng = np.random.default_rng(seed)
    seeds = rng.uniform(0, 1, (n, 2)) * shape
    distance, nearest = cKDTree(seeds).query(np.indices(shape).reshape(2, -1).T)
    return np.where(distance < radius, nearest + 1, 0).reshape(shape).astype(np.int32)


def naive_weight_map(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """The reference: one full-image Euclidean distance transform per cell, the two smallest per pixel."""
    cells = separate_cells(labels)
    target = (cells != 0).astype(np.uint8)
    weights = class_weights_of(target, annotation_mask(labels))[target]
    d1 = np.full(cells.shape, np.inf)
    d2 = np.full(cells.shape, np.inf)
    for index in range(1, cells.max() + 1):
        distance = ndimage.distance_transform_edt(cells != index)
        d2 = np.minimum(d2, np.maximum(d1, distance))
        d1 = np.minimum(d1, distance)
    gaps = (target == 0) & np.isfinite(d2)
    weights[gaps] += w0 * np.exp(-((d1[gaps] + d2[gaps]) ** 2) / (2 * sigma**2))
    return weights.astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller image (seconds instead of a minute)")
    args = parser.parse_args()
    shape, n, radius = ((384, 384), 70, 30.0) if args.quick else ((1024, 1024), 500, 30.0)
    labels = voronoi_cells(shape, n, radius, seed=0)
    n_cells = int(separate_cells(labels).max())
    load = os.getloadavg()[0]

    ours_s, ours_times, ours = seconds(lambda: weight_map(labels), repeats=7)
    naive_s, naive_times, naive = seconds(lambda: naive_weight_map(labels), repeats=1 if not args.quick else 3)
    max_rel_diff = float(np.max(np.abs(ours.astype(np.float64) - naive) / naive))
    speedup = naive_s / ours_s

    result = {
        "benchmark": "weights",
        "quick": args.quick,
        "shape": list(shape),
        "cells": n_cells,
        "foreground_fraction": float(np.mean(labels != 0)),
        "weight_map_s": ours_s,
        "weight_map_runs_s": ours_times,
        "naive_s": naive_s,
        "naive_runs_s": naive_times,
        "speedup": speedup,
        "goal_speedup": 50.0,
        "max_relative_difference": max_rel_diff,
        **machine(load),
    }
    write_results(RESULTS, result)
    print(f"weight map {shape[0]}x{shape[1]}, {n_cells} cells (load average {load:.2f})")
    print(f"  weight_map : {ours_s * 1e3:8.1f} ms (median of {len(ours_times)})")
    print(f"  naive      : {naive_s * 1e3:8.1f} ms (median of {len(naive_times)})")
    print(f"  speedup    : {speedup:8.1f}x (goal >= 50x); max relative difference {max_rel_diff:.2e}")
    print(f"  -> {RESULTS}")


if __name__ == "__main__":
    main()
